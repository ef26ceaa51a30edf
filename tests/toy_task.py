"""A toy task for trainer tests: noisy linear regression from a ``toy.npz`` in the data folder.

It has what makes exact resume hard: a random augmentation (MONAI ``RandGaussianNoised``, its own
RNG) and dropout (torch's global RNG). ``MEDSIGHT_TOY_KILL_AT_STEP=N`` makes the process SIGKILL
itself in its N-th training step (counted from process start), to simulate a crash at that moment.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from monai.transforms import Compose, EnsureTyped, RandGaussianNoised
from torch import nn

from medsight.core.config import LoaderConfig, TaskConfig
from medsight.core.registry import register_task
from medsight.task import Monitor, StepOutput, Task


def make_toy_data(folder: Path, samples: int = 96, features: int = 8, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (samples, features)).astype(np.float32)
    w = rng.normal(0, 1, features).astype(np.float32)
    y = (x @ w + rng.normal(0, 0.05, samples)).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "toy.npz", x=x, y=y)
    return folder


@dataclass
class ToyData(LoaderConfig):
    batch_size: int = 8
    val_batch_size: int = 16
    noise: float = 0.05


@dataclass
class ToyModel:
    hidden: int = 32
    dropout: float = 0.1
    #: make the loss NaN in this training step (counted from process start); 0 = never
    nan_at_step: int = 0


@dataclass
class ToyConfig(TaskConfig):
    task: str = "toy"
    data: ToyData = field(default_factory=ToyData)
    model: ToyModel = field(default_factory=ToyModel)


@register_task("toy")
class ToyRegression(Task):
    summary = "toy regression for trainer tests"
    config_class = ToyConfig
    monitor = Monitor("mse", "min")
    profiles = {"cpu-small": {"trainer": {"max_epochs": 2}}}

    def __init__(self, config):
        super().__init__(config)
        self._calls = 0
        self._kill_at = int(os.environ.get("MEDSIGHT_TOY_KILL_AT_STEP", "0"))

    def records(self, data, split):
        arrays = np.load(Path(data.root) / "toy.npz")
        n = len(arrays["y"])
        ids = range(0, int(n * 0.75)) if split == "train" else range(int(n * 0.75), n)
        return [{"x": arrays["x"][i], "y": arrays["y"][i:i + 1], "id": str(i)} for i in ids]

    def transforms(self, stage):
        steps = [EnsureTyped(keys=["x", "y"], track_meta=False)]
        if stage == "train":
            steps.append(RandGaussianNoised(keys="x", prob=0.5, std=self.config.data.noise))
        return Compose(steps)

    def build_model(self):
        m = self.config.model
        features = 8
        return nn.Sequential(nn.Linear(features, m.hidden), nn.ReLU(), nn.Dropout(m.dropout), nn.Linear(m.hidden, 1))

    def training_step(self, model, batch):
        self._calls += 1
        if self._kill_at and self._calls == self._kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        prediction = model(batch["x"])
        loss = nn.functional.mse_loss(prediction.float(), batch["y"])
        if self._calls == self.config.model.nan_at_step:
            loss = loss * float("nan")
        return StepOutput(loss=loss, logs={"mae": (prediction - batch["y"]).abs().mean().detach()},
                          batch_size=len(batch["y"]))

    def validation_step(self, model, batch):
        error = (model(batch["x"]).float() - batch["y"]).pow(2).squeeze(-1)
        return {"sq_err": error.cpu().tolist(), "id": list(batch["id"])}

    def validation_metrics(self, outputs):
        return {"mse": float(np.mean(outputs["sq_err"])), "cases": float(len(outputs["id"]))}

    def example_input(self):
        return torch.zeros(1, 8)
