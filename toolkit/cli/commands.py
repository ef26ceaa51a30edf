"""CLI commands that use models: train, evaluate, predict, export, demo."""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import time
from pathlib import Path

from medsight.errors import CheckpointError, ConfigError, MedsightError
from medsight.io.writers import exclusive, output_file, output_folder

#: medsight.inference.engines.ENGINES, spelled here so that the command line starts without importing torch
ENGINE_CHOICES = ("auto", "torch", "onnxruntime", "openvino")

log = logging.getLogger(__name__)
KEY_VALUE_HELP = "config overrides, e.g. trainer.max_epochs=5 optim.lr=3e-4"
_OVERRIDE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+=")


def _split_overrides(items) -> tuple[list[str], list[str]]:
    """(positional inputs, key=value overrides): an override is a dotted key, then '='."""
    items = list(items or [])
    return [i for i in items if not _OVERRIDE.match(i)], [i for i in items if _OVERRIDE.match(i)]


def _run_dir_of(path: Path) -> Path:
    path = Path(path)
    if path.is_dir():
        return path
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def _starting_weights_alias(config) -> None:
    """``model.init_weights`` is the old spelling of ``trainer.init_weights``: honoured when a run starts."""
    model = getattr(config, "model", None)
    old = getattr(model, "init_weights", None)
    if old:
        if config.trainer.init_weights and config.trainer.init_weights != old:
            raise ConfigError("model.init_weights and trainer.init_weights (--init-weights) differ; give one")
        config.trainer.init_weights, model.init_weights = old, None


def _inherited_settings(path: Path, task_class) -> dict | None:
    """The architecture and input settings of a medsight checkpoint of this task given as starting weights
    (``Task.inherited_from_starting_weights``): a run started from it builds the same network."""
    import torch

    try:
        state = torch.load(path, map_location="meta", weights_only=True)
    except Exception:  # not a checkpoint medsight reads: the starting-weights loader will say why
        return None
    if not isinstance(state, dict) or not str(state.get("format", "")).startswith("medsight-checkpoint") \
            or state.get("task") != task_class.name:
        return None
    config, picked = state.get("config") or {}, {}
    for key in task_class.inherited_from_starting_weights:
        section, _, name = key.partition(".")
        if section in config and (not name or name in config[section]):
            picked.setdefault(section, {}).update(config[section] if not name else {name: config[section][name]})
    picked.get("model", {}).pop("init_weights", None)
    shown = ", ".join(f"{s}.{k}" for s, keys in picked.items() for k in keys)
    log.info(f"from the starting weights' config: {shown}")
    return picked


def cmd_train(args) -> int:
    from medsight.core import checkpoint
    from medsight.planning import plans
    from medsight.core.config import resolve
    from medsight.core.registry import TASKS
    from medsight.core.runtime import Runtime
    from medsight.training.trainer import Trainer

    task_class = TASKS.get(args.task)
    resume_state = None
    if args.resume:
        resume_state = checkpoint.load(args.resume, task=args.task)
        run_dir = _run_dir_of(Path(args.resume))
        data = Path(args.data or resume_state["data"])
        base = resume_state["config"]
    else:
        if not args.data:
            raise ConfigError("--data is required (the dataset folder)", "command line")
        data = Path(args.data)
        base = None
    profile = None
    if args.profile:
        if args.profile not in task_class.profiles:
            known = ", ".join(task_class.profiles) or "none"
            raise ConfigError(f"task {args.task} has no profile {args.profile!r} (known: {known})", "command line")
        profile = task_class.profiles[args.profile]
    planned = None
    if args.plans:
        if args.resume:
            raise ConfigError("--plans starts a new run; a resumed run keeps its settings", "command line")
        planned = plans.read(args.plans, args.task)
        profile = plans.merge(profile, planned["config"])  # over the profile, under files and overrides
    overrides = list(args.overrides)
    if args.init_weights:
        if args.resume:
            raise ConfigError("--init-weights starts a new run; a resumed run continues from its checkpoint",
                              "command line")
        if not Path(args.init_weights).is_file():
            raise ConfigError("--init-weights: file not found", args.init_weights)
        overrides.append(f"trainer.init_weights={Path(args.init_weights).resolve()}")
    inherited = _inherited_settings(Path(args.init_weights), task_class) if args.init_weights else None
    config = resolve(task_class.config_class, profile=profile, files=args.config or [], overrides=overrides,
                     base=base, inherited=inherited)
    config.task = args.task
    if not args.resume:
        _starting_weights_alias(config)
    if not data.exists():
        raise MedsightError("no such dataset folder", data)
    cfg = config.trainer
    runtime = Runtime(cfg.device, cfg.precision, cfg.channels_last, cfg.compile)
    try:
        if not args.resume:
            name = args.name or time.strftime("%Y%m%d-%H%M%S")
            run_dir = Path(args.out) if args.out else Path("runs") / args.task / name
            run_dir = Path(runtime.broadcast(str(run_dir)))
            if (run_dir / "checkpoints" / "last.pt").exists():
                raise CheckpointError("this run folder already holds a checkpoint; continue it with --resume, "
                                      "or choose another --out", run_dir)
        with exclusive(run_dir, "train") if runtime.is_main else contextlib.nullcontext():
            if planned is not None and runtime.is_main:
                from medsight.core.config import to_dict

                run_dir.mkdir(parents=True, exist_ok=True)
                plans.record_in_run(run_dir, planned, Path(args.plans).resolve(), to_dict(config))
            trainer = Trainer(task_class(config), data, run_dir, runtime)
            summary = trainer.fit(resume=resume_state)
        if runtime.is_main:
            if (run_dir / "plans.json").exists():  # a planned run: what training chose, next to the plan
                for key in trainer.task.chosen_on_validation:
                    if trainer.task.state.get(key) is not None:
                        plans.add_to_run_plans(run_dir, key, trainer.task.state[key])
            from medsight.reporting.report import write_report

            report = write_report(run_dir)
            best = summary["best_value"]
            shown = f"{summary['best_metric']} {best:.4f} at epoch {summary['best_epoch']}" if best is not None else \
                "no validation metric"
            log.info(f"done: {summary['epochs']} epochs, best {shown}; checkpoints in {run_dir / 'checkpoints'}; "
                     f"report {report}")
    finally:
        runtime.close()
    return 0


