"""The classification task: transforms, models and starting weights, losses, metrics and thresholds,
and, on a small model trained once here, thresholds used by predict, Grad-CAM localisation,
batch predict past bad pictures, evaluation files; single-label folders end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medsight.io import checkpoint
from medsight.cli.main import main
from medsight.core.config import resolve
from medsight.datasets.chestxray14 import FINDINGS
from medsight.datasets.synth.chestxray14 import FINDING_REGIONS
from medsight.datasets.synth.dicom import write_xray
from medsight.errors import ConfigError, DataError
from medsight.inference.model import load
from medsight.core.registry import DATASETS, TASKS
from medsight.tasks.classification import XrayClassification
from medsight.tasks.classification.config import ClassificationConfig
from medsight.tasks.classification.losses import classification_loss, positive_weights
from medsight.tasks.classification.metrics import choose_thresholds, operating_points, summarise
from medsight.tasks.classification.labels import LabelSet
from medsight.tasks.classification.models import build_classifier, last_feature_map_layer
from medsight.tasks.classification.outputs import PREDICTIONS_CSV
from medsight.tasks.classification.sampling import inverse_frequency_weights, per_group_weights

LABELS = ["Mass", "Effusion"]
SIZE_PX = 96


def make_task(*overrides: str) -> XrayClassification:
    return XrayClassification(resolve(ClassificationConfig, overrides=list(overrides)))


def records_of(task: XrayClassification, root: Path, split: str) -> list[dict]:
    """A split's records, after the task learnt its state from the data as a training run starts."""
    data = task.open_data(root)
    task.learn_state(data)
    return task.records(data, split)


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# -- registration, config -------------------------------------------------------------------------
def test_task_is_registered_through_its_entry_point_and_reads_every_picture_format():
    from medsight.data.formats import formats_for

    task = TASKS.get("classification")
    assert task is XrayClassification
    assert {"chestxray14", "folders", "csv"} <= set(formats_for(task.schema))
    assert task.demo.dataset in formats_for(task.schema)


def test_config_refuses_an_unknown_model_and_format_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"model.name='densenet12' is not one of .*did you mean densenet121"):
        make_task("model.name=densenet12")
    with pytest.raises(ConfigError, match=r"data.format='folder' .*did you mean folders"):
        make_task("data.format=folder")
    with pytest.raises(ConfigError, match=r"data.group_pattern 'patient' needs a \(capture group\)"):
        make_task("data.group_pattern=patient")
    assert make_task("model.name=resnet18").config.model.name == "resnet18"  # any timm name is accepted


# -- transforms -----------------------------------------------------------------------------------
@pytest.mark.parametrize("percentiles", ["[0.5,99.5]", "[]"])
def test_monochrome1_dicom_and_16_bit_png_reach_the_model_as_the_8_bit_png_does(tmp_path, percentiles):
    """A bright blob at the top left stays bright and in place whatever the file's convention."""
    rows, cols = np.mgrid[0:80, 0:60]
    scene = 40 + 0.5 * cols + 150 * np.exp(-((rows - 20) ** 2 + (cols - 15) ** 2) / 60.0)  # 8-bit range
    eight = np.round(scene).astype(np.uint8)
    Image.fromarray(eight).save(tmp_path / "eight.png")
    Image.fromarray(eight.astype(np.uint16) * 257).save(tmp_path / "sixteen.png")
    write_xray(tmp_path / "mono2.dcm", eight.astype(np.uint16) * 16, photometric="MONOCHROME2")
    write_xray(tmp_path / "mono1.dcm", 4095 - eight.astype(np.uint16) * 16, photometric="MONOCHROME1")
    transform = make_task("data.image_size=32", f"data.intensity_percentiles={percentiles}").transforms("infer")
    seen = {name: transform({"image": str(tmp_path / name), "path": "", "id": name})["image"].numpy()
            for name in ("eight.png", "sixteen.png", "mono2.dcm", "mono1.dcm")}
    reference = seen.pop("eight.png")
    assert reference.shape == (1, 32, 32) and reference.dtype == np.float32
    peak = np.unravel_index(reference[0].argmax(), (32, 32))
    assert abs(peak[0] - 8) <= 1 and abs(peak[1] - 8) <= 1  # the blob: row 20 of 80, column 15 of 60
    for name, image in seen.items():
        np.testing.assert_allclose(image, reference, atol=0.05, err_msg=name)


