"""Segmentation post-processing chosen on validation (nnU-Net's rule): candidates scored per region in
validation, a plan chosen only where it improves Dice/HD95, kept in the task state, and applied by
evaluate and predict (unless infer.postprocess=false)."""

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import decollate_batch, list_data_collate
from scipy import ndimage
from torch import nn

from medsight.core.config import resolve
from medsight.datasets.synth.brats import labels_of, make_case
from medsight.errors import CheckpointError
from medsight.io.writers import write_nifti
from medsight.tasks.segmentation import BrainTumourSegmentation
from medsight.tasks.segmentation.config import SegmentationConfig
from medsight.tasks.segmentation.postprocess import (CANDIDATES, apply_plan, candidate_key, choose_plan,
                                                     kept_components)

SHAPE = (24, 24, 24)
SPACING_MM = 4.0  # one voxel is 0.064 mL: 5 mL is 79 voxels, so the mL candidates are small arrays here
NO_PLAN = {"ET": "none", "TC": "none", "WT": "none"}


class LogitsAsImage(nn.Module):
    """A 'network' whose input image is its output: a test writes the logits it wants as the image."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image


def ball(centre, radius, shape=SHAPE) -> np.ndarray:
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius ** 2


def tumour(centre, radius=6) -> np.ndarray:
    """(3, X, Y, Z) nested ET, TC, WT: a WT ball, a TC ball inside it, ET the TC's outer shell."""
    wt, tc = ball(centre, radius), ball(centre, radius - 2)
    return np.stack([tc & ~ball(centre, radius - 3), tc, wt])


def make_task(*overrides: str) -> BrainTumourSegmentation:
    spacing = f"[{SPACING_MM},{SPACING_MM},{SPACING_MM}]"
    config = resolve(SegmentationConfig, overrides=["infer.roi_size=[-1,-1,-1]", "infer.blend=constant",
                                                    f"data.spacing_mm={spacing}", *overrides])
    task = BrainTumourSegmentation(config)
    task.state["convention"] = "brats2021"
    return task


def validate(task: BrainTumourSegmentation, predictions: list, truths: list) -> tuple[dict, dict]:
    """The task's validation over cases whose predicted masks are given: (outputs, metrics)."""
    logits = torch.from_numpy(np.stack(predictions)).float() * 20 - 10
    batch = {"image": logits, "label": torch.from_numpy(np.stack(truths)).float(),
             "id": [f"case{i}" for i in range(len(truths))]}
    with torch.inference_mode():
        outputs = task.validation_step(LogitsAsImage(), batch)
    return outputs, task.validation_metrics(outputs)


def with_blob(regions: np.ndarray, low: int, size: int, channels=(2,)) -> np.ndarray:
    regions = regions.copy()
    for channel in channels:
        regions[channel, low:low + size, low:low + size, low:low + size] = True
    return regions


def test_a_distant_false_positive_blob_is_dropped_from_wt_and_its_hd95_falls():
    truths = [tumour((15, 15, 15)), tumour((14, 16, 13))]
    # an 8 mL oedema-like blob far from the tumour: bigger than every min_ml candidate, only largest removes it
    predictions = [with_blob(truths[0], 1, 5), truths[1]]
    task = make_task()
    outputs, metrics = validate(task, predictions, truths)

    assert task.state["postprocessing"] == {"ET": "none", "TC": "none", "WT": "largest"}
    assert metrics["hd95_WT"] > 20 and metrics["pp_hd95_WT"] == pytest.approx(0.0)
    assert metrics["pp_dice_WT"] == pytest.approx(1.0) and metrics["dice_WT"] < 0.98
    # the monitor stays the score without post-processing
    raw_mean = np.mean([metrics[f"dice_{r}"] for r in ("ET", "TC", "WT")])
    assert metrics["mean_dice"] == pytest.approx(raw_mean) and metrics["pp_mean_dice"] > metrics["mean_dice"]
    # per-case candidate scores travel with the outputs, one value per case (gathered over ranks as lists)
    assert len(outputs[candidate_key("largest", "hd95_WT")]) == 2
    assert set(outputs) >= {candidate_key(op, f"{m}_{r}") for op in CANDIDATES[1:] for m in ("dice", "hd95")
                            for r in ("ET", "TC", "WT")}


def test_a_small_blob_is_dropped_by_the_mildest_candidate_that_removes_it():
    truths = [tumour((15, 15, 15)), tumour((14, 16, 13))]
    # 8 voxels = 0.51 mL: min_ml:1, min_ml:5 and largest all remove it and score the same; min_ml:0.1 does not
    predictions = [with_blob(truths[0], 1, 2), truths[1]]
    task = make_task()
    _, metrics = validate(task, predictions, truths)
    assert task.state["postprocessing"]["WT"] == "min_ml:1"
    # too few voxels to move HD95 (under 5% of the surface), enough to cost Dice 0.002
    assert metrics["pp_dice_WT"] == pytest.approx(1.0) and metrics["dice_WT"] < 1 - 0.002


