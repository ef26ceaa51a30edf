"""DICOM out for viewers, read back with highdicom: a segmentation's DICOM SEG and a detection's marks reference
the input series and land where the NIfTI / CSV outputs say. And no patient identifier reaches any byte medsight
writes (outputs, logs, reports, checkpoints, TensorBoard, caches, exports) unless --keep-identifiers."""

from __future__ import annotations

import csv
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import torch

from medsight.io import checkpoint
from medsight.cli.main import main
from medsight.core.config import resolve, to_dict
from medsight.datasets.synth.dicom import write_series, write_xray
from medsight.core.geometry import itk_from_affine, voxel_to_world
from medsight.core.registry import TASKS

#: identifier attributes of the basic de-identification profile, holding marker strings
MARKERS = {"PatientName": "Zqxmarker^Pat", "PatientID": "ZQXID4711", "PatientBirthDate": "19010203",
           "AccessionNumber": "ZQXACC99", "InstitutionName": "Zqx Marker Hospital",
           "ReferringPhysicianName": "Zqxdoc^Ref", "OperatorsName": "Zqxop^Era", "StudyID": "ZQXSTUDY"}
NEEDLES = [value.encode() for value in MARKERS.values()] + [b"Zqxmarker", b"ZQXID", b"Zqxdoc"]


def random_checkpoint(task_name: str, path: Path, *overrides: str, state: dict | None = None) -> Path:
    task_class = TASKS.get(task_name)
    cfg = resolve(task_class.config_class, profile=task_class.profiles["cpu-small"], overrides=list(overrides))
    task = task_class(cfg)
    task.load_state_dict(state or {})
    torch.manual_seed(0)
    checkpoint.save({"task": task_name, "config": to_dict(cfg), "task_state": task.state_dict(),
                     "model": task.build_model().state_dict()}, path)
    return path


def dicom_mri_case(folder: Path) -> tuple[Path, dict[str, str]]:
    """FLAIR and T1c of a synthetic case as DICOM series (with identifier markers); returns (case, series uids)."""
    from medsight.datasets.synth.brats import make_case

    images, _ = make_case(np.random.default_rng(6), (32, 32, 20))
    affine = np.diag([-1.0, -1.0, 1.5, 1.0])
    affine[:3, 3] = [15.0, 20.0, -12.0]
    origin, spacing, direction = itk_from_affine(affine)
    uids = {}
    for role in ("flair", "t1c"):
        volume = np.clip(np.asarray(images[role], dtype=np.float32) * 100 + 2000, 0, 60000)
        uids[role] = write_series(volume, origin, spacing, direction, folder / role, rescale_intercept=0.0,
                                  identifiers=MARKERS)
    return folder, uids


def world_centroid_of_segment(seg: pydicom.Dataset, number: int) -> np.ndarray:
    """The LPS world centroid of a segment of a DICOM SEG, from its own frame geometry."""
    shared = seg.SharedFunctionalGroupsSequence[0]
    orientation = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=float)
    row_mm, col_mm = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    points = []
    pixels = seg.pixel_array.reshape(-1, int(seg.Rows), int(seg.Columns))
    for frame, group in zip(pixels, seg.PerFrameFunctionalGroupsSequence):
        if int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber) != number:
            continue
        position = np.asarray(group.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        rows, cols = np.nonzero(frame)
        points += [position + c * col_mm * orientation[:3] + r * row_mm * orientation[3:] for r, c in zip(rows, cols)]
    return np.mean(points, axis=0)


def test_a_segmentation_dicom_seg_references_the_series_and_lands_on_the_label_map(tmp_path):
    case, uids = dicom_mri_case(tmp_path / "case")
    model = random_checkpoint("segmentation", tmp_path / "seg.pt", "data.modalities=[flair,t1c]",
                              "infer.roi_size=[32,32,16]", "infer.threshold=0.4", "model.init_filters=8",
                              state={"convention": "brats2021", "modalities": ["flair", "t1c"]})
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(model), str(case), "--out", str(out), "--dicom"]) == 0
    seg = pydicom.dcmread(out / "case_seg.dcm")
    assert seg.Modality == "SEG" and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uids["flair"]
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["ET enhancing tumour", "TC tumour core",
                                                              "WT whole tumour"]
    assert hd.seg.segread(out / "case_seg.dcm").number_of_segments == 3  # highdicom reads it back
    label_map = nib.load(str(out / "case_seg.nii.gz"))
    whole = np.asarray(label_map.dataobj) > 0
    assert whole.any(), "the random model calls some tumour at this threshold"
    nifti_centroid = voxel_to_world(np.argwhere(whole).mean(axis=0), label_map.affine, space="LPS")[0]
    assert np.linalg.norm(world_centroid_of_segment(seg, 3) - nifti_centroid) <= np.sqrt(1 + 1 + 1.5**2)
    assert str(seg.PatientName) == "Anonymous" and seg.PatientID.startswith("medsight-")
    assert not any(needle in (out / "case_seg.dcm").read_bytes() for needle in NEEDLES)
    kept = tmp_path / "kept"
    assert main(["predict", "--checkpoint", str(model), str(case), "--out", str(kept), "--dicom",
                 "--keep-identifiers"]) == 0
    assert str(pydicom.dcmread(kept / "case_seg.dcm").PatientName) == MARKERS["PatientName"]


