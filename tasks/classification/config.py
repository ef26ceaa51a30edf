"""Typed configuration of the classification task: data (format, size, augmentation, sampling),
model, loss, metrics and inference sections. Choices are checked when the config is built, so a
typo fails at once with the allowed values."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from medsight.core.config import LoaderConfig, TaskConfig, choice, positive
from medsight.data.formats import check_format_name
from medsight.datasets.schemas import LABELLED_PICTURES
from medsight.datasets.splits import check_group_pattern
from medsight.errors import ConfigError


@dataclass
class ClassificationData(LoaderConfig):
    #: side of the square picture the model sees, pixels
    image_size: int = 224
    #: data.cache=pictures: the size (px) pictures are stored at, decoded, gray and resized once;
    #: 0 = image_size. Larger leaves room for crops: the pictures are resized to image_size on top.
    cache_size: int = 0
    batch_size: int = 16
    val_batch_size: int = 32
    val_fraction: float = 0.1
    #: folders/CSV without a group column: regex whose first group, found in a file name, is the patient
    #: (``^(\d+)_`` for NIH names like 00000193_019.png); empty = every image is its own group
    group_pattern: str = ""
    #: label names in output order; empty = the dataset's (ChestX-ray14's 14 findings, sorted folders...)
    labels: list[str] = field(default_factory=list)
    #: auto (from the data), true, false
    multi_label: str = "auto"
    #: ChestX-ray14 views to keep, e.g. [PA]; empty = all
    views: list[str] = field(default_factory=list)
    # Generic CSV columns (data.format=csv)
    path_column: str = "path"
    label_columns: list[str] = field(default_factory=lambda: ["label"])
    label_separator: str = "|"
    negative_label: str = "No Finding"
    split_column: str = "split"
    group_column: str = ""
    #: a CSV's paths may lead outside its folder (``../``, absolute elsewhere); refused unless true
    allow_outside: bool = False
    #: clip each picture to these percentiles of its values before z-scoring it; [] = no clipping
    intensity_percentiles: list[float] = field(default_factory=lambda: [0.5, 99.5])
    #: input channels of the model: 1 (gray), or 3 (the gray picture copied into R, G, B, as models made
    #: for photographs expect, e.g. CheXNet)
    channels: int = 1
    #: picture: z-score each picture (after the percentile clipping); imagenet: x / 255, then each channel
    #: by ImageNet's mean and std (CheXNet and torchvision models; 8-bit pictures); xrv: 8-bit values to
    #: [-1024, 1024] (torchxrayvision's models)
    normalize: str = "picture"
    # Augmentation (training only); each random transform fires with augment_prob
    augment_prob: float = 0.8
    rotate_deg: float = 7.0
    scale_fraction: float = 0.10
    translate_fraction: float = 0.05
    brightness: float = 0.1
    contrast: float = 0.1
    #: horizontal flips move the heart to the other side: off by default for chest X-rays
    hflip_prob: float = 0.0
    #: none: shuffle; weighted: draw records by inverse label frequency; patient: every patient (group)
    #: equally often, however many pictures it has (both draw with replacement)
    sampler: str = "none"

    def __post_init__(self):
        super().__post_init__()
        check_format_name(self.format, LABELLED_PICTURES)
        choice("data.multi_label", self.multi_label, ("auto", "true", "false"))
        choice("data.sampler", self.sampler, ("none", "weighted", "patient"))
        check_group_pattern(self.group_pattern)
        positive("data.image_size", self.image_size)
        positive("data.cache_size", self.cache_size, allow_zero=True)
        choice("data.channels", self.channels, (1, 3))
        choice("data.normalize", self.normalize, ("picture", "imagenet", "xrv"))
        if not 0 <= self.hflip_prob <= 1 or not 0 <= self.augment_prob <= 1:
            raise ConfigError("data.hflip_prob and data.augment_prob must be between 0 and 1")
        percentiles = self.intensity_percentiles
        if percentiles and (len(percentiles) != 2 or not 0 <= percentiles[0] < percentiles[1] <= 100):
            raise ConfigError(f"data.intensity_percentiles must be [low, high] in 0..100 or [], got {percentiles}")
        if len(set(self.labels)) != len(self.labels):
            raise ConfigError("data.labels holds a name twice")


@dataclass
class ClassificationModel:
    #: densenet121 (MONAI, 2D, 1 channel), simple_cnn (the tutorials' baseline), or a timm model name
    name: str = "densenet121"
    dropout: float = 0.0
    #: old spelling of trainer.init_weights (``--init-weights``): read only when a training run starts
    init_weights: Optional[str] = None

    def __post_init__(self):
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class ClassificationLoss:
    #: auto: bce for multi-label data, ce (softmax cross-entropy) for single-label; or bce, focal, ce
    name: str = "auto"
    #: weigh positives by negatives/positives per label, counted on the training split (bce; ce: class weights)
    pos_weight: bool = False
    focal_gamma: float = 2.0
    #: knowledge distillation: a classification checkpoint (the teacher) whose outputs on the same training
    #: pictures the model also learns (``medsight compress --method distill`` sets it); null = none. Read when
    #: training starts or resumes; evaluate and predict never load it.
    distill_from: Optional[str] = None
    #: loss = (1 - distill_weight) * the loss above + distill_weight * the distillation term
    distill_weight: float = 0.5
    #: both networks' logits are divided by it before the distillation term (softer targets), which is scaled
    #: by its square so that its gradients keep their size
    distill_temperature: float = 2.0

    def __post_init__(self):
        choice("loss.name", self.name, ("auto", "bce", "focal", "ce"))
        positive("loss.focal_gamma", self.focal_gamma, allow_zero=True)
        positive("loss.distill_temperature", self.distill_temperature)
        if not 0 <= self.distill_weight <= 1:
            raise ConfigError(f"loss.distill_weight must be in [0, 1], got {self.distill_weight}")


@dataclass
class ClassificationMetrics:
    #: how per-label decision thresholds are chosen on validation: youden (max TPR - FPR) or f1
    threshold_rule: str = "youden"

    def __post_init__(self):
        choice("metrics.threshold_rule", self.threshold_rule, ("youden", "f1"))


@dataclass
class ClassificationInfer:
    #: Grad-CAM heatmap PNGs of the top labels (``medsight predict --cam``)
    cam: bool = False
    #: how many of the most probable labels get a heatmap
    cam_top_k: int = 3
    #: module whose activations Grad-CAM weighs; auto = the model's last spatial feature map
    cam_layer: str = "auto"
    #: auto: bf16 on CUDA and on CPUs with native bf16 (probabilities within 0.002 of fp32; 1.6x the
    #: fp32 images/s here, bench/classification_throughput.py), else fp32
    precision: str = "auto"
    #: 2D convolutions in channels-last memory layout (faster with bf16 on CPU and on CUDA)
    channels_last: bool = True
    #: pictures per predict batch; 0 = auto: data.val_batch_size on a GPU; on a CPU, about
    #: CPU_PIXELS_PER_BATCH model-input pixels (8 pictures at 224 px, 64 at 64 px), which keeps a
    #: DenseNet's activations in cache (bench/classification_throughput.py)
    batch_size: int = 0
    #: apply the calibration fitted on out-of-fold predictions (medsight cv, per label), where the
    #: checkpoint holds them; false: the network's own probabilities
    calibrated: bool = True

    def __post_init__(self):
        positive("infer.cam_top_k", self.cam_top_k)
        positive("infer.batch_size", self.batch_size, allow_zero=True)
        choice("infer.precision", self.precision, ("auto", "fp32", "bf16", "fp16"))


@dataclass
class ClassificationConfig(TaskConfig):
    task: str = "classification"
    data: ClassificationData = field(default_factory=ClassificationData)
    model: ClassificationModel = field(default_factory=ClassificationModel)
    loss: ClassificationLoss = field(default_factory=ClassificationLoss)
    metrics: ClassificationMetrics = field(default_factory=ClassificationMetrics)
    infer: ClassificationInfer = field(default_factory=ClassificationInfer)
