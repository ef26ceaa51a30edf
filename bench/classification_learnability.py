"""Learnability: the default classification model (MONAI DenseNet121) on synthetic ChestX-ray14,
trained on the CPU with the ``cpu-small`` profile. Target: test mean AUROC over the 14 findings
>= 0.95 within 10 minutes of training on a CPU machine.

    flock /tmp/medsight-heavy.lock python bench/classification_learnability.py [--cases 1000] [--epochs 6]

Prints the validation mean AUROC after every epoch with the training time so far, then the test
split's per-finding AUROC, the training wall time and the process CPU time.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import medsight
from medsight.core.progress import setup_logging
from medsight.core.registry import DATASETS

TARGET_AUROC = 0.95
BUDGET_S = 600.0


def run(args, work: Path) -> int:
    started = time.perf_counter()
    data = DATASETS.get("chestxray14")().synth(work / "data", cases=args.cases, seed=args.seed, size=args.size)
    synth_s = time.perf_counter() - started
    overrides = [f"trainer.max_epochs={args.epochs}", f"data.image_size={args.image_size}", "trainer.progress=never",
                 "trainer.tensorboard=false", *args.overrides]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    trained = medsight.train("classification", data, profile="cpu-small", out=work / "run", overrides=overrides)
    train_s, train_cpu_s = time.perf_counter() - wall0, time.process_time() - cpu0
    evaluation = trained.load().evaluate(data, out=work / "test")  # the best checkpoint, on the test split
    val = [e for e in trained.history if e["phase"] == "val"]
    train = [e for e in trained.history if e["phase"] == "train"]

    print("\n== classification learnability (synthetic ChestX-ray14, DenseNet121, cpu-small profile)")
    print(f"data: {args.cases} pictures at {args.size} px (synthesised in {synth_s:.0f} s), model input "
          f"{args.image_size} px, {torch.get_num_threads()} CPU threads, overrides: {' '.join(overrides)}")
    print(f"{'epoch':>5s}  {'train loss':>10s}  {'val mean AUROC':>14s}  {'training time so far':>20s}")
    elapsed = 0.0
    for t, v in zip(train, val):
        elapsed += t["epoch_seconds"]
        print(f"{v['epoch']:5d}  {t['loss']:10.4f}  {v['mean_auroc']:14.4f}  {elapsed:18.0f} s")
    metrics = evaluation.metrics
    print(f"\ntest split: {len(evaluation.cases)} pictures, best checkpoint (epoch by validation mean AUROC)")
    for key, value in metrics.items():
        if key.startswith("auroc_"):
            print(f"  {key[6:]:20s} {value:.4f}")
    mean = metrics["mean_auroc"]
    print(f"test mean AUROC       {mean:.4f}   (target >= {TARGET_AUROC})")
    print(f"training wall time    {train_s:.0f} s   (CPU time {train_cpu_s:.0f} s over all threads; budget "
          f"{BUDGET_S:.0f} s wall)")
    met = mean >= TARGET_AUROC and train_s <= BUDGET_S
    print(f"target {'met' if met else 'NOT met'}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--size", type=int, default=128, help="synthetic picture size, pixels")
    parser.add_argument("--image-size", type=int, default=128, help="model input size, pixels")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", help="keep data and run here (default: a temporary folder)")
    parser.add_argument("overrides", nargs="*", help="extra config overrides, e.g. data.batch_size=32")
    args = parser.parse_args()
    setup_logging()  # the trainer's epoch lines, as the command line shows them
    if args.work:
        Path(args.work).mkdir(parents=True, exist_ok=True)
        return run(args, Path(args.work))
    with tempfile.TemporaryDirectory() as work:
        return run(args, Path(work))


if __name__ == "__main__":
    raise SystemExit(main())
