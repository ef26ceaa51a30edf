"""A training run's data: the task's records split into training and validation, dealt out to this rank
(``medsight.data.loading.partition``), their datasets (cached as ``data.cache`` says) and each epoch's
loader, seeded by (seed, epoch, rank) so that a resumed run sees the same batches."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

from medsight.core.runtime import Runtime
from medsight.data.loading import epoch_seed, make_dataset, make_loader, partition
from medsight.errors import DataError
from medsight.task import Task


@dataclass
class TrainingData:
    task: Task
    records: dict[str, list[dict]]  # every rank's: "train", "val"
    train_records: list[dict]  # this rank's
    val_records: list[dict]
    train_set: object
    val_set: object
    sample_weights: list[float] | None

    @classmethod
    def open(cls, task: Task, source, data: Path, runtime: Runtime, seed: int, cache_dir: Path) -> TrainingData:
        """The records of ``source`` (an opened dataset) for this rank; a DataError naming ``data`` when the
        split leaves no training record."""
        train, val = task.records(source, "train"), task.records(source, "val")
        if not train:
            held = f" ({len(val)} records fell in validation)" if val else ""
            raise DataError(f"no training records found{held}; with very few patients or cases, set data.folds "
                            "(balanced folds), data.split_seed or data.val_fraction", data)
        mine_train = partition(train, runtime.rank, runtime.world_size, seed, train=True)
        mine_val = partition(val, runtime.rank, runtime.world_size, seed, train=False)
        data_cfg = task.config.data
        return cls(task, {"train": train, "val": val}, mine_train, mine_val,
                   make_dataset(mine_train, task.transforms("train"), data_cfg, cache_dir / "train"),
                   make_dataset(mine_val, task.transforms("val"), data_cfg, cache_dir / "val"),
                   task.train_sample_weights(mine_train))

    def batches_per_epoch(self, max_steps: int | None) -> int:
        batches = math.ceil(len(self.train_records) / self.task.config.data.batch_size)
        return max(1, min(batches, max_steps) if max_steps else batches)

    def train_loader(self, epoch: int, seed: int, rank: int):
        data_cfg = self.task.config.data
        return make_loader(self.train_set, data_cfg, data_cfg.batch_size, shuffle=True,
                           seed=epoch_seed(seed, epoch, rank), collate_fn=self.task.collate_fn("train"),
                           weights=self.sample_weights)


def timed(loader, waited: list[float]):
    """The loader's batches, the seconds spent waiting for each added to ``waited[0]`` (metrics.jsonl's
    ``data_wait_fraction``)."""
    batches = iter(loader)
    while True:
        started = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            return
        finally:
            waited[0] += time.perf_counter() - started
        yield batch
