"""Learnability of the detection task on CPU: the ``cpu-small`` profile on a synthetic LUNA16 set,
trained with ``medsight train`` and scored on the held-out subset with ``medsight evaluate`` (the
official FROC rules). Target: CPM >= 0.80 within 20 CPU-minutes of training.

Prints the FROC table, the CPM, wall time and CPU time (this process and its threads) of training
and of evaluation. Run it alone (other heavy jobs distort the timings):

    flock /tmp/medsight-heavy.lock python bench/detection_learnability.py [--out runs/bench/detection]
        [--cases 100] [--subsets 5] [--seed 1] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from pathlib import Path

import medsight
from medsight.core.progress import setup_logging
from medsight.core.registry import DATASETS

TARGET_CPM = 0.80
BUDGET_CPU_MINUTES = 20.0


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(step, *args, **kwargs):
    """(what ``step(*args, **kwargs)`` returns, wall seconds, CPU seconds of this process and its threads)."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    result = step(*args, **kwargs)
    return result, time.perf_counter() - wall, cpu_seconds() - cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench/detection-learnability")
    parser.add_argument("--cases", type=int, default=100)
    parser.add_argument("--subsets", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--shape", default="160,160,48")
    parser.add_argument("overrides", nargs="*", help="config overrides for training, e.g. trainer.max_epochs=60")
    args = parser.parse_args()
    setup_logging()  # the trainer's epoch lines, as the command line shows them
    out = Path(args.out)
    data, run = out / "data", out / "run"
    if not (data / "annotations.csv").is_file():
        DATASETS.get("luna16")().synth(data, cases=args.cases, seed=args.seed, subsets=args.subsets,
                                       shape=args.shape)
    if run.exists():
        shutil.rmtree(run)
    trained, train_wall, train_cpu = timed(
        medsight.train, "detection", data, profile="cpu-small", out=run,
        overrides=["trainer.progress=never", "trainer.tensorboard=false", *args.overrides])
    checkpoint = trained.best or trained.last  # what trained.load() reads
    evaluation = out / "evaluation"
    scores, eval_wall, eval_cpu = timed(lambda: trained.load().evaluate(data, out=evaluation))
    metrics = scores.metrics
    summary = json.loads((evaluation / "summary.json").read_text())
    print("\n== detection learnability (cpu-small, synthetic LUNA16)")
    print(f"data: {args.cases} scans in {args.subsets} subsets (seed {args.seed}); held-out subset0: "
          f"{summary['scans']} scans, {summary['nodules']} nodules")
    print((evaluation / "froc.csv").read_text().strip())
    print(f"CPM {metrics['cpm']:.4f}  (target >= {TARGET_CPM})")
    print(f"training: {train_wall / 60:.1f} min wall, {train_cpu / 60:.1f} CPU-min; "
          f"evaluation: {eval_wall:.0f} s wall, {eval_cpu:.0f} CPU-s; checkpoint {checkpoint}")
    met = metrics["cpm"] >= TARGET_CPM and train_cpu / 60 <= BUDGET_CPU_MINUTES
    print("target met" if met else "target NOT met")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
