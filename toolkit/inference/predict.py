"""The predict loop: records -> guarded inference transforms -> batches -> the task's network call -> results.

A case that cannot be read or predicted becomes one line in the failures, and the others go on (a batch
``predict`` never stops at a bad case). ``predict_records`` yields each case's ``Result`` (or its failure)
as it comes; ``Model.predict`` keeps them, ``Model.predict_files`` writes them at once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from monai.data import Dataset, decollate_batch

from medsight.core.calibration import mark_review
from medsight.core.progress import progress
from medsight.data.guard import FAILED, GuardedCompose, split_failed
from medsight.data.loading import make_loader
from medsight.errors import MedsightError, unwrap
from medsight.inference.execution import Execution
from medsight.task import Result, Task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Failure:
    """A case that could not be read, predicted or written: ``message`` names it and says why."""

    message: str
    traceback: str | None = None

    def __str__(self) -> str:
        return self.message


@dataclass
class PredictionReport:
    """What ``Model.predict_files`` did: files written, one line per failed input, cases done, seconds."""

    written: list[Path] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    cases: int = 0
    seconds: float = 0.0


def _guarded_collate(collate):
    def collate_fn(items):
        good, bad = split_failed(items)
        return (collate(good) if good else None), bad

    return collate_fn


def predict_records(task: Task, execution: Execution, records: list[dict], batch_size: int | None = None,
                    show_progress: bool = True) -> Iterator[Result | Failure]:
    """Each record's result, in order, or a ``Failure`` naming the case."""
    from monai.data import list_data_collate

    if not records:
        return
    runtime = execution.runtime
    dataset = Dataset(records, GuardedCompose.around(task.transforms("infer"), catch="all"))
    collate = _guarded_collate(task.collate_fn("infer") or list_data_collate)
    size = batch_size or task.predict_batch_size(runtime.device)
    loader = make_loader(dataset, task.config.data, size, shuffle=False, seed=0, collate_fn=collate)
    display = progress(len(records), "predict", task.config.trainer.progress if show_progress else "never",
                       unit="case")
    try:
        # no_grad, not inference_mode: a task may turn autograd back on (Grad-CAM needs it).
        with torch.no_grad():
            for batch, errors in loader:
                for error in errors:
                    display.update(1)
                    yield Failure(error[FAILED], error.get("traceback"))
                if batch is not None:
                    yield from _batch_results(task, execution, batch, display)
    finally:
        display.close()


def _batch_results(task: Task, execution: Execution, batch, display) -> Iterator[Result | Failure]:
    items = decollate_batch(batch, detach=True)
    try:
        with execution.runtime.autocast():
            predictions = task.predict(execution.network, execution.runtime.to_device(batch))
    except Exception as exc:  # the model cannot take this input: those cases fail, the rest go on
        reason = _reason(exc)
        for item in items:
            display.update(1)
            yield Failure(f"{item.get('id', '?')}: {reason}")
        return
    for prediction, item in zip(predictions, items):
        display.update(1)
        try:
            result = task.to_result(prediction, item)
            mark_review(result.quality, task.state.get("review"))
            yield result
        except Exception as exc:  # post-processing this case failed (its library, its geometry): the others go on
            known = unwrap(exc)
            yield Failure(str(known) if known else f"{item.get('id', '?')}: {_reason(exc)}")


def _reason(exc: Exception) -> str:
    known = unwrap(exc)
    return str(known) if known else f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


def write_results(results: Iterator[Result | Failure], writer, report: PredictionReport, debug: bool,
                  table=None) -> None:
    """Write each result as it comes (a writer's failure on one case is that case's failure); ``table``
    (a ``CaseTable``) gathers each written case's quality."""
    import traceback

    for result in results:
        if isinstance(result, Failure):
            report.failures.append(result.message)
            if debug and result.traceback:
                log.error(result.traceback)
            continue
        try:
            report.written.extend(writer.write(result))
            report.cases += 1
            if table is not None:
                table.add(result)
        except MedsightError as exc:
            report.failures.append(str(exc))
        except Exception as exc:  # a writer's library failing on this case: the others go on
            report.failures.append(f"{result.id}: writing failed ({_reason(exc)})")
            if debug:
                log.error(traceback.format_exc())

