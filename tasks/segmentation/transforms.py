"""Segmentation pipelines, composed from medsight's shared builders plus two transforms of our own:
label values -> ET/TC/WT regions by the record's convention, and channel selection for 4D inputs."""

from __future__ import annotations

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, MapTransform, RandCropByPosNegLabeld, SpatialPadd

from medsight.data import transforms as T
from medsight.datasets.brats import CONVENTIONS
from medsight.errors import DataError

from .config import SegmentationConfig


def _source(tensor) -> str:
    meta = getattr(tensor, "meta", {}) or {}
    return str(meta.get("filename_or_obj", "label map"))


class LabelsToRegionsd(MapTransform):
    """(1, X, Y, Z) label values -> (3, X, Y, Z) float ET, TC, WT, by ``data["convention"]``.

    Values outside the convention are refused with the label file named: a 2018 converter run on
    MSD labels would otherwise give ET = 0 without a word.
    """

    def __init__(self, keys="label", convention_key: str = "convention", default_convention: str = "brats2021"):
        super().__init__(keys, allow_missing_keys=True)
        self.convention_key = convention_key
        self.default_convention = default_convention

    def __call__(self, data):
        d = dict(data)
        convention = CONVENTIONS[d.get(self.convention_key) or self.default_convention]
        for key in self.key_iterator(d):
            label = d[key]
            values = torch.unique(torch.as_tensor(label)).tolist()
            non_integer = [v for v in values if float(v) != int(v)]
            if non_integer:
                raise DataError(f"label map holds non-integer values (e.g. {non_integer[0]}); is it a label map?",
                                _source(label))
            convention.check_values(values, _source(label))
            regions = convention.to_regions(np.asarray(label[0]).round().astype(np.int16)).astype(np.float32)
            d[key] = MetaTensor(regions, meta=dict(label.meta), applied_operations=list(label.applied_operations)) \
                if isinstance(label, MetaTensor) else torch.as_tensor(regions)
        return d


class SelectChannelsd(MapTransform):
    """Keep the channels listed in ``data["channels"]`` (4D MSD images hold every modality)."""

    def __init__(self, keys="image", index_key: str = "channels"):
        super().__init__(keys, allow_missing_keys=True)
        self.index_key = index_key

    def __call__(self, data):
        d = dict(data)
        channels = d.get(self.index_key)
        if channels is None:
            return d
        for key in self.key_iterator(d):
            image = d[key]
            if image.shape[0] <= max(channels):
                raise DataError(f"image has {image.shape[0]} channels; channel {max(channels)} was asked for",
                                _source(image))
            d[key] = image[list(channels)]
        return d


def pipeline(stage: str, cfg: SegmentationConfig, default_convention: str, tap=None) -> Compose:
    """train: patches balanced between tumour and background, flips, intensity jitter;
    val: whole volumes with labels; infer: whole volumes, invertible back onto the input grid. ``tap``: a step
    right after the reading ones (predict's out-of-distribution facts, ``domain.DomainTapd``)."""
    data = cfg.data
    labels = () if stage == "infer" else ("label",)
    steps = [*T.load("image", labels), SelectChannelsd("image")]
    if tap is not None:
        steps.append(tap)
    if labels:
        steps.append(LabelsToRegionsd("label", default_convention=default_convention))
    if data.orient:
        steps += T.orient("image", labels, data.orient)
    if data.resample:
        steps += T.resample("image", labels, data.spacing_mm)
    if data.background_to_zero:
        steps += T.background_to_zero("image")
    steps += T.zscore("image", nonzero=True)
    if data.crop_foreground:
        steps += T.crop_foreground("image", labels, source="image")
    if stage == "train":
        steps += [
            SpatialPadd(["image", "label"], spatial_size=tuple(data.patch_size)),
            RandCropByPosNegLabeld(["image", "label"], label_key="label", spatial_size=tuple(data.patch_size),
                                   pos=data.tumour_fraction, neg=1 - data.tumour_fraction,
                                   num_samples=data.patches_per_case, image_key="image", image_threshold=0),
        ]
        if data.augment:
            steps += [*T.flips("image", "label", axes=(0, 1, 2), prob=0.5),
                      *T.intensity("image", prob=0.5, scale=0.1, shift=0.1)]
    return Compose(steps, log_stats=False)  # errors name their file; no MONAI data dump on stderr
