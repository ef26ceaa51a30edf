"""The task lifecycle, for every registered task: starting weights are read once, when a training run
starts; the checkpoint it writes is self-contained, so predict, evaluate, export and resume work after
the starting-weights file is gone (before, they re-read ``model.init_weights`` and failed with
``weights file not found``)."""

import hashlib
import shutil
from pathlib import Path

import pytest

from medsight.io import checkpoint
from medsight.cli.main import main
from medsight.core.registry import DATASETS, TASKS

TASK_NAMES = [name for name in TASKS.names() if TASKS.get(name).demo is not None]


def quick_data(name: str, folder: Path) -> Path:
    spec = TASKS.get(name).demo
    synth = dict(spec.synth, **spec.quick_synth)
    cases = synth.pop("cases", None)
    return DATASETS.get(spec.dataset)().synth(folder, cases=cases, seed=0, **synth)


def train(name: str, data: Path, out: Path, *extra: str) -> int:
    spec = TASKS.get(name).demo
    return main(["train", name, "--data", str(data), "--profile", spec.profile, "--out", str(out),
                 "trainer.progress=never", "trainer.tensorboard=false", *spec.quick_overrides,
                 "trainer.max_epochs=1", *extra])


@pytest.mark.parametrize("name", TASK_NAMES)
def test_a_fine_tuned_checkpoint_predicts_evaluates_exports_and_resumes_after_its_starting_weights_are_gone(
        name, tmp_path, capsys):
    data = quick_data(name, tmp_path / "data")
    assert train(name, data, tmp_path / "first") == 0
    weights = tmp_path / "W.pt"
    shutil.copyfile(tmp_path / "first" / "checkpoints" / "last.pt", weights)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    capsys.readouterr()

    run = tmp_path / "tuned"
    assert train(name, data, run, "--init-weights", str(weights)) == 0
    printed = capsys.readouterr().out
    own = checkpoint.load(run / "checkpoints" / "last.pt", task=name)
    total = len(own["model"])
    assert f"starting weights {weights}: {total} of {total} model tensors loaded" in printed
    assert own["started_from"]["sha256"] == digest and own["config"]["trainer"]["init_weights"] == str(weights)

    weights.unlink()
    tuned = run / "checkpoints" / "last.pt"
    spec = TASKS.get(name).demo
    assert main(["predict", "--checkpoint", str(tuned), *TASKS.get(name).demo_inputs(data), "--out",
                 str(tmp_path / "predictions"), *(f"infer.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in spec.predict_options.items())]) == 0
    assert main(["evaluate", "--checkpoint", str(tuned), "--data", str(data), "--out", str(tmp_path / "eval")]) == 0
    assert main(["export", "--checkpoint", str(tuned), "--format", "torchscript", "--out",
                 str(tmp_path / "model.ts")]) == 0
    assert main(["train", name, "--resume", str(run), "trainer.max_epochs=2"]) == 0
    resumed = checkpoint.load(tuned, task=name)
    assert resumed["epoch"] == 2 and resumed["started_from"]["sha256"] == digest
    assert "error" not in capsys.readouterr().err


def test_starting_weights_are_refused_on_resume_and_the_old_spelling_still_starts_a_run(tmp_path, capsys):
    data = quick_data("classification", tmp_path / "data")
    assert train("classification", data, tmp_path / "first") == 0
    weights = tmp_path / "first" / "checkpoints" / "last.pt"
    assert main(["train", "classification", "--resume", str(tmp_path / "first"), "--init-weights",
                 str(weights)]) == 2
    assert "--init-weights starts a new run" in capsys.readouterr().err
    run = tmp_path / "old-spelling"
    assert train("classification", data, run, f"model.init_weights={weights}") == 0
    state = checkpoint.load(run / "checkpoints" / "last.pt")
    assert state["config"]["trainer"]["init_weights"] == str(weights) and state["config"]["model"]["init_weights"] is None
    assert state["started_from"]["loaded"] == len(state["model"])