def cmd_evaluate(args) -> int:
    from medsight.inference.predict import evaluate
    from medsight.core.registry import TASKS

    task_words, overrides = _split_overrides(([args.task] if args.task else []) + list(args.overrides))
    args.task = task_words[0] if task_words else None
    if len(task_words) > 1:
        raise ConfigError(f"unexpected argument(s) {' '.join(task_words[1:])}", "command line")
    if args.predictions:
        if not args.task:
            raise ConfigError("scoring a predictions file needs the task: medsight evaluate TASK --predictions ...",
                              "command line")
        task_class = TASKS.get(args.task)
        out = Path(args.out or Path(args.predictions).parent / "evaluation")
        metrics = task_class.score_predictions(Path(args.predictions), args, out)
        _print_metrics(metrics, out)
        return 0
    if not args.checkpoint or not args.data:
        raise ConfigError("evaluate needs --checkpoint and --data (or TASK --predictions FILE)", "command line")
    loaded = _load_with_task_options(args, "evaluate", overrides)
    if args.task and args.task != loaded.task.name:
        raise CheckpointError(f"made for task {loaded.task.name!r}, not {args.task!r}", args.checkpoint)
    split = args.split or loaded.task.evaluate_split
    out = output_folder(Path(args.out) if args.out else loaded.run_dir / "evaluation" / split)
    metrics = evaluate(loaded, Path(args.data), split, out, device=args.device, precision=args.precision)
    _print_metrics(metrics, out)
    return 0


def _print_metrics(metrics: dict, out: Path) -> None:
    width = max((len(k) for k in metrics), default=10)
    for key, value in metrics.items():
        log.info(f"{key:{width}s}  {value:.4f}" if isinstance(value, float) else f"{key:{width}s}  {value}")
    log.info(f"written to {out}")


def cmd_predict(args) -> int:

    args.inputs, overrides = _split_overrides(args.inputs)
    images = {}
    for pair in args.image or []:
        role, sep, path = pair.partition("=")
        if not sep or not role or not path:
            raise ConfigError(f"--image {pair!r} is not ROLE=PATH (e.g. flair=case_flair.nii.gz)", "command line")
        images[role.strip().lower()] = path
    if not args.inputs and not images:
        raise ConfigError("give at least one input (a file or folder) or --image ROLE=PATH", "command line")
    with exclusive(args.out, "predict"):
        return _predict(args, overrides, images)


def _predict(args, overrides: list[str], images: dict) -> int:
    from medsight.inference.predict import predict

    loaded = _load_with_task_options(args, "predict", overrides)
    trained_on = loaded.state.get("trained_on") or {}
    if trained_on.get("synthetic"):
        log.info(f"note: this model was trained on synthetic data only ({trained_on.get('root')}): its outputs on "
                 "real images mean nothing; use a published model (medsight import) or train on real data")
    from medsight.task import OutputOptions

    options = OutputOptions(dicom=args.dicom or args.dicom_format == "dicom-seg", keep_identifiers=args.keep_identifiers)
    report = predict(loaded, args.inputs, Path(args.out), images=images or None, device=args.device,
                     precision=args.precision, batch_size=args.batch_size, debug=args.debug, options=options)
    log.info(f"predicted {report.cases} case(s) in {report.seconds:.1f} s; wrote {len(report.written)} file(s) "
             f"to {args.out}")
    for failure in report.failures:
        log.info(f"failed: {failure}")
    if report.failures:
        log.info(f"{len(report.failures)} input(s) failed; the others were written")
        return 1
    return 0


