"""What ``Model.predict`` takes, made into the records a task's inference transforms read.

An input is a path (a file, a case folder, a folder of files: the task's ``input_records`` reads it as the
command line does), an image in memory (a NumPy array with ``affine=`` or ``spacing_mm=``, a MONAI
``MetaTensor``, a nibabel or SimpleITK image, a pydicom dataset or a list of them for a series), or, for a
multi-modal case, a dict ``{role: image}`` of any of these. In-memory images are converted once by the file
readers' own code (``medsight.io.memory``) and read by name, so every later step is the one files take.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medsight.errors import DataError, MedsightError
from medsight.io import memory
from medsight.task import Task


@dataclass
class Prepared:
    """Records for the inputs, the inputs that could not be read (one line each), and the in-memory images
    registered for them (``names``: record id -> names, to release when its result is gone)."""

    records: list[dict] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    names: dict[str, list[str]] = field(default_factory=dict)

    def release(self, keep: set[str] = frozenset()) -> None:
        """Forget the in-memory images of every record but those in ``keep``."""
        memory.release([n for case, names in self.names.items() if case not in keep for n in names])


def is_path(value: Any) -> bool:
    return isinstance(value, (str, Path))


def as_list(inputs: Any) -> tuple[list, bool]:
    """(inputs as a list, whether one input was given rather than a list). A list of pydicom datasets is one
    input (a series), not several."""
    if isinstance(inputs, (list, tuple)) and not _is_series(inputs):
        return list(inputs), False
    return [inputs], True


def _is_series(value: Any) -> bool:
    import pydicom

    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, pydicom.Dataset) for v in value)


def prepare(task: Task, inputs: Sequence[Any], ids: Sequence[str] | None = None,
            images: Mapping[str, Any] | None = None, geometry: Mapping[str, Any] | None = None,
            strict: bool = False) -> Prepared:
    """Records for ``inputs`` (and ``images``: one case of ``{role: path}``, the command line's ``--image``).
    ``ids`` name the inputs in outputs (default: the file names, ``input-N`` for in-memory images);
    ``geometry``: ``affine`` / ``spacing_mm`` of plain arrays; ``strict``: raise the first failure instead of
    listing it (one input, given alone)."""
    prepared = Prepared()
    if ids is not None and len(ids) != len(inputs):
        raise DataError(f"{len(ids)} ids for {len(inputs)} inputs", "ids")
    for index, item in enumerate(inputs):
        name = ids[index] if ids is not None else None
        try:
            prepared.records.extend(_records(task, item, name, index, dict(geometry or {}), prepared))
        except MedsightError as exc:
            if strict:
                prepared.release()
                raise
            prepared.failures.append(str(exc))
    if images:
        try:
            prepared.records.extend(task.input_records(None, images={k: str(v) for k, v in images.items()}))
        except MedsightError as exc:
            if strict:
                raise
            prepared.failures.append(str(exc))
    return prepared


def _records(task: Task, item: Any, case_id: str | None, index: int, geometry: dict, prepared: Prepared) -> list:
    if is_path(item):
        records = task.input_records(str(item))
        if case_id is not None:
            if len(records) != 1:
                raise DataError(f"an id names one case; this input holds {len(records)}", str(item))
            records[0]["id"] = case_id
        return records
    if isinstance(item, Mapping) and all(is_path(v) for v in item.values()):
        records = task.input_records(None, images={str(k): str(v) for k, v in item.items()})
        if case_id is not None:
            records[0]["id"] = case_id
        return records
    case_id = case_id or f"input-{index + 1}"
    if isinstance(item, Mapping):
        names = {str(role): str(v) if is_path(v) else _register(task, v, f"{case_id} {role}", geometry, prepared,
                                                                  case_id)
                 for role, v in item.items()}
        return [task.input_record(names, case_id)]
    return [task.input_record(_register(task, item, case_id, geometry, prepared, case_id), case_id)]


def _register(task: Task, image: Any, label: str, geometry: dict, prepared: Prepared, case_id: str) -> str:
    name = memory.register(image, task.input_kind, affine=geometry.get("affine"),
                           spacing_mm=geometry.get("spacing_mm"), label=label)
    prepared.names.setdefault(case_id, []).append(name)
    return name
