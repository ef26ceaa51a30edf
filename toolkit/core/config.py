"""Configuration: typed dataclasses, filled from defaults <- a named profile <- YAML files <- ``key=value``
overrides, through OmegaConf. Unknown keys and wrong types fail with one line naming the key.

Every task's config class derives from ``TaskConfig``; it adds its own ``data``, ``model`` and
``infer`` sections. The resolved config is written to the run directory and stored in every
checkpoint, so ``evaluate`` and ``predict`` need nothing but the checkpoint. Configs hold values,
never code.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from medsight.errors import ConfigError

__all__ = [
    "TrainerConfig",
    "OptimConfig",
    "SplitOptions",
    "LoaderConfig",
    "TaskConfig",
    "choice",
    "resolve",
    "to_dict",
    "to_yaml",
    "parse_override",
    "resolve_structured",
]


def choice(name: str, value: Any, allowed: Sequence[Any]) -> None:
    """Raise ConfigError unless ``value`` is one of ``allowed`` (called from ``__post_init__``)."""
    if value not in allowed:
        close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(str(a) for a in allowed)}{hint}")


def positive(name: str, value: float | None, allow_zero: bool = False) -> None:
    if value is not None and (value < 0 or (value == 0 and not allow_zero)):
        raise ConfigError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


@dataclass
class TrainerConfig:
    max_epochs: int = 10
    #: stop an epoch after this many steps (quick runs, smoke tests); null = whole epoch
    max_steps_per_epoch: Optional[int] = None
    #: stop at the end of the first epoch that ends after this many minutes of training; null = no limit
    max_minutes: Optional[float] = None
    device: str = "auto"  # auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps
    precision: str = "fp32"  # fp32, bf16, fp16 (CUDA, with GradScaler), auto
    channels_last: bool = False
    compile: bool = False
    accumulate_grad_batches: int = 1
    grad_clip_norm: Optional[float] = None
    val_every_n_epochs: int = 1
    #: stop after this many validations without improvement of the task's metric; null = never
    early_stopping_patience: Optional[int] = None
    seed: int = 0
    deterministic: bool = False
    ema_decay: Optional[float] = None
    #: also write last.pt every N optimizer steps (mid-epoch resume); null = at epoch ends only
    checkpoint_every_n_steps: Optional[int] = None
    #: error: stop (checked every log_every_n_steps optimizer steps, and before every checkpoint, so the
    #: device is not waited on at each step); skip: drop the batch and go on (checked at every step)
    nonfinite_loss: str = "error"
    #: auto: bars on a terminal, a line every 10 s elsewhere (logs, pipes); bars (or always), lines, never
    progress: str = "auto"
    #: every N optimizer steps: log the loss and learning rate (metrics.jsonl, TensorBoard), check for
    #: non-finite losses and (under DDP) stop requests, in one host sync and one all-reduce
    log_every_n_steps: int = 10
    tensorboard: bool = True
    #: CPU compute threads. null (auto): one per core, less the cores other processes keep busy when the
    #: command starts (a busy neighbour plus spin-waiting OpenMP threads make a CPU epoch 5x slower, not
    #: 2x: bench/cpu_contention.py); deterministic runs keep one per core. N: exactly N
    threads: Optional[int] = None
    #: local weights to start a fresh run from (``medsight train --init-weights PATH``): applied once,
    #: when the run starts; resume, evaluate, predict and export never read it
    init_weights: Optional[str] = None
    #: with init_weights: keep the tensors loaded from it unchanged for this many epochs (a new head,
    #: adapted first layers and everything the file lacked train from the start)
    freeze_pretrained_epochs: int = 0

    def __post_init__(self):
        choice("trainer.precision", self.precision, ("fp32", "bf16", "fp16", "auto"))
        choice("trainer.nonfinite_loss", self.nonfinite_loss, ("error", "skip"))
        choice("trainer.progress", self.progress, ("auto", "bars", "always", "lines", "never"))
        positive("trainer.log_every_n_steps", self.log_every_n_steps)
        positive("trainer.freeze_pretrained_epochs", self.freeze_pretrained_epochs, allow_zero=True)
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise ConfigError(f"trainer.device={self.device!r} is not auto, cpu, mps, cuda or cuda:N")
        positive("trainer.max_epochs", self.max_epochs, allow_zero=True)
        positive("trainer.accumulate_grad_batches", self.accumulate_grad_batches)
        positive("trainer.val_every_n_epochs", self.val_every_n_epochs)
        positive("trainer.grad_clip_norm", self.grad_clip_norm)
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ConfigError(f"trainer.ema_decay must be between 0 and 1, got {self.ema_decay}")


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw, sgd
    lr: float = 1e-3
    weight_decay: float = 1e-5
    momentum: float = 0.9
    nesterov: bool = False
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    scheduler: str = "cosine"  # none, cosine, poly, step
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    poly_power: float = 0.9
    step_epochs: int = 30
    gamma: float = 0.1
    #: with trainer.init_weights: the learning rate of the tensors loaded from it, as a share of optim.lr
    pretrained_lr_factor: float = 1.0

    def __post_init__(self):
        choice("optim.name", self.name, ("adamw", "sgd"))
        choice("optim.scheduler", self.scheduler, ("none", "cosine", "poly", "step"))
        positive("optim.lr", self.lr)
        positive("optim.warmup_epochs", self.warmup_epochs, allow_zero=True)
        positive("optim.pretrained_lr_factor", self.pretrained_lr_factor)


@dataclass
class SplitOptions:
    """How a dataset's records are split, where the dataset does not name its splits itself: the settings every
    dataset format reads (``medsight.data.formats``) and every task's ``data`` section holds (``LoaderConfig``).

    Groups (patients, scans, cases) never straddle splits (``medsight.datasets.splits``): a hold-out is decided by
    each group's own hash, so adding data never moves an existing group; cross-validation folds are balanced
    (floor(N/K) or ceil(N/K) groups each), and adding data moves few existing groups.
    """

    #: share of training groups (patients, scans, cases) held out for validation, by their own hash
    val_fraction: float = 0.2
    #: seed of validation hold-outs and folds, for every task (independent of trainer.seed)
    split_seed: int = 0
    #: the fold held out, where a format splits by folds (LUNA16: the test subset; BraTS: validation)
    fold: int = 0
    folds: int = 5
    #: dataset: the dataset's own validation split when it has one; train: always take validation
    #: out of the training split by group (when the dataset's validation shares patients with training)
    val_source: str = "dataset"
    #: validation named outright: these groups (patient IDs, seriesuids, case ids) instead of hashing
    val_groups: list[str] = field(default_factory=list)
    #: a file that is missing, unreadable or degenerate (NaN, blank, 4D...): raise stops the run naming it;
    #: skip leaves the record out and counts it in the run log (metrics.jsonl skipped_records)
    on_error: str = "raise"

    def __post_init__(self):
        choice("data.on_error", self.on_error, ("raise", "skip"))
        choice("data.val_source", self.val_source, ("dataset", "train"))
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.folds < 1 or not 0 <= self.fold < self.folds:
            raise ConfigError(f"data.fold={self.fold} is not in 0..{self.folds - 1} (data.folds={self.folds})")


@dataclass
class LoaderConfig(SplitOptions):
    """How records become batches, and how they are split (``SplitOptions``). Tasks extend this with their data
    settings."""

    batch_size: int = 2
    val_batch_size: int = 1
    num_workers: int = 0
    loader: str = "torch"  # torch (DataLoader) or thread (MONAI ThreadDataLoader)
    #: predict over many inputs: batches read and preprocessed ahead of the network by a background thread, and
    #: results waiting for the background writer (0: one case after another, nothing overlapped)
    in_flight: int = 2
    #: none, memory (CacheDataset), disk (PersistentDataset), pictures (2D: decoded, gray and resized once,
    #: stored as uint8 and memory-mapped: medsight.data.picture_cache)
    cache: str = "memory"
    cache_rate: float = 1.0
    cache_dir: Optional[str] = None  # default: <run dir>/cache
    #: the dataset format (a registered name, see ``medsight tasks``); auto = the one that recognises the folder
    format: str = "auto"
    #: settings of a plug-in format that this task's config does not name (validated by the format)
    format_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        super().__post_init__()
        choice("data.loader", self.loader, ("torch", "thread"))
        choice("data.cache", self.cache, ("none", "memory", "disk", "pictures"))
        positive("data.batch_size", self.batch_size)
        if self.in_flight < 0:
            raise ConfigError(f"data.in_flight must be 0 or more, got {self.in_flight}")
        if not 0 <= self.cache_rate <= 1:
            raise ConfigError(f"data.cache_rate must be between 0 and 1, got {self.cache_rate}")


@dataclass
class TaskConfig:
    task: str = ""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: LoaderConfig = field(default_factory=LoaderConfig)


def _friendly(exc: OmegaConfBaseException, source: str) -> ConfigError:
    key = getattr(exc, "full_key", None) or getattr(exc, "key", None) or "?"
    if isinstance(exc, ConfigKeyError):
        parent = getattr(exc, "parent_node", None)
        known = list(parent.keys()) if parent is not None and hasattr(parent, "keys") else []
        close = difflib.get_close_matches(str(getattr(exc, "key", key)), [str(k) for k in known], n=1)
        prefix = str(key).rsplit(".", 1)[0] + "." if "." in str(key) else ""
        if close:
            hint = f" (did you mean {prefix}{close[0]}?)"
        else:
            hint = f" (known: {', '.join(prefix + str(k) for k in known)})" if known else ""
        return ConfigError(f"unknown key {key}{hint}", source)
    if isinstance(exc, ValidationError):
        first = str(exc).splitlines()[0]
        return ConfigError(f"{key}: {first}", source)
    return ConfigError(f"{key}: {str(exc).splitlines()[0]}", source)


def _merge(base, update, source: str):
    try:
        return OmegaConf.merge(base, update)
    except OmegaConfBaseException as exc:
        raise _friendly(exc, source) from None


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b=value`` -> ("a.b", value typed as YAML by OmegaConf: numbers, booleans, lists, null; else the string;
    ``a.b=`` gives "")."""
    key, value = _split_override(text)
    if value == "":
        return key, ""
    try:
        parsed: Any = OmegaConf.to_container(OmegaConf.from_dotlist([f"{key}={value}"]))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"override {text!r}: {str(exc).splitlines()[0]}", "command line") from None
    try:
        for part in key.split("."):
            parsed = parsed[part]
    except (KeyError, TypeError):
        raise ConfigError(f"override {text!r}: {key!r} is not a dotted key such as trainer.max_epochs",
                          "command line") from None
    return key, parsed


