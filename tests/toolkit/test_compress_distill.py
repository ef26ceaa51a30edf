"""Knowledge distillation: the loss term (0 when the student agrees with the teacher, pulls it toward the
teacher), the classification training step with ``loss.distill_from``, ``medsight compress --method distill``
end to end (an ordinary student checkpoint labelled with before/after), and its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medsight.io import checkpoint
from medsight.cli.main import main
from medsight.core.config import resolve
from medsight.core.registry import DATASETS
from medsight.tasks.classification import XrayClassification
from medsight.tasks.classification.config import ClassificationConfig
from medsight.tasks.classification.losses import distillation_loss
from tests.toolkit.test_dicom_out import random_checkpoint

SIZE_PX = 48
QUIET = ["trainer.progress=never", "trainer.tensorboard=false"]
#: the synthetic folders dataset's classes (single-label)
CLASSES = {"labels": ["normal", "pneumonia"], "multi_label": False, "thresholds": None}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("distill")


@pytest.fixture(scope="module")
def data(work) -> Path:
    return DATASETS.get("folders")().synth(work / "xray", cases=40, seed=3, size=SIZE_PX)


@pytest.fixture(scope="module")
def teacher(work) -> Path:
    """A resnet18 (untrained: distillation needs only its outputs) that reads the synthetic pictures."""
    return random_checkpoint("classification", work / "teacher.pt", "model.name=resnet18", f"data.image_size={SIZE_PX}",
                             "trainer.max_epochs=1", "data.cache=none", state=CLASSES)


# -- the loss -------------------------------------------------------------------------------------
@pytest.mark.parametrize("multi_label", [False, True])
def test_distillation_loss_is_the_tempered_kl_divergence_and_zero_when_the_student_agrees(multi_label):
    torch.manual_seed(0)
    student, teacher, temperature = torch.randn(6, 3), torch.randn(6, 3), 3.0
    if multi_label:  # per label, KL between Bernoulli(q = teacher's) and Bernoulli(p = student's)
        q, p = torch.sigmoid(teacher / temperature), torch.sigmoid(student / temperature)
        expected = (q * (q / p).log() + (1 - q) * ((1 - q) / (1 - p)).log()).mean()
    else:
        q, p = torch.softmax(teacher / temperature, 1), torch.softmax(student / temperature, 1)
        expected = (q * (q / p).log()).sum(1).mean()
    found = distillation_loss(student, teacher, multi_label, temperature)
    assert found.item() == pytest.approx(temperature ** 2 * expected.item(), rel=1e-5)
    assert found.item() > 0.01
    assert distillation_loss(teacher, teacher, multi_label, temperature).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("multi_label", [False, True])
def test_gradient_descent_on_the_distillation_loss_brings_the_student_to_the_teachers_probabilities(multi_label):
    torch.manual_seed(1)
    teacher = torch.randn(8, 4) * 3
    student = torch.zeros(8, 4, requires_grad=True)
    optimizer = torch.optim.Adam([student], lr=0.1)
    losses = []
    for _ in range(300):
        optimizer.zero_grad()
        loss = distillation_loss(student, teacher, multi_label, temperature=2.0)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    probabilities = torch.sigmoid if multi_label else (lambda logits: torch.softmax(logits, 1))
    assert losses[-1] < 1e-3 * losses[0]
    assert torch.allclose(probabilities(student.detach()), probabilities(teacher), atol=1e-3)


def test_training_step_mixes_the_label_loss_and_the_distillation_term_by_the_weight(teacher):
    torch.manual_seed(2)
    batch = {"image": torch.randn(4, 1, SIZE_PX, SIZE_PX), "label": torch.eye(2)[[0, 1, 1, 0]]}

    def step(*overrides: str):
        task = XrayClassification(resolve(ClassificationConfig, overrides=["model.name=simple_cnn",
                                                                           f"data.image_size={SIZE_PX}", *overrides]))
        task.load_state_dict(dict(CLASSES))
        task.frozen_networks()  # the trainer loads the teacher (if any) before the first step
        torch.manual_seed(3)
        return task.training_step(task.build_model(), batch)

    plain = step()
    alone = step(f"loss.distill_from={teacher}", "loss.distill_weight=0")
    both = step(f"loss.distill_from={teacher}", "loss.distill_weight=0.25")
    assert alone.loss.item() == pytest.approx(plain.loss.item(), rel=1e-6)
    assert both.logs["label_loss"].item() == pytest.approx(plain.loss.item(), rel=1e-6)
    assert both.logs["distill_loss"].item() > 0
    assert both.loss.item() == pytest.approx(0.75 * plain.loss.item() + 0.25 * both.logs["distill_loss"].item(),
                                             rel=1e-5)


# -- training and compress ------------------------------------------------------------------------
def test_training_distils_and_a_resumed_run_reloads_the_teacher_from_its_config(data, teacher, work):
    run = work / "run"
    args = ["train", "classification", "--data", str(data), "--out", str(run), "model.name=simple_cnn",
            f"data.image_size={SIZE_PX}", f"loss.distill_from={teacher}", "trainer.max_epochs=1", *QUIET]
    assert main(args) == 0
    assert main(["train", "classification", "--resume", str(run), "trainer.max_epochs=2", *QUIET]) == 0
    epochs = [row for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
              if row["phase"] == "train"]
    assert [row["epoch"] for row in epochs] == [1, 2]
    assert all(row["distill_loss"] > 0 and row["label_loss"] > 0 for row in epochs)


def test_compress_distill_writes_an_ordinary_student_checkpoint_labelled_before_and_after(data, teacher, work,
                                                                                          capsys):
    out = work / "student.pt"
    assert main(["compress", "--checkpoint", str(teacher), "--method", "distill", "--student", "simple_cnn",
                 "--out", str(out), "--data", str(data)]) == 0
    state = checkpoint.load(out)
    label = state["compression"]
    assert label["method"] == "distill" and label["student"] == "simple_cnn"
    assert label["distill"]["epochs"] == 1, "by default the teacher run's trainer.max_epochs"
    assert label["before"]["cases"] == label["after"]["cases"] > 0
    assert set(label["before"]["metrics"]) == set(label["after"]["metrics"]) >= {"mean_auroc", "accuracy"}
    assert 0 < label["parameters"]["student"] < label["parameters"]["teacher"] / 10
    assert label["after"]["size_bytes"] < label["before"]["size_bytes"] / 10
    assert json.loads(out.with_name(out.name + ".compression.json").read_text()) == label
    assert state["config"]["model"]["name"] == "simple_cnn" and "optimizer" not in state
    assert main(["evaluate", "--checkpoint", str(out), "--data", str(data), "--out", str(work / "eval")]) == 0
    assert json.loads((work / "eval" / "metrics.json").read_text())["cases"] > 0
    assert main(["predict", "--checkpoint", str(out), str(data / "test"), "--out", str(work / "predicted")]) == 0
    assert (work / "predicted" / "predictions.csv").is_file()


def test_a_teacher_trained_on_other_pictures_is_refused_in_one_line(data, teacher, work, capsys):
    assert main(["train", "classification", "--data", str(data), "--out", str(work / "mismatch"),
                 "model.name=simple_cnn", "data.image_size=32", f"loss.distill_from={teacher}", *QUIET]) == 2
    error = capsys.readouterr().err.strip()
    assert error == (f"error: loss.distill_from={teacher}: the teacher was trained with data.image_size=48, this run "
                     "has data.image_size=32: set data.image_size=48 so that it sees pictures prepared as it was "
                     "trained")


def test_compress_distill_refuses_other_tasks_and_unknown_students_in_one_line(teacher, data, work, capsys):
    segmenter = random_checkpoint("segmentation", work / "seg.pt", "model.init_filters=8")
    assert main(["compress", "--checkpoint", str(segmenter), "--method", "distill", "--out", str(work / "x.pt"),
                 "--data", str(data)]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {segmenter}: --method distill: the segmentation task "
                                               "offers no distillation")
    assert main(["compress", "--checkpoint", str(teacher), "--method", "distill", "--student", "resnet_18",
                 "--out", str(work / "x.pt"), "--data", str(data)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: config: --student='resnet_18' is not one of")
    assert not (work / "x.pt").exists()
