"""``medsight.cross_validate``: K-fold cross-validation of one task on one dataset, fold by fold.

    cv = medsight.cross_validate("segmentation", "data/brats", folds=5, out="runs/cv", profile="cpu-small")
    cv.folds[0].metrics, cv.mean, cv.sd, cv.pooled, cv.ci, cv.oof  # per fold, mean +- sd, out-of-fold, 95% CI

The training pool is what ``train`` reads as training and validation (a format's fixed test split stays out).
Its groups (patients, cases, scans) are dealt into ``folds`` balanced folds (``medsight.data.folds``); the
assignment is written to ``OUT/folds.json`` and reused, so a rerun, another machine running ``fold=N`` or a
``collect`` sees the same folds. Fold k trains in ``OUT/fold_k`` with fold k's groups as validation
(``data.val_groups``), then its best checkpoint predicts those groups: the out-of-fold (OOF) predictions,
one row per case in ``OUT/oof.csv``. A fold whose run folder holds a checkpoint but no ``fold.json`` was
stopped: it is resumed exactly, as ``train --resume`` does; a finished fold is not trained again.

Folds are independent jobs: ``fold=N`` (``medsight cv --fold N``, ``scripts/slurm_cv.sh`` as a SLURM array,
torchrun inside: every rank trains, rank 0 predicts and writes), then ``collect=True`` gathers them.

``OUT/cv.json`` holds each fold's metrics, their mean and sample standard deviation, the metrics of the
pooled OOF predictions (the task's validation metrics over every case at once) and a percentile bootstrap
95 % interval of those over cases.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medsight.core.config import resolve
from medsight.core.registry import TASKS
from medsight.core.runtime import launched_rank
from medsight.data.consumers import profile_of
from medsight.data.folds import assign_folds, check_folds
from medsight.errors import ConfigError, DataError
from medsight.io import checkpoint
from medsight.io.writers import write_csv, write_json

log = logging.getLogger(__name__)

FOLDS_FILE, FOLD_FILE, SUMMARY_FILE, OOF_FILE = "folds.json", "fold.json", "cv.json", "oof.csv"
ENSEMBLE_FILE = "ensemble.pt"


@dataclass
class Fold:
    index: int
    dir: Path
    groups: list[str]
    metrics: dict[str, float] = field(default_factory=dict)
    checkpoint: Path | None = None


@dataclass
class CrossValidation:
    """The folds (finished ones carry metrics), their mean and sd, the pooled OOF metrics and their CI."""

    dir: Path
    folds: list[Fold]
    mean: dict[str, float] = field(default_factory=dict)
    sd: dict[str, float] = field(default_factory=dict)
    pooled: dict[str, float] = field(default_factory=dict)
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    oof: list[dict] = field(default_factory=list)
    #: what the task chooses on validation (classification: per-label thresholds; segmentation: post-processing),
    #: chosen on the pooled OOF predictions instead, with the calibration and the review threshold
    chosen: dict[str, Any] = field(default_factory=dict)
    #: the folds' ensemble checkpoint (two or more finished folds)
    ensemble: Path | None = None

    @property
    def finished(self) -> list[Fold]:
        return [f for f in self.folds if f.checkpoint is not None]


def cross_validate(task: str, data: str | Path, *, folds: int = 5, out: str | Path | None = None,
                   profile: str | None = None, overrides: Mapping[str, Any] | Sequence[str] | None = None,
                   fold: int | None = None, collect: bool = False, bootstrap: int = 1000,
                   seed: int | None = None, review_rate: float = 0.10,
                   calibration: str = "auto") -> CrossValidation:
    """Train and predict every fold (``fold``: only that one; ``collect``: train none, gather the finished
    ones), then summarise what is finished. ``seed``: of the fold assignment (default ``data.split_seed``).
    ``calibration``: ``auto`` (Platt or temperature scaling, whichever the OOF predictions favour cross-fitted,
    or none), ``platt``, ``temperature`` or ``none`` (``medsight.core.calibration``)."""
    from medsight.training.run import _override_list

    check_folds(folds, fold)
    check_calibration(calibration)
    task_class = TASKS.get(task)
    extra = _override_list(overrides)
    out = Path(out) if out is not None else Path("runs") / task / "cv"
    plan = _folds(task_class, Path(data), folds, out, profile, extra, seed)
    chosen = range(folds) if fold is None else [fold]
    outputs: dict[int, dict] = {}  # fold -> its OOF validation outputs, as evaluated in this call
    for k in [] if collect else chosen:
        _run_fold(task, Path(data), plan[k], profile, extra, outputs)
    for item in plan:
        _read_fold(item)
    if launched_rank()[0] != 0:  # under torchrun every rank trains; rank 0 predicts, writes and summarises
        return CrossValidation(out, plan)
    return summarise(out, plan, Path(data), bootstrap, outputs, review_rate, calibration)


def check_calibration(method: str) -> None:
    from medsight.core.calibration import METHODS

    if method not in METHODS:
        # named as both callers name it: cross_validate(calibration=...) and medsight cv --calibration
        raise ConfigError(f"must be one of {', '.join(METHODS)}, got {method!r}", "calibration")


def _folds(task_class, data: Path, folds: int, out: Path, profile, extra: list[str], seed) -> list[Fold]:
    """The recorded assignment, or a new one over the groups of the training pool."""
    recorded = out / FOLDS_FILE
    if recorded.is_file():
        saved = json.loads(recorded.read_text())
        if saved.get("folds") != folds:
            raise DataError(f"holds {saved.get('folds')} folds, not {folds}: use that number or another --out",
                            recorded)
        groups = saved["groups"]
    else:
        config = resolve(task_class.config_class, profile=profile_of(task_class, profile), overrides=extra)
        task = task_class(config)
        source = task.open_data(data)
        task.learn_state(source)
        pool = task.records(source, "train") + task.records(source, "val")
        names = sorted({str(r.get("group", r.get("id"))) for r in pool})
        if len(names) < folds:
            raise DataError(f"{len(names)} groups (patients, cases, scans) cannot fill {folds} folds", data)
        split_seed = config.data.split_seed if seed is None else seed
        assigned = assign_folds(names, folds, split_seed)
        groups = [[g for g in names if assigned[g] == k] for k in range(folds)]
        if launched_rank()[0] == 0:  # every rank deals the same folds; one writes them
            write_json({"folds": folds, "seed": split_seed, "data": str(data), "groups": groups}, recorded)
    return [Fold(k, out / f"fold_{k}", list(groups[k])) for k in range(folds)]


def _run_fold(task: str, data: Path, item: Fold, profile, extra: list[str], outputs: dict[int, dict]) -> None:
    """Train fold ``item`` (resumed where it stopped), then predict its own groups: its OOF rows."""
    from medsight.inference.model import load
    from medsight.training.run import train

    if (item.dir / FOLD_FILE).is_file():
        log.info(f"fold {item.index}: finished earlier ({item.dir})")
        return
    if checkpoint.in_run(item.dir).is_file():
        log.info(f"fold {item.index}: resuming {item.dir}")
        run = train(task, resume=item.dir)
    else:
        log.info(f"fold {item.index}: training on the other folds, validating on {len(item.groups)} group(s)")
        run = train(task, data, out=item.dir, profile=profile,
                    overrides=[*extra, f"data.val_groups=[{','.join(_quoted(g) for g in item.groups)}]"])
    if launched_rank()[0] != 0:
        return
    best = run.best or run.last
    evaluation = _oof_evaluation(load(best), data)
    names = next((evaluation.outputs[k] for k in ("id", "seriesuid") if len(evaluation.outputs.get(k, ()))
                  == len(evaluation.cases)), [""] * len(evaluation.cases))
    rows = [{"fold": item.index, "case": str(name), **row} for name, row in zip(names, evaluation.cases)]
    write_csv(rows, item.dir / OOF_FILE, list(rows[0]) if rows else ["fold"])
    outputs[item.index] = evaluation.outputs
    write_json({"fold": item.index, "checkpoint": str(best), "metrics": evaluation.metrics,
                "cases": len(rows)}, item.dir / FOLD_FILE)


def _oof_evaluation(model, data: Path):
    """``model`` on its fold's own groups, with the outputs the task's choices need (segmentation's
    post-processing candidates are computed only while learning)."""
    from medsight.inference.evaluate import evaluate

    task = model.configured()
    task.learning, task.calibrating = True, True
    return evaluate(task, model.execution(task, "evaluate"), data, "val", None, model.path)


def _quoted(group: str) -> str:
    return '"' + group.replace('"', '\\"') + '"'


def _read_fold(item: Fold) -> None:
    marker = item.dir / FOLD_FILE
    if marker.is_file():
        done = json.loads(marker.read_text())
        item.metrics, item.checkpoint = done["metrics"], Path(done["checkpoint"])


def summarise(out: Path, plan: list[Fold], data: Path, bootstrap: int, outputs: dict[int, dict],
              review_rate: float = 0.10, calibration: str = "auto") -> CrossValidation:
    """Mean and sd over the finished folds, the pooled OOF metrics and their bootstrap CI; ``cv.json``.
    ``outputs``: OOF outputs already at hand; a fold finished by another call predicts its groups again."""
    from medsight.inference.model import load

    result = CrossValidation(out, plan)
    finished = result.finished
    if not finished:
        return result
    names = sorted({k for f in finished for k, v in f.metrics.items() if _number(v)})
    for name in names:
        values = [float(f.metrics[name]) for f in finished
                  if _number(f.metrics.get(name)) and math.isfinite(f.metrics[name])]  # undefined in a fold: left out
        if not values:
            continue
        result.mean[name] = float(np.mean(values))
        result.sd[name] = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
    models = {f.index: load(f.checkpoint) for f in finished}
    parts = [outputs[f.index] if f.index in outputs else _oof_evaluation(models[f.index], data).outputs
             for f in finished]
    pooled = pool(parts)
    task = models[finished[0].index].configured()  # the task's metrics; its learnt state is the first fold's
    result.pooled = {k: float(v) for k, v in task.validation_metrics(pooled).items() if _number(v)}
    result.ci = bootstrap_ci(task, pooled, bootstrap)
    result.chosen, chosen_metrics = choose_on_oof(models[finished[0].index], parts, review_rate, calibration)
    for f in finished:
        result.oof += _read_rows(f.dir / OOF_FILE)
    if result.oof:
        write_csv(result.oof, out / OOF_FILE, list(result.oof[0]))
    if len(finished) >= 2 and launched_rank()[0] == 0:  # the folds' models, with what was chosen on their OOF predictions
        result.ensemble = write_ensemble(finished, result.chosen, out / ENSEMBLE_FILE)
    summary = {"folds": [{"fold": f.index, "groups": len(f.groups), "checkpoint": str(f.checkpoint) if f.checkpoint
                          else None, "metrics": f.metrics} for f in plan],
               "ensemble": str(result.ensemble) if result.ensemble else None,
               "finished": len(finished), "mean": result.mean, "sd": result.sd, "pooled_oof": result.pooled,
               "ci95_oof": {k: list(v) for k, v in result.ci.items()}, "bootstrap": bootstrap,
               "chosen_on_oof": result.chosen, "oof_with_choices": chosen_metrics}
    write_json(summary, out / SUMMARY_FILE)
    _report(out, summary, task, pooled)
    return result


def _report(out: Path, summary: dict, task, pooled: dict[str, list]) -> None:
    """``report.html`` beside ``cv.json``, with the reliability diagram of the OOF predictions before and after
    the calibration chosen on them."""
    from medsight.core.calibration import stored
    from medsight.io.pictures import reliability_png
    from medsight.reporting.report import write_cv_report

    samples = task.calibration_samples(pooled)
    picture = None
    if samples:
        chosen = summary["chosen_on_oof"]
        picture = reliability_png(samples, out / "reliability.png", stored(chosen) or None,
                                  "reliability on the out-of-fold predictions", chosen.get("calibration_method"))
    write_cv_report(out, summary, picture, headline=getattr(task.monitor, "metric", None))


def pool(parts: Sequence[dict]) -> dict[str, list]:
    """The folds' validation outputs as one: every per-case list concatenated."""
    return {key: [v for part in parts for v in part[key]] for key in parts[0]
            if all(key in part and isinstance(part[key], list) for part in parts)}


