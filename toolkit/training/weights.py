"""Starting weights: the one loader a training run uses, once, when it starts (``--init-weights PATH``).

Evaluate, predict, export and resume never read starting weights: a checkpoint holds the trained
weights whole. The loader reads any local state dict safely (``torch.load(weights_only=True)``):

- a medsight checkpoint (its EMA weights when the run kept them, as ``predict`` uses), a plain state
  dict, or a ``{"state_dict": ...}`` / ``{"model": ...}`` wrapper; DDP's ``module.`` and
  ``torch.compile``'s ``_orig_mod.`` prefixes go;
- names are aligned when the file's and the model's differ by a leading component (a bare RetinaNet
  network saved without the detector's ``network.``, or a wrapper's ``model.``);
- a first convolution made for another number of input channels is adapted (RGB -> gray: the three
  kernels summed; 1 -> N: repeated and divided), so responses keep their scale;
- tensors whose shapes differ otherwise (a head for another label set) are skipped and reported.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from medsight.io import checkpoint
from medsight.errors import CheckpointError


@dataclass
class WeightsReport:
    """What loading starting weights did, tensor by tensor."""

    source: str
    sha256: str = ""
    loaded: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    #: what the task's adaptation did (modalities or labels mapped by role or name)
    notes: list[str] = field(default_factory=list)
    #: the source checkpoint's provenance, when it was a medsight checkpoint (an imported published model)
    provenance: dict | None = None

    def lines(self) -> list[str]:
        total = len(self.loaded) + len(self.adapted) + len(self.missing)
        lines = [f"starting weights {self.source}: {len(self.loaded) + len(self.adapted)} of {total} model "
                 "tensors loaded"]
        lines += [f"  {note}" for note in self.notes]
        for label, names in (("adapted input channels", self.adapted), ("skipped (shape differs)", self.skipped),
                             ("missing (left as initialised)", self.missing),
                             ("unexpected (ignored)", self.unexpected)):
            if names:
                shown = "; ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
                lines.append(f"  {len(names)} {label}: {shown}")
        return lines

    def to_dict(self) -> dict:
        """What a checkpoint records about where its run started (plain values only)."""
        return {"path": self.source, "sha256": self.sha256, "loaded": len(self.loaded), "adapted": self.adapted,
                "skipped": self.skipped, "missing": len(self.missing), "unexpected": len(self.unexpected),
                "notes": self.notes, "provenance": self.provenance,
                "pretrained": self.loaded + [entry.split(" ", 1)[0] for entry in self.adapted]}


@dataclass
class StartingWeights:
    """A local weights file, read once (``read_weights``): its tensors keyed as the model that saved them named
    them, its SHA-256, and what a medsight checkpoint carries besides (``task``, ``task_state``, ``config``,
    ``provenance``, ``structure``; empty for another file)."""

    path: Path
    tensors: dict[str, torch.Tensor]
    sha256: str
    facts: dict = field(default_factory=dict)

    def inherited_settings(self, task_class) -> dict | None:
        """The architecture and input settings of a medsight checkpoint of this task
        (``Task.inherited_from_starting_weights``): a run started from it builds the same network."""
        if self.facts.get("task") != task_class.name:
            return None
        config, picked = self.facts.get("config") or {}, {}
        for key in task_class.inherited_from_starting_weights:
            section, _, name = key.partition(".")
            if section in config and (not name or name in config[section]):
                picked.setdefault(section, {}).update(config[section] if not name else {name: config[section][name]})
        picked.get("model", {}).pop("init_weights", None)
        return picked


def read_weights(path: str | Path) -> StartingWeights:
    """Read a local weights file once, safely: a medsight checkpoint (its EMA weights when the run kept them), a
    plain state dict, or a ``{"state_dict": ...}`` / ``{"model": ...}`` wrapper."""
    path = Path(path)
    digest = hashlib.sha256()
    raw = checkpoint.read_torch_file(path, "weights file", digest=digest)
    facts: dict = {}
    if checkpoint.is_checkpoint(raw):
        raw = checkpoint.upgrade(dict(raw))
        facts = {key: raw.get(key) for key in ("task", "task_state", "config", "provenance", "structure")}
        raw = checkpoint.model_weights(raw)
    for key in ("model", "state_dict"):
        if isinstance(raw, Mapping) and isinstance(raw.get(key), Mapping):
            raw = raw[key]
            break
    if not isinstance(raw, Mapping) or not any(isinstance(v, torch.Tensor) for v in raw.values()):
        raise CheckpointError("holds no state dict (a mapping of parameter names to tensors)", path)
    tensors = {}
    for key, value in raw.items():
        if isinstance(value, torch.Tensor):
            for prefix in ("module.", "_orig_mod."):
                key = key.removeprefix(prefix)
            tensors[key] = value
    return StartingWeights(path, tensors, digest.hexdigest(), facts)


def align_names(source: dict[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``source`` renamed by the one leading-component change (none, strip ``X.``, add ``X.``) that makes
    the most of its names the model's own."""

    def renamed(strip: str = "", add: str = "") -> dict[str, torch.Tensor]:
        return {add + key.removeprefix(strip): value for key, value in source.items()
                if not strip or key.startswith(strip)}

    candidates = [renamed()]
    candidates += [renamed(strip=f"{head}.") for head in {k.split(".", 1)[0] for k in source if "." in k}]
    candidates += [renamed(add=f"{head}.") for head in {k.split(".", 1)[0] for k in own if "." in k}]
    return max(candidates, key=lambda named: sum(key in own for key in named))


