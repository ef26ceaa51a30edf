"""Settings planned from the data: medsight data fingerprint and train --plans."""

import json

import numpy as np
import pytest

from medsight.planning import plans
from medsight.cli.main import main
from medsight.core.config import resolve
from medsight.errors import ConfigError
from medsight.core.registry import DATASETS, TASKS


def test_target_spacing_is_the_median_and_spares_thin_slices_of_anisotropic_data():
    assert plans.target_spacing([[1, 1, 1], [1, 1, 1.2], [0.9, 0.9, 1]]) == [1.0, 1.0, 1.0]
    # anisotropic: z median 5 mm > 3 x 0.7; its 10th percentile (3.3) is kept, not finer than 3 x 0.7
    spacings = [[0.7, 0.7, 5.0]] * 8 + [[0.7, 0.7, 2.5], [0.7, 0.7, 3.0]]
    assert plans.target_spacing(spacings)[2] == pytest.approx(np.percentile([5.0] * 8 + [2.5, 3.0], 10), abs=1e-3)
    assert plans.target_spacing([[0.7, 0.7, 5.0]] * 9 + [[0.7, 0.7, 1.0]])[2] >= 2.1


def test_memory_sizes_parse():
    assert plans.parse_memory("24GB") == 24 * 2**30 == plans.parse_memory("24 GiB") == plans.parse_memory("24")
    assert plans.parse_memory("16000MB") == 16000 * 2**20
    with pytest.raises(ConfigError, match="--memory"):
        plans.parse_memory("lots")


def test_a_patch_shrinks_its_longest_axis_in_mm_first_until_it_fits():
    patch = plans.fit_patch([100, 100, 40], [1, 1, 3], [8, 8, 8], lambda p: np.prod(p) <= 80 * 80 * 40, [16] * 3)
    assert all(v % 8 == 0 for v in patch) and np.prod(patch) <= 80 * 80 * 40
    assert patch[2] < 40  # 40 voxels of 3 mm: the longest axis in mm went first
    with pytest.raises(ConfigError, match="memory budget"):
        plans.fit_patch([64] * 3, [1] * 3, [8] * 3, lambda p: False, [16] * 3)


@pytest.fixture(scope="module")
def two_brats_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("plans")
    fmt = DATASETS.get("brats")()
    iso = fmt.synth(root / "iso", cases=4, seed=1, shape=(48, 48, 40))
    thick = fmt.synth(root / "thick", cases=4, seed=2, shape=(48, 48, 12), spacing=(0.8, 0.8, 4.0))
    return iso, thick


def _fingerprint(data, out, *extra):
    assert main(["data", "fingerprint", "brats", str(data), "--memory", "8GB", "--out", str(out), *extra]) == 0
    return json.loads(out.read_text())


def test_the_planned_spacing_follows_the_data_and_the_plan_fits_the_budget(two_brats_sets, tmp_path):
    iso, thick = two_brats_sets
    planned = {name: _fingerprint(data, tmp_path / f"{name}.json") for name, data in (("iso", iso), ("thick", thick))}
    assert planned["iso"]["config"]["data"]["spacing_mm"] == [1.0, 1.0, 1.0]
    assert planned["thick"]["config"]["data"]["spacing_mm"] == [0.8, 0.8, 4.0]
    assert planned["thick"]["fingerprint"]["anisotropy"]["median"] == pytest.approx(5.0)
    for document in planned.values():
        fp, config, memory = document["fingerprint"], document["config"], document["memory"]
        assert fp["cases"] == len(fp["per_case"]) >= 3  # training and validation cases, each read once
        assert set(fp["intensity_nonzero"]) == {"t1", "t1c", "t2", "flair"} and fp["tumour_ml"]["median"] > 0
        patch = config["data"]["patch_size"]
        assert all(v % 8 == 0 for v in patch) and config["data"]["batch_size"] >= 2
        assert memory["estimated_training_bytes"] <= memory["budget_bytes"]
        assert config["infer"]["roi_size"] == patch
    # the thick set's patch covers as many millimetres in z with 5x fewer voxels
    assert planned["thick"]["config"]["data"]["patch_size"][2] < planned["iso"]["config"]["data"]["patch_size"][2]

    # a wider network needs more bytes per voxel; half the memory makes the patch shrink until it fits
    wider = _fingerprint(iso, tmp_path / "wider.json", "model.init_filters=32")
    assert wider["memory"]["activation_bytes_per_voxel"] > planned["iso"]["memory"]["activation_bytes_per_voxel"]
    half = planned["iso"]["memory"]["estimated_training_bytes"] // 2
    smaller = _fingerprint(iso, tmp_path / "smaller.json", "--memory", f"{half / 2**20:.0f}MB")
    assert np.prod(smaller["config"]["data"]["patch_size"]) < np.prod(planned["iso"]["config"]["data"]["patch_size"])
    assert smaller["memory"]["estimated_training_bytes"] <= smaller["memory"]["budget_bytes"]


def test_a_budget_too_small_for_any_patch_or_a_bad_out_is_one_clear_error(two_brats_sets, tmp_path, capsys):
    assert main(["data", "fingerprint", "brats", str(two_brats_sets[0]), "--memory", "1MB",
                 "--out", str(tmp_path / "p.json")], nested=True) == 2
    assert "memory budget" in capsys.readouterr().err
    assert main(["data", "fingerprint", "brats", str(two_brats_sets[0]), "--memory", "8GB",
                 "--out", str(tmp_path)], nested=True) == 2  # a folder: refused before any case is read
    assert "is a folder" in capsys.readouterr().err


