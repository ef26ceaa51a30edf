"""``Model.evaluate``: a task's validation over a split of a dataset, with its per-case rows and files."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from medsight.core.calibration import calibration_metrics
from medsight.data.loading import make_dataset
from medsight.errors import DataError
from medsight.inference.execution import Execution
from medsight.inference.validation import run_validation
from medsight.io.pictures import reliability_png
from medsight.io.writers import write_json
from medsight.task import Task


@dataclass
class Evaluation:
    """``metrics`` (the task's validation metrics), ``cases`` (one row per case), the split, and where the
    evaluation files went (``out``; None when none were asked for)."""

    metrics: dict[str, float]
    cases: list[dict] = field(default_factory=list)
    split: str = ""
    seconds: float = 0.0
    out: Path | None = None
    #: the task's validation outputs, per case (what the metrics were computed from: cross-validation pools them)
    outputs: dict = field(default_factory=dict, repr=False)


def evaluate(task: Task, execution: Execution, data: Path, split: str, out: Path | None, checkpoint: Path):
    """Metrics of ``task``'s model (run by ``execution``) on ``split`` of ``data``; with ``out``, also
    ``metrics.json`` and the task's evaluation files there."""
    records = task.records(task.open_data(data), split)
    if not records:
        raise DataError(f"no records in split {split!r}", data)
    dataset = make_dataset(records, task.transforms("val"), task.config.data, None, cache=False)
    started = time.perf_counter()
    outputs = run_validation(task, execution.network, dataset, task.config, execution.runtime,
                             desc=f"evaluate {split}")
    metrics = task.validation_metrics(outputs)
    samples = task.calibration_samples(outputs)
    affine = task.calibration or None
    if samples:  # ECE and Brier as the network gives them and, where fitted, after calibration
        metrics.update(calibration_metrics(samples, affine))
    seconds = time.perf_counter() - started
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_json({"checkpoint": str(checkpoint), "data": str(data), "split": split, "cases": len(records),
                    "engine": execution.engine, "seconds": round(seconds, 2), "metrics": metrics},
                   out / "metrics.json")
        task.write_evaluation(outputs, metrics, out)
        if samples:
            reliability_png(samples, out / "reliability.png", affine, f"reliability on {split}",
                            task.state.get("calibration_method"))
    return Evaluation(metrics, task.case_rows(outputs), split, seconds, out, outputs)