def choose_on_oof(model, parts: Sequence[dict[str, list]], review_rate: float,
                  calibration: str = "auto") -> tuple[dict[str, Any], dict[str, float]]:
    """What the task chooses on validation (thresholds, post-processing), chosen on the folds' OOF outputs
    (``parts``, one per fold) pooled, as training's validation would; then the calibration and the review
    threshold (``trust_on_oof``); and the OOF metrics with those choices (ECE/Brier before and after among
    them, and each calibration method's cross-fitted ECE/Brier)."""
    pooled = pool(parts)
    choosing = model.configured()
    choosing.learning = True  # as validation does while training: the task chooses its settings on these outputs
    metrics = {k: float(v) for k, v in choosing.validation_metrics(pooled).items() if _number(v)}
    choosing.learning = False
    chosen = {key: choosing.state[key] for key in choosing.chosen_on_validation if choosing.state.get(key) is not None}
    chosen.update(trust_on_oof(choosing, parts, review_rate, calibration))
    metrics.update(chosen.pop("calibration_metrics", {}))
    return chosen, metrics


def trust_on_oof(task, parts: Sequence[dict[str, list]], review_rate: float,
                 calibration: str = "auto") -> dict[str, Any]:
    """What makes the ensemble's outputs trustworthy, chosen on the folds' OOF predictions (``medsight.core.
    calibration``): per output a calibration map by the method the folds favour cross-fitted (``choose_method``),
    fitted on them all pooled, with the task's state that depends on probability values moved with it
    (classification's thresholds); and the review threshold for ``review_rate`` of the cases, with the OOF
    mean quality of the flagged cases and of the rest. ECE/Brier before and after, as metrics
    (``cross_fitted_ece_platt``...: each method scored on folds it was not fitted on)."""
    from medsight.core import calibration as cal

    chosen: dict[str, Any] = {}
    pooled = pool(parts)
    samples = task.calibration_samples(pooled)
    if samples:
        method, crossed = cal.choose_method([task.calibration_samples(part) for part in parts], calibration)
        affine = cal.fit(samples, method)
        metrics = cal.calibration_metrics(samples, {k: tuple(v) for k, v in affine.items()} or None)
        if not affine:
            metrics.update({f"{k}_uncalibrated": v for k, v in list(metrics.items())})
        metrics.update({f"cross_fitted_{k}": v for k, v in crossed.items()})
        if f"ece_{method}" in crossed:  # the chosen method's cross-fitted figures under the names used before
            metrics.update(cross_fitted_ece=crossed[f"ece_{method}"], cross_fitted_brier=crossed[f"brier_{method}"],
                           cross_fitted_ece_uncalibrated=crossed["ece_none"],
                           cross_fitted_brier_uncalibrated=crossed["brier_none"])
        chosen["calibration_metrics"] = metrics
        before = {k: task.state.get(k) for k in task.chosen_on_validation}
        task.apply_calibration(affine, method)
        chosen.update(calibration=affine, calibration_method=method,
                      **{k: task.state[k] for k in before if task.state.get(k) is not None and task.state[k] != before[k]})
        tried = ", ".join(f"{m} {crossed[f'ece_{m}']:.4f}" for m in ("none", "temperature", "platt")
                          if f"ece_{m}" in crossed)
        log.info(f"calibration on the out-of-fold predictions: {method}" + (f" (cross-fitted ECE: {tried})" if tried
                                                                            else "")
                 + "; ECE %.4f -> %.4f, Brier %.4f -> %.4f" % (metrics["ece_uncalibrated"], metrics["ece"],
                                                               metrics["brier_uncalibrated"], metrics["brier"]))
    scores, quality = task.review_scores(pooled), task.case_quality(pooled)
    if scores:
        threshold = cal.review_threshold(scores, review_rate)
        chosen["review"] = {"threshold": threshold, "rate": review_rate, "score": "predictive entropy",
                            "oof": cal.flagged_versus_rest(scores, quality, threshold) if quality else {}}
    return chosen


