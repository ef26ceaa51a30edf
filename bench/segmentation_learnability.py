"""Learnability: the default 3D model (SegResNet, CPU profile) on a synthetic BraTS set, trained for at
most ``--minutes`` of wall-clock CPU time, then evaluated on held-out synthetic cases.
Target: WT Dice >= 0.90 within 15 CPU-minutes.

    python bench/segmentation_learnability.py [--minutes 13] [--train-cases 24] [--test-cases 8]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import medsight
from medsight.core.progress import setup_logging
from medsight.core.registry import DATASETS


def synth(out: Path, cases: int, seed: int, shape: str) -> Path:
    print(f"synthetic BraTS: {cases} cases, seed {seed}, shape {shape} -> {out}", flush=True)
    return DATASETS.get("brats")().synth(out, cases=cases, seed=seed, shape=shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/medsight-bench/segmentation")
    parser.add_argument("--minutes", type=float, default=14.0, help="training cap (wall clock)")
    parser.add_argument("--epochs", type=int, default=90,
                        help="the learning-rate schedule's length (about 8 s per epoch on 2 idle cores)")
    parser.add_argument("--train-cases", type=int, default=24)
    parser.add_argument("--test-cases", type=int, default=8)
    parser.add_argument("--shape", default="96,96,64")
    parser.add_argument("overrides", nargs="*", help="extra config overrides")
    args = parser.parse_args()
    setup_logging()  # the trainer's epoch lines, as the command line shows them
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    train_data = synth(out / "train", args.train_cases, 0, args.shape)
    test_data = synth(out / "test", args.test_cases, 1000, args.shape)
    started = time.perf_counter()
    run = medsight.train("segmentation", train_data, profile="cpu-small", out=out / "run", overrides=[
        f"trainer.max_epochs={args.epochs}", f"trainer.max_minutes={args.minutes}", "trainer.progress=never",
        "data.folds=6", *args.overrides])
    train_minutes = (time.perf_counter() - started) / 60
    started = time.perf_counter()
    evaluation = run.load().evaluate(test_data, out=out / "evaluation")  # the best checkpoint
    eval_minutes = (time.perf_counter() - started) / 60
    metrics = evaluation.metrics
    summary = (out / "evaluation" / "summary.csv").read_text().splitlines()
    print(f"\nsynthetic BraTS: {args.train_cases} training cases ({args.shape} voxels at 1 mm), "
          f"{args.test_cases} held-out test cases")
    print(f"training wall time {train_minutes:.1f} min, evaluation {eval_minutes:.1f} min")
    print("\n".join(summary[:3]))
    wt = metrics["dice_WT"]
    verdict = "met" if wt >= 0.90 and train_minutes <= 15 else "NOT met"
    print(f"test WT Dice {wt:.3f}, TC {metrics['dice_TC']:.3f}, ET {metrics['dice_ET']:.3f} "
          f"(target WT >= 0.90 within 15 CPU-minutes: {verdict})")


if __name__ == "__main__":
    main()
