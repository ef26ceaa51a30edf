"""One trainer for every task.

``fit()`` reads top to bottom: set up, then per epoch ``train_epoch`` -> ``validate`` ->
``end_epoch`` (checkpoints, early stopping). Device, precision and DDP come from ``Runtime``;
the task supplies data, model, loss and metrics. The checkpoint is a plain dict (see
``medsight.io.checkpoint``); resuming from it continues exactly: batch order and augmentations
are a function of (seed, epoch, rank), and RNG states are restored mid-epoch.

The device is not waited on at every step: losses are summed on the device, and their finiteness
and (under DDP) stop requests are checked every ``trainer.log_every_n_steps`` optimizer steps, before
every checkpoint and at the end of each epoch, in one host sync and one all-reduce.
"""

from __future__ import annotations

import logging
import math
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from medsight.io import checkpoint
from medsight.io.checkpoint import Progress
from medsight.core.config import TaskConfig, to_yaml
from medsight.data.loading import SKIPPED, epoch_seed
from medsight.training.provenance import pretrained_parameters, trained_on, training_domain
from medsight.core.config import to_dict
from medsight.core.structure import build_model
from medsight.errors import TrainingError
from medsight.io.writers import atomic_path, write_text
from medsight.training.data import TrainingData, timed
from medsight.training.optim import build_optimizer, build_scheduler
from medsight.core.progress import progress as progress_display
from medsight.training.runlog import RunLog, epoch_line
from medsight.core.runtime import DeviceSums, Runtime, set_threads
from medsight.core.seeding import configure_determinism, seed_everything
from medsight.core.signals import Interrupted, stop_requests
from medsight.task import Task
from medsight.inference.validation import run_validation

log = logging.getLogger(__name__)


