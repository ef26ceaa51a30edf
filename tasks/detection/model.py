"""The detector, built whole in one factory from config.

MONAI's ``RetinaNetDetector`` is configured through setters after construction (matcher, sampler,
losses, box selection, sliding window); ``build_detector`` calls every one of them, so a detector
from here is complete: nothing is left to forget before training or inference.
"""

from __future__ import annotations

import torch
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.apps.detection.networks.retinanet_network import RetinaNet
from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
from monai.losses import FocalLoss
from monai.losses.giou_loss import BoxGIoULoss
from monai.networks.blocks.backbone_fpn_utils import BackboneWithFPN
from monai.networks.nets import resnet
from torch import nn

from medsight.core.models import create_model, register_model

from .config import RESNET_DEPTHS, DetectionInfer, DetectionModel, size_divisible

#: keys of the targets the detector reads in training and writes in its outputs
BOX_KEY = "boxes"
LABEL_KEY = "labels"
SCORE_KEY = "labels_scores"


def build_backbone(cfg: DetectionModel, in_channels: int = 1) -> BackboneWithFPN:
    """3D ResNet of ``cfg.depth`` and ``cfg.widths`` with an FPN of ``cfg.fpn_channels`` on the
    ``cfg.returned_layers`` stages (plus a max-pooled extra level); stages after the last returned one
    are not built into the extractor."""
    block_name, layers = RESNET_DEPTHS[cfg.depth]
    block = resnet.ResNetBlock if block_name == "basic" else resnet.ResNetBottleneck
    kernel = tuple(int(k) for k in cfg.conv1_kernel)
    backbone = resnet.ResNet(
        block=block,
        layers=list(layers),
        block_inplanes=list(cfg.widths),
        spatial_dims=3,
        n_input_channels=in_channels,
        conv1_t_size=kernel,
        conv1_t_stride=tuple(int(s) for s in cfg.conv1_stride),
        feed_forward=False,
    )
    return_layers = {f"layer{stage}": str(index) for index, stage in enumerate(cfg.returned_layers)}
    in_channels = [cfg.widths[stage - 1] * block.expansion for stage in cfg.returned_layers]
    return BackboneWithFPN(backbone, return_layers, in_channels, cfg.fpn_channels, spatial_dims=3)


@register_model("detection", "retinanet")
def retinanet(cfg: DetectionModel, in_channels: int = 1, out_channels: int = 1) -> RetinaNet:
    """MONAI's 3D RetinaNet network: ResNet (``cfg.depth``, ``cfg.widths``) + FPN, ``out_channels`` classes."""
    return build_network(cfg, in_channels, out_channels)


def build_network(cfg: DetectionModel, in_channels: int = 1, num_classes: int = 1) -> RetinaNet:
    """The trainable part: backbone + FPN + classification and box-regression heads.

    ``use_list_output``: the network returns a flat list (classification maps, then box maps), which
    TorchScript tracing and ONNX export accept, and which the detector reads as well.
    """
    return RetinaNet(
        spatial_dims=3,
        num_classes=num_classes,
        num_anchors=len(cfg.anchor_shapes_voxels),
        feature_extractor=build_backbone(cfg, in_channels),
        size_divisible=size_divisible(cfg),
        use_list_output=True,
    )


class ExportedNetwork(nn.Module):
    """The RetinaNet network as exported: image (B, 1, X, Y, Z) in 0..1 -> a tuple of the classification
    maps (B, anchors, x_l, y_l, z_l) of each level, then the box-regression maps (B, 6 * anchors, ...)."""

    def __init__(self, network: RetinaNet):
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.network(images))


class EngineRetinaNet(nn.Module):
    """An inference engine running the exported network, with the attributes the detector reads from a
    RetinaNet (spatial dims, classes, anchors, size divisibility, output keys)."""

    ATTRIBUTES = ("spatial_dims", "num_classes", "num_anchors", "size_divisible", "cls_key", "box_reg_key")

    def __init__(self, engine: nn.Module, network: RetinaNet):
        super().__init__()
        self.engine = engine
        for name in self.ATTRIBUTES:
            setattr(self, name, getattr(network, name))

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return list(self.engine(images))


def build_anchors(cfg: DetectionModel) -> AnchorGeneratorWithAnchorShape:
    levels = len(cfg.returned_layers) + 1
    return AnchorGeneratorWithAnchorShape(
        feature_map_scales=[2**level for level in range(levels)],
        base_anchor_shapes=[tuple(float(v) for v in shape) for shape in cfg.anchor_shapes_voxels],
    )


def build_detector(model_cfg: DetectionModel, infer_cfg: DetectionInfer,
                   network: RetinaNet | None = None) -> RetinaNetDetector:
    """A complete RetinaNetDetector around ``network`` (default: the ``model.name`` network of the registry):
    anchors, ATSS matcher, hard-negative sampler, losses, target keys, box selection (score threshold,
    NMS, at most ``max_marks_per_scan``) and sliding window."""
    if network is None:
        network = create_model("detection", model_cfg.name, model_cfg, in_channels=1, out_channels=1)
    detector = RetinaNetDetector(network=network, anchor_generator=build_anchors(model_cfg))
    detector.set_target_keys(box_key=BOX_KEY, label_key=LABEL_KEY)
    # ATSS adapts the IoU threshold to each nodule: small nodules still get positive anchors.
    detector.set_atss_matcher(num_candidates=model_cfg.atss_candidates, center_in_gt=False)
    detector.set_hard_negative_sampler(
        batch_size_per_image=model_cfg.sampled_anchors_per_patch,
        positive_fraction=model_cfg.positive_anchor_fraction,
        pool_size=model_cfg.hard_negative_pool,
        min_neg=model_cfg.min_negatives,
    )
    if model_cfg.cls_loss == "focal":
        detector.set_cls_loss(FocalLoss(use_sigmoid=True, gamma=2.0, reduction="mean"))
    else:
        detector.set_cls_loss(nn.BCEWithLogitsLoss(reduction="mean"))
    if model_cfg.box_loss == "giou":
        detector.set_box_regression_loss(BoxGIoULoss(reduction="mean"), encode_gt=False, decode_pred=True)
    else:
        detector.set_box_regression_loss(nn.SmoothL1Loss(beta=1.0 / 9, reduction="mean"), encode_gt=True,
                                         decode_pred=False)
    detector.set_box_selector_parameters(
        score_thresh=infer_cfg.score_threshold,
        topk_candidates_per_level=infer_cfg.topk_per_level,
        nms_thresh=infer_cfg.nms_iou,
        detections_per_img=infer_cfg.max_marks_per_scan,
    )
    detector.set_sliding_window_inferer(roi_size=[int(s) for s in infer_cfg.roi_size],
                                        sw_batch_size=infer_cfg.sw_batch_size, overlap=infer_cfg.overlap,
                                        mode="constant")
    return detector
