"""The 2D picture cache (data.cache=pictures): same values as decoding, rebuilt only where files or settings
changed, unreadable pictures remembered, and the uint8 z-score identical to the float steps."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medsight.data import transforms as T
from medsight.core.config import resolve
from medsight.data.loading import SKIPPED, make_dataset
from medsight.errors import DataError, unwrap
from medsight.data.picture_cache import cached_loader, quantise
from medsight.tasks.classification import XrayClassification
from medsight.tasks.classification.config import ClassificationConfig


def _pictures(folder: Path, count: int, size: int = 96, bits: int = 8) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        y, x = np.mgrid[:size, :size]
        picture = 60 + 80 * np.exp(-((x - size / 2) ** 2 + (y - size / 2) ** 2) / (size * 6.0)) + rng.normal(0, 9, (size, size))
        if bits == 16:
            Image.fromarray((picture * 200).clip(0, 65535).astype(np.uint16)).save(folder / f"{i}.png")
        else:
            Image.fromarray(picture.clip(0, 255).astype(np.uint8)).save(folder / f"{i}.png")
        paths.append(str(folder / f"{i}.png"))
    return paths


def _task(*overrides: str) -> XrayClassification:
    return XrayClassification(resolve(ClassificationConfig, overrides=["data.image_size=48", *overrides]))


def _records(paths):
    return [{"image": p, "label": np.zeros(2, np.float32)} for p in paths]


@pytest.mark.parametrize("bits", [8, 16])
def test_cached_pictures_are_the_decoded_ones(tmp_path, bits):
    paths = _pictures(tmp_path / "pics", 4, bits=bits)
    cached = _task("data.cache=pictures")
    data_cfg = cached.config.data
    dataset = make_dataset(_records(paths), cached.transforms("val"), data_cfg, tmp_path / "cache")
    plain = _task("data.cache=none").transforms("val")
    loader = cached_loader(dataset.transform)
    for index, path in enumerate(paths):
        fresh = loader.prepare_steps({"image": path})["image"]
        stored = loader.store.read(loader._keys[path]).astype(np.float32)
        if bits == 8:  # the float resize, rounded: at most half a gray level
            assert np.abs(stored - fresh[0].numpy()).max() <= 0.5 + 1e-4
        assert np.array_equal(stored, quantise(fresh))
        got, want = dataset[index]["image"], plain({"image": path})["image"]
        assert got.shape == want.shape == (1, 48, 48)
        assert float((got - want).abs().max()) < 0.05  # z units: rounding (and 16-bit rescaling) only


def test_a_changed_file_or_setting_rebuilds_only_what_changed(tmp_path):
    paths = _pictures(tmp_path / "pics", 5)
    task = _task("data.cache=pictures")
    transform = task.transforms("train")
    make_dataset(_records(paths), transform, task.config.data, tmp_path / "cache")
    loader = cached_loader(transform)
    assert loader.build(paths) == 0  # nothing new
    Image.fromarray(np.full((96, 96), 200, np.uint8) - np.eye(96, dtype=np.uint8) * 50).save(paths[2])
    os.utime(paths[2], ns=(1, 10**18))
    again = task.transforms("train")
    make_dataset(_records(paths), again, task.config.data, tmp_path / "cache")
    assert len(cached_loader(again).store.index) == 6  # the replaced picture got a row of its own
    assert cached_loader(again).build(paths) == 0
    picture = cached_loader(again)({"image": paths[2]})["image"]
    assert int(picture.max()) == 200  # the new content

    bigger = _task("data.cache=pictures", "data.cache_size=64").transforms("train")
    make_dataset(_records(paths), bigger, task.config.data, tmp_path / "cache")
    assert cached_loader(bigger).store.folder != cached_loader(again).store.folder
    assert len(cached_loader(bigger).store.index) == 5
    assert bigger({"image": paths[0], "label": np.zeros(2, np.float32)})["image"].shape == (1, 48, 48)


def test_an_unreadable_picture_is_remembered_and_skipped_or_named(tmp_path):
    paths = _pictures(tmp_path / "pics", 3)
    Path(paths[1]).write_bytes(b"\x89PNG\r\n\x1a\n broken")
    skip = _task("data.cache=pictures", "data.on_error=skip")
    dataset = make_dataset(_records(paths), skip.transforms("train"), skip.config.data, tmp_path / "cache")
    assert SKIPPED in dataset[1] and "1.png" in dataset[1][SKIPPED] and "cannot read" in dataset[1][SKIPPED]
    assert dataset[0]["image"].shape == (1, 48, 48)
    assert cached_loader(dataset.transform).build(paths) == 0  # the failure is stored, not retried

    strict = _task("data.cache=pictures")
    dataset = make_dataset(_records(paths), strict.transforms("train"), strict.config.data, tmp_path / "cache")
    with pytest.raises(Exception) as caught:
        dataset[1]
    assert isinstance(unwrap(caught.value), DataError) and "1.png" in str(unwrap(caught.value))


def test_volumes_cannot_use_the_picture_cache(tmp_path):
    from medsight.errors import ConfigError
    from medsight.tasks.segmentation import BrainTumourSegmentation
    from medsight.tasks.segmentation.config import SegmentationConfig

    task = BrainTumourSegmentation(resolve(SegmentationConfig, overrides=["data.cache=pictures"]))
    with pytest.raises(ConfigError, match="2D pictures"):
        make_dataset([{"image": "x.nii.gz"}], task.transforms("train"), task.config.data, tmp_path)


@pytest.mark.parametrize("percentiles", [None, (0.5, 99.5), (2.0, 98.0)])
def test_the_uint8_zscore_is_the_two_float_steps(percentiles):
    rng = np.random.default_rng(1)
    for picture in (rng.integers(0, 256, (1, 40, 40)), rng.integers(90, 110, (1, 37, 41)),
                    np.where(rng.random((1, 30, 30)) < 0.6, 0, 255)):
        fast = T.picture_zscore("image", percentiles)[0]({"image": torch.as_tensor(picture, dtype=torch.uint8)})
        steps = ([*T.percentile_range("image", *percentiles)] if percentiles else []) + T.zscore("image", False)
        slow = {"image": torch.as_tensor(picture, dtype=torch.float32)}
        for step in steps:
            slow = step(slow)
        assert fast["image"].dtype == torch.float32
        assert torch.allclose(fast["image"], slow["image"], atol=1e-5)


def test_a_missing_file_is_not_cached_and_reading_it_names_it(tmp_path):
    """A missing file is not cached; reading it then fails naming it (the run's on_error decides)."""
    paths = _pictures(tmp_path / "pics", 2)
    task = _task("data.cache=pictures")
    records = _records(paths + [str(tmp_path / "gone.png")])
    dataset = make_dataset(records, task.transforms("val"), task.config.data, tmp_path / "cache")
    with pytest.raises(Exception) as caught:
        dataset[2]
    assert isinstance(unwrap(caught.value), DataError) and "gone.png" in str(unwrap(caught.value))


def test_a_damaged_index_or_missing_rows_rebuild_instead_of_failing(tmp_path):
    paths = _pictures(tmp_path / "pics", 3)
    task = _task("data.cache=pictures")
    transform = task.transforms("val")
    make_dataset(_records(paths), transform, task.config.data, tmp_path / "cache")
    folder = cached_loader(transform).store.folder
    (folder / "rank0.json").write_text("{ torn")
    again = task.transforms("val")
    dataset = make_dataset(_records(paths), again, task.config.data, tmp_path / "cache")
    assert len(cached_loader(again).store.index) == 3 and dataset[1]["image"].shape == (1, 48, 48)
    (folder / "rank0.u8").unlink()
    third = task.transforms("val")
    dataset = make_dataset(_records(paths), third, task.config.data, tmp_path / "cache")
    assert dataset[2]["image"].shape == (1, 48, 48)


def test_a_bad_record_is_a_marker_through_every_cache_and_a_raising_run_never_reads_a_cached_one(tmp_path):
    """data.on_error=skip guards MONAI's own datasets through Compose.__call__; on disk the guarded pipeline has keys
    of its own, so the same cache folder read with data.on_error=raise names the bad file instead of a marker."""
    from monai.transforms import Compose, MapTransform, RandFlipd

    from medsight.core.config import LoaderConfig
    from medsight.data.loading import skipping_collate
    from monai.data import list_data_collate

    class Read(MapTransform):
        def __call__(self, record):
            if record["bad"]:
                raise DataError("cannot read", record["id"])
            return {**record, "image": np.ones((1, 4, 4), np.float32)}

    records = [{"id": f"case{i}", "bad": i == 1, "image": f"case{i}"} for i in range(3)]
    pipeline = lambda: Compose([Read("image"), RandFlipd("image", prob=0.5)])  # noqa: E731
    for cache in ("none", "memory", "disk"):
        dataset = make_dataset(records, pipeline(), LoaderConfig(cache=cache, on_error="skip"), tmp_path / "disk")
        assert type(dataset).__module__.startswith("monai.data")  # MONAI's own class, not a subclass of ours
        assert dataset[1] == {SKIPPED: "case1: cannot read", "id": "case1"}
        batch = skipping_collate(list_data_collate)([dataset[0], dataset[1], dataset[2]])
        assert batch[SKIPPED] == ["case1: cannot read"] and batch["image"].shape == (2, 1, 4, 4)
        assert skipping_collate(list_data_collate)([dataset[1]]) == {SKIPPED: ["case1: cannot read"]}
    raising = make_dataset(records, pipeline(), LoaderConfig(cache="disk"), tmp_path / "disk")
    assert raising[0]["image"].shape == (1, 4, 4)
    with pytest.raises(Exception) as caught:
        raising[1]
    assert str(unwrap(caught.value)) == "case1: cannot read"
