"""The MONAI Model Zoo's ``brats_mri_segmentation`` bundle as a medsight segmentation checkpoint.

Read from the bundle's own configs (``configs/metadata.json``, ``configs/inference.json``), not assumed:

- the network (``network_def``: SegResNet and its arguments);
- the modality order (``channel_def`` of the input: T1c, T1, T2, FLAIR) -> ``data.modalities`` by role;
- the output channel order (``channel_def`` of the output: tumour core, whole tumour, enhancing tumour):
  the last layer's output channels are permuted into medsight's ET, TC, WT;
- the preprocessing: the bundle normalises each channel over non-zero voxels and neither reorients
  nor resamples nor crops, so the checkpoint does the same (``data.orient=""``, ``data.resample=false``,
  ``data.crop_foreground=false``, ``data.background_to_zero=false``); an ``Orientationd``/``Spacingd`` in
  the bundle would be followed;
- the sliding window (``inferer``) and the decision threshold (``AsDiscreted``); the bundle writes
  BraTS 2018 labels (1 necrosis/non-enhancing, 2 oedema, 4 enhancing): convention ``brats2021``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from medsight.sources.bundles import Bundle, bundle_provenance, is_bundle, read_bundle, value
from medsight.datasets.brats import REGIONS
from medsight.errors import ConfigError
from medsight.sources.importers import Imported, ModelImporter, register_importer

#: channel names the bundles use -> medsight's roles
ROLE_NAMES = {"t1c": "t1c", "t1ce": "t1c", "t1gd": "t1c", "t1-gd": "t1c", "t1": "t1", "t1n": "t1", "t2": "t2",
              "t2w": "t2", "flair": "flair", "t2f": "flair", "t2-flair": "flair"}
REGION_NAMES = {"enhancing tumor": "ET", "enhancing tumour": "ET", "et": "ET", "tumor core": "TC", "tumour core": "TC",
                "tc": "TC", "whole tumor": "WT", "whole tumour": "WT", "wt": "WT"}


def _channel_def(bundle: Bundle, side: str, key: str) -> list[str]:
    node = bundle.metadata.get("network_data_format", {}).get(side, {}).get(key, {}).get("channel_def", {})
    return [str(node[k]) for k in sorted(node, key=int)] if node else []


def _roles(names: list[str], where) -> list[str]:
    roles = [ROLE_NAMES.get(name.strip().lower()) for name in names]
    if not names or None in roles:
        raise ConfigError(f"cannot tell the input modalities by role from channel_def {names}", where)
    return roles


def _region_order(names: list[str], where) -> list[int]:
    """For each of medsight's ET, TC, WT: the bundle's output channel that holds it."""
    regions = [REGION_NAMES.get(name.strip().lower()) for name in names]
    if sorted(filter(None, regions)) != sorted(REGIONS):
        raise ConfigError(f"cannot map the output channels {names} onto ET, TC and WT", where)
    return [regions.index(region) for region in REGIONS]


def permute_outputs(state: dict, order: list[int], outputs: int) -> dict:
    """The last layer's output channels (its weight and bias, the last tensors with ``outputs`` rows) in ``order``."""
    state = dict(state)
    keys = list(state)
    last = next(k for k in reversed(keys) if state[k].dim() >= 1 and state[k].shape[0] == outputs)
    prefix = last.rsplit(".", 1)[0]
    for key in keys:
        if key.rsplit(".", 1)[0] == prefix and state[key].shape[0] == outputs:
            state[key] = state[key][order].clone()
    return state


def _settings(bundle: Bundle, where) -> dict:
    network = bundle.inference.get("network_def") or {}
    if str(network.get("_target_", "")).split(".")[-1] != "SegResNet":
        raise ConfigError(f"network_def is {network.get('_target_')!r}, not the SegResNet this importer reads", where)
    normalise = bundle.transform("NormalizeIntensityd") or {}
    if not (value(normalise.get("nonzero"), False) and value(normalise.get("channel_wise"), False)):
        raise ConfigError("the bundle's preprocessing is not NormalizeIntensityd(nonzero, channel_wise): not read", where)
    orientation, spacing = bundle.transform("Orientationd"), bundle.transform("Spacingd")
    inferer = bundle.inference.get("inferer") or {}
    discrete = bundle.transform("AsDiscreted", section="postprocessing") or {}
    data = {"orient": value((orientation or {}).get("axcodes"), "RAS") if orientation else "",
            "resample": spacing is not None, "background_to_zero": False, "crop_foreground": False}
    if spacing is not None:
        data["spacing_mm"] = [float(v) for v in value(spacing.get("pixdim"), [1.0, 1.0, 1.0])]
    model = {"name": "segresnet", "init_filters": int(value(network.get("init_filters"), 8)),
             "blocks_down": [int(v) for v in value(network.get("blocks_down"), [1, 2, 2, 4])],
             "blocks_up": [int(v) for v in value(network.get("blocks_up"), [])],
             "dropout": float(value(network.get("dropout_prob"), 0.0) or 0.0)}
    infer = {"roi_size": [int(v) for v in value(inferer.get("roi_size"), [128, 128, 128])],
             "overlap": float(value(inferer.get("overlap"), 0.25)),
             "sw_batch_size": int(value(inferer.get("sw_batch_size"), 1)),
             "blend": value(inferer.get("mode"), "constant"), "threshold": float(value(discrete.get("threshold"), 0.5)),
             "tta": False}
    return {"data": data, "model": model, "infer": infer}


@register_importer("monai-brats")
class BratsBundle(ModelImporter):
    description = "MONAI Model Zoo bundle brats_mri_segmentation (folder or zip): SegResNet, 4 modalities"

    @classmethod
    def accepts(cls, source: Path) -> bool:
        if not is_bundle(source):
            return False
        return "brats_mri_segmentation" in source.name or "brats" in json.dumps(read_bundle(source).metadata).lower()

    def read(self, source: Path, labels: list[str] | None = None) -> Imported:
        bundle = read_bundle(source)
        settings = _settings(bundle, source)
        modalities = _roles(_channel_def(bundle, "inputs", "image"), source)
        network = bundle.inference["network_def"]
        outputs = int(value(network.get("out_channels"), 3))
        if int(value(network.get("in_channels"), len(modalities))) != len(modalities):
            raise ConfigError(f"network_def.in_channels does not match the {len(modalities)} input channels", source)
        order = _region_order(_channel_def(bundle, "outputs", "pred"), source)
        settings["data"]["modalities"] = modalities
        weights = permute_outputs(bundle.weights, order, outputs)
        provenance = bundle_provenance(bundle, source, "skull-stripped, co-registered multi-modal brain MRI like "
                                       "BraTS (T1c, T1, T2, FLAIR at 1 mm)", "BraTS 2018")
        notes = [f"modalities by role: {', '.join(modalities)}; output channels "
                 f"{_channel_def(bundle, 'outputs', 'pred')} reordered to ET, TC, WT",
                 f"preprocessing as the bundle's: orient {settings['data']['orient'] or 'none'}, "
                 f"resample {settings['data']['resample']}, z-score over non-zero voxels; sliding window "
                 f"{settings['infer']['roi_size']}, overlap {settings['infer']['overlap']}"]
        task_state = {"convention": "brats2021", "modalities": modalities, "spacing_mm": [1.0, 1.0, 1.0]}
        return Imported("segmentation", settings, task_state, {k: v for k, v in weights.items()
                                                                   if isinstance(v, torch.Tensor)}, provenance, notes)
