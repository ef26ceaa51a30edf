"""Ensembles, calibration and review: ``medsight cv`` writes the folds' ensemble with a calibration and a review
threshold chosen on the out-of-fold predictions; ``medsight ensemble`` builds one from any compatible
checkpoints; predict, evaluate, export and info take it; members are combined in the task's own space."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch

import medsight
from medsight.cli.main import main
from medsight.core import calibration as cal
from medsight.datasets import brats
from medsight.io import checkpoint

QUIET = {"trainer.progress": "never", "trainer.tensorboard": False, "trainer.threads": 1}
CLS = {**QUIET, "model.name": "simple_cnn", "data.image_size": 32, "trainer.max_epochs": 2}


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _perturbed(source, out, scale=0.05, seed=0):
    """Another member: the same network with its weights moved (a real, different model)."""
    state = checkpoint.load(source)
    generator = torch.Generator().manual_seed(seed)
    weights = checkpoint.model_weights(state)
    state["model"] = {k: (v + scale * v.std().nan_to_num() * torch.randn(v.shape, generator=generator)
                          if v.is_floating_point() and v.numel() > 1 else v) for k, v in weights.items()}
    state.pop("ema", None)
    return checkpoint.save(state, out)


# -- calibration and fusion, as functions -------------------------------------------------------------------
def test_temperature_scaling_recovers_the_temperature_and_lowers_ece():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, 20000)
    truth = rng.random(20000) < 1 / (1 + np.exp(-logits / 2.5))  # the network is 2.5x too sure
    found = cal.fit_temperature(logits, truth)
    assert abs(found - 2.5) < 0.15
    before, after = 1 / (1 + np.exp(-logits)), 1 / (1 + np.exp(-logits / found))
    assert cal.ece(after, truth) < 0.5 * cal.ece(before, truth)
    assert cal.brier(after, truth) < cal.brier(before, truth)
    assert cal.fit_temperature(logits, np.zeros(20000)) == 1.0  # one class: nothing to fit


def test_cross_fitted_calibration_scores_each_fold_with_temperatures_fitted_on_the_others():
    rng = np.random.default_rng(1)

    def fold(n, too_sure):
        logits = rng.normal(0, 4, n)
        truth = (rng.random(n) < 1 / (1 + np.exp(-logits / too_sure))).astype(np.float32)
        return {"Mass": (1 / (1 + np.exp(-logits)), truth, np.ones(n))}

    same = cal.cross_fitted_metrics([fold(4000, 2.5) for _ in range(3)])
    assert same["ece"] < 0.5 * same["ece_uncalibrated"] and same["brier"] < same["brier_uncalibrated"]
    # a fold unlike the others (well calibrated already) gets the others' temperature: the cross-fitted score
    # shows what a shift between fitting and use does
    shifted = cal.cross_fitted_metrics([fold(4000, 2.5), fold(4000, 2.5), fold(4000, 1.0)])
    assert shifted["ece_Mass"] > same["ece_Mass"]


def test_platt_scaling_recovers_an_offset_that_a_temperature_cannot():
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 3, 20000)
    truth = (rng.random(20000) < cal.sigmoid(0.5 * logits - 1.5)).astype(np.float32)  # too sure, and too often positive
    slope, intercept = cal.fit_platt(logits, truth)
    assert abs(slope - 0.5) < 0.05 and abs(intercept + 1.5) < 0.1
    p = cal.sigmoid(logits)
    platt, temperature = cal.fit({"Mass": (p, truth, None)}, "platt"), cal.fit({"Mass": (p, truth, None)}, "temperature")
    assert temperature["Mass"][1] == 0 and 0 < temperature["Mass"][0] < 1  # a scale only
    after_platt = cal.ece(cal.apply(p, platt["Mass"]), truth)
    after_temperature = cal.ece(cal.apply(p, temperature["Mass"]), truth)
    assert after_platt < 0.5 * after_temperature < 0.5 * cal.ece(p, truth)
    assert np.all(np.diff(cal.apply(np.sort(p), platt["Mass"])) >= 0)  # monotone: every ranking kept
    assert cal.fit_platt(logits, np.ones(20000)) == (1.0, 0.0)  # one class: nothing to fit
    # a checkpoint from before Platt scaling keeps its temperatures, read as slope 1/T
    assert cal.stored({"temperature": {"Mass": 2.0}}) == {"Mass": (0.5, 0.0)}
    assert cal.stored({"calibration": {"Mass": [0.5, -1.5]}, "temperature": {"Mass": 2.0}}) == {"Mass": (0.5, -1.5)}


def test_the_calibration_method_is_chosen_on_folds_it_was_not_fitted_on():
    rng = np.random.default_rng(3)

    def fold(n, slope, intercept):
        logits = rng.normal(0, 3, n)
        truth = (rng.random(n) < cal.sigmoid(slope * logits + intercept)).astype(np.float32)
        return {"Mass": (cal.sigmoid(logits), truth, None)}

    method, scores = cal.choose_method([fold(3000, 0.6, -1.2) for _ in range(3)])
    assert method == "platt" and scores["ece_platt"] < scores["ece_temperature"] < scores["ece_none"]
    assert cal.choose_method([fold(3000, 0.6, -1.2)]) == ("temperature", {})  # one fold: nothing to score on
    assert cal.choose_method([fold(3000, 0.6, 0)] * 2, "temperature")[0] == "temperature"  # as asked
    with pytest.raises(ValueError, match="calibration method"):
        cal.choose_method([], "isotonic")


def test_review_threshold_flags_the_rate_asked_for():
    scores = np.linspace(0, 1, 50)
    threshold = cal.review_threshold(scores, 0.1)
    assert int((scores >= threshold).sum()) == 5
    quality = cal.flagged_versus_rest(scores, 1 - scores, threshold)
    assert quality["flagged"] == 5 and quality["flagged_mean"] < quality["rest_mean"]


def test_fused_boxes_count_the_members_that_found_them():
    from medsight.tasks.detection.boxes import fuse_boxes

    box = np.array([10, 10, 10, 20, 20, 20], dtype=np.float32)
    members = [{"boxes": np.stack([box, box + 40]), "scores": np.array([0.9, 0.6], np.float32)},
               {"boxes": np.stack([box + 1]), "scores": np.array([0.7], np.float32)}]
    for mode in ("wbf", "wbc"):
        fused = fuse_boxes(members, iou=0.1, mode=mode)
        assert fused["agreement"].tolist() == [2, 1]
        assert fused["scores"].tolist() == pytest.approx([(0.9 + 0.7) / 2, 0.6 / 2])
        assert fused["boxes"][0] == pytest.approx(box + 0.7 / 1.6, abs=1e-5)  # score-weighted mean


# -- classification: cv -> ensemble with temperatures and review ---------------------------------------------
@pytest.fixture(scope="module")
def folds(tmp_path_factory):
    root = tmp_path_factory.mktemp("ensemble-cls")
    data = medsight.synthesize("chestxray14", root / "cxr", cases=40, seed=4, size=32)
    result = medsight.cross_validate("classification", data, folds=2, out=root / "cv", overrides=CLS, bootstrap=0,
                                     calibration="platt")
    return result, data, root


def test_cv_writes_the_folds_ensemble_with_choices_made_on_oof(folds):
    result, data, root = folds
    assert result.ensemble == root / "cv" / "ensemble.pt"
    state = checkpoint.load(result.ensemble)
    assert len(state["ensemble"]["members"]) == 2
    chosen = state["task_state"]
    assert chosen["calibration_method"] == "platt" and "temperature" not in chosen
    assert set(chosen["calibration"]) == set(chosen["labels"]) and all(a > 0 for a, b in chosen["calibration"].values())
    assert chosen["thresholds"] == result.chosen["thresholds"]  # moved to the calibrated scale with them
    plain = medsight.load(result.ensemble).configured({"calibrated": False})  # back on the network's own scale
    assert plain.thresholds == pytest.approx([float(cal.invert(t, chosen["calibration"][n]))
                                              for t, n in zip(chosen["thresholds"], chosen["labels"])], abs=1e-9)
    assert chosen["review"]["rate"] == 0.10 and np.isfinite(chosen["review"]["threshold"])
    summary = json.loads((root / "cv" / "cv.json").read_text())
    assert summary["ensemble"] == str(result.ensemble)
    assert summary["oof_with_choices"]["ece"] <= summary["oof_with_choices"]["ece_uncalibrated"] + 1e-9
    assert {"cross_fitted_ece_platt", "cross_fitted_ece_none"} <= set(summary["oof_with_choices"])
    page = (root / "cv" / "report.html").read_text()  # the folds, the reliability diagram, the review evidence
    assert "<td>fold 0</td>" in page and "<td>fold 1</td>" in page and "mean &plusmn; sd" in page
    assert '<img src="reliability.png"' in page and (root / "cv" / "reliability.png").stat().st_size > 0
    assert "Review flag" in page and "flagged_mean" in page


def test_the_ensemble_predicts_the_mean_of_its_calibrated_members(folds, tmp_path):
    result, data, root = folds
    pictures = sorted((data / "images_001" / "images").glob("*.png"))[:6]
    ensemble = medsight.load(result.ensemble)
    found = ensemble.predict(pictures)
    affine = ensemble.task.state["calibration"]
    names = ensemble.task.state["labels"]
    expected = []
    for fold in result.finished:
        member = medsight.load(fold.checkpoint)
        raw = np.stack([r.probabilities for r in member.predict(pictures)])
        slope, intercept = (np.array([affine[n][i] for n in names]) for i in (0, 1))
        expected.append(cal.sigmoid(slope * cal.logit(raw) + intercept))
    got = np.stack([r.probabilities for r in found])
    assert got == pytest.approx(np.mean(expected, axis=0), abs=2e-3)  # members run at predict's precision
    assert np.stack([r.spread for r in found]) == pytest.approx(np.std(expected, axis=0), abs=2e-3)

    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(result.ensemble), *map(str, pictures), "--out", str(out)]) == 0
    rows = _rows(out / "predictions.csv")
    assert len(rows) == 6 and f"{names[0]}_spread" in rows[0]
    cases = _rows(out / "cases.csv")
    assert [c["case"] for c in cases] == [p.name for p in pictures]
    assert {c["review"] for c in cases} <= {"True", "False"} and all(c["score"] for c in cases)


def test_evaluate_reports_calibration_before_and_after(folds, tmp_path):
    result, data, root = folds
    evaluation = medsight.load(result.ensemble).evaluate(data, "test", out=tmp_path / "eval")
    for key in ("ece", "ece_uncalibrated", "brier", "brier_uncalibrated"):
        assert np.isfinite(evaluation.metrics[key])
    assert (tmp_path / "eval" / "reliability.png").stat().st_size > 1000


def test_medsight_ensemble_builds_one_and_refuses_another_task(folds, tmp_path, capsys):
    result, data, root = folds
    out = tmp_path / "two.pt"
    first, second = (str(f.checkpoint) for f in result.finished)
    assert main(["ensemble", first, second, "--out", str(out)]) == 0
    assert main(["info", "--checkpoint", str(out)]) == 0
    assert "ensemble: 2 members" in capsys.readouterr().out
    assert main(["export", "--checkpoint", str(out), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]) == 0
    assert (tmp_path / "m.member0.pt").is_file() and (tmp_path / "m.member1.pt").is_file()
    capsys.readouterr()
    seg = tmp_path / "other.pt"
    checkpoint.save({**checkpoint.load(first), "task": "segmentation"}, seg)
    assert main(["ensemble", first, str(seg), "--out", str(tmp_path / "bad.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "made for task 'segmentation'" in err[0] and str(seg) in err[0]
    assert not (tmp_path / "bad.pt").exists()


# -- segmentation: averaged probabilities and the uncertainty map on the input grid ---------------------------
@pytest.fixture(scope="module")
def brats_members(tmp_path_factory):
    root = tmp_path_factory.mktemp("ensemble-seg")
    data = medsight.synthesize("brats", root / "data", cases=3, seed=2, shape="40,40,24")
    run = medsight.train("segmentation", data, out=root / "run", profile="cpu-small", overrides={
        **QUIET, "trainer.max_epochs": 2, "data.patch_size": [32, 32, 16], "data.patches_per_case": 1,
        "data.folds": 3, "data.modalities": ["flair", "t1c"], "infer.roi_size": [32, 32, 24],
        "model.init_filters": 8})
    other = _perturbed(run.last, root / "other.pt", scale=0.3)
    return run.last, other, data, root


def test_a_segmentation_ensemble_averages_probabilities_and_writes_its_spread(brats_members, tmp_path):
    first, other, data, root = brats_members
    path = medsight.ensemble([first, other], tmp_path / "seg.pt")
    case = sorted(p for p in (data / "imagesTs" if (data / "imagesTs").is_dir() else data).rglob("*flair*.nii.gz"))[0]
    folder = case.parent
    singles = [medsight.load(p).predict(folder, probabilities=True, postprocess=False)[0] for p in (first, other)]
    together = medsight.load(path).predict(folder, probabilities=True, postprocess=False)[0]
    mean = (singles[0].probabilities + singles[1].probabilities) / 2
    assert together.probabilities == pytest.approx(mean, abs=1e-4)
    convention = brats.CONVENTIONS[together.convention]  # the label values keep ET in TC in WT
    near = np.abs(mean - 0.5).min(axis=0) < 1e-3  # a voxel on the threshold may go either way
    expected = convention.from_regions(mean > 0.5)
    assert np.array_equal(together.labels[~near], expected[~near])
    spread = np.abs(singles[0].probabilities - singles[1].probabilities).max(axis=0) / 2  # two members: |a-b|/2
    assert together.uncertainty == pytest.approx(spread, abs=1e-4)
    assert together.quality["uncertainty"] > 0 and together.quality["score"] >= 0

    written = together.save(tmp_path / "out")
    uncertainty = next(p for p in written if p.name.endswith("_uncertainty.nii.gz"))
    source = nib.load(str(case))
    saved = nib.load(str(uncertainty))
    assert saved.shape == source.shape and np.allclose(saved.affine, source.affine, atol=1e-4)
    assert (tmp_path / "out" / "cases.csv").is_file()


def test_a_calibrated_segmentation_model_draws_the_same_masks(brats_members, tmp_path):
    first, other, data, root = brats_members
    state = checkpoint.load(first)
    affine = {"ET": [0.7, -1.0], "TC": [1.3, 0.6], "WT": [0.8, 0.4]}  # Platt maps with offsets
    state["task_state"] = {**state["task_state"], "calibration": affine, "calibration_method": "platt"}
    calibrated = checkpoint.save(state, tmp_path / "calibrated.pt")
    case = sorted(p for p in (data / "imagesTs" if (data / "imagesTs").is_dir() else data).rglob("*flair*.nii.gz"))[0]
    plain, mapped = (medsight.load(p).predict(case.parent, probabilities=True)[0] for p in (first, calibrated))
    for k, region in enumerate(brats.REGIONS):
        assert mapped.probabilities[k] == pytest.approx(cal.apply(plain.probabilities[k], affine[region]), abs=1e-4)
    near = np.abs(plain.probabilities - 0.5).min(axis=0) < 1e-4  # a voxel on the threshold may go either way
    assert np.array_equal(mapped.labels[~near], plain.labels[~near])  # the threshold moved with the probabilities
    assert np.abs(mapped.probabilities - plain.probabilities).max() > 0.05  # and the probabilities did move


def test_int8_compresses_every_member_and_the_ensemble_still_predicts(folds, tmp_path):
    result, data, root = folds
    out = tmp_path / "int8.pt"
    label = medsight.compress(result.ensemble, "int8", out, data, samples=8, split="test")
    state = checkpoint.load(out)
    assert [m["engine"]["precision"] for m in state["ensemble"]["members"]] == ["int8", "int8"]
    assert all("model" not in m for m in state["ensemble"]["members"])
    assert state["task_state"]["calibration"] == checkpoint.load(result.ensemble)["task_state"]["calibration"]
    assert label["after"]["engine"].startswith("openvino")
    pictures = sorted((data / "images_001" / "images").glob("*.png"))[:4]
    plain = np.stack([r.probabilities for r in medsight.load(result.ensemble, engine="torch",
                                                              precision="fp32").predict(pictures)])
    small = np.stack([r.probabilities for r in medsight.load(out).predict(pictures)])
    assert np.abs(plain - small).max() < 0.1  # int8 rounding, not another model
    with pytest.raises(medsight.ConfigError, match="compress each member"):
        medsight.compress(result.ensemble, "prune", tmp_path / "p.pt", data)


# -- detection: the members' boxes fused, with their agreement ------------------------------------------------
def test_a_detection_ensemble_fuses_boxes_and_says_how_many_members_found_each(tmp_path):
    data = medsight.synthesize("luna16", tmp_path / "data", cases=3, seed=5, shape="64,64,24", spacing="1.4,1.4,2.5")
    run = medsight.train("detection", data, out=tmp_path / "run", profile="cpu-small", overrides={
        **QUIET, "trainer.max_epochs": 1, "data.patch_size": [32, 32, 16], "data.patches_per_scan": 1,
        "infer.roi_size": [64, 64, 32]})
    chosen = checkpoint.load(run.last)["task_state"]["box_selection"]  # NMS swept on validation
    assert {"0.1", "0.22", "0.5"} <= set(chosen["cpm"]) and chosen["cpm"][f"{chosen['nms_iou']:g}"] == max(
        chosen["cpm"].values())
    other = _perturbed(run.last, tmp_path / "other.pt", scale=0.2)
    path = medsight.ensemble([run.last, other], tmp_path / "det.pt")
    scans = sorted(data.glob("subset*/*.mhd"))[:2]
    options = {"score_threshold": 0.0, "overlays_per_scan": 0}
    ensemble = medsight.load(path, engine="torch")
    singles = [medsight.load(p, engine="torch").predict(scans, **options) for p in (run.last, other)]
    fused = ensemble.predict(scans, **options)
    for index, result in enumerate(fused):
        assert result.agreement is not None and set(result.agreement.tolist()) <= {1, 2}
        top = max(s[index].marks[:, 3].max() for s in singles)
        assert result.marks[:, 3].max() <= top + 1e-6  # a fused score is the members' mean, never above the best
    out = tmp_path / "pred"
    report = ensemble.predict_files(scans, out, **options)
    assert not report.failures
    header = (out / "submission.csv").read_text().splitlines()[0].split(",")
    assert header[:5] == ["seriesuid", "coordX", "coordY", "coordZ", "probability"] and header[-1] == "agreement"
    evaluation = ensemble.evaluate(data, "val")
    assert "cpm" in evaluation.metrics
    # a Platt map on the score: every mark kept, in the same order, with its probability mapped
    state = checkpoint.load(run.last)
    state["task_state"] = {**state["task_state"], "calibration": {"score": [0.6, -1.2]}, "calibration_method": "platt"}
    mapped = medsight.load(checkpoint.save(state, tmp_path / "calibrated.pt"), engine="torch").predict(scans, **options)
    for plain, calibrated in zip(singles[0], mapped):
        assert len(plain.marks) == len(calibrated.marks) and np.allclose(plain.marks[:, :3], calibrated.marks[:, :3])
        assert calibrated.marks[:, 3] == pytest.approx(cal.apply(plain.marks[:, 3], (0.6, -1.2)), abs=1e-5)
