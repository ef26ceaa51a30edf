"""CLI commands that use models: train, evaluate, predict, export, demo."""

from __future__ import annotations

import re
import time
from pathlib import Path

from medsight.errors import CheckpointError, ConfigError, MedsightError

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


def cmd_train(args) -> int:
    from medsight import checkpoint
    from medsight.config import resolve
    from medsight.registry import TASKS
    from medsight.runtime import Runtime
    from medsight.trainer import Trainer

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
    overrides = list(args.overrides)
    if args.init_weights:
        if not Path(args.init_weights).is_file():
            raise ConfigError("--init-weights: file not found", args.init_weights)
        overrides.append(f"model.init_weights={Path(args.init_weights).resolve()}")
    config = resolve(task_class.config_class, profile=profile, files=args.config or [], overrides=overrides,
                     base=base)
    config.task = args.task
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
        trainer = Trainer(task_class(config), data, run_dir, runtime)
        summary = trainer.fit(resume=resume_state)
        if runtime.is_main:
            from medsight.report import write_report

            report = write_report(run_dir)
            best = summary["best_value"]
            shown = f"{summary['best_metric']} {best:.4f} at epoch {summary['best_epoch']}" if best is not None else \
                "no validation metric"
            print(f"done: {summary['epochs']} epochs, best {shown}; checkpoints in {run_dir / 'checkpoints'}; "
                  f"report {report}")
    finally:
        runtime.close()
    return 0


def cmd_evaluate(args) -> int:
    from medsight.inference import evaluate, load_for_inference
    from medsight.registry import TASKS

    task_words, overrides = _split_overrides(([args.task] if args.task else []) + list(args.overrides))
    args.task = task_words[0] if task_words else None
    if len(task_words) > 1:
        raise ConfigError(f"unexpected argument(s) {' '.join(task_words[1:])}", "command line")
    if args.predictions:
        if not args.task:
            raise ConfigError("scoring a predictions file needs the task: medsight evaluate TASK --predictions ...",
                              "command line")
        task_class = TASKS.get(args.task)
        scorer = getattr(task_class, "score_predictions", None)
        if scorer is None:
            raise ConfigError(f"task {args.task} cannot score a predictions file", "command line")
        out = Path(args.out or Path(args.predictions).parent / "evaluation")
        metrics = scorer(predictions=Path(args.predictions), annotations=args.annotations, excluded=args.excluded,
                         seriesuids=args.seriesuids, out=out, bootstrap=args.bootstrap)
        _print_metrics(metrics, out)
        return 0
    if not args.checkpoint or not args.data:
        raise ConfigError("evaluate needs --checkpoint and --data (or TASK --predictions FILE)", "command line")
    loaded = load_for_inference(args.checkpoint, overrides)
    if args.task and args.task != loaded.task.name:
        raise CheckpointError(f"made for task {loaded.task.name!r}, not {args.task!r}", args.checkpoint)
    split = args.split or loaded.task.evaluate_split
    out = Path(args.out) if args.out else loaded.run_dir / "evaluation" / split
    metrics = evaluate(loaded, Path(args.data), split, out, device=args.device, precision=args.precision)
    _print_metrics(metrics, out)
    return 0


def _print_metrics(metrics: dict, out: Path) -> None:
    width = max((len(k) for k in metrics), default=10)
    for key, value in metrics.items():
        print(f"{key:{width}s}  {value:.4f}" if isinstance(value, float) else f"{key:{width}s}  {value}")
    print(f"written to {out}")


