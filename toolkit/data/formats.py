"""Dataset formats: one contract, registered like tasks, that every layout of files implements.

A format reads one layout (a public dataset's own, or a generic one) and produces records of one
*schema*. A task names the schema it consumes; every registered format producing that schema can
feed it, whether it lives in ``medsight.datasets`` or in a separate package that registers it
through the entry-point group ``medsight.datasets``:

    @register_dataset("luna16")
    class Luna16(DatasetFormat):
        schema = NODULE_SCANS                  # what its records hold
        options_class = SplitOptions           # its settings (a dataclass), read from data.*

        @classmethod
        def detect(cls, root) -> float: ...     # 0: not mine; higher: more surely mine
        def records(self, root, split) -> list[dict]: ...
        def metadata(self, root) -> dict: ...   # dataset-level facts the schema names (label set...)
        def check(self, root) -> list[Problem]: ...
        def synth(self, out, cases=None, seed=0, **options) -> Path: ...

``SplitOptions`` (the split settings every format reads) is declared in ``medsight.core.config``, where the
tasks' ``data`` sections derive from it too, and importable from here, where formats find it.

``DataSource`` is one folder read through one format with one set of options. ``train``,
``evaluate`` and ``data check`` all go through it, so they agree: ``check`` reports the format's
own findings plus every error that reading a split's records would raise.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal

from medsight.core.config import SplitOptions  # declared once there (LoaderConfig derives from it); formats' options do
from medsight.errors import ConfigError, DataError, MedsightError

Split = Literal["train", "val", "test", "all"]
#: written by ``medsight data synth`` into every synthetic dataset: checkpoints trained on it say so
SYNTHETIC_MARKER = ".medsight-synthetic.json"
SPLITS: tuple[str, ...] = ("train", "val", "test", "all")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset folder: the file it is in and what is wrong."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass(frozen=True)
class RecordSchema:
    """What the records of a format hold: the keys every record has, and the dataset-level facts
    ``DatasetFormat.metadata`` returns. Tasks consume a schema; formats produce one."""

    name: str
    keys: tuple[str, ...]
    metadata_keys: tuple[str, ...] = ()
    description: str = ""

    def validate(self, records: Sequence[dict], fmt: str, where: str | Path) -> None:
        for record in records[:1]:
            missing = [key for key in self.keys if key not in record]
            if missing:
                raise DataError(f"format {fmt} gave a record without {', '.join(missing)} (schema {self.name} "
                                f"needs {', '.join(self.keys)})", where)


class DatasetFormat:
    name: ClassVar[str]
    description: ClassVar[str] = ""
    #: the records this format produces
    schema: ClassVar[RecordSchema | None] = None
    #: this format's settings: a dataclass deriving from SplitOptions, filled from the task's ``data.*``
    options_class: ClassVar[type] = SplitOptions
    #: options ``synth`` accepts beyond ``cases`` and ``seed`` (name -> help text)
    synth_options: ClassVar[dict[str, str]] = {}

    def __init__(self, options: Any = None):
        self.options = options if options is not None else self.options_class()

    @classmethod
    def detect(cls, root: Path) -> float:
        """How surely ``root`` is in this format: 0 = not at all; the highest score wins ``data.format=auto``
        (1.0: the format's own marker file; 0.1: a generic layout that many folders match)."""
        return 0.0

    def records(self, root: Path, split: Split) -> list[dict]:
        """Records of one split (train, val, test or all), each holding the schema's keys."""
        raise NotImplementedError

    def metadata(self, root: Path) -> dict[str, Any]:
        """Dataset-level facts the schema names (e.g. the label set). Default: none."""
        return {}

    def check(self, root: Path) -> list[Problem]:
        """Problems found in the files of ``root`` (empty when clean). ``DataSource.check`` adds the
        errors that reading records would raise, so a format need not repeat those."""
        return []

    def synth(self, out: Path, cases: int | None = None, seed: int = 0, **options: Any) -> Path:
        """Write a small synthetic dataset in this layout under ``out``; returns ``out``."""
        raise DataError(f"format {self.name} has no synthetic generator", "synth")


def missing_files(missing: Sequence[str], options: Any, where: str | Path, listed_in: str) -> None:
    """Files a dataset lists but that are not there: an error naming the first (``data.on_error=raise``), or a
    warning with their count (``skip``)."""
    if not missing:
        return
    if getattr(options, "on_error", "raise") == "skip":
        logging.getLogger("medsight.datasets").warning(
            f"warning: {where}: {len(missing)} file(s) listed in {listed_in} are missing and left out "
            f"(first: {missing[0]})")
        return
    raise DataError(f"{len(missing)} file(s) listed in {listed_in} are missing (first: {missing[0]}); set "
                    "data.on_error=skip to use the files there are", where)


# -- options --------------------------------------------------------------------------------------
def options_for(fmt_class: type[DatasetFormat], data_config: Any) -> Any:
    """The format's options from a task's ``data`` config: fields of the same name, plus the free-form
    ``data.format_options`` for settings the task does not know (a plug-in format's)."""
    values: dict[str, Any] = {}
    names = [f.name for f in fields(fmt_class.options_class)]
    if data_config is not None:
        source = data_config if isinstance(data_config, Mapping) else vars(data_config)
        values = {name: source[name] for name in names if name in source}
        extra = source.get("format_options") or {}
        unknown = [key for key in extra if key not in names]
        if unknown:
            raise ConfigError(unknown_message(f"data.format_options.{unknown[0]}", unknown[0], names,
                                               f"format {fmt_class.name}"))
        values.update(extra)
    return build_options(fmt_class, values)


def build_options(fmt_class: type[DatasetFormat], values: Mapping[str, Any]) -> Any:
    """Validated options object (typed through OmegaConf, like every config)."""
    from medsight.core.config import resolve_structured

    return resolve_structured(fmt_class.options_class, dict(values), source=f"data ({fmt_class.name} options)")


def unknown_message(key: str, name: str, known: Sequence[str], owner: str) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean data.{close[0]}?)" if close else f" ({owner} reads: {', '.join(known)})"
    return f"unknown key {key}{hint}"


