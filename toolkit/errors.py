"""One exception family. The CLI prints ``error: <where>: <what is wrong and how to fix it>``
and exits with status 2, without a traceback (``--debug`` shows it)."""

from __future__ import annotations

from os import PathLike


class MedsightError(Exception):
    """Base class. ``where`` names the file (or ``config``, ``checkpoint``...) the problem is in."""

    exit_status = 2

    def __init__(self, message: str, where: str | PathLike | None = None):
        super().__init__(message)
        self.message = message
        self.where = None if where is None else str(where)

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


class DataError(MedsightError):
    """An input file or dataset folder is missing, unreadable or inconsistent."""


class ConfigError(MedsightError):
    """A configuration value or key is wrong."""

    def __init__(self, message: str, where: str | PathLike | None = "config"):
        super().__init__(message, where)


class CheckpointError(MedsightError):
    """A checkpoint is missing, damaged, unsafe to load, or made for another task."""


class TrainingError(MedsightError):
    """Training cannot go on (for example a non-finite loss)."""


class TaskError(MedsightError):
    """A task is unknown, registered twice, or cannot handle the request."""


def medsight_cause(exc: BaseException) -> MedsightError | None:
    """The MedsightError behind ``exc``: itself, or one it was raised from (``raise ... from``). MONAI's ``Compose``
    re-raises every transform failure as ``RuntimeError("applying transform ...")``; the
    DataError that names the file is its cause."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, MedsightError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__
    return None