def test_training_transforms_augment_and_evaluation_transforms_repeat(synth_chestxray14):
    task = make_task("data.image_size=48")
    record = records_of(task, synth_chestxray14, "train")[0]
    val = task.transforms("val")
    first, second = val(dict(record)), val(dict(record))
    assert first["image"].shape == (1, 48, 48) and first["label"].shape == (14,)
    assert torch.equal(first["image"], second["image"])
    assert abs(float(first["image"].mean())) < 1e-4 and abs(float(first["image"].std()) - 1) < 0.02  # z-scored
    train = task.transforms("train")
    train.set_random_state(seed=1)
    augmented = [train(dict(record))["image"] for _ in range(3)]
    assert augmented[0].shape == (1, 48, 48)
    assert not torch.equal(augmented[0], augmented[1]) or not torch.equal(augmented[1], augmented[2])


# -- models ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, cam_layer", [("densenet121", "class_layers.relu"), ("simple_cnn", "features"),
                                             ("resnet18", "layer4"), ("efficientnet_b0", "bn2")])
def test_every_model_family_gives_one_logit_per_label_and_a_grad_cam_layer(name, cam_layer):
    model = build_classifier(name, num_outputs=3).eval()
    picture = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert model(picture).shape == (2, 3)
    assert last_feature_map_layer(model, picture[:1]) == cam_layer


def test_model_init_weights_is_not_read_when_a_model_is_built(tmp_path):
    """Starting weights are the trainer's business, once, when a run starts (tests/toolkit/test_weights.py)."""
    task = make_task("model.name=simple_cnn", f"model.init_weights={tmp_path / 'gone.pt'}")
    task.state.update(LabelSet(("a", "b"), multi_label=False).to_state())
    assert task.build_model().head[-1].out_features == 2  # no error although the file does not exist


def test_a_task_whose_state_was_neither_learnt_nor_loaded_says_so():
    from medsight.errors import TaskError

    with pytest.raises(TaskError, match="'labels' is not known yet"):
        make_task().build_model()


# -- losses, sampling, metrics --------------------------------------------------------------------
def test_focal_loss_without_focusing_is_binary_cross_entropy_and_pos_weight_scales_positives():
    logits = torch.tensor([[2.0, -1.0], [-0.5, 0.3]])
    target = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    bce = classification_loss(logits, target, "bce", multi_label=True)
    focal = classification_loss(logits, target, "focal", multi_label=True, focal_gamma=0.0)
    torch.testing.assert_close(focal, bce)
    weighted = classification_loss(logits, target, "bce", multi_label=True, weights=[3.0, 1.0])
    by_hand = -(3 * target * torch.log(torch.sigmoid(logits)) * torch.tensor([1.0, 0.0])
                + target * torch.log(torch.sigmoid(logits)) * torch.tensor([0.0, 1.0])
                + (1 - target) * torch.log(1 - torch.sigmoid(logits))).mean()
    torch.testing.assert_close(weighted, by_hand)
    one_hot = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    torch.testing.assert_close(classification_loss(logits, one_hot, "ce", multi_label=False),
                               torch.nn.functional.cross_entropy(logits, torch.tensor([1, 0])))


def test_positive_weights_are_negatives_over_positives_and_capped():
    labels = np.array([[1, 0, 0], [0, 0, 1], [0, 0, 1], [0, 0, 1]])
    assert positive_weights(labels) == [3.0, 100.0, pytest.approx(1 / 3)]


