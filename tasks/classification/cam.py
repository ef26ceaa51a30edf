"""Grad-CAM heatmaps with MONAI's implementation (``monai.visualize.GradCAM``).

MONAI scores one class index for a whole batch, and its default post-processing inverts the map
(see ``scale_each_to_unit``); ``PerItemClass`` lets each picture of a batch
ask for its own label, so the k most probable labels of every picture take k backward passes per
batch rather than one per picture and label.
"""

from __future__ import annotations

import warnings

import torch
from monai.visualize import GradCAM
from monai.visualize.class_activation_maps import ModelWithHooks
from torch import nn


class PerItemClass(ModelWithHooks):
    """MONAI's hooked model, scoring ``class_idx[i]`` for picture i when given a (B,) tensor."""

    def class_score(self, logits: torch.Tensor, class_idx) -> torch.Tensor:
        if isinstance(class_idx, torch.Tensor) and class_idx.dim() == 1:
            return logits.gather(1, class_idx.to(logits.device)[:, None]).squeeze(1)
        return super().class_score(logits, class_idx)


def scale_each_to_unit(maps: torch.Tensor) -> torch.Tensor:
    """Min-max scale each map of (B, 1, H, W) to 0..1, peak = 1; a flat map becomes 0.

    Used instead of MONAI's default post-processing, which maps (min, max) to (1, 0) and so would
    draw the strongest evidence as the weakest.
    """
    flat = maps.flatten(1)
    low, high = flat.min(dim=1).values, flat.max(dim=1).values
    span = (high - low).clamp_min(1e-12)[:, None, None, None]
    return (maps - low[:, None, None, None]) / span


class GradCamMaps:
    """Heatmaps of chosen labels, built once per model (the hooks stay on the model)."""

    def __init__(self, model: nn.Module, layer: str):
        self.model = model
        self.layer = layer
        hooked = PerItemClass(model, layer, register_forward=True, register_backward=True)
        self.cam = GradCAM(nn_module=hooked, target_layers=layer, postprocessing=scale_each_to_unit)

    def __call__(self, images: torch.Tensor, label_index: torch.Tensor) -> torch.Tensor:
        """Heatmaps (B, H, W) in 0..1 (each min-max scaled), images (B, 1, H, W), one label index per image."""
        with torch.enable_grad(), warnings.catch_warnings():  # predict runs under no_grad
            # The input needs no gradient, so torch notes that the hook sees output gradients only:
            # those are exactly what Grad-CAM weighs.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            maps = self.cam(x=images, class_idx=label_index)
        return maps[:, 0].detach().float()
