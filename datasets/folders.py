"""Class-per-folder image sets, as in the classic tutorials (``chest_xray/train/PNEUMONIA/*.jpeg``).

Two layouts are read:

    ROOT/train/<class>/*.png      split folders (``train``, ``val``/``valid``/``validation``, ``test``);
    ROOT/val/<class>/...          without a validation folder, validation is taken out of train
    ROOT/test/<class>/...

    ROOT/<class>/*.png            no split folders: test (20 %) and validation are taken out by a
                                  seeded hash of each file's name

Single-label: every image belongs to the class its folder is named after. Class names are the
sorted union of the class folders of every split, so every split encodes classes alike.
Images are PNG/JPEG/BMP/TIFF or DICOM files, found recursively inside a class folder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from medsight.data.formats import DatasetFormat, Problem, SplitOptions
from medsight.datasets.schemas import LABELLED_PICTURES
from medsight.datasets.splits import (
    SPLIT_NAMES,
    canonical_split,
    check_group_pattern,
    file_name_group,
    three_way_split,
    validation_split,
)
from medsight.errors import DataError
from medsight.io.readers import DICOM_SUFFIXES, PICTURE_SUFFIXES
from medsight.core.registry import register_dataset

IMAGE_SUFFIXES = tuple(f".{s}" for s in PICTURE_SUFFIXES + DICOM_SUFFIXES)
TEST_FRACTION = 0.2


@dataclass
class FoldersOptions(SplitOptions):
    #: regex whose first group, found in a file name, is the patient (``^(\d+)_`` for NIH names like
    #: 00000193_019.png); empty = every image is its own group
    group_pattern: str = ""

    def __post_init__(self):
        super().__post_init__()
        check_group_pattern(self.group_pattern)


def is_image_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def split_folders(root: Path) -> dict[str, Path]:
    """``{"train": ROOT/train, "val": ROOT/valid, ...}`` for the split folders that exist."""
    found: dict[str, Path] = {}
    for folder in _subfolders(root):
        split = canonical_split(folder.name)
        if split is not None:
            if split in found:
                raise DataError(f"two folders mean split {split!r}: {found[split].name} and {folder.name}", root)
            found[split] = folder
    return found


def images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if is_image_file(p))


def class_names(root: Path) -> list[str]:
    """Sorted class folder names over every split (ImageFolder's order)."""
    root = Path(root)
    parents = list(split_folders(root).values()) or [root]
    names = sorted({folder.name for parent in parents for folder in _subfolders(parent)})
    if not names:
        raise DataError("no class folders (expected ROOT/<class>/ or ROOT/train/<class>/ holding images)", root)
    return names


def _labelled(parent: Path, root: Path, group_of: Callable[[str], str]) -> list[dict]:
    records = []
    for folder in _subfolders(parent):
        for path in images_in(folder):
            identifier = path.relative_to(root).as_posix()
            records.append({"image": str(path), "names": (folder.name,), "id": identifier,
                            "group": group_of(identifier)})
    return records


def records(root: Path, split: str, options: FoldersOptions | None = None) -> list[dict]:
    """Records ``{"image", "names", "id", "group"}`` of one split (train, val, test or all).

    Splits made here keep groups whole: a group is what ``group_pattern`` finds in a file name (a
    patient ID), else the image. ``val_source=train`` ignores a validation folder and takes validation
    out of train (when the dataset's own validation images share patients with its training images).
    """
    options = options or FoldersOptions()
    root = Path(root)
    if not root.is_dir():
        raise DataError("no such folder", root)
    group_of = file_name_group(options.group_pattern)
    folders = split_folders(root)
    if not folders:
        everything = _labelled(root, root, group_of)
        if split == "all":
            return everything
        return three_way_split(everything, lambda r: r["group"], options, TEST_FRACTION)[split]
    if split == "all":
        return [r for folder in folders.values() for r in _labelled(folder, root, group_of)]
    own_val = options.val_source == "dataset"
    if split in ("train", "val") and ("val" not in folders or not own_val):
        train, val = validation_split(_labelled(folders["train"], root, group_of) if "train" in folders else [],
                                      lambda r: r["group"], options)
        return train if split == "train" else val
    return _labelled(folders[split], root, group_of) if split in folders else []


@register_dataset("folders")
class ClassFolders(DatasetFormat):
    description = "class-per-folder image sets (ROOT/[train|val|test/]<class>/*.png|jpg|dcm), single-label"
    schema = LABELLED_PICTURES
    options_class = FoldersOptions
    synth_options = {"size": "picture size in pixels (default 128)",
                     "classes": "two class names, normal first (default normal,pneumonia)"}

    def synth(self, out: Path, cases: int | None = None, seed: int = 0, size: int = 128,
              classes: str | list[str] = "normal,pneumonia", **options) -> Path:
        """Synthetic chest pictures: the first class has no finding, the second the Pneumonia signature."""
        from medsight.datasets.synth import whole
        from medsight.datasets.synth.chestxray14 import MIN_PICTURE_PIXELS, Anatomy, render
        from medsight.io.writers import atomic_path

        if options:
            raise DataError(f"unknown option(s) {', '.join(options)} for folders", "synth")
        names = classes.split(",") if isinstance(classes, str) else list(classes)
        if len(names) != 2:
            raise DataError(f"classes={classes!r}: give two class names, normal first", "synth")
        count, size = (60 if cases is None else whole("cases", cases)), whole("size", size, MIN_PICTURE_PIXELS)
        rng = np.random.default_rng(seed)
        out = Path(out)
        for index in range(count):
            split = "train" if index % 10 < 7 else ("val" if index % 10 < 8 else "test")
            abnormal = bool(rng.random() < 0.5)
            picture = render({"Pneumonia"} if abnormal else set(), Anatomy.draw(rng), size, rng)
            path = out / split / names[int(abnormal)] / f"{index:05d}.png"
            with atomic_path(path) as tmp:
                Image.fromarray(picture, mode="L").save(tmp, format="PNG")
        return out

    @classmethod
    def detect(cls, root: Path) -> float:
        """A generic layout: any folder whose (split) subfolders hold pictures matches, weakly."""
        root = Path(root)
        if not root.is_dir():
            return 0.0
        try:
            parents = list(split_folders(root).values()) or [root]
        except DataError:
            return 0.0
        for parent in parents:
            for folder in _subfolders(parent):
                if any(is_image_file(p) for p in folder.iterdir()):
                    return 0.1
        return 0.0

    def records(self, root: Path, split: str) -> list[dict]:
        return records(root, split, self.options)

    def metadata(self, root: Path) -> dict:
        return {"labels": class_names(root), "multi_label": False}

    def check(self, root: Path) -> list[Problem]:
        root = Path(root)
        try:
            names = class_names(root)
            folders = split_folders(root)
        except DataError as exc:
            return [Problem(exc.where or str(root), exc.message)]
        problems: list[Problem] = []
        parents = list(folders.values()) or [root]
        for parent in parents:
            for stray in sorted(p for p in parent.iterdir() if is_image_file(p)):
                problems.append(Problem(str(stray), "image outside a class folder: it has no label"))
            for folder in _subfolders(parent):
                images = images_in(folder)
                if not images:
                    problems.append(Problem(str(folder), "class folder holds no images"))
                for path in images:
                    problem = unreadable_image(path)
                    if problem:
                        problems.append(Problem(str(path), problem))
            missing = sorted(set(names) - {f.name for f in _subfolders(parent)})
            if folders and missing and canonical_split(parent.name) == "train":
                problems.append(Problem(str(parent), f"no folder for class(es) {', '.join(missing)}"))
        if folders and "train" not in folders:
            expected = " or ".join(SPLIT_NAMES["train"])
            problems.append(Problem(str(root), f"split folders but no training folder ({expected})"))
        return problems


def unreadable_image(path: Path) -> str | None:
    """Why ``path`` cannot be read as an image, or None. DICOM: header only (fast)."""
    try:
        if path.suffix.lower().lstrip(".") in DICOM_SUFFIXES:
            import pydicom

            ds = pydicom.dcmread(path, stop_before_pixels=True)
            if "Rows" not in ds:
                return "DICOM file without pixel data"
            return None
        with Image.open(path) as image:
            image.load()
    except Exception as exc:  # PIL and pydicom raise many unrelated types for damaged files
        return f"unreadable image ({exc})"
    return None