def test_a_second_real_tumour_is_kept_while_a_speck_goes():
    # two real WT components (2.1 mL and 57 mL) and a 0.5 mL speck: min_ml:1 drops the speck alone, min_ml:5
    # and largest the small tumour too
    truths = [tumour((15, 15, 15)), tumour((14, 16, 13))]
    truths[0][2] |= ball((4, 4, 4), 2)
    predictions = [with_blob(truths[0], 20, 2), truths[1]]
    task = make_task()
    outputs, metrics = validate(task, predictions, truths)
    assert task.state["postprocessing"]["WT"] == "min_ml:1"
    assert np.mean(outputs[candidate_key("largest", "dice_WT")]) < metrics["dice_WT"]
    assert metrics["pp_dice_WT"] == pytest.approx(1.0) and metrics["pp_hd95_WT"] == pytest.approx(0.0)


def test_a_second_real_tumour_exactly_predicted_keeps_none_for_every_region():
    truths = [tumour((15, 15, 15)), tumour((14, 16, 13))]
    truths[0][2] |= ball((4, 4, 4), 3)
    task = make_task()
    outputs, metrics = validate(task, [t.copy() for t in truths], truths)
    assert np.mean(outputs[candidate_key("largest", "dice_WT")]) < metrics["dice_WT"]
    assert task.state["postprocessing"] == NO_PLAN
    assert metrics["pp_mean_dice"] == metrics["mean_dice"] and metrics["pp_hd95_WT"] == metrics["hd95_WT"]


def test_a_one_voxel_speck_is_a_tie_and_keeps_none():
    # Dice +0.0003 (under the margin) and HD95 unmoved: no improvement to act on
    truths = [tumour((15, 15, 15)), tumour((14, 16, 13))]
    task = make_task()
    validate(task, [with_blob(truths[0], 22, 1), truths[1]], truths)
    assert task.state["postprocessing"] == NO_PLAN


def test_the_rule_needs_a_dice_gain_over_the_margin_or_equal_dice_and_lower_hd95():
    def outputs(base, candidate):
        out = {f"{m}_{r}": [v] for r in ("ET", "TC", "WT") for m, v in zip(("dice", "hd95"), base)}
        out[candidate_key("largest", "dice_WT")], out[candidate_key("largest", "hd95_WT")] = [candidate[0]], [candidate[1]]
        return out

    assert choose_plan(outputs((0.80, 10.0), (0.8015, 12.0)))["WT"] == "largest"  # Dice +0.0015
    assert choose_plan(outputs((0.80, 10.0), (0.8005, 12.0)))["WT"] == "none"  # +0.0005, HD95 worse
    assert choose_plan(outputs((0.80, 10.0), (0.7995, 4.0)))["WT"] == "largest"  # equal Dice, lower HD95
    assert choose_plan(outputs((0.80, 10.0), (0.7985, 4.0)))["WT"] == "none"  # Dice -0.0015
    assert choose_plan(outputs((0.80, 10.0), (0.80, 10.0)))["WT"] == "none"  # no change


def test_a_removed_wt_blob_takes_its_tc_and_et_and_nothing_else_changes():
    regions = with_blob(tumour((15, 15, 15)), 1, 3, channels=(0, 1, 2))  # a blob in all three regions
    regions[0, 12, 12, 12] = True  # an ET voxel outside TC, as independent sigmoid channels can give
    plan = {"WT": "largest", "TC": "none", "ET": "none"}
    out = apply_plan(regions, plan, [SPACING_MM] * 3)
    assert not out[:, 1:4, 1:4, 1:4].any(), "the blob leaves ET and TC with WT"
    np.testing.assert_array_equal(out[:, 6:, 6:, 6:], regions[:, 6:, 6:, 6:])  # the tumour is as it was
    np.testing.assert_array_equal(regions[:, 1:4, 1:4, 1:4], True)  # the input is not changed
    np.testing.assert_array_equal(apply_plan(regions, NO_PLAN, [1, 1, 1]), regions)
    np.testing.assert_array_equal(apply_plan(regions, None, [1, 1, 1]), regions)


def test_tc_largest_acts_after_wt_has_dropped_its_blob():
    # TC's largest component lies in a WT blob that WT's min_ml:5 drops: TC then keeps the tumour's core
    regions = tumour((16, 16, 16), radius=4)
    regions[1:, 1:5, 1:5, 1:5] = True  # 64 voxels = 4.1 mL of WT and TC; the tumour's TC is 33 voxels
    assert ndimage.label(regions[1])[1] == 2
    out = apply_plan(regions, {"WT": "min_ml:5", "TC": "largest", "ET": "none"}, [SPACING_MM] * 3)
    np.testing.assert_array_equal(out, tumour((16, 16, 16), radius=4))


