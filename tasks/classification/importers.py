"""Published chest X-ray classifiers as medsight checkpoints.

- ``chexnet``: arnoweng/CheXNet's ``model.pth.tar``: ``{"state_dict": ...}`` of a DataParallel-wrapped
  torchvision DenseNet121 (``module.densenet121.*``) with the layer names of old torchvision
  (``norm.1``, ``conv.2``...) and a 14-way ``Linear`` + ``Sigmoid`` head (``classifier.0``). Also any
  ``{"state_dict"}``/plain state dict with those names.
- ``torchvision-densenet121``: a plain torchvision ``densenet121`` state dict with a head of 14 outputs
  (ChestX-ray14's findings in CheXNet's order) or of ``--labels``.

Both read 3-channel pictures at 224 px with ImageNet normalisation (CheXNet's preprocessing), so the
checkpoint's config says so: ``data.channels=3``, ``data.normalize=imagenet``.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from medsight.datasets.chestxray14 import FINDINGS
from medsight.errors import ConfigError
from medsight.io.checkpoint import read_torch_file
from medsight.sources.importers import Imported, ModelImporter, load_tensors, register_importer

#: CheXNet's CLASS_NAMES: the same order as ChestX-ray14's findings here
CHEXNET_LABELS = tuple(FINDINGS)
_OLD_NAMES = re.compile(r"\.(norm|relu|conv)\.([12])\.")


def _state_dict(raw) -> dict:
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict) or not any(isinstance(v, torch.Tensor) for v in raw.values()):
        return {}
    return {k: v for k, v in raw.items() if isinstance(v, torch.Tensor)}


def torchvision_names(state: dict) -> dict:
    """CheXNet/DataParallel/old-torchvision names -> today's torchvision DenseNet121 names."""
    renamed = {}
    for key, value in state.items():
        key = key.removeprefix("module.").removeprefix("densenet121.")
        key = _OLD_NAMES.sub(r".\1\2.", key)
        key = key.replace("classifier.0.", "classifier.")
        renamed[key] = value
    return renamed


def _classifier_import(path: Path, state: dict, labels: list[str] | None, source: str, provenance: dict) -> Imported:
    outputs = int(state["classifier.weight"].shape[0])
    names = list(labels) if labels else (list(CHEXNET_LABELS) if outputs == len(CHEXNET_LABELS) else None)
    if names is None or len(names) != outputs:
        raise ConfigError(f"the head has {outputs} outputs: give their names in order with --labels a,b,c "
                          f"({len(names) if names else 0} given)", path)
    config = {"data": {"image_size": 224, "channels": 3, "normalize": "imagenet", "intensity_percentiles": []},
              "model": {"name": "torchvision_densenet121"}}
    task_state = {"labels": names, "multi_label": True, "negative_label": "No Finding",
                  "thresholds": [0.5] * len(names), "loss_weights": None}
    notes = [f"{source}: DenseNet121, {outputs} sigmoid outputs ({', '.join(names[:3])}...), 3 channels, "
             "224 px, ImageNet normalisation; decision thresholds 0.5 until a fine-tune chooses them on validation"]
    return Imported("classification", config, task_state, state, provenance, notes)


@register_importer("chexnet")
class CheXNet(ModelImporter):
    description = "arnoweng/CheXNet model.pth.tar (DataParallel DenseNet121, old torchvision names, 14 findings)"

    @classmethod
    def accepts(cls, source: Path) -> bool:
        if not source.is_file() or source.suffix not in (".tar", ".pth", ".pt"):
            return False
        try:
            keys = _state_dict(read_torch_file(source, map_location="meta"))
        except Exception:  # unreadable here: another importer, or the refusal, will say why
            return False
        return any("densenet121.features" in k for k in keys)

    def read(self, source: Path, labels: list[str] | None = None) -> Imported:
        state = torchvision_names(_state_dict(load_tensors(source, "CheXNet checkpoint")))
        if "classifier.weight" not in state or "features.conv0.weight" not in state:
            raise ConfigError("not a CheXNet DenseNet121 checkpoint (no features.conv0 / classifier.0 tensors)",
                              source)
        provenance = {"source": "CheXNet (Rajpurkar et al. 2017), arnoweng/CheXNet re-implementation",
                      "version": source.name, "licence": "MIT (arnoweng/CheXNet); ChestX-ray14 images: NIH terms",
                      "published_metrics": {"ChestX-ray14 mean AUROC": 0.841},
                      "applies_to": "frontal chest X-rays (PA/AP) like NIH ChestX-ray14, 8-bit, any size "
                                    "(resized to 224 px)",
                      "trained_on": "NIH ChestX-ray14 (train split of the re-implementation)"}
        return _classifier_import(source, state, labels, "CheXNet", provenance)


