"""Real MRI: train on 3 of the 4 BRATS 2015 cases (FLAIR + T1c, 2015 labels, already z-scored inside the
brain), evaluate on the 4th (target WT Dice >= 0.80); then predict the BraTS 2023 case (2023 naming, four
modalities) with a model trained on 2021-naming synthetic data and check the output's grid.
Then ``medsight compress --method int8`` of the trained model, calibrated on the 3 training cases, measured
before and after on the held-out case (target: Dice change <= 0.01); ``--compress-checkpoint CKPT`` runs
only that step on a model already trained with the same held-out case (e.g. the README's fine-tuned one).

    python bench/segmentation_real.py --data ../shared/data/brats [--minutes 30] [--synthetic-checkpoint CKPT]
        [--compress-checkpoint CKPT] [--samples 100]

Skips cleanly when the data folder is absent. The held-out case is never used to pick a checkpoint:
``last.pt`` is evaluated.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

import medsight
from medsight.core.progress import setup_logging
from medsight.datasets.brats import find_cases

HERE = Path(__file__).resolve().parents[1]


def predict(checkpoint: Path, inputs: list[Path], out: Path) -> None:
    """What ``medsight predict --checkpoint CHECKPOINT INPUTS --out OUT`` writes."""
    report = medsight.load(checkpoint).predict_files(inputs, out)
    if report.failures:
        raise SystemExit(f"predict with {checkpoint} failed: {report.failures[0]}")


def brats2015(root: Path, out: Path, minutes: float, epochs: int, held_out: str) -> None:
    cases = sorted(c.id for c in find_cases(root))
    if held_out not in cases:
        raise SystemExit(f"--held-out {held_out}: not one of {', '.join(cases)}")
    # named outright as the validation case (data.val_groups): never trained on
    print(f"\n== BRATS 2015: train on {sorted(set(cases) - {held_out})}, test on {held_out}")
    run_dir = out / "brats2015"
    started = time.perf_counter()
    medsight.train("segmentation", root, profile="cpu-small", out=run_dir, overrides=[
        "data.modalities=[flair,t1c]", f"data.val_groups=[{held_out}]", "data.patches_per_case=6",
        f"trainer.max_epochs={epochs}", f"trainer.max_minutes={minutes}", "trainer.val_every_n_epochs=10000",
        "trainer.progress=lines"])
    minutes_used = (time.perf_counter() - started) / 60
    last = run_dir / "checkpoints" / "last.pt"
    metrics = medsight.load(last).evaluate(root, "val", out=run_dir / "evaluation").metrics
    predict(last, [root / held_out], run_dir / "predictions")
    print(f"\nBRATS 2015 held-out case {held_out}, trained {minutes_used:.1f} min on 3 cases:")
    print("  " + "  ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    print(f"  WT Dice {metrics['dice_WT']:.3f} (target >= 0.80: {'met' if metrics['dice_WT'] >= 0.80 else 'NOT met'})")
    print(f"  overlay: {run_dir / 'predictions' / (held_out + '_overlay.png')}")


def compress_int8(root: Path, checkpoint: Path, out: Path, samples: int) -> None:
    """int8 of a model whose validation split is the held-out case: Dice and evaluate speed before/after."""
    print(f"\n== int8 (OpenVINO + NNCF) of {checkpoint}, calibrated on the training cases, held-out case measured")
    target = out / "int8.pt"
    label = medsight.compress(checkpoint, "int8", target, root, samples=samples)
    before, after = label["before"], label["after"]
    print(f"{'':10s} {'engine':>10s} {'MB':>7s} {'cases/s':>8s}  " + "  ".join(f"{k:>8s}" for k in before["metrics"]))
    for side, row in (("before", before), ("after", after)):
        print(f"{side:10s} {row['engine']:>10s} {row['size_bytes'] / 1e6:7.1f} {row['cases_per_second']:8.3f}  "
              + "  ".join(f"{row['metrics'][k]:8.4f}" for k in before["metrics"]))
    worst = min((v for k, v in label["metric_change"].items() if k.startswith("dice")), default=float("nan"))
    print(f"size {label['size_ratio']}x of the source file, {label['size_ratio_vs_fp32_weights']}x of its fp32 "
          f"weights alone; evaluate speed {label['speed_ratio']}x; largest Dice drop {worst:+.4f} "
          f"(target >= -0.01: {'met' if worst >= -0.01 else 'NOT met'})")


def brats2023(root: Path, out: Path, checkpoint: Path) -> None:
    case = next(p for p in root.iterdir() if p.is_dir())
    print(f"\n== BraTS 2023 naming: predict {case.name} with {checkpoint}")
    predict(checkpoint, [case], out / "brats2023")
    seg = nib.load(str(out / "brats2023" / f"{case.name}_seg.nii.gz"))
    ok = True
    for path in sorted(case.glob("*.nii.gz")):
        image = nib.load(str(path))
        same = image.shape == seg.shape and np.allclose(image.affine, seg.affine)
        ok &= same
        print(f"  {path.name}: shape {image.shape} affine equal: {np.allclose(image.affine, seg.affine)}")
    values = np.unique(np.asarray(seg.dataobj))
    print(f"  {case.name}_seg.nii.gz: shape {seg.shape}, labels {values.tolist()} (2023 convention: 1 NETC, "
          f"2 SNFH, 3 ET); same grid as every input: {ok}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(HERE.parent / "shared" / "data" / "brats"))
    parser.add_argument("--out", default="/tmp/medsight-bench/segmentation-real")
    parser.add_argument("--minutes", type=float, default=30.0, help="training cap (wall clock)")
    parser.add_argument("--epochs", type=int, default=350, help="the schedule's length (~5 s per epoch here)")
    # the case the README's figures hold out (fold 0 of the earlier round-robin folds)
    parser.add_argument("--held-out", default="brats_2013_pat0004_1", help="the case held out for testing")
    parser.add_argument("--synthetic-checkpoint", default="/tmp/medsight-bench/segmentation/run/checkpoints/best.pt",
                        help="a model trained on 2021-naming synthetic data (bench/segmentation_learnability.py)")
    parser.add_argument("--skip-training", action="store_true", help="only the BraTS 2023 prediction")
    parser.add_argument("--compress-checkpoint", help="only: int8 of this model (validation split: --held-out)")
    parser.add_argument("--samples", type=int, default=100, help="int8: calibration windows")
    args = parser.parse_args()
    setup_logging()  # medsight's own lines (training epochs, evaluation), as the command line shows them
    data = Path(args.data)
    if not data.is_dir():
        print(f"skip: {data} not found")
        return 0
    out = Path(args.out)
    if args.compress_checkpoint:
        out.mkdir(parents=True, exist_ok=True)
        compress_int8(data / "brats2015_deepmedic_4cases", Path(args.compress_checkpoint), out, args.samples)
        return 0
    if not args.skip_training:
        shutil.rmtree(out / "brats2015", ignore_errors=True)
        brats2015(data / "brats2015_deepmedic_4cases", out, args.minutes, args.epochs, args.held_out)
        compress_int8(data / "brats2015_deepmedic_4cases", out / "brats2015" / "checkpoints" / "last.pt",
                      out / "brats2015", args.samples)
    checkpoint = Path(args.synthetic_checkpoint)
    if checkpoint.is_file():
        brats2023(data / "brats2023_gli_00001_unlabelled", out, checkpoint)
    else:
        print(f"skip BraTS 2023 prediction: no synthetic-data checkpoint at {checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