def _split_override(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value", "command line")
    key, value = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"override {text!r} has no key", "command line")
    return key.strip(), value


def overrides_config(overrides: Sequence[str] | Mapping[str, Any]) -> DictConfig:
    """Overrides as one nested config: ``["a.b=1", ...]`` (values typed as YAML) or ``{"a.b": 1, ...}``."""
    if isinstance(overrides, Mapping):
        items = list(overrides.items())
    elif isinstance(overrides, str):
        raise TypeError("overrides: a list of 'key=value' strings or a dict of dotted keys, not one string")
    else:
        items = [parse_override(text) for text in overrides]
    node = OmegaConf.create()
    for key, value in items:
        try:
            OmegaConf.update(node, str(key), value, merge=True)
        except OmegaConfBaseException as exc:
            raise ConfigError(f"override {key!r}: {str(exc).splitlines()[0]}", "command line") from None
    return node


def resolve_structured(config_class: type, values: Mapping, source: str = "config") -> Any:
    """An instance of the dataclass ``config_class`` from ``values``, typed and validated like a config."""
    cfg = _merge(OmegaConf.structured(config_class), OmegaConf.create(dict(values)), source)
    try:
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:
        raise _friendly(exc, source) from None


def resolve(
    config_class: type[TaskConfig],
    profile: Mapping | None = None,
    files: Sequence[str | Path] = (),
    overrides: Sequence[str] | Mapping[str, Any] = (),
    base: Mapping | None = None,
    inherited: Mapping | None = None,
) -> TaskConfig:
    """Defaults <- ``base`` (e.g. a checkpoint's config) <- profile <- ``inherited`` (the model and input
    settings of starting weights) <- YAML files <- overrides, validated. ``overrides``: ``key=value`` strings
    (the command line's) or a dict of dotted keys to values (``{"trainer.max_epochs": 5}``)."""
    cfg = OmegaConf.structured(config_class)
    if base:
        cfg = _merge(cfg, OmegaConf.create(dict(base)), "checkpoint config")
    if profile:
        cfg = _merge(cfg, OmegaConf.create(dict(profile)), "profile")
    if inherited:
        cfg = _merge(cfg, OmegaConf.create(dict(inherited)), "starting weights' config")
    for path in files:
        path = Path(path)
        if not path.is_file():
            raise ConfigError("config file not found", path)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"not valid YAML ({str(exc).splitlines()[0]})", path) from None
        if not isinstance(loaded, dict):
            raise ConfigError("a config file must hold a mapping of sections", path)
        cfg = _merge(cfg, OmegaConf.create(loaded), str(path))
    if overrides:
        cfg = _merge(cfg, overrides_config(overrides), "config")
    try:
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:
        raise _friendly(exc, "config") from None


def to_dict(config) -> dict:
    """Plain dict (str, int, float, bool, None, list, dict) of a config object: safe in checkpoints."""
    if not is_dataclass(config):
        raise TypeError("expected a config dataclass")
    return OmegaConf.to_container(OmegaConf.structured(config), resolve=True)


def to_yaml(config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)

