"""A generic CSV of image paths and labels, single- or multi-label.

    path,label,split,patient_id
    images/a.png,Effusion|Mass,train,17        one label column, names separated by '|'
    images/b.png,No Finding,test,18            the negative name means "none of the labels"

    path,Effusion,Mass,split
    images/a.png,1,0,train                     or one 0/1 column per label

Paths are relative to the CSV's folder (or absolute). The split column (``train``, ``val``/``valid``,
``test``) is optional: without it, test (20 %) and validation are taken out by a seeded hash of the
group column (a patient ID keeps a patient's images together), or of the path. Without validation
rows, validation comes out of the training rows the same way.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from medsight.data.formats import DatasetFormat, Problem, SplitOptions, missing_files
from medsight.datasets.schemas import LABELLED_PICTURES
from medsight.datasets.splits import (
    canonical_split,
    check_group_pattern,
    file_name_group,
    three_way_split,
    validation_split,
)
from medsight.errors import ConfigError, DataError
from medsight.io.writers import write_csv
from medsight.core.registry import register_dataset

TEST_FRACTION = 0.2
POSITIVE = {"1", "1.0", "true", "yes", "y", "positive"}
NEGATIVE = {"0", "0.0", "false", "no", "n", "negative", ""}


@dataclass
class CsvOptions(SplitOptions):
    """Which columns hold what. ``label_columns``: one column of ``label_separator``-joined names, or one
    0/1 column per label (two or more). ``split_column`` and ``group_column`` are used when the CSV has them."""

    path_column: str = "path"
    label_columns: list[str] = field(default_factory=lambda: ["label"])
    label_separator: str = "|"
    negative_label: str = "No Finding"
    split_column: str = "split"
    group_column: str = ""
    #: without a group column: a regex whose first group, found in the file name, is the group
    group_pattern: str = ""
    #: paths that lead outside the CSV's folder (``../..``, absolute elsewhere) are refused unless allowed
    allow_outside: bool = False

    def __post_init__(self):
        super().__post_init__()
        check_group_pattern(self.group_pattern)
        if not self.label_columns:
            raise ConfigError("data.label_columns names no column")

    @property
    def one_column(self) -> bool:
        return len(self.label_columns) == 1


@dataclass(frozen=True)
class Row:
    image: Path
    names: tuple[str, ...]  # positive labels; empty = negative for all
    split: str | None
    group: str
    line: int


def find_csv(path: Path) -> Path:
    """The CSV itself, or the one CSV inside a folder."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        tables = sorted(p for p in path.glob("*.csv") if not p.name.startswith("."))
        if len(tables) == 1:
            return tables[0]
        what = "no CSV file" if not tables else f"{len(tables)} CSV files ({', '.join(t.name for t in tables)})"
        raise DataError(f"{what} in this folder; give the CSV file itself", path)
    raise DataError("no such file or folder", path)


def _names_from_cells(cells: dict[str, str], columns: CsvOptions, where: str) -> tuple[str, ...]:
    if columns.one_column:
        text = cells[columns.label_columns[0]].strip()
        if not text:
            raise DataError(f"empty label in column {columns.label_columns[0]!r} (use {columns.negative_label!r} for none)", where)
        names = tuple(n.strip() for n in text.split(columns.label_separator)) if columns.label_separator else (text,)
        return () if names == (columns.negative_label,) else tuple(n for n in names if n)
    positive = []
    for column in columns.label_columns:
        value = cells[column].strip().lower()
        if value in POSITIVE:
            positive.append(column)
        elif value not in NEGATIVE:
            raise DataError(f"label value {cells[column]!r} in column {column!r} is neither 1 nor 0", where)
    return tuple(positive)


