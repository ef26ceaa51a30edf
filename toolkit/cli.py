"""The ``medsight`` command line. Every failure the user can fix prints one line,
``error: <where>: <what is wrong>``, and exits with status 2 (``--debug`` shows the traceback)."""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

import medsight
from medsight.errors import MedsightError, unwrap


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
    from medsight.registry import TASKS

    names = TASKS.names()
    if not names:
        print("no tasks registered")
        return 0
    for name in names:
        task = TASKS.get(name)
        datasets = ", ".join(getattr(task, "datasets", ())) or "-"
        print(f"{name:16s} {task.summary}\n{'':16s} datasets: {datasets}; models: {', '.join(task.models)}")
    return 0


def cmd_info(args) -> int:
    from medsight.info import describe

    print(describe())
    return 0


def cmd_data_synth(args, extra: list[str]) -> int:
    from medsight.registry import DATASETS

    fmt = DATASETS.get(args.dataset)()
    out = fmt.synth(Path(args.out), cases=args.cases, seed=args.seed, **_parse_options(extra))
    print(f"wrote synthetic {args.dataset} dataset to {out}")
    return 0


def cmd_data_check(args) -> int:
    from medsight.registry import DATASETS

    fmt = DATASETS.get(args.dataset)()
    root = Path(args.path)
    if not root.exists():
        raise MedsightError("no such folder", root)
    problems = fmt.check(root)
    for problem in problems:
        print(f"problem: {problem}")
    if problems:
        print(f"{args.dataset}: {len(problems)} problem(s) in {root}")
        return 2
    print(f"{args.dataset}: {root} is clean")
    return 0


def _absorb_positionals(args, extra: list[str]) -> list[str]:
    """argparse stops filling a ``nargs="*"`` positional at the first option: put later
    ``key=value`` overrides and inputs where they belong."""
    from medsight.commands import _OVERRIDE

    leftover = []
    for item in extra:
        if not item.startswith("-") and hasattr(args, "overrides") and _OVERRIDE.match(item):
            args.overrides.append(item)
        elif not item.startswith("-") and hasattr(args, "inputs"):
            args.inputs.append(item)
        else:
            leftover.append(item)
    return leftover


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medsight", description=medsight.__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--version", action="version", version=f"medsight {medsight.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("tasks", help="list registered tasks with their datasets and models").set_defaults(func=cmd_tasks)
    sub.add_parser("info", help="versions, device, reader back-ends").set_defaults(func=cmd_info)

    data = sub.add_parser("data", help="synthetic datasets and dataset checks")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    synth = data_sub.add_parser("synth", help="write a synthetic dataset in the official layout")
    synth.add_argument("dataset", help="a dataset format: chestxray14, luna16, brats, ct-nodules, folders, csv")
    synth.add_argument("out", help="output folder")
    synth.add_argument("--cases", type=int, default=None, help="number of images/scans/cases")
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(func=cmd_data_synth, takes_extra=True)
    check = data_sub.add_parser("check", help="validate a dataset folder, file by file")
    check.add_argument("dataset")
    check.add_argument("path")
    check.set_defaults(func=cmd_data_check)

    from medsight.commands import add_commands

    add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        extra = _absorb_positionals(args, extra)
        if extra and not getattr(args, "takes_extra", False):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        if getattr(args, "takes_extra", False):
            return int(args.func(args, extra) or 0)
        return int(args.func(args) or 0)
    except Exception as raised:
        exc = unwrap(raised)
        if exc is None:
            raise
        if debug:
            traceback.print_exc()
        from medsight.trainer import Interrupted

        print(f"{'stopped' if isinstance(exc, Interrupted) else 'error'}: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
