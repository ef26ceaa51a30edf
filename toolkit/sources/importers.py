"""Model sources: importers that turn a published model into an ordinary medsight checkpoint.

    medsight import SOURCE --out CKPT [--format NAME]

An importer reads one kind of source (a MONAI bundle, a CheXNet ``model.pth.tar``, a torchvision state
dict...) and returns the task, the task config that reproduces the source's own preprocessing and
inference, the task state (label order, modalities), the weights in the task's model, and a provenance
record (source, version, licence, published metrics). After import nothing knows where a model came
from except that record: ``predict``, ``evaluate``, ``export`` and ``train --init-weights`` treat the
checkpoint like any other.

Importers are registered like tasks (``@register_importer`` or the entry-point group
``medsight.sources.importers``). Files are read with ``torch.load(weights_only=True)`` only: a whole pickled
model is refused, never unpickled.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from medsight.errors import CheckpointError, ConfigError, DataError
from medsight.core.registry import Registry

log = logging.getLogger(__name__)

IMPORTERS: Registry = Registry("importer", "medsight.importers")


def register_importer(name: str):
    return IMPORTERS.register(name)


@dataclass
class Imported:
    """What an importer read: everything a medsight checkpoint needs."""

    task: str
    config: dict  # nested overrides of the task's default config
    task_state: dict
    model: dict[str, torch.Tensor]  # keyed as the task's model names its tensors
    provenance: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what was adapted, for the user


class ModelImporter:
    name: ClassVar[str]
    description: ClassVar[str] = ""

    @classmethod
    def accepts(cls, source: Path) -> bool:
        """Whether ``source`` looks like this importer's kind (cheap: names and headers)."""
        return False

    def read(self, source: Path, labels: list[str] | None = None) -> Imported:
        raise NotImplementedError


def load_tensors(path, what: str, where: Path | None = None) -> Any:
    """A published model's weights file, read by the one guarded reader (``checkpoint.read_torch_file``); a whole
    pickled model is refused, pointing at the source's trusted loader. ``path``: a file or a file-like object
    (``where`` then names it in errors)."""
    from medsight.io.checkpoint import read_torch_file

    if isinstance(path, Path) and not path.exists():
        raise DataError("file not found", path)
    return read_torch_file(path, what, hint=" (or use the source's trusted loader: --format txrv for "
                           "torchxrayvision)", where=where)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    if path.is_dir():
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(child.relative_to(path).as_posix().encode())
            digest.update(child.read_bytes())
        return digest.hexdigest()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def choose_importer(source: Path, requested: str | None) -> type[ModelImporter]:
    if requested:
        return IMPORTERS.get(requested)
    for name in IMPORTERS.names():
        if IMPORTERS.get(name).accepts(source):
            return IMPORTERS.get(name)
    raise DataError(f"no importer recognises this file or folder (known: {', '.join(IMPORTERS.names())}); give "
                    "--format, or see README 'Use a published model' for the layouts read", source)


def import_model(source: str, out: Path, requested: str | None = None, labels: list[str] | None = None) -> dict:
    """Read ``source`` (a path, or ``monai:NAME`` to download a MONAI bundle) and write a checkpoint to ``out``."""
    from medsight.io import checkpoint
    from medsight.core.config import resolve, to_dict
    from medsight.core.registry import TASKS

    if source.startswith("monai:"):
        from medsight.sources.bundles import download_bundle

        path = download_bundle(source.removeprefix("monai:"), out.parent)
    else:
        path = Path(source)
    if not path.exists():
        raise DataError("file or folder not found", path)
    importer = choose_importer(path, requested)
    imported = importer().read(path, labels=labels)
    task_class = TASKS.get(imported.task)
    config = resolve(task_class.config_class, base=imported.config)
    task = task_class(config)
    task.load_state_dict(imported.task_state)
    model = task.build_model()
    try:
        model.load_state_dict(imported.model)
    except RuntimeError as exc:
        raise CheckpointError(f"the file's tensors do not fit the {imported.task} model the source describes "
                              f"({str(exc).splitlines()[0][:200]})", path) from None
    provenance = {"importer": importer.name, "imported_from": str(path), "sha256": sha256_of(path),
                  "imported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  **imported.provenance}
    state = {"task": imported.task, "config": to_dict(config), "task_state": task.state_dict(),
             "model": model.state_dict(), "ema": None, "epoch": 0, "global_step": 0, "provenance": provenance,
             "trained_on": {"source": provenance.get("trained_on", "the source's own training data"),
                            "synthetic": False}}
    checkpoint.save(state, out)
    return {"checkpoint": out, "provenance": provenance, "notes": imported.notes, "task": imported.task}


def require(condition: bool, message: str, where) -> None:
    """ConfigError naming the source when an imported file does not have the layout its importer reads."""
    if not condition:
        raise ConfigError(message, where)
