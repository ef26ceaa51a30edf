"""Learnability: the default 3D model (SegResNet, CPU profile) on a synthetic BraTS set, trained for at
most ``--minutes`` of wall-clock CPU time, then evaluated on held-out synthetic cases.
Target: WT Dice >= 0.90 within 15 CPU-minutes.

    python bench/segmentation_learnability.py [--minutes 13] [--train-cases 24] [--test-cases 8]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from medsight.cli.main import main as medsight


def run(argv: list[str]) -> None:
    print("$ medsight " + " ".join(argv), flush=True)
    status = medsight(argv)
    if status != 0:
        raise SystemExit(f"medsight {argv[0]} failed with {status}")


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
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    run(["data", "synth", "brats", str(out / "train"), "--cases", str(args.train_cases), "--seed", "0",
         f"--shape={args.shape}"])
    run(["data", "synth", "brats", str(out / "test"), "--cases", str(args.test_cases), "--seed", "1000",
         f"--shape={args.shape}"])
    started = time.perf_counter()
    run(["train", "segmentation", "--data", str(out / "train"), "--profile", "cpu-small", "--out", str(out / "run"),
         f"trainer.max_epochs={args.epochs}", f"trainer.max_minutes={args.minutes}", "trainer.progress=never",
         "data.folds=6", *args.overrides])
    train_minutes = (time.perf_counter() - started) / 60
    started = time.perf_counter()
    run(["evaluate", "--checkpoint", str(out / "run" / "checkpoints" / "best.pt"), "--data", str(out / "test"),
         "--out", str(out / "evaluation")])
    eval_minutes = (time.perf_counter() - started) / 60
    metrics = json.loads((out / "evaluation" / "metrics.json").read_text())["metrics"]
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
