"""Records -> cached datasets -> batches.

- ``cache: memory``: MONAI ``CacheDataset`` keeps the deterministic prefix of the pipeline (up to
  the first random transform) in memory, for ``cache_rate`` of the records.
- ``cache: disk``: MONAI ``PersistentDataset``; its key is a hash of the record, of each source
  file's size and modification time, and of the deterministic transforms' full state, so a
  changed transform parameter or a replaced file never reuses a stale entry.
- ``data.on_error: skip``: the task's Compose is wrapped in ``GuardedCompose`` (``medsight.data.guard``), whose
  public ``__call__`` turns a record failing with a medsight error into a marker ``{SKIPPED: message, "id": ...}``;
  the datasets are MONAI's own, unchanged, and ``skipping_collate`` drops the markers from batches. On disk a
  marker is cached like any item, under a key of its own (``transform_hash(..., guarded=True)``): a run that
  raises on bad files never meets a skipping run's markers, and a replaced file gets a new key.
- ``cache: pictures`` (2D tasks): the pipeline's ``CachedPicturesd`` step reads pictures decoded, gray and
  resized once into a memory-mapped uint8 store (``medsight.data.picture_cache``); the records are a plain
  ``Dataset`` on top, so every random step still runs each epoch.
- Under DDP each rank gets its own partition of the training records (shuffled once by seed,
  tail dropped so no record is seen twice per epoch) and caches only that; validation records
  are dealt out ``rank::world_size``.
- Loaders are rebuilt each epoch from a generator seeded by (seed, epoch, rank): batch order and
  every random augmentation are a function of those, which is what makes resume exact.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from monai.data import CacheDataset, DataLoader, Dataset, PersistentDataset, ThreadDataLoader, list_data_collate
from monai.data import partition_dataset as monai_partition
from monai.transforms import Compose

from medsight.core.config import LoaderConfig
from medsight.data.guard import FAILED, GuardedCompose, split_failed
from medsight.data.keys import record_hash, transform_hash

#: the key of the marker a skipped record becomes (``data.on_error=skip``): ``medsight.data.guard.FAILED``
SKIPPED = FAILED


def make_dataset(records: list[dict], transform: Callable, cfg: LoaderConfig, cache_dir: Path | None,
                 cache: bool = True) -> Dataset:
    """MONAI's Dataset, CacheDataset or PersistentDataset over ``records`` (``cfg.cache``); with
    ``data.on_error=skip`` the transform is guarded, so a bad record becomes a ``SKIPPED`` marker."""
    skip = getattr(cfg, "on_error", "raise") == "skip"
    if skip:
        transform = GuardedCompose.around(transform if isinstance(transform, Compose) else Compose(transform),
                                          catch="medsight")
    if not cache or cfg.cache == "none":
        return Dataset(records, transform)
    if cfg.cache == "pictures":
        from medsight.errors import ConfigError
        from medsight.data.picture_cache import cached_loader

        loader = cached_loader(transform)
        if loader is None:
            raise ConfigError("data.cache=pictures stores 2D pictures; this task reads volumes (use memory or disk)")
        if cache_dir is None:
            raise ValueError("a picture cache needs a folder")
        loader.attach(cache_dir)
        loader.build([r[k] for r in records for k in loader.keys if k in r], workers=cfg.num_workers)
        return Dataset(records, transform)
    if cfg.cache == "memory":
        workers = cfg.num_workers if cfg.num_workers > 0 else None
        return CacheDataset(records, transform, cache_rate=cfg.cache_rate, num_workers=workers, progress=False)
    if cache_dir is None:
        raise ValueError("a disk cache needs a folder")
    cache_dir.mkdir(parents=True, exist_ok=True)
    return PersistentDataset(records, transform, cache_dir=cache_dir, hash_func=record_hash,
                             hash_transform=functools.partial(transform_hash, guarded=skip))


def skipping_collate(collate: Callable) -> Callable:
    """A collate that drops skipped records; the batch (a dict) carries their messages (strings) under
    ``SKIPPED``, and is ``{SKIPPED: [...]}`` alone when every record of it was skipped."""

    def collate_fn(items):
        kept, failed = split_failed(items)
        skipped = [marker[FAILED] for marker in failed]
        if not kept:
            return {SKIPPED: skipped}
        batch = collate(kept)
        if skipped and isinstance(batch, dict):
            batch[SKIPPED] = skipped
        return batch

    return collate_fn


def partition(records: list[dict], rank: int, world_size: int, seed: int, train: bool) -> list[dict]:
    """This rank's records: a seeded, tail-dropped shard for training; ``rank::world`` for evaluation."""
    if world_size == 1:
        return list(records)
    if train:
        if len(records) < world_size:
            from medsight.errors import DataError

            raise DataError(f"{len(records)} training record(s) for {world_size} processes: each rank needs at "
                            "least one (more data, or fewer processes)", "training split")
        shards = monai_partition(list(records), num_partitions=world_size, shuffle=True, seed=seed,
                                 drop_last=True, even_divisible=True)
        return list(shards[rank])
    return list(records[rank::world_size])


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """A well-mixed 63-bit seed from (seed, epoch, rank)."""
    digest = hashlib.sha256(f"{seed}:{epoch}:{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def make_loader(dataset: Dataset, cfg: LoaderConfig, batch_size: int, shuffle: bool, seed: int,
                collate_fn: Callable | None = None, drop_last: bool = False,
                weights: Sequence[float] | None = None) -> DataLoader:
    """A MONAI DataLoader (or ThreadDataLoader) whose order and augmentation are fixed by ``seed``.

    ``weights`` (one per item) draw ``len(dataset)`` items with replacement instead of shuffling,
    from the same seeded generator, so a weighted epoch is as reproducible as a shuffled one.
    """
    generator = torch.Generator()
    generator.manual_seed(seed)
    sampler = None
    if weights is not None:
        if len(weights) != len(dataset):
            raise ValueError(f"{len(weights)} sample weights for {len(dataset)} items")
        sampler = torch.utils.data.WeightedRandomSampler(list(weights), num_samples=len(dataset), replacement=True,
                                                         generator=generator)
        shuffle = False
    collate_fn = collate_fn or list_data_collate
    if getattr(cfg, "on_error", "raise") == "skip":
        collate_fn = skipping_collate(collate_fn)
    kwargs = dict(
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        generator=generator,
        collate_fn=collate_fn,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available(),
    )
    if cfg.loader == "thread":
        return ThreadDataLoader(dataset, num_workers=0, **kwargs)
    return DataLoader(dataset, num_workers=cfg.num_workers, persistent_workers=False, **kwargs)

