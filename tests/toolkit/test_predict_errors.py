"""A bad case in a batch predict is reported with the file and the reason, even when MONAI's Compose
wraps the reader's DataError in its own RuntimeError."""

from monai.transforms import Compose, Lambdad

from medsight.errors import DataError
from medsight.inference.predict import _SafeDataset


def _refuse(path):
    raise DataError("cannot read image (truncated)", path)


def test_a_data_error_inside_a_compose_is_reported_as_itself():
    dataset = _SafeDataset([{"image": "scan.mhd", "id": "scan"}], Compose([Lambdad("image", _refuse)]))
    item = dataset[0]
    assert item["__error__"] == "scan.mhd: cannot read image (truncated)" and "__traceback__" not in item


def test_other_errors_name_the_case_and_the_root_cause_behind_compose():
    dataset = _SafeDataset([{"image": "scan.mhd", "id": "scan"}], Compose([Lambdad("image", lambda p: 1 / 0)]))
    item = dataset[0]
    assert item["__error__"] == "scan: ZeroDivisionError: division by zero" and "__traceback__" in item