def test_detection_marks_in_a_dicom_seg_reference_the_series_at_the_marks_places(tmp_path):
    from medsight.datasets.synth.luna16 import make_scan

    scan = make_scan(0, np.random.default_rng(2), shape=(48, 48, 16), spacing=(1.8, 1.8, 3.0))
    uid = write_series(scan.volume.astype(np.float32), scan.origin_lps, scan.spacing_mm, scan.direction,
                       tmp_path / "series", identifiers=MARKERS)
    model = random_checkpoint("detection", tmp_path / "det.pt", "infer.roi_size=[64,64,32]")
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(model), str(tmp_path / "series"), "--out", str(out),
                 "--format", "dicom-seg", "infer.dicom_min_probability=0.0", "infer.dicom_max_marks=3", "infer.score_threshold=0.0"]) == 0
    seg = pydicom.dcmread(out / f"{uid}_marks.dcm")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uid and len(seg.SegmentSequence) == 3
    rows = list(csv.DictReader(open(out / "submission.csv")))
    first = np.array([float(rows[0][k]) for k in ("coordX", "coordY", "coordZ")])
    assert seg.SegmentSequence[0].SegmentLabel.startswith(f"nodule mark 1: p {float(rows[0]['probability']):.2f}")
    assert np.linalg.norm(world_centroid_of_segment(seg, 1) - first) <= np.linalg.norm(scan.spacing_mm)
    assert not any(needle in (out / f"{uid}_marks.dcm").read_bytes() for needle in NEEDLES)


def test_no_patient_identifier_reaches_any_byte_written(tmp_path):
    """DICOM X-rays and series whose identifier attributes hold markers, through every command; then every file
    written (outputs, logs, reports, checkpoints, TensorBoard events, caches, exports) is searched."""
    from medsight.datasets.synth.chestxray14 import Anatomy, render

    rng = np.random.default_rng(0)
    data = tmp_path / "xrays"
    for index in range(24):
        split = "train" if index < 16 else ("val" if index < 20 else "test")
        sick = index % 2
        picture = render({"Mass"} if sick else set(), Anatomy.draw(rng), 48, rng).astype(np.uint16) * 16
        write_xray(data / split / ("mass" if sick else "normal") / f"{index:03d}.dcm", picture, identifiers=MARKERS)
    runs = tmp_path / "written"
    for argv in (["data", "check", "folders", str(data)],
                 ["train", "classification", "--data", str(data), "--out", str(runs / "run"), "trainer.max_epochs=1",
                  "model.name=simple_cnn", "data.image_size=48", "data.cache=disk", "trainer.progress=never"],
                 ["evaluate", "--checkpoint", str(runs / "run" / "checkpoints" / "last.pt"), "--data", str(data),
                  "--out", str(runs / "eval")],
                 ["predict", "--checkpoint", str(runs / "run" / "checkpoints" / "last.pt"), str(data / "test"), "--out",
                  str(runs / "pred"), "--cam"],
                 ["export", "--checkpoint", str(runs / "run" / "checkpoints" / "last.pt"), "--format", "torchscript",
                  "--out", str(runs / "model.ts")],
                 ["info", "--checkpoint", str(runs / "run" / "checkpoints" / "last.pt")]):
        assert main(argv) in (0, 1), argv
    case, _ = dicom_mri_case(tmp_path / "mri")
    model = random_checkpoint("segmentation", tmp_path / "seg.pt", "data.modalities=[flair,t1c]",
                              "infer.roi_size=[32,32,16]", "infer.threshold=0.4", "model.init_filters=8",
                              state={"convention": "brats2021", "modalities": ["flair", "t1c"]})
    assert main(["predict", "--checkpoint", str(model), str(case), "--out", str(runs / "seg"), "--dicom"]) == 0
    written = [p for p in runs.rglob("*") if p.is_file()]
    assert any(p.suffix == ".pt" for p in written) and any("tfevents" in p.name for p in written)
    assert any("cache" in p.parts for p in written), "the disk cache was written and is searched too"
    hits = [(str(p), n.decode()) for p in written for n in NEEDLES if n in p.read_bytes()]
    assert not hits, hits
