"""NIH ChestX-ray14: ``Data_Entry_2017.csv`` (or ``_v2020``), ``images/`` or ``images_0NN/images/``,
``train_val_list.txt`` and ``test_list.txt``.

Traps handled here:
- the header's bracketed names hold commas (``OriginalImage[Width,Height]``), so columns are taken
  by position after checking the seven named ones; the 2017 file has a trailing empty column;
- ``Finding Labels`` is ``|``-separated and ``No Finding`` means all 14 negative;
- rows are joined to files on ``Image Index``, never on the follow-up number (the number in a file
  name differs from the ``Follow-up #`` column in 24,106 rows of the real file);
- validation is split from train_val by patient, never by image.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from medsight.data.formats import DatasetFormat, Problem, SplitOptions, missing_files
from medsight.datasets.folders import unreadable_image
from medsight.datasets.schemas import LABELLED_PICTURES
from medsight.datasets.vocabulary import FINDINGS
from medsight.datasets.splits import TEST_SEED, held_out, split_by_group, validation_split
from medsight.errors import DataError
from medsight.io.writers import write_text
from medsight.core.registry import register_dataset

NO_FINDING = "No Finding"
NAMED_COLUMNS = (
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
)
HEADER_2020 = ",".join(NAMED_COLUMNS) + ",OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
HEADER_2017 = HEADER_2020 + ","  # the 2017 file ends every line with an empty column
LABEL_FILES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv.gz", "Data_Entry_2017.csv.gz")
IMAGE_NAME = re.compile(r"^(\d{8})_(\d{3})\.png$")


@dataclass(frozen=True)
class Entry:
    """One row of Data_Entry_2017.csv."""

    image: str
    findings: tuple[str, ...]
    follow_up: int
    patient_id: str
    age: int | None
    sex: str
    view: str
    original_size: tuple[int, int] | None
    pixel_spacing_mm: tuple[float, float] | None

    def labels(self) -> np.ndarray:
        """(14,) float32 multi-hot vector in ``FINDINGS`` order."""
        return np.asarray([f in self.findings for f in FINDINGS], dtype=np.float32)


def _open_text(path: Path):
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def find_labels_csv(root: Path) -> Path:
    for name in LABEL_FILES:
        if (root / name).is_file():
            return root / name
    raise DataError(f"no {' or '.join(LABEL_FILES[:2])} in this folder (is it a ChestX-ray14 folder?)", root)


def parse_findings(text: str, where: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split("|") if part.strip())
    if names == (NO_FINDING,):
        return ()
    unknown = [n for n in names if n not in FINDINGS]
    if unknown or not names:
        raise DataError(f"unknown finding {unknown[0] if unknown else '(empty)'!r}; expected {NO_FINDING!r} or "
                        f"'|'-separated names from: {', '.join(FINDINGS)}", where)
    return names


def read_data_entry(path: Path) -> list[Entry]:
    """All rows of a Data_Entry CSV (2017 or 2020 revision, plain or gzipped)."""
    entries = []
    with _open_text(path) as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header[:7]) != NAMED_COLUMNS:
            raise DataError(f"header is not ChestX-ray14's; expected it to start with {','.join(NAMED_COLUMNS)}", path)
        for number, row in enumerate(reader, start=2):
            if not row or not any(cell.strip() for cell in row):
                continue
            where = f"{path}:{number}"
            if len(row) < 7:
                raise DataError(f"row has {len(row)} columns, expected at least 7", where)
            extra = [cell for cell in row[7:11]]
            try:
                entries.append(
                    Entry(
                        image=row[0].strip(),
                        findings=parse_findings(row[1], where),
                        follow_up=int(row[2]),
                        patient_id=str(int(row[3])),
                        age=int(float(row[4])) if row[4].strip() else None,
                        sex=row[5].strip(),
                        view=row[6].strip(),
                        original_size=(int(extra[0]), int(extra[1])) if len(extra) >= 2 and extra[1] else None,
                        pixel_spacing_mm=(float(extra[2]), float(extra[3])) if len(extra) >= 4 and extra[3] else None,
                    )
                )
            except ValueError as exc:
                raise DataError(f"cannot parse row ({exc})", where) from exc
    return entries


def image_paths(root: Path) -> dict[str, Path]:
    """Image file name -> path, from ``images/`` and every ``images_0NN/images/``."""
    folders = [root / "images"] + sorted(root.glob("images_[0-9][0-9][0-9]/images"))
    found: dict[str, Path] = {}
    for folder in folders:
        if folder.is_dir():
            for path in folder.iterdir():
                if path.suffix.lower() == ".png":
                    found[path.name] = path
    return found


def read_list(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def patient_of(image: str) -> str:
    match = IMAGE_NAME.match(image)
    return str(int(match.group(1))) if match else image


@dataclass
class ChestXray14Options(SplitOptions):
    #: views to keep, e.g. [PA]; empty = all
    views: list[str] = field(default_factory=list)


def records(root: Path, split: str, options: ChestXray14Options | None = None) -> list[dict]:
    """Records ``{"image", "names", "id", "group"}`` of one split: train, val, test or all (the group is
    the patient).

    Uses the official ``train_val_list.txt``/``test_list.txt``; validation patients always come out of
    train_val by their own hash. Without the list files, test is a patient-level 20 % hold-out.
    """
    options = options or ChestXray14Options()
    root = Path(root)
    if split not in ("train", "val", "test", "all"):
        raise DataError(f"unknown split {split!r} (expected train, val, test or all)", root)
    entries = {e.image: e for e in read_data_entry(find_labels_csv(root))}
    paths = image_paths(root)
    wanted_views = {v.upper() for v in options.views} if options.views else None
    train_val_file, test_file = root / "train_val_list.txt", root / "test_list.txt"
    if train_val_file.is_file() and test_file.is_file():
        train_val, test = read_list(train_val_file), read_list(test_file)
    else:
        train_val, test = split_by_group(sorted(entries), lambda name: entries[name].patient_id, 0.2, seed=TEST_SEED)
    train, val = validation_split([n for n in train_val if n in entries], lambda name: entries[name].patient_id,
                                  options)
    names = {"train": train, "val": val, "test": test, "all": train + val + test}[split]
    out, missing = [], []
    for name in names:
        entry = entries.get(name)
        if entry is None:
            continue  # a split file naming a picture the labels CSV lacks: `data check` reports these
        if name not in paths:
            missing.append(name)
            continue
        if wanted_views and entry.view.upper() not in wanted_views:
            continue
        out.append({"image": str(paths[name]), "names": entry.findings, "id": name, "group": entry.patient_id})
    missing_files(missing, options, root, f"the {split} split of {find_labels_csv(root).name} (images/, "
                                          "images_0NN/images/)")
    return out


@register_dataset("chestxray14")
class ChestXray14(DatasetFormat):
    description = "NIH ChestX-ray14: 14 findings on frontal chest X-rays (PNG + Data_Entry_2017.csv)"
    schema = LABELLED_PICTURES
    options_class = ChestXray14Options
    synth_options = {"size": "picture size in pixels (default 256)", "revision": "2017 (default) or 2020 CSV",
                     "findings": "comma-separated findings to draw from (default: all 14)"}

    def synth(self, out: Path, cases: int | None = None, seed: int = 0, size: int = 256, revision: str = "2017",
              findings: str | None = None, **options) -> Path:
        from medsight.datasets.synth import whole
        from medsight.datasets.synth.chestxray14 import MIN_PICTURE_PIXELS, Anatomy, draw_findings, render
        from medsight.io.writers import atomic_path

        if options:
            raise DataError(f"unknown option(s) {', '.join(options)} for chestxray14", "synth")
        choices = FINDINGS if not findings else tuple(parse_findings(findings.replace(",", "|"), "synth --findings"))
        count = 120 if cases is None else whole("cases", cases)
        size = whole("size", size, MIN_PICTURE_PIXELS)
        rng = np.random.default_rng(seed)
        out = Path(out)
        per_folder = max(1, math.ceil(count / 2))  # two images_0NN folders, as in the official release
        rows, names_by_patient = [], {}
        patient, made = 0, 0
        while made < count:
            patient += 1
            anatomy = Anatomy.draw(rng)
            sex, age0 = str(rng.choice(["M", "F"])), int(rng.integers(18, 85))
            for follow_up in range(min(int(rng.integers(1, 5)), count - made)):
                name = f"{patient:08d}_{follow_up:03d}.png"
                drawn = draw_findings(rng, choices=choices)
                picture = render(set(drawn), anatomy, size, rng)
                folder = out / f"images_{made // per_folder + 1:03d}" / "images"
                with atomic_path(folder / name) as tmp:
                    Image.fromarray(picture, mode="L").save(tmp, format="PNG")
                # As in the real file, the Follow-up # column sometimes disagrees with the file name.
                column_follow_up = follow_up if rng.random() > 0.1 else follow_up + int(rng.integers(1, 3))
                view = "PA" if rng.random() < 0.7 else "AP"
                spacing = 0.143 if rng.random() < 0.5 else 0.168
                rows.append(
                    [name, "|".join(drawn) or NO_FINDING, column_follow_up, patient, age0 + follow_up // 2, sex,
                     view, 2500, 2048, spacing, spacing]
                )
                names_by_patient.setdefault(patient, []).append(name)
                made += 1
        header = HEADER_2017 if str(revision) == "2017" else HEADER_2020
        csv_name = "Data_Entry_2017.csv" if str(revision) == "2017" else "Data_Entry_2017_v2020.csv"
        trailer = "," if str(revision) == "2017" else ""
        lines = [header] + [",".join(str(v) for v in row) + trailer for row in rows]
        write_text("\n".join(lines) + "\n", out / csv_name)
        patients = sorted(names_by_patient)
        # Each patient's side depends on the patient alone (as in a real release, adding patients moves none).
        test_patients = {p for p in patients if held_out(str(p), 0.2, seed=TEST_SEED + seed)}
        train_val = [n for p in patients if p not in test_patients for n in names_by_patient[p]]
        test = [n for p in patients if p in test_patients for n in names_by_patient[p]]
        write_text("\n".join(train_val) + "\n", out / "train_val_list.txt")
        write_text("\n".join(test) + "\n", out / "test_list.txt")
        return out

    @classmethod
    def detect(cls, root: Path) -> float:
        root = Path(root)
        return 1.0 if root.is_dir() and any((root / name).is_file() for name in LABEL_FILES) else 0.0

    def records(self, root: Path, split: str) -> list[dict]:
        return records(root, split, self.options)

    def metadata(self, root: Path) -> dict:
        return {"labels": list(FINDINGS), "multi_label": True}

    def check(self, root: Path) -> list[Problem]:
        root = Path(root)
        problems: list[Problem] = []
        try:
            csv_path = find_labels_csv(root)
            entries = read_data_entry(csv_path)
        except DataError as exc:
            return [Problem(exc.where or str(root), exc.message)]
        with _open_text(csv_path) as handle:
            header = handle.readline().rstrip("\r\n")
        if header not in (HEADER_2017, HEADER_2020):
            problems.append(Problem(str(csv_path), f"header differs from the official one: {header!r}"))
        paths = image_paths(root)
        if not paths:
            problems.append(Problem(str(root), "no PNG images in images/ or images_0NN/images/"))
        known = {e.image for e in entries}
        for entry in entries:
            if entry.image not in paths:
                problems.append(Problem(str(csv_path), f"row for {entry.image}: image file not found"))
        for name, path in sorted(paths.items()):
            if name not in known:
                problems.append(Problem(str(path), "image has no row in the labels CSV"))
            if (problem := unreadable_image(path)) is not None:
                problems.append(Problem(str(path), problem))
        patients = {e.image: e.patient_id for e in entries}
        lists = {}
        for list_name in ("train_val_list.txt", "test_list.txt"):
            list_path = root / list_name
            if not list_path.is_file():
                problems.append(Problem(str(list_path), "official split file missing"))
                continue
            lists[list_name] = read_list(list_path)
            for name in lists[list_name]:
                if name not in known:
                    problems.append(Problem(str(list_path), f"{name} is not in the labels CSV"))
        if len(lists) == 2:
            shared = {patients[n] for n in lists["train_val_list.txt"] if n in patients} & {
                patients[n] for n in lists["test_list.txt"] if n in patients
            }
            if shared:
                problems.append(Problem(str(root / "test_list.txt"),
                                        f"{len(shared)} patient(s) are in both train_val and test (e.g. {sorted(shared)[0]})"))
        return problems
