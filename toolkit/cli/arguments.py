"""The command-line options of the commands that use models (train, evaluate, predict, export, compress,
import, demo). Numbers are checked where they are parsed: a bad one is a one-line usage error."""

from __future__ import annotations

import argparse
import logging

from medsight.cli.commands import (KEY_VALUE_HELP, cmd_compress, cmd_cv, cmd_demo, cmd_ensemble, cmd_evaluate,
                                   cmd_export, cmd_import, cmd_predict, cmd_train)

#: medsight.inference.engines.ENGINES, spelled here so that the command line starts without importing torch
ENGINE_CHOICES = ("auto", "torch", "onnxruntime", "openvino")

log = logging.getLogger(__name__)


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    value = count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def count(text: str) -> int:
    """An argparse type: a whole number of at least 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def fraction(text: str) -> float:
    """An argparse type: a number strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


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


def add_commands(sub, task_options: set[str] = frozenset()) -> None:
    """Register the model commands on the ``medsight`` sub-parser; ``task_options``: the commands that get
    the registered tasks' own options (importing every task costs a second: only where needed)."""
    _train_command(sub)
    _cv_command(sub)
    _evaluate_command(sub, task_options)
    _predict_command(sub, task_options)
    _ensemble_command(sub)
    _export_command(sub)
    _compressing_command(sub)
    _importing_command(sub)
    _demo_command(sub)
    _serve_command(sub)


def _train_command(sub) -> None:
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


def _cv_command(sub) -> None:
    cv = sub.add_parser("cv", help="K-fold cross-validation: train every fold, predict each fold's own cases "
                                   "(out-of-fold), metrics per fold, mean +- sd and a bootstrap CI")
    cv.add_argument("task")
    cv.add_argument("--data", required=True, help="dataset folder (its training pool is split into folds)")
    cv.add_argument("--folds", type=positive_int, default=5, help="number of folds (default 5)")
    cv.add_argument("--out", help="cross-validation folder (default runs/TASK/cv): folds.json, fold_K/, oof.csv, "
                                  "cv.json")
    cv.add_argument("--profile", help="named settings of the task, e.g. cpu-small or gpu")
    cv.add_argument("--fold", type=count, help="run this fold only (its own job); gather with --collect")
    cv.add_argument("--collect", action="store_true", help="train nothing: summarise the folds finished so far")
    cv.add_argument("--configs", metavar="A,B,...",
                    help="cross-validate each configuration (a profile of the task, or a YAML file of settings) "
                         "on the same folds; choose the best one, or ensemble of two, on the out-of-fold "
                         "predictions (OUT/configurations.json, OUT/ensemble.pt)")
    cv.add_argument("--review-rate", type=float, default=0.10,
                    help="share of cases the review flag is set for, on the out-of-fold predictions (default 0.10)")
    cv.add_argument("--calibration", choices=("auto", "platt", "temperature", "none"), default="auto",
                    help="how the ensemble's probabilities are calibrated on the out-of-fold predictions: auto "
                         "(Platt or temperature scaling, whichever scores better on folds it was not fitted on, "
                         "or none), platt, temperature, none")
    cv.add_argument("--resamples", type=count, default=1000,
                    help="bootstrap resamples of the out-of-fold cases for the 95%% CI (0: none)")
    cv.add_argument("overrides", nargs="*", metavar="key=value", help=KEY_VALUE_HELP)
    cv.set_defaults(func=cmd_cv)


def _evaluate_command(sub, task_options: set[str]) -> None:
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


def _predict_command(sub, task_options: set[str]) -> None:
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
    predict.add_argument("--batch-size", type=positive_int, help="items per batch (default: the task picks one for the device)")
    predict.add_argument("--engine", choices=ENGINE_CHOICES, default="auto",
                         help="what runs the network: torch, onnxruntime or openvino (CPU); auto (default): on "
                              "a CPU, the faster of torch and OpenVINO for this network, timed once and remembered "
                              "in the engine cache. The sliding window, box decoding and writers are the same code "
                              "for every engine")
    predict.add_argument("--dicom", action="store_true",
                         help="also write DICOM objects for viewers, referencing a DICOM input's series "
                              "(segmentation: DICOM SEG of the regions; detection: DICOM SEG of the marks and a "
                              "TID 1500 SR of them; classification: a TID 1500 SR of the findings)")
    predict.add_argument("--format", dest="dicom_format", choices=["dicom-seg"], help="the same as --dicom")
    predict.add_argument("--keep-identifiers", action="store_true",
                         help="copy the input's patient identifiers into DICOM outputs (removed by default)")
    predict.add_argument("--strict-domain", action="store_true",
                         help="refuse, as failed cases, inputs unlike the model's training data (another modality, "
                              "thicker slices, not skull-stripped, another view or scale); by default they are "
                              "predicted and flagged")
    predict.set_defaults(func=cmd_predict)
    if "predict" in task_options:
        add_task_arguments(predict, "predict")