# -- options that tasks add --------------------------------------------------------------------------
def add_task_arguments(parser, command: str) -> None:
    """Every registered task's own options for ``command``, each task in its own help group. The owner
    of each option is remembered, so that an option of another task than the checkpoint's is refused."""
    from medsight.core.registry import TASKS

    owners: dict[str, str] = {}
    for name in TASKS.names():
        group = parser.add_argument_group(f"{name} options")
        before = {action.dest for action in parser._actions}
        try:
            TASKS.get(name).add_arguments(group, command)
        except argparse.ArgumentError as exc:
            log.warning(f"task {name}: option not added to {command} ({exc})")
        owners.update({action.dest: name for action in parser._actions if action.dest not in before})
    parser.set_defaults(task_option_owners=owners)


def _load_with_task_options(args, command: str, overrides: list[str]):
    """The checkpoint loaded for inference, with the overrides its task makes of its own options; an
    option of another task than the checkpoint's is an error."""
    from medsight.core import checkpoint
    from medsight.inference.predict import load_for_inference
    from medsight.core.registry import TASKS

    state = checkpoint.load(args.checkpoint)
    task_name = state["task"]
    owners: dict[str, str] = getattr(args, "task_option_owners", {})
    for dest, owner in owners.items():
        if owner != task_name and getattr(args, dest, None) not in (None, False, 0, [], ""):
            flag = "--" + dest.replace("_", "-")
            raise ConfigError(f"{flag} is an option of the {owner} task; this checkpoint is a {task_name} model",
                              "command line")
    extra = TASKS.get(task_name).overrides_from_arguments(args, command)
    loaded = load_for_inference(args.checkpoint, list(overrides) + extra, state=state)
    engine = getattr(args, "engine", None)
    if engine:
        from medsight.inference import engines
        engines.require(engine)
    if loaded.model is None:  # a compressed checkpoint runs on the engine it carries
        if engine not in (None, "auto", loaded.engine):
            raise ConfigError(f"--engine {engine}: this checkpoint holds a {loaded.engine} engine (made by medsight "
                              "compress); predict with the checkpoint it was made from to use another engine",
                              args.checkpoint)
    else:
        loaded.engine = engine or "torch"
    return loaded


def cmd_export(args) -> int:
    from medsight.inference.predict import export, load_for_inference

    out_path = output_file(args.out)
    loaded = load_for_inference(args.checkpoint)
    out = export(loaded, args.format, out_path)
    log.info(f"exported {loaded.task.name} model as {args.format} to {out}")
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
    from medsight.sources.importers import describe_provenance, import_model

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


