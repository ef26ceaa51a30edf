"""Classifiers for 1-channel pictures, starting weights from a local file, and the layer Grad-CAM reads.

- ``densenet121``: MONAI's DenseNet121, 2D, 1 input channel (CheXNet's architecture);
- ``simple_cnn``: the seed tutorials' small baseline CNN;
- any timm model name (``resnet18``, ``resnet50``, ``efficientnet_b0``...), built with ``in_chans=1``.

No weights are ever downloaded: ``model.init_weights`` (``medsight train --init-weights PATH``)
loads a local state dict, adapting a 3-channel first convolution to 1 channel and skipping
tensors whose shapes differ (a head for another number of labels).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from medsight.errors import CheckpointError


def timm_model_exists(name: str) -> bool:
    import timm

    return bool(timm.is_model(name))


class SimpleCNN(nn.Module):
    """The tutorials' baseline: conv-BN-ReLU blocks with max-pooling between them, global average
    pool, dropout, linear. The last block is not pooled, so its map (stride 4 with three blocks)
    keeps Grad-CAM sharp at no extra cost.

    x: (B, 1, H, W) -> logits (B, num_outputs).
    """

    def __init__(self, num_outputs: int, in_channels: int = 1, widths: tuple[int, ...] = (32, 64, 128),
                 dropout: float = 0.0):
        super().__init__()
        blocks, channels = [], in_channels
        for index, width in enumerate(widths):
            layers = [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            if index < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            blocks.append(nn.Sequential(*layers))
            channels = width
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, num_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)))


def build_classifier(name: str, num_outputs: int, dropout: float = 0.0) -> nn.Module:
    """A classifier of (B, 1, H, W) pictures into (B, num_outputs) logits."""
    if name == "densenet121":
        from monai.networks.nets import DenseNet121

        return DenseNet121(spatial_dims=2, in_channels=1, out_channels=num_outputs, dropout_prob=dropout)
    if name == "simple_cnn":
        return SimpleCNN(num_outputs, dropout=dropout)
    import timm

    return timm.create_model(name, pretrained=False, in_chans=1, num_classes=num_outputs, drop_rate=dropout)


# -- starting weights ------------------------------------------------------------------------------
@dataclass
class InitReport:
    """What loading starting weights did, tensor by tensor."""

    source: Path
    loaded: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)  # 3-channel first convolution summed to 1 channel
    skipped: list[str] = field(default_factory=list)  # present in both, shapes differ (e.g. the head)
    missing: list[str] = field(default_factory=list)  # in the model, not in the file: left as initialised
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the model: ignored

    def summary(self) -> str:
        parts = [f"init weights from {self.source}: {len(self.loaded)} tensors loaded"]
        for label, names in (("adapted to 1 channel", self.adapted), ("skipped (shape differs)", self.skipped),
                             ("missing (left as initialised)", self.missing),
                             ("unexpected (ignored)", self.unexpected)):
            if names:
                shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
                parts.append(f"{len(names)} {label}: {shown}")
        return "; ".join(parts)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a state dict file: a plain state dict, ``{"state_dict": ...}``, or a medsight
    checkpoint (``{"model": ...}``); DDP's ``module.`` and torch.compile's ``_orig_mod.`` prefixes go."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("init weights file not found", path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refusals, damaged zips and foreign formats all land here
        raise CheckpointError(f"cannot read a state dict ({str(exc).splitlines()[0][:160]})", path) from None
    for key in ("model", "state_dict"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError("holds no state dict (a mapping of parameter names to tensors)", path)
    tensors = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            for prefix in ("module.", "_orig_mod."):
                key = key.removeprefix(prefix)
            tensors[key] = value
    return tensors


def _as_one_channel(weight: torch.Tensor, target: torch.Size) -> torch.Tensor | None:
    """A first convolution made for RGB, for gray input: a gray picture copied into R, G and B
    gives conv(w_R + w_G + w_B), so summing over input channels keeps the response."""
    if weight.dim() == 4 and weight.shape[1] == 3 and target[1] == 1 and weight.shape[0] == target[0] \
            and weight.shape[2:] == target[2:]:
        return weight.sum(dim=1, keepdim=True)
    return None


def load_init_weights(model: nn.Module, path: str | Path) -> InitReport:
    """Load what fits of a local state dict into ``model``; raise if nothing fits."""
    source = read_state_dict(path)
    own = model.state_dict()
    report = InitReport(Path(path))
    chosen: dict[str, torch.Tensor] = {}
    for key, value in source.items():
        if key not in own:
            report.unexpected.append(key)
        elif value.shape == own[key].shape:
            chosen[key] = value
            report.loaded.append(key)
        elif (adapted := _as_one_channel(value, own[key].shape)) is not None:
            chosen[key] = adapted
            report.adapted.append(key)
        else:
            report.skipped.append(f"{key} {tuple(value.shape)} vs {tuple(own[key].shape)}")
    report.missing = [key for key in own if key not in chosen]
    if not chosen:
        raise CheckpointError(f"no tensor fits the model (file keys like {', '.join(list(source)[:3])}; model keys "
                              f"like {', '.join(list(own)[:3])})", path)
    model.load_state_dict(chosen, strict=False)
    return report


# -- Grad-CAM target -------------------------------------------------------------------------------
def last_feature_map_layer(model: nn.Module, example: torch.Tensor) -> str:
    """Name of the module that last outputs a spatial map (B, C, h, w) with h * w > 1: the layer
    whose activations Grad-CAM weighs (DenseNet121: ``class_layers.relu``; ResNet: ``layer4``)."""
    produced: list[str] = []
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def remember(_module, _inputs, output, name=name):
            if isinstance(output, torch.Tensor) and output.dim() == 4 and output.shape[2] * output.shape[3] > 1:
                produced.append(name)

        handles.append(module.register_forward_hook(remember))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    if not produced:
        raise CheckpointError("the model has no spatial feature map for Grad-CAM at this input size; "
                              "set infer.cam_layer", "model")
    return produced[-1]
