"""The commands that use models: each parses nothing itself (``medsight.cli.arguments`` does), calls the Python
API and prints what it did."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from medsight.errors import CheckpointError, ConfigError
from medsight.io.writers import exclusive, output_file, output_folder

log = logging.getLogger(__name__)
KEY_VALUE_HELP = "config overrides, e.g. trainer.max_epochs=5 optim.lr=3e-4"
OVERRIDE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+=")


def split_overrides(items) -> tuple[list[str], list[str]]:
    """(positional inputs, key=value overrides): an override is a dotted key, then '='."""
    items = list(items or [])
    return [i for i in items if not OVERRIDE.match(i)], [i for i in items if OVERRIDE.match(i)]


def cmd_train(args) -> int:
    from medsight.training.run import train

    run = train(args.task, args.data, out=args.out, profile=args.profile, plans=args.plans,
                init_weights=args.init_weights, resume=args.resume, overrides=list(args.overrides),
                config=args.config or [], name=args.name)
    if run.report is not None:
        summary = run.summary
        best = summary["best_value"]
        shown = (f"{summary['best_metric']} {best:.4f} at epoch {summary['best_epoch']}" if best is not None else
                 "no validation metric")
        log.info(f"done: {summary['epochs']} epochs, best {shown}; checkpoints in {run.dir / 'checkpoints'}; "
                 f"report {run.report}")
    return 0


def cmd_cv(args) -> int:
    from medsight.training.cv import cross_validate

    if not 0 < args.review_rate < 1:
        raise ConfigError(f"--review-rate must be between 0 and 1, got {args.review_rate}", "command line")
    if args.configs:
        from medsight.training.configurations import find_best_configuration

        if args.fold is not None:
            raise ConfigError("--fold runs one fold of one configuration: use --out DIR/NAME without --configs",
                              "command line")
        choice = find_best_configuration(args.task, args.data, args.configs.split(","), folds=args.folds,
                                         out=args.out, profile=args.profile, overrides=list(args.overrides),
                                         bootstrap=args.resamples, review_rate=args.review_rate,
                                         collect=args.collect, calibration=args.calibration)
        log.info(f"best configuration: {choice.name}; ensemble {choice.ensemble}")
        return 0
    result = cross_validate(args.task, args.data, folds=args.folds, out=args.out, profile=args.profile,
                            overrides=list(args.overrides), fold=args.fold, collect=args.collect,
                            bootstrap=args.resamples, review_rate=args.review_rate,
                            calibration=args.calibration)
    for item in result.folds:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in sorted(item.metrics.items())[:6] if isinstance(v, float))
        log.info(f"fold {item.index}: {len(item.groups)} group(s); " + (shown or "not finished"))
    for name in sorted(result.mean)[:8]:
        low, high = result.ci.get(name, (float("nan"), float("nan")))
        log.info(f"{name}: folds {result.mean[name]:.4f} +- {result.sd[name]:.4f}; out-of-fold "
                 f"{result.pooled.get(name, float('nan')):.4f} (95% CI {low:.4f}-{high:.4f})")
    review = result.chosen.get("review") or {}
    if review.get("oof"):
        oof = review["oof"]
        log.info(f"review flag on the out-of-fold cases: {oof['flagged']} flagged (mean quality "
                 f"{oof['flagged_mean']:.4f}) against {oof['rest']} others ({oof['rest_mean']:.4f})")
    log.info(f"{len(result.finished)} of {len(result.folds)} folds finished; {result.dir / 'cv.json'}"
             + (f"; ensemble {result.ensemble}" if result.ensemble else ""))
    return 0


def _task_options(args, command: str, task_name: str) -> list[str]:
    """The overrides the checkpoint's task makes of its own options; an option of another task is an error."""
    from medsight.core.registry import TASKS

    owners: dict[str, str] = getattr(args, "task_option_owners", {})
    for dest, owner in owners.items():
        if owner != task_name and getattr(args, dest, None) not in (None, False, 0, [], ""):
            flag = "--" + dest.replace("_", "-")
            raise ConfigError(f"{flag} is an option of the {owner} task; this checkpoint is a {task_name} model",
                              "command line")
    return TASKS.get(task_name).overrides_from_arguments(args, command)


def _load(args, engine: str | None):
    from medsight.inference.model import load

    return load(args.checkpoint, device=args.device, engine=engine or "auto", precision=args.precision)


def cmd_evaluate(args) -> int:
    task_words, overrides = split_overrides(([args.task] if args.task else []) + list(args.overrides))
    task_name = task_words[0] if task_words else None
    if len(task_words) > 1:
        raise ConfigError(f"unexpected argument(s) {' '.join(task_words[1:])}", "command line")
    if args.predictions:
        return _score(args, task_name)
    if not args.checkpoint or not args.data:
        raise ConfigError("evaluate needs --checkpoint and --data (or TASK --predictions FILE)", "command line")
    model = _load(args, args.engine)
    if task_name and task_name != model.task_name:
        raise CheckpointError(f"made for task {model.task_name!r}, not {task_name!r}", args.checkpoint)
    overrides += _task_options(args, "evaluate", model.task_name)
    split = args.split or model.task.evaluate_split
    out = output_folder(Path(args.out) if args.out else model.run_dir / "evaluation" / split)
    evaluation = model.evaluate(args.data, split, out=out, overrides=overrides)
    _print_metrics(evaluation.metrics, out)
    return 0