# -- finding a format -----------------------------------------------------------------------------
def formats_for(schema: RecordSchema | None) -> list[str]:
    """Names of the registered formats that produce ``schema`` (every format for None)."""
    from medsight.core.registry import DATASETS

    return [name for name in DATASETS.names()
            if schema is None or getattr(DATASETS.get(name).schema, "name", None) == schema.name]


def detect_format(root: Path, schema: RecordSchema | None = None) -> str:
    """The registered format that recognises ``root`` most surely (among those producing ``schema``)."""
    from medsight.core.registry import DATASETS

    root = Path(root)
    if not root.exists():
        raise DataError("no such dataset folder or file", root)
    candidates = formats_for(schema)
    scores = {name: float(DATASETS.get(name).detect(root)) for name in candidates}
    best = max(scores.values(), default=0.0)
    if best <= 0:
        raise DataError(f"no registered dataset format recognises this folder (tried: {', '.join(candidates)}); "
                        "set data.format", root)
    winners = sorted(name for name, score in scores.items() if score == best)
    if len(winners) > 1:
        raise DataError(f"several formats recognise this folder equally ({', '.join(winners)}); set data.format",
                        root)
    return winners[0]


def check_format_name(name: str, schema: RecordSchema | None, key: str = "data.format") -> None:
    """ConfigError unless ``name`` is ``auto`` or a registered format producing ``schema``."""
    known = formats_for(schema)
    if name != "auto" and name not in known:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"{key}={name!r} is not one of auto, {', '.join(known)}{hint}")


# -- one folder through one format ----------------------------------------------------------------
@dataclass
class DataSource:
    """One dataset folder read through one format with one set of options (records memoised). ``fmt`` is
    None for a task that reads its folder itself (a task without a schema)."""

    fmt: DatasetFormat | None
    root: Path
    _records: dict[str, list[dict]] = field(default_factory=dict, repr=False)
    _metadata: dict | None = field(default=None, repr=False)

    @property
    def format_name(self) -> str | None:
        return self.fmt.name if self.fmt is not None else None

    def records(self, split: Split) -> list[dict]:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r} (expected train, val, test or all)", self.root)
        if self.fmt is None:
            raise DataError("no dataset format reads this folder: the task reads it itself", self.root)
        if split not in self._records:
            found = self.fmt.records(self.root, split)
            if self.fmt.schema is not None:
                self.fmt.schema.validate(found, self.fmt.name, self.root)
            self._records[split] = found
        return self._records[split]

    def metadata(self) -> dict[str, Any]:
        if self.fmt is None:
            return {}
        if self._metadata is None:
            self._metadata = dict(self.fmt.metadata(self.root))
            schema = self.fmt.schema
            missing = [key for key in (schema.metadata_keys if schema else ()) if key not in self._metadata]
            if missing:
                raise DataError(f"format {self.fmt.name} gives no {', '.join(missing)} (schema {schema.name})",
                                self.root)
        return self._metadata

    def check(self) -> list[Problem]:
        """The format's own findings, then each error reading the records of a split would raise."""
        if not self.root.exists():
            return [Problem(str(self.root), "no such folder")]
        problems = list(self.fmt.check(self.root))
        named = {problem.path for problem in problems}
        for split in ("train", "val", "test"):
            try:
                self.records(split)
            except MedsightError as exc:
                where = exc.where or str(self.root)
                if where not in named:  # the format's own check already reported this file
                    problems.append(Problem(where, exc.message))
                    named.add(where)
        unique: list[Problem] = []
        for problem in problems:
            if problem not in unique:
                unique.append(problem)
        return unique

    def describe(self) -> str:
        """Records per split, e.g. ``30 train, 4 val, 8 test records``."""
        return ", ".join(f"{len(self.records(s))} {s}" for s in ("train", "val", "test")) + " records"


def open_dataset(root: Path | str, data_config: Any, schema: RecordSchema | None) -> DataSource:
    """The DataSource a task reads: ``data.format`` (or the detected format) with options from ``data.*``."""
    from medsight.core.registry import DATASETS

    root = Path(root)
    if schema is None:
        if not root.exists():
            raise DataError("no such dataset folder or file", root)
        return DataSource(None, root)
    requested = getattr(data_config, "format", "auto") if data_config is not None else "auto"
    check_format_name(requested, schema)
    name = detect_format(root, schema) if requested == "auto" else requested
    fmt_class = DATASETS.get(name)
    return DataSource(fmt_class(options_for(fmt_class, data_config)), root)

