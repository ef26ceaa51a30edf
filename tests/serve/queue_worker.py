"""A worker process over a serve folder's queue, for the SIGKILL test: ``python queue_worker.py FOLDER``.

Its jobs make one result each (a fresh SOP-Instance-like UID per try, so a job produced twice would show
as two UIDs) and deliver it to a destination that appends ``job uid`` lines to ``FOLDER/destination.log``
(fsynced), as a PACS stores what it received. It runs the queue's own ``run_job`` in the server's
``Workers`` and exits when no job is pending."""

from __future__ import annotations

import os
import random
import sys
import time
import uuid
from pathlib import Path

from medsight.serve.queue import JobQueue, Retry
from medsight.serve.workers import Workers, run_job


class LogDestination:
    name = "log"

    def __init__(self, path: Path):
        self.path = path

    def send(self, path: Path) -> None:
        time.sleep(random.uniform(0, 0.01))
        job, uid = Path(path).read_text().split()
        with open(self.path, "a") as handle:
            handle.write(f"{job} {uid}\n")
            handle.flush()
            os.fsync(handle.fileno())


def produce(folder: Path, job) -> list[tuple[str, str]]:
    time.sleep(random.uniform(0, 0.02))
    uid = "2.25." + str(uuid.uuid4().int)
    path = folder / "results" / f"{job.id}.txt"
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"{job.id} {uid}")
    return [(uid, str(path))]


def main(folder: Path) -> None:
    queue = JobQueue(folder, Retry(max_attempts=50, backoff_s=0.01))
    queue.recover()
    destination = LogDestination(folder / "destination.log")
    workers = Workers(queue, lambda job: run_job(queue, job, lambda j: produce(folder, j), [destination]),
                      count=2, poll_s=0.005).start()
    print("started", flush=True)
    while queue.pending():
        time.sleep(0.01)
    workers.stop()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
