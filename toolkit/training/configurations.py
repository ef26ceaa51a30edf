"""``medsight cv --configs A,B``: cross-validate several configurations on the same folds, then choose the best
one, or the best ensemble of two, on their out-of-fold predictions (nnU-Net's ``find_best_configuration``).

    best = medsight.find_best_configuration("segmentation", "data/brats", {"3d": None, "2d": {"model.name":
                                            "smp_unet2d"}}, folds=5, out="runs/cv", profile="cpu-small")
    best.name, best.metrics, best.ensemble        # "3d+2d", its pooled OOF metrics, OUT/ensemble.pt

A configuration is a named profile of the task, a YAML file of settings (``key: value``, nested or dotted), or
(API) a dict of overrides; each is cross-validated in ``OUT/<name>`` on the folds of ``OUT/folds.json`` (dealt
once, copied into each), so every case is out-of-fold in the same fold for all. A pair ``A+B`` is scored on the
same cases: fold k's two models, as one ensemble, predict fold k's groups; the pooled outputs are scored by the
task's validation metrics. Pairs whose models are fed different inputs (another spacing, another patch of
preprocessing) cannot share a batch and are left out, with a note. The candidate with the best monitored metric
(``Task.monitor``) wins; its members, with what was chosen on its OOF predictions (thresholds, post-processing,
calibration, review threshold), are written to ``OUT/ensemble.pt``, and every candidate's metrics to
``OUT/configurations.json``.
"""

from __future__ import annotations

import itertools
import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medsight.core.registry import TASKS
from medsight.errors import CheckpointError, ConfigError
from medsight.io import checkpoint
from medsight.io.writers import write_json
from medsight.training.cv import (FOLDS_FILE, CrossValidation, _number, _oof_evaluation, choose_on_oof,
                                  cross_validate, pool, write_members)

log = logging.getLogger(__name__)

CONFIGURATIONS_FILE = "configurations.json"


@dataclass
class ConfigurationChoice:
    """Every candidate's pooled OOF metrics, the winner's name (``A`` or ``A+B``), its metrics, choices and
    ensemble checkpoint, and each configuration's cross-validation."""

    name: str
    metrics: dict[str, float]
    candidates: dict[str, dict[str, float]]
    ensemble: Path | None
    runs: dict[str, CrossValidation] = field(default_factory=dict)
    chosen: dict[str, Any] = field(default_factory=dict)


def parse_configs(task_class, specs: Sequence[str] | str) -> dict[str, list[str] | str]:
    """``A,B`` from the command line: each a profile name of the task, or a YAML file of settings (the file's
    stem names it). Returns name -> a profile name, or a list of ``key=value`` overrides."""
    import yaml

    items = [s.strip() for s in (specs.split(",") if isinstance(specs, str) else specs) if s.strip()]
    if len(items) < 2:
        raise ConfigError("--configs needs two configurations or more (profiles or YAML files), comma-separated",
                          "command line")
    found: dict[str, list[str] | str] = {}
    for item in items:
        path = Path(item)
        if path.suffix in (".yaml", ".yml"):
            if not path.is_file():
                raise ConfigError("configuration file not found", path)
            settings = yaml.safe_load(path.read_text()) or {}
            if not isinstance(settings, Mapping):
                raise ConfigError("a configuration file holds settings (key: value)", path)
            found[path.stem] = _dotted(settings)
        elif item in task_class.profiles:
            found[item] = item
        else:
            known = ", ".join(task_class.profiles) or "none"
            raise ConfigError(f"--configs: {item!r} is neither a YAML file nor a profile of {task_class.name} "
                              f"(profiles: {known})", "command line")
    if len(found) < len(items):
        raise ConfigError("--configs: two configurations have the same name", "command line")
    return found


def _dotted(settings: Mapping, prefix: str = "") -> list[str]:
    import json

    out = []
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out += _dotted(value, name + ".")
        else:
            out.append(f"{name}={json.dumps(value) if not isinstance(value, str) else value}")
    return out


