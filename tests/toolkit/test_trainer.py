"""The trainer with the toy task: DDP, config errors, checkpoint safety, failures, options."""

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from medsight.io import checkpoint
from medsight.core.config import TaskConfig, resolve
from medsight.data.loading import partition
from medsight.errors import CheckpointError, ConfigError, TaskError
from medsight.core.registry import TASKS, register_task
from medsight.task import Task
from tests.toy_task import make_toy_data

from .test_trainer_resume import TOY, toy

QUIET = ["trainer.progress=never", "trainer.tensorboard=false"]


@pytest.fixture
def toy_here(capsys):
    """``tests/toy_train.py ARGS`` in this process (the toy task is registered by importing tests.toy_task):
    what a subprocess would return and print, without its seconds of start-up. Tests of signals, kills and
    several processes keep ``toy``."""
    from types import SimpleNamespace

    from medsight.cli.main import main

    def run(*args: str) -> SimpleNamespace:
        capsys.readouterr()
        status = main(list(args))
        printed = capsys.readouterr()
        return SimpleNamespace(returncode=status, stdout=printed.out, stderr=printed.err)

    return run


def free_port() -> int:
    """A TCP port nobody listens on now (for torchrun's rendezvous): parallel test runs do not collide."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    return make_toy_data(tmp_path_factory.mktemp("toy") / "data", samples=128)


def final_val_mse(run: Path) -> float:
    lines = [line for line in (run / "metrics.jsonl").read_text().splitlines() if '"phase": "val"' in line]
    import json

    return json.loads(lines[-1])["mse"]


def test_two_process_ddp_on_gloo_matches_one_process(toy_data, tmp_path):
    """Full-batch steps make the runs mathematically equal: DDP averages the gradients of two half
    batches (48 records per rank) into the gradient of the single process's batch of 96. Stated
    tolerance: final validation MSE and weights equal to 1e-4 relative (float32 summation order)."""
    common = ["trainer.max_epochs=30", "trainer.seed=1", "optim.lr=0.05", "model.dropout=0", "data.noise=0",
              *QUIET]
    single = tmp_path / "single"
    assert toy("train", "toy", "--data", str(toy_data), "--out", str(single), "data.batch_size=96",
               *common).returncode == 0
    ddp = tmp_path / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
                str(TOY), "train", "toy", "--data", str(toy_data), "--out", str(ddp), "data.batch_size=48", *common]
    result = subprocess.run(torchrun, capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "DDP 2 processes (gloo)" in result.stdout
    one, two = final_val_mse(single), final_val_mse(ddp)
    assert one < 1.0  # it learnt something
    assert abs(one - two) <= 1e-4 * one, (one, two)
    a = checkpoint.load(single / "checkpoints" / "last.pt")["model"]
    b = checkpoint.load(ddp / "checkpoints" / "last.pt")["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)
    assert result.stdout.count("done: 30 epochs") == 1  # rank 0 alone reports and writes
    lines = (ddp / "metrics.jsonl").read_text().splitlines()
    assert len([line for line in lines if '"phase": "val"' in line]) == 30
    import json

    # The validation metric covers every validation record once, gathered from both ranks.
    assert json.loads(lines[-1])["cases"] == 32.0


def test_partition_splits_records_across_ranks_without_duplicates():
    records = [{"id": i} for i in range(11)]
    train = [partition(records, rank, 3, seed=0, train=True) for rank in range(3)]
    seen = [r["id"] for shard in train for r in shard]
    assert len(seen) == len(set(seen)) == 9 and all(len(shard) == 3 for shard in train)
    val = [partition(records, rank, 3, seed=0, train=False) for rank in range(3)]
    assert sorted(r["id"] for shard in val for r in shard) == list(range(11))
    from medsight.errors import DataError

    with pytest.raises(DataError, match="2 training record\\(s\\) for 3 processes: each rank needs at least one"):
        partition(records[:2], 0, 3, seed=0, train=True)


@pytest.mark.parametrize("override, message", [
    ("trainer.max_epoch=5", "error: config: unknown key trainer.max_epoch (did you mean trainer.max_epochs?)"),
    ("trainer.max_epochs=five", "error: config: trainer.max_epochs: Value 'five' of type 'str' could not be "
                                "converted to Integer"),
    ("trainer.precision=half", "error: config: trainer.precision='half' is not one of fp32, bf16, fp16, auto"),
    ("optim.name=adam", "error: config: optim.name='adam' is not one of adamw, sgd (did you mean adamw?)"),
])
def test_config_errors_are_one_clear_line(toy_data, tmp_path, override, message, toy_here):
    result = toy_here("train", "toy", "--data", str(toy_data), "--out", str(tmp_path / "run"), override)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [message]


def test_config_file_and_profile_and_overrides_merge_in_order(tmp_path):
    from tests.toy_task import ToyConfig

    path = tmp_path / "c.yaml"
    path.write_text("trainer:\n  max_epochs: 7\n  seed: 5\noptim:\n  lr: 0.5\n")
    config = resolve(ToyConfig, profile={"trainer": {"max_epochs": 2, "seed": 9}}, files=[path],
                     overrides=["trainer.seed=11"])
    assert (config.trainer.max_epochs, config.trainer.seed, config.optim.lr) == (7, 11, 0.5)
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_epocs: 7\n")
    with pytest.raises(ConfigError) as error:
        resolve(ToyConfig, files=[bad])
    assert str(error.value) == f"{bad}: unknown key trainer.max_epocs (did you mean trainer.max_epochs?)"


def test_resolved_config_is_written_and_stored_in_checkpoints(toy_data, tmp_path, toy_here):
    run = tmp_path / "run"
    assert toy_here("train", "toy", "--data", str(toy_data), "--out", str(run), "trainer.max_epochs=1", "optim.lr=0.0042",
               *QUIET).returncode == 0
    assert "lr: 0.0042" in (run / "config.yaml").read_text()
    state = checkpoint.load(run / "checkpoints" / "best.pt")
    assert state["config"]["optim"]["lr"] == 0.0042 and state["task"] == "toy"
    assert {"format", "model", "optimizer", "scheduler", "rng", "medsight_version", "progress"} <= set(state)
    assert "sampler" not in state  # format 2: the entry nobody read is gone


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_planted_malicious_checkpoint_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    Payload.marker = marker
    path = tmp_path / "evil.pt"
    torch.save({"format": checkpoint.FORMAT, "model": Payload()}, path)
    with pytest.raises(CheckpointError) as error:
        checkpoint.load(path)
    assert "refused: loading this checkpoint would need arbitrary unpickling" in str(error.value)
    assert not marker.exists()
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CheckpointError):
        checkpoint.load(plain)
    assert not marker.exists()


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "last.pt"
    checkpoint.save({"model": {"w": torch.ones(1000)}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as error:
        checkpoint.load(path)
    assert str(error.value).startswith(f"{path}: damaged or truncated checkpoint")


SAVER = textwrap.dedent("""
    import sys, torch
    from medsight.io import checkpoint
    path, n = sys.argv[1], 0
    while True:
        n += 1
        checkpoint.save({"model": {"w": torch.full((400_000,), float(n))}, "n": n}, path)
        print(n, flush=True)
