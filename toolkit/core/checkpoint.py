"""Checkpoints: plain dicts of tensors and Python values, written atomically, read with
``torch.load(..., weights_only=True)`` so that loading one never runs code.

Contents: ``model``, ``optimizer``, ``scheduler``, ``scaler``, ``ema``, ``epoch`` (completed
epochs), ``step_in_epoch`` and ``global_step``, ``rng`` (python, numpy, torch, CUDA), ``sampler``
position, ``config``, ``task`` and ``task_state``, ``best`` metric, ``medsight_version``.
"""

from __future__ import annotations

import io
import pickle
import random
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from medsight.core.version import __version__
from medsight.errors import CheckpointError
from medsight.io.writers import atomic_path

FORMAT = "medsight-checkpoint/1"


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint."""

    epoch: int = 0  # completed epochs
    step_in_epoch: int = 0  # batches consumed in the current epoch (mid-epoch checkpoints)
    global_step: int = 0  # optimizer steps
    best_value: float | None = None
    best_epoch: int | None = None
    bad_validations: int = 0
    skipped_batches: int = 0
    history: list = field(default_factory=list)


def save(state: dict[str, Any], path: str | Path) -> Path:
    """Write to a temporary file beside ``path``, fsync, rename: a kill at any moment leaves the
    previous checkpoint intact."""
    state = {"format": FORMAT, "medsight_version": __version__, **state}
    buffer = io.BytesIO()  # serialised in memory: a full disk is then a Python OSError, never a native abort
    torch.save(state, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())
    return Path(path)


def file_kind(path: Path) -> str:
    """What a would-be checkpoint file is, from its first bytes: ``zip`` (PyTorch's format), ``pickle`` (the
    legacy format), ``text``, ``empty`` or ``other``: so a text file or random bytes are not called pickles."""
    with open(path, "rb") as handle:
        head = handle.read(512)
    if not head:
        return "empty"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[:1] == b"\x80":
        return "pickle"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "other"
    return "text" if all(ch.isprintable() or ch in "\r\n\t" for ch in text) else "other"


def refuse_unless_torch_file(path: Path, what: str = "checkpoint") -> None:
    """CheckpointError naming what the file is, unless it is a PyTorch zip or pickle file."""
    kind = file_kind(path)
    if kind == "empty":
        raise CheckpointError(f"an empty file, not a {what}", path)
    if kind == "text":
        raise CheckpointError(f"a text file, not a {what}", path)
    if kind == "other":
        raise CheckpointError(f"not a {what}: neither a PyTorch file nor a pickle (damaged, or another kind of file)",
                              path)


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
    refuse_unless_torch_file(path)
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


def ema_weights(state: dict[str, Any]) -> dict[str, Any] | None:
    """The averaged model's weights a checkpoint kept (``trainer.ema_decay``), as a model state dict."""
    ema = state.get("ema")
    if not isinstance(ema, Mapping) or not ema:
        return None
    return {k.removeprefix("module."): v for k, v in ema.items() if k.startswith("module.")}


def model_weights(state: dict[str, Any]) -> dict[str, Any]:
    """The weights inference uses: the averaged model's when the run kept one, else the model's."""
    return ema_weights(state) or state["model"]


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


def run_state(trainer) -> dict[str, Any]:
    """Everything a training run's checkpoint holds (see the module docstring)."""
    from medsight.core.config import to_dict  # config imports this module

    self = trainer
    return {
        "task": self.task.name,
        "config": to_dict(self.config),
        "data": str(self.data),
        "data_format": self.data_format,
        "trained_on": self.trained_on,
        "started_from": self.started_from,
        "task_state": self.task.state_dict(),
        "model": self.raw_model.state_dict(),
        "optimizer": self.optimizer.state_dict(),
        "scheduler": self.scheduler.state_dict(),
        "scaler": self.runtime.scaler.state_dict() if self.runtime.scaler is not None else None,
        "ema": self.ema.state_dict() if self.ema is not None else None,
        "progress": self.progress.__dict__.copy(),
        "epoch": self.progress.epoch,
        "step_in_epoch": self.progress.step_in_epoch,
        "global_step": self.progress.global_step,
        "sampler": {"seed": self.cfg.seed, "epoch": self.progress.epoch, "batches_done": self.progress.step_in_epoch,
                    "world_size": self.runtime.world_size},
        "best": {"metric": self.task.monitor.metric, "mode": self.task.monitor.mode,
                 "value": self.progress.best_value, "epoch": self.progress.best_epoch},
        "rng": rng_state(),
    }
