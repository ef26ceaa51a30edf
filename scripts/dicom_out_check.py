"""DICOM out, read back: a detection checkpoint's marks for a real DICOM CT series, and a segmentation DICOM SEG
for a synthetic DICOM MRI case, each read back with highdicom and pydicom and checked against medsight's own
NIfTI / CSV outputs (world positions).

    python scripts/dicom_out_check.py [--ct ../shared/data/ct/totalsegmentator_example/example_ct_dicom]
                                      [--detection-checkpoint C] [--work DIR]

Without --detection-checkpoint a randomly initialised detector is used: its marks mean nothing clinically, but
where they land in the SEG must still equal where submission.csv puts them. The CT part is skipped when the
series is absent.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import highdicom as hd  # noqa: E402
import nibabel as nib  # noqa: E402
import pydicom  # noqa: E402

import medsight  # noqa: E402
from medsight.datasets.conventions import CONVENTIONS  # noqa: E402
from medsight.core.geometry import voxel_to_world  # noqa: E402
from tests.toolkit.test_dicom_out import (  # noqa: E402
    NEEDLES,
    dicom_mri_case,
    random_checkpoint,
    world_centroid_of_segment,
)

SHARED_CT = Path(__file__).resolve().parents[2] / "shared/data/ct/totalsegmentator_example/example_ct_dicom"


def check_segmentation(work: Path) -> None:
    case, uids = dicom_mri_case(work / "mri")
    model = random_checkpoint("segmentation", work / "seg.pt", "data.modalities=[flair,t1c]",
                              "infer.roi_size=[32,32,16]", "infer.threshold=0.4", "model.init_filters=8",
                              state={"convention": "brats2021", "modalities": ["flair", "t1c"]})
    out = work / "seg_out"
    report = medsight.load(model).predict_files([case], out, dicom=True)  # --format dicom-seg
    assert not report.failures, report.failures
    seg = pydicom.dcmread(out / "mri_seg.dcm")
    read = hd.seg.segread(out / "mri_seg.dcm")
    label_map = nib.load(str(out / "mri_seg.nii.gz"))
    print("## segmentation: synthetic DICOM MRI case (FLAIR, T1c series)")
    print(f"SEG segments (highdicom): {read.number_of_segments}: "
          f"{[s.SegmentLabel for s in seg.SegmentSequence]}")
    print(f"referenced series: {seg.ReferencedSeriesSequence[0].SeriesInstanceUID} "
          f"(FLAIR series written: {uids['flair']}); referenced instances: "
          f"{len(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence)}")
    regions = CONVENTIONS["brats2021"].to_regions(np.asarray(label_map.dataobj))  # ET, TC, WT masks
    for number, region in enumerate(regions.astype(bool), start=1):
        if not region.any():
            print(f"segment {number}: empty in the label map")
            continue
        nifti = voxel_to_world(np.argwhere(region).mean(axis=0), label_map.affine, space="LPS")[0]
        dicom = world_centroid_of_segment(seg, number)
        print(f"segment {number}: centroid SEG {np.round(dicom, 2)} mm, NIfTI {np.round(nifti, 2)} mm, "
              f"distance {np.linalg.norm(dicom - nifti):.3f} mm (one voxel: {np.sqrt(1 + 1 + 1.5 ** 2):.2f} mm)")
    print(f"PatientName {seg.PatientName!s}, PatientID {seg.PatientID}; identifier markers in the SEG: "
          f"{sum(n in (out / 'mri_seg.dcm').read_bytes() for n in NEEDLES)}")


def check_detection(work: Path, series: Path, model: Path | None) -> None:
    if not series.is_dir():
        print(f"## detection: {series} absent, skipped")
        return
    model = model or random_checkpoint("detection", work / "det.pt")
    out = work / "det_out"
    report = medsight.load(model).predict_files([series], out, dicom=True, dicom_min_probability=0.0,
                                                 dicom_max_marks=5, score_threshold=0.0)
    print(f"## detection: real CT series {series} (predict: {report.cases} case(s), "
          f"{len(report.failures)} failure(s){': ' + report.failures[0] if report.failures else ''})")
    first = pydicom.dcmread(next(p for p in sorted(series.iterdir()) if p.is_file()), stop_before_pixels=True)
    print(f"input series: SeriesInstanceUID {first.get('SeriesInstanceUID', '')!r}, "
          f"{sum(1 for p in series.iterdir() if p.is_file())} files")
    for path in sorted(out.glob("*_marks.dcm")):
        seg = pydicom.dcmread(path)
        read = hd.seg.segread(path)
        referenced = seg.ReferencedSeriesSequence[0]
        print(f"{path.name}: Modality {seg.Modality}, {read.number_of_segments} segments, referenced series "
              f"{referenced.SeriesInstanceUID!r}, {len(referenced.ReferencedInstanceSequence)} referenced instances")
        rows = list(csv.DictReader(open(out / "submission.csv")))
        for number, row in enumerate(rows[: len(seg.SegmentSequence)], start=1):
            centre = np.array([float(row[k]) for k in ("coordX", "coordY", "coordZ")])
            dicom = world_centroid_of_segment(seg, number)
            print(f"  mark {number}: {seg.SegmentSequence[number - 1].SegmentLabel}; SEG centroid "
                  f"{np.round(dicom, 1)} mm vs submission.csv {np.round(centre, 1)} mm: "
                  f"{np.linalg.norm(dicom - centre):.2f} mm")


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ct", type=Path, default=SHARED_CT)
    parser.add_argument("--detection-checkpoint", type=Path)
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="medsight-dicom-out-"))
    check_segmentation(work)
    check_detection(work, args.ct, args.detection_checkpoint)


if __name__ == "__main__":
    run()
