"""Projection X-ray DICOM (CR, DX, MG...) read as a presentation-ready picture, ``[row, column]``."""

from __future__ import annotations

import os

import numpy as np
import pydicom
from monai.data import ImageReader
from monai.data.utils import is_supported_format
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from medsight.core.geometry import geometry_meta
from medsight.errors import DataError
from medsight.io.channels import names_of, stack_channels
from medsight.io.checks import DICOM_SUFFIXES


class XrayDicomReader(ImageReader):
    """Single-frame projection DICOM (CR, DX, MG...) as a presentation-ready picture, ``[row, column]``.

    The standard display pipeline, in order: stored values -> modality LUT (rescale slope/intercept)
    -> VOI LUT or window -> MONOCHROME1 inverted, so bone is bright whatever the file's convention.
    pydicom decodes the pixel data (JPEG, JPEG-LS, JPEG 2000 via pylibjpeg).
    """

    def verify_suffix(self, filename) -> bool:
        return all(not os.path.isdir(name) and is_supported_format(name, DICOM_SUFFIXES) for name in names_of(filename))

    def read(self, data, **kwargs) -> list[tuple[pydicom.Dataset, str]]:
        datasets = []
        for name in names_of(data):
            try:
                datasets.append((pydicom.dcmread(name), name))
            except FileNotFoundError as exc:
                raise DataError("file not found", name) from exc
            except Exception as exc:  # pydicom raises InvalidDicomError, ValueError, EOFError...
                raise DataError(f"not a readable DICOM file ({exc})", name) from exc
        return datasets

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        arrays, metas = [], []
        for ds, name in img:
            array, meta = xray_presentation(ds, name)
            arrays.append(array)
            metas.append(meta)
        return stack_channels(arrays, metas, [name for _, name in img])


def xray_presentation(ds: pydicom.Dataset, name: str = "") -> tuple[np.ndarray, dict]:
    """Presentation values of a projection DICOM, float32 ``[row, column]``, with its metadata."""
    try:
        stored = ds.pixel_array
    except Exception as exc:
        syntax = ds.file_meta.get("TransferSyntaxUID", "unknown") if hasattr(ds, "file_meta") else "unknown"
        raise DataError(f"cannot decode pixel data (transfer syntax {syntax}: {exc})", name) from exc
    if stored.ndim == 3 and ds.get("SamplesPerPixel", 1) == 1:
        if int(ds.get("NumberOfFrames", 1)) > 1:
            raise DataError(f"multi-frame DICOM ({ds.NumberOfFrames} frames) is not an X-ray picture", name)
    if ds.get("SamplesPerPixel", 1) > 1:  # colour secondary capture: luminance
        stored = stored[..., :3].astype(np.float32) @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32)
        values = stored
        photometric = "RGB"
    else:
        values = apply_modality_lut(stored, ds).astype(np.float32)
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
        has_voi = "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds)
        if has_voi:
            values = apply_voi_lut(values, ds, index=0).astype(np.float32)
        if photometric == "MONOCHROME1":
            low, high = _value_range(ds, lut="VOILUTSequence" in ds)
            values = (low + high) - values
    row_mm, col_mm = (float(v) for v in ds.get("PixelSpacing", ds.get("ImagerPixelSpacing", [1.0, 1.0])))
    affine = np.diag([row_mm, col_mm, 1.0])
    meta = {
        "affine": affine,
        "original_affine": affine.copy(),
        "spatial_shape": np.asarray(values.shape[:2]),
        "space": "RAS",
        "photometric": photometric,
        "modality": str(ds.get("Modality", "")),
        "series_uid": str(ds.get("SeriesInstanceUID", "")),
        **geometry_meta(affine),
    }
    return values, meta


def _value_range(ds: pydicom.Dataset, lut: bool) -> tuple[float, float]:
    """The range the VOI stage outputs (PS3.3 C.11.2): what MONOCHROME1 is inverted within."""
    if lut:
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    if int(ds.get("PixelRepresentation", 0)) == 1:
        low, high = -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    else:
        low, high = 0.0, 2.0**bits - 1
    slope, intercept = float(ds.get("RescaleSlope", 1.0)), float(ds.get("RescaleIntercept", 0.0))
    low, high = low * slope + intercept, high * slope + intercept
    return min(low, high), max(low, high)
