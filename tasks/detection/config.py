"""Typed configuration of the detection task: data/preprocessing, the RetinaNet model, inference.

Defaults are the MONAI ``lung_nodule_ct_detection`` bundle's published settings (0.703125 x
0.703125 x 1.25 mm, 192x192x80 patches, ResNet50 + FPN, anchors for nodules, ATSS matcher,
hard-negative sampler); the ``cpu-small`` profile (``tasks/detection/task.py``) shrinks them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from medsight.core.config import LoaderConfig, OptimConfig, TaskConfig, TrainerConfig, choice, positive
from medsight.data.formats import check_format_name
from medsight.datasets.schemas import NODULE_SCANS
from medsight.errors import ConfigError

#: ResNet depth -> (block type, blocks per stage), as in MONAI's and torchvision's ResNets
RESNET_DEPTHS = {
    10: ("basic", (1, 1, 1, 1)),
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


def _triple(name: str, values, kind=float) -> None:
    if len(values) != 3:
        raise ConfigError(f"{name} needs three values (x, y, z), got {list(values)}")
    if any(kind(v) <= 0 for v in values):
        raise ConfigError(f"{name} values must be > 0, got {list(values)}")


@dataclass
class DetectionData(LoaderConfig):
    """Dataset layout, preprocessing and training patches.

    Splits: ``fold`` is the held-out subset (LUNA16 ``subsetN``; ``evaluate`` scores it);
    ``val_fraction`` of the remaining scans, each drawn by its own hash (``data.split_seed``), choose
    the best checkpoint.
    """

    batch_size: int = 1  # scans per step; each gives ``patches_per_scan`` patches
    patches_per_scan: int = 4
    val_fraction: float = 0.1
    #: voxel size every scan is resampled to, mm (x, y, z)
    spacing_mm: list[float] = field(default_factory=lambda: [0.703125, 0.703125, 1.25])
    #: Hounsfield units mapped linearly to 0..1, clipped
    window_hu: list[float] = field(default_factory=lambda: [-1024.0, 500.0])
    #: training patch, voxels (x, y, z); x and y equal (90-degree rotations)
    patch_size: list[int] = field(default_factory=lambda: [192, 192, 80])
    #: share of patches centred so that they contain a nodule (the rest: anywhere)
    positive_patch_fraction: float = 0.5
    augment: bool = True
    zoom_prob: float = 0.2

    def __post_init__(self):
        super().__post_init__()
        check_format_name(self.format, NODULE_SCANS)
        positive("data.patches_per_scan", self.patches_per_scan)
        _triple("data.spacing_mm", self.spacing_mm)
        _triple("data.patch_size", self.patch_size, int)
        if self.patch_size[0] != self.patch_size[1]:
            raise ConfigError(f"data.patch_size must be square in x and y (90-degree rotations), got {self.patch_size}")
        if len(self.window_hu) != 2 or self.window_hu[0] >= self.window_hu[1]:
            raise ConfigError(f"data.window_hu must be [low, high] with low < high, got {self.window_hu}")
        if not 0 <= self.positive_patch_fraction <= 1:
            raise ConfigError(f"data.positive_patch_fraction must be between 0 and 1, "
                              f"got {self.positive_patch_fraction}")


@dataclass
class DetectionModel:
    """RetinaNet: a 3D ResNet + FPN backbone, anchors sized for nodules, ATSS matching, hard negatives."""

    #: the network, from the ``detection`` model family (``medsight tasks`` lists them)
    name: str = "retinanet"
    depth: int = 50
    #: channels of the four ResNet stages before the block expansion
    widths: list[int] = field(default_factory=lambda: [64, 128, 256, 512])
    fpn_channels: int = 256
    #: ResNet stages whose outputs feed the FPN (one more level comes from max-pooling the last)
    returned_layers: list[int] = field(default_factory=lambda: [1, 2])
    conv1_stride: list[int] = field(default_factory=lambda: [2, 2, 1])
    conv1_kernel: list[int] = field(default_factory=lambda: [7, 7, 7])
    #: anchor shapes (x, y, z) in voxels on the finest level; level i uses them times 2**i
    anchor_shapes_voxels: list[list[float]] = field(default_factory=lambda: [[6, 8, 4], [8, 6, 5], [10, 10, 6]])
    atss_candidates: int = 4
    #: hard-negative sampler: anchors per patch, share of positives, pool and minimum of negatives
    sampled_anchors_per_patch: int = 64
    positive_anchor_fraction: float = 0.3
    hard_negative_pool: float = 20.0
    min_negatives: int = 16
    #: box coordinate of the centre of voxel 0 in the boxes the model learnt: 0.5 (voxel edges: medsight's
    #: boxes, exact through MONAI's flips, crops and zooms) or 0.0 (voxel centres at integers, as in the MONAI
    #: Model Zoo's lung_nodule_ct_detection training data)
    box_voxel_centre: float = 0.5
    cls_loss: str = "bce"  # bce, focal
    box_loss: str = "smooth_l1"  # smooth_l1, giou
    #: old spelling of trainer.init_weights (``--init-weights``): read only when a training run starts
    init_weights: Optional[str] = None

    def __post_init__(self):
        if self.depth not in RESNET_DEPTHS:
            raise ConfigError(f"model.depth={self.depth} is not one of {', '.join(map(str, RESNET_DEPTHS))}")
        if len(self.widths) != 4 or any(w <= 0 for w in self.widths):
            raise ConfigError(f"model.widths needs four positive channel counts, got {self.widths}")
        if self.fpn_channels <= 0 or self.fpn_channels % 8:
            raise ConfigError(f"model.fpn_channels must be a positive multiple of 8 (GroupNorm), "
                              f"got {self.fpn_channels}")
        if not self.returned_layers or sorted(set(self.returned_layers)) != list(self.returned_layers) or \
                min(self.returned_layers) < 1 or max(self.returned_layers) > 4:
            raise ConfigError(f"model.returned_layers must be increasing stages in 1..4, got {self.returned_layers}")
        _triple("model.conv1_stride", self.conv1_stride, int)
        _triple("model.conv1_kernel", self.conv1_kernel, int)
        if not self.anchor_shapes_voxels or any(len(s) != 3 or min(s) <= 0 for s in self.anchor_shapes_voxels):
            raise ConfigError(f"model.anchor_shapes_voxels needs [x, y, z] shapes > 0, got {self.anchor_shapes_voxels}")
        choice("model.cls_loss", self.cls_loss, ("bce", "focal"))
        choice("model.box_voxel_centre", self.box_voxel_centre, (0.0, 0.5))
        choice("model.box_loss", self.box_loss, ("smooth_l1", "giou"))
        if not 0 < self.positive_anchor_fraction < 1:
            raise ConfigError(f"model.positive_anchor_fraction must be in (0, 1), got {self.positive_anchor_fraction}")


@dataclass
class DetectionInfer:
    """Whole-scan detection: sliding window, box selection (score threshold, NMS, cap per scan), pictures."""

    #: sliding-window size, voxels (x, y, z); scans that fit are run in one pass
    roi_size: list[int] = field(default_factory=lambda: [512, 512, 192])
    overlap: float = 0.25
    #: windows per network call (GPU memory grows with it; on CPU, 2 or more keep PyTorch on oneDNN)
    sw_batch_size: int = 1
    score_threshold: float = 0.02
    nms_iou: float = 0.22
    topk_per_level: int = 1000
    #: LUNA16 scores at most 100 marks per scan
    max_marks_per_scan: int = 100
    #: overlay PNGs per scan: the axial slice through each of the top marks
    overlays_per_scan: int = 3
    #: with overlays: also overlays/<seriesuid>_viewer.html, the scan's slices to scroll with the marks circled
    viewer: bool = True
    #: ``predict --dicom``: the marks a DICOM SEG holds (as spheres): at least this probability, at most this many
    dicom_min_probability: float = 0.5
    dicom_max_marks: int = 10
    #: an ensemble's boxes: wbf (weighted box fusion) or wbc (nnDetection's weighted box clustering);
    #: boxes overlapping by at least fusion_iou are one nodule
    fusion: str = "wbf"
    fusion_iou: float = 0.1
    #: apply the score's calibration fitted on out-of-fold marks (medsight cv), where the checkpoint has one
    calibrated: bool = True
    #: choose the NMS overlap on validation (training's, and cv's out-of-fold predictions) among
    #: 0.1-0.5 and nms_iou; predict and evaluate then use the chosen one (the checkpoint's box_selection)
    sweep_nms: bool = True

    def __post_init__(self):
        choice("infer.fusion", self.fusion, ("wbf", "wbc"))
        _triple("infer.roi_size", self.roi_size, int)
        if not 0 <= self.overlap < 1:
            raise ConfigError(f"infer.overlap must be in [0, 1), got {self.overlap}")
        if not 0 <= self.score_threshold < 1:
            raise ConfigError(f"infer.score_threshold must be in [0, 1), got {self.score_threshold}")
        if not 0 < self.nms_iou <= 1:
            raise ConfigError(f"infer.nms_iou must be in (0, 1], got {self.nms_iou}")
        if not 1 <= self.max_marks_per_scan <= 100:
            raise ConfigError(f"infer.max_marks_per_scan must be 1..100 (LUNA16 scores 100), "
                              f"got {self.max_marks_per_scan}")
        positive("infer.overlays_per_scan", self.overlays_per_scan, allow_zero=True)
        positive("infer.sw_batch_size", self.sw_batch_size)


def _default_trainer() -> TrainerConfig:
    return TrainerConfig(max_epochs=300, val_every_n_epochs=5, precision="auto")


def _default_optim() -> OptimConfig:
    # The bundle: SGD, lr 1e-2, Nesterov momentum, weight decay 3e-5, warm-up then step decay.
    return OptimConfig(name="sgd", lr=1e-2, momentum=0.9, nesterov=True, weight_decay=3e-5, scheduler="step",
                       warmup_epochs=10, step_epochs=150, gamma=0.1)


@dataclass
class DetectionConfig(TaskConfig):
    task: str = "detection"
    trainer: TrainerConfig = field(default_factory=_default_trainer)
    optim: OptimConfig = field(default_factory=_default_optim)
    data: DetectionData = field(default_factory=DetectionData)
    model: DetectionModel = field(default_factory=DetectionModel)
    infer: DetectionInfer = field(default_factory=DetectionInfer)

    def __post_init__(self):
        divisor = size_divisible(self.model)
        for name, size in (("data.patch_size", self.data.patch_size), ("infer.roi_size", self.infer.roi_size)):
            if any(int(s) % d for s, d in zip(size, divisor)):
                raise ConfigError(f"{name}={list(size)} must be divisible by {list(divisor)} (the coarsest "
                                  "feature level of model.conv1_stride and model.returned_layers)")


def size_divisible(model: DetectionModel) -> tuple[int, int, int]:
    """Input sizes (x, y, z) must be multiples of this: conv1 stride x max-pool 2 x 2 per stage, plus
    the extra max-pooled FPN level."""
    return tuple(int(s) * 2 * 2 ** max(model.returned_layers) for s in model.conv1_stride)
