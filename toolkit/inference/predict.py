"""The predict loop: records -> guarded inference transforms -> batches -> the task's network call -> results.

A case that cannot be read or predicted becomes one line in the failures, and the others go on (a batch
``predict`` never stops at a bad case). ``predict_records`` yields each case's ``Result`` (or its failure)
as it comes; ``Model.predict`` keeps them, ``Model.predict_files`` writes them at once.

Over many inputs the time around the network is hidden behind it: the next batches are read and preprocessed by
a background thread while the network runs (``read_ahead``), and results are written by another
(``write_results``), with at most ``data.in_flight`` batches on either side of the network. Reading, decoding,
resampling and compressing spend their time in C libraries that release the GIL. Threads change no
computation: the outputs are those of one case at a time.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from monai.data import Dataset, decollate_batch

from medsight.core.calibration import mark_review
from medsight.core.progress import progress
from medsight.core.runtime import release_free_memory
from medsight.data.guard import FAILED, GuardedCompose, split_failed
from medsight.data.loading import make_loader
from medsight.errors import MedsightError, unwrap
from medsight.inference.execution import Execution
from medsight.task import Result, Task

#: batch key: an input's out-of-distribution facts measured where it was read (``medsight.inference.domain``),
#: as JSON, handed to the domain screen with its result
FACTS = "domain_facts"

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
    ahead = in_flight(task) if len(records) > size else 0  # one batch: nothing to overlap
    try:
        # no_grad, not inference_mode: a task may turn autograd back on (Grad-CAM needs it).
        with torch.no_grad():
            for batch, errors in read_ahead(loader, ahead):
                for error in errors:
                    display.update(1)
                    yield Failure(error[FAILED], error.get("traceback"))
                if batch is not None:
                    yield from _batch_results(task, execution, batch, display)
    finally:
        display.close()


def in_flight(task: Task) -> int:
    """``data.in_flight``: batches read ahead of the network, and results waiting to be written (0: none)."""
    return max(0, int(getattr(task.config.data, "in_flight", 0)))


def _one_thread() -> None:
    """A helper thread's own PyTorch operations run on one thread (the setting is per thread): the network keeps
    every core's OpenMP thread, which a second team of threads would fight (DenseNet121 on 2 cores: 0.069 s a
    picture alone, 0.092 s beside a reader running MONAI's transforms on two threads)."""
    torch.set_num_threads(1)


def read_ahead(iterable: Iterable, depth: int) -> Iterator:
    """The items of ``iterable``, made by one background thread at most ``depth`` items ahead of the consumer
    (``depth`` 0: made here, one at a time). An exception while making an item is raised here, at that item."""
    if depth <= 0:
        yield from iterable
        return
    iterator, end = iter(iterable), object()
    with ThreadPoolExecutor(1, thread_name_prefix="medsight-read", initializer=_one_thread) as pool:  # in order
        pending = deque(pool.submit(next, iterator, end) for _ in range(depth))
        try:
            while pending:
                item = pending.popleft().result()
                if item is end:
                    return
                pending.append(pool.submit(next, iterator, end))
                yield item
        finally:
            for future in pending:
                future.cancel()


def _batch_results(task: Task, execution: Execution, batch, display) -> Iterator[Result | Failure]:
    items = decollate_batch(batch, detach=True)
    if task.windowed:  # what reading and preprocessing a whole volume freed, handed back before the network runs
        release_free_memory()
    try:
        with execution.runtime.autocast():
            predictions = task.predict(execution.network, execution.runtime.to_device(batch, not task.windowed))
    except Exception as exc:  # the model cannot take this input: those cases fail, the rest go on
        reason = _reason(exc)
        for item in items:
            display.update(1)
            yield Failure(f"{item.get('id', '?')}: {reason}")
        return
    if task.spends_inputs:
        _free_voxels(batch, items)
    for prediction, item in zip(predictions, items):
        display.update(1)
        try:
            result = task.to_result(prediction, item)
            mark_review(result.quality, task.state.get("review"))
            if FACTS in item:  # measured where the input was read: judged by the domain screen
                result.quality[FACTS] = item[FACTS]
            yield result
        except Exception as exc:  # post-processing this case failed (its library, its geometry): the others go on
            known = unwrap(exc)
            yield Failure(str(known) if known else f"{item.get('id', '?')}: {_reason(exc)}")


def _free_voxels(batch: dict, items: list[dict]) -> None:
    """The batch's tensors freed (set to None in place: the caller's reference goes too) and each item's
    images kept as empty MetaTensors with their metadata and transform trace, all the inversion reads; the
    freed memory handed back to the system."""
    from monai.data import MetaTensor

    for item in items:
        for key, value in item.items():
            if isinstance(value, MetaTensor) and value.numel():
                item[key] = MetaTensor(torch.empty(0, dtype=value.dtype), meta=value.meta,
                                       applied_operations=value.applied_operations)
    if isinstance(batch, dict):
        for key, value in batch.items():
            if isinstance(value, torch.Tensor):
                batch[key] = None
    release_free_memory()  # the freed input and the network's buffers, before the full-grid inversion


def _reason(exc: Exception) -> str:
    known = unwrap(exc)
    return str(known) if known else f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


def write_results(results: Iterator[Result | Failure], writer, report: PredictionReport, debug: bool,
                  table=None, behind: int = 0) -> None:
    """Write each result as it comes (a writer's failure on one case is that case's failure); ``table``
    (a ``CaseTable``) gathers each written case's quality. ``behind`` > 0: one background thread writes, while
    the next results are computed, with at most ``behind`` results waiting for it (each holds its arrays)."""
    pending: deque[tuple[Result, Future]] = deque()
    with (ThreadPoolExecutor(1, thread_name_prefix="medsight-write", initializer=_one_thread) if behind > 0
          else nullcontext()) as pool:
        for result in results:
            if isinstance(result, Failure):
                report.failures.append(result.message)
                if debug and result.traceback:
                    log.error(result.traceback)
                continue
            if pool is None:
                _settle(result, lambda r=result: writer.write_case(r), report, debug, table)
                continue
            pending.append((result, pool.submit(writer.write_case, result)))
            while len(pending) > behind:
                _settle(*pending.popleft(), report, debug, table)
        while pending:  # every accepted result is written before the writer finishes, even after an error here
            _settle(*pending.popleft(), report, debug, table)


def _settle(result: Result, written, report: PredictionReport, debug: bool, table) -> None:
    """One result's write (a ``Future`` or a call) into the report."""
    import traceback

    try:
        report.written.extend(written.result() if isinstance(written, Future) else written())
        report.cases += 1
        if table is not None:
            table.add(result)
    except MedsightError as exc:
        report.failures.append(str(exc))
    except Exception as exc:  # a writer's library failing on this case: the others go on
        report.failures.append(f"{result.id}: writing failed ({_reason(exc)})")
        if debug:
            log.error(traceback.format_exc())