def test_inverse_frequency_weights_give_each_class_the_same_total_weight():
    labels = np.array([[1, 0]] * 6 + [[0, 1]] * 2)
    weights = np.asarray(inverse_frequency_weights(labels))
    assert weights[:6].sum() == pytest.approx(1.0) and weights[6:].sum() == pytest.approx(1.0)
    multi = np.array([[1, 1], [0, 1], [0, 1], [0, 0]])  # the rarest positive label decides; none -> negatives
    assert inverse_frequency_weights(multi) == [1.0, pytest.approx(1 / 3), pytest.approx(1 / 3), 1.0]


def test_patient_sampler_weighs_every_patient_alike_in_every_format(synth_chestxray14, tmp_path):
    assert per_group_weights(["7", "7", "7", "9"]) == [pytest.approx(1 / 3)] * 3 + [1.0]
    xray = make_task("data.sampler=patient")
    records = records_of(xray, synth_chestxray14, "train")
    patients = {r["id"]: str(int(r["id"].split("_")[0])) for r in records}  # NIH names: <patient>_<index>.png
    assert all(r["group"] == patients[r["id"]] for r in records)
    assert len(set(patients.values())) < len(records)  # the synthetic set has follow-up pictures
    totals: dict[str, float] = {}
    for record, weight in zip(records, xray.train_sample_weights(records)):
        totals[record["group"]] = totals.get(record["group"], 0.0) + weight
    assert list(totals.values()) == pytest.approx([1.0] * len(totals))
    folders = DATASETS.get("folders")().synth(tmp_path / "folders", cases=12, seed=1, size=32)
    by_name = records_of(make_task(r"data.group_pattern=(\d{4})\d\.png"), folders, "all")  # 00012.png: 0001
    assert all(r["group"] == Path(r["id"]).name[:4] for r in by_name) and len(by_name) == 12
    table = DATASETS.get("csv")().synth(tmp_path / "csv", cases=12, seed=1, size=32)
    rows = records_of(make_task("data.group_column=patient_id"), table / "labels.csv", "all")
    assert {r["group"] for r in rows} == {r["patient_id"] for r in read_rows(table / "labels.csv")}
    assert make_task().train_sample_weights(records) is None


def test_predict_batch_on_a_cpu_follows_the_picture_size_and_is_configurable():
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert make_task("data.image_size=224").predict_batch_size(cpu) == 8
    assert make_task("data.image_size=128").predict_batch_size(cpu) == 24
    assert make_task("data.image_size=64").predict_batch_size(cpu) == 64  # at most 64
    assert make_task("data.image_size=2048").predict_batch_size(cpu) == 1
    assert make_task("data.image_size=224", "data.val_batch_size=48").predict_batch_size(gpu) == 48
    assert make_task("infer.batch_size=5").predict_batch_size(cpu) == 5
    with pytest.raises(ConfigError, match="infer.batch_size"):
        make_task("infer.batch_size=-1")


def test_thresholds_separate_cleanly_separable_scores_and_keep_the_old_one_without_positives():
    scores = np.array([[0.10, 0.2], [0.35, 0.4], [0.62, 0.1], [0.90, 0.3]])
    truth = np.array([[0, 0], [0, 0], [1, 0], [1, 0]])
    assert choose_thresholds(scores, truth, "youden", fallback=[0.5, 0.7]) == [0.62, 0.7]
    assert choose_thresholds(scores, truth, "f1")[0] == 0.62


def test_operating_points_match_the_confusion_counts():
    calls = np.array([[1], [1], [0], [0], [1]])
    truth = np.array([[1], [0], [1], [0], [1]])  # TP 2, FP 1, FN 1, TN 1
    points = operating_points(calls, truth)
    assert points["sensitivity"][0] == pytest.approx(2 / 3)
    assert points["specificity"][0] == pytest.approx(1 / 2)
    assert points["precision"][0] == pytest.approx(2 / 3)
    assert points["f1"][0] == pytest.approx(2 / 3)


