"""Settings planned from the data (``medsight data fingerprint``; ``train --plans``), as nnU-Net does.

1. **Fingerprint**: every case of the dataset is read once, as training reads it (same format, same
   orientation), and its task measures it (``Task.fingerprint_case``): voxel size, shape, intensities
   (MRI: non-zero voxels per modality; CT: Hounsfield units over the scan and over the findings), and
   the size of what is to be found (tumour volume, nodule diameter).
2. **Plan** (``Task.plan``), from the fingerprint and a memory budget:

   - target spacing: the median voxel size per axis; for anisotropic data (coarsest axis more than
     3x the finest) the coarse axis takes the 10th percentile of its spacings, but never finer than
     3x the finest (nnU-Net's rule: resampling thin to thick slices loses the thin ones' detail,
     thick to thin invents it);
   - patch: starts from the median case shape at that spacing and shrinks, the axis longest in mm
     first, in steps the network can divide, until ``batch_min`` patches fit the budget;
   - batch: as many patches as fit, at most ``batch_max``, and at most 5% of the dataset's voxels
     per step (nnU-Net's cap: one batch should not be most of the data).

   Memory is estimated, not guessed: the task's network runs forward once on a small probe patch, in
   the planned precision, and every tensor autograd saves for the backward pass is counted
   (``saved_tensors_hooks``). Activations grow linearly with voxels, so the probe's bytes per voxel
   scale to any patch; weights, gradients and AdamW's two moments add 16 bytes per parameter; a
   ``MARGIN`` covers the workspace and allocator slack that no count sees.

``fingerprint(path, ...)`` is the Python API of ``medsight data fingerprint``: the consuming task's config (task
defaults <- profile <- overrides, as ``train`` resolves it) reads the folder, ``measure`` reads every case, the
task plans, and the document is written to a JSON file and returned.

The plans file (JSON) holds the fingerprint summary, the per-case measurements, and ``config``: the
overrides ``train --plans`` applies over the profile and under command-line overrides. The run folder
keeps ``plans.json``: the file's plan, what the command line overrode, and what training chose on
validation afterwards (segmentation post-processing).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn

from medsight.io.checkpoint import parameter_count
from medsight.errors import ConfigError, DataError

log = logging.getLogger(__name__)

ANISOTROPY = 3.0
MARGIN = 1.3
OPTIMIZER_BYTES_PER_PARAMETER = 16  # fp32 weights, gradients, AdamW's two moments
MAX_BATCH_SHARE = 0.05


# -- memory ----------------------------------------------------------------------------------------
def parse_memory(text: str) -> int:
    """'24GB', '24 GiB', '80G', '16000MB' -> bytes (GB and GiB both mean 2**30: GPUs are sold that way)."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([kKmMgGtT]?)(i?[bB])?\s*", str(text))
    if not match:
        raise ConfigError(f"--memory {text!r}: give a size such as 24GB or 80GiB", "command line")
    scale = {"": 2**30, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[match.group(2).lower()]
    return int(float(match.group(1)) * scale)


def device_memory() -> int | None:
    """The current CUDA device's memory in bytes, if there is one."""
    if torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory)
    return None


def activation_bytes_per_voxel(network: nn.Module, probe: torch.Tensor, precision: str = "bf16") -> float:
    """Bytes autograd keeps per input voxel for one sample: ``network`` run forward on ``probe`` (1, C, ...)
    on the CPU in ``precision`` (bf16/fp16 count as 2-byte autocast), every saved tensor counted once."""
    seen: dict[int, int] = {}

    def pack(tensor):
        seen[tensor.data_ptr()] = tensor.numel() * tensor.element_size()
        return tensor

    network = network.train()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.bfloat16}.get(precision)  # fp16 has bf16's sizes; CPU lacks it
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        outputs = network(probe)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    total = sum(seen.values()) + sum(o.numel() * o.element_size() for o in outputs if torch.is_tensor(o))
    return total / math.prod(probe.shape[2:])


def network_memory(task, probe_shape: Sequence[int], precision: str) -> tuple[float, int]:
    """(activation bytes per input voxel, weights + optimizer bytes) of ``task``'s network, probed on a zero
    input of ``probe_shape`` (channels, spatial...)."""
    network = task.export_module(task.build_model())
    probe = torch.zeros(1, *probe_shape)
    return activation_bytes_per_voxel(network, probe, precision), parameter_bytes(network)


def parameter_bytes(network: nn.Module) -> int:
    return parameter_count(network) * OPTIMIZER_BYTES_PER_PARAMETER


def training_bytes(per_voxel: float, fixed: int, patch: Sequence[int], batch: int) -> int:
    return int(MARGIN * (per_voxel * math.prod(patch) * batch) + fixed)


