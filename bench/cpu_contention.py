"""Training and predict when another CPU-heavy process shares the machine: which thread settings degrade
gracefully (about 2x slower with one competitor on a 2-core machine) and which collapse.

For each setting, a short classification training (``medsight train``, epoch time from metrics.jsonl, the
first epoch dropped) and a predict run, first alone, then while a competitor runs: another PyTorch job
(default threads, a matmul loop) or a second medsight training. The ratio contended/alone is the slowdown;
two processes sharing the cores fairly would give about 2.

Settings (environment of the medsight process; OpenMP reads it when torch is first imported):
- ``default``: what medsight does by default;
- ``OMP_WAIT_POLICY=ACTIVE``: OpenMP worker threads spin-wait between parallel regions (libgomp's
  behaviour when nothing is set);
- ``OMP_WAIT_POLICY=PASSIVE``: they sleep instead;
- ``spin=N``: libgomp spins N times before sleeping (``GOMP_SPINCOUNT``; its default is 300000 when
  ``OMP_WAIT_POLICY`` is unset);
- ``threads=N``: N compute threads (``trainer.threads=N``; N = the core count is torch's own default);
- settings combine with ``+``: ``threads=2+passive``.
``default`` (``trainer.threads`` null) picks one thread per core less the cores found busy at start.

    flock /tmp/medsight-heavy.lock python bench/cpu_contention.py [--epochs 3] [--cases 160]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import medsight  # noqa: F401
from medsight.core.registry import DATASETS

COMPETITOR = ("import torch\n"
              "a = torch.randn(768, 768)\n"
              "while True:\n"
              "    a = torch.tanh(a @ a / 768)\n")


def medsight_process(args: list[str], env: dict) -> float:
    """Seconds of ``medsight ARGS`` in its own process: the thread settings live in its environment, read when
    torch is first imported there."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "medsight", *args], env=env, check=True, capture_output=True, text=True)
    return time.perf_counter() - started


def epoch_seconds(run: Path) -> float:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    epochs = [row["epoch_seconds"] for row in rows if row.get("phase") == "train" and "epoch_seconds" in row]
    return statistics.median(epochs[1:] or epochs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--cases", type=int, default=160)
    cores = os.cpu_count() or 1
    parser.add_argument("--settings", nargs="*",
                        default=[f"threads={cores}", f"threads={cores}+passive", "threads=1", "default"])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="medsight-contention-"))
    base_env = {k: v for k, v in os.environ.items()
                if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT", "MEDSIGHT_THREADS")}
    DATASETS.get("chestxray14")().synth(work / "data", cases=args.cases, size=64)
    pictures = sorted(str(p) for p in (work / "data").rglob("*.png"))[:64]
    train = ["train", "classification", "--data", str(work / "data"), "--profile", "cpu-small",
             f"trainer.max_epochs={args.epochs}", "trainer.progress=never", "trainer.tensorboard=false",
             "data.image_size=64", "trainer.val_every_n_epochs=1000"]
    print(f"{os.cpu_count()} cores; training: {args.cases} synthetic patients at 64 px, cpu-small profile "
          f"(DenseNet121), {args.epochs} epochs; predict: {len(pictures)} pictures\n")
    print(f"{'setting':18s} {'competitor':22s} {'epoch alone':>12s} {'contended':>10s} {'slowdown':>9s} "
          f"{'predict alone':>14s} {'contended':>10s} {'slowdown':>9s}")
    reference_checkpoint = None
    for setting in args.settings:
        env, extra = dict(base_env), []
        for part in setting.split("+"):
            if part == "active":
                env["OMP_WAIT_POLICY"] = "ACTIVE"
            elif part == "passive":
                env["OMP_WAIT_POLICY"] = "PASSIVE"
            elif part.startswith("spin="):
                env["GOMP_SPINCOUNT"] = part.split("=")[1]
            elif part.startswith("threads="):
                extra = [f"trainer.threads={part.split('=')[1]}"]
        results = {}
        for contended in (False, True):
            competitor = None
            if contended:
                competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR], env=base_env)
                time.sleep(2)
            try:
                run = work / f"{setting}-{contended}"
                medsight_process([*train, "--out", str(run), *extra], env)
                reference_checkpoint = reference_checkpoint or run / "checkpoints" / "last.pt"
                predict = medsight_process(["predict", "--checkpoint", str(reference_checkpoint), *pictures,
                                            "--out", str(work / f"pred-{setting}-{contended}"), "--engine", "torch",
                                            *extra], env)
                results[contended] = (epoch_seconds(run), predict)
            finally:
                if competitor is not None:
                    competitor.kill()
                    competitor.wait()
        (alone_epoch, alone_predict), (busy_epoch, busy_predict) = results[False], results[True]
        print(f"{setting:18s} {'PyTorch matmul loop':22s} {alone_epoch:11.2f}s {busy_epoch:9.2f}s "
              f"{busy_epoch / alone_epoch:8.1f}x {alone_predict:13.2f}s {busy_predict:9.2f}s "
              f"{busy_predict / alone_predict:8.1f}x", flush=True)


if __name__ == "__main__":
    main()
