"""Detection: world <-> voxel <-> box round trips, the official LUNA16 FROC/CPM rules on hand-built
cases, the generic ct-nodules layout, predict inputs and outputs, and scoring a submission file."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medsight.cli.main import main
from medsight.errors import ConfigError, DataError
from medsight.core.geometry import affine_from_itk, voxel_size_mm, world_to_voxel
from medsight.core.registry import DATASETS, TASKS
from medsight.tasks.detection import froc
from medsight.tasks.detection.boxes import boxes_to_nodules, nodules_to_boxes
from medsight.tasks.detection.config import DetectionConfig
from medsight.tasks.detection.pipeline import eval_transforms, train_transforms

from medsight.core.config import resolve

ORIGIN_LPS = (-171.3, 88.25, -305.5)
SPACING_MM = (0.71, 0.93, 2.5)


def oblique_direction() -> np.ndarray:
    """20 degrees about z, then 10 about x: no array axis lines up with the world."""
    a, b = np.radians(20), np.radians(10)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def config(**data) -> DetectionConfig:
    overrides = [f"data.{k}={v}" for k, v in data.items()]
    return resolve(DetectionConfig, profile=TASKS.get("detection").profiles["cpu-small"], overrides=overrides)


def write_ball_scan(path: Path, direction: np.ndarray, centre_index, diameter_mm: float,
                    shape=(72, 60, 24)) -> np.ndarray:
    """An .mhd of air with one soft-tissue ball; returns the ball's world centre (LPS mm)."""
    spacing = np.asarray(SPACING_MM)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    inside = np.linalg.norm((grid - np.asarray(centre_index)) * spacing, axis=-1) <= diameter_mm / 2
    volume = np.where(inside, 40, -1000).astype(np.int16)
    image = sitk.GetImageFromArray(volume.transpose(2, 1, 0))
    image.SetOrigin(ORIGIN_LPS)
    image.SetSpacing(SPACING_MM)
    image.SetDirection(tuple(direction.ravel()))
    sitk.WriteImage(image, str(path))
    return np.asarray(image.TransformContinuousIndexToPhysicalPoint([float(c) for c in centre_index]))


# -- geometry ------------------------------------------------------------------------------------
@pytest.mark.parametrize("direction", [np.eye(3), np.diag([-1.0, -1.0, 1.0]), oblique_direction()],
                         ids=["identity", "flipped-xy", "oblique"])
def test_world_to_box_to_world_round_trip_after_orient_and_resample_within_half_a_voxel(tmp_path, direction):
    centre_index = (33.3, 27.6, 11.2)
    world = write_ball_scan(tmp_path / "scan.mhd", direction, centre_index, diameter_mm=9.0)
    record = {"image": str(tmp_path / "scan.mhd"), "nodules": [[*world, 9.0]]}
    data = eval_transforms(config(spacing_mm="[1.1,1.3,2.0]").data)(record)
    affine = data["image"].affine.numpy()
    np.testing.assert_allclose(voxel_size_mm(affine), [1.1, 1.3, 2.0], atol=1e-6)
    boxes = nodules_to_boxes(np.asarray(record["nodules"]), affine)
    sides = boxes[0, 3:] - boxes[0, :3]
    np.testing.assert_allclose(sides, 9.0 / np.asarray([1.1, 1.3, 2.0]), rtol=1e-5)
    back = boxes_to_nodules(boxes, affine)[0]
    error_voxels = world_to_voxel(back[:3], affine) - world_to_voxel(world, affine)
    assert np.abs(error_voxels).max() < 0.5
    assert np.linalg.norm(back[:3] - world) < 1e-3 and back[3] == pytest.approx(9.0, rel=1e-5)


