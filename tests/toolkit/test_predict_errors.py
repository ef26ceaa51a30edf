"""A bad case in a batch predict is reported with the file and the reason, even when MONAI's Compose
wraps the reader's DataError in its own RuntimeError; the guard works through MONAI's public Compose call, so
the same Compose guards a plain, a cached and a disk-cached dataset."""

import pytest
from monai.data import CacheDataset, Dataset
from monai.transforms import Lambdad, RandLambdad

from medsight.data.guard import FAILED, GuardedCompose, split_failed
from medsight.errors import DataError


def _refuse(path):
    raise DataError("cannot read image (truncated)", path)


def test_a_data_error_inside_a_compose_is_reported_as_itself():
    dataset = Dataset([{"image": "scan.mhd", "id": "scan"}], GuardedCompose([Lambdad("image", _refuse)], catch="all"))
    item = dataset[0]
    assert item[FAILED] == "scan.mhd: cannot read image (truncated)" and "traceback" not in item


def test_other_errors_name_the_case_and_the_root_cause_behind_compose():
    dataset = Dataset([{"image": "scan.mhd", "id": "scan"}], GuardedCompose([Lambdad("image", lambda p: 1 / 0)],
                                                                            catch="all"))
    item = dataset[0]
    assert item[FAILED] == "scan: ZeroDivisionError: division by zero" and "traceback" in item


def test_medsight_mode_raises_other_errors_and_keeps_good_records_in_a_cached_dataset():
    steps = [Lambdad("image", lambda p: _refuse(p) if p == "bad" else p), RandLambdad("n", lambda n: n + 1)]
    with pytest.raises(RuntimeError):
        Dataset([{"image": "x"}], GuardedCompose([Lambdad("image", lambda p: 1 / 0)]))[0]
    dataset = CacheDataset([{"image": "good", "n": 1, "id": "a"}, {"image": "bad", "n": 1, "id": "b"}],
                           GuardedCompose(steps), progress=False)
    good, bad = split_failed([dataset[0], dataset[1]])
    assert len(good) == 1 and good[0]["image"] == "good" and int(good[0]["n"]) == 2  # cached prefix, then random
    assert [b[FAILED] for b in bad] == ["bad: cannot read image (truncated)"]
