"""Which fusion for a detection ensemble, by measurement: weighted box fusion (``infer.fusion=wbf``) against
nnDetection's weighted box clustering (``wbc``), on a trained 3-fold ensemble (issue 21).

    flock /tmp/medsight-heavy.lock python bench/detection_fusion.py [--work DIR] [--held-out 40] [--epochs 40]

The data are the demo's detection data (``medsight demo``'s settings: synthetic LUNA16 scans on a 1.875 x
1.875 x 3 mm grid with 6-25 mm nodules, learnt in about a minute a fold on 2 cores). ``cv`` trains 3 folds on
the training pool (subsets 1-4) and chooses the score threshold, NMS and marks on their out-of-fold
predictions. Every fold model and the ensemble under each fusion (and two fusion IoUs) are then scored by the
LUNA16 FROC on ``--held-out`` scans synthesised with another seed, which nothing was chosen on. Printed: CPM,
the sensitivity at 1 and 4 false positives per scan, nodules hit, false positives per scan and seconds.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import medsight
from medsight.core.progress import setup_logging
from medsight.core.registry import TASKS
from medsight.core.runtime import cpu_capability
from medsight.data.synth import synthesize

QUIET = ["trainer.progress=never", "trainer.tensorboard=false"]
KEYS = ("cpm", "sensitivity_at_1_fps", "sensitivity_at_4_fps", "hits", "nodules")


def _row(name: str, metrics: dict, seconds: float) -> str:
    values = " | ".join(f"{metrics.get(k, float('nan')):.3f}" for k in KEYS)
    return f"| {name} | {values} | {metrics.get('false_positives_per_scan', float('nan')):.1f} | {seconds:.1f} |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--held-out", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--folds", type=int, default=3)
    args = parser.parse_args()
    setup_logging()
    print(f"CPU: {cpu_capability()}")
    work = args.work or Path(tempfile.mkdtemp(prefix="medsight-fusion-"))
    spec = TASKS.get("detection").demo
    synth = dict(spec.synth)
    cases = synth.pop("cases")
    pool, held_out = work / "data", work / "held-out"
    if not pool.exists():
        synthesize(spec.dataset, pool, cases=cases, seed=0, **synth)
    if not held_out.exists():
        synthesize(spec.dataset, held_out, cases=args.held_out, seed=1, **synth)
    overrides = [*spec.overrides, *QUIET, f"trainer.max_epochs={args.epochs}"]
    started = time.perf_counter()
    cv = medsight.cross_validate("detection", pool, folds=args.folds, out=work / "cv", profile=spec.profile,
                                 overrides=overrides, bootstrap=200)
    print(f"\n{args.folds}-fold cv on the pool: {(time.perf_counter() - started) / 60:.1f} min; OOF CPM "
          f"{cv.pooled.get('cpm', float('nan')):.3f}")
    print(f"\n== {args.held_out} held-out scans (seed 1)")
    print("| model | " + " | ".join(KEYS) + " | FP/scan | s |\n|---|" + "---|" * (len(KEYS) + 2))
    rows = {}
    for fold in cv.finished:
        started = time.perf_counter()
        rows[f"fold {fold.index}"] = medsight.load(fold.checkpoint).evaluate(held_out, "all").metrics
        print(_row(f"fold {fold.index}", rows[f"fold {fold.index}"], time.perf_counter() - started), flush=True)
    ensemble = medsight.load(cv.ensemble)
    for fusion in ("wbf", "wbc"):
        for iou in (0.1, 0.3):
            started = time.perf_counter()
            name = f"ensemble {fusion} iou {iou}"
            rows[name] = ensemble.evaluate(held_out, "all", fusion=fusion, fusion_iou=iou).metrics
            print(_row(name, rows[name], time.perf_counter() - started), flush=True)
    best_single = max(m["cpm"] for n, m in rows.items() if n.startswith("fold"))
    for fusion in ("wbf", "wbc"):
        cpm = rows[f"ensemble {fusion} iou 0.1"]["cpm"]
        print(f"{fusion} (iou 0.1): CPM {cpm:.3f}, {cpm - best_single:+.3f} against the best fold ({best_single:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
