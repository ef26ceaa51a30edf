"""Write synthetic volumes as DICOM series, and pictures as projection X-ray DICOM files.

The geometry tags follow PS3.3 C.7.6.2: ImageOrientationPatient holds the LPS direction of a row
(increasing column index = array x) and of a column (increasing row index = array y);
ImagePositionPatient is the LPS centre of the first voxel of each slice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

from medsight.io.writers import atomic_path


def _file_meta(sop_class: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian  # ``compress`` replaces it when asked to encode
    return meta


def _save(ds: Dataset, path: Path, transfer_syntax: str | None) -> None:
    if transfer_syntax and transfer_syntax != ExplicitVRLittleEndian:
        ds.compress(transfer_syntax)  # pydicom's encoders (pylibjpeg-openjpeg for JPEG 2000, native RLE)
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)


def write_series(
    volume_xyz: np.ndarray,
    origin_lps,
    spacing_mm,
    direction_lps,
    folder: str | Path,
    series_uid: str | None = None,
    file_names=None,
    transfer_syntax: str | None = None,
    rescale_intercept: float = -1024.0,
    description: str = "synthetic",
    slices=None,
    identifiers: dict[str, str] | None = None,
) -> str:
    """Write a CT-like volume (HU, indexed [x, y, z]) as one file per slice; returns the SeriesInstanceUID.

    file_names: names for slices 0..n-1 (default ``IM<k>.dcm``); pass shuffled names to test ordering.
    slices: indices of the slices to write (default all), to make gaps on purpose.
    identifiers: DICOM keyword -> value for patient, study and institution attributes (PatientName,
    AccessionNumber...), e.g. marker strings to prove they never reach an output.
    """
    folder = Path(folder)
    volume = np.asarray(volume_xyz)
    direction = np.asarray(direction_lps, dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    origin = np.asarray(origin_lps, dtype=np.float64)
    series_uid = series_uid or generate_uid()
    study_uid, frame_uid = generate_uid(), generate_uid()
    names = list(file_names) if file_names is not None else [f"IM{k:04d}.dcm" for k in range(volume.shape[2])]
    stored = np.round(volume - rescale_intercept).astype(np.int32)
    if stored.min() < 0 or stored.max() > 65535:
        raise ValueError("volume does not fit 16-bit unsigned storage with this intercept")
    for k in slices if slices is not None else range(volume.shape[2]):
        ds = Dataset()
        ds.file_meta = _file_meta(CTImageStorage)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality, ds.PatientID, ds.PatientName = "CT", "SYNTH", "Synthetic^Patient"
        ds.SeriesDescription = description
        for keyword, value in (identifiers or {}).items():
            setattr(ds, keyword, value)
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [float(v) for v in origin + k * spacing[2] * direction[:, 2]]
        ds.ImageOrientationPatient = [float(v) for v in np.concatenate([direction[:, 0], direction[:, 1]])]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]  # row spacing (y), column spacing (x)
        ds.SliceThickness = float(spacing[2])
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1.0, rescale_intercept, "HU"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T.astype(np.uint16)).tobytes()
        _save(ds, folder / names[k], transfer_syntax)
    return series_uid


def write_xray(
    path: str | Path,
    stored: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
    pixel_spacing_mm: tuple[float, float] = (0.143, 0.143),
    transfer_syntax: str | None = None,
    identifiers: dict[str, str] | None = None,
) -> Path:
    """A DX 'for presentation' file with stored values ``stored`` (rows, columns), unsigned; ``identifiers``:
    DICOM keyword -> value for patient, study and institution attributes."""
    stored = np.asarray(stored)
    ds = Dataset()
    ds.file_meta = _file_meta(DigitalXRayImageStorageForPresentation)
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID, ds.ViewPosition = "DX", "SYNTH", "PA"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
    ds.ImagerPixelSpacing = [float(v) for v in pixel_spacing_mm]
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = float(rescale[0]), float(rescale[1])
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = float(window[0]), float(window[1])
    ds.PixelData = np.ascontiguousarray(stored.astype(np.uint16)).tobytes()
    for keyword, value in (identifiers or {}).items():
        setattr(ds, keyword, value)
    _save(ds, Path(path), transfer_syntax)
    return Path(path)