def test_train_uses_the_plans_an_override_wins_and_the_run_records_both(two_brats_sets, tmp_path):
    iso = two_brats_sets[0]
    plans_file = tmp_path / "plans.json"
    document = _fingerprint(iso, plans_file)
    document["config"]["data"]["patch_size"] = [32, 32, 32]  # small enough for a CPU test
    document["config"]["infer"]["roi_size"] = [48, 48, 48]
    plans_file.write_text(json.dumps(document))
    run = tmp_path / "run"
    assert main(["train", "segmentation", "--data", str(iso), "--profile", "cpu-small", "--plans", str(plans_file),
                 "--out", str(run), "data.batch_size=1", "trainer.max_epochs=1", "trainer.max_steps_per_epoch=1",
                 "model.init_filters=8", "trainer.progress=never", "trainer.tensorboard=false",
                 "trainer.val_every_n_epochs=1", "data.folds=2", "data.split_seed=1"]) == 0
    from medsight.io import checkpoint
    config = checkpoint.load(run / "checkpoints" / "last.pt", task="segmentation")["config"]
    assert config["data"]["patch_size"] == [32, 32, 32] and config["data"]["spacing_mm"] == [1.0, 1.0, 1.0]
    assert config["data"]["batch_size"] == 1  # the command line wins over the plan
    recorded = json.loads((run / "plans.json").read_text())
    assert recorded["overridden"] == {"data.batch_size": {"planned": document["config"]["data"]["batch_size"],
                                                          "used": 1}}
    assert recorded["config"] == document["config"]
    # what training chose on validation sits next to the plan (segmentation: the post-processing)
    assert set(recorded["postprocessing"]) == {"ET", "TC", "WT"}


def test_plans_for_another_task_or_without_a_config_are_refused(tmp_path):
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"fingerprint": {"task": "detection"}, "config": {}}))
    with pytest.raises(ConfigError, match="detection task"):
        plans.read(wrong, "segmentation")
    wrong.write_text("{}")
    with pytest.raises(ConfigError, match="no 'config'"):
        plans.read(wrong, "segmentation")


def test_detection_plans_follow_the_scans_spacing_and_window_the_nodules(tmp_path):
    data = DATASETS.get("luna16")().synth(tmp_path / "luna", cases=3, seed=0, shape=(64, 64, 24), spacing=(0.8, 0.8, 2.5))
    task_class = TASKS.get("detection")
    task = task_class(resolve(task_class.config_class, profile=task_class.profiles.get("gpu")))
    found = plans.measure(task, task.open_data(data), mode="never")
    assert found["spacing_mm"]["median"] == [0.8, 0.8, 2.5] and found["nodules"] >= 1
    planned = task.plan(found, plans.parse_memory("24GB"), "bf16")
    data_plan = planned["config"]["data"]
    assert data_plan["spacing_mm"] == [0.8, 0.8, 2.5]
    assert data_plan["patch_size"][0] == data_plan["patch_size"][1]  # square, for the 90-degree rotations
    low, high = data_plan["window_hu"]
    assert low <= -900 and high > found["hu_nodules"]["p0.5"]  # air below, the nodules' values inside


def test_an_unreadable_case_is_listed_and_left_out_of_the_plan(tmp_path):
    data = DATASETS.get("brats")().synth(tmp_path / "data", cases=4, seed=3, shape=(40, 40, 32))
    broken = sorted(data.glob("*/*_flair.nii.gz"))[0]
    broken.write_bytes(broken.read_bytes()[:200])  # truncated
    document = _fingerprint(data, tmp_path / "plans.json")
    found = document["fingerprint"]
    assert len(found["unreadable"]) == 1 and broken.name in found["unreadable"][0]
    assert found["cases"] == len(found["per_case"]) and document["config"]["data"]["spacing_mm"] == [1.0, 1.0, 1.0]


def test_the_python_fingerprint_writes_and_returns_the_plans_the_command_writes(two_brats_sets, tmp_path,
                                                                                 monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    document = plans.fingerprint(two_brats_sets[0], "brats", profile="cpu-small", memory=8 * 2**30,
                                 overrides={"model.init_filters": 8})
    assert json.loads((tmp_path / "plans.json").read_text()) == document  # default out: the current folder
    assert document["profile"] == "cpu-small" and document["memory"]["budget_bytes"] == 8 * 2**30
    assert document["fingerprint"]["task"] == "segmentation" and capsys.readouterr().out == ""
    with pytest.raises(ConfigError, match="task segmentation has no profile 'huge'"):
        plans.fingerprint(two_brats_sets[0], profile="huge", memory="8GB")
    with pytest.raises(ConfigError, match="--memory 0"):
        plans.fingerprint(two_brats_sets[0], memory=0)


def test_a_plan_merges_over_the_profile_replacing_lists_and_keeping_the_rest():
    profile = {"data": {"patch_size": [48, 48, 48], "batch_size": 1}, "model": {"init_filters": 8}}
    planned = {"data": {"patch_size": [64, 64, 32], "spacing_mm": [1.0, 1.0, 2.0]}, "infer": {"roi_size": [64] * 3}}
    assert plans.merge(profile, planned) == {
        "data": {"patch_size": [64, 64, 32], "batch_size": 1, "spacing_mm": [1.0, 1.0, 2.0]},
        "model": {"init_filters": 8}, "infer": {"roi_size": [64, 64, 64]}}
    assert profile["data"]["patch_size"] == [48, 48, 48]  # not changed in place
    assert plans.merge(None, planned) == planned
    assert plans.flatten(planned) == {"data.patch_size": [64, 64, 32], "data.spacing_mm": [1.0, 1.0, 2.0],
                                      "infer.roi_size": [64, 64, 64]}