class Trainer:
    """``starting``: the starting weights of a fresh run (``medsight.training.weights.read_weights``), read once
    by whoever starts the run; None for a run from scratch and for a resumed one."""

    def __init__(self, task: Task, data: Path, run_dir: Path, runtime: Runtime | None = None, starting=None):
        self.task = task
        self.config: TaskConfig = task.config
        self.cfg = task.config.trainer
        self.data = Path(data)
        self.run_dir = Path(run_dir)
        self.runtime = runtime or Runtime(self.cfg.device, self.cfg.precision, self.cfg.channels_last,
                                          self.cfg.compile)
        self.progress = Progress()
        self._stop_signal: int | None = None
        self._resume_rng: dict | None = None
        self.started_from: dict | None = None
        self.starting = starting
        #: the network's structure where it differs from what the config builds (a pruned starting network's)
        self.structure: dict | None = None
        self.data_format: str | None = None
        self._healthy_step = 0  # the optimizer step at the last check that found every loss finite
        self.log = RunLog(self.run_dir, enabled=self.runtime.is_main, tensorboard=self.cfg.tensorboard)

    @property
    def checkpoint_dir(self) -> Path:
        return checkpoint.in_run(self.run_dir).parent

    # ---------------------------------------------------------------------------------------------
    def fit(self, resume: dict | None = None) -> dict[str, Any]:
        """Train to ``trainer.max_epochs``; returns a summary (best metric, epochs, checkpoint paths)."""
        self.setup(resume)
        started, first_step = time.perf_counter(), self.progress.global_step
        with stop_requests(self._request_stop):
            for epoch in range(self.progress.epoch, self.cfg.max_epochs):
                train_logs = self.train_epoch(epoch)
                out_of_time = self._out_of_time(started)
                self._replan(started, first_step)
                metrics = self.validate(epoch) if self._validation_due(epoch) or out_of_time else None
                self.end_epoch(epoch, train_logs, metrics)
                if self._early_stop():
                    self._say(f"early stopping: {self.task.monitor.metric} has not improved for "
                              f"{self.progress.bad_validations} validations")
                    break
                if out_of_time:
                    self._say(f"time budget: stopped after {(time.perf_counter() - started) / 60:.1f} minutes "
                              f"(trainer.max_minutes={self.cfg.max_minutes})")
                    break
        return self.finish()

    # -- set-up -----------------------------------------------------------------------------------
    def setup(self, resume: dict | None) -> None:
        configure_determinism(self.cfg.deterministic)
        set_threads(self.cfg.threads, self.cfg.deterministic)
        seed_everything(self.cfg.seed + self.runtime.rank)
        rt, task = self.runtime, self.task
        source = task.open_data(self.data)
        self.data_format = getattr(source.fmt, "name", None)
        if resume is not None:
            task.load_state_dict(resume.get("task_state", {}))
            self.started_from, self.structure = resume.get("started_from"), resume.get("structure")
        else:
            task.learn_state(source)
            self.structure = self.starting.facts.get("structure") if self.starting is not None else None
            if self.structure:  # a pruned starting network stays pruned
                self._say(f"the starting weights are a pruned network: "
                          f"{len(self.structure.get('shapes', {}))} tensors thinner")
        data_cfg = self.config.data
        cache_dir = Path(data_cfg.cache_dir) if data_cfg.cache_dir else self.run_dir / "cache"
        self.training_data = TrainingData.open(task, source, self.data, rt, self.cfg.seed, cache_dir)
        train_records, val_records = self.training_data.records["train"], self.training_data.records["val"]
        if not val_records:
            self._say(f"no validation records (data.val_fraction {getattr(data_cfg, 'val_fraction', '?')} "
                      f"drew none): training without validation, best.pt is not written")
        self.has_validation = bool(val_records)
        self.val_set = self.training_data.val_set
        self.raw_model = build_model(task, self.structure)
        if resume is None and self.starting is not None:
            from medsight.training.weights import load_initial_weights

            report = load_initial_weights(self.raw_model, self.starting, adapt=task.adapt_starting_weights)
            self.started_from = report.to_dict()
            for line in report.lines():
                self._say(line)
        self.pretrained = self._pretrained_parameters()
        self.trained_on = trained_on(source, train_records + val_records)
        #: what predict compares its inputs with (medsight.inference.domain); measured by the rank that saves
        self.domain = training_domain(task, train_records + val_records) if rt.is_main else None
        self.model = rt.setup_model(self.raw_model, train=True, find_unused_parameters=task.find_unused_parameters)
        for network in task.frozen_networks():  # a distillation teacher: on the device, frozen, never trained
            network.to(rt.device).eval().requires_grad_(False)
        self.optimizer = build_optimizer(self.raw_model, self.config.optim, self.pretrained)
        self.batches_per_epoch = self.training_data.batches_per_epoch(self.cfg.max_steps_per_epoch)
        steps = math.ceil(self.batches_per_epoch / self.cfg.accumulate_grad_batches)
        self.scheduler = build_scheduler(self.optimizer, self.config.optim, steps, self.cfg.max_epochs,
                                         budget=self.cfg.max_minutes is not None)
        self.ema = (AveragedModel(self.raw_model, multi_avg_fn=get_ema_multi_avg_fn(self.cfg.ema_decay),
                                  use_buffers=True) if self.cfg.ema_decay else None)
        if resume is not None:
            self._restore(resume)
        self._healthy_step = self.progress.global_step
        if rt.is_main:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            write_text(to_yaml(self.config), self.run_dir / "config.yaml")
            self.log.truncate_after(self.progress.global_step)
        self._say(f"{task.name}: {len(train_records)} training and {len(val_records)} validation records "
                  f"({self.data_format or 'task-read'} data); {rt.describe()}; run folder {self.run_dir}")

    def _pretrained_parameters(self) -> set[str]:
        """Parameters loaded from starting weights (for optim.pretrained_lr_factor and freezing)."""
        params = pretrained_parameters(self.raw_model, self.started_from)
        cfg, factor = self.cfg, self.config.optim.pretrained_lr_factor
        if params and (cfg.freeze_pretrained_epochs or factor != 1.0) and self.progress.epoch == 0:
            self._say(f"pretrained: {len(params)} parameter tensors at {factor:g} x optim.lr"
                      + (f", unchanged for {cfg.freeze_pretrained_epochs} epoch(s)" if cfg.freeze_pretrained_epochs
                         else ""))
        return params

    def _restore(self, state: dict) -> None:
        self.raw_model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.runtime.scaler is not None and state.get("scaler"):
            self.runtime.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema"):
            self.ema.load_state_dict(state["ema"])
        saved = state["progress"]
        self.progress = Progress(**{k: saved[k] for k in Progress.__dataclass_fields__ if k in saved})
        if self.progress.step_in_epoch:
            self._resume_rng = state["rng"]  # applied after replaying the epoch's first batches
        else:
            checkpoint.set_rng_state(state["rng"])

    # -- one epoch --------------------------------------------------------------------------------
    def train_loader(self, epoch: int):
        return self.training_data.train_loader(epoch, self.cfg.seed, self.runtime.rank)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        rt, cfg = self.runtime, self.cfg
        self.model.train()
        skip = self.progress.step_in_epoch
        if not skip:
            seed_everything(epoch_seed(cfg.seed, epoch, rt.rank) ^ 0x5EED)  # dropout etc.: fixed per epoch
        loader = self.train_loader(epoch)
        self._epoch_sums, self._interval_sums = DeviceSums(rt.device), DeviceSums(rt.device)
        self._epoch, started = epoch, time.perf_counter()
        self._skipped: list[str] = []
        self._interval_started = started
        self._bar = progress_display(self.batches_per_epoch, f"epoch {epoch + 1}/{cfg.max_epochs}", cfg.progress,
                                     unit="batch", initial=skip, enabled=rt.is_main)
        self.optimizer.zero_grad(set_to_none=True)
        waited = [0.0]  # seconds spent waiting for batches: the share the device may sit idle for want of data
        if rt.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(rt.device)
        for index, batch in enumerate(timed(loader, waited)):
            if index >= self.batches_per_epoch:
                break
            if index < skip:  # replay a resumed epoch's first batches so augmentations stay in step
                continue
            if index == skip and self._resume_rng is not None:
                checkpoint.set_rng_state(self._resume_rng)
                self._resume_rng = None
            last_micro = (index + 1) % cfg.accumulate_grad_batches == 0 or index + 1 == self.batches_per_epoch
            if isinstance(batch, dict) and SKIPPED in batch:  # data.on_error=skip: records left out, counted
                self._skipped += batch.pop(SKIPPED)
            if batch:
                self._micro_step(batch, last_micro)
            self.progress.step_in_epoch = index + 1
            self._bar.update(1)
            if last_micro:
                self._end_step()
        self._bar.close()
        if self._resume_rng is not None:  # resumed from a checkpoint taken on the epoch's last batch
            checkpoint.set_rng_state(self._resume_rng)
            self._resume_rng = None
        elapsed = time.perf_counter() - started
        totals = self._synchronise(self._epoch_sums)  # raises on a non-finite loss or a stop request
        logs = self._epoch_sums.means(totals[3:], totals[2])
        logs.update(lr=self._lr(), samples_per_s=totals[2] / max(elapsed, 1e-9), epoch_seconds=elapsed,
                    data_wait_fraction=waited[0] / max(elapsed, 1e-9))
        if rt.device.type == "cuda":
            logs["peak_memory_gb"] = torch.cuda.max_memory_allocated(rt.device) / 2**30
        if self._skipped:
            logs["skipped_records"] = len(self._skipped)
            self._say(f"warning: epoch {epoch + 1}: {len(self._skipped)} record(s) skipped (data.on_error=skip); "
                      f"first: {self._skipped[0]}")
        self.progress.step_in_epoch = 0
        return logs

    def _micro_step(self, batch, last_micro: bool) -> None:
        rt = self.runtime
        batch = rt.to_device(batch)
        with rt.no_sync(self.model, skip_sync=not last_micro):
            with rt.autocast():
                output = self.task.training_step(self.model, batch)
            # skip mode must decide now, so it waits for the device at every step (error mode does not)
            if self.cfg.nonfinite_loss == "skip" and rt.any(not bool(torch.isfinite(output.loss.detach()).all())):
                self.progress.skipped_batches += 1
                self.optimizer.zero_grad(set_to_none=True)
                return
            logs = {"loss": output.loss, **output.logs}
            for sums in (self._epoch_sums, self._interval_sums):
                sums.flag_nonfinite(output.loss)
                sums.add(logs, output.batch_size)
            rt.backward(output.loss / self.cfg.accumulate_grad_batches)

    def _end_step(self) -> None:
        """After the last micro-batch of an optimizer step: step, then now and then sync and log."""
        self._optimizer_step()
        cfg = self.cfg
        if not self.runtime.distributed and self._stop_signal is not None:
            self._synchronise(self._interval_sums)  # checks health first (never saves a diverged model), stops
        due_log = self.progress.global_step % cfg.log_every_n_steps == 0
        due_checkpoint = cfg.checkpoint_every_n_steps and self.progress.global_step % cfg.checkpoint_every_n_steps == 0
        if due_log or due_checkpoint:
            totals = self._synchronise(self._interval_sums)
            if due_log:
                self._log_interval(totals)
            if due_checkpoint:
                self.save("last.pt")

    def _synchronise(self, sums: DeviceSums) -> list[float]:
        """One host sync and one all-reduce: raise on a non-finite loss, stop on a signal (any rank)."""
        totals = self.runtime.all_reduce_tensor(sums.packed(stop=self._stop_signal is not None)).tolist()
        if totals[0] > 0:
            self._nonfinite()
        if totals[1] > 0:
            self._bar.close()
            self._interrupt()
        self._healthy_step = self.progress.global_step
        return totals

    def _log_interval(self, totals: list[float]) -> None:
        now = time.perf_counter()
        values = self._interval_sums.means(totals[3:], totals[2])
        values.update(lr=self._lr(), samples_per_s=totals[2] / max(now - self._interval_started, 1e-9))
        self.log.log("step", self.progress.epoch, self.progress.global_step, values)
        if not self._bar.disable:
            self._bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2e}",
                                  samples_s=f"{values['samples_per_s']:.1f}")
        self._interval_sums, self._interval_started = DeviceSums(self.runtime.device), now

    def _nonfinite(self):
        last = self.checkpoint_dir / "last.pt"
        kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
        first, now = self._healthy_step + 1, max(self.progress.global_step, self._healthy_step + 1)
        steps = f"optimizer step {now}" if first == now else f"optimizer steps {first}-{now}"
        raise TrainingError(
            f"non-finite loss in epoch {self._epoch + 1} ({steps}; checked every trainer.log_every_n_steps); {kept}. "
            "Lower optim.lr, set trainer.grad_clip_norm, or set trainer.nonfinite_loss=skip to drop such batches",
            "training",
        )

    def _optimizer_step(self) -> None:
        if self.progress.epoch < self.cfg.freeze_pretrained_epochs and self.pretrained:
            for name, param in self.raw_model.named_parameters():
                if name in self.pretrained:
                    param.grad = None  # unchanged this step: no update, no weight decay
        params = [p for p in self.raw_model.parameters() if p.requires_grad]
        stepped = self.runtime.step(self.optimizer, params, self.cfg.grad_clip_norm)
        self.optimizer.zero_grad(set_to_none=True)
        if stepped:
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.raw_model)
        self.progress.global_step += 1

    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    # -- validation -------------------------------------------------------------------------------
    def _validation_due(self, epoch: int) -> bool:
        last = epoch + 1 == self.cfg.max_epochs
        return self.has_validation and ((epoch + 1) % self.cfg.val_every_n_epochs == 0 or last)

    def eval_model(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.raw_model

    def validate(self, epoch: int) -> dict[str, float]:
        outputs = run_validation(self.task, self.eval_model(), self.val_set, self.config, self.runtime,
                                 desc=f"validation {epoch + 1}/{self.cfg.max_epochs}")
        return self.task.validation_metrics(outputs) if outputs else {}

    # -- end of epoch -----------------------------------------------------------------------------
    def end_epoch(self, epoch: int, train_logs: dict, metrics: dict | None) -> None:
        progress = self.progress
        progress.epoch = epoch + 1
        self.log.log("train", progress.epoch, progress.global_step, train_logs)
        monitor = self.task.monitor
        improved = False
        if metrics:
            self.log.log("val", progress.epoch, progress.global_step, metrics)
            improved = progress.validated(metrics.get(monitor.metric), monitor)
        progress.history.append({"epoch": progress.epoch, "loss": train_logs.get("loss"),
                                 monitor.metric: (metrics or {}).get(monitor.metric)})
        self.save("last.pt")
        if improved and self.runtime.is_main:
            with atomic_path(self.checkpoint_dir / "best.pt") as tmp:
                shutil.copyfile(self.checkpoint_dir / "last.pt", tmp)
        self._say(epoch_line(self.progress, self.cfg.max_epochs, self.task.monitor.metric, train_logs, metrics,
                             improved))

    def _replan(self, started: float, first_step: int) -> None:
        """A time-bounded run: the schedule laid over the steps the rest of the budget allows, at this run's
        measured seconds per step (training, validation and checkpoints included); rank 0's plan for all."""
        schedule = getattr(self.scheduler, "lr_lambdas", [None])[0]
        done = self.progress.global_step - first_step
        if self.cfg.max_minutes is None or not hasattr(schedule, "replan") or done <= 0:
            return
        elapsed = time.perf_counter() - started
        planned = schedule.replan(self.progress.global_step, elapsed / done, self.cfg.max_minutes * 60 - elapsed)
        schedule.planned = self.runtime.broadcast(planned)

    def _out_of_time(self, started: float) -> bool:
        if self.cfg.max_minutes is None:
            return False
        return self.runtime.any((time.perf_counter() - started) / 60 >= self.cfg.max_minutes)

    def _early_stop(self) -> bool:
        patience = self.cfg.early_stopping_patience
        return patience is not None and self.progress.bad_validations >= patience

    # -- checkpoints ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything the run's checkpoint holds (see ``medsight.io.checkpoint``)."""
        monitor = self.task.monitor
        return {
            "task": self.task.name, "config": to_dict(self.config), "data": str(self.data),
            "data_format": self.data_format, "trained_on": self.trained_on, "domain": self.domain,
            "started_from": self.started_from,
            "task_state": self.task.state_dict(), "structure": self.structure,
            "model": self.raw_model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.runtime.scaler.state_dict() if self.runtime.scaler is not None else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "progress": self.progress.__dict__.copy(), "epoch": self.progress.epoch,
            "step_in_epoch": self.progress.step_in_epoch, "global_step": self.progress.global_step,
            "best": {"metric": monitor.metric, "mode": monitor.mode, "value": self.progress.best_value,
                     "epoch": self.progress.best_epoch},
            "rng": checkpoint.rng_state(),
        }

    def save(self, name: str) -> Path | None:
        if not self.runtime.is_main:
            return None
        return checkpoint.save(self.state_dict(), self.checkpoint_dir / name)

    def _interrupt(self) -> None:
        signum = self._stop_signal or signal.SIGTERM
        self.save("last.pt")
        self.log.close()
        name = signal.Signals(signum).name
        raise Interrupted(
            f"stopped by {name} in epoch {self._epoch + 1} after step {self.progress.step_in_epoch}; wrote "
            f"{self.checkpoint_dir / 'last.pt'}; continue with: medsight train {self.task.name} --resume {self.run_dir}",
            int(signum),
        )

    def finish(self) -> dict[str, Any]:
        self.log.close()
        summary = {
            "run_dir": str(self.run_dir),
            "epochs": self.progress.epoch,
            "best_metric": self.task.monitor.metric,
            "best_value": self.progress.best_value,
            "best_epoch": self.progress.best_epoch,
            "last": str(self.checkpoint_dir / "last.pt"),
            "best": str(self.checkpoint_dir / "best.pt") if (self.checkpoint_dir / "best.pt").exists() else None,
        }
        self.runtime.barrier()
        return summary

    # -- signals and output -----------------------------------------------------------------------
    def _request_stop(self, signum: int) -> None:
        self._stop_signal = signum

    def _say(self, text: str) -> None:
        if self.runtime.is_main:
            log.info(text)
