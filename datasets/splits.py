"""Group-level splits that are stable under added data (a group is a patient, a scan or a case; an
image when nothing better is known).

Hold-outs (``held_out``, ``split_by_group``): each group's side is decided by its own hash alone:
``unit_hash(seed, group)`` is a number in [0, 1) and the group is held out when that number is below
the held-out fraction. No other group takes part in the decision, so adding data never moves an
existing group from training into validation or back. The price is that the held-out share is the
fraction in expectation, not exactly: with few groups it can be empty (the trainer then says so and
trains without validation).

Cross-validation folds (``medsight.data.folds.assign_folds``) are balanced exactly instead: every fold holds floor(N/K)
or ceil(N/K) of the N groups, by balanced rendezvous hashing. The price here is the other way round:
adding data may move a few existing groups (about 3.5 % of them when 10 % more groups come, K=5),
where cutting each group's own hash into K ranges moves none but leaves small folds empty or lopsided.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Hashable, Iterable, Sequence
from pathlib import PurePath
from typing import TypeVar


Item = TypeVar("Item")

#: folder names and split-column values that mean each split, in the spellings datasets use
SPLIT_NAMES: dict[str, tuple[str, ...]] = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation", "dev"),
    "test": ("test", "testing"),
}
#: the seed of the test hold-out where a dataset names no test split: fixed, so that changing
#: ``data.split_seed`` (validation) never moves a test patient into training
TEST_SEED = 1_000_003


def canonical_split(name: str) -> str | None:
    """``train``/``val``/``test`` for a split's spelling (``valid``, ``Validation``...), else None."""
    lowered = name.strip().lower()
    for split, spellings in SPLIT_NAMES.items():
        if lowered in spellings:
            return split
    return None


def unit_hash(seed: int, group: Hashable) -> float:
    """A number in [0, 1) that depends on (seed, group) only, uniformly spread over groups."""
    digest = hashlib.sha256(f"{seed}:{group}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def held_out(group: Hashable, fraction: float, seed: int) -> bool:
    """Whether ``group`` belongs to the held-out ``fraction`` drawn by ``seed``."""
    return fraction > 0 and unit_hash(seed, group) < fraction


def split_by_group(items: Sequence[Item], group_of: Callable[[Item], Hashable], fraction: float,
                   seed: int) -> tuple[list[Item], list[Item]]:
    """(rest, held out): every item of a group whose hash falls below ``fraction`` is held out."""
    rest, out = [], []
    for item in items:
        (out if held_out(str(group_of(item)), fraction, seed) else rest).append(item)
    return rest, out


def validation_split(items: Sequence[Item], group_of: Callable[[Item], Hashable],
                     options) -> tuple[list[Item], list[Item]]:
    """(train, val) of the training items: the groups named in ``options.val_groups`` when there are any,
    else each group by its own hash (``options.val_fraction``, ``options.split_seed``)."""
    if getattr(options, "val_groups", None):
        named = {str(group) for group in options.val_groups}
        return ([item for item in items if str(group_of(item)) not in named],
                [item for item in items if str(group_of(item)) in named])
    return split_by_group(items, group_of, options.val_fraction, options.split_seed)


def three_way_split(items: Iterable[Item], group_of: Callable[[Item], Hashable], options,
                    test_fraction: float) -> dict[str, list[Item]]:
    """train/val/test by group when a dataset names no split: test by a fixed seed, then validation."""
    train_val, test = split_by_group(list(items), group_of, test_fraction, seed=TEST_SEED)
    train, val = validation_split(train_val, group_of, options)
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


def check_group_pattern(pattern: str) -> None:
    """ConfigError unless ``pattern`` is empty or a regular expression with a capture group."""
    from medsight.errors import ConfigError

    if not pattern:
        return
    try:
        groups = re.compile(pattern).groups
    except re.error as exc:
        raise ConfigError(f"data.group_pattern {pattern!r} is not a regular expression ({exc})") from None
    if groups < 1:
        raise ConfigError(f"data.group_pattern {pattern!r} needs a (capture group) for the patient")
