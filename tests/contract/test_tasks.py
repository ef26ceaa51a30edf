"""Every registered task, through a tiny train -> checkpoint -> resume -> evaluate -> predict -> export
cycle on its own synthetic data (timm's lesson: test the registry, so every entry is covered).

``VARIANTS`` is the test matrix: override sets run one by one for a task (e.g. each model family);
every other task runs with its defaults."""

from pathlib import Path

import pytest

from medsight.io import checkpoint
from medsight.cli.main import main
from medsight.core.registry import TASKS


VARIANTS: dict[str, tuple[tuple[str, ...], ...]] = {
    "classification": ((), ("model.name=simple_cnn", "loss.name=focal", "data.sampler=weighted", "data.cache=pictures"),
                       ("model.name=resnet18", "loss.pos_weight=true")),
    "segmentation": ((), ("model.name=smp_unet2d", "data.patch_size=[32,32,4]", "model.encoder=resnet18")),
}


def _cases():
    for name in TASKS.names():
        spec = TASKS.get(name).demo
        if spec is None:
            continue
        for variant in VARIANTS.get(name, ((),)):
            label = variant[0].split("=", 1)[-1] if variant else "default"
            yield pytest.param(name, variant, id=f"{name}-{label}")


CASES = list(_cases())


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    made = {}

    def make(name: str) -> Path:
        spec = TASKS.get(name).demo
        if spec.dataset not in made:
            from medsight.core.registry import DATASETS

            synth = dict(spec.synth, **spec.quick_synth)
            cases = synth.pop("cases", None)
            made[spec.dataset] = DATASETS.get(spec.dataset)().synth(
                tmp_path_factory.mktemp(spec.dataset) / "data", cases=cases, seed=0, **synth)
        return made[spec.dataset]

    return make


@pytest.mark.skipif(not CASES, reason="no task with a demo is registered")
@pytest.mark.parametrize("name, variant", CASES)
def test_task_trains_resumes_evaluates_predicts_and_exports(name, variant, datasets, tmp_path, capsys):
    task = TASKS.get(name)
    spec = task.demo
    data = datasets(name)
    run = tmp_path / "run"
    common = ["trainer.progress=never", "trainer.tensorboard=false", *spec.quick_overrides, *variant]
    assert main(["train", name, "--data", str(data), "--profile", spec.profile, "--out", str(run),
                 *common, "trainer.max_epochs=1"]) == 0
    first = checkpoint.load(run / "checkpoints" / "last.pt", task=name)
    assert first["epoch"] == 1 and first["task"] == name

    assert main(["train", name, "--resume", str(run), "trainer.max_epochs=2"]) == 0
    resumed = checkpoint.load(run / "checkpoints" / "last.pt", task=name)
    assert resumed["epoch"] == 2 and resumed["global_step"] > first["global_step"]
    assert resumed["config"]["model"] == first["config"]["model"]

    best = run / "checkpoints" / "best.pt"
    used = best if best.exists() else run / "checkpoints" / "last.pt"
    assert main(["evaluate", "--checkpoint", str(used), "--data", str(data), "--out", str(tmp_path / "eval")]) == 0
    assert (tmp_path / "eval" / "metrics.json").is_file()

    out = tmp_path / "predictions"
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(used), *task.demo_inputs(data), "--out", str(out),
                 *(f"infer.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in spec.predict_options.items())]) == 0
    printed = capsys.readouterr().out
    assert "failed" not in printed
    assert any(out.iterdir()), "predict wrote nothing"

    exported = tmp_path / "model.ts"
    assert main(["export", "--checkpoint", str(used), "--format", "torchscript", "--out", str(exported)]) == 0
    assert exported.stat().st_size > 0


@pytest.mark.parametrize("name", TASKS.names())
def test_every_profile_of_every_task_resolves_to_a_valid_config(name):
    from medsight.core.config import resolve

    task = TASKS.get(name)
    for profile in task.profiles.values():
        config = resolve(task.config_class, profile=profile)
        assert config.trainer.max_epochs > 0
        task(config)  # a task can be made from it
