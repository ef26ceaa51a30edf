"""Networks: MONAI SegResNet (default), UNet and DynUNet in 3D, and a 2D segmentation-models-pytorch
U-Net that runs slice by slice behind a 3D interface, so training, sliding-window inference and
inversion onto the input grid are one pipeline for both."""

from __future__ import annotations

import torch
from monai.networks.nets import DynUNet, SegResNet, UNet
from torch import nn

from medsight.core.models import create_model, register_model

from .config import SegmentationModel


class SliceWise(nn.Module):
    """Apply a 2D network to every axial slice: (B, C, X, Y, Z) -> (B, K, X, Y, Z).

    Slices go through the 2D network as one batch; X and Y are padded up to a multiple of
    ``multiple`` (smp encoders downsample 32x) and cropped back.
    """

    def __init__(self, net2d: nn.Module, multiple: int = 32):
        super().__init__()
        self.net2d = net2d
        self.multiple = multiple

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        b, c, x, y, z = volume.shape
        slices = volume.permute(0, 4, 1, 2, 3).reshape(b * z, c, x, y)
        pad_x = (-x) % self.multiple
        pad_y = (-y) % self.multiple
        if pad_x or pad_y:
            slices = nn.functional.pad(slices, (0, pad_y, 0, pad_x))
        out = self.net2d(slices)[:, :, :x, :y]
        k = out.shape[1]
        return out.reshape(b, z, k, x, y).permute(0, 2, 3, 4, 1)


@register_model("segmentation", "segresnet")
def segresnet(cfg: SegmentationModel, in_channels: int, out_channels: int) -> nn.Module:
    return SegResNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels,
                     init_filters=cfg.init_filters, blocks_down=tuple(cfg.blocks_down),
                     blocks_up=tuple(cfg.blocks_up) or (1,) * (len(cfg.blocks_down) - 1),
                     dropout_prob=cfg.dropout or None)


@register_model("segmentation", "unet")
def unet(cfg: SegmentationModel, in_channels: int, out_channels: int) -> nn.Module:
    return UNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels, channels=tuple(cfg.channels),
                strides=(2,) * (len(cfg.channels) - 1), num_res_units=2, dropout=cfg.dropout)


@register_model("segmentation", "dynunet")
def dynunet(cfg: SegmentationModel, in_channels: int, out_channels: int) -> nn.Module:
    depth = len(cfg.blocks_down) + 1
    kernels = [[3, 3, 3]] * depth
    strides = [[1, 1, 1]] + [[2, 2, 2]] * (depth - 1)
    filters = [cfg.init_filters * 2**i for i in range(depth)]
    return DynUNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels, kernel_size=kernels,
                   strides=strides, upsample_kernel_size=strides[1:], filters=filters, dropout=cfg.dropout,
                   res_block=True)


@register_model("segmentation", "smp_unet2d")
def smp_unet2d(cfg: SegmentationModel, in_channels: int, out_channels: int) -> nn.Module:
    """A segmentation-models-pytorch U-Net (``cfg.encoder``) run on every axial slice."""
    import segmentation_models_pytorch as smp

    net2d = smp.Unet(encoder_name=cfg.encoder, encoder_weights=None, in_channels=in_channels, classes=out_channels)
    return SliceWise(net2d)


def build_network(cfg: SegmentationModel, in_channels: int, out_channels: int = 3) -> nn.Module:
    """The ``cfg.name`` network of the ``segmentation`` model family."""
    return create_model("segmentation", cfg.name, cfg, in_channels, out_channels)
