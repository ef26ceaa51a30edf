"""DICOM series folders: find the series, order the slices by position, refuse broken ones.

Headers are read with pydicom (no pixel data); pixels are decoded by SimpleITK/GDCM, which handles
JPEG baseline/lossless, JPEG-LS, JPEG 2000 and RLE transfer syntaxes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError

from medsight.errors import DataError

# A slice gap larger than this many median spacings is a missing slice.
_GAP_FACTOR = 1.5
# Spacing between consecutive slices may differ from the median by this fraction (rounding in IPP).
_SPACING_TOLERANCE = 0.01


@dataclass
class Series:
    uid: str
    files: list[Path] = field(default_factory=list)
    positions_mm: list[float] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)  # (Rows, Columns) per file
    description: str = ""


def _slice_position(ds: pydicom.Dataset) -> float | None:
    """Distance (mm) of a slice along its normal, from ImagePositionPatient and ImageOrientationPatient."""
    if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
        return None
    orientation = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
    normal = np.cross(orientation[:3], orientation[3:])
    return float(np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=np.float64)))


def scan_folder(folder: Path) -> dict[str, Series]:
    """Group the DICOM image files below ``folder`` by SeriesInstanceUID (non-DICOM files are skipped)."""
    series: dict[str, Series] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name.upper() != "DICOMDIR"):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError):
            continue
        if "SeriesInstanceUID" not in ds or "Rows" not in ds:
            continue  # not an image (structured report, RT plan...)
        uid = str(ds.SeriesInstanceUID)
        entry = series.setdefault(uid, Series(uid=uid, description=str(ds.get("SeriesDescription", ""))))
        entry.files.append(path)
        entry.positions_mm.append(_slice_position(ds))
        entry.sizes.append((int(ds.Rows), int(ds.get("Columns", 0))))
    return series


def choose_series(folder: Path, series: dict[str, Series], series_uid: str | None) -> Series:
    if not series:
        raise DataError("no DICOM image files found in this folder", folder)
    if series_uid is not None:
        if series_uid not in series:
            known = ", ".join(sorted(series))
            raise DataError(f"no series with SeriesInstanceUID {series_uid} (found: {known})", folder)
        return series[series_uid]
    # The series with the most slices is the volume; ties go to the smallest UID, so the choice is stable.
    return sorted(series.values(), key=lambda s: (-len(s.files), s.uid))[0]


def sorted_slices(folder: Path, entry: Series) -> list[Path]:
    """The series' files ordered by position along the slice normal; raises on gaps or uneven spacing."""
    if len(entry.files) == 1:
        return list(entry.files)
    usual = max(set(entry.sizes), key=entry.sizes.count)
    odd = [(f, size) for f, size in zip(entry.files, entry.sizes) if size != usual]
    if odd:
        raise DataError(f"series {entry.uid}: {len(odd)} slice(s) of another size ({odd[0][0].name} is "
                        f"{odd[0][1][0]} x {odd[0][1][1]}, the others {usual[0]} x {usual[1]})", folder)
    if any(p is None for p in entry.positions_mm):
        raise DataError(
            f"series {entry.uid}: slices without ImagePositionPatient/ImageOrientationPatient "
            "cannot be ordered into a volume",
            folder,
        )
    order = np.argsort(entry.positions_mm, kind="stable")
    positions = np.asarray(entry.positions_mm)[order]
    files = [entry.files[i] for i in order]
    steps = np.diff(positions)
    if np.any(steps < 1e-3):
        i = int(np.argmin(steps))
        raise DataError(
            f"series {entry.uid}: two slices at the same position {positions[i]:.2f} mm "
            f"({files[i].name}, {files[i + 1].name})",
            folder,
        )
    spacing = float(np.median(steps))
    gaps = np.flatnonzero(steps > _GAP_FACTOR * spacing)
    if gaps.size:
        i = int(gaps[0])
        missing = int(round(steps[i] / spacing)) - 1
        raise DataError(
            f"series {entry.uid}: {missing} missing slice(s) between {positions[i]:.2f} mm "
            f"({files[i].name}) and {positions[i + 1]:.2f} mm ({files[i + 1].name}); "
            f"slice spacing is {spacing:.2f} mm elsewhere",
            folder,
        )
    uneven = np.flatnonzero(np.abs(steps - spacing) > _SPACING_TOLERANCE * spacing + 1e-3)
    if uneven.size:
        i = int(uneven[0])
        raise DataError(
            f"series {entry.uid}: inconsistent slice spacing ({steps[i]:.3f} mm between "
            f"{files[i].name} and {files[i + 1].name}, {spacing:.3f} mm elsewhere)",
            folder,
        )
    return files


def read_series(folder: Path, series_uid: str | None = None) -> tuple[sitk.Image, str]:
    """Read the chosen series of ``folder`` as one volume; returns ``(image, SeriesInstanceUID)``."""
    series = scan_folder(folder)
    entry = choose_series(folder, series, series_uid)
    files = sorted_slices(folder, entry)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise DataError(f"series {entry.uid}: cannot decode pixel data ({_first_line(exc)})", folder) from exc
    return image, entry.uid


def _first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # ITK messages start with the source location; the last line is the human part.
    return lines[-1] if lines else type(exc).__name__