def write_ensemble(finished: list[Fold], chosen: dict[str, Any], path: Path) -> Path:
    """``OUT/ensemble.pt``: every finished fold's best checkpoint, with the first fold's learnt state and
    what was chosen on the OOF predictions (thresholds, post-processing, temperatures, review) over it."""
    return write_members([f.checkpoint for f in finished], chosen, path)


def write_members(paths: Sequence[Path], chosen: dict[str, Any], path: Path) -> Path:
    from medsight.inference.ensemble import ensemble_state

    states = [checkpoint.load(p) for p in paths]
    state = ensemble_state(states, list(paths), task_state={**(states[0].get("task_state") or {}), **chosen})
    checkpoint.save(state, path)
    log.info(f"ensemble of {len(paths)} models, with the choices made on their out-of-fold predictions: {path}")
    return path


def bootstrap_ci(task, outputs: dict[str, list], resamples: int, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Percentile 95 % intervals of the task's metrics over cases resampled with replacement. Case-named
    outputs (ids, seriesuids) get a suffix per draw, so a case drawn twice counts twice."""
    count = max((len(v) for v in outputs.values()), default=0)
    if resamples <= 0 or count < 2:
        return {}
    per_case = [k for k, v in outputs.items() if len(v) == count]
    names = {k for k in per_case if all(isinstance(x, str) for x in outputs[k]) and len(set(outputs[k])) == count}
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(resamples):
        index = rng.integers(0, count, count)
        sample = {k: ([f"{outputs[k][i]}#{j}" for j, i in enumerate(index)] if k in names
                      else [outputs[k][i] for i in index]) for k in per_case}
        for name, value in task.validation_metrics(sample).items():
            if _number(value) and math.isfinite(value):
                draws.setdefault(name, []).append(float(value))
    return {name: (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5)))
            for name, v in draws.items() if len(v) >= resamples // 2}


def _number(value) -> bool:
    return isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)


def _read_rows(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))
