"""Trainer and CLI edge cases: a task's weighted sampler; DataErrors that MONAI's Compose wraps in
RuntimeError still reach the user as one line naming the file; a monitored metric that is NaN."""

from pathlib import Path

import pytest
import torch
from monai.data import Dataset
from monai.transforms import Compose, Lambdad

import medsight.cli.arguments
from medsight.cli.main import main
from medsight.core.config import LoaderConfig, resolve
from medsight.data.loading import make_loader
from medsight.errors import DataError, unwrap
from medsight.data.guard import FAILED, GuardedCompose
from medsight.core.runtime import Runtime
from medsight.training.trainer import Trainer
from tests.toy_task import ToyConfig, ToyRegression, make_toy_data


def test_weighted_loader_draws_by_weight_with_replacement_and_repeats_with_the_seed():
    dataset = Dataset([{"i": torch.tensor(i)} for i in range(4)])
    cfg = LoaderConfig()

    def drawn(seed):
        loader = make_loader(dataset, cfg, batch_size=2, shuffle=True, seed=seed, weights=[0.0, 0.0, 1.0, 3.0])
        return [int(i) for batch in loader for i in batch["i"]]

    first = drawn(5)
    assert len(first) == 4 and set(first) <= {2, 3}
    assert drawn(5) == first
    with pytest.raises(ValueError, match="3 sample weights for 4 items"):
        make_loader(dataset, cfg, batch_size=2, shuffle=True, seed=0, weights=[1.0, 1.0, 1.0])


class OnlyRecordFive(ToyRegression):
    """Puts all sampling weight on the record with id "5" and remembers what training saw."""

    seen: list[str] = []

    def train_sample_weights(self, records):
        return [1.0 if r["id"] == "5" else 0.0 for r in records]

    def training_step(self, model, batch):
        self.seen.extend(batch["id"])
        return super().training_step(model, batch)


def test_trainer_uses_the_task_sample_weights(tmp_path):
    data = make_toy_data(tmp_path / "toy", samples=32)
    config = resolve(ToyConfig, overrides=["trainer.max_epochs=1", "trainer.progress=never",
                                           "trainer.tensorboard=false", "data.batch_size=4"])
    task = OnlyRecordFive(config)
    Trainer(task, data, tmp_path / "run", Runtime("cpu", "fp32")).fit()
    assert task.seen == ["5"] * 24  # 24 training records, all draws land on the only weighted one


def failing_compose(path: Path) -> Compose:
    def read(_):
        raise DataError("cannot read picture (truncated)", path)

    return Compose([Lambdad("image", read)])


def test_a_data_error_inside_monai_compose_is_found_behind_its_runtime_error(tmp_path):
    with pytest.raises(RuntimeError) as wrapped:
        failing_compose(tmp_path / "a.png")({"image": "a"})
    assert not isinstance(wrapped.value, DataError)
    assert str(unwrap(wrapped.value)) == f"{tmp_path / 'a.png'}: cannot read picture (truncated)"
    assert unwrap(RuntimeError("unrelated")) is None


def test_batch_predict_reports_the_wrapped_data_error_not_monai_s_wrapper(tmp_path):
    dataset = Dataset([{"image": "a", "id": "a.png"}], GuardedCompose.around(failing_compose(tmp_path / "a.png"), "all"))
    assert dataset[0][FAILED] == f"{tmp_path / 'a.png'}: cannot read picture (truncated)"


def test_cli_prints_a_wrapped_data_error_as_one_line_with_status_2(tmp_path, monkeypatch, capsys):
    def export(args):
        try:
            failing_compose(tmp_path / "a.png")({"image": "a"})
        except RuntimeError as exc:
            raise RuntimeError("while exporting") from exc

    monkeypatch.setattr(medsight.cli.arguments, "cmd_export", export)  # the parser binds it here
    status = main(["export", "--checkpoint", "x.pt", "--format", "onnx", "--out", str(tmp_path / "m.onnx")])
    assert status == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'a.png'}: cannot read picture (truncated)\n"


class UndefinedMetric(ToyRegression):
    """A validation metric that is not a number (e.g. AUROC of a validation set with one class)."""

    def validation_metrics(self, outputs):
        return {"mse": float("nan")}


def test_training_goes_on_when_the_monitored_metric_is_not_a_number(tmp_path, capsys):
    data = make_toy_data(tmp_path / "toy", samples=16)
    config = resolve(ToyConfig, overrides=["trainer.max_epochs=2", "trainer.progress=never",
                                           "trainer.tensorboard=false"])
    summary = Trainer(UndefinedMetric(config), data, tmp_path / "run", Runtime("cpu", "fp32")).fit()
    assert summary["epochs"] == 2 and summary["best_value"] is None and summary["best"] is None
    assert "val mse nan  (best none yet)" in capsys.readouterr().out


def test_channels_last_gives_1x1_kernels_and_1_channel_inputs_unambiguous_channels_last_strides():
    """A 1x1 kernel is contiguous in both layouts; with NCHW strides oneDNN reorders it on every call."""
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.Conv2d(8, 4, 1), torch.nn.Conv3d(4, 2, 1))
    runtime = Runtime("cpu", "fp32", channels_last=True, distributed=False)
    runtime.setup_model(model, train=False)
    assert model[0].weight.stride() == (9, 1, 3, 1)  # (out, in=1, 3, 3): channels stride 1
    assert model[1].weight.stride() == (8, 1, 8, 8)  # (out, in=8, 1, 1)
    assert model[2].weight.stride() == (4, 1, 4, 4, 4)
    batch = runtime.to_device({"image": torch.zeros(2, 1, 5, 5), "volume": torch.zeros(2, 1, 3, 3, 3)})
    assert batch["image"].stride() == (25, 1, 5, 1) and batch["volume"].stride() == (27, 1, 9, 3, 1)
    picture = torch.randn(1, 1, 6, 6)
    expected = torch.nn.functional.conv2d(picture, model[0].weight.contiguous(), model[0].bias)
    assert torch.allclose(model[0](picture.to(memory_format=torch.channels_last)), expected, atol=1e-6)


def test_a_channels_last_network_gets_each_sliding_window_reordered_once_with_the_same_probabilities():
    """``channels_last_format`` tells a channels-last network; segmentation then hands it each window in that
    layout (one reorder per window, not one per convolution) and its probabilities do not change."""
    from monai.networks.nets import SegResNet

    from medsight.core.config import resolve
    from medsight.core.registry import TASKS
    from medsight.core.runtime import channels_last_format

    task_class = TASKS.get("segmentation")
    task = task_class(resolve(task_class.config_class, overrides=["infer.roi_size=[16,16,16]", "infer.overlap=0.25"]))
    torch.manual_seed(0)
    network = SegResNet(spatial_dims=3, init_filters=8, in_channels=2, out_channels=3).eval()
    image = torch.randn(1, 2, 24, 20, 18)
    assert channels_last_format(network) is None
    with torch.no_grad():
        plain = task.probabilities(network, image)
        Runtime("cpu", "fp32", channels_last=True, distributed=False).setup_model(network, train=False)
        assert channels_last_format(network) == torch.channels_last_3d
        reordered = task.probabilities(network, image.contiguous(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(reordered, plain, atol=1e-5, rtol=1e-5)
