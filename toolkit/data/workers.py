"""A function over many items in loader worker processes, where one item's medsight error does not stop
the rest (data check, fingerprint, the picture cache)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from medsight.errors import unwrap


@dataclass(frozen=True)
class Failed:
    """What ``map_in_workers`` gives for an item whose function raised a medsight error."""

    message: str  # what is wrong
    where: str | None  # the file, when the error named one

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


class _Mapped(torch.utils.data.Dataset):
    """``function(item)`` per item; a medsight error becomes a ``Failed``."""

    def __init__(self, function: Callable, items: Sequence):
        self.function = function
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        try:
            return self.function(self.items[index])
        except Exception as exc:
            known = unwrap(exc)
            if known is None:
                raise
            return Failed(known.message, known.where)


def _as_is(item):
    return item


def map_in_workers(function: Callable, items: Sequence, workers: int = 0):
    """``function(item)`` for each item, in order, computed in ``workers`` loader processes (0: here); an item
    whose function raises a medsight error (an unreadable file...) gives a ``Failed`` instead of stopping."""
    loader = torch.utils.data.DataLoader(_Mapped(function, items), batch_size=None, num_workers=workers,
                                         collate_fn=_as_is)
    return iter(loader)