def _ensemble_command(sub) -> None:
    ensemble = sub.add_parser("ensemble", help="one checkpoint of several compatible ones (same task and inputs): "
                                               "predict, evaluate, export, compress and info take it")
    ensemble.add_argument("checkpoints", nargs="+", metavar="CKPT", help="checkpoints or run folders (2 or more)")
    ensemble.add_argument("--out", required=True, help="the ensemble checkpoint to write (E.pt)")
    ensemble.set_defaults(func=cmd_ensemble)


def _export_command(sub) -> None:
    export = sub.add_parser("export", help="export a checkpoint's model as TorchScript or ONNX")
    export.add_argument("--checkpoint", required=True)
    export.add_argument("--format", choices=["torchscript", "onnx"], required=True)
    export.add_argument("--out", required=True)
    export.set_defaults(func=cmd_export)


def _compressing_command(sub) -> None:
    compressing = sub.add_parser("compress", help="int8, half-precision weights, pruning or distillation into "
                                                  "another network, measured before and after on a split")
    compressing.add_argument("--checkpoint", required=True)
    compressing.add_argument("--method", required=True, choices=["int8", "fp16", "bf16", "prune", "distill"])
    compressing.add_argument("--out", required=True, help="the compressed checkpoint")
    compressing.add_argument("--data", help="dataset whose --split measures before and after "
                                            "(default: --calibration)")
    compressing.add_argument("--calibration", help="int8: dataset whose training split calibrates; prune, distill: "
                                                   "the training data (default: --data)")
    compressing.add_argument("--samples", type=positive_int, default=100, help="int8: network inputs to calibrate on")
    compressing.add_argument("--amount", type=fraction, default=0.3, help="prune: fraction of channels removed")
    compressing.add_argument("--finetune-epochs", type=count, help="prune: epochs of fine-tuning (default 1); "
                                                                 "distill: epochs of training the student (default: "
                                                                 "the source run's trainer.max_epochs)")
    compressing.add_argument("--student", help="distill (classification): the model trained to imitate the "
                                               "checkpoint's, a model name (medsight tasks lists them; default "
                                               "resnet18)")
    compressing.add_argument("--split", default="val", help="split measured before and after (default val)")
    compressing.set_defaults(func=cmd_compress)


def _importing_command(sub) -> None:
    importing = sub.add_parser("import", help="a published model (MONAI bundle, CheXNet, torchvision) as a checkpoint")
    importing.add_argument("source", help="a file or folder, or monai:NAME to download a MONAI Model Zoo bundle")
    importing.add_argument("--out", required=True, help="the medsight checkpoint to write")
    importing.add_argument("--format", help="the importer (medsight tasks lists them); default: the one that "
                                            "recognises SOURCE")
    importing.add_argument("--labels", help="output names in order, for a source that does not name them")
    importing.set_defaults(func=cmd_import)


def _demo_command(sub) -> None:
    demo = sub.add_parser("demo", help="synthetic data -> train -> evaluate -> predict -> report, every task")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--tasks", nargs="*", help="only these tasks")
    demo.add_argument("--quick", action="store_true", help="the smallest settings (for tests)")
    demo.set_defaults(func=cmd_demo)


def _serve_command(sub) -> None:
    from medsight.cli.commands import cmd_serve

    serve = sub.add_parser("serve", help="a DICOM node and an HTTP API running models on a durable job queue, "
                                         "sending DICOM SEG and SR results back (docs/serve.md)")
    serve.add_argument("--config", required=True, help="serve.yaml: ports, AE titles, routing rules, destinations")
    serve.add_argument("--workers", type=positive_int, help="model workers (default: the config's, 1)")
    serve.add_argument("--retry-failed", action="store_true",
                       help="first queue the dead-lettered jobs again (each gets its tries afresh)")
    serve.set_defaults(func=cmd_serve)