def read_table(csv_path: Path, columns: CsvOptions) -> list[Row]:
    """Every row, with paths resolved against the CSV's folder."""
    csv_path = Path(csv_path)
    with open(csv_path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        needed = [columns.path_column, *columns.label_columns]
        missing = [c for c in needed if c not in header]
        if missing:
            raise DataError(f"no column {missing[0]!r} (columns: {', '.join(header)}); set data.path_column / "
                            "data.label_columns", csv_path)
        has_split, has_group = columns.split_column in header, bool(columns.group_column) and columns.group_column in header
        if columns.group_column and not has_group:
            raise DataError(f"no group column {columns.group_column!r} (columns: {', '.join(header)})", csv_path)
        rows = []
        for line, cells in enumerate(reader, start=2):
            if not any((v or "").strip() for v in cells.values()):
                continue
            where = f"{csv_path}:{line}"
            image_text = (cells[columns.path_column] or "").strip()
            if not image_text:
                raise DataError(f"empty path in column {columns.path_column!r}", where)
            image = Path(image_text) if Path(image_text).is_absolute() else csv_path.parent / image_text
            if not columns.allow_outside and not _inside(image, csv_path.parent):
                raise DataError(f"path {image_text!r} leads outside the dataset folder {csv_path.parent}; set "
                                "data.allow_outside=true if the table is meant to point there", where)
            split = None
            if has_split and (cells[columns.split_column] or "").strip():
                split = canonical_split(cells[columns.split_column])
                if split is None:
                    raise DataError(f"split {cells[columns.split_column]!r} is not train, val/valid or test", where)
            group = cells[columns.group_column].strip() if has_group else file_name_group(columns.group_pattern)(image_text)
            rows.append(Row(image, _names_from_cells(cells, columns, where), split, group, line))
    return rows


def label_names(rows: Sequence[Row], columns: CsvOptions) -> list[str]:
    """Label columns in their order, or the sorted names found in the one label column."""
    if not columns.one_column:
        return list(columns.label_columns)
    return sorted({name for row in rows for name in row.names})


def _split_rows(rows: list[Row], options: CsvOptions) -> dict[str, list[Row]]:
    if not any(row.split for row in rows):
        return three_way_split(rows, lambda r: r.group, options, TEST_FRACTION)
    unsplit = [row for row in rows if row.split is None]
    if unsplit:
        raise DataError(f"row {unsplit[0].line} has no split while others have one", "split column")
    parts = {name: [row for row in rows if row.split == name] for name in ("train", "val", "test")}
    if not parts["val"] or options.val_source == "train":
        parts["train"], parts["val"] = validation_split(parts["train"], lambda r: r.group, options)
    return parts


def records(csv_path: Path, split: str, options: CsvOptions | None = None) -> list[dict]:
    """Records ``{"image", "names", "id", "group"}`` of one split (train, val, test or all); rows whose image
    file is missing are left out (``medsight data check csv`` lists them). ``val_source=train`` ignores
    the CSV's validation rows and takes validation out of the training rows by group."""
    options = options or CsvOptions()
    csv_path = find_csv(csv_path)
    rows = read_table(csv_path, options)
    if split == "all":
        chosen = rows
    elif split in ("train", "val", "test"):
        chosen = _split_rows(rows, options)[split]
    else:
        raise DataError(f"unknown split {split!r} (expected train, val, test or all)", csv_path)
    missing_files([str(row.image) for row in chosen if not row.image.is_file()], options, csv_path,
                  f"{csv_path.name} ({split} split)")
    return [{"image": str(row.image), "names": row.names, "id": _image_id(row.image, csv_path.parent),
             "group": row.group} for row in chosen if row.image.is_file()]


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def _image_id(image: Path, base: Path) -> str:
    try:
        return image.relative_to(base).as_posix()
    except ValueError:
        return str(image)


@register_dataset("csv")
class CsvTable(DatasetFormat):
    description = "a CSV of image paths and labels (one '|'-separated column or 0/1 columns), optional split"
    schema = LABELLED_PICTURES
    options_class = CsvOptions
    synth_options = {"size": "picture size in pixels (default 128)"}

    def synth(self, out: Path, cases: int | None = None, seed: int = 0, size: int = 128, **options) -> Path:
        """Synthetic chest pictures with ChestX-ray14 findings, listed in ``labels.csv``."""
        from medsight.datasets.chestxray14 import NO_FINDING
        from medsight.datasets.synth import whole
        from medsight.datasets.synth.chestxray14 import MIN_PICTURE_PIXELS, Anatomy, draw_findings, render
        from medsight.io.writers import atomic_path

        if options:
            raise DataError(f"unknown option(s) {', '.join(options)} for csv", "synth")
        count, size = (60 if cases is None else whole("cases", cases)), whole("size", size, MIN_PICTURE_PIXELS)
        rng = np.random.default_rng(seed)
        out = Path(out)
        rows = []
        for index in range(count):
            findings = draw_findings(rng)
            picture = render(set(findings), Anatomy.draw(rng), size, rng)
            name = f"images/{index:05d}.png"
            with atomic_path(out / name) as tmp:
                Image.fromarray(picture, mode="L").save(tmp, format="PNG")
            split = "train" if index % 10 < 7 else ("val" if index % 10 < 8 else "test")
            rows.append({"path": name, "label": "|".join(findings) or NO_FINDING, "split": split,
                         "patient_id": str(index)})
        write_csv(rows, out / "labels.csv", ["path", "label", "split", "patient_id"])
        return out

    @classmethod
    def detect(cls, root: Path) -> float:
        """A .csv file, or a folder holding exactly one CSV file."""
        root = Path(root)
        if root.is_file():
            return 0.6 if root.suffix.lower() == ".csv" else 0.0
        if root.is_dir():
            tables = [p for p in root.glob("*.csv") if not p.name.startswith(".")]
            return 0.5 if len(tables) == 1 else 0.0
        return 0.0

    def records(self, root: Path, split: str) -> list[dict]:
        return records(root, split, self.options)

    def metadata(self, root: Path) -> dict:
        """Label columns in their order, or the sorted names of the one label column; multi-label when
        there are several columns or any row has other than one name."""
        rows = read_table(find_csv(root), self.options)
        multi = not self.options.one_column or any(len(row.names) != 1 for row in rows)
        return {"labels": label_names(rows, self.options), "multi_label": multi}

    def check(self, root: Path) -> list[Problem]:
        try:
            csv_path = find_csv(Path(root))
            rows = read_table(csv_path, self.options)
        except DataError as exc:
            return [Problem(exc.where or str(root), exc.message)]
        problems = []
        if not rows:
            problems.append(Problem(str(csv_path), "no rows"))
        for row in rows:
            if not row.image.is_file():
                problems.append(Problem(f"{csv_path}:{row.line}", f"image file not found: {row.image}"))
        return problems