@pytest.mark.parametrize("direction", [np.eye(3), oblique_direction()], ids=["identity", "oblique"])
def test_training_patches_keep_the_box_on_the_ball_through_crop_zoom_flips_and_rotations(tmp_path, direction):
    """Boxes made from the world centre, then cropped, zoomed, flipped and rotated with the image,
    stay on the ball (checked against the patch's own intensity centroid)."""
    world = write_ball_scan(tmp_path / "scan.mhd", direction, (30.0, 25.0, 12.0), diameter_mm=8.0)
    cfg = config(spacing_mm="[1.2,1.2,2.0]", patch_size="[32,32,16]", zoom_prob=0.7, patches_per_scan=6,
                 positive_patch_fraction=1.0).data
    pipeline = train_transforms(cfg)
    pipeline.set_random_state(seed=3)
    checked = 0
    for _ in range(3):
        for patch in pipeline({"image": str(tmp_path / "scan.mhd"), "nodules": [[*world, 8.0]], "id": "ball"}):
            box = patch["boxes"].numpy().reshape(-1, 6)
            image = patch["image"][0].numpy()
            assert image.shape == (32, 32, 16) and len(box) == 1
            if np.any(box[0, :3] < 1) or np.any(box[0, 3:] > np.asarray(image.shape) - 1):
                continue  # the ball touches the patch border: its visible part is not centred on the box
            ball = np.argwhere(image > image.max() / 2).mean(axis=0) + 0.5  # voxel-edge coordinates, as boxes
            np.testing.assert_allclose((box[0, :3] + box[0, 3:]) / 2, ball, atol=0.5)
            checked += 1
    assert checked >= 6


def test_detected_boxes_become_marks_in_lps_world_mm(tmp_path):
    from medsight.tasks.detection.outputs import marks_from_boxes

    affine = affine_from_itk(ORIGIN_LPS, SPACING_MM, np.eye(3))
    boxes = np.asarray([[9.5, 19.5, 3.5, 11.5, 21.5, 4.5], [0.0, 0.0, 0.0, 4.0, 4.0, 2.0]])
    marks = marks_from_boxes(boxes, np.asarray([0.2, 0.9]), affine)
    assert marks.shape == (2, 5) and marks[0, 3] == pytest.approx(0.9)  # highest probability first
    np.testing.assert_allclose(marks[0, :3], np.asarray(ORIGIN_LPS) + np.asarray([1.5, 1.5, 0.5]) * SPACING_MM)
    np.testing.assert_allclose(marks[1, :3], np.asarray(ORIGIN_LPS) + np.asarray([10, 20, 3.5]) * SPACING_MM)
    assert marks[1, 4] == pytest.approx(np.mean(np.asarray([2.0, 2.0, 1.0]) * SPACING_MM))


# -- FROC by the official rules ------------------------------------------------------------------
NODULES = {"a": np.asarray([[0.0, 0.0, 0.0, 10.0], [50.0, 0.0, 0.0, 6.0]]), "b": np.asarray([[0.0, 30.0, 0.0, 8.0]])}


def score(marks, excluded=None, uids=("a", "b"), **kwargs):
    marks = {uid: np.asarray(m, dtype=float).reshape(-1, 4) for uid, m in marks.items()}
    return froc.evaluate(marks, NODULES, excluded or {}, list(uids), **kwargs)


def test_a_perfect_system_has_cpm_1():
    result = score({"a": [[0.5, 0, 0, 0.9], [50, 1, 0, 0.8]], "b": [[0, 29, 0, 0.95]]})
    assert result.cpm == 1.0 and list(result.at_rates) == [1.0] * 7 and result.hits == 3


def test_marks_far_from_every_nodule_give_cpm_0():
    result = score({"a": [[200, 200, 200, 0.9], [-200, 0, 0, 0.8]], "b": [[0, 0, 90, 0.7]]})
    assert result.cpm == 0.0 and result.hits == 0 and result.false_positives == 3


def test_a_mark_must_lie_strictly_within_the_radius():
    on_edge = score({"a": [[5.0, 0, 0, 0.9]]}, uids=("a",))  # exactly diameter / 2 from the centre: a miss
    inside = score({"a": [[4.99, 0, 0, 0.9]]}, uids=("a",))
    assert on_edge.hits == 0 and inside.hits == 1


