"""The DICOM SR of a CT's nodule marks (``medsight serve``): a TID 1500 measurement report with one
planar measurement group per mark (the marks the DICOM SEG of spheres holds: at or above
``infer.dicom_min_probability``, the ``dicom_max_marks`` most probable), each with the mark's diameter and
probability and a circle of that diameter around its centre on the source slice nearest to it."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pydicom

from medsight.io.dicom_out import series_datasets
from medsight.io.dicom_sr import PROBABILITY, Group, write_measurement_report

NODULE = ("27925004", "SCT", "Nodule")
DIAMETER = ("81827009", "SCT", "Diameter")
CT_CHEST = ("24627-2", "LN", "CT Chest")


def nearest_slice(centre_lps: np.ndarray, images: list[pydicom.Dataset]) -> tuple[pydicom.Dataset, float, float]:
    """The image whose plane lies nearest ``centre_lps``, and the centre's (column, row) pixel indices on it."""
    best = None
    for ds in images:
        orientation = np.asarray(ds.ImageOrientationPatient, dtype=float)
        row_dir, col_dir = orientation[:3], orientation[3:]
        offset = centre_lps - np.asarray(ds.ImagePositionPatient, dtype=float)
        distance = abs(float(offset @ np.cross(row_dir, col_dir)))
        if best is None or distance < best[0]:
            row_mm, col_mm = (float(v) for v in ds.PixelSpacing)
            best = (distance, ds, float(offset @ row_dir) / col_mm, float(offset @ col_dir) / row_mm)
    return best[1], best[2], best[3]


def nodule_report(marks: np.ndarray, source: str, out: Path, name: str, keep_identifiers: bool,
                  min_probability: float, max_marks: int) -> list[Path]:
    """``<name>_marks_sr.dcm`` for the DICOM series at ``source``; marks (N, 5) ``x, y, z, probability,
    diameter_mm`` in world LPS mm."""
    if not (Path(source).is_dir() or str(source).lower().endswith((".dcm", ".ima"))):
        return []  # no DICOM series to reference: the submission rows say it all
    images = series_datasets(source)
    if not all(ds.get(k) for ds in images[:1] for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")):
        logging.getLogger(__name__).warning(
            f"warning: {name}: the series carries no Study/Series/SOP Instance UIDs: no SR can reference it (the "
            "submission rows and the DICOM SEG were written)")
        return []
    chosen = [m for m in np.asarray(marks).reshape(-1, 5) if m[3] >= min_probability][:max_marks]
    groups = []
    for number, mark in enumerate(chosen, start=1):
        image, column, row = nearest_slice(np.asarray(mark[:3], dtype=float), images)
        radius_px = float(mark[4]) / 2.0 / float(image.PixelSpacing[1])
        # SCOORD pixel coordinates: (0, 0) is the top left corner of the first pixel, so its centre is 0.5
        groups.append(Group(label=f"nodule mark {number}", finding_type=NODULE, image=image,
                            region=(column + 0.5, row + 0.5, radius_px),
                            measurements=[(DIAMETER, float(mark[4]), "mm"), (PROBABILITY, float(mark[3]), "1")]))
    return [write_measurement_report(groups, images, out / f"{name}_marks_sr.dcm", "medsight lung nodule marks",
                                     keep_identifiers=keep_identifiers, procedure=CT_CHEST)]
