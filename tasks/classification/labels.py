"""The label set that turns label names into vectors. Dataset formats of the ``labelled-pictures``
schema give records ``{"image", "names", "id", "group"}`` (``names``: the positive labels) and the
dataset's label names; the task encodes ``names`` into a float vector in the label set's fixed order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
import numpy as np

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


def label_set(metadata: dict, cfg: ClassificationData, where) -> LabelSet:
    """The label set a dataset's metadata implies; ``data.labels`` and ``data.multi_label`` override it."""
    names = list(cfg.labels) if cfg.labels else list(metadata["labels"])
    multi = bool(metadata["multi_label"]) if cfg.multi_label == "auto" else cfg.multi_label == "true"
    if not names:
        raise DataError("no labels found in the dataset", where)
    if not multi and len(names) < 2:
        raise DataError(f"single-label data needs at least two classes, found {len(names)} ({', '.join(names)})",
                        where)
    return LabelSet(tuple(names), multi, cfg.negative_label)