def find_best_configuration(task: str, data: str | Path, configs: Mapping[str, Any] | Sequence[str], *,
                            folds: int = 5, out: str | Path | None = None, profile: str | None = None,
                            overrides: Mapping[str, Any] | Sequence[str] | None = None, bootstrap: int = 1000,
                            seed: int | None = None, review_rate: float = 0.10, pairs: bool = True,
                            collect: bool = False, calibration: str = "auto") -> ConfigurationChoice:
    """Cross-validate every configuration on the same folds, score single configurations and (``pairs``)
    ensembles of two on the pooled OOF predictions, and keep the best (``OUT/ensemble.pt``)."""
    from medsight.training.run import _override_list

    task_class = TASKS.get(task)
    if not isinstance(configs, Mapping):
        configs = parse_configs(task_class, list(configs))
    if len(configs) < 2:
        raise ConfigError("find the best of two configurations or more", "command line")
    out = Path(out) if out is not None else Path("runs") / task / "cv"
    base = _override_list(overrides)
    runs: dict[str, CrossValidation] = {}
    for name, setting in configs.items():
        own_profile, extra = (setting, []) if isinstance(setting, str) else (profile, _override_list(setting))
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        if (out / FOLDS_FILE).is_file() and not (folder / FOLDS_FILE).is_file():
            shutil.copyfile(out / FOLDS_FILE, folder / FOLDS_FILE)  # the same folds for every configuration
        log.info(f"configuration {name}: cross-validating in {folder}")
        runs[name] = cross_validate(task, data, folds=folds, out=folder, profile=own_profile,
                                    overrides=base + extra, bootstrap=bootstrap, seed=seed,
                                    review_rate=review_rate, collect=collect, calibration=calibration)
        if not (out / FOLDS_FILE).is_file():
            shutil.copyfile(folder / FOLDS_FILE, out / FOLDS_FILE)
    monitor = task_class.monitor
    candidates = {name: run.pooled for name, run in runs.items() if run.pooled}
    outputs: dict[str, list[dict[str, list]]] = {}  # pair -> its per-fold OOF outputs
    if pairs:
        for a, b in itertools.combinations(list(runs), 2):
            parts = _pair_outputs(runs[a], runs[b], Path(data))
            if parts is None:
                continue
            pooled = pool(parts)
            model = _pair_model(runs[a], runs[b], 0)
            outputs[f"{a}+{b}"] = parts
            candidates[f"{a}+{b}"] = {k: float(v) for k, v in model.configured().validation_metrics(pooled).items()
                                      if _number(v)}
    scored = {name: metrics[monitor.metric] for name, metrics in candidates.items() if monitor.metric in metrics}
    if not scored:
        raise ConfigError(f"no configuration has a pooled {monitor.metric} to compare", out)
    best = max(scored, key=lambda n: scored[n] if monitor.mode == "max" else -scored[n])
    if "+" in best:
        a, b = best.split("+")
        chosen, metrics = choose_on_oof(_pair_model(runs[a], runs[b], 0), outputs[best], review_rate, calibration)
        paths = [f.checkpoint for run in (runs[a], runs[b]) for f in run.finished]
    else:
        chosen, metrics = runs[best].chosen, runs[best].pooled
        paths = [f.checkpoint for f in runs[best].finished]
    ensemble = write_members(paths, chosen, out / "ensemble.pt") if len(paths) >= 2 else None
    log.info("configurations on the out-of-fold predictions (" + monitor.metric + "): " + ", ".join(
        f"{name} {value:.4f}" for name, value in sorted(scored.items(), key=lambda kv: -kv[1]))
             + f"; best: {best}")
    write_json({"monitor": monitor.metric, "mode": monitor.mode, "candidates": candidates, "best": best,
                "chosen_on_oof": chosen, "ensemble": str(ensemble) if ensemble else None,
                "configurations": {name: (s if isinstance(s, str) else list(_override_list(s)))
                                   for name, s in configs.items()}}, out / CONFIGURATIONS_FILE)
    return ConfigurationChoice(best, metrics, candidates, ensemble, runs, chosen)


def _pair_model(first: CrossValidation, second: CrossValidation, fold: int):
    """Fold ``fold``'s models of two configurations as one ensemble (in memory)."""
    from medsight.inference.ensemble import ensemble_state
    from medsight.inference.model import Model

    one, two = first.folds[fold].checkpoint, second.folds[fold].checkpoint
    state = ensemble_state([checkpoint.load(one), checkpoint.load(two)], [one, two])
    return Model({"format": checkpoint.FORMAT, **state}, one)


def _pair_outputs(first: CrossValidation, second: CrossValidation, data: Path) -> list[dict[str, list]] | None:
    """The per-fold OOF outputs of two configurations' fold models as ensembles (fold k's pair on fold k's
    groups); None where a fold is unfinished or the two are fed differently."""
    if any(f.checkpoint is None for f in first.folds + second.folds):
        return None
    parts = []
    for fold in range(len(first.folds)):
        try:
            model = _pair_model(first, second, fold)
        except CheckpointError as exc:
            log.info(f"configurations {first.dir.name} and {second.dir.name} are not ensembled: {exc}")
            return None
        parts.append(_oof_evaluation(model, data).outputs)
    return parts
