"""Transforms per stage and batch collation.

Every stage: read -> orient RAS -> resample to ``data.spacing_mm`` -> HU window to 0..1 (the shared
builders of ``medsight.data.transforms``). Training then makes boxes from the nodules on the resampled
grid and draws patches (half containing a nodule), augmented with MONAI's box-aware zoom, flips and
90-degree rotations so that boxes move with the image.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
from monai.apps.detection.transforms.dictionary import (
    ClipBoxToImaged,
    RandCropBoxByPosNegLabeld,
    RandFlipBoxd,
    RandRotateBox90d,
    RandZoomBoxd,
)
from monai.data import list_data_collate
from monai.transforms import Compose, EnsureTyped, RandGaussianNoised, SelectItemsd, SpatialPadd

from medsight.data import transforms as T
from .boxes import NodulesToBoxesd
from .config import DetectionData
from .model import BOX_KEY, LABEL_KEY

IMAGE = "image"
#: keys whose values differ in length between items: kept as lists when batching
RAGGED_KEYS = (BOX_KEY, LABEL_KEY, "nodules", "excluded")



class PatchesByPosNeg(RandCropBoxByPosNegLabeld):
    """MONAI's box-aware positive/negative patch sampler. A scan without nodules gives background
    patches only, which is expected here: MONAI's warning about it is silenced for this call alone."""

    def __call__(self, data, lazy=None):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Num foregrounds 0")
            return super().__call__(data)


def preprocessing(cfg: DetectionData) -> list:
    """Read, orient RAS, resample (linear), HU window -> image (1, X, Y, Z) float32 in 0..1."""
    return [
        *T.load(IMAGE, channels=1),
        *T.orient(IMAGE),
        *T.resample(IMAGE, spacing_mm=cfg.spacing_mm),
        *T.hu_window(IMAGE, window_hu=cfg.window_hu),
        EnsureTyped(IMAGE, dtype=torch.float32),
    ]


def augmentation(cfg: DetectionData) -> list:
    """Box-aware random zoom, flips on every axis and in-plane 90-degree rotations, then noise."""
    box_args = dict(image_keys=[IMAGE], box_keys=[BOX_KEY], box_ref_image_keys=[IMAGE])
    steps = [
        RandZoomBoxd(**box_args, prob=cfg.zoom_prob, min_zoom=0.7, max_zoom=1.4, padding_mode="constant",
                     keep_size=True),
        ClipBoxToImaged(box_keys=BOX_KEY, label_keys=[LABEL_KEY], box_ref_image_keys=IMAGE, remove_empty=True),
    ]
    steps += [RandFlipBoxd(**box_args, prob=0.5, spatial_axis=axis) for axis in range(3)]
    steps.append(RandRotateBox90d(**box_args, prob=0.75, max_k=3, spatial_axes=(0, 1)))
    steps += T.intensity(IMAGE, prob=0.15, scale=0.25, shift=0.1)
    steps.append(RandGaussianNoised(IMAGE, prob=0.1, mean=0.0, std=0.05))
    return steps


def train_transforms(cfg: DetectionData, voxel_centre: float = 0.5) -> Compose:
    positive = cfg.positive_patch_fraction
    steps = [
        *preprocessing(cfg),
        NodulesToBoxesd(IMAGE, "nodules", BOX_KEY, LABEL_KEY, voxel_centre=voxel_centre),
        # at the end, so that box coordinates (from voxel 0) are unchanged by the padding
        SpatialPadd(IMAGE, spatial_size=list(cfg.patch_size), method="end"),
        PatchesByPosNeg(
            image_keys=[IMAGE], box_keys=BOX_KEY, label_keys=[LABEL_KEY], spatial_size=list(cfg.patch_size),
            whole_box=True, num_samples=cfg.patches_per_scan, pos=positive, neg=1.0 - positive,
        ),
    ]
    if cfg.augment:
        steps += augmentation(cfg)
    steps.append(SelectItemsd([IMAGE, BOX_KEY, LABEL_KEY, "id"]))
    return Compose(steps)


def eval_transforms(cfg: DetectionData, tap=None) -> Compose:
    """Whole scans for validation, evaluation and prediction (nodule rows pass through untouched); ``tap``: a
    step right after the reading ones (predict's out-of-distribution facts, ``domain.DomainTapd``)."""
    steps = preprocessing(cfg)
    read = len(T.load(IMAGE, channels=1))
    return Compose([*steps[:read], *([tap] if tap is not None else []), *steps[read:]])


def collate_patches(items: Sequence) -> dict:
    """Training batch: each scan gave a list of patches; -> ``image`` (P, 1, x, y, z) plain tensor,
    ``boxes`` and ``labels`` lists of P tensors."""
    patches = [patch for item in items for patch in (item if isinstance(item, list) else [item])]
    return {
        IMAGE: torch.stack([torch.as_tensor(p[IMAGE]).as_subclass(torch.Tensor) for p in patches]),
        BOX_KEY: [torch.as_tensor(p[BOX_KEY], dtype=torch.float32).reshape(-1, 6) for p in patches],
        LABEL_KEY: [torch.as_tensor(p[LABEL_KEY], dtype=torch.long).reshape(-1) for p in patches],
        "id": [p.get("id") for p in patches],
    }


def collate_scans(items: Sequence[dict]) -> dict:
    """Whole scans: MONAI's collation (MetaTensors keep their affines) for equal-size keys; ragged
    keys (nodule rows) stay lists, one entry per scan."""
    ragged = {key: [item.get(key) for item in items] for key in RAGGED_KEYS if any(key in i for i in items)}
    batch = list_data_collate([{k: v for k, v in item.items() if k not in RAGGED_KEYS} for item in items])
    batch.update(ragged)
    return batch


def collate_fn(stage: str) -> Callable:
    return collate_patches if stage == "train" else collate_scans