def test_sensitivity_is_read_off_the_roc_curve_at_each_fp_rate():
    # scan a: hit 0.9, FP 0.8, hit 0.7; scan b: FP 0.6, miss.  Two scans, 3 nodules.
    result = score({"a": [[0, 0, 0, 0.9], [100, 0, 0, 0.8], [50, 0, 0, 0.7]], "b": [[100, 100, 0, 0.6]]})
    # thresholds: >0.9 -> 1/3 at 0 FP; 0.8 -> 1 FP (0.5/scan); 0.7 -> 2/3 at 0.5; 0.6 -> 2 FP (1/scan)
    expected = np.interp(froc.FP_RATES, [0.0, 0.0, 0.5, 0.5, 1.0], [0.0, 1 / 3, 1 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(result.at_rates, expected)
    assert result.cpm == pytest.approx(np.mean(expected))
    assert result.nodules == 3 and result.hits == 2 and result.false_positives == 2


def test_a_hit_on_an_excluded_finding_is_not_a_false_positive():
    excluded = {"a": np.asarray([[100.0, 0, 0, 6.0], [0.0, 80, 0, -1.0]])}  # -1: unmeasured, counts as 10 mm
    marks = {"a": [[0, 0, 0, 0.9], [101, 0, 0, 0.99], [0, 84.5, 0, 0.98], [0, 86, 0, 0.97]], "b": [[0, 30, 0, 0.5]]}
    result = score(marks, excluded)
    assert result.ignored_on_excluded == 2 and result.false_positives == 1  # 86 is 6 mm from the unmeasured one
    plain = score(marks)
    assert plain.false_positives == 3 and result.cpm > plain.cpm


def test_two_hits_on_one_nodule_count_once_at_the_highest_probability():
    result = score({"a": [[0, 0, 0, 0.3], [1, 1, 0, 0.8]]}, uids=("a",))
    assert result.hits == 1 and result.duplicate_hits == 1 and result.false_positives == 0
    assert result.nodules == 2 and result.cpm == pytest.approx(0.5)
    entries = froc.match_scan(np.asarray([[0, 0, 0, 0.3], [1, 1, 0, 0.8]]), NODULES["a"], np.zeros((0, 4))).entries
    assert entries.tolist() == [[1.0, 0.8, 1.0], [1.0, -np.inf, 0.0]]


def test_the_101st_mark_of_a_scan_is_dropped():
    far = [[300 + i, 300, 300, 0.5 + i / 1000] for i in range(100)]
    result = score({"a": far + [[0, 0, 0, 0.1]]}, uids=("a",))  # the hit has the lowest probability
    assert result.dropped_over_cap == 1 and result.hits == 0 and result.false_positives == 100
    kept = score({"a": far[:99] + [[0, 0, 0, 0.1]]}, uids=("a",))
    assert kept.hits == 1 and kept.dropped_over_cap == 0


def test_scans_without_marks_count_in_the_fps_per_scan():
    marks = {"a": [[0, 0, 0, 0.9], [100, 0, 0, 0.8]]}
    two = score(marks, uids=("a",))
    four = score(marks, uids=("a", "b", "c", "d"))
    assert two.metrics()["false_positives_per_scan"] == 1.0 and four.metrics()["false_positives_per_scan"] == 0.25


def test_bootstrap_interval_contains_the_cpm_and_is_reproducible():
    rng = np.random.default_rng(0)
    nodules = {f"s{i}": np.asarray([[0.0, 0, 0, 8.0]]) for i in range(20)}
    marks = {uid: np.asarray([[0.0, 0, 0, rng.uniform(0.3, 1)], [99, 0, 0, rng.uniform(0, 0.9)]]) for uid in nodules}
    first = froc.evaluate(marks, nodules, {}, list(nodules), bootstrap=200, seed=1)
    again = froc.evaluate(marks, nodules, {}, list(nodules), bootstrap=200, seed=1)
    low, high = first.cpm_ci[1], first.cpm_ci[2]
    assert low <= first.cpm <= high and low < high and first.cpm_ci == again.cpm_ci
    assert np.all(first.ci_low <= first.ci_high)


# -- scoring a submission file from the command line -----------------------------------------------
def write_rows(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def test_evaluate_scores_a_submission_file_without_a_model(tmp_path, capsys):
    annotations = write_rows(tmp_path / "annotations.csv", "seriesuid,coordX,coordY,coordZ,diameter_mm",
                             ["1.2.3,0,0,0,10", "1.2.3,50,0,0,6", "4.5.6,0,30,0,8"])
    excluded = write_rows(tmp_path / "excluded.csv", "seriesuid,coordX,coordY,coordZ,diameter_mm",
                          ["1.2.3,100,0,0,-1"])
    submission = write_rows(tmp_path / "sub.csv", "seriesuid,coordX,coordY,coordZ,probability",
                            ["1.2.3,0.5,0,0,0.9", "1.2.3,50,1,0,0.8", "4.5.6,0,29,0,0.95", "1.2.3,101,0,0,0.99",
                             "7.8.9,0,0,0,0.2"])
    uids = tmp_path / "seriesuids.csv"
    uids.write_text("1.2.3\n4.5.6\n7.8.9\n")
    out = tmp_path / "scores"
    assert main(["evaluate", "detection", "--predictions", str(submission), "--annotations", str(annotations),
                 "--excluded", str(excluded), "--seriesuids", str(uids), "--out", str(out), "--bootstrap", "50"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    # 3/3 nodules found above every false positive (7.8.9's 0.2): sensitivity 1 at every rate
    assert summary["cpm"] == 1.0 and summary["ignored_on_excluded"] == 1 and summary["false_positives"] == 1
    assert summary["scans"] == 3 and summary["bootstrap"]["samples"] == 50
    rows = list(csv.DictReader(open(out / "froc.csv")))
    assert [float(r["fps_per_scan"]) for r in rows] == list(froc.FP_RATES)
    assert {r["sensitivity"] for r in rows} == {"1.0"} and "ci_low" in rows[0]
    assert (out / "froc.png").stat().st_size > 0
    assert "cpm" in printed and "CPM" in printed


def test_bad_submission_and_annotation_files_are_refused_naming_the_file(tmp_path, capsys):
    annotations = write_rows(tmp_path / "annotations.csv", "seriesuid,coordX,coordY,coordZ,diameter_mm",
                             ["1.2.3,0,0,0,10"])
    submission = write_rows(tmp_path / "sub.csv", "seriesuid,coordX,coordY,coordZ", ["1.2.3,0,0,0"])
    assert main(["evaluate", "detection", "--predictions", str(submission), "--annotations", str(annotations)]) == 2
    assert capsys.readouterr().err == (f"error: {submission}: missing column(s) probability; a LUNA16 submission "
                                       "has seriesuid,coordX,coordY,coordZ,probability\n")
    missing = tmp_path / "nowhere.csv"
    good = write_rows(tmp_path / "good.csv", "seriesuid,coordX,coordY,coordZ,probability", ["1.2.3,0,0,0,0.5"])
    assert main(["evaluate", "detection", "--predictions", str(good), "--annotations", str(missing)]) == 2
    assert capsys.readouterr().err == f"error: {missing}: annotation file not found\n"
    bad = write_rows(tmp_path / "bad.csv", "seriesuid,coordX,coordY,coordZ,probability", ["1.2.3,0,zero,0,0.5"])
    assert main(["evaluate", "detection", "--predictions", str(bad), "--annotations", str(annotations)]) == 2
    assert capsys.readouterr().err == f"error: {bad}:2: coordY 'zero' is not a number\n"


# -- config --------------------------------------------------------------------------------------
def test_patch_sizes_must_fit_the_feature_pyramid():
    with pytest.raises(ConfigError, match=r"data.patch_size=\[64, 64, 30\] must be divisible by \[16, 16, 8\]"):
        config(patch_size="[64,64,30]")
    with pytest.raises(ConfigError, match="model.fpn_channels must be a positive multiple of 8"):
        resolve(DetectionConfig, overrides=["model.fpn_channels=12"])


def test_the_factory_builds_a_complete_detector():
    from monai.apps.detection.utils.ATSS_matcher import ATSSMatcher
    from monai.apps.detection.utils.hard_negative_sampler import HardNegativeSampler

    cfg = config()
    detector = TASKS.get("detection")(cfg).build_model()
    assert isinstance(detector.proposal_matcher, ATSSMatcher)
    assert isinstance(detector.fg_bg_sampler, HardNegativeSampler)
    assert list(detector.inferer.roi_size) == [128, 128, 64]
    assert detector.box_selector.detections_per_img == 100 and detector.box_selector.nms_thresh == 0.22
    detector.train()
    losses = detector(torch.rand(2, 1, 64, 64, 32), [{"boxes": torch.tensor([[20.0, 20, 8, 28, 28, 12]]),
                                                      "labels": torch.tensor([0])},
                                                     {"boxes": torch.zeros(0, 6), "labels": torch.zeros(0).long()}])
    assert set(losses) == {"classification", "box_regression"} and all(torch.isfinite(v) for v in losses.values())


# -- data ----------------------------------------------------------------------------------------
def test_luna16_records_carry_folds_nodules_and_excluded(synth_luna16):
    from medsight.datasets.luna16 import scan_records

    rows = scan_records(synth_luna16)
    assert len(rows) == 3 and sorted(r["fold"] for r in rows) == [0, 1, 2]
    assert sum(len(r["nodules"]) for r in rows) == len((synth_luna16 / "annotations.csv").read_text().splitlines()) - 1
    assert all(len(n) == 4 for r in rows for n in r["nodules"] + r["excluded"])


def test_splits_hold_out_the_fold_and_draw_validation_from_the_rest(synth_luna16):
    task = TASKS.get("detection")(config(val_fraction=0.5))
    data = task.open_data(synth_luna16)
    test, train, val = (task.records(data, s) for s in ("test", "train", "val"))
    assert [r["fold"] for r in test] == [0]
    assert len(train) + len(val) == 2 and {r["fold"] for r in train + val} == {1, 2}
    assert not {r["seriesuid"] for r in train} & {r["seriesuid"] for r in val}


def test_ct_nodules_layout_reads_nifti_nrrd_and_dicom_with_nodules_on_target(tmp_path):
    from medsight.datasets.ct_nodules import scan_records as records

    root = DATASETS.get("ct-nodules")().synth(tmp_path / "ct", cases=3, seed=2, shape=(48, 48, 16))
    assert DATASETS.get("ct-nodules")().check(root) == []
    rows = records(root)
    kinds = sorted(Path(r["image"]).name.split(".")[-1] if Path(r["image"]).is_file() else "dicom" for r in rows)
    assert kinds == ["dicom", "gz", "nrrd"]
    pipeline = eval_transforms(config(spacing_mm="[1.0,1.0,2.5]").data)
    seen = 0
    for row in rows:
        image = pipeline(dict(row))["image"]
        for x, y, z, _ in row["nodules"]:
            index = np.round(world_to_voxel([x, y, z], image.affine.numpy())[0]).astype(int)
            assert image[0][tuple(index)] > (-400 + 1024) / 1524, "a nodule centre is soft tissue"
            seen += 1
    assert seen > 0


def test_a_lesion_mask_becomes_a_row_whose_centre_maps_back_into_the_mask():
    from medsight.datasets.ct_nodules import nodules_from_mask

    affine = affine_from_itk(ORIGIN_LPS, SPACING_MM, oblique_direction())
    mask = np.zeros((40, 40, 20), dtype=np.uint8)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in mask.shape], indexing="ij"), -1)
    mask[np.linalg.norm((grid - [20, 15, 10]) * SPACING_MM, axis=-1) <= 5.0] = 1
    mask[2:4, 2:4, 2:3] = 1  # a second, tiny component
    rows = nodules_from_mask(mask, affine)
    assert len(rows) == 2
    big = max(rows, key=lambda r: r[3])
    assert big[3] == pytest.approx(10.0, rel=0.1)
    index = np.round(world_to_voxel(big[:3], affine)[0]).astype(int)
    assert mask[tuple(index)] == 1 and tuple(index) == (20, 15, 10)


# -- predict inputs ------------------------------------------------------------------------------
def test_predict_inputs_name_bad_files_and_read_series_uids(tmp_path):
    task = TASKS.get("detection")(config())
    with pytest.raises(DataError, match="file or folder not found"):
        task.input_records(str(tmp_path / "missing.mhd"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError) as error:
        task.input_records(str(tmp_path / "notes.txt"))
    assert str(error.value).startswith(f"{tmp_path / 'notes.txt'}: not a CT volume")
    from medsight.datasets.synth.dicom import write_series

    uid = write_series(np.full((8, 8, 3), -1000.0), (0, 0, 0), (1, 1, 2), np.eye(3), tmp_path / "series",
                       series_uid="1.2.826.0.1.99")
    assert task.input_records(str(tmp_path / "series")) == [
        {"image": str(tmp_path / "series"), "id": "series", "seriesuid": uid}]
    (tmp_path / "scans").mkdir()
    (tmp_path / "scans" / "a.nii.gz").write_bytes(b"")
    assert [r["seriesuid"] for r in task.input_records(str(tmp_path / "scans"))] == ["a"]


# -- predict end to end --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory):
    """A checkpoint of an untrained cpu-small detector (predict needs no training to be tested)."""
    from medsight.io import checkpoint
    from medsight.core.config import to_dict

    task_class = TASKS.get("detection")
    cfg = resolve(task_class.config_class, profile=task_class.profiles["cpu-small"],
                  overrides=["infer.roi_size=[64,64,32]"])
    torch.manual_seed(0)
    model = task_class(cfg).build_model()
    path = tmp_path_factory.mktemp("ckpt") / "untrained.pt"
    checkpoint.save({"task": "detection", "config": to_dict(cfg), "task_state": {}, "model": model.state_dict()}, path)
    return path


def test_predict_writes_world_marks_for_mhd_and_dicom_and_lists_a_bad_scan(random_checkpoint, synth_luna16, tmp_path,
                                                                          capsys):
    from medsight.datasets.luna16 import find_scans, header_geometry
    from medsight.datasets.synth.dicom import write_series
    from medsight.datasets.synth.luna16 import make_scan

    mhd = sorted(path for path, _ in find_scans(synth_luna16).values())[0]
    scan = make_scan(0, np.random.default_rng(3), shape=(48, 48, 16), spacing=(1.5, 1.5, 2.5))
    series_uid = write_series(scan.volume.astype(np.float32), scan.origin_lps, scan.spacing_mm, scan.direction,
                              tmp_path / "series", series_uid="1.2.826.0.1.3680043.99.1")
    broken = tmp_path / "broken.mhd"
    broken.write_text("ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_SHORT\n"
                      "ElementDataFile = missing.raw\n")
    out = tmp_path / "out"
    status = main(["predict", "--checkpoint", str(random_checkpoint), str(mhd), str(tmp_path / "series"), str(broken),
                   "--out", str(out), "infer.score_threshold=0.0", "infer.overlays_per_scan=2"])
    printed = capsys.readouterr().out
    assert status == 1 and "predicted 2 case(s)" in printed
    # the .mhd names a voxel file that is not there: the message names that file, and why
    assert [line for line in printed.splitlines() if line.startswith("failed:")][0] == \
        f"failed: {tmp_path / 'missing.raw'}: voxel data file missing (named by ElementDataFile in broken.mhd)"
    rows = list(csv.DictReader(open(out / "submission.csv")))
    assert list(rows[0]) == ["seriesuid", "coordX", "coordY", "coordZ", "probability", "diameter_mm"]
    by_uid = {}
    for row in rows:
        by_uid.setdefault(row["seriesuid"], []).append(row)
    assert set(by_uid) == {mhd.stem, series_uid}
    assert all(len(marks) <= 100 for marks in by_uid.values())
    affine, shape, _ = header_geometry(mhd)
    for row in by_uid[mhd.stem]:
        index = world_to_voxel([float(row["coordX"]), float(row["coordY"]), float(row["coordZ"])], affine)[0]
        assert np.all(index > -1) and np.all(index < np.asarray(shape)), "a mark outside its scan"
    probabilities = [float(r["probability"]) for r in by_uid[mhd.stem]]
    assert probabilities == sorted(probabilities, reverse=True)
    overlays = sorted(p.name for p in (out / "overlays").glob("*.png"))
    assert overlays == sorted([f"{mhd.stem}_mark1.png", f"{mhd.stem}_mark2.png", f"{series_uid}_mark1.png",
                               f"{series_uid}_mark2.png"])


def test_export_traces_the_retinanet_network(random_checkpoint, tmp_path):
    out = tmp_path / "net.ts"
    assert main(["export", "--checkpoint", str(random_checkpoint), "--format", "torchscript", "--out", str(out)]) == 0
    traced = torch.jit.load(str(out))
    maps = traced(torch.zeros(1, 1, 64, 64, 32))
    assert isinstance(maps, tuple) and len(maps) == 6  # classification then box maps, three levels each
    assert maps[0].shape == (1, 3, 16, 16, 16) and maps[3].shape == (1, 18, 16, 16, 16)


def test_each_predict_call_writes_only_its_own_scans_with_one_loaded_model(random_checkpoint, synth_luna16,
                                                                           tmp_path):
    """A prediction run's rows belong to a writer made for that call, not to the loaded task."""
    from medsight.datasets.luna16 import find_scans
    from medsight.inference.model import load

    first, second = sorted(path for path, _ in find_scans(synth_luna16).values())[:2]
    loaded = load(random_checkpoint)
    for scan, out in ((first, tmp_path / "a"), (second, tmp_path / "b")):
        report = loaded.predict_files([str(scan)], out, score_threshold=0.0, overlays_per_scan=0)
        assert report.cases == 1 and not report.failures
        uids = {row["seriesuid"] for row in csv.DictReader(open(out / "submission.csv"))}
        assert uids == {scan.stem}


def test_detection_trains_on_two_ranks(tmp_path):
    """torchrun, 2 processes (gloo): a rank whose patches hold no nodule gives the box-regression head no
    gradient, which DDP must be told (it stopped with "parameters that did not receive grad" before).
    Validation covers every validation scan once, gathered from both ranks."""
    import os
    import subprocess
    import sys

    from tests.toolkit.test_trainer import free_port

    data = DATASETS.get("luna16")().synth(tmp_path / "data", cases=6, seed=5, shape=(64, 64, 24),
                                          spacing=(1.4, 1.4, 2.5))
    run = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), "-m", "medsight", "train", "detection", "--data", str(data), "--profile",
               "cpu-small", "--out", str(run), "trainer.max_epochs=2", "trainer.val_every_n_epochs=2",
               "data.patch_size=[32,32,16]", "data.patches_per_scan=2", "data.batch_size=1",
               "infer.roi_size=[64,64,32]", "trainer.progress=never", "trainer.tensorboard=false"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "DDP 2 processes (gloo)" in result.stdout
    validation = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
                  if '"phase": "val"' in line]
    import re

    held = int(re.search(r"training and (\d+) validation records", result.stdout).group(1))
    assert held >= 1 and validation[-1]["scans"] == held  # each validation scan once, from both ranks
