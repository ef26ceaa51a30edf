"""The ``medsight`` command line. Every failure the user can fix prints one line,
``error: <where>: <what is wrong>``, and exits with status 2 (``--debug`` shows the traceback)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from pathlib import Path

import medsight
from medsight.errors import MedsightError, unwrap
from medsight.core.progress import setup_logging

log = logging.getLogger("medsight.cli.main")


def _parse_options(pairs: list[str]) -> dict[str, str]:
    """``--name value`` pairs left over by argparse -> {"name": "value"} (dataset-specific options)."""
    options, key = {}, None
    for item in pairs:
        if item.startswith("--"):
            if key is not None:
                raise MedsightError(f"option --{key} needs a value", "command line")
            key, _, value = item[2:].partition("=")
            if value:
                options[key.replace("-", "_")] = value
                key = None
        elif key is not None:
            options[key.replace("-", "_")] = item
            key = None
        else:
            raise MedsightError(f"unexpected argument {item!r}", "command line")
    if key is not None:
        raise MedsightError(f"option --{key} needs a value", "command line")
    return options


def cmd_tasks(args) -> int:
    """Every task with the dataset formats that produce its schema and the models of its family, then
    every dataset format."""
    from medsight.data.formats import formats_for
    from medsight.core.models import models
    from medsight.core.registry import DATASETS, TASKS

    for name in TASKS.names():
        task = TASKS.get(name)
        datasets = ", ".join(formats_for(task.schema)) if task.schema is not None else "its own"
        family = ", ".join(models(task.model_family).names()) if task.model_family else "-"
        log.info(f"{name:16s} {task.summary}\n{'':16s} datasets: {datasets}\n{'':16s} models: {family}")
    if not TASKS.names():
        log.info("no tasks registered")
    log.info("\ndataset formats:")
    for name in DATASETS.names():
        fmt = DATASETS.get(name)
        schema = fmt.schema.name if fmt.schema is not None else "-"
        log.info(f"{name:16s} {fmt.description} [{schema}]")
    return 0


def cmd_info(args) -> int:
    from medsight.reporting.info import describe, describe_checkpoint

    log.info(describe_checkpoint(args.checkpoint) if args.checkpoint else describe())
    return 0


def _whole(option: str, minimum: int):
    """An argparse ``type`` for a count: a whole number >= ``minimum``, or one line ``error: command line: ...``
    (a MedsightError passes through argparse, which reports its own exceptions as usage text)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise MedsightError(f"{option} must be a whole number of at least {minimum}, got {text!r}", "command line")
        return value

    return parse


def cmd_data_synth(args, extra: list[str]) -> int:
    from medsight.data.synth import synthesize

    out = synthesize(args.dataset, args.out, cases=args.cases, seed=args.seed, **_parse_options(extra))
    log.info(f"wrote synthetic {args.dataset} dataset to {out}")
    return 0


def cmd_data_check(args) -> int:
    """The same reading ``train`` does (same format, task config, profile and ``data.*`` overrides), then every
    voxel (``medsight.data.check.check_data``)."""
    from medsight.data.check import check_data

    report = check_data(args.path, args.dataset, task=args.task, profile=args.profile, overrides=args.overrides,
                        quick=args.quick, workers=args.workers, report=args.report)
    if report.ignored:
        log.info(f"(not about reading the data, ignored here: {' '.join(report.ignored)})")
    for problem in report.problems:
        log.info(f"problem: {problem}")
    for line in report.summary():
        log.info(line)
    if report.report_path is not None:
        log.info(f"problems written to {report.report_path}")
    if report.problems:
        log.info(f"{report.format}: {len(report.problems)} problem(s) in {report.root}")
        return 2
    log.info(f"{report.format}: {report.root} is clean: {report.splits}")
    return 0


def cmd_data_fingerprint(args) -> int:
    """Read every case once, measure it, and write a plans file (``medsight.planning.plans.fingerprint``)."""
    from medsight.planning import plans

    out = Path(args.out or "plans.json")
    document = plans.fingerprint(args.path, args.dataset, task=args.task, profile=args.profile,
                                 overrides=args.overrides, memory=args.memory, precision=args.precision, out=out,
                                 workers=args.workers)
    found, memory = document["fingerprint"], document["memory"]
    median = found["spacing_mm"]["median"]
    log.info(f"{found['cases']} cases ({len(found['unreadable'])} unreadable); median voxel "
             f"{' x '.join(f'{v:g}' for v in median)} mm, anisotropy {found['anisotropy']['median']:.1f}; median shape "
             f"{' x '.join(f'{v:g}' for v in found['shape']['median'])}")
    log.info(f"plan for {memory['budget_bytes'] / 2**30:.0f} GiB ({args.precision}): " + ", ".join(
        f"{k}={v}" for k, v in plans.flatten(document["config"]).items())
        + f"; estimated {memory['estimated_training_bytes'] / 2**30:.1f} GiB for training")
    log.info(f"wrote {out}; train with: medsight train {found['task']} --data {args.path} --plans {out}")
    return 0


def _absorb_positionals(args, extra: list[str]) -> list[str]:
    """argparse stops filling a ``nargs="*"`` positional at the first option: put later
    ``key=value`` overrides and inputs where they belong."""
    from medsight.cli.commands import OVERRIDE as _OVERRIDE

    leftover = []
    for item in extra:
        if not item.startswith("-") and hasattr(args, "overrides") and _OVERRIDE.match(item):
            args.overrides.append(item)
        elif not item.startswith("-") and hasattr(args, "inputs"):
            args.inputs.append(item)
        else:
            leftover.append(item)
    return leftover


