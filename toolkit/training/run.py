"""``medsight.train``: one training run, from a task name and a dataset folder to a run folder.

    run = medsight.train("segmentation", "data/brats", profile="cpu-small", overrides={"trainer.max_epochs": 5})
    run.best, run.history[-1]

The steps, in order: the settings (task defaults <- checkpoint (resume) <- profile <- plans <- the starting
weights' architecture <- config files <- overrides), the run folder, then the trainer under a lock on that
folder, then what training chose (recorded next to a plan) and the report. Under ``torchrun`` every rank calls
it; rank 0 writes.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medsight.core.config import TaskConfig, resolve, to_dict
from medsight.core.registry import TASKS
from medsight.errors import CheckpointError, ConfigError, DataError
from medsight.io import checkpoint
from medsight.io.writers import exclusive

log = logging.getLogger(__name__)


@dataclass
class Run:
    """A finished (or stopped) training run: its folder, checkpoints and the metrics it logged."""

    dir: Path
    last: Path
    best: Path | None
    summary: dict = field(default_factory=dict)
    report: Path | None = None

    @property
    def history(self) -> list[dict]:
        """The metrics records of ``metrics.jsonl`` (train and validation, per epoch and per interval)."""
        from medsight.reporting.report import read

        path = self.dir / "metrics.jsonl"
        return read(path) if path.is_file() else []

    def load(self, **options):
        """The run's best checkpoint (its last when it never validated) for inference: ``medsight.load``."""
        from medsight.inference.model import load

        return load(self.best or self.last, **options)


@dataclass
class _Settings:
    task_class: Any
    config: TaskConfig
    data: Path
    resume_state: dict | None
    planned: dict | None
    starting: Any


def train(task: str, data: str | Path | None = None, *, out: str | Path | None = None, profile: str | None = None,
          plans: str | Path | None = None, init_weights: str | Path | None = None, resume: str | Path | None = None,
          overrides: Mapping[str, Any] | Sequence[str] | None = None, config: Sequence[str | Path] = (),
          name: str | None = None) -> Run:
    """Train ``task`` on the dataset folder ``data`` (a resumed run takes its own).

    ``out``: the run folder (default ``runs/TASK/NAME``, NAME the date and time or ``name``); ``profile``: named
    settings of the task (``cpu-small``, ``gpu``); ``plans``: a plans file (``medsight.fingerprint``);
    ``init_weights``: local weights to start from; ``resume``: a run folder or checkpoint to continue exactly;
    ``overrides``: ``{"trainer.max_epochs": 5}`` or ``["trainer.max_epochs=5"]``; ``config``: YAML files."""
    from medsight.core.runtime import Runtime

    settings = _settings(task, data, profile, plans, init_weights, resume, overrides, config)
    cfg = settings.config.trainer
    runtime = Runtime(cfg.device, cfg.precision, cfg.channels_last, cfg.compile)
    try:
        run_dir = _run_folder(settings, resume, out, name, runtime)
        with exclusive(run_dir, "train") if runtime.is_main else contextlib.nullcontext():
            summary, trainer = _fit(settings, run_dir, runtime, plans)
        report = _finish(trainer, run_dir) if runtime.is_main else None
    finally:
        runtime.close()
    best = Path(summary["best"]) if summary.get("best") else None
    return Run(run_dir, Path(summary["last"]), best, summary, report)


