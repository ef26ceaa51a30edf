"""``medsight data check``: the same reading ``train`` does, file by file, and then every voxel.

1. the format's own checks (layout, headers, annotations against scan extents...);
2. every error that listing a split's records would raise (what ``train`` would meet first);
3. unless ``--quick``: every image and label map of every record decoded in full, in parallel, through
   the readers and guards ``train``/``predict`` use: truncated or corrupt files, NaN/inf values, blank
   images, singular affines, too-small or bomb-sized pictures, label maps off their image's grid, DICOM
   folders holding several series.

A summary counts files, cases and problems by kind; ``--report FILE`` writes every problem to a CSV.

``check_data`` is the Python API (``medsight data check`` parses its arguments, calls it and prints the
report). The folder is read with the options ``train`` would use: the consuming task's config with its
profile and the ``data.*`` overrides (``medsight.data.consumers``), so both count the same splits.
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medsight.core.progress import track
from medsight.data.formats import DataSource, Problem
from medsight.errors import ConfigError, DataError, MedsightError

#: message fragments -> the kind of problem the summary counts
KINDS = (("NaN or infinite", "non-finite values"), ("blank image", "constant image"), ("singular", "bad affine"),
         ("too small", "too small"), ("decompression", "too large"), ("cannot read", "unreadable or truncated"),
         ("truncated", "unreadable or truncated"), ("bytes, expected", "unreadable or truncated"),
         ("missing", "missing file"), ("not found", "missing file"), ("grid", "different grids"),
         ("differs", "different grids"), ("label value", "label values"), ("series", "DICOM series"),
         ("outside", "outside the scan or dataset"), ("gap", "DICOM series"))


def kind_of(problem: Problem) -> str:
    for fragment, kind in KINDS:
        if fragment in problem.message:
            return kind
    return "other"


@dataclass
class CheckReport:
    """What ``check_data`` found: the problems (empty when clean), what was read, and how it was read."""

    problems: list[Problem] = field(default_factory=list)
    #: image and label files decoded in full, and the cases they belong to (0 with ``quick``)
    files: int = 0
    cases: int = 0
    #: the dataset format the folder was read as, and the folder
    format: str | None = None
    root: Path | None = None
    #: records per split, e.g. ``30 train, 4 val, 8 test records``; None when a split could not be listed
    splits: str | None = None
    #: overrides that do not concern reading the files (``trainer.*``, ``data.patch_size``...)
    ignored: list[str] = field(default_factory=list)
    #: the CSV every problem was written to, when one was asked for
    report_path: Path | None = None

    @property
    def clean(self) -> bool:
        return not self.problems

    def summary(self) -> list[str]:
        counts = Counter(kind_of(p) for p in self.problems)
        lines = [f"{self.files} files in {self.cases} cases read in full" if self.files else "headers only (--quick)",
                 f"{len(self.problems)} problem(s)" + (":" if counts else "")]
        lines += [f"  {kind:28s} {count}" for kind, count in counts.most_common()]
        return lines


def _files(record: dict) -> tuple[list[str], list[str]]:
    image = record.get("image")
    images = [str(p) for p in image] if isinstance(image, (list, tuple)) else [str(image)]
    labels = [str(record["label"])] if isinstance(record.get("label"), (str, Path)) else []
    return images, labels


def _read_record(record: dict, kind: str) -> tuple[list[Problem], int]:
    """Decode one record's files in full through medsight's readers and guards."""
    from medsight.io.readers import load
    from medsight.data.transforms import ImageGuardd

    images, labels = _files(record)
    problems: list[Problem] = []
    guard = ImageGuardd("image", kind=kind)
    loaded = {}
    for path in images + labels:
        if Path(path).is_dir():
            problems += _series_problems(Path(path))
        try:
            image = load(path, kind=kind)
            if path in images:
                guard.check(image)
            loaded[path] = image
        except MedsightError as exc:
            problems.append(Problem(exc.where or path, exc.message))
        except Exception as exc:  # a reader's own error: still one line naming the file
            problems.append(Problem(path, f"cannot read ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"))
    reference = next((loaded[p] for p in images if p in loaded), None)
    for path in images[1:] + labels:
        other = loaded.get(path)
        if reference is not None and other is not None and tuple(other.shape[1:]) != tuple(reference.shape[1:]):
            problems.append(Problem(path, f"on another grid ({tuple(other.shape[1:])}) than "
                                          f"{Path(images[0]).name} ({tuple(reference.shape[1:])})"))
    return problems, len(images) + len(labels)


def _series_problems(folder: Path) -> list[Problem]:
    try:
        import pydicom
    except ImportError:
        return []
    uids = set()
    for path in sorted(p for p in folder.iterdir() if p.is_file())[:2000]:
        try:
            uids.add(str(pydicom.dcmread(path, stop_before_pixels=True).get("SeriesInstanceUID", "")))
        except Exception:  # not DICOM: the series reader says what it makes of it
            continue
    uids.discard("")
    return [Problem(str(folder), f"{len(uids)} DICOM series in one folder; the one with most slices is read")] \
        if len(uids) > 1 else []


def check_data(path: str | Path, dataset: str = "auto", *, task: str | None = None, profile: str | None = None,
               overrides: Sequence[str] | Mapping[str, Any] | None = None, quick: bool = False,
               workers: int | None = None, report: str | Path | None = None) -> CheckReport:
    """Check the dataset folder ``path`` as ``train`` would read it, then (unless ``quick``) decode every file.

    ``dataset``: a registered format or ``auto``; ``task``: the task whose config sets the format's options
    (needed only when several registered tasks read the format); ``profile``: that task's profile;
    ``overrides``: ``key=value`` strings or ``{"data.val_fraction": 0.3}`` (keys that do not concern reading the
    files are listed in ``CheckReport.ignored``); ``workers``: files decoded at once (default: the CPU count, at
    most 8); ``report``: a CSV to write every problem to.
    """
    from medsight.core.registry import DATASETS
    from medsight.data.consumers import format_options
    from medsight.data.formats import detect_format

    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"workers must be a whole number of at least 1, got {workers!r}", "data check")
    root = Path(path)
    if not root.exists():
        raise DataError("no such folder", root)
    name = detect_format(root) if dataset == "auto" else dataset
    fmt_class = DATASETS.get(name)
    options, ignored = format_options(fmt_class, task=task, profile=profile, overrides=overrides)
    source = DataSource(fmt_class(options), root)
    found = check_source(source, quick=quick, workers=workers)
    found.format, found.root, found.ignored = name, root, ignored
    if report is not None:
        found.report_path = write_report(found, Path(report))
    if found.clean:
        found.splits = source.describe()  # every split was listed without error by source.check()
    return found


def check_source(source: DataSource, quick: bool = False, workers: int | None = None,
                 progress: str = "auto") -> CheckReport:
    """The checks of one DataSource (``check_data`` opens it)."""
    report = CheckReport(problems=source.check(), format=source.format_name, root=source.root)
    if quick or source.fmt is None:
        return report
    try:
        records = source.records("all")
    except MedsightError:
        return report  # already reported by source.check()
    kind = getattr(source.fmt.schema, "reader_kind", None) or ("picture" if "picture" in source.fmt.schema.name
                                                              else "volume")
    named = {p.path for p in report.problems}
    workers = workers or max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda record: _read_record(record, kind), records)
        for problems, files in track(results, len(records), "data check", progress, unit="case"):
            report.files += files
            report.problems += [p for p in problems if p.path not in named]
            named |= {p.path for p in problems}
    report.cases = len(records)
    return report


def write_report(report: CheckReport, path: Path) -> Path:
    from medsight.io.writers import write_csv

    rows = [{"path": p.path, "kind": kind_of(p), "message": p.message} for p in report.problems]
    return write_csv(rows, path, ["path", "kind", "message"])