def test_min_ml_is_a_volume_whatever_the_voxel_size():
    sizes = np.array([0, 50, 150, 2000])
    assert kept_components(sizes, "min_ml:0.1", voxel_ml=0.001).tolist() == [False, False, True, True]  # 1 mm
    assert kept_components(sizes, "min_ml:0.1", voxel_ml=0.008).tolist() == [False, True, True, True]  # 2 mm
    assert kept_components(sizes, "largest", voxel_ml=0.001).tolist() == [False, False, False, True]


def test_plan_round_trips_through_the_task_state_and_evaluate_applies_it():
    truths = [tumour((15, 15, 15))]
    predictions = [with_blob(truths[0], 1, 5)]
    trained = make_task()
    _, learnt = validate(trained, predictions, truths)

    loaded = make_task()
    loaded.load_state_dict(trained.state_dict())
    loaded.learning = False
    assert loaded.postprocessing == {"ET": "none", "TC": "none", "WT": "largest"}
    outputs, evaluated = validate(loaded, predictions, truths)
    assert evaluated["hd95_WT"] == pytest.approx(learnt["pp_hd95_WT"]) and evaluated["dice_WT"] == pytest.approx(1.0)
    assert "pp_mean_dice" not in evaluated and not any(k.startswith("pp:") for k in outputs)
    assert loaded.state == trained.state  # evaluate never chooses again

    switched_off = make_task("infer.postprocess=false")
    switched_off.load_state_dict(trained.state_dict())
    switched_off.learning = False
    assert switched_off.postprocessing is None
    assert validate(switched_off, predictions, truths)[1]["hd95_WT"] == pytest.approx(learnt["hd95_WT"])

    old = make_task()
    old.load_state_dict({"convention": "brats2021", "modalities": ["flair", "t1c"], "spacing_mm": [4, 4, 4]})
    old.learning = False
    assert old.postprocessing is None
    assert validate(old, predictions, truths)[1]["hd95_WT"] == pytest.approx(learnt["hd95_WT"])


def test_training_with_postprocess_off_scores_no_candidates_and_drops_an_older_plan():
    task = make_task("infer.postprocess=false")
    task.state["postprocessing"] = {"ET": "none", "TC": "none", "WT": "largest"}
    outputs, metrics = validate(task, [tumour((15, 15, 15))], [tumour((15, 15, 15))])
    assert "postprocessing" not in task.state
    assert not any(k.startswith("pp") for k in [*outputs, *metrics])


def test_an_unknown_operation_in_a_checkpoint_is_an_error_naming_the_setting():
    with pytest.raises(CheckpointError, match="'biggest' is not none, largest or min_ml:V.*infer.postprocess=false"):
        apply_plan(tumour((15, 15, 15)), {"WT": "biggest"}, [1, 1, 1])


def test_predicted_label_maps_lose_the_blob_on_the_inputs_own_grid(tmp_path):
    images, tissue = make_case(np.random.default_rng(4), (32, 32, 24))
    affine = np.diag([1.5, 1.5, 2.0, 1.0])  # 1 mm after resampling, back on this grid when written
    labels = labels_of(tissue, "brats2021")
    paths = {role: write_nifti(images[role], affine, tmp_path / f"case_{role}.nii.gz") for role in ("flair", "t1c")}
    truth_path = write_nifti(labels, affine, tmp_path / "case_seg.nii.gz", dtype=np.uint8)

    def written_wt_components(plan) -> int:
        task = make_task("data.modalities=[flair,t1c]", "data.spacing_mm=[1,1,1]", "infer.overlay=false")
        task.learning = False
        if plan:
            task.state["postprocessing"] = plan
        record = task.input_records(None, images={role: str(p) for role, p in paths.items()})[0]
        infer = task.transforms("infer")(dict(record))
        truth = task.transforms("val")({**record, "label": str(truth_path)})["label"].as_tensor().float()
        truth[2, :3, :3, :3] = 1.0  # a false-positive corner blob on the network's grid
        item = decollate_batch(list_data_collate([infer]))[0]
        out = tmp_path / ("with" if plan else "without")
        written = task.prediction_writer(out).write(task.to_result(truth, item))
        seg = np.asarray(nib.load(str(next(p for p in written if p.name.endswith("_seg.nii.gz")))).dataobj)
        return ndimage.label(seg > 0, structure=np.ones((3, 3, 3)))[1]

    assert written_wt_components(None) == 2
    assert written_wt_components({"ET": "none", "TC": "none", "WT": "largest"}) == 1
