"""Detection on real CT: ``medsight predict`` on the pyradiomics lung1 NRRD and the TotalSegmentator DICOM
series, and the lung1 lesion mask turned into a LUNA-style annotation row with medsight's own helpers
(then mapped back to voxels, where it must land inside the mask). Skips cleanly without the data.

    python scripts/detection_real_data.py --checkpoint RUN/checkpoints/best.pt [--data ../shared/data]
        [--out runs/real-data/detection]
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

import medsight
from medsight.core.progress import setup_logging
from medsight.core.registry import TASKS
from medsight.datasets.ct_nodules import nodules_from_mask
from medsight.core.geometry import world_to_voxel
from medsight.io.readers import load

LUNG1 = Path("ct/pyradiomics_lung1")
DICOM_SERIES = Path("ct/totalsegmentator_example/example_ct_dicom")


def lesion_row(image_path: Path, mask_path: Path) -> tuple[list[float], bool, np.ndarray]:
    """(row ``x, y, z, diameter_mm`` in world mm LPS, whether it maps back inside the mask, voxel index)."""
    mask = load(mask_path)
    image = load(image_path)
    if not np.allclose(mask.affine.numpy(), image.affine.numpy()) or mask.shape != image.shape:
        raise SystemExit(f"{mask_path}: the mask's grid differs from the image's")
    affine = mask.affine.numpy()
    rows = nodules_from_mask(mask[0].numpy(), affine)
    row = max(rows, key=lambda r: r[3])  # the lesion: the largest component
    index = np.round(world_to_voxel(row[:3], affine, space="LPS")[0]).astype(int)
    inside = bool(np.all(index >= 0) and np.all(index < mask.shape[1:]) and mask[0][tuple(index)] > 0)
    return row, inside, index


def itk_cross_check(mask_path: Path, row: list[float]) -> float:
    """Distance (mm) between medsight's centre and SimpleITK's physical point of the mask's centroid index."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(mask_path))
    indices_zyx = np.argwhere(sitk.GetArrayFromImage(image) > 0)
    centroid_xyz = indices_zyx.mean(axis=0)[::-1]
    point = np.asarray(image.TransformContinuousIndexToPhysicalPoint([float(v) for v in centroid_xyz]))
    return float(np.linalg.norm(point - np.asarray(row[:3])))


def print_submission(path: Path, limit: int) -> None:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    print(",".join(rows[0].keys()) if rows else "(no marks)")
    for uid in dict.fromkeys(r["seriesuid"] for r in rows):
        mine = [r for r in rows if r["seriesuid"] == uid]
        for row in mine[:limit]:
            print(",".join(f"{float(v):.3f}" if k != "seriesuid" else v for k, v in row.items()))
        print(f"... {len(mine)} marks for {uid}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", default="runs/real-data/detection")
    parser.add_argument("--rows", type=int, default=5, help="marks to print per scan")
    args = parser.parse_args()
    setup_logging()  # the FROC table scoring prints
    data, out = Path(args.data), Path(args.out)
    lung1, series = data / LUNG1 / "lung1_image.nrrd", data / DICOM_SERIES
    if not lung1.is_file() or not series.is_dir():
        print(f"skipped: {lung1} or {series} not found")
        return 0

    print("== lesion mask -> LUNA-style annotation row (medsight.datasets.ct_nodules.nodules_from_mask)")
    row, inside, index = lesion_row(lung1, data / LUNG1 / "lung1_label.nrrd")
    print("seriesuid,coordX,coordY,coordZ,diameter_mm")
    print(f"lung1_image,{row[0]:.3f},{row[1]:.3f},{row[2]:.3f},{row[3]:.3f}")
    print(f"back to voxels (world_to_voxel, LPS): index {index.tolist()}: {'inside' if inside else 'OUTSIDE'} the mask")
    print(f"SimpleITK's physical point of the same centroid differs by "
          f"{itk_cross_check(data / LUNG1 / 'lung1_label.nrrd', row):.2e} mm")
    out.mkdir(parents=True, exist_ok=True)
    annotations = out / "lung1_annotation.csv"
    annotations.write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n"
                           f"lung1_image,{row[0]!r},{row[1]!r},{row[2]!r},{row[3]!r}\n")

    print("\n== medsight predict on the NRRD and the DICOM series")
    report = medsight.load(args.checkpoint).predict_files([lung1, series], out / "predictions")
    for failure in report.failures:
        print(f"failed: {failure}")
    submission = out / "predictions" / "submission.csv"
    if report.failures or not submission.is_file():
        return 1
    print_submission(submission, args.rows)

    print("\n== the lung1 marks scored against that annotation row (official rules, one scan)")
    lung1_only = out / "lung1_submission.csv"
    with open(submission, newline="") as handle:
        lines = [line for i, line in enumerate(handle) if i == 0 or line.startswith("lung1_image,")]
    lung1_only.write_text("".join(lines))
    scores = TASKS.get("detection").score_predictions(lung1_only, out / "lung1_scores", annotations=annotations)
    for key, value in scores.items():
        print(f"{key:20s}  {value:.4f}" if isinstance(value, float) else f"{key:20s}  {value}")
    return 0 if inside else 1


if __name__ == "__main__":
    sys.exit(main())
