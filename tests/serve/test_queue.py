"""The durable queue: states, back-off, dead letters, retry_failed, idempotent deliveries, and a worker
process killed with SIGKILL at random moments that still finishes every job, each delivered with one UID."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from medsight.serve.queue import JobQueue, Retry
from medsight.serve.workers import Permanent, Workers, run_job

HERE = Path(__file__).resolve().parent


class Recorder:
    name = "pacs"

    def __init__(self, fail_times: int = 0):
        self.sent, self.fail_times = [], fail_times

    def send(self, path: Path) -> None:
        if self.fail_times:
            self.fail_times -= 1
            raise ConnectionRefusedError("destination down")
        self.sent.append(Path(path).name)


def test_a_job_goes_received_queued_running_done_and_is_delivered_once(tmp_path):
    queue = JobQueue(tmp_path)
    job_id = queue.receive({"kind": "dicom"})
    assert queue.get(job_id).state == "received" and queue.claim() is None  # not ready while receiving
    queue.enqueue(job_id)
    job = queue.claim()
    assert (job.id, job.state, job.attempts) == (job_id, "running", 1)
    pacs = Recorder()
    run_job(queue, job, lambda j: [("1.2.3", str(tmp_path / "a.dcm")), ("1.2.4", str(tmp_path / "b.dcm"))], [pacs])
    assert queue.get(job_id).state == "done" and pacs.sent == ["a.dcm", "b.dcm"]
    run_job(queue, job, lambda j: pytest.fail("produced twice"), [pacs])  # a repeated run sends nothing again
    assert pacs.sent == ["a.dcm", "b.dcm"] and queue.counts()["done"] == 1


def test_a_destination_down_is_retried_with_back_off_then_dead_lettered_and_retry_failed_requeues(tmp_path):
    queue = JobQueue(tmp_path, Retry(max_attempts=3, backoff_s=0.2))
    job_id = queue.submit({"kind": "http"})
    pacs = Recorder(fail_times=10)
    workers = Workers(queue, lambda job: run_job(queue, job, lambda j: [("9.9", "x.dcm")], [pacs]))
    assert workers.run_one(queue.claim()) == "failed"
    assert queue.claim() is None, "the back-off holds the job back"
    time.sleep(0.25)
    assert workers.run_one(queue.claim()) == "failed"
    time.sleep(0.45)
    assert workers.run_one(queue.claim()) == "dead"
    job = queue.get(job_id)
    assert job.reason == "ConnectionRefusedError: destination down (after 3 tries)"
    pacs.fail_times = 0
    assert queue.retry_failed() == 1 and queue.get(job_id).state == "queued"
    assert workers.run_one(queue.claim()) == "done" and pacs.sent == ["x.dcm"]


def test_a_permanent_failure_is_dead_lettered_at_once_and_the_queue_is_bounded(tmp_path):
    queue = JobQueue(tmp_path, capacity=2)
    first = queue.submit({})
    workers = Workers(queue, lambda job: (_ for _ in ()).throw(Permanent("no routing rule matches")))
    assert workers.run_one(queue.claim()) == "dead" and queue.get(first).reason == "no routing rule matches"
    queue.submit({})
    assert queue.has_room()
    queue.receive({})
    assert not queue.has_room() and queue.pending() == 2


def test_a_job_left_running_by_a_killed_server_is_queued_again_when_the_queue_reopens(tmp_path):
    queue = JobQueue(tmp_path)
    job_id = queue.submit({})
    queue.claim()
    queue.close()
    reopened = JobQueue(tmp_path)
    assert reopened.recover() == 1 and reopened.get(job_id).state == "queued"
    assert reopened.claim().attempts == 2


def test_sigkill_at_random_moments_loses_no_job_and_delivers_each_job_one_result(tmp_path):
    jobs = 150
    queue = JobQueue(tmp_path)
    submitted = {queue.submit({"n": n}) for n in range(jobs)}
    queue.close()
    rng = random.Random(11)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    kills = 0
    for attempt in range(12):
        process = subprocess.Popen([sys.executable, str(HERE / "queue_worker.py"), str(tmp_path)], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert process.stdout.readline().strip() == "started", process.stderr.read()
        if attempt < 5:
            time.sleep(rng.uniform(0.02, 0.15))
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                kills += 1
        if process.wait(timeout=60) == 0:
            break
    assert kills >= 3, "the worker was killed mid-run several times"
    queue = JobQueue(tmp_path)
    assert queue.counts()["done"] == jobs and queue.pending() == 0
    uids = defaultdict(set)
    for line in (tmp_path / "destination.log").read_text().splitlines():
        job, uid = line.split()
        uids[job].add(uid)
    assert set(uids) == submitted, "every accepted job reached the destination"
    assert all(len(v) == 1 for v in uids.values()), "a job never delivers two different results"
    assert {j: {u for u, _ in queue.results(j)} for j in submitted} == dict(uids)