def adapt_input_channels(source: torch.Tensor, target_shape: torch.Size) -> torch.Tensor | None:
    """A convolution kernel for another number of input channels: to 1 channel the kernels are summed
    (a gray picture copied into R, G and B gives conv(w_R + w_G + w_B)); from 1 channel it is repeated
    and divided, so responses keep their scale. None when the shapes differ otherwise."""
    if source.dim() < 3 or source.shape[0] != target_shape[0] or source.shape[2:] != target_shape[2:]:
        return None
    have, want = source.shape[1], target_shape[1]
    if want == 1:
        return source.sum(dim=1, keepdim=True)
    if have == 1:
        return source.repeat(1, want, *([1] * (source.dim() - 2))) / want
    return None


def load_initial_weights(model: nn.Module, weights: StartingWeights | str | Path, adapt=None) -> WeightsReport:
    """Load what fits of starting weights (read by ``read_weights``, or a path read now) into ``model``; raise
    when nothing fits.

    ``adapt(tensors, facts, own) -> (tensors, notes)``: the task's own adaptation (input channels by
    modality role, head rows by label name), applied before the generic matching."""
    if not isinstance(weights, StartingWeights):
        weights = read_weights(weights)
    path, facts = weights.path, weights.facts
    own = model.state_dict()
    source = align_names(weights.tensors, own)
    notes: list[str] = []
    if adapt is not None:
        source, notes = adapt(source, facts, own)
    report = WeightsReport(str(path), sha256=weights.sha256, notes=list(notes), provenance=facts.get("provenance"))
    chosen: dict[str, torch.Tensor] = {}
    for key, value in source.items():
        if key not in own:
            report.unexpected.append(key)
        elif value.shape == own[key].shape:
            chosen[key] = value
            report.loaded.append(key)
        elif (converted := adapt_input_channels(value, own[key].shape)) is not None:
            chosen[key] = converted
            report.adapted.append(f"{key} {tuple(value.shape)} -> {tuple(own[key].shape)}")
        else:
            report.skipped.append(f"{key} {tuple(value.shape)} vs {tuple(own[key].shape)}")
    report.missing = [key for key in own if key not in chosen]
    if not chosen:
        raise CheckpointError(f"no tensor fits the model (file keys like {', '.join(list(source)[:3])}; model keys "
                              f"like {', '.join(list(own)[:3])})", path)
    model.load_state_dict(chosen, strict=False)
    return report
