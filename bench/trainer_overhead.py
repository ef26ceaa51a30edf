"""Trainer overhead: samples/s of ``medsight``'s Trainer against a plain PyTorch loop, same model,
same data, same optimizer, in one process. Both include everything an epoch costs (the trainer's
checkpoint writes and logs too). Target: ratio >= 0.95.

    python bench/trainer_overhead.py [--epochs 4] [--samples 4096] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

import medsight  # noqa: F401
from medsight.core.config import LoaderConfig, TaskConfig, resolve
from medsight.core.registry import register_task
from medsight.core.runtime import Runtime
from medsight.task import Monitor, StepOutput, Task
from medsight.training.trainer import Trainer

IMAGE = 64


def make_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )


@dataclass
class BenchData(LoaderConfig):
    batch_size: int = 32
    cache: str = "none"


@dataclass
class BenchConfig(TaskConfig):
    task: str = "bench"
    data: BenchData = field(default_factory=BenchData)


DATA: dict[str, torch.Tensor] = {}


@register_task("bench-overhead")
class BenchTask(Task):
    config_class = BenchConfig
    monitor = Monitor("loss", "min")

    def records(self, data, split):
        if split != "train":
            return []
        return [{"image": DATA["x"][i], "label": DATA["y"][i]} for i in range(len(DATA["y"]))]

    def transforms(self, stage):
        return None

    def build_model(self):
        torch.manual_seed(0)
        return make_model()

    def training_step(self, model, batch):
        loss = nn.functional.cross_entropy(model(batch["image"]), batch["label"])
        return StepOutput(loss=loss, batch_size=len(batch["label"]))


def plain_loop(epochs: int, batch_size: int) -> float:
    torch.manual_seed(0)
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-5)
    dataset = torch.utils.data.TensorDataset(DATA["x"], DATA["y"])
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True)
    started = time.perf_counter()
    for _ in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
    return epochs * len(dataset) / (time.perf_counter() - started)


def with_trainer(epochs: int, batch_size: int) -> float:
    config = resolve(BenchConfig, overrides=[f"trainer.max_epochs={epochs}", "trainer.progress=never",
                                             "trainer.tensorboard=false", "optim.scheduler=none",
                                             f"data.batch_size={batch_size}"])
    with tempfile.TemporaryDirectory() as run:
        trainer = Trainer(BenchTask(config), Path(run), Path(run) / "run", Runtime("cpu", "fp32"))
        trainer.setup(None)
        started = time.perf_counter()
        for epoch in range(epochs):
            logs = trainer.train_epoch(epoch)
            trainer.end_epoch(epoch, logs, None)
        elapsed = time.perf_counter() - started
    return epochs * len(DATA["y"]) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=3072)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    DATA["x"] = torch.randn(args.samples, 1, IMAGE, IMAGE, generator=generator)
    DATA["y"] = torch.randint(0, 10, (args.samples,), generator=generator)
    plain, trainer = [], []
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits both alike
        plain.append(plain_loop(args.epochs, args.batch_size))
        trainer.append(with_trainer(args.epochs, args.batch_size))
    p, t = statistics.median(plain), statistics.median(trainer)
    print(f"small CNN, {args.samples} images {IMAGE}x{IMAGE}, batch {args.batch_size}, {args.epochs} epochs, "
          f"{torch.get_num_threads()} CPU threads, median of {args.repeats}")
    print(f"plain PyTorch loop   {p:8.1f} samples/s   (runs: {', '.join(f'{v:.1f}' for v in plain)})")
    print(f"medsight Trainer     {t:8.1f} samples/s   (runs: {', '.join(f'{v:.1f}' for v in trainer)})")
    print(f"ratio trainer/plain  {t / p:8.3f}   (target >= 0.95: {'met' if t / p >= 0.95 else 'NOT met'})")


if __name__ == "__main__":
    main()