def cmd_predict(args) -> int:
    from medsight.inference import load_for_inference, predict

    args.inputs, overrides = _split_overrides(args.inputs)
    if args.cam:
        overrides.append("infer.cam=true")
    if args.tta:
        overrides.append("infer.tta=true")
    images = {}
    for pair in args.image or []:
        role, sep, path = pair.partition("=")
        if not sep or not role or not path:
            raise ConfigError(f"--image {pair!r} is not ROLE=PATH (e.g. flair=case_flair.nii.gz)", "command line")
        images[role.strip().lower()] = path
    if not args.inputs and not images:
        raise ConfigError("give at least one input (a file or folder) or --image ROLE=PATH", "command line")
    loaded = load_for_inference(args.checkpoint, overrides)
    report = predict(loaded, args.inputs, Path(args.out), images=images or None, device=args.device,
                     precision=args.precision, batch_size=args.batch_size, debug=args.debug)
    print(f"predicted {report.cases} case(s) in {report.seconds:.1f} s; wrote {len(report.written)} file(s) "
          f"to {args.out}")
    for failure in report.failures:
        print(f"failed: {failure}")
    if report.failures:
        print(f"{len(report.failures)} input(s) failed; the others were written")
        return 1
    return 0


def cmd_export(args) -> int:
    from medsight.inference import export, load_for_inference

    loaded = load_for_inference(args.checkpoint)
    out = export(loaded, args.format, Path(args.out))
    print(f"exported {loaded.task.name} model as {args.format} to {out}")
    return 0


def cmd_demo(args) -> int:
    from medsight.demo import run_demo

    return run_demo(Path(args.out), tasks=args.tasks, quick=args.quick)


def add_commands(sub) -> None:
    """Register the model commands on the ``medsight`` sub-parser."""
    train = sub.add_parser("train", help="train a task on a dataset folder")
    train.add_argument("task")
    train.add_argument("--data", help="dataset folder (stored in checkpoints, so --resume needs none)")
    train.add_argument("--config", action="append", help="YAML config file (repeatable; later files win)")
    train.add_argument("--profile", help="named settings of the task, e.g. cpu-small or gpu")
    train.add_argument("--out", help="run folder (default runs/TASK/NAME)")
    train.add_argument("--name", help="run name (default: date-time)")
    train.add_argument("--resume", help="continue exactly from a run folder or checkpoint")
    train.add_argument("--init-weights", metavar="PATH",
                       help="start from a local state dict (same as model.init_weights=PATH)")
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
    evaluate.add_argument("--predictions", help="a submission file to score without a model")
    evaluate.add_argument("--annotations")
    evaluate.add_argument("--excluded")
    evaluate.add_argument("--seriesuids")
    evaluate.add_argument("--bootstrap", type=int, default=0, help="bootstrap resamples for confidence intervals")
    evaluate.add_argument("overrides", nargs="*", metavar="key=value", help=KEY_VALUE_HELP)
    evaluate.set_defaults(func=cmd_evaluate)

    predict = sub.add_parser("predict", help="predict files or folders; a bad case is reported, the rest go on")
    predict.add_argument("--checkpoint", required=True)
    predict.add_argument("inputs", nargs="*", metavar="INPUT",
                         help="files or folders (one case each, or folders of images); key=value items are "
                              "config overrides, e.g. infer.overlap=0.5")
    predict.add_argument("--out", required=True)
    predict.add_argument("--image", action="append", metavar="ROLE=PATH",
                         help="one case from explicit files, e.g. --image flair=a.nii.gz --image t1c=b.nii.gz")
    predict.add_argument("--cam", action="store_true", help="classification: Grad-CAM pictures")
    predict.add_argument("--tta", action="store_true", help="segmentation: flip test-time augmentation")
    predict.add_argument("--device")
    predict.add_argument("--precision", choices=["fp32", "bf16", "fp16", "auto"])
    predict.add_argument("--batch-size", type=int, help="items per batch (default: the task picks one for the device)")
    predict.set_defaults(func=cmd_predict)

    export = sub.add_parser("export", help="export a checkpoint's model as TorchScript or ONNX")
    export.add_argument("--checkpoint", required=True)
    export.add_argument("--format", choices=["torchscript", "onnx"], required=True)
    export.add_argument("--out", required=True)
    export.set_defaults(func=cmd_export)

    demo = sub.add_parser("demo", help="synthetic data -> train -> evaluate -> predict -> report, every task")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--tasks", nargs="*", help="only these tasks")
    demo.add_argument("--quick", action="store_true", help="the smallest settings (for tests)")
    demo.set_defaults(func=cmd_demo)
