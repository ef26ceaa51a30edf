"""Which dataset adapter reads a ``--data`` path, and the label set that turns its label names into
vectors. Adapters give records ``{"image", "names", "id"}`` (``names``: the positive labels);
the task encodes ``names`` into a float vector in the label set's fixed order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medsight.datasets import chestxray14, csv_table, folders
from medsight.errors import DataError
from medsight.tasks.classification.config import ClassificationData


@dataclass(frozen=True)
class LabelSet:
    """Label names in output order; multi-label (sigmoid per label) or single-label (softmax)."""

    names: tuple[str, ...]
    multi_label: bool
    #: what a multi-label prediction with no positive label is called (``No Finding``)
    negative: str = "No Finding"

    def encode(self, positive: Sequence[str], where: str) -> np.ndarray:
        """(K,) float32: 1 for each name in ``positive``; single-label: exactly one."""
        unknown = [n for n in positive if n not in self.names]
        if unknown:
            raise DataError(f"label {unknown[0]!r} is not one of the model's labels ({', '.join(self.names)})",
                            where)
        if not self.multi_label and len(positive) != 1:
            raise DataError(f"single-label data needs exactly one label per image, got {len(positive)} "
                            f"({'|'.join(positive) or 'none'}); set data.multi_label=true", where)
        return np.asarray([name in positive for name in self.names], dtype=np.float32)

    def to_state(self) -> dict:
        return {"labels": list(self.names), "multi_label": self.multi_label, "negative_label": self.negative}

    @classmethod
    def from_state(cls, state: dict) -> LabelSet:
        return cls(tuple(state["labels"]), bool(state["multi_label"]), state.get("negative_label", "No Finding"))


def resolve_format(data: Path, requested: str) -> str:
    """The adapter for ``data``: as configured, or guessed from what the path holds."""
    if requested != "auto":
        return requested
    data = Path(data)
    if data.is_file() and data.suffix.lower() == ".csv":
        return "csv"
    if data.is_dir() and any((data / name).is_file() for name in chestxray14.LABEL_FILES):
        return "chestxray14"
    if data.is_dir():
        return "folders"
    raise DataError("no such dataset folder or CSV file", data)


def csv_columns(cfg: ClassificationData) -> csv_table.CsvColumns:
    return csv_table.CsvColumns(path=cfg.path_column, labels=tuple(cfg.label_columns), separator=cfg.label_separator,
                                negative=cfg.negative_label, split=cfg.split_column, group=cfg.group_column,
                                group_pattern=cfg.group_pattern)


def raw_records(data: Path, split: str, cfg: ClassificationData) -> list[dict]:
    """Records ``{"image", "names", "id", "group"}`` of one split of a dataset in any supported format; the
    group is the patient where the dataset names one (else the image)."""
    fmt = resolve_format(data, cfg.format)
    own_val = cfg.val_source == "dataset"
    if fmt == "chestxray14":  # validation always comes out of train_val by patient
        splits = ("train", "val", "test") if split == "all" else (split,)
        found = [r for part in splits
                 for r in chestxray14.records(data, part, cfg.val_fraction, cfg.split_seed, cfg.views or None)]
        return [{"image": r["image"], "id": r["id"], "group": str(r["patient"]),
                 "names": tuple(n for n, on in zip(chestxray14.FINDINGS, r["label"]) if on)} for r in found]
    if fmt == "folders":
        return [{"image": r["image"], "id": r["id"], "names": (r["class"],), "group": r["group"]}
                for r in folders.records(data, split, cfg.val_fraction, cfg.split_seed, cfg.group_pattern, own_val)]
    return csv_table.records(data, split, csv_columns(cfg), cfg.val_fraction, cfg.split_seed, own_val)


def discover_labels(data: Path, cfg: ClassificationData) -> LabelSet:
    """The label set a dataset implies (``data.labels`` and ``data.multi_label`` override it)."""
    fmt = resolve_format(data, cfg.format)
    if fmt == "chestxray14":
        names, multi = list(chestxray14.FINDINGS), True
    elif fmt == "folders":
        names, multi = folders.class_names(data), False
    else:
        columns = csv_columns(cfg)
        rows = csv_table.read_table(csv_table.find_csv(data), columns)
        names = csv_table.label_names(rows, columns)
        multi = not columns.one_column or any(len(row.names) != 1 for row in rows)
    if cfg.labels:
        names = list(cfg.labels)
    if cfg.multi_label != "auto":
        multi = cfg.multi_label == "true"
    if not names:
        raise DataError("no labels found in the dataset", data)
    if not multi and len(names) < 2:
        raise DataError(f"single-label data needs at least two classes, found {len(names)} ({', '.join(names)})",
                        data)
    return LabelSet(tuple(names), multi, cfg.negative_label)
