"""The commands in README.md and docs/*.md are real: every ``medsight ...`` line of a fenced code block parses
with the CLI's own parser, its ``key=value`` overrides name keys of the task's config, and the lines that need
no model or dataset (``medsight tasks``, ``medsight info``, ``medsight --help``, ``medsight data synth``) run.

Synopsis lines (``[optional]`` parts, ``A|B`` alternatives, ``...``) are not commands and are skipped; so are
lines that only show the command inside another one (``torchrun ... -m medsight``)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")


@dataclass(frozen=True)
class DocLine:
    path: Path
    lineno: int
    text: str  # the command, continuations joined, comments and the description column removed

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.lineno}: {self.text}"


def _fenced_lines(path: Path):
    """(line number, line) of every line inside a ``` fence, ``\\`` continuations joined."""
    inside, pending, start = False, None, 0
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            inside, pending = not inside, None
            continue
        if not inside:
            continue
        if pending is not None:
            line, lineno = pending + " " + line.strip(), start
        if line.rstrip().endswith("\\"):
            pending, start = line.rstrip()[:-1].rstrip(), lineno
            continue
        pending = None
        yield lineno, line


def _command(line: str) -> str | None:
    """The ``medsight ...`` command of a line, without its comment or description column."""
    line = line.strip()
    if line.startswith("$ "):
        line = line[2:]
    if not line.startswith("medsight "):
        return None
    line = re.split(r"\s#", line, maxsplit=1)[0]  # a shell comment
    line = re.split(r"\s{3,}", line, maxsplit=1)[0]  # the reference's description column
    return line.strip()


def _is_synopsis(args: list[str]) -> bool:
    for arg in args:
        value = arg.split("=", 1)[1] if OVERRIDE.match(arg) else None
        if value is not None:  # data.modalities=[flair,t1c] is a value, not an optional part
            if "|" in value or "..." in value:
                return True
            continue
        if "[" in arg or "]" in arg or "|" in arg or "..." in arg:
            return True
    return False


def doc_commands() -> tuple[list[DocLine], list[DocLine]]:
    """(commands to check, synopsis lines skipped)."""
    checked, skipped = [], []
    for path in DOCS:
        for lineno, line in _fenced_lines(path):
            command = _command(line)
            if command is None:
                continue
            entry = DocLine(path, lineno, command)
            (skipped if _is_synopsis(shlex.split(command)[1:]) else checked).append(entry)
    return checked, skipped


CHECKED, SKIPPED = doc_commands()


def _parse(entry: DocLine):
    """Parse as ``medsight.cli.main.main`` does: known args, overrides and inputs absorbed, the rest refused."""
    from medsight.cli.main import _absorb_positionals, build_parser

    argv = shlex.split(entry.text)[1:]
    parser = build_parser(task_options=("predict", "evaluate"))
    try:
        args, extra = parser.parse_known_args(argv)
    except SystemExit as exc:
        if exc.code == 0:  # --help, --version: printed and done
            return None, []
        pytest.fail(f"{entry}\n  does not parse (argparse exit {exc.code})")
    extra = _absorb_positionals(args, extra)
    if extra and not getattr(args, "takes_extra", False):
        pytest.fail(f"{entry}\n  unrecognized arguments: {' '.join(extra)}")
    return args, extra


def _task_of(args) -> str | None:
    if args.command in ("train", "cv", "evaluate") and getattr(args, "task", None):
        return args.task
    if args.command == "data" and getattr(args, "task", None):
        return args.task
    return None


def test_docs_have_commands():
    assert len(CHECKED) >= 20, [str(e) for e in CHECKED]
    print(f"\ndoc commands: {len(CHECKED)} checked, {len(SKIPPED)} synopsis lines skipped")


@pytest.mark.parametrize("entry", CHECKED, ids=str)
def test_doc_command_parses(entry: DocLine, capsys):
    from medsight.core.config import resolve
    from medsight.core.registry import TASKS

    args, _ = _parse(entry)
    if args is None:
        return
    overrides = [a for a in (getattr(args, "overrides", None) or []) if OVERRIDE.match(a)]
    if not overrides:
        return
    task = _task_of(args)
    if task is not None:
        assert TASKS.exists(task), f"{entry}\n  unknown task {task!r}"
        names = [task]
    else:  # predict (the checkpoint's task), data check/fingerprint of a format: some task must know each key
        names = [n for n in TASKS.names() if TASKS.exists(n)]
    for override in overrides:
        errors = []
        for name in names:
            try:
                resolve(TASKS.get(name).config_class, overrides=[override])
                break
            except Exception as exc:  # ConfigError: unknown key or wrong type
                errors.append(f"{name}: {exc}")
        else:
            pytest.fail(f"{entry}\n  override {override} is refused: {'; '.join(errors)}")


def _runnable(entry: DocLine) -> bool:
    argv = shlex.split(entry.text)[1:]
    if argv in (["tasks"], ["info"], ["--help"]):
        return True
    placeholder = any(re.fullmatch(r"[A-Z][A-Z_0-9]+", a) for a in argv)  # DATASET, OUT: a synopsis
    return argv[:2] == ["data", "synth"] and not placeholder


#: each distinct command once (the README repeats some of the task pages' lines)
RUNNABLE = list({e.text: e for e in CHECKED if _runnable(e)}.values())


def test_runnable_commands_present():
    commands = {" ".join(shlex.split(e.text)[:2]) for e in RUNNABLE}
    assert {"medsight tasks", "medsight info", "medsight --help"} <= commands, commands


@pytest.mark.parametrize("entry", RUNNABLE, ids=str)
def test_doc_command_runs(entry: DocLine, tmp_path, capsys, monkeypatch):
    """Run it for real, in this process (a synthetic dataset goes to a temporary folder, with few cases: the
    options are what is tested, not the size); ``medsight --help`` in a new process, as a user types it."""
    argv = shlex.split(entry.text)[1:]
    if argv[:2] == ["data", "synth"]:
        argv[3] = str(tmp_path / "data")
        if "--cases" in argv:
            i = argv.index("--cases")
            argv[i + 1] = str(min(int(argv[i + 1]), 4))
    if argv == ["--help"]:
        done = subprocess.run([sys.executable, "-m", "medsight", *argv], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)
        status, out, err = done.returncode, done.stdout, done.stderr
    else:
        from medsight.cli.main import main

        monkeypatch.chdir(tmp_path)
        capsys.readouterr()
        status = main(argv)
        out, err = capsys.readouterr()
    assert status == 0, f"{entry}\n  exit {status}\n{out[-2000:]}\n{err[-2000:]}"
