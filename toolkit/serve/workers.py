"""Worker threads that take jobs from the queue, and the order of one job's steps that makes delivery
exactly once: produce the results and record them (with their SOP Instance UIDs), then send each result
to each destination that has no record of it, recording each success. A crash anywhere repeats at most
the one send whose success was not yet recorded, with the same SOP Instance UID, which a PACS stores once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from medsight.serve.queue import Job, JobQueue

log = logging.getLogger("medsight.serve")


class Permanent(Exception):
    """A failure that another try cannot mend (a bad input, no rule for it): dead-lettered at once."""


class Destination(Protocol):
    """Where results go: ``send(path)`` stores one file or raises; a destination may also have
    ``send_all(items, stored)``: each (SOP Instance UID, file) in order over one connection, ``stored(uid)``
    called after each success, raising at the first failure (what was stored before it stays recorded)."""

    name: str

    def send(self, path: Path) -> None: ...


def send_all(destination: Destination, items: Sequence[tuple[str, Path]], stored: Callable[[str], None]) -> None:
    if hasattr(destination, "send_all"):
        destination.send_all(items, stored)
        return
    for uid, path in items:
        destination.send(path)
        stored(uid)


def run_job(queue: JobQueue, job: Job, produce: Callable[[Job], list[tuple[str, str]]],
            destinations: Sequence[Destination]) -> None:
    """One try of ``job``: its results (made once, by ``produce``: (SOP Instance UID, file) pairs), then
    every delivery not yet recorded, one connection per destination. Raises what failed; the caller records it."""
    if not queue.produced(job.id):
        queue.record_results(job.id, produce(job))
    for destination in destinations:
        missing = [(uid, Path(path)) for uid, path in queue.results(job.id)
                   if not queue.delivered(destination.name, uid)]
        if missing:
            send_all(destination, missing, lambda uid, name=destination.name: queue.record_delivery(name, uid, job.id))
    queue.finish(job.id)


class Workers:
    """``count`` threads running ``process(job)`` on claimed jobs until ``stop()``; a job whose ``process``
    raises is failed (retried with back-off) or, for ``Permanent``, dead-lettered."""

    def __init__(self, queue: JobQueue, process: Callable[[Job], None], count: int = 1, poll_s: float = 0.05,
                 on_done: Callable[[Job, str, float], None] | None = None):
        self.queue, self.process, self.poll_s = queue, process, poll_s
        self.on_done = on_done or (lambda job, state, seconds: None)
        self._stop = threading.Event()
        self.threads = [threading.Thread(target=self._loop, name=f"medsight-worker-{k}", daemon=True)
                        for k in range(count)]

    def start(self) -> Workers:
        for thread in self.threads:
            thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        for thread in self.threads:
            thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            job = self.queue.claim()
            if job is None:
                self._stop.wait(self.poll_s)
                continue
            self.run_one(job)

    def run_one(self, job: Job) -> str:
        started = time.perf_counter()
        try:
            self.process(job)
            state = "done"
        except Permanent as exc:
            state = self.queue.fail(job.id, str(exc), retry=False)
        except Exception as exc:  # noqa: BLE001  (any failure of one job is recorded; the worker goes on)
            state = self.queue.fail(job.id, _one_line(exc))
        seconds = time.perf_counter() - started
        if state == "done":
            log.info(f"job {job.id}: done in {seconds:.1f} s")
        else:
            log.warning(f"job {job.id}: {state} (try {job.attempts}): {self.queue.get(job.id).reason}")
        self.on_done(job, state, seconds)
        return state


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