""")


def test_a_kill_during_saving_never_leaves_a_damaged_last_pt(tmp_path):
    path = tmp_path / "last.pt"
    script = tmp_path / "saver.py"
    script.write_text(SAVER)
    seen = []
    for attempt in range(8):
        process = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True)
        process.stdout.readline()  # at least one complete save happened
        time.sleep(0.05 + 0.037 * attempt)  # kill at varied moments, mostly mid-save
        process.send_signal(signal.SIGKILL)
        process.wait()
        state = checkpoint.load(path)
        n = state["n"]
        assert torch.all(state["model"]["w"] == float(n))
        seen.append(n)
    assert len(set(seen)) > 1  # the kills did land at different points


def test_non_finite_loss_stops_naming_epoch_and_step_and_keeps_last_good_checkpoint(toy_data, tmp_path, toy_here):
    run = tmp_path / "run"
    result = toy_here("train", "toy", "--data", str(toy_data), "--out", str(run), "trainer.max_epochs=3",
                 "model.nan_at_step=16", *QUIET)  # 12 steps per epoch: step 4 of epoch 2
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    # checked every trainer.log_every_n_steps (10) optimizer steps, not at every step
    assert line.startswith("error: training: non-finite loss in epoch 2 (optimizer steps 13-20; checked every "
                           "trainer.log_every_n_steps); the last good checkpoint is")
    state = checkpoint.load(run / "checkpoints" / "last.pt")
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_non_finite_loss_can_be_skipped(toy_data, tmp_path, toy_here):
    run = tmp_path / "run"
    result = toy_here("train", "toy", "--data", str(toy_data), "--out", str(run), "trainer.max_epochs=2",
                 "model.nan_at_step=5", "trainer.nonfinite_loss=skip", *QUIET)
    assert result.returncode == 0, result.stderr
    state = checkpoint.load(run / "checkpoints" / "last.pt")
    assert state["progress"]["skipped_batches"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_early_stopping_stops_after_patience_validations_without_improvement(toy_data, tmp_path, toy_here):
    run = tmp_path / "run"
    result = toy_here("train", "toy", "--data", str(toy_data), "--out", str(run), "trainer.max_epochs=20",
                 "trainer.early_stopping_patience=2", "optim.lr=1e-30", "model.dropout=0", "data.noise=0", *QUIET)
    assert result.returncode == 0, result.stderr
    assert "early stopping: mse has not improved for 2 validations" in result.stdout
    assert checkpoint.load(run / "checkpoints" / "last.pt")["epoch"] == 3
    assert checkpoint.load(run / "checkpoints" / "best.pt")["epoch"] == 1


def test_accumulation_ema_warmup_bf16_channels_last_and_tensorboard(toy_data, tmp_path, toy_here):
    run = tmp_path / "run"
    result = toy_here("train", "toy", "--data", str(toy_data), "--out", str(run), "trainer.max_epochs=2",
                 "trainer.accumulate_grad_batches=3", "trainer.ema_decay=0.5", "trainer.precision=bf16",
                 "trainer.channels_last=true", "trainer.grad_clip_norm=1.0", "optim.warmup_epochs=1",
                 "optim.scheduler=poly", "optim.name=sgd", "trainer.progress=never")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "precision bf16, channels-last" in result.stdout
    state = checkpoint.load(run / "checkpoints" / "last.pt")
    assert state["global_step"] == 2 * 4  # 12 batches per epoch / 3 accumulated
    ema = {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
    assert any(not torch.equal(ema[k], state["model"][k]) for k in state["model"])
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))


def test_existing_run_folder_is_not_overwritten(toy_data, tmp_path, toy_here):
    run = tmp_path / "run"
    assert toy_here("train", "toy", "--data", str(toy_data), "--out", str(run), "trainer.max_epochs=1", *QUIET).returncode == 0
    before = (run / "checkpoints" / "last.pt").read_bytes()
    again = toy_here("train", "toy", "--data", str(toy_data), "--out", str(run), "trainer.max_epochs=1", *QUIET)
    assert again.returncode == 2 and "already holds a checkpoint" in again.stderr
    assert (run / "checkpoints" / "last.pt").read_bytes() == before


def test_duplicate_task_name_raises():
    class Other(Task):
        config_class = TaskConfig

    TASKS.get("toy")
    with pytest.raises(TaskError, match="task 'toy' is registered twice"):
        register_task("toy")(Other)


def test_a_separate_package_adds_a_task_through_the_entry_point(tmp_path):
    (tmp_path / "extra_task.py").write_text(textwrap.dedent("""
        from medsight.task import Task
        class ExtraTask(Task):
            summary = "a task from another package"
            models = ("none",)
    """))
    info = tmp_path / "extra_task-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: extra-task\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[medsight.tasks]\nextra = extra_task:ExtraTask\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    result = subprocess.run([sys.executable, "-m", "medsight", "tasks"], capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "extra            a task from another package" in result.stdout


@pytest.mark.parametrize("log_every, expected", [(1, 24 + 2), (4, 6 + 2), (100, 0 + 2)])
def test_the_trainer_reads_the_device_once_per_log_interval_not_once_per_step(tmp_path, monkeypatch, log_every,
                                                                              expected):
    """Losses stay on the device: one sync (one all-reduce under DDP) every trainer.log_every_n_steps
    optimizer steps and one at each epoch's end, never one per step (error mode)."""
    from medsight.core.config import resolve
    from medsight.core.runtime import Runtime
    from medsight.training.trainer import Trainer
    from tests.toy_task import ToyConfig, ToyRegression

    reads = []
    original = Runtime.all_reduce_tensor
    monkeypatch.setattr(Runtime, "all_reduce_tensor", lambda self, t: reads.append(1) or original(self, t))
    monkeypatch.setattr(Runtime, "any", lambda self, flag: pytest.fail("a per-step host sync"))
    data = make_toy_data(tmp_path / "toy", samples=64)  # 48 training records: 12 steps of 4 per epoch
    config = resolve(ToyConfig, overrides=["trainer.max_epochs=2", "trainer.progress=never", "trainer.tensorboard=false",
                                           "data.batch_size=4", f"trainer.log_every_n_steps={log_every}",
                                           "trainer.val_every_n_epochs=5"])
    Trainer(ToyRegression(config), data, tmp_path / "run", Runtime("cpu", "fp32")).fit()
    assert len(reads) == expected
    steps = [line for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"step"' in line]
    assert len(steps) == expected - 2  # each log interval writes its loss and learning rate


def test_each_epoch_records_how_long_the_trainer_waited_for_data(tmp_path, monkeypatch):
    """``data_wait_fraction``: the share of the epoch spent in the loader's ``next`` (a slowed loader shows)."""
    import json

    from medsight.core.runtime import Runtime
    from medsight.training.trainer import Trainer
    from tests.toy_task import ToyConfig, ToyRegression

    data = make_toy_data(tmp_path / "toy", samples=32)
    config = resolve(ToyConfig, overrides=["trainer.max_epochs=1", "trainer.progress=never",
                                           "trainer.tensorboard=false", "data.batch_size=8"])
    trainer = Trainer(ToyRegression(config), data, tmp_path / "run", Runtime("cpu", "fp32"))
    original = trainer.train_loader

    def slow_loader(epoch):
        for batch in original(epoch):
            time.sleep(0.05)
            yield batch

    monkeypatch.setattr(trainer, "train_loader", slow_loader)
    trainer.fit()
    epoch = next(json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
                 if '"phase": "train"' in line)
    assert 0.5 < epoch["data_wait_fraction"] <= 1.0


def test_a_time_bounded_run_lays_its_schedule_over_the_budget(toy_data, tmp_path, toy_here):
    """trainer.max_epochs=100000 with trainer.max_minutes: the cosine decays over the epochs the budget allows
    (measured), instead of staying at the peak for 100000 planned epochs."""
    import json

    run = tmp_path / "run"
    result = toy_here("train", "toy", "--data", str(toy_data), "--out", str(run), "trainer.max_epochs=100000",
                 "trainer.max_minutes=0.07", "optim.scheduler=cosine", "optim.lr=0.01", *QUIET)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "time budget: stopped after" in result.stdout
    rates = [json.loads(line)["lr"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if '"phase": "train"' in line]
    assert len(rates) >= 4, rates
    assert rates[-1] < 0.25 * 0.01 and all(b <= a + 1e-12 for a, b in zip(rates[1:], rates[2:])), rates
    schedule = checkpoint.load(run / "checkpoints" / "last.pt")["scheduler"]["lr_lambdas"][0]
    assert schedule["planned"] < 100000 * 16  # the plan saved for a resumed run