def _score(args, task_name: str | None) -> int:
    from medsight.core.registry import TASKS

    if not task_name:
        raise ConfigError("scoring a predictions file needs the task: medsight evaluate TASK --predictions ...",
                          "command line")
    task_class = TASKS.get(task_name)
    owners: dict[str, str] = getattr(args, "task_option_owners", {})
    options = {dest: getattr(args, dest) for dest, owner in owners.items() if owner == task_name}
    out = Path(args.out or Path(args.predictions).parent / "evaluation")
    _print_metrics(task_class.score_predictions(Path(args.predictions), out, **options), out)
    return 0


def _print_metrics(metrics: dict, out: Path) -> None:
    width = max((len(k) for k in metrics), default=10)
    for key, value in metrics.items():
        log.info(f"{key:{width}s}  {value:.4f}" if isinstance(value, float) else f"{key:{width}s}  {value}")
    log.info(f"written to {out}")


def cmd_predict(args) -> int:
    inputs, overrides = split_overrides(args.inputs)
    images = {}
    for pair in args.image or []:
        role, sep, path = pair.partition("=")
        if not sep or not role or not path:
            raise ConfigError(f"--image {pair!r} is not ROLE=PATH (e.g. flair=case_flair.nii.gz)", "command line")
        images[role.strip().lower()] = path
    if not inputs and not images:
        raise ConfigError("give at least one input (a file or folder) or --image ROLE=PATH", "command line")
    with exclusive(args.out, "predict"):
        model = _load(args, args.engine)
        overrides += _task_options(args, "predict", model.task_name)
        report = model.predict_files(inputs, args.out, images=images or None, batch_size=args.batch_size,
                                     dicom=args.dicom or args.dicom_format == "dicom-seg",
                                     keep_identifiers=args.keep_identifiers, overrides=overrides, debug=args.debug,
                                     strict_domain=args.strict_domain)
    log.info(f"predicted {report.cases} case(s) in {report.seconds:.1f} s; wrote {len(report.written)} file(s) "
             f"to {args.out}")
    for failure in report.failures:
        log.info(f"failed: {failure}")
    if report.failures:
        log.info(f"{len(report.failures)} input(s) failed; the others were written")
        return 1
    return 0


def cmd_ensemble(args) -> int:
    from medsight.inference.ensemble import ensemble

    ensemble(args.checkpoints, output_file(args.out))
    return 0


def cmd_export(args) -> int:
    from medsight.inference.model import load

    out = output_file(args.out)
    model = load(args.checkpoint, engine="torch")
    written = model.export(args.format, out)
    shown = f"{len(model.members)} member files like {written}" if model.members else str(out)
    log.info(f"exported {model.task_name} model as {args.format} to {shown}")
    return 0


def cmd_compress(args) -> int:
    from medsight.compression.compress import compress

    out = output_file(args.out)
    if not args.data and not args.calibration:
        raise ConfigError("compress needs --data (measured before and after on its validation split) or "
                          "--calibration", "command line")
    label = compress(Path(args.checkpoint), args.method, out, Path(args.data or args.calibration),
                     calibration=Path(args.calibration) if args.calibration else None, samples=args.samples,
                     amount=args.amount, finetune_epochs=args.finetune_epochs, split=args.split,
                     student=args.student)
    before, after = label["before"], label["after"]
    log.info(f"{'':18s} {'before':>14s} {'after':>14s}")
    log.info(f"{'engine':18s} {before['engine']:>14s} {after['engine']:>14s}")
    log.info(f"{'size (MB)':18s} {before['size_bytes'] / 1e6:14.2f} {after['size_bytes'] / 1e6:14.2f}   "
             f"(fp32 weights alone {label['fp32_weights_bytes'] / 1e6:.2f} MB: "
             f"{label['size_ratio_vs_fp32_weights']:.3f}x)")
    log.info(f"{'evaluate cases/s':18s} {before['cases_per_second']:14.3f} {after['cases_per_second']:14.3f}")
    if "parameters" in label:
        log.info(f"{'parameters':18s} {label['parameters']['teacher']:14,d} {label['parameters']['student']:14,d}   "
                 f"({label['student']}, trained in {label['distill']['training_seconds']:.0f} s)")
    for key, value in before["metrics"].items():
        if isinstance(value, float) and isinstance(after["metrics"].get(key), float):
            log.info(f"{key:18s} {value:14.4f} {after['metrics'][key]:14.4f}")
    log.info(f"wrote {out} (+ {out.name}.compression.json)")
    return 0


def cmd_import(args) -> int:
    from medsight.reporting.info import describe_provenance
    from medsight.sources.importers import import_model

    labels = [name.strip() for name in args.labels.split(",")] if args.labels else None
    output_file(args.out)
    result = import_model(args.source, Path(args.out), requested=args.format, labels=labels)
    log.info(f"imported {args.source} as a {result['task']} checkpoint: {result['checkpoint']}")
    for line in result["notes"] + describe_provenance(result["provenance"]):
        log.info(f"  {line}")
    log.info("  loaded weights-only; fine-tune with: medsight train TASK --data DIR --init-weights "
             f"{result['checkpoint']}")
    return 0


def cmd_demo(args) -> int:
    from medsight.demo import run_demo

    return run_demo(Path(args.out), tasks=args.tasks, quick=args.quick)


def cmd_serve(args) -> int:
    """``medsight serve``: runs until SIGINT/SIGTERM; a bad config is a one-line error (exit status 2)."""
    from medsight.serve import serve

    serve(args.config, workers=args.workers, retry_failed=args.retry_failed)
    return 0

