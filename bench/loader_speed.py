"""Loader speed: what the caches buy, per core, against the pipelines the tutorials write.

``pictures`` (ChestX-ray14 layout, 1024 px PNGs, made by ``medsight data synth`` unless ``--data`` has them):

- the picture cache (``data.cache=pictures``) built once: time, pictures/s on one core, size on disk;
- pictures per second on ONE core (one thread, no loader workers: what each worker process does) for the
  model input at ``--image-size``: the reference decodes the PNG every epoch the way the tutorials'
  ``ImageFolder``-style datasets do (PIL open, to gray, torchvision resize, to tensor, per-picture
  z-score); medsight decodes every epoch (``data.cache=none``) or reads the cache; then the same with
  medsight's training augmentation on top (random affine, intensity, flip: what each epoch still runs);
- the store formats the cache could use, read at random at the stored size (``--store-size``): the
  memory-mapped uint8 rows it uses, one ``.npy`` per picture, PNGs re-encoded at that size, and
  ``torch.save`` float32 files (what MONAI's ``PersistentDataset`` writes);
- outputs compared: stored rows against the same decode before rounding (gray levels), and the model
  input from the cache against decoding every epoch (z units: the cache resizes 1024 -> stored -> input).
  Target: cache >= 10x the reference's rate.

``volumes`` (BraTS-size 4-modality MRI, LUNA16-like CT; synthetic): a steady-state training epoch of the
segmentation and detection pipelines, one core, with ``data.cache=disk`` (MONAI ``PersistentDataset``, the
second epoch: the first builds it) and ``data.cache=memory`` (``CacheDataset``), against MONAI's tutorial
pipeline: the same transforms on a plain ``Dataset``. Outputs compared: the validation pipeline's image
from each cache against the plain ``Dataset``'s (max |difference|). Target: steady epoch <= 1/3 of plain.

    flock /tmp/medsight-heavy.lock .venv/bin/python bench/loader_speed.py pictures [--data DIR]
        [--pictures 5000] [--size 1024] [--store-size 256] [--image-size 224] [--sample 1000]
    flock /tmp/medsight-heavy.lock .venv/bin/python bench/loader_speed.py volumes [--cases 6]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import medsight  # noqa: F401  (compatibility step before torchvision)
from medsight.core.config import resolve
from medsight.data.loading import make_dataset
from medsight.data.picture_cache import cached_loader

TARGET_PICTURES = 10.0
TARGET_VOLUMES = 1 / 3


def rate(function, items, warmup: int = 20) -> float:
    """Items per second of ``function`` over ``items`` (after a few warm-up calls)."""
    for item in items[:warmup]:
        function(item)
    started = time.perf_counter()
    for item in items:
        function(item)
    return len(items) / (time.perf_counter() - started)


def synth(dataset: str, out: Path, cases: int, **options) -> float:
    """Seconds to synthesise ``cases`` of ``dataset`` into ``out`` (what ``medsight data synth`` does)."""
    from medsight.core.registry import DATASETS

    started = time.perf_counter()
    DATASETS.get(dataset)().synth(out, cases=cases, **options)
    return time.perf_counter() - started


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


# -- 2D -------------------------------------------------------------------------------------------
def tutorial_picture(size: int):
    """The ``ImageFolder``-style reference: PIL decode, gray, torchvision resize, tensor, z-score."""
    from PIL import Image
    from torchvision.transforms import functional as TF

    def load(path):
        with Image.open(path) as picture:
            x = TF.to_tensor(TF.resize(picture.convert("L"), [size, size], antialias=True))
        return (x - x.mean()) / (x.std() + 1e-8)

    return load


def pictures(args) -> None:
    from medsight.tasks.classification import XrayClassification
    from medsight.tasks.classification.config import ClassificationConfig

    data = Path(args.data or Path(args.work) / f"chestxray14-{args.size}px")
    paths = sorted(str(p) for p in data.rglob("*.png"))
    if len(paths) < args.pictures:
        seconds = synth("chestxray14", data, args.pictures, size=args.size)
        paths = sorted(str(p) for p in data.rglob("*.png"))
        print(f"made {len(paths)} synthetic {args.size} px pictures in {seconds:.0f} s")
    png_mb = folder_bytes(data) / 2**20
    rng = np.random.default_rng(0)
    sample = list(rng.choice(paths, size=min(args.sample, len(paths)), replace=False))
    records = [{"image": p, "label": np.zeros(14, np.float32)} for p in sample]

    def task(cache: str, stored: int):
        return XrayClassification(resolve(ClassificationConfig, overrides=[
            f"data.image_size={args.image_size}", f"data.cache={cache}", f"data.cache_size={stored}"]))

    plain_val, plain_train = task("none", 0).transforms("val"), task("none", 0).transforms("train")
    reference = tutorial_picture(args.image_size)
    rows = [("reference: PIL decode + torchvision resize, every epoch", rate(reference, sample)),
            ("medsight, decoding every epoch (data.cache=none)", rate(lambda r: plain_val(dict(r)), records))]
    augmented = [("medsight + augmentation, decoding every epoch", rate(lambda r: plain_train(dict(r)), records))]
    built = {}
    for stored in dict.fromkeys([args.store_size or args.image_size, 256]):
        cached_val, cached_train = task("pictures", stored).transforms("val"), task("pictures", stored).transforms("train")
        loader = cached_loader(cached_val)
        store = loader.attach(Path(args.work) / "picture-cache")
        shutil.rmtree(store.folder)
        store = loader.attach(Path(args.work) / "picture-cache")
        started = time.perf_counter()
        loader.build(paths, workers=0, mode="never")
        seconds = time.perf_counter() - started
        cached_loader(cached_train).attach(Path(args.work) / "picture-cache")
        cached_loader(cached_train).build(paths, mode="never")  # finds every picture stored: keys only
        megabytes = folder_bytes(store.folder) / 2**20
        built[stored] = (loader, store, cached_val)
        print(f"cache at {stored} px: built in {seconds:.0f} s on one core ({len(paths) / seconds:.0f} pictures/s), "
              f"{megabytes:.0f} MB ({megabytes / png_mb:.3f}x the PNGs)")
        label = f"at {stored} px" + ("" if stored == args.image_size else f", resized to {args.image_size}")
        rows.append((f"medsight, picture cache {label}", rate(lambda r: cached_val(dict(r)), records)))
        augmented.append((f"medsight + augmentation, picture cache {label}",
                          rate(lambda r: cached_train(dict(r)), records)))
    base = rows[0][1]
    print(f"\nmodel input at {args.image_size} px, one core, {len(sample)} pictures at random")
    print(f"{'pipeline':64s} {'pictures/s':>10s} {'x reference':>12s}")
    for name, value in rows + augmented:
        print(f"{name:64s} {value:10.0f} {value / base:12.1f}")

    loader, store, cached_val = built[args.store_size or args.image_size]
    stored = store_formats(loader, store, sample, Path(args.work) / "formats")
    outputs(loader, cached_val, plain_val, sample, records, stored)
    ratio = rows[2][1] / base
    print(f"\ncache / reference: {ratio:.1f}x (target >= {TARGET_PICTURES:g}x): "
          f"{'met' if ratio >= TARGET_PICTURES else 'NOT met'}")


def store_formats(loader, store, sample: list[str], formats: Path) -> list[np.ndarray]:
    """The store formats the cache could use, read at random at the stored size; returns the stored rows."""
    from PIL import Image

    keys = [loader._keys[p] for p in sample]
    shutil.rmtree(formats, ignore_errors=True)
    formats.mkdir(parents=True)
    stored = [np.array(store.read(k)) for k in keys]
    for i, row in enumerate(stored):
        np.save(formats / f"{i}.npy", row)
        Image.fromarray(row).save(formats / f"{i}.png")
        torch.save(torch.from_numpy(row.astype(np.float32))[None], formats / f"{i}.pt")
    indices = list(range(len(stored)))
    candidates = [
        ("memory-mapped uint8 rows (used)", lambda i: torch.from_numpy(np.array(store.read(keys[i]))), store.row_bytes),
        ("one .npy per picture", lambda i: torch.from_numpy(np.load(formats / f"{i}.npy")),
         (formats / "0.npy").stat().st_size),
        ("PNG re-encoded at the stored size", lambda i: torch.from_numpy(np.array(Image.open(formats / f"{i}.png"))),
         int(np.mean([(formats / f"{i}.png").stat().st_size for i in indices]))),
        ("torch.save float32 (PersistentDataset)", lambda i: torch.load(formats / f"{i}.pt", weights_only=True),
         (formats / "0.pt").stat().st_size)]
    print(f"\nstore formats: one {store.size} px picture read at random, one core (page cache warm)")
    print(f"{'format':42s} {'pictures/s':>10s} {'bytes/picture':>14s}")
    for name, function, size in candidates:
        print(f"{name:42s} {rate(function, indices):10.0f} {size:14,d}")
    return stored


def outputs(loader, cached_val, plain_val, sample: list[str], records: list[dict], stored: list[np.ndarray]) -> None:
    """Stored rows against the same decode before rounding; the model input from the cache against decoding."""
    fresh = [loader.prepare_steps({"image": p})["image"][0].numpy() for p in sample[:100]]
    worst = max(float(np.abs(f - s.astype(np.float32)).max()) for f, s in zip(fresh, stored[:100]))
    diffs = [np.abs(cached_val(dict(r))["image"].numpy() - plain_val(dict(r))["image"].numpy()) for r in records[:100]]
    print(f"\noutputs (100 pictures): stored rows vs the same decode before rounding: max {worst:.3f} gray levels; "
          f"model input, cache vs decoding every epoch: mean |dz| {np.mean([d.mean() for d in diffs]):.4f}, "
          f"max {max(d.max() for d in diffs):.3f}")


# -- 3D -------------------------------------------------------------------------------------------
def epoch_seconds(dataset) -> float:
    started = time.perf_counter()
    for index in range(len(dataset)):
        dataset[index]
    return time.perf_counter() - started


def volume_task(name: str, data: Path, overrides: list[str]):
    from medsight.data.formats import open_dataset
    from medsight.core.registry import TASKS

    task_class = TASKS.get(name)
    task = task_class(resolve(task_class.config_class, overrides=overrides))
    source = open_dataset(data, task.config.data, task_class.schema)
    task.learn_state(source)
    records = task.records(source, "train") + task.records(source, "val")
    return task, records


def volumes(args) -> None:
    work = Path(args.work)
    sets = {
        "segmentation": ("brats", {"shape": "240,240,155"}, ["data.patch_size=[128,128,128]"]),
        "detection": ("luna16", {"shape": "320,320,120", "spacing": "0.7,0.7,2.5"}, []),
    }
    print(f"{'task':13s} {'cases':>5s} {'plain Dataset s':>15s} {'disk: build s':>13s} {'steady s':>9s} "
          f"{'ratio':>6s} {'MB':>6s} {'memory: build s':>15s} {'steady s':>9s} {'ratio':>6s} {'max |d|':>8s}")
    for name in args.tasks.split(","):
        dataset, options, overrides = sets[name]
        data = work / f"{dataset}-{args.cases}"
        if not data.exists():
            synth(dataset, data, args.cases, **options)
        task, records = volume_task(name, data, overrides + ["data.cache=disk", "data.num_workers=0"])
        torch.manual_seed(0)
        plain = epoch_seconds(make_dataset(records, task.transforms("train"), task.config.data, None, cache=False))
        cache_dir = work / f"cache-{name}"
        shutil.rmtree(cache_dir, ignore_errors=True)
        disk = make_dataset(records, task.transforms("train"), task.config.data, cache_dir)
        disk_build = epoch_seconds(disk)
        disk_steady = epoch_seconds(disk)
        mb = folder_bytes(cache_dir) / 2**20
        task.config.data.cache = "memory"
        started = time.perf_counter()
        memory = make_dataset(records, task.transforms("train"), task.config.data, None)
        memory_build = time.perf_counter() - started
        memory_steady = epoch_seconds(memory)
        # outputs: the deterministic (validation) pipeline through each cache against a plain Dataset
        plain_val = make_dataset(records[:2], task.transforms("val"), task.config.data, None, cache=False)
        task.config.data.cache = "disk"
        disk_val = make_dataset(records[:2], task.transforms("val"), task.config.data, cache_dir / "val")
        disk_val[0]
        worst = max(float((torch.as_tensor(disk_val[i]["image"]) - torch.as_tensor(plain_val[i]["image"])).abs().max())
                    for i in range(2))
        print(f"{name:13s} {len(records):5d} {plain:15.1f} {disk_build:13.1f} {disk_steady:9.1f} "
              f"{disk_steady / plain:6.2f} {mb:6.0f} {memory_build:15.1f} {memory_steady:9.1f} "
              f"{memory_steady / plain:6.2f} {worst:8.1e}")
    print(f"target: steady epoch <= {TARGET_VOLUMES:.2f} of the plain Dataset's")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["pictures", "volumes"])
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "medsight-loader-bench"))
    parser.add_argument("--data", help="a ChestX-ray14-layout folder (default: synthetic, made in --work)")
    parser.add_argument("--pictures", type=int, default=5000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--store-size", type=int, default=0, help="the cache's picture size (0 = --image-size); "
                        "256 px is measured as well")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--sample", type=int, default=1000)
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--tasks", default="segmentation,detection")
    args = parser.parse_args()
    torch.set_num_threads(1)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    (pictures if args.what == "pictures" else volumes)(args)


if __name__ == "__main__":
    main()
