"""What a dataset format offers the CLI: a synthetic generator in its official layout and a checker.

Formats live in ``medsight.datasets`` (or any package) and are found through the registry, so the
toolkit never imports one by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset folder: the file it is in and what is wrong."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class DatasetFormat:
    name: ClassVar[str]
    description: ClassVar[str] = ""
    #: Options ``synth`` accepts beyond ``cases`` and ``seed`` (name -> help text).
    synth_options: ClassVar[dict[str, str]] = {}

    def synth(self, out: Path, cases: int | None = None, seed: int = 0, **options: Any) -> Path:
        """Write a small synthetic dataset in the official layout under ``out``; returns ``out``."""
        raise NotImplementedError

    def check(self, root: Path) -> list[Problem]:
        """Every problem found in the dataset folder ``root`` (empty when it is clean)."""
        raise NotImplementedError