def test_summary_averages_defined_aurocs_and_gives_accuracy_for_single_label_data():
    probabilities = np.array([[0.9, 0.1], [0.8, 0.3], [0.2, 0.6], [0.4, 0.7]])
    multi = summarise(probabilities, np.array([[1, 0], [1, 0], [0, 0], [0, 0]]), ["a", "b"], [0.5, 0.5], True)
    assert multi["auroc_a"] == 1.0 and np.isnan(multi["auroc_b"]) and multi["mean_auroc"] == 1.0
    probabilities[0, 1] = 0.5  # the negative outscores one of three positives of y: AUROC 2/3
    single = summarise(probabilities, np.array([[1, 0], [0, 1], [0, 1], [0, 1]]), ["x", "y"], None, False)
    assert single["accuracy"] == 0.75 and single["auroc_y"] == pytest.approx(2 / 3)


def test_label_set_refuses_unknown_labels_and_several_labels_in_single_label_data():
    labels = LabelSet(("NORMAL", "PNEUMONIA"), multi_label=False)
    np.testing.assert_array_equal(labels.encode(["PNEUMONIA"], "x.png"), [0.0, 1.0])
    with pytest.raises(DataError, match="x.png: label 'COVID' is not one of the model's labels"):
        labels.encode(["COVID"], "x.png")
    with pytest.raises(DataError, match="exactly one label per image, got 2"):
        labels.encode(["NORMAL", "PNEUMONIA"], "x.png")


def test_csv_records_become_label_vectors_in_the_configured_order(tmp_path):
    data = DATASETS.get("csv")().synth(tmp_path / "csv", cases=20, seed=2, size=32)
    order = list(reversed(FINDINGS))
    task = make_task(f"data.labels=[{','.join(order)}]")
    table = {r["path"]: r["label"].split("|") for r in read_rows(data / "labels.csv")}
    records = records_of(task, data / "labels.csv", "train")
    assert len(records) == 14  # 7 of every 10 rows are marked train
    for record in records:
        np.testing.assert_array_equal(record["label"], [float(name in table[record["id"]]) for name in order])
    unknown = make_task("data.labels=[Mass,Effusion]")
    with pytest.raises(DataError, match="is not one of the model's labels \\(Mass, Effusion\\)"):
        records_of(unknown, data / "labels.csv", "train")


def test_predict_inputs_are_pictures_in_files_and_folders_and_others_are_named(tmp_path):
    task = make_task()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "sub").mkdir()
    write_xray(tmp_path / "sub" / "b.dcm", np.zeros((4, 4), np.uint16))
    (tmp_path / "notes.txt").write_text("not a picture")
    assert [r["id"] for r in task.input_records(str(tmp_path))] == ["a.png", "sub/b.dcm"]
    with pytest.raises(DataError, match=r"notes.txt: not a picture this task reads"):
        task.input_records(str(tmp_path / "notes.txt"))
    with pytest.raises(DataError, match="gone.png: file not found"):
        task.input_records(str(tmp_path / "gone.png"))


# -- a model trained once: thresholds, Grad-CAM, predict, evaluate --------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """simple_cnn trained on synthetic pictures with two findings in distinct places (about 10 s)."""
    root = tmp_path_factory.mktemp("cls")
    data = DATASETS.get("chestxray14")().synth(root / "data", cases=128, seed=1, size=SIZE_PX, findings="Mass,Effusion")
    run = root / "run"
    assert main(["train", "classification", "--data", str(data), "--out", str(run), "model.name=simple_cnn",
                 f"data.image_size={SIZE_PX}", f"data.labels=[{','.join(LABELS)}]", "data.augment_prob=0",
                 "trainer.max_epochs=12", "optim.lr=3e-3", "optim.scheduler=none", "trainer.progress=never",
                 "data.val_fraction=0.3",
                 "trainer.tensorboard=false"]) == 0
    # the final model: with a validation split this small, an early epoch can score best by chance
    return {"data": data, "run": run, "checkpoint": run / "checkpoints" / "last.pt"}