def _settings(task, data, profile, plans_file, init_weights, resume, overrides, files) -> _Settings:
    from medsight.planning import plans

    task_class = TASKS.get(task)
    resume_state, base = None, None
    if resume:
        if plans_file or init_weights:
            raise ConfigError(f"--{'plans' if plans_file else 'init-weights'} starts a new run; a resumed run "
                              "continues from its checkpoint with its settings", "command line")
        resume_state = checkpoint.load(resume, task=task)
        data, base = data or resume_state["data"], resume_state["config"]
    elif not data:
        raise ConfigError("--data is required (the dataset folder)", "command line")
    chosen = None
    if profile:
        if profile not in task_class.profiles:
            known = ", ".join(task_class.profiles) or "none"
            raise ConfigError(f"task {task} has no profile {profile!r} (known: {known})", "command line")
        chosen = task_class.profiles[profile]
    planned = None
    if plans_file:
        planned = plans.read(plans_file, task)
        chosen = plans.merge(chosen, planned["config"])  # over the profile, under files and overrides
    overrides = _override_list(overrides)
    starting, inherited = None, None
    if init_weights:
        starting, inherited = _starting_weights(Path(init_weights), task_class)
        overrides.append(f"trainer.init_weights={starting.path.resolve()}")
    config = resolve(task_class.config_class, profile=chosen, files=list(files), overrides=overrides, base=base,
                     inherited=inherited)
    config.task = task
    if not resume:
        _starting_weights_alias(config)
        if config.trainer.init_weights and starting is None:  # the old spelling, model.init_weights
            starting, _ = _starting_weights(Path(config.trainer.init_weights), task_class)
    if not Path(data).exists():
        raise DataError("no such dataset folder", data)
    return _Settings(task_class, config, Path(data), resume_state, planned, starting)


def _override_list(overrides) -> list[str]:
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        import json

        return [f"{key}={json.dumps(value) if not isinstance(value, str) else value}"
                for key, value in overrides.items()]
    return [str(item) for item in overrides]


def _starting_weights(path: Path, task_class):
    """The starting weights read once, and the architecture settings a medsight checkpoint of this task gives."""
    from medsight.training.weights import read_weights

    if not path.is_file():
        raise ConfigError("--init-weights: file not found", path)
    starting = read_weights(path)
    inherited = starting.inherited_settings(task_class)
    if inherited:
        shown = ", ".join(f"{s}.{k}" for s, keys in inherited.items() for k in keys)
        log.info(f"from the starting weights' config: {shown}")
    return starting, inherited


def _starting_weights_alias(config) -> None:
    """``model.init_weights`` is the old spelling of ``trainer.init_weights``: honoured when a run starts."""
    model = getattr(config, "model", None)
    old = getattr(model, "init_weights", None)
    if old:
        if config.trainer.init_weights and config.trainer.init_weights != old:
            raise ConfigError("model.init_weights and trainer.init_weights (--init-weights) differ; give one")
        config.trainer.init_weights, model.init_weights = old, None


def _run_folder(settings: _Settings, resume, out, name, runtime) -> Path:
    if resume:
        return checkpoint.run_folder(resume)
    task = settings.task_class.name
    run_dir = Path(out) if out else Path("runs") / task / (name or time.strftime("%Y%m%d-%H%M%S"))
    run_dir = Path(runtime.broadcast(str(run_dir)))
    if checkpoint.in_run(run_dir).exists():
        raise CheckpointError("this run folder already holds a checkpoint; continue it with --resume, or choose "
                              "another --out", run_dir)
    return run_dir


def _fit(settings: _Settings, run_dir: Path, runtime, plans_file):
    from medsight.planning import plans
    from medsight.training.trainer import Trainer

    if settings.planned is not None and runtime.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        plans.record_in_run(run_dir, settings.planned, Path(plans_file).resolve(), to_dict(settings.config))
    trainer = Trainer(settings.task_class(settings.config), settings.data, run_dir, runtime,
                      starting=settings.starting)
    return trainer.fit(resume=settings.resume_state), trainer


def _finish(trainer, run_dir: Path) -> Path:
    """What training chose on validation, next to a plan; the run's report."""
    from medsight.planning import plans
    from medsight.reporting.report import write_report

    if (run_dir / "plans.json").exists():
        for key in trainer.task.chosen_on_validation:
            if trainer.task.state.get(key) is not None:
                plans.add_to_run_plans(run_dir, key, trainer.task.state[key])
    return write_report(run_dir)
