"""Every task on two ranks: ``torchrun --nproc_per_node 2`` (gloo, CPU) against one process, same data,
same seed, the same global batch (each rank takes half the single process's ``data.batch_size``).

For each task (its demo's synthetic data and settings, shortened by ``--epochs``): train once in one
process (2 compute threads) and once on two ranks (1 thread each), then evaluate both final models the
same way, in this process (``Model.evaluate``), on the task's evaluation split. Printed per task: the training records per
epoch (summed over ranks; a rank's shard drops the remainder, at most world_size - 1 records per epoch),
the validation cases the last validation covered (every validation record once, gathered from both
ranks, so AUROC / Dice / FROC see every prediction), epoch seconds, the monitored metric on validation
and on evaluation, and the difference. Two ranks are not bit-identical to one process: each rank draws
its own augmentation and patches (seeded by rank), batch statistics differ per rank, and the float
summation order of the all-reduced gradients differs. The toy task, with none of these, matches to 1e-4
(tests/toolkit/test_trainer.py).

    flock /tmp/medsight-heavy.lock .venv/bin/python bench/multirank.py [--tasks classification ...]
        [--epochs 4] [--work DIR] [key=value ...]     # e.g. data.cache=pictures: each rank caches its shard
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import medsight
from medsight.core.config import resolve
from medsight.core.registry import DATASETS, TASKS

QUIET = ["trainer.progress=never", "trainer.tensorboard=false"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_medsight(args: list[str], ranks: int, env: dict) -> float:
    command = [sys.executable, "-m", "medsight", *args] if ranks == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port",
         str(free_port()), "-m", "medsight", *args]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"failed ({ranks} rank(s)): {' '.join(args)}\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def number(value) -> float:
    return float("nan") if value is None else float(value)


def rows(run: Path, phase: str) -> list[dict]:
    return [row for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if row.get("phase") == phase]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="*", default=["classification", "segmentation", "detection"])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--work", help="keep data and runs here (default: a temporary folder)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="more settings for every run, e.g. data.cache=pictures (classification)")
    args = parser.parse_args()
    scratch = tempfile.TemporaryDirectory(prefix="medsight-multirank-")
    work = Path(args.work or scratch.name)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS",)}
    table = []
    for name in args.tasks:
        task_class = TASKS.get(name)
        spec = task_class.demo
        data = work / f"data-{name}"
        if not data.exists():
            DATASETS.get(spec.dataset)().synth(data, seed=0, **spec.synth)
        overrides = [o for o in spec.overrides if not o.startswith(("trainer.max_epochs", "trainer.val_every"))]
        overrides += [f"trainer.max_epochs={args.epochs}", f"trainer.val_every_n_epochs={args.epochs}",
                      "trainer.seed=3", *QUIET, *args.overrides]
        config = resolve(task_class.config_class, profile=task_class.profiles[spec.profile], overrides=overrides)
        batch = config.data.batch_size
        if batch % 2:
            overrides.append(f"data.batch_size={batch * 2}")  # an even global batch, halved per rank below
            batch *= 2
        results = {}
        for ranks in (1, 2):
            run = work / f"{name}-{ranks}"
            extra = ["trainer.threads=2"] if ranks == 1 else [f"data.batch_size={batch // 2}"]
            seconds = run_medsight(["train", name, "--data", str(data), "--profile", spec.profile, "--out", str(run),
                                *overrides, *extra], ranks, env if ranks == 1 else dict(env, OMP_NUM_THREADS="1"))
            split = spec.evaluate_split or task_class.evaluate_split
            evaluation = medsight.load(run / "checkpoints" / "last.pt").evaluate(data, split,
                                                                               out=run / "evaluation")
            train, val = rows(run, "train"), rows(run, "val")
            results[ranks] = {"seconds": seconds, "epoch_s": train[-1].get("epoch_seconds"),
                              "samples": round(train[-1]["samples_per_s"] * train[-1]["epoch_seconds"]), "val_cases": val[-1].get("cases", val[-1].get("scans")),
                              "val": val[-1].get(task_class.monitor.metric),
                              "eval": evaluation.metrics.get(task_class.monitor.metric),
                              "eval_cases": len(evaluation.cases), "split": split}
        table.append((name, task_class.monitor.metric, batch, results))
        print(f"{name}: done", flush=True)
    print(f"\n== 1 process (2 threads) vs torchrun 2 ranks (gloo, 1 thread each), {args.epochs} epochs, "
          "same global batch")
    print(f"{'task':15s} {'metric':10s} {'ranks':>5s} {'batch/rank':>10s} {'samples/ep':>10s} {'val cases':>9s} "
          f"{'epoch s':>8s} {'val':>8s} {'evaluate':>9s}")
    for name, metric, batch, results in table:
        for ranks, r in results.items():
            print(f"{name:15s} {metric:10s} {ranks:5d} {batch // ranks:10d} {str(r['samples']):>10s} "
                  f"{str(r['val_cases']):>9s} {number(r['epoch_s']):8.2f} {number(r['val']):8.4f} {number(r['eval']):9.4f}")
        print(f"{'':15s} difference (2 ranks - 1 process): validation {results[2]['val'] - results[1]['val']:+.4f}, "
              f"evaluate ({results[1]['split']}, {results[1]['eval_cases']} cases) "
              f"{results[2]['eval'] - results[1]['eval']:+.4f}")
    scratch.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
