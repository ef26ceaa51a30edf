"""What the classification task measures of a picture for predict's out-of-distribution flags
(``medsight.inference.domain``); it plans no settings from the data.

Every fact comes from the file's header, never from its pixels: decoding a 1024 px PNG costs as much as the
network's forward pass on a CPU, so a second decode would double predict's time.
"""

from __future__ import annotations

import csv
import functools
from pathlib import Path

import numpy as np

#: projection radiography under its DICOM modality codes: one modality for the comparison
XRAY_MODALITIES = {"CR", "DX", "DR", "RG", "PX"}
#: a table's picture and view columns (ChestX-ray14's names, spaces as underscores, lower case)
IMAGE_COLUMNS, VIEW_COLUMNS = ("image_index",), ("view_position", "view")
#: ChestX-ray14's tables (Data_Entry_2017*.csv, the starter labels.csv) sit up to this many folders above a picture
TABLE_DEPTH = 3


def domain_case(task, record: dict) -> dict:
    """Bit depth (8 for ChestX-ray14's pictures; DICOM BitsStored), height / width, the DICOM modality, and the view:
    DICOM ViewPosition, or the ``View Position`` of a ChestX-ray14 table beside the picture (none known: no view).
    An image in memory: its array's value range and shape."""
    from medsight.io.readers import DICOM_SUFFIXES, MEMORY_IMAGES, is_memory_name

    name = str(record["image"])
    if is_memory_name(name):
        array, meta = MEMORY_IMAGES[name]
        depth = meta.get("bits") or (8 if float(np.max(array)) <= 255 else 16)
        return {"bit_depth": int(depth), "aspect": array.shape[0] / array.shape[1],
                "modality": _modality(meta.get("modality"))}
    path = Path(name)
    if path.suffix.lower().lstrip(".") in DICOM_SUFFIXES:
        import pydicom

        header = pydicom.dcmread(path, stop_before_pixels=True)
        depth = 8 if int(header.get("SamplesPerPixel", 1)) > 1 else int(header.get("BitsStored", 16))
        return {"bit_depth": depth, "aspect": int(header.Rows) / int(header.Columns),
                "modality": _modality(header.get("Modality")), "view": _view(header.get("ViewPosition"))}
    from PIL import Image

    with Image.open(path) as picture:  # the header only: no pixels decoded
        width, height = picture.size
        depth = 16 if picture.mode.startswith("I") else 32 if picture.mode == "F" else 8
    return {"bit_depth": depth, "aspect": height / width, "view": view_in_table(path)}


def _modality(code) -> str | None:
    code = str(code or "").strip().upper()
    return None if not code else "XR" if code in XRAY_MODALITIES else code


def _view(code) -> str | None:
    return str(code or "").strip().upper() or None


def view_in_table(picture: Path) -> str | None:
    """The ``View Position`` a ChestX-ray14 table in the picture's folder or the ``TABLE_DEPTH`` above gives it."""
    for folder in [picture.parent, *picture.parent.parents][:TABLE_DEPTH + 1]:
        for table in _tables(str(folder)):
            if picture.name in table:
                return _view(table[picture.name])
    return None


@functools.lru_cache(maxsize=32)
def _tables(folder: str) -> tuple[dict[str, str], ...]:
    """Image Index -> View Position of every CSV in ``folder`` that has both columns (read once per folder and
    process)."""
    tables = []
    for path in sorted(Path(folder).glob("*.csv")):
        try:
            with open(path, newline="", encoding="utf-8-sig") as handle:
                rows = csv.reader(handle)
                header = [name.strip().lower().replace(" ", "_") for name in next(rows, [])]
                image = next((header.index(n) for n in IMAGE_COLUMNS if n in header), None)
                view = next((header.index(n) for n in VIEW_COLUMNS if n in header), None)
                if image is None or view is None:
                    continue
                tables.append({row[image]: row[view] for row in rows if len(row) > max(image, view)})
        except (OSError, UnicodeDecodeError, csv.Error):  # not a table to read: the view stays unknown
            continue
    return tuple(tables)
