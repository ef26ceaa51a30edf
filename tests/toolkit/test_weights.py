"""The one starting-weights loader (``medsight.training.weights``): what it loads, adapts, skips and refuses."""

import pytest
import torch
from torch import nn

from medsight.io import checkpoint
from medsight.errors import CheckpointError
from medsight.tasks.classification.models import build_classifier
from medsight.training.weights import align_names, load_initial_weights


def test_an_rgb_first_convolution_is_summed_another_head_skipped_and_everything_reported(tmp_path):
    import timm

    rgb = timm.create_model("resnet18", pretrained=False, in_chans=3, num_classes=1000)
    state = rgb.state_dict()
    state["extra.weight"] = torch.zeros(2)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "rgb.pt")  # DDP names
    gray = build_classifier("resnet18", num_outputs=14)
    report = load_initial_weights(gray, tmp_path / "rgb.pt")
    own = gray.state_dict()
    torch.testing.assert_close(own["conv1.weight"], state["conv1.weight"].sum(dim=1, keepdim=True))
    torch.testing.assert_close(own["layer3.1.bn2.running_var"], state["layer3.1.bn2.running_var"])
    assert report.adapted == ["conv1.weight (64, 3, 7, 7) -> (64, 1, 7, 7)"]
    assert report.skipped == ["fc.weight (1000, 512) vs (14, 512)", "fc.bias (1000,) vs (14,)"]
    assert report.missing == ["fc.weight", "fc.bias"] and report.unexpected == ["extra.weight"]
    lines = report.lines()
    assert lines[0] == f"starting weights {tmp_path / 'rgb.pt'}: {len(own) - 2} of {len(own)} model tensors loaded"
    assert "  1 adapted input channels: conv1.weight (64, 3, 7, 7) -> (64, 1, 7, 7)" in lines
    assert len(report.sha256) == 64 and report.to_dict()["missing"] == 2


def test_a_one_channel_kernel_is_spread_over_several_input_channels_keeping_the_response(tmp_path):
    one = nn.Conv3d(1, 4, 3)
    four = nn.Conv3d(4, 4, 3)
    torch.save({"weight": one.weight.detach(), "bias": one.bias.detach()}, tmp_path / "one.pt")
    report = load_initial_weights(four, tmp_path / "one.pt")
    assert report.adapted and not report.skipped
    x = torch.randn(1, 1, 5, 5, 5)
    torch.testing.assert_close(four(x.repeat(1, 4, 1, 1, 1)), one(x), atol=1e-5, rtol=1e-5)


def test_a_bare_network_state_dict_fits_a_model_that_wraps_it_as_network():
    class Detector(nn.Module):
        def __init__(self):
            super().__init__()
            self.network = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))

    bare = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1)).state_dict()
    aligned = align_names(bare, Detector().state_dict())
    assert set(aligned) == {f"network.{k}" for k in bare}
    wrapped = {f"model.{k}": v for k, v in Detector().state_dict().items()}
    assert set(align_names(wrapped, Detector().state_dict())) == set(Detector().state_dict())


def test_a_medsight_checkpoint_starts_a_run_from_its_ema_weights_when_it_kept_them(tmp_path):
    model = nn.Linear(3, 2)
    ema = {"n_averaged": torch.tensor(4), "module.weight": torch.full((2, 3), 7.0), "module.bias": torch.ones(2)}
    checkpoint.save({"task": "toy", "model": model.state_dict(), "ema": ema}, tmp_path / "last.pt")
    fresh = nn.Linear(3, 2)
    load_initial_weights(fresh, tmp_path / "last.pt")
    assert torch.equal(fresh.weight, torch.full((2, 3), 7.0))


def test_weights_that_fit_nothing_or_need_unpickling_are_refused_naming_the_file(tmp_path):
    torch.save({"unrelated.weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError) as error:
        load_initial_weights(build_classifier("simple_cnn", 2), tmp_path / "other.pt")
    assert str(error.value).startswith(f"{tmp_path / 'other.pt'}: no tensor fits the model")
    torch.save(nn.Linear(2, 2), tmp_path / "whole.pt")  # a whole pickled module
    with pytest.raises(CheckpointError, match="refused: loading this weights file would need arbitrary unpickling"):
        load_initial_weights(nn.Linear(2, 2), tmp_path / "whole.pt")
    with pytest.raises(CheckpointError, match="weights file not found"):
        load_initial_weights(nn.Linear(2, 2), tmp_path / "gone.pt")
