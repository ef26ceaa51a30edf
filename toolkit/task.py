"""The task protocol: what a task plugin owns, and what it never touches.

A task owns its default config and profiles, the dataset formats it reads, its transforms per
stage, ``build_model()``, the training step (loss + values to log), validation outputs and
metrics (and which metric picks the best checkpoint, in which direction), inference,
post-processing and writing. It never moves tensors between devices, never calls ``backward()``,
never builds optimizers and never touches AMP or DDP: the trainer and the runtime do.

    @register_task("segmentation")
    class BrainTumourSegmentation(Task):
        config_class = SegmentationConfig
        def records(self, data, split): ...
        def transforms(self, stage): ...
        def build_model(self): ...
        def training_step(self, model, batch) -> StepOutput: ...
        def validation_step(self, model, batch) -> dict[str, list]: ...
        def validation_metrics(self, outputs) -> dict[str, float]: ...
        def input_record(self, inputs) -> dict: ...
        def predict(self, model, batch): ...
        def write(self, prediction, data, out) -> list[Path]: ...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from medsight.config import TaskConfig

Stage = Literal["train", "val", "infer"]
Split = Literal["train", "val", "test", "all"]


@dataclass
class StepOutput:
    """What a training step returns: the loss to minimise and values to log (floats or 0-d tensors)."""

    loss: torch.Tensor
    logs: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 1


@dataclass(frozen=True)
class Monitor:
    """The validation metric that selects the best checkpoint and drives early stopping."""

    metric: str
    mode: Literal["max", "min"] = "max"

    def better(self, value: float, best: float | None) -> bool:
        if best is None:
            return True
        return value > best if self.mode == "max" else value < best


@dataclass(frozen=True)
class DemoSpec:
    """How ``medsight demo`` runs a task: which synthetic data, which profile and overrides."""

    dataset: str
    synth: dict = field(default_factory=dict)
    profile: str = "cpu-small"
    overrides: tuple[str, ...] = ()
    #: smaller data and shorter training for ``demo --quick`` (tests)
    quick_synth: dict = field(default_factory=dict)
    quick_overrides: tuple[str, ...] = ()
    predict_args: tuple[str, ...] = ()
    #: override sets the contract test runs one by one (e.g. each model family)
    variants: tuple[tuple[str, ...], ...] = ((),)
    #: the split ``medsight demo`` evaluates (held-out data); None = the task's evaluate_split
    evaluate_split: str | None = None
    #: printed under the task's heading: what this short run can and cannot show
    note: str = ""


class Task:
    name: ClassVar[str]
    summary: ClassVar[str] = ""
    config_class: ClassVar[type[TaskConfig]] = TaskConfig
    #: named partial configs (nested dicts), e.g. "cpu-small" and "gpu"
    profiles: ClassVar[dict[str, dict]] = {}
    #: dataset format names this task reads
    datasets: ClassVar[tuple[str, ...]] = ()
    models: ClassVar[tuple[str, ...]] = ()
    monitor: ClassVar[Monitor] = Monitor("loss", "min")
    demo: ClassVar[DemoSpec | None] = None
    #: the split ``medsight evaluate`` uses when none is given
    evaluate_split: ClassVar[str] = "test"
    #: DDP: set when some parameters get no gradient in some steps
    find_unused_parameters: ClassVar[bool] = False

    def __init__(self, config: TaskConfig):
        self.config = config
        #: values learnt from data that inference needs (label names, thresholds...): saved in checkpoints
        self.state: dict[str, Any] = {}
        #: True while training: ``validation_metrics`` may then update ``state`` (e.g. choose thresholds on
        #: validation). ``evaluate``/``predict`` set it False: they use the checkpoint's state unchanged.
        self.learning = True

    # -- data -------------------------------------------------------------------------------------
    def records(self, data: Path, split: Split) -> list[dict]:
        raise NotImplementedError

    def transforms(self, stage: Stage) -> Callable:
        raise NotImplementedError

    def collate_fn(self, stage: Stage) -> Callable | None:
        """Batch collation; None means MONAI's ``list_data_collate``."""
        return None

    def on_fit_start(self, train_records: list[dict], val_records: list[dict]) -> None:
        """Learn what the data say before training (class weights, label order...) into ``self.state``."""

    def train_sample_weights(self, records: list[dict]) -> list[float] | None:
        """Relative chance of drawing each training record (a weighted sampler, with replacement,
        ``len(records)`` draws per epoch); None shuffles every record once per epoch."""
        return None

    # -- model ------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def training_step(self, model: nn.Module, batch: Any) -> StepOutput:
        raise NotImplementedError

    def validation_step(self, model: nn.Module, batch: Any) -> dict[str, list]:
        """Per-sample outputs (plain Python/numpy values), gathered over batches and ranks."""
        raise NotImplementedError

    def validation_metrics(self, outputs: dict[str, list]) -> dict[str, float]:
        """Metrics from all validation outputs; may update ``self.state`` (e.g. thresholds) when
        ``self.learning`` is True."""
        raise NotImplementedError

    def write_evaluation(self, outputs: dict[str, list], metrics: dict[str, float], out: Path) -> list[Path]:
        """Files for ``medsight evaluate`` (per-case tables, curves). Default: none."""
        return []

    # -- inference --------------------------------------------------------------------------------
    def input_records(self, path: str | None, images: dict[str, str] | None = None) -> list[dict]:
        """Records for one command-line input (a file, or a folder of files or of one case), or for
        explicit ``role=file`` images. Raise ``DataError`` naming the file for a bad input."""
        raise NotImplementedError

    def predict_batch_size(self, device: torch.device) -> int:
        """Items per ``predict`` batch on ``device`` (``medsight predict --batch-size`` overrides it)."""
        return self.config.data.val_batch_size

    def predict(self, model: nn.Module, batch: Any) -> list[Any]:
        """One prediction per item of ``batch`` (already on the device, inside autocast)."""
        raise NotImplementedError

    def write(self, prediction: Any, data: dict, out: Path) -> list[Path]:
        """Post-process one item (``data``: its de-collated, CPU inputs with metadata) and write it."""
        raise NotImplementedError

    def finish_predictions(self, out: Path) -> list[Path]:
        """Files that sum up a whole prediction run (e.g. one CSV for all images). Default: none."""
        return []

    def example_input(self) -> torch.Tensor:
        """A batch-of-one input for export (TorchScript/ONNX)."""
        raise NotImplementedError

    def export_module(self, model: nn.Module) -> nn.Module:
        """The module ``medsight export`` traces. Default: the model itself; a task whose model has
        untraceable post-processing (e.g. a detector's NMS) returns its network here."""
        return model

    @classmethod
    def demo_inputs(cls, data: Path) -> list[str]:
        """Inputs ``medsight demo`` predicts on, from the synthetic dataset at ``data``."""
        return []

    # -- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return dict(self.state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = dict(state)