def add_commands(sub, task_options: set[str] = frozenset()) -> None:
    """Register the model commands on the ``medsight`` sub-parser; ``task_options``: the commands that get
    the registered tasks' own options (importing every task costs a second: only where needed)."""
    train = sub.add_parser("train", help="train a task on a dataset folder")
    train.add_argument("task")
    train.add_argument("--data", help="dataset folder (stored in checkpoints, so --resume needs none)")
    train.add_argument("--config", action="append", help="YAML config file (repeatable; later files win)")
    train.add_argument("--profile", help="named settings of the task, e.g. cpu-small or gpu")
    train.add_argument("--plans", metavar="FILE", help="settings planned from the data (medsight data fingerprint): "
                       "over the profile, under --config files and key=value overrides")
    train.add_argument("--out", help="run folder (default runs/TASK/NAME)")
    train.add_argument("--name", help="run name (default: date-time)")
    train.add_argument("--resume", help="continue exactly from a run folder or checkpoint")
    train.add_argument("--init-weights", metavar="PATH",
                       help="start a new run from local weights (a state dict or a medsight checkpoint), applied "
                            "once when the run starts (trainer.init_weights)")
    train.add_argument("overrides", nargs="*", metavar="key=value", help=KEY_VALUE_HELP)
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("evaluate", help="metrics of a checkpoint on a dataset, or score a predictions file")
    evaluate.add_argument("task", nargs="?", help="needed with --predictions (e.g. detection)")
    evaluate.add_argument("--checkpoint")
    evaluate.add_argument("--data")
    evaluate.add_argument("--split", help="train, val, test or all (default: the task's)")
    evaluate.add_argument("--out", help="output folder (default RUN/evaluation/SPLIT)")
    evaluate.add_argument("--device")
    evaluate.add_argument("--precision", choices=["fp32", "bf16", "fp16", "auto"])
    evaluate.add_argument("--engine", choices=ENGINE_CHOICES,
                          help="what runs the network (default: torch, as validation ran; a compressed "
                               "checkpoint's own engine)")
    evaluate.add_argument("--predictions", help="a predictions file to score without a model (with TASK)")
    evaluate.add_argument("overrides", nargs="*", metavar="key=value", help=KEY_VALUE_HELP)
    evaluate.set_defaults(func=cmd_evaluate)
    if "evaluate" in task_options:
        add_task_arguments(evaluate, "evaluate")

    predict = sub.add_parser("predict", help="predict files or folders; a bad case is reported, the rest go on")
    predict.add_argument("--checkpoint", required=True)
    predict.add_argument("inputs", nargs="*", metavar="INPUT",
                         help="files or folders (one case each, or folders of images); key=value items are "
                              "config overrides, e.g. infer.overlap=0.5")
    predict.add_argument("--out", required=True)
    predict.add_argument("--image", action="append", metavar="ROLE=PATH",
                         help="one case from explicit files, e.g. --image flair=a.nii.gz --image t1c=b.nii.gz")
    predict.add_argument("--device")
    predict.add_argument("--precision", choices=["fp32", "bf16", "fp16", "auto"])
    predict.add_argument("--batch-size", type=int, help="items per batch (default: the task picks one for the device)")
    predict.add_argument("--engine", choices=ENGINE_CHOICES, default="auto",
                         help="what runs the network: torch, onnxruntime or openvino (CPU); auto (default): on "
                              "a CPU, the faster of torch and OpenVINO for this network, timed once and remembered "
                              "in the engine cache. The sliding window, box decoding and writers are the same code "
                              "for every engine")
    predict.add_argument("--dicom", action="store_true",
                         help="also write DICOM objects for viewers, referencing a DICOM input's series "
                              "(segmentation: DICOM SEG of the regions; detection: DICOM SEG of the marks)")
    predict.add_argument("--format", dest="dicom_format", choices=["dicom-seg"], help="the same as --dicom")
    predict.add_argument("--keep-identifiers", action="store_true",
                         help="copy the input's patient identifiers into DICOM outputs (removed by default)")
    predict.set_defaults(func=cmd_predict)
    if "predict" in task_options:
        add_task_arguments(predict, "predict")

    export = sub.add_parser("export", help="export a checkpoint's model as TorchScript or ONNX")
    export.add_argument("--checkpoint", required=True)
    export.add_argument("--format", choices=["torchscript", "onnx"], required=True)
    export.add_argument("--out", required=True)
    export.set_defaults(func=cmd_export)

    compressing = sub.add_parser("compress", help="int8, half-precision weights, pruning or distillation into "
                                                  "another network, measured before and after on a split")
    compressing.add_argument("--checkpoint", required=True)
    compressing.add_argument("--method", required=True, choices=["int8", "fp16", "bf16", "prune", "distill"])
    compressing.add_argument("--out", required=True, help="the compressed checkpoint")
    compressing.add_argument("--data", help="dataset whose --split measures before and after "
                                            "(default: --calibration)")
    compressing.add_argument("--calibration", help="int8: dataset whose training split calibrates; prune, distill: "
                                                   "the training data (default: --data)")
    compressing.add_argument("--samples", type=int, default=100, help="int8: network inputs to calibrate on")
    compressing.add_argument("--amount", type=float, default=0.3, help="prune: fraction of channels removed")
    compressing.add_argument("--finetune-epochs", type=int, help="prune: epochs of fine-tuning (default 1); "
                                                                 "distill: epochs of training the student (default: "
                                                                 "the source run's trainer.max_epochs)")
    compressing.add_argument("--student", help="distill (classification): the model trained to imitate the "
                                               "checkpoint's, a model name (medsight tasks lists them; default "
                                               "resnet18)")
    compressing.add_argument("--split", default="val", help="split measured before and after (default val)")
    compressing.set_defaults(func=cmd_compress)

    importing = sub.add_parser("import", help="a published model (MONAI bundle, CheXNet, torchvision) as a checkpoint")
    importing.add_argument("source", help="a file or folder, or monai:NAME to download a MONAI Model Zoo bundle")
    importing.add_argument("--out", required=True, help="the medsight checkpoint to write")
    importing.add_argument("--format", help="the importer (medsight tasks lists them); default: the one that "
                                            "recognises SOURCE")
    importing.add_argument("--labels", help="output names in order, for a source that does not name them")
    importing.set_defaults(func=cmd_import)

    demo = sub.add_parser("demo", help="synthetic data -> train -> evaluate -> predict -> report, every task")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--tasks", nargs="*", help="only these tasks")
    demo.add_argument("--quick", action="store_true", help="the smallest settings (for tests)")
    demo.set_defaults(func=cmd_demo)