@register_importer("torchvision-densenet121")
class TorchvisionDenseNet(ModelImporter):
    description = "a torchvision densenet121 state dict (features.*, classifier) with 14 outputs or --labels"

    @classmethod
    def accepts(cls, source: Path) -> bool:
        if not source.is_file():
            return False
        try:
            keys = _state_dict(read_torch_file(source, map_location="meta"))
        except Exception:
            return False
        return "features.conv0.weight" in keys and "classifier.weight" in keys

    def read(self, source: Path, labels: list[str] | None = None) -> Imported:
        state = _state_dict(load_tensors(source, "torchvision state dict"))
        state = {k.removeprefix("module."): v for k, v in state.items()}
        provenance = {"source": "torchvision DenseNet121 state dict", "version": source.name,
                      "applies_to": "pictures preprocessed like ImageNet (3 channels, 224 px)"}
        return _classifier_import(source, state, labels, "torchvision DenseNet121", provenance)


@register_importer("txrv")
class TorchXRayVision(ModelImporter):
    """torchxrayvision's DenseNet121 weights. Its files are whole pickled models: they are read only through
    torchxrayvision's own loader (``xrv.models.DenseNet(weights=NAME)``), only inside ``medsight import`` and only
    when asked (``--format txrv``), and the checkpoint written holds weights alone. Its 18 outputs are mapped
    onto ChestX-ray14's findings by name; a finding the model was not trained for (no operating point) is left
    out; its operating-point calibration (threshold -> 0.5) comes along (``operating_points``)."""

    description = "torchxrayvision DenseNet121 weights file (e.g. nih-densenet121-...-best.pt): --format txrv only"

    @classmethod
    def accepts(cls, source: Path) -> bool:
        return False  # it unpickles the file: never chosen without --format txrv

    def read(self, source: Path, labels: list[str] | None = None) -> Imported:
        import logging
        import tempfile

        try:
            import torchxrayvision as xrv
        except ImportError:
            raise ConfigError("reading torchxrayvision weights needs its own loader: pip install torchxrayvision "
                              "(medsight's [txrv] extra)", source) from None
        names = {Path(entry["weights_url"]).name: name for name, entry in xrv.models.model_urls.items()
                 if name.startswith("densenet") and "weights_url" in entry}
        if source.name not in names:
            raise ConfigError(f"not a torchxrayvision DenseNet weights file name (known: {', '.join(sorted(names))})",
                              source)
        weights = names[source.name]
        logging.getLogger(__name__).info(
            f"reading {source.name} with torchxrayvision's own loader ({weights}): it unpickles the file, so "
            "use only files from torchxrayvision's releases; the checkpoint written holds weights alone")
        with tempfile.TemporaryDirectory() as cache:
            (Path(cache) / source.name).symlink_to(source.resolve())
            model = xrv.models.DenseNet(weights=weights, cache_dir=cache)
        targets = list(model.targets)
        points = model.op_threshs.tolist() if getattr(model, "op_threshs", None) is not None else [None] * len(targets)
        wanted = [n for n in (labels or CHEXNET_LABELS) if n in targets and
                  (points[targets.index(n)] is None or points[targets.index(n)] == points[targets.index(n)])]
        rows = [targets.index(n) for n in wanted]
        state = {k: v for k, v in model.state_dict().items() if k != "op_threshs"}
        state["classifier.weight"], state["classifier.bias"] = state["classifier.weight"][rows], \
            state["classifier.bias"][rows]
        operating = [points[r] for r in rows]
        config = {"data": {"image_size": 224, "channels": 1, "normalize": "xrv", "intensity_percentiles": []},
                  "model": {"name": "torchvision_densenet121"}}
        task_state = {"labels": wanted, "multi_label": True, "negative_label": "No Finding",
                      "thresholds": [0.5] * len(wanted), "loss_weights": None,
                      "operating_points": operating if any(p is not None for p in operating) else None}
        provenance = {"source": f"torchxrayvision {weights} (Cohen et al., MIDL 2022)",
                      "version": f"torchxrayvision {getattr(xrv, '__version__', '?')}, {source.name}",
                      "licence": "Apache-2.0 (torchxrayvision); weights: see the training datasets' terms",
                      "applies_to": "frontal chest X-rays, 8-bit, any size (resized to 224 px), 1 channel",
                      "trained_on": weights.split("-")[-1]}
        notes = [f"torchxrayvision {weights}: {len(targets)} outputs -> {len(wanted)} ChestX-ray14 findings by name"
                 f" ({', '.join(n for n in CHEXNET_LABELS if n not in wanted) or 'none'} left out: not trained); "
                 "1 channel, 224 px, values scaled to [-1024, 1024], operating points -> 0.5"]
        return Imported("classification", config, task_state, state, provenance, notes)