def test_thresholds_chosen_on_validation_are_stored_and_used_by_predict(trained, tmp_path):
    state = checkpoint.load(trained["checkpoint"], task="classification")
    stored = state["task_state"]["thresholds"]
    assert state["task_state"]["labels"] == LABELS and len(stored) == 2 and stored != [0.5, 0.5]

    evaluation = tmp_path / "val"
    assert main(["evaluate", "--checkpoint", str(trained["checkpoint"]), "--data", str(trained["data"]),
                 "--split", "val", "--out", str(evaluation)]) == 0
    rows = read_rows(evaluation / "per_image.csv")
    probabilities = np.array([[float(r[n]) for n in LABELS] for r in rows])
    truth = np.array([[float(n in r["truth"].split("|")) for n in LABELS] for r in rows])
    assert choose_thresholds(probabilities, truth, "youden") == pytest.approx(stored, abs=1e-5)

    images = sorted((trained["data"] / "images_001" / "images").glob("*.png"))[:12]
    assert main(["predict", "--checkpoint", str(trained["checkpoint"]), *map(str, images),
                 "--out", str(tmp_path / "p")]) == 0
    for row in read_rows(tmp_path / "p" / PREDICTIONS_CSV):
        called = [n for n, t in zip(LABELS, stored) if float(row[n]) >= t]
        assert row["findings"] == ("|".join(called) or "No Finding")

    state["task_state"]["thresholds"] = [0.0, 1.01]  # Mass always, Effusion never
    checkpoint.save(state, tmp_path / "edited.pt")
    assert main(["predict", "--checkpoint", str(tmp_path / "edited.pt"), *map(str, images),
                 "--out", str(tmp_path / "q")]) == 0
    assert {r["findings"] for r in read_rows(tmp_path / "q" / PREDICTIONS_CSV)} == {"Mass"}


def test_grad_cam_peak_lies_inside_the_synthetic_finding_region(trained, tmp_path):
    """On new pictures with a mass only, the Mass heatmap peaks inside FINDING_REGIONS['Mass']."""
    fresh = DATASETS.get("chestxray14")().synth(tmp_path / "fresh", cases=24, seed=99, size=SIZE_PX, findings="Mass")
    loaded = load(trained["checkpoint"], engine="torch")
    task, model = loaded.configured({"cam": True, "cam_top_k": 2}), loaded.torch_model
    transform = task.transforms("infer")
    mass, threshold = LABELS.index("Mass"), task.thresholds[LABELS.index("Mass")]
    cx, cy, radius = FINDING_REGIONS["Mass"]
    distances = []
    for line in (fresh / "Data_Entry_2017.csv").read_text().splitlines()[1:]:
        name, findings = line.split(",")[:2]
        if findings != "Mass":
            continue
        path = next(fresh.glob(f"images_*/images/{name}"))
        item = transform({"image": str(path), "path": str(path), "id": name})
        with torch.no_grad():
            (prediction,) = task.predict(model, {"image": item["image"][None]})
        if prediction["probabilities"][mass] < threshold:
            continue
        heatmap = prediction["cams"][prediction["cam_labels"].index(mass)]
        assert heatmap.shape == (SIZE_PX, SIZE_PX) and heatmap.max() == pytest.approx(1.0)
        row, col = np.unravel_index(heatmap.argmax(), heatmap.shape)
        distances.append(np.hypot((col + 0.5) / SIZE_PX - cx, (row + 0.5) / SIZE_PX - cy) / radius)
    assert len(distances) >= 5, "the model should detect most masses"
    inside = np.mean(np.asarray(distances) <= 1.0)
    assert inside >= 0.9, f"peak inside the region for {inside:.0%} of {len(distances)} pictures: {distances}"


