"""Deterministic group-level splits (a group is a patient, or an image when nothing better is known).

A hash of (seed, group) orders the groups, so a group's side of the split depends only on the seed
and on itself, never on which other groups exist: adding images to a dataset never moves an old
patient from training into validation.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import PurePath
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import TypeVar

Item = TypeVar("Item")

#: folder names and split-column values that mean each split, in the spellings datasets use
SPLIT_NAMES: dict[str, tuple[str, ...]] = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation", "dev"),
    "test": ("test", "testing"),
}


def canonical_split(name: str) -> str | None:
    """``train``/``val``/``test`` for a split's spelling (``valid``, ``Validation``...), else None."""
    lowered = name.strip().lower()
    for split, spellings in SPLIT_NAMES.items():
        if lowered in spellings:
            return split
    return None


def split_by_group(items: Sequence[Item], group_of: Callable[[Item], Hashable], fraction: float,
                   seed: int) -> tuple[list[Item], list[Item]]:
    """(rest, held out): ``ceil(fraction * groups)`` whole groups held out, chosen by a seeded hash."""
    groups = sorted({str(group_of(item)) for item in items})
    keyed = sorted(groups, key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest())
    held = set(keyed[: int(math.ceil(fraction * len(keyed)))]) if fraction > 0 else set()
    rest = [item for item in items if str(group_of(item)) not in held]
    out = [item for item in items if str(group_of(item)) in held]
    return rest, out


def three_way_split(items: Iterable[Item], group_of: Callable[[Item], Hashable], val_fraction: float,
                    test_fraction: float, seed: int) -> dict[str, list[Item]]:
    """train/val/test by group when a dataset names no split: test first (fixed seed), then val."""
    train_val, test = split_by_group(list(items), group_of, test_fraction, seed=1_000_003)
    train, val = split_by_group(train_val, group_of, val_fraction, seed)
    return {"train": train, "val": val, "test": test}


def file_name_group(pattern: str | None) -> Callable[[str], str]:
    """Group of an image from its path: the first capture group of ``pattern`` searched in the file
    name (``^(\\d+)_`` takes the patient of ``00000193_019.png``), else the whole path."""
    if not pattern:
        return str
    compiled = re.compile(pattern)

    def group(path: str) -> str:
        found = compiled.search(PurePath(path).name)
        return found.group(1) if found else str(path)

    return group
