"""trainer.threads: a number is taken as given; auto leaves the cores other processes keep busy to them.

The machine is a fake one behind psutil and the clock: its cores, the cores other processes keep busy and
the cores this process keeps busy are given, so every expected thread count below is worked out by hand."""

import os
from collections import namedtuple
from types import SimpleNamespace

import pytest
import torch

from medsight.core import runtime

#: psutil.cpu_times() as Linux reports it (guest time is also counted in user)
CpuTimes = namedtuple("scputimes", "user nice system idle iowait irq softirq steal guest guest_nice")


class Machine:
    """``cores`` cores; other processes keep ``others`` of them busy, this process ``ours``; a guest VM
    (``guest`` cores) runs inside the others' time, as Linux counts it."""

    def __init__(self, cores: int, others: float, ours: float = 0.0, guest: float = 0.0):
        self.cores, self.others, self.ours, self.guest = cores, others, ours, guest
        self.clock_s, self.user_s, self.idle_s, self.own_s, self.guest_s = 5000.0, 300.0, 9000.0, 2.0, 0.0
        self.slept: list[float] = []

    def run(self, seconds: float) -> None:
        self.clock_s += seconds
        self.user_s += (self.others + self.ours) * seconds
        self.idle_s += (self.cores - self.others - self.ours) * seconds
        self.own_s += self.ours * seconds
        self.guest_s += self.guest * seconds

    # psutil and time, as runtime calls them
    def cpu_times(self):
        return CpuTimes(self.user_s, 0.0, 0.0, self.idle_s, 0.0, 0.0, 0.0, 0.0, self.guest_s, 0.0)

    def Process(self):
        return SimpleNamespace(cpu_times=lambda: SimpleNamespace(user=self.own_s, system=0.0))

    def monotonic(self) -> float:
        return self.clock_s

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.run(seconds)


@pytest.fixture
def machine(monkeypatch):
    """A 4-core machine (torch's default: 4 threads), no previous sample; tests set its load."""
    fake = Machine(cores=4, others=0.0)
    monkeypatch.setattr(runtime.psutil, "cpu_times", fake.cpu_times)
    monkeypatch.setattr(runtime.psutil, "Process", fake.Process)
    monkeypatch.setattr(runtime, "time", SimpleNamespace(monotonic=fake.monotonic, sleep=fake.sleep))
    monkeypatch.setattr(os, "cpu_count", lambda: fake.cores)
    monkeypatch.setattr(runtime, "_DEFAULT_THREADS", 4)
    monkeypatch.setattr(runtime, "_LAST_SAMPLE", None)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    return fake


@pytest.fixture(autouse=True)
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_a_given_number_of_threads_is_taken_as_given():
    assert runtime.set_threads(1) == 1 and torch.get_num_threads() == 1
    assert runtime.set_threads(3) == 3 and torch.get_num_threads() == 3


@pytest.mark.parametrize("others, ours, expected", [
    (2.8, 0.2, 1),  # 4 - 2.8 = 1.2 cores free -> 1 thread
    (0.9, 1.0, 3),  # 3.1 free: our own busy core is ours to use, not another process's
    (0.1, 0.0, 4),  # a quiet machine: every core
    (3.9, 0.1, 1),  # 0.1 free: still one thread
    (1.6, 0.0, 2),  # 2.4 free -> 2
])
def test_auto_leaves_the_cores_other_processes_keep_busy(machine, others, ours, expected):
    machine.others, machine.ours = others, ours
    assert runtime.set_threads(None) == expected
    assert torch.get_num_threads() == expected


def test_guest_time_is_not_counted_twice(machine):
    machine.others, machine.guest = 1.0, 1.0  # the one busy core runs a VM: 1 busy, 3 free
    assert runtime.busy_cores() == pytest.approx(1.0)
    machine.run(1.0)
    assert runtime.set_threads(None) == 3


def test_deterministic_runs_and_omp_num_threads_keep_torchs_default(machine, monkeypatch):
    machine.others = 3.5  # would leave 1 thread
    assert runtime.set_threads(None, deterministic=True) == 4 and torch.get_num_threads() == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert runtime.set_threads(None) == 4
    assert machine.slept == [], "nothing measured"


def test_busy_cores_counts_other_processes_over_the_start_up_time(machine):
    """Measured from the previous sample (import) to now, less this process's own CPU time; no sleep
    when that window is long enough, a fresh window when it is too short or stale."""
    machine.cores, machine.others, machine.ours = 2, 0.5, 1.0
    assert runtime.busy_cores() == pytest.approx(0.5) and machine.slept == [0.1]  # no previous sample
    machine.slept.clear()
    machine.run(1.0)  # a second of start-up
    assert runtime.busy_cores() == pytest.approx(0.5) and machine.slept == []
    machine.others = 0.0
    machine.run(0.02)  # 20 ms since: too short to tell, so a fresh 0.1 s window, under the new load
    machine.others = 1.5
    assert runtime.busy_cores() == pytest.approx(1.5) and machine.slept == [0.1]
    machine.others = 0.0
    machine.run(60.0)  # a minute since: stale
    machine.others = 1.0
    assert runtime.busy_cores() == pytest.approx(1.0) and machine.slept == [0.1, 0.1]


def test_busy_cores_is_unknown_where_psutil_cannot_tell(machine, monkeypatch):
    def unreadable():
        raise PermissionError("/proc/stat")

    monkeypatch.setattr(runtime.psutil, "cpu_times", unreadable)
    assert runtime.busy_cores() is None
    assert runtime.set_threads(None) == 4