def build_parser(task_options: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """The parser; ``task_options``: commands that also get every registered task's own options."""
    parser = argparse.ArgumentParser(prog="medsight", description=medsight.__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--verbose", action="store_true",
                        help="also medsight's debug messages and the libraries' warnings it otherwise keeps quiet "
                             "(medsight.core.quiet)")
    parser.add_argument("--version", action="version", version=f"medsight {medsight.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("tasks", help="list registered tasks with their datasets and models").set_defaults(func=cmd_tasks)
    info = sub.add_parser("info", help="versions, device, reader back-ends; or what a checkpoint is and holds")
    info.add_argument("--checkpoint", help="describe this checkpoint: task, model, provenance, training data")
    info.set_defaults(func=cmd_info)

    data = sub.add_parser("data", help="synthetic datasets and dataset checks")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    synth = data_sub.add_parser("synth", help="write a synthetic dataset in the official layout")
    synth.add_argument("dataset", help="a dataset format (medsight tasks lists them): chestxray14, luna16, brats, "
                                       "ct-nodules, folders, csv, and any a plug-in registers")
    synth.add_argument("out", help="output folder")
    synth.add_argument("--cases", type=_whole("--cases", 1), default=None, help="number of images/scans/cases")
    synth.add_argument("--seed", type=_whole("--seed", 0), default=0)
    synth.set_defaults(func=cmd_data_synth, takes_extra=True)
    check = data_sub.add_parser("check", help="validate a dataset folder, file by file, as train would read it")
    check.add_argument("dataset", help="a dataset format (medsight tasks lists them), or auto")
    check.add_argument("path")
    check.add_argument("overrides", nargs="*", metavar="key=value",
                       help="the data.* overrides train would take, e.g. data.modalities=[flair,t1c]")
    check.add_argument("--task", help="the task whose config reads the data, when several read this format")
    check.add_argument("--profile", help="the task profile train would run with (its data settings set the splits)")
    check.add_argument("--quick", action="store_true", help="headers and layout only; do not decode every image")
    check.add_argument("--report", metavar="FILE", help="write every problem to this CSV (path, kind, message)")
    check.add_argument("--workers", type=_whole("--workers", 1),
                       help="images decoded at once (default: the CPU count, at most 8)")
    check.set_defaults(func=cmd_data_check)

    fingerprint = data_sub.add_parser("fingerprint", help="read every case once and plan spacing, patch and batch "
                                      "from the data (a plans file for train --plans)")
    fingerprint.add_argument("dataset", help="a dataset format (medsight tasks lists them), or auto")
    fingerprint.add_argument("path")
    fingerprint.add_argument("overrides", nargs="*", metavar="key=value",
                             help="settings the plan starts from, e.g. data.modalities=[flair,t1c] model.init_filters=32")
    fingerprint.add_argument("--memory", help="the training GPU's memory, e.g. 24GB (default: this machine's GPU)")
    fingerprint.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"],
                             help="training precision the memory estimate assumes (default bf16)")
    fingerprint.add_argument("--task", help="the task to plan for, when several read this data")
    fingerprint.add_argument("--profile", help="the task profile the plan starts from (default: gpu)")
    fingerprint.add_argument("--out", help="plans file (default: plans.json in the current folder)")
    fingerprint.add_argument("--workers", type=_whole("--workers", 0), default=0,
                             help="cases read at once in worker processes (0: in this one)")
    fingerprint.set_defaults(func=cmd_data_fingerprint)

    from medsight.cli.arguments import add_commands

    add_commands(sub, task_options=set(task_options))
    return parser


def main(argv: list[str] | None = None, nested: bool = False) -> int:
    """The CLI; ``nested``: called from within medsight (the demo), never leave the process."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    setup_logging()
    logger = logging.getLogger("medsight")
    level = logger.level
    try:
        command = next((a for a in argv if not a.startswith("-")), None)
        parser = build_parser(task_options=(command,) if command in ("predict", "evaluate") else ())
        args, extra = parser.parse_known_args(argv)
        if args.verbose:  # medsight.core.quiet.verbose(): library warnings shown
            logger.setLevel(logging.DEBUG)
        extra = _absorb_positionals(args, extra)
        if extra and not getattr(args, "takes_extra", False):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        if getattr(args, "takes_extra", False):
            return int(args.func(args, extra) or 0)
        return int(args.func(args) or 0)
    except Exception as raised:
        exc = unwrap(raised)
        if exc is None and isinstance(raised, OSError):  # the disk, not medsight: a full disk, a lost mount
            exc = MedsightError(raised.strerror or str(raised), raised.filename or "file system")
        if exc is None:
            raise
        if debug:
            traceback.print_exc()
        from medsight.core.signals import Interrupted

        print(f"{'stopped' if isinstance(exc, Interrupted) else 'error'}: {exc}", file=sys.stderr)
        if not nested:
            _exit_cleanly(exc.exit_status)
        return exc.exit_status
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    finally:
        logger.setLevel(level)


def _exit_cleanly(status: int) -> None:
    """After an error, leave at once when worker threads are still running (a cache being filled, a loader):
    ending the interpreter under them aborts natively. Every output is written atomically, so nothing is lost."""
    import threading

    if threading.active_count() > 1 and "pytest" not in sys.modules:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