def test_batch_predict_goes_past_bad_pictures_lists_them_and_writes_the_rest(trained, tmp_path, capsys):
    good = sorted((trained["data"] / "images_001" / "images").glob("*.png"))[:2]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG but damaged" * 8)
    write_xray(tmp_path / "xray.dcm", (np.arange(96 * 96).reshape(96, 96) % 4000).astype(np.uint16))
    out = tmp_path / "out"
    capsys.readouterr()
    status = main(["predict", "--checkpoint", str(trained["checkpoint"]), str(good[0]), str(broken),
                   str(tmp_path / "gone.png"), str(tmp_path / "xray.dcm"), str(good[1]), "--out", str(out), "--cam",
                   "infer.cam_top_k=1"])
    printed = capsys.readouterr().out
    assert status == 1
    assert f"failed: {broken}: cannot read picture" in printed
    assert f"failed: {tmp_path / 'gone.png'}: file not found" in printed
    assert "2 input(s) failed; the others were written" in printed
    rows = read_rows(out / PREDICTIONS_CSV)
    assert list(rows[0]) == ["image", *LABELS, "findings"]
    assert [r["image"] for r in rows] == [str(good[0]), str(tmp_path / "xray.dcm"), str(good[1])]
    assert all(0.0 <= float(r[n]) <= 1.0 for r in rows for n in LABELS)
    cams = sorted(p.name for p in (out / "cam").iterdir())
    assert len(cams) == 3 and any(name.startswith("xray__") for name in cams)


def test_evaluate_writes_metrics_per_label_table_roc_curve_and_per_image_rows(trained, tmp_path):
    out = tmp_path / "test"
    assert main(["evaluate", "--checkpoint", str(trained["checkpoint"]), "--data", str(trained["data"]),
                 "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["metrics"]["mean_auroc"] >= 0.9
    table = read_rows(out / "per_label.csv")
    assert [r["label"] for r in table] == LABELS
    assert {"auroc", "threshold", "sensitivity", "specificity", "precision", "f1"} <= set(table[0])
    assert len(read_rows(out / "per_image.csv")) == metrics["cases"]
    assert (out / "roc.png").read_bytes()[:4] == b"\x89PNG"


def test_single_label_folders_train_evaluate_and_predict_by_the_most_probable_class(tmp_path):
    data = DATASETS.get("folders")().synth(tmp_path / "xray", cases=40, seed=3, size=48)
    run = tmp_path / "run"
    assert main(["train", "classification", "--data", str(data), "--out", str(run), "model.name=simple_cnn",
                 "data.image_size=48", "trainer.max_epochs=2", "loss.pos_weight=true", "data.sampler=weighted",
                 "trainer.progress=never", "trainer.tensorboard=false"]) == 0
    state = checkpoint.load(run / "checkpoints" / "last.pt")["task_state"]
    assert state["labels"] == ["normal", "pneumonia"] and state["multi_label"] is False
    assert state["thresholds"] is None and len(state["loss_weights"]) == 2
    assert main(["evaluate", "--checkpoint", str(run / "checkpoints" / "last.pt"), "--data", str(data),
                 "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    matrix = read_rows(tmp_path / "eval" / "confusion_matrix.csv")
    assert [r["truth \\ predicted"] for r in matrix] == ["normal", "pneumonia"]
    assert sum(int(r[c]) for r in matrix for c in ("normal", "pneumonia")) == metrics["cases"]
    assert 0.0 <= metrics["metrics"]["accuracy"] <= 1.0
    assert main(["predict", "--checkpoint", str(run / "checkpoints" / "last.pt"), str(data / "test"),
                 "--out", str(tmp_path / "p")]) == 0
    rows = read_rows(tmp_path / "p" / PREDICTIONS_CSV)
    assert len(rows) == metrics["cases"] and list(rows[0]) == ["image", "normal", "pneumonia", "prediction"]
    for row in rows:
        p_normal, p_pneumonia = float(row["normal"]), float(row["pneumonia"])
        assert p_normal + p_pneumonia == pytest.approx(1.0, abs=1e-5)
        assert row["prediction"] == ("pneumonia" if p_pneumonia > p_normal else "normal")
