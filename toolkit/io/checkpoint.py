"""Checkpoints: plain dicts of tensors and Python values, written atomically, read with
``torch.load(..., weights_only=True)`` so that loading one never runs code.

A training run's checkpoint is ``Trainer.state_dict()``: ``model``, ``optimizer``, ``scheduler``, ``scaler``,
``ema``, ``progress`` (completed epochs, the position in the epoch, optimizer steps, best metric, history;
``epoch``, ``step_in_epoch`` and ``global_step`` also at the top, as torchvision's references keep them),
``rng`` (python, numpy, torch, CUDA), ``config``, ``task`` and ``task_state``, ``structure`` (a pruned
network's, else none), ``best``, provenance (``data``, ``trained_on``, ``started_from``), and ``format`` and
``medsight_version``, which ``save`` adds.

Formats. ``medsight-checkpoint/2`` keeps a pruned network's structure in ``structure``; format 1 (before
2026-12) kept it in ``task_state["pruned"]`` and wrote a ``sampler`` entry nobody read. ``load`` reads both
and gives format 2 (``upgrade``). Every file any command reads as weights goes through ``read_torch_file``:
one guard, one message per kind of bad file.
"""

from __future__ import annotations

import io
import math
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

FORMAT = "medsight-checkpoint/2"
#: formats ``load`` reads (older ones are upgraded in memory)
FORMATS = ("medsight-checkpoint/1", FORMAT)


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

    def validated(self, value: float | None, monitor) -> bool:
        """Count a validation of the monitored metric (``monitor.better``); True when it is the best yet."""
        if value is not None and math.isfinite(value) and monitor.better(value, self.best_value):
            self.best_value, self.best_epoch, self.bad_validations = float(value), self.epoch, 0
            return True
        self.bad_validations += 1
        return False


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


def read_torch_file(path, what: str = "checkpoint", hint: str = "", map_location: str = "cpu", digest=None,
                    where: str | Path | None = None) -> Any:
    """``torch.load(path, weights_only=True)``, or one line saying what is wrong with the file: not found, empty,
    text, another kind of file, damaged or truncated, or refused because loading it would run code.

    ``path``: a file, or a file-like object (a member of a bundle's zip; ``where`` names it in errors). ``hint``:
    what to do instead, added to the refusal (an importer's trusted loader). ``digest`` (a ``hashlib`` object):
    also fed the file's bytes, so a file that is read and hashed is read once."""
    if isinstance(path, (str, Path)):
        path = Path(path)
        where = path if where is None else where
        if not path.is_file():
            raise CheckpointError(f"{what} not found", where)
        refuse_unless_torch_file(path, what)
        if digest is not None:
            data = path.read_bytes()
            digest.update(data)
            path = io.BytesIO(data)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).splitlines()[0][:160] if str(exc) else "it needs arbitrary code to unpickle"
        raise CheckpointError(
            f"refused: loading this {what} would need arbitrary unpickling ({reason}): medsight reads tensors and "
            f"plain values only; a whole pickled model (torch.save(model)) can be re-saved in its own environment "
            f"with torch.save(model.state_dict(), PATH){hint}", where) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"damaged or truncated {what} ({str(exc).splitlines()[0][:160]})", where) from None


def in_run(run: str | Path, name: str = "last.pt") -> Path:
    """Where a run folder keeps a checkpoint (``RUN/checkpoints/NAME``)."""
    return Path(run) / "checkpoints" / name


def resolve_path(path: str | Path) -> Path:
    """The checkpoint a path names: a file as it is; a run folder's ``checkpoints/last.pt`` (or ``last.pt``)."""
    path = Path(path)
    if path.is_dir():
        for candidate in (in_run(path), path / "last.pt"):
            if candidate.is_file():
                return candidate
        raise CheckpointError("no checkpoints/last.pt in this run folder", path)
    return path


def run_folder(path: str | Path) -> Path:
    """The run folder a checkpoint belongs to (``RUN/checkpoints/x.pt`` -> ``RUN``; a run folder itself)."""
    path = Path(path)
    if path.is_dir():
        return path
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def best_or_last(run: str | Path) -> Path:
    """A run folder's best checkpoint (chosen on validation), else its last."""
    return in_run(run, "best.pt") if in_run(run, "best.pt").is_file() else in_run(run)


def is_checkpoint(state: Any) -> bool:
    return isinstance(state, Mapping) and state.get("format") in FORMATS


def load(path: str | Path, task: str | None = None) -> dict[str, Any]:
    """Load a medsight checkpoint safely (any format in ``FORMATS``, as format 2); ``task`` checks which task
    made it."""
    path = resolve_path(path)
    state = read_torch_file(path, "checkpoint")
    if not is_checkpoint(state):
        raise CheckpointError("not a medsight checkpoint (no format marker)", path)
    if task is not None and state.get("task") != task:
        raise CheckpointError(f"made for task {state.get('task')!r}, not {task!r}", path)
    return upgrade(dict(state))


def upgrade(state: dict[str, Any]) -> dict[str, Any]:
    """A format-1 checkpoint as format 2: the structure out of the task state, the unread sampler entry gone."""
    if state.get("format") == "medsight-checkpoint/1":
        task_state = dict(state.get("task_state") or {})
        structure = task_state.pop("pruned", None)
        state.update(task_state=task_state, format=FORMAT)
        state.pop("sampler", None)
        if structure and not state.get("structure"):
            state["structure"] = structure
    return state


def parameter_count(model: torch.nn.Module) -> int:
    """Number of values in a model's parameters."""
    return sum(p.numel() for p in model.parameters())


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
