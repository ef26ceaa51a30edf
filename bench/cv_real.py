"""Cross-validation, ensembles and calibration on real data (issue 21's targets).

    flock /tmp/medsight-heavy.lock python bench/cv_real.py --data ../shared/data [--part brats|nih|both]
        [--fold-minutes 6] [--work DIR]

1. BRATS 2015 (``brats/brats2015_deepmedic_4cases``): 3-fold ``cv`` on 3 of the 4 real cases (FLAIR + T1c),
   each fold trained for ``--fold-minutes`` on 2 cases and validated on the third; the folds' ensemble and each
   fold model are then evaluated on the 4th case, never seen. Target: the ensemble's WT and TC Dice at least
   the best single fold's. HD95 reported.
2. NIH ChestX-ray14 (``chestxray14/nih_starter_256``: 479 real frontal pictures with the official labels file,
   renamed ``labels.csv`` there: a work folder links it under its official name): 5-fold ``cv`` at 64 px on the
   training pool, the ensemble (with its calibration) and each fold tested on the ``nih1000_64px`` test split
   (other patients, the official 14-finding labels). Targets: ECE after calibration at most 0.7x before; the
   ensemble's AUROC at least the mean single fold's; on the OOF pictures, the flagged 10 % less accurate.

The held-out data choose nothing: thresholds, the calibration and the review threshold are chosen on the
out-of-fold predictions. Skips cleanly when the data are absent. The real images are never copied.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import medsight
from medsight.core.progress import setup_logging

QUIET = ["trainer.progress=never", "trainer.tensorboard=false"]


def _line(name: str, metrics: dict, keys) -> str:
    return f"| {name} | " + " | ".join(f"{metrics.get(k, float('nan')):.4f}" for k in keys) + " |"


def brats(root: Path, work: Path, minutes: float) -> dict:
    cases = sorted(p.name for p in root.iterdir() if p.is_dir())
    held_out, pool = cases[0], cases[1:4]
    folder = work / "brats-pool"
    folder.mkdir(parents=True, exist_ok=True)
    for case in pool:
        link = folder / case
        if not link.exists():
            link.symlink_to(root / case, target_is_directory=True)
    test = work / "brats-test"
    test.mkdir(exist_ok=True)
    if not (test / held_out).exists():
        (test / held_out).symlink_to(root / held_out, target_is_directory=True)
    started = time.perf_counter()
    cv = medsight.cross_validate("segmentation", folder, folds=3, out=work / "brats-cv", profile="cpu-small",
                                 overrides=[*QUIET, "data.modalities=[flair,t1c]", "data.patches_per_case=6",
                                            "trainer.max_epochs=100000", f"trainer.max_minutes={minutes}",
                                            "trainer.val_every_n_epochs=10000"], bootstrap=200)
    seconds = time.perf_counter() - started
    keys = ["dice_WT", "dice_TC", "dice_ET", "hd95_WT", "hd95_TC"]
    rows = {f"fold {f.index}": medsight.load(f.checkpoint).evaluate(test, "all").metrics for f in cv.finished}
    rows["ensemble"] = medsight.load(cv.ensemble).evaluate(test, "all").metrics
    print(f"\n== BRATS 2015: 3-fold cv on {pool} ({seconds / 60:.1f} min), tested on {held_out}")
    print("| model | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for name, metrics in rows.items():
        print(_line(name, metrics, keys))
    singles = [m for n, m in rows.items() if n != "ensemble"]
    for key in ("dice_WT", "dice_TC"):
        best = max(m[key] for m in singles)
        verdict = "met" if rows["ensemble"][key] >= best - 1e-9 else "NOT met"
        print(f"ensemble {key} {rows['ensemble'][key]:.4f} vs best fold {best:.4f}: {verdict}")
    print("OOF (pooled over the 3 folds): " + ", ".join(f"{k} {cv.pooled.get(k, float('nan')):.4f}" for k in keys))
    return rows


def nih(root: Path, work: Path, minutes: float) -> dict:
    starter, nih1000 = root / "nih_starter_256", root / "nih1000_64px" / "labels_from_Data_Entry_2017_v2020.csv"
    folder = work / "nih-starter"
    folder.mkdir(parents=True, exist_ok=True)
    for name, target in (("Data_Entry_2017.csv", starter / "labels.csv"), ("images", starter / "images")):
        if not (folder / name).exists():
            (folder / name).symlink_to(target)
    settings = [*QUIET, "data.image_size=64", "model.name=resnet18", "trainer.max_epochs=100000",
                f"trainer.max_minutes={minutes}", "data.format=chestxray14"]
    started = time.perf_counter()
    cv = medsight.cross_validate("classification", folder, folds=5, out=work / "nih-cv", profile="cpu-small",
                                 overrides=settings, bootstrap=200)
    seconds = time.perf_counter() - started
    test = ["data.format=csv", "data.label_columns=[finding_labels]", "data.group_column=patient_id"]
    rows = {f"fold {f.index}": medsight.load(f.checkpoint).evaluate(nih1000, "test", overrides=test).metrics
            for f in cv.finished}
    rows["ensemble"] = medsight.load(cv.ensemble).evaluate(nih1000, "test", overrides=test,
                                                            out=work / "nih-ensemble-test").metrics
    keys = ["mean_auroc", "ece_uncalibrated", "ece", "brier_uncalibrated", "brier"]
    print(f"\n== NIH: 5-fold cv on nih_starter_256 at 64 px ({seconds / 60:.1f} min), tested on nih1000 test")
    print("| model | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for name, metrics in rows.items():
        print(_line(name, metrics, keys))
    mean_single = float(np.mean([m["mean_auroc"] for n, m in rows.items() if n != "ensemble"]))
    ens = rows["ensemble"]
    print(f"ensemble AUROC {ens['mean_auroc']:.4f} vs mean fold {mean_single:.4f}: "
          f"{'met' if ens['mean_auroc'] >= mean_single else 'NOT met'}")
    ratio = ens["ece"] / ens["ece_uncalibrated"] if ens.get("ece_uncalibrated") else float("nan")
    print(f"test ECE after/before calibration: {ratio:.3f} (target <= 0.7: {'met' if ratio <= 0.7 else 'NOT met'})")
    summary = json.loads((work / "nih-cv" / "cv.json").read_text())
    review = summary["chosen_on_oof"].get("review", {}).get("oof", {})
    if review:
        print(f"OOF review flag: {review['flagged']} flagged, mean share of labels right "
              f"{review['flagged_mean']:.4f} vs {review['rest_mean']:.4f} for the {review['rest']} others")
    print("OOF calibration (in-sample): " + ", ".join(f"{k} {summary['oof_with_choices'][k]:.4f}"
                                                      for k in ("ece_uncalibrated", "ece", "brier_uncalibrated", "brier")))
    crossed = summary["oof_with_choices"]
    method = summary["chosen_on_oof"].get("calibration_method")
    tried = {m: crossed[f"cross_fitted_ece_{m}"] for m in ("none", "temperature", "platt")
             if f"cross_fitted_ece_{m}" in crossed}
    print(f"calibration method chosen on the OOF predictions: {method} (cross-fitted ECE: "
          + ", ".join(f"{m} {v:.4f}" for m, v in tried.items()) + ")")
    if "cross_fitted_ece" in crossed:
        ratio_oof = crossed["cross_fitted_ece"] / crossed["cross_fitted_ece_uncalibrated"]
        print(f"OOF calibration, cross-fitted (each fold scored with a map fitted on the other folds): ECE "
              f"{crossed['cross_fitted_ece_uncalibrated']:.4f} -> {crossed['cross_fitted_ece']:.4f} "
              f"({ratio_oof:.3f}x: {'met' if ratio_oof <= 0.7 else 'NOT met'} within the starter population), Brier "
              f"{crossed['cross_fitted_brier_uncalibrated']:.4f} -> {crossed['cross_fitted_brier']:.4f}")
    prevalence(starter / "labels.csv", nih1000)
    return rows


def prevalence(starter_labels: Path, test_labels: Path) -> None:
    """Each finding's share of the pictures in the cv pool and in the test split: probabilities (and so their
    calibration) follow the population's base rates, which a calibration fitted on the pool carries over."""
    import csv

    from medsight.datasets.chestxray14 import FINDINGS

    with open(starter_labels) as handle:
        pool = [row["Finding Labels"].split("|") for row in csv.DictReader(handle)]
    with open(test_labels) as handle:
        test = [row["finding_labels"].split("|") for row in csv.DictReader(handle) if row["split"] == "test"]
    print(f"\nprevalence: cv pool ({len(pool)} pictures) vs test split ({len(test)} pictures)")
    print("| finding | pool | test |\n|---|---|---|")
    for name in [*FINDINGS, "No Finding"]:
        print(f"| {name} | {np.mean([name in f for f in pool]):.3f} | {np.mean([name in f for f in test]):.3f} |")
    print(f"| findings per picture | {np.mean([len([x for x in f if x != 'No Finding']) for f in pool]):.2f} | "
          f"{np.mean([len([x for x in f if x != 'No Finding']) for f in test]):.2f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--part", choices=["brats", "nih", "both"], default="both")
    parser.add_argument("--fold-minutes", type=float, default=6.0, help="training budget per fold")
    parser.add_argument("--work", help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args()
    data = Path(args.data).resolve()  # the work folder links to it: an absolute target
    brats_root, nih_root = data / "brats" / "brats2015_deepmedic_4cases", data / "chestxray14"
    if not brats_root.is_dir() and not nih_root.is_dir():
        print(f"skipped: {data} holds neither brats/brats2015_deepmedic_4cases nor chestxray14")
        return 0
    setup_logging()
    with tempfile.TemporaryDirectory(prefix="medsight-cv-real-") as folder:
        work = Path(args.work) if args.work else Path(folder)
        work.mkdir(parents=True, exist_ok=True)
        if args.part in ("brats", "both") and brats_root.is_dir():
            brats(brats_root, work, args.fold_minutes)
        if args.part in ("nih", "both") and (nih_root / "nih_starter_256").is_dir():
            nih(nih_root, work, args.fold_minutes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
