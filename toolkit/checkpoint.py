"""Checkpoints: plain dicts of tensors and Python values, written atomically, read with
``torch.load(..., weights_only=True)`` so that loading one never runs code.

Contents: ``model``, ``optimizer``, ``scheduler``, ``scaler``, ``ema``, ``epoch`` (completed
epochs), ``step_in_epoch`` and ``global_step``, ``rng`` (python, numpy, torch, CUDA), ``sampler``
position, ``config``, ``task`` and ``task_state``, ``best`` metric, ``medsight_version``.
"""

from __future__ import annotations

import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

import medsight
from medsight.errors import CheckpointError
from medsight.io.writers import atomic_path

FORMAT = "medsight-checkpoint/1"


def save(state: dict[str, Any], path: str | Path) -> Path:
    """Write to a temporary file beside ``path``, fsync, rename: a kill at any moment leaves the
    previous checkpoint intact."""
    state = {"format": FORMAT, "medsight_version": medsight.__version__, **state}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load(path: str | Path, task: str | None = None) -> dict[str, Any]:
    """Load a medsight checkpoint safely; ``task`` checks which task made it."""
    path = Path(path)
    if path.is_dir():
        for candidate in (path / "checkpoints" / "last.pt", path / "last.pt"):
            if candidate.is_file():
                path = candidate
                break
        else:
            raise CheckpointError("no checkpoints/last.pt in this run folder", path)
    if not path.is_file():
        raise CheckpointError("checkpoint not found", path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else "it needs arbitrary code to unpickle"
        raise CheckpointError(
            f"refused: loading this file would need arbitrary unpickling ({reason[:160]}); "
            "medsight checkpoints hold only tensors and plain values",
            path,
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"damaged or truncated checkpoint ({str(exc).splitlines()[0][:160]})", path) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError("not a medsight checkpoint (no format marker)", path)
    if task is not None and state.get("task") != task:
        raise CheckpointError(f"made for task {state.get('task')!r}, not {task!r}", path)
    return state


def rng_state() -> dict[str, Any]:
    """Every global RNG, in types ``weights_only`` loading accepts (no numpy arrays)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_tuples(state["python"]))
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(value):
    """``random.setstate`` wants tuples; a round trip through some serialisers gives lists."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, tuple):
        return tuple(_tuples(v) for v in value)
    return value


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a medsight checkpoint, a plain state dict, or a ``{"state_dict"|"model": ...}``
    wrapper, loaded safely (``weights_only``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("weights file not found", path)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"refused: loading this file would need arbitrary unpickling ({str(exc)[:120]})",
                              path) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"damaged or unreadable weights ({str(exc).splitlines()[0][:160]})", path) from None
    for key in ("model", "state_dict"):
        if isinstance(raw, dict) and isinstance(raw.get(key), dict):
            raw = raw[key]
            break
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise CheckpointError("not a state dict (name -> tensor)", path)
    return {k.removeprefix("module."): v for k, v in raw.items()}


def _adapt_input_channels(source: torch.Tensor, target_shape: torch.Size) -> torch.Tensor | None:
    """A first-convolution kernel for another number of input channels: RGB -> gray sums the three
    kernels (gray = R = G = B), 1 -> N repeats and divides, so responses keep their scale."""
    if source.dim() < 3 or source.shape[0] != target_shape[0] or source.shape[2:] != target_shape[2:]:
        return None
    have, want = source.shape[1], target_shape[1]
    if want == 1:
        return source.sum(dim=1, keepdim=True)
    if have == 1:
        return source.repeat(1, want, *([1] * (source.dim() - 2))) / want
    return None


def load_initial_weights(model: torch.nn.Module, path: str | Path) -> list[str]:
    """Start ``model`` from local weights: fitting tensors load, a first convolution made for another
    number of input channels is adapted, other shape mismatches (e.g. a head for other classes) are
    skipped. Returns report lines: what loaded, what was adapted, skipped, missing or unexpected."""
    state = read_weights(path)
    own = model.state_dict()
    fitting, adapted, skipped = {}, [], []
    for key, value in state.items():
        if key not in own:
            continue
        if own[key].shape == value.shape:
            fitting[key] = value
        elif (converted := _adapt_input_channels(value, own[key].shape)) is not None:
            fitting[key] = converted
            adapted.append(f"{key} {tuple(value.shape)} -> {tuple(own[key].shape)}")
        else:
            skipped.append(f"{key} {tuple(value.shape)} != {tuple(own[key].shape)}")
    result = model.load_state_dict(fitting, strict=False)
    report = [f"initial weights {path}: {len(fitting)} of {len(own)} tensors loaded"]
    if adapted:
        report.append("  adapted input channels: " + "; ".join(adapted))
    if skipped:
        report.append("  skipped (shape differs): " + "; ".join(skipped[:6]) + (" ..." if len(skipped) > 6 else ""))
    if result.missing_keys:
        report.append(f"  missing (left as initialised): {len(result.missing_keys)}, e.g. {result.missing_keys[0]}")
    unexpected = [k for k in state if k not in own]
    if unexpected:
        report.append(f"  unexpected (ignored): {len(unexpected)}, e.g. {unexpected[0]}")
    return report