# -- spacing and patch -----------------------------------------------------------------------------
def target_spacing(spacings: np.ndarray) -> list[float]:
    """(cases, 3) voxel sizes -> the target voxel size (see the module docstring)."""
    spacings = np.asarray(spacings, dtype=np.float64)
    target = np.median(spacings, axis=0)
    coarse = int(np.argmax(target))
    finest = float(np.min(np.delete(target, coarse))) if len(target) > 1 else float(target[coarse])
    if target[coarse] > ANISOTROPY * finest:
        target[coarse] = max(float(np.percentile(spacings[:, coarse], 10)), ANISOTROPY * finest)
    return [round(float(s), 4) for s in target]


def resampled_shapes(cases: list[dict]) -> tuple[list[float], np.ndarray]:
    """The target spacing of the cases (``spacing_mm``, ``shape`` each) and every case's shape at it, voxels."""
    spacing = target_spacing([c["spacing_mm"] for c in cases])
    return spacing, np.asarray([np.asarray(c["shape"]) * np.asarray(c["spacing_mm"]) / spacing for c in cases])


def fit_patch(shape: Sequence[float], spacing: Sequence[float], step: Sequence[int], fits,
              minimum: Sequence[int], maximum: Sequence[int] | None = None) -> list[int]:
    """The largest patch (voxels, multiples of ``step``) up to ``shape`` rounded up (or ``maximum``) for which
    ``fits(patch)`` holds, shrinking the axis longest in mm first."""
    patch = [max(int(m), int(math.ceil(s / st) * st)) for s, st, m in zip(shape, step, minimum)]
    if maximum is not None:
        patch = [min(p, int(m // st * st)) for p, m, st in zip(patch, maximum, step)]
    while not fits(patch):
        shrinkable = [i for i in range(len(patch)) if patch[i] - step[i] >= minimum[i]]
        if not shrinkable:
            raise ConfigError(f"no patch of at least {list(minimum)} voxels fits the memory budget: give more "
                              "--memory, or a smaller model", "plans")
        axis = max(shrinkable, key=lambda i: patch[i] * spacing[i])
        patch[axis] -= step[axis]
    return patch


def fit_batch(per_voxel: float, fixed: int, patch: Sequence[int], budget: int, dataset_voxels: float,
              batch_min: int = 2, batch_max: int = 16) -> int:
    fitting = int((budget / MARGIN - fixed / MARGIN) // (per_voxel * math.prod(patch)))
    share = int(MAX_BATCH_SHARE * dataset_voxels // math.prod(patch))
    return max(batch_min, min(batch_max, fitting, max(share, batch_min)))


# -- fingerprint -----------------------------------------------------------------------------------
def summary(values: Sequence[float]) -> dict[str, float]:
    values = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if not len(values):
        return {}
    return {"min": float(values.min()), "p10": float(np.percentile(values, 10)), "median": float(np.median(values)),
            "mean": float(values.mean()), "p90": float(np.percentile(values, 90)), "max": float(values.max())}


def measure(task, source, workers: int = 0, mode: str = "auto") -> dict[str, Any]:
    """Every training and validation case measured once (``task.fingerprint_case``), with progress."""
    from medsight.data.workers import Failed, map_in_workers
    from medsight.core.progress import track

    records = task.records(source, "train") + task.records(source, "val")
    if not records:
        raise DataError("no cases to measure", source.root)
    measured = track(map_in_workers(task.fingerprint_case, records, workers), total=len(records),
                     desc="fingerprint", mode=mode, unit="case")
    cases, failed = [], []
    for record, case in zip(records, measured):
        if isinstance(case, Failed):
            log.info(f"unreadable, left out: {case}")
            failed.append({"error": str(case)})
        else:
            cases.append({"id": str(record.get("id")), **case})
    if not cases:
        raise DataError("no case could be read", source.root)
    spacings = np.asarray([c["spacing_mm"] for c in cases])
    return {"task": task.name, "dataset": str(source.root), "format": source.format_name, "cases": len(cases),
            "unreadable": [c["error"] for c in failed],
            "spacing_mm": {"median": np.median(spacings, axis=0).round(4).tolist(),
                           "p10": np.percentile(spacings, 10, axis=0).round(4).tolist(),
                           "p90": np.percentile(spacings, 90, axis=0).round(4).tolist()},
            "anisotropy": {"median": float(np.median(spacings.max(axis=1) / spacings.min(axis=1)))},
            "shape": {"median": np.median(np.asarray([c["shape"] for c in cases]), axis=0).tolist()},
            **task.summarise_fingerprint(cases),
            "per_case": cases}


def fingerprint(path: str | Path, dataset: str = "auto", *, task: str | None = None, profile: str | None = None,
                overrides: Sequence[str] | Mapping[str, Any] | None = None, memory: str | int | None = None,
                precision: str = "bf16", out: str | Path | None = None, workers: int = 0) -> dict[str, Any]:
    """Measure every training and validation case of the dataset at ``path`` and plan spacing, patch and batch for
    a GPU of ``memory`` bytes (or ``"24GB"``; None: this machine's GPU). The plans document (fingerprint, profile,
    config, memory) is written to ``out`` (default: plans.json in the current folder) and returned.

    ``dataset``: a registered format or ``auto``; ``task``: the task to plan for, when several plan from this
    format; ``profile``: the task profile the plan starts from (default: ``gpu`` where the task has one);
    ``overrides``: ``key=value`` strings or a dict of dotted keys; ``workers``: cases read at once in worker
    processes (0: in this one).
    """
    from medsight.core.config import resolve
    from medsight.core.registry import DATASETS
    from medsight.data.consumers import profile_of, reading_task
    from medsight.data.formats import detect_format
    from medsight.io.writers import output_file

    if precision not in ("bf16", "fp16", "fp32"):
        raise ConfigError(f"precision={precision!r} is not one of bf16, fp16, fp32", "plans")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ConfigError(f"workers must be a whole number of at least 0, got {workers!r}", "plans")
    root = Path(path)
    if not root.exists():
        raise DataError("no such folder", root)
    fmt_class = DATASETS.get(detect_format(root) if dataset == "auto" else dataset)
    task_class = reading_task(fmt_class, task, planning=True)
    if profile is None and "gpu" in task_class.profiles:
        profile = "gpu"
    config = resolve(task_class.config_class, profile=profile_of(task_class, profile), overrides=overrides or ())
    config.task = task_class.name
    budget = memory_budget(memory)
    target = output_file(Path(out if out is not None else "plans.json"))  # a bad out fails before any case is read
    planner = task_class(config)
    found = measure(planner, planner.open_data(root), workers=workers, mode="auto")
    document = {"fingerprint": found, "profile": profile, **planner.plan(found, budget, precision)}
    write(document, target)
    return document


def memory_budget(memory: str | int | None) -> int:
    """Bytes from ``"24GB"`` or a number of bytes; None: this machine's GPU, or one ConfigError without one."""
    if memory is None:
        found = device_memory()
        if found is None:
            raise ConfigError("no GPU here to size the plan for: give the training GPU's memory, e.g. --memory 24GB",
                              "command line")
        return found
    if isinstance(memory, bool) or (isinstance(memory, (int, float)) and memory <= 0):
        raise ConfigError(f"--memory {memory!r}: give a size such as 24GB or 80GiB", "command line")
    budget = int(memory) if isinstance(memory, (int, float)) else parse_memory(memory)
    if budget <= 0:
        raise ConfigError(f"--memory {memory!r}: give a size such as 24GB or 80GiB", "command line")
    return budget


# -- the plans file --------------------------------------------------------------------------------
def write(plans: dict, path: Path) -> Path:
    from medsight.io.writers import write_json

    return write_json(plans, Path(path))


def read(path: Path | str, task: str) -> dict:
    try:
        plans = json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise ConfigError("plans file not found", path) from exc
    except (OSError, ValueError) as exc:
        raise ConfigError(f"not a plans file ({exc})", path) from exc
    if not isinstance(plans, dict) or not isinstance(plans.get("config"), dict):
        raise ConfigError("not a plans file (no 'config' section); make one with medsight data fingerprint", path)
    made_for = plans.get("fingerprint", {}).get("task")
    if made_for and made_for != task:
        raise ConfigError(f"these plans are for the {made_for} task, not {task}", path)
    return plans


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """Nested sections -> ``{"data.patch_size": [...], ...}``: the dotted keys a plan sets (OmegaConf reads and
    writes dotted keys, ``select``/``update``, but does not list them)."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def merge(profile: dict | None, planned: dict) -> dict:
    """The profile with the plan's values over it (both nested dicts; a plan's list replaces the profile's)."""
    return OmegaConf.to_container(OmegaConf.merge(OmegaConf.create(profile or {}), OmegaConf.create(planned)))


def record_in_run(run_dir: Path, plans: dict, source: str, config: dict) -> Path:
    """``<run>/plans.json``: the plan, and for each planned key the value the run uses (an override won)."""
    from medsight.io.writers import write_json

    used = OmegaConf.create(config)
    overridden = {}
    for key, value in flatten(plans["config"]).items():
        chosen = OmegaConf.select(used, key)
        chosen = OmegaConf.to_container(chosen) if OmegaConf.is_config(chosen) else chosen
        if chosen != value:
            overridden[key] = {"planned": value, "used": chosen}
    return write_json({"source": str(source), "config": plans["config"], "overridden": overridden,
                       "fingerprint": {k: v for k, v in plans.get("fingerprint", {}).items() if k != "per_case"},
                       "memory": plans.get("memory")}, Path(run_dir) / "plans.json")


def add_to_run_plans(run_dir: Path, key: str, value: Any) -> None:
    """Record what training chose (e.g. post-processing) in ``<run>/plans.json``, made if absent."""
    from medsight.io.writers import write_json

    path = Path(run_dir) / "plans.json"
    plans = json.loads(path.read_text()) if path.exists() else {}
    if plans.get(key) != value:
        plans[key] = value
        write_json(plans, path)
