"""Settings of the segmentation task, with the named profiles."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from medsight.core.config import LoaderConfig, TaskConfig, choice, positive
from medsight.data.formats import check_format_name
from medsight.datasets.brats import CONVENTIONS, ROLES
from medsight.datasets.schemas import MRI_CASES
from medsight.errors import ConfigError


@dataclass
class SegmentationData(LoaderConfig):
    batch_size: int = 1
    naming: str = "auto"  # auto, brats2021, brats2023, patterns, msd
    label_convention: str = "auto"  # auto or one of datasets.brats.CONVENTIONS
    #: channels of the model, by role, in this order
    modalities: list[str] = field(default_factory=lambda: list(ROLES))
    #: role -> regular expression on file names, for naming=patterns (default: BRATS 2013/2015 names)
    patterns: Optional[dict[str, str]] = None
    spacing_mm: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    #: preprocessing steps a published model may have been trained without (an imported MONAI bundle
    #: reads the stored axes and grid as they are): orient to RAS (""=keep the stored axes), resample to
    #: spacing_mm, move a constant background to 0, crop to the non-zero foreground
    orient: str = "RAS"
    resample: bool = True
    background_to_zero: bool = True
    crop_foreground: bool = True
    patch_size: list[int] = field(default_factory=lambda: [128, 128, 128])
    #: random patches drawn per case and epoch, half centred on tumour, half on background
    patches_per_case: int = 2
    tumour_fraction: float = 0.5
    augment: bool = True

    def __post_init__(self):
        super().__post_init__()
        check_format_name(self.format, MRI_CASES)
        choice("data.naming", self.naming, ("auto", "brats2021", "brats2023", "patterns", "msd"))
        choice("data.label_convention", self.label_convention, ("auto", *sorted(CONVENTIONS)))
        for role in self.modalities:
            choice("data.modalities", role, ROLES)
        if len(set(self.modalities)) != len(self.modalities) or not self.modalities:
            raise ConfigError(f"data.modalities must list distinct roles, got {self.modalities}")
        choice("data.orient", self.orient, ("RAS", "LPS", ""))
        if len(self.spacing_mm) != 3 or len(self.patch_size) != 3:
            raise ConfigError("data.spacing_mm and data.patch_size need three values (x, y, z)")
        if not 0 <= self.tumour_fraction <= 1:
            raise ConfigError(f"data.tumour_fraction must be between 0 and 1, got {self.tumour_fraction}")


@dataclass
class SegmentationModel:
    name: str = "segresnet"
    #: SegResNet / DynUNet width; UNet uses ``channels``
    init_filters: int = 16
    blocks_down: list[int] = field(default_factory=lambda: [1, 2, 2, 4])
    #: SegResNet decoder blocks per level; [] = one per level
    blocks_up: list[int] = field(default_factory=list)
    dropout: float = 0.0
    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 256])
    #: smp_unet2d: any segmentation-models-pytorch encoder (weights only from init_weights: no downloads)
    encoder: str = "resnet18"
    #: old spelling of trainer.init_weights (``--init-weights``): read only when a training run starts
    init_weights: Optional[str] = None

    def __post_init__(self):
        positive("model.init_filters", self.init_filters)
        if self.name == "segresnet" and self.init_filters % 8:
            raise ConfigError(f"model.init_filters={self.init_filters}: SegResNet's group norm needs a multiple of 8")


@dataclass
class SegmentationInfer:
    roi_size: list[int] = field(default_factory=lambda: [128, 128, 128])
    overlap: float = 0.5
    sw_batch_size: int = 2
    blend: str = "gaussian"  # gaussian or constant
    tta: bool = False  # average over the 8 flips of the three axes
    threshold: float = 0.5
    probabilities: bool = False  # also write <case>_prob.nii.gz (ET, TC, WT)
    overlay: bool = True  # <case>_overlay.png
    #: with overlay: also <case>_viewer.html, the FLAIR's slices to scroll with ET, TC and WT over them
    viewer: bool = True
    #: training chooses per region, on validation, whether to drop small or all but the largest connected
    #: components (only where that improves validation Dice/HD95: postprocess.py), and predict and evaluate
    #: apply that choice, saved in the checkpoint. false: no choice while training (and no candidate scoring
    #: in validation), none applied by predict and evaluate
    postprocess: bool = True
    #: auto: bf16 on CUDA and on CPUs with native bf16 (2.1x faster than fp32 MONAI on a 240x240x155
    #: case here, Dice agreement >= 0.997: bench/segmentation_inference_speed.py), else fp32
    precision: str = "auto"
    #: 3D convolutions in channels-last memory layout when PyTorch runs the network: a BraTS case 1.6x
    #: faster in bf16 and 1.3x in fp32 on 2 cores (bench/segmentation_inference_speed.py). null (auto): on
    #: in bf16/fp16; in fp32 chosen by precision auto, timed per network by --engine auto; off in fp32 asked
    #: for by name, where it changes the arithmetic (1e-6), enough to flip a voxel lying on the threshold,
    #: and --precision fp32 reproduces a source model's label maps exactly (medsight import)
    channels_last: Optional[bool] = None
    #: apply the per-region calibration fitted on out-of-fold predictions (medsight cv), where the
    #: checkpoint holds them; false: the network's own probabilities
    calibrated: bool = True
    #: also write <case>_uncertainty.nii.gz (the members' and flips' spread, largest over regions) where
    #: there is a spread to measure: an ensemble, or tta
    uncertainty: bool = True

    def __post_init__(self):
        choice("infer.blend", self.blend, ("gaussian", "constant"))
        choice("infer.precision", self.precision, ("auto", "fp32", "bf16", "fp16"))
        if not 0 <= self.overlap < 1:
            raise ConfigError(f"infer.overlap must be in [0, 1), got {self.overlap}")
        if len(self.roi_size) != 3:
            raise ConfigError("infer.roi_size needs three values (x, y, z; -1 = whole axis)")


@dataclass
class SegmentationConfig(TaskConfig):
    task: str = "segmentation"
    data: SegmentationData = field(default_factory=SegmentationData)
    model: SegmentationModel = field(default_factory=SegmentationModel)
    infer: SegmentationInfer = field(default_factory=SegmentationInfer)


PROFILES: dict[str, dict] = {
    # Quick CPU runs: a narrow SegResNet on 48^3 patches (on 2 CPU cores 64^3 fp32 patches cost ~7x
    # more per voxel: activations fall out of cache); whole volumes validated every 10 epochs.
    "cpu-small": {
        "trainer": {"max_epochs": 60, "val_every_n_epochs": 10, "precision": "fp32"},
        "optim": {"lr": 2e-3, "weight_decay": 1e-5, "warmup_epochs": 1},
        "data": {"patch_size": [48, 48, 48], "patches_per_case": 2, "batch_size": 1},
        "model": {"init_filters": 8, "blocks_down": [1, 2, 2, 4]},
        "infer": {"roi_size": [96, 96, 96], "sw_batch_size": 1, "overlap": 0.25},
    },
    # The MONAI brats_mri_segmentation bundle's settings: SegResNet 16 filters, 224x224x144 crops
    # there; 128^3 patches here, AdamW 1e-4 cosine, 300 epochs, mixed precision, channels-last.
    "gpu": {
        "trainer": {"max_epochs": 300, "val_every_n_epochs": 5, "precision": "auto", "channels_last": True},
        "optim": {"lr": 1e-4, "weight_decay": 1e-5, "warmup_epochs": 5},
        "data": {"patch_size": [128, 128, 128], "patches_per_case": 2, "batch_size": 2, "num_workers": 8},
        "model": {"init_filters": 16},
        "infer": {"roi_size": [240, 240, 160], "sw_batch_size": 4, "overlap": 0.5},
    },
}
