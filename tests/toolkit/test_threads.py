"""trainer.threads: a number is taken as given; auto leaves the cores other processes keep busy to them."""

import os

import pytest
import torch

from medsight.core import runtime
@pytest.fixture(autouse=True)
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_a_given_number_of_threads_is_taken_as_given():
    assert runtime.set_threads(1) == 1 and torch.get_num_threads() == 1


def test_auto_leaves_busy_cores_to_the_other_processes(monkeypatch):
    monkeypatch.setattr(runtime, "_DEFAULT_THREADS", 4)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(runtime, "busy_cores", lambda interval=0.1: 2.8)  # a neighbour on about 3 cores
    assert runtime.set_threads(None) == 1 and torch.get_num_threads() == 1
    monkeypatch.setattr(runtime, "busy_cores", lambda interval=0.1: 0.9)
    assert runtime.set_threads(None) == 3
    monkeypatch.setattr(runtime, "busy_cores", lambda interval=0.1: 0.1)  # a quiet machine: every core
    assert runtime.set_threads(None) == 4 and torch.get_num_threads() == 4
    # deterministic runs (exact resume) keep one thread per core whatever else runs
    monkeypatch.setattr(runtime, "busy_cores", lambda interval=0.1: 3.5)
    assert runtime.set_threads(None, deterministic=True) == 4


def test_busy_cores_is_measured_from_the_machine():
    busy = runtime.busy_cores(0.05)
    if busy is None:
        pytest.skip("no /proc/stat here")
    assert 0.0 <= busy <= os.cpu_count() + 1e-6


def test_busy_cores_counts_other_processes_over_the_start_up_time(monkeypatch):
    """Measured from the previous sample (import) to now, less this process's own CPU time; no sleep
    when that window is long enough, a fresh window when it is too short or stale."""
    import time

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    slept = []
    monkeypatch.setattr(time, "sleep", slept.append)
    # (idle, total, own CPU s, clock): 2 cores over 1 s = 2 CPU s; 0.5 idle; this process used 1.0
    monkeypatch.setattr(runtime, "_LAST_SAMPLE", (10.0, 100.0, 5.0, 50.0))
    monkeypatch.setattr(runtime, "_cpu_times", lambda: (10.5, 102.0, 6.0, 51.0))
    assert runtime.busy_cores() == pytest.approx(0.5) and not slept  # 1.5 busy - 1.0 ours = 0.5 of 2 CPU s
    samples = iter([(10.5, 102.0, 6.0, 51.02), (10.6, 102.2, 6.0, 51.12)])  # 20 ms since: too short
    monkeypatch.setattr(runtime, "_cpu_times", lambda: next(samples))
    assert runtime.busy_cores() == pytest.approx(1.0) and slept == [0.1]  # fresh window: 0.1 idle of 0.2
    samples = iter([(11.0, 200.0, 6.0, 200.0), (11.2, 200.2, 6.0, 200.1)])  # a minute since: stale
    monkeypatch.setattr(runtime, "_cpu_times", lambda: next(samples))
    assert runtime.busy_cores() == pytest.approx(0.0) and slept == [0.1, 0.1]
