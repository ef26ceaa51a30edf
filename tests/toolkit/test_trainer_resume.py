"""Exact resume: a run killed with SIGKILL and resumed ends bitwise equal to an uninterrupted one."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from medsight.io import checkpoint
from tests.toy_task import make_toy_data

TOY = Path(__file__).resolve().parents[1] / "toy_train.py"
STEPS_PER_EPOCH = 9  # 72 training records, batch 8
COMMON = ["trainer.max_epochs=4", "trainer.deterministic=true", "trainer.seed=3", "trainer.progress=never",
          "trainer.tensorboard=false", "trainer.threads=1"]


def toy(*args, env_extra=None, timeout=300):
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env_extra or {}))
    return subprocess.run([sys.executable, str(TOY), *args], capture_output=True, text=True, env=env, timeout=timeout)


def weights(run: Path) -> dict:
    return checkpoint.load(run / "checkpoints" / "last.pt")


def assert_bitwise_equal(a: dict, b: dict):
    for part in ("model", "ema"):
        if a.get(part) is None:
            continue
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs"
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    for index in sa:
        for key, value in sa[index].items():
            assert torch.equal(value, sb[index][key]), f"optimizer state {index}.{key} differs"
    assert a["global_step"] == b["global_step"] and a["epoch"] == b["epoch"]


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    return make_toy_data(tmp_path_factory.mktemp("toy") / "data")


@pytest.fixture(scope="module")
def uninterrupted(toy_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("full") / "run"
    result = toy("train", "toy", "--data", str(toy_data), "--out", str(run), *COMMON)
    assert result.returncode == 0, result.stderr[-3000:]
    return weights(run)


def test_sigkill_after_an_epoch_boundary_then_resume_is_bitwise_equal(toy_data, uninterrupted, tmp_path):
    # A varied kill step across runs; MEDSIGHT_TEST_SEED=N reproduces a failing one (the seed is printed).
    seed = int(os.environ.get("MEDSIGHT_TEST_SEED", os.getpid()))
    kill_at = random.Random(seed).randint(STEPS_PER_EPOCH + 1, 3 * STEPS_PER_EPOCH)
    where = f"kill at step {kill_at} (MEDSIGHT_TEST_SEED={seed})"
    print(where)
    run = tmp_path / "run"
    killed = toy("train", "toy", "--data", str(toy_data), "--out", str(run), *COMMON,
                 env_extra={"MEDSIGHT_TOY_KILL_AT_STEP": str(kill_at)})
    assert killed.returncode == -signal.SIGKILL, f"{where}: {killed.stderr[-2000:]}"
    before = weights(run)
    assert before["epoch"] == (kill_at - 1) // STEPS_PER_EPOCH and before["step_in_epoch"] == 0, where
    resumed = toy("train", "toy", "--resume", str(run))
    assert resumed.returncode == 0, f"{where}: {resumed.stderr[-3000:]}"
    assert_bitwise_equal(weights(run), uninterrupted)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len([line for line in lines if '"phase": "train"' in line]) == 4  # no epoch logged twice


def test_sigkill_mid_epoch_with_step_checkpoints_then_resume_is_bitwise_equal(toy_data, tmp_path):
    common = COMMON + ["trainer.checkpoint_every_n_steps=2", "trainer.ema_decay=0.9"]
    full = tmp_path / "full"
    assert toy("train", "toy", "--data", str(toy_data), "--out", str(full), *common).returncode == 0
    run = tmp_path / "run"
    killed = toy("train", "toy", "--data", str(toy_data), "--out", str(run), *common,
                 env_extra={"MEDSIGHT_TOY_KILL_AT_STEP": "15"})
    assert killed.returncode == -signal.SIGKILL
    state = weights(run)
    assert (state["epoch"], state["step_in_epoch"]) == (1, 5)  # global step 14 = epoch 2, step 5
    assert toy("train", "toy", "--resume", str(run / "checkpoints" / "last.pt")).returncode == 0
    assert_bitwise_equal(weights(run), weights(full))


def test_sigterm_finishes_the_step_writes_last_and_exits_143(toy_data, tmp_path):
    run = tmp_path / "run"
    args = ["train", "toy", "--data", str(toy_data), "--out", str(run), "trainer.max_epochs=100000",
            "trainer.progress=never", "trainer.tensorboard=false"]
    process = subprocess.Popen([sys.executable, str(TOY), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    deadline = time.time() + 120
    while not (run / "checkpoints" / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr[-2000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stopped: stopped by SIGTERM in epoch ")
    assert f"continue with: medsight train toy --resume {run}" in lines[0]
    state = checkpoint.load(run / "checkpoints" / "last.pt")
    assert state["global_step"] > 0
    resumed = toy("train", "toy", "--resume", str(run), f"trainer.max_epochs={state['epoch'] + 1}",
                  "trainer.progress=never")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert checkpoint.load(run / "checkpoints" / "last.pt")["epoch"] == state["epoch"] + 1
