"""Splits are stable, for every registered format: adding 10 % new patients (scans, cases) to a dataset
moves no existing one to another split where splits are drawn by each group's own hash, and few where
they come from balanced cross-validation folds (BraTS validation, ct-nodules test scans: balance can
cost a move, ``medsight.data.folds.assign_folds``). Validation drawn by hash (``val_source=train``)
is checked too where a format would otherwise use the dataset's own validation split."""

from pathlib import Path

import pytest

from medsight.data.formats import build_options
from medsight.data.folds import assign_folds
from medsight.datasets.splits import held_out, split_by_group, unit_hash
from medsight.core.registry import DATASETS

#: per format: synth options small enough for a test, and a case count (then 10 % more)
SETS = {
    "chestxray14": ({"size": 32}, 60),
    "folders": ({"size": 32}, 60),
    "csv": ({"size": 32}, 60),
    "luna16": ({"shape": (24, 24, 8), "spacing": (2.0, 2.0, 4.0)}, 10),
    "ct-nodules": ({"shape": (24, 24, 8), "spacing": (2.0, 2.0, 4.0)}, 10),
    "brats": ({"shape": (12, 12, 8)}, 20),
}
VARIANTS = [{"val_fraction": 0.3}, {"val_source": "train", "val_fraction": 0.3}]
#: formats whose splits come from balanced folds, and the share of old groups allowed to change split
#: (measured on these sets: none; over random sets of 20 -> 22 cases, K=5, 10 % change fold on average, fewer split)
FOLDED = {"brats": 0.25, "ct-nodules": 0.25}


def assignment(name: str, root: Path, options: dict) -> dict[str, tuple[str, ...]]:
    """group -> the splits it is in (BraTS's ``test`` is every case, so a group may be in two)."""
    fmt = DATASETS.get(name)(build_options(DATASETS.get(name), options))
    seen: dict[str, tuple[str, ...]] = {}
    for split in ("train", "val", "test"):
        for group in {record["group"] for record in fmt.records(root, split)}:
            seen[group] = seen.get(group, ()) + (split,)
    assert not any({"train", "val"} <= set(splits) for splits in seen.values()), "a group in train and val"
    return seen


@pytest.mark.parametrize("name", sorted(SETS))
def test_adding_ten_percent_new_patients_moves_no_existing_patient_or_few_in_folds(name, tmp_path):
    assert name in DATASETS.names()
    synth, count = SETS[name]
    small = DATASETS.get(name)().synth(tmp_path / "small", cases=count, seed=3, **synth)
    large = DATASETS.get(name)().synth(tmp_path / "large", cases=count + max(1, count // 10), seed=3, **synth)
    for options in VARIANTS:
        before, after = assignment(name, small, options), assignment(name, large, options)
        assert set(before) < set(after), "the larger set holds every old group and new ones"
        moved = {group: (before[group], after[group]) for group in before if after[group] != before[group]}
        assert len(moved) <= FOLDED.get(name, 0) * len(before), f"{name} {options}: groups changed split: {moved}"
        used = {split for splits in before.values() for split in splits}
        assert {"train", "val", "test"} <= used, f"{name} {options}: a split is empty: {before}"


def test_every_registered_format_with_a_generator_is_covered():
    assert set(SETS) <= set(DATASETS.names())


def test_a_group_is_held_out_by_its_own_hash_alone():
    groups = [f"patient{i}" for i in range(2000)]
    rest, out = split_by_group(groups, str, 0.2, seed=5)
    assert {g for g in out} == {g for g in groups if unit_hash(5, g) < 0.2}
    assert 0.17 < len(out) / len(groups) < 0.23
    rest_more, out_more = split_by_group(groups + [f"new{i}" for i in range(200)], str, 0.2, seed=5)
    assert set(out) <= set(out_more) and set(rest) <= set(rest_more)
    assert held_out("patient7", 0.2, seed=5) == ("patient7" in out) and not held_out("patient7", 0.0, seed=5)
    folds = list(assign_folds(groups, 5, seed=0).values())  # folds are balanced instead: test_splits.py
    assert [folds.count(k) for k in range(5)] == [400] * 5


@pytest.mark.parametrize("name", sorted(SETS))
def test_validation_can_be_named_outright_by_its_groups(name, tmp_path):
    synth, count = SETS[name]
    root = DATASETS.get(name)().synth(tmp_path / "data", cases=count, seed=3, **synth)
    options = {"val_source": "train"}
    everything = assignment(name, root, options)
    chosen = sorted(group for group, splits in everything.items() if "train" in splits or "val" in splits)[:2]
    named = assignment(name, root, dict(options, val_groups=chosen))
    assert sorted(group for group, splits in named.items() if "val" in splits) == chosen
