"""Classifiers of pictures, registered in the ``classification`` model family, and the layer Grad-CAM reads.

- ``densenet121``: MONAI's DenseNet121, 2D (CheXNet's architecture);
- ``simple_cnn``: the seed tutorials' small baseline CNN;
- any timm model name (``resnet18``, ``resnet50``, ``efficientnet_b0``...), built with ``in_chans``.

No weights are ever downloaded: starting weights are the trainer's (``--init-weights PATH``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from medsight.errors import CheckpointError
from medsight.core.models import Provider, create_model, models, register_model


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


def timm_model_exists(name: str) -> bool:
    import timm

    return bool(timm.is_model(name))


@register_model("classification", "densenet121")
def densenet121(config, in_channels: int, out_channels: int) -> nn.Module:
    """MONAI's DenseNet121 in 2D (CheXNet's architecture)."""
    from monai.networks.nets import DenseNet121

    return DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=out_channels,
                       dropout_prob=config.dropout)


@register_model("classification", "torchvision_densenet121")
def torchvision_densenet121(config, in_channels: int, out_channels: int) -> nn.Module:
    """torchvision's DenseNet121 (CheXNet's and most published chest X-ray models' layout: ``features.*``,
    ``classifier``); a first convolution for ``in_channels`` other than 3."""
    from torchvision.models import DenseNet

    class DenseNet121(DenseNet):
        """torchvision's forward with the final ReLU not in place: Grad-CAM hooks ``features``' output."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = nn.functional.relu(self.features(x))
            return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(out, (1, 1)), 1))

    model = DenseNet121(growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64, num_classes=out_channels,
                        drop_rate=config.dropout)
    if in_channels != 3:
        model.features.conv0 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


@register_model("classification", "simple_cnn")
def simple_cnn(config, in_channels: int, out_channels: int) -> nn.Module:
    return SimpleCNN(out_channels, in_channels=in_channels, dropout=config.dropout)


def _timm(name: str, config, in_channels: int, out_channels: int) -> nn.Module:
    import timm

    return timm.create_model(name, pretrained=False, in_chans=in_channels, num_classes=out_channels,
                             drop_rate=config.dropout)


models("classification").add_provider(Provider("timm: any timm model name (resnet18, efficientnet_b0, ...)",
                                                timm_model_exists, _timm))


def build_classifier(name: str, num_outputs: int, dropout: float = 0.0, in_channels: int = 1) -> nn.Module:
    """A classifier of (B, in_channels, H, W) pictures into (B, num_outputs) logits, from the registry."""
    return create_model("classification", name, _ModelSettings(name, dropout), in_channels, num_outputs)


@dataclass(frozen=True)
class _ModelSettings:
    name: str
    dropout: float = 0.0


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
