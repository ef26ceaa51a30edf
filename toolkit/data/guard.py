"""A record whose files are bad becomes a marker instead of stopping everything, through MONAI's public API.

``GuardedCompose`` is a MONAI ``Compose`` whose ``__call__`` (the method ``Dataset``, ``CacheDataset`` and
``PersistentDataset`` call, with ``start``/``end`` for the cached prefix and the random rest) turns a failure
into ``{FAILED: message, "id": ...}`` and passes such a marker on untouched. No private method of MONAI is
overridden, so ``data.on_error=skip`` and batch ``predict`` keep working across MONAI releases.

- ``catch="medsight"`` (training with ``data.on_error=skip``): only medsight's own errors (an unreadable
  file, NaN, a blank image, a label map off its grid) become markers; anything else is a bug and is raised.
- ``catch="all"`` (predict): a damaged file can fail deep inside any library's transform; the case fails,
  named, with the first line of the error (the traceback kept for ``--debug``), and the others go on.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from typing import Any

from monai.transforms import Compose

from medsight.errors import unwrap

#: the key of the marker a failed record becomes
FAILED = "__failed__"


def is_failed(item: Any) -> bool:
    return isinstance(item, dict) and FAILED in item


class GuardedCompose(Compose):
    def __init__(self, transforms: Sequence[Callable] | Callable | None = None, catch: str = "medsight", **kwargs):
        if catch not in ("medsight", "all"):
            raise ValueError(f"catch={catch!r} is not medsight or all")
        super().__init__(transforms, **kwargs)
        self.catch = catch

    @classmethod
    def around(cls, compose: Compose, catch: str = "medsight") -> GuardedCompose:
        """The same transforms, with the same settings as ``compose``, guarded."""
        return cls(list(compose.transforms), catch=catch, map_items=compose.map_items,
                   unpack_items=compose.unpack_items, log_stats=compose.log_stats, lazy=compose.lazy,
                   overrides=compose.overrides)

    def __call__(self, input_, start=0, end=None, threading=False, lazy=None):
        if is_failed(input_):
            return input_
        try:
            return super().__call__(input_, start=start, end=end, threading=threading, lazy=lazy)
        except Exception as exc:
            return self.marker(input_, exc)

    def marker(self, record: Any, exc: Exception) -> dict:
        known = unwrap(exc)
        where = record.get("id") if isinstance(record, dict) else None
        if known is not None:
            return {FAILED: str(known), "id": where}
        if self.catch != "all":
            raise exc
        root = exc.__cause__ or exc
        first = str(root).splitlines()[0][:200] if str(root) else ""
        return {FAILED: f"{where}: {type(root).__name__}: {first}", "id": where,
                "traceback": traceback.format_exc()}


def split_failed(items: Sequence[Any]) -> tuple[list[Any], list[dict]]:
    """(good items, failure markers), in order; a list item (several crops of one record) is filtered inside."""
    good, bad = [], []
    for item in items:
        if isinstance(item, list):
            kept = [i for i in item if not is_failed(i)]
            bad += [i for i in item if is_failed(i)]
            if kept:
                good.append(kept)
        elif is_failed(item):
            bad.append(item)
        else:
            good.append(item)
    return good, bad
