"""Images already in memory as inputs: NumPy arrays with their geometry, MONAI ``MetaTensor``s, nibabel and
SimpleITK images, pydicom datasets.

Each is converted once, by the same reader code files go through (``NiftiReader`` for arrays and nibabel
images, ``SimpleITKReader`` for SimpleITK images and DICOM series, ``xray_presentation`` for an X-ray
dataset), and kept under a name of its own (``<memory:3 volume>``). ``medsight.io.readers.MemoryReader``,
registered with every ``LoadImage`` medsight builds, reads those names: the transforms, the sliding window and the writers then
run exactly as for a file, and outputs land on the input's grid with its geometry.

Geometry of a plain array: ``affine`` (4x4 for a volume, indices ``[x, y, z]`` to RAS mm, as nibabel's; 3x3
for a picture) or ``spacing_mm``; neither means 1 mm voxels at the origin. Pictures are ``[row, column]``.
"""

from __future__ import annotations

import itertools
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from medsight.core.geometry import geometry_meta
from medsight.errors import DataError
from medsight.io.readers import MEMORY_IMAGES, MEMORY_PREFIX

_COUNTER = itertools.count(1)
_LOCK = threading.Lock()


def register(image: Any, kind: str = "volume", *, affine=None, spacing_mm=None, label: str = "") -> str:
    """Convert ``image`` as a reader of ``kind`` (``volume`` or ``picture``) would, and keep it under a new name
    (``release`` frees it). ``label`` names the input in error messages."""
    array, meta = _convert(image, kind, affine, spacing_mm, label or type(image).__name__)
    with _LOCK:
        name = f"{MEMORY_PREFIX}{next(_COUNTER)} {kind}>"
        MEMORY_IMAGES[name] = (array, meta)
    meta["filename_or_obj"] = name
    return name


def release(names: Sequence[str]) -> None:
    with _LOCK:
        for name in names:
            MEMORY_IMAGES.pop(name, None)


# -- conversion ---------------------------------------------------------------------------------------------
def _convert(image: Any, kind: str, affine, spacing_mm, label: str) -> tuple[np.ndarray, dict]:
    import nibabel as nib
    import pydicom
    import SimpleITK as sitk
    import torch
    from monai.data import MetaTensor

    from medsight.io.readers import SimpleITKReader
    from medsight.io.xray import xray_presentation

    if isinstance(image, (str, Path)):
        raise DataError("a path is read as a file, not registered as an in-memory image", str(image))
    if isinstance(image, pydicom.Dataset):
        if kind == "picture":
            return xray_presentation(image, label)
        return _dicom_series([image], label)
    if isinstance(image, (list, tuple)) and image and all(isinstance(d, pydicom.Dataset) for d in image):
        return _dicom_series(list(image), label)
    if isinstance(image, sitk.Image):
        if kind == "picture":
            return _picture(sitk.GetArrayFromImage(image), np.diag([*image.GetSpacing()[::-1][:2], 1.0]), label)
        return SimpleITKReader().get_data([(image, label, None)])
    if isinstance(image, nib.spatialimages.SpatialImage):
        if kind == "picture":
            return _picture(np.asanyarray(image.dataobj), None, label)
        return _nifti(image, label)
    if isinstance(image, MetaTensor):
        affine = image.affine.cpu().numpy() if affine is None else affine
        image = image.detach().cpu().numpy()
    elif isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise DataError(f"cannot read a {type(image).__name__} as an image (give a path, a NumPy array with its "
                        "affine or spacing, a MONAI MetaTensor, a nibabel or SimpleITK image, or pydicom datasets)",
                        label)
    if affine is not None and spacing_mm is not None:
        raise DataError("give the affine or the spacing, not both", label)
    if kind == "picture":
        if image.ndim != 2:
            raise DataError(f"a picture is a 2D array [row, column]; this one has shape {image.shape}", label)
        return _picture(image, None if affine is None else np.asarray(affine, dtype=np.float64), label,
                        spacing_mm)
    if image.ndim not in (3, 4):
        raise DataError(f"a volume is a 3D array [x, y, z] (4D: [x, y, z, channel]); this one has shape "
                        f"{image.shape}", label)
    if affine is None:
        affine = np.diag([*(spacing_mm if spacing_mm is not None else (1.0, 1.0, 1.0)), 1.0])
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise DataError(f"a volume's affine is 4x4 (voxel [x, y, z] to RAS mm); got shape {affine.shape}", label)
    return _nifti(nib.Nifti1Image(np.asarray(image), affine), label)


def _nifti(image, label: str) -> tuple[np.ndarray, dict]:
    from medsight.io.readers import NiftiReader

    reader = NiftiReader()
    reader.filenames = (label,)  # what NibabelReader.read records for get_data: the name in the metadata
    return reader.get_data(image)


def _picture(array: np.ndarray, affine, label: str, spacing_mm=None) -> tuple[np.ndarray, dict]:
    array = np.asarray(array)
    if array.ndim != 2:
        raise DataError(f"a picture is 2D; this image has shape {array.shape}", label)
    if affine is None:
        rows, columns = spacing_mm if spacing_mm is not None else (1.0, 1.0)
        affine = np.diag([float(rows), float(columns), 1.0])
    if affine.shape != (3, 3):
        raise DataError(f"a picture's affine is 3x3; got shape {affine.shape}", label)
    values = array.astype(np.float32) if array.dtype.kind not in "uf" or array.dtype.itemsize > 2 else array
    meta = {"affine": affine, "original_affine": affine.copy(), "spatial_shape": np.asarray(values.shape),
            "space": "RAS", **geometry_meta(affine)}
    return values, meta


def _dicom_series(datasets: list, label: str) -> tuple[np.ndarray, dict]:
    """A DICOM series handed over as datasets: written to a private folder and read by the series reader files go
    through (slice order, gaps and sizes checked), then forgotten."""
    from medsight.io.dicom import read_series
    from medsight.io.readers import SimpleITKReader

    with tempfile.TemporaryDirectory(prefix="medsight-series-") as folder:
        for index, dataset in enumerate(datasets):
            dataset.save_as(Path(folder) / f"{index:05d}.dcm", enforce_file_format=True)
        image, uid = read_series(Path(folder))
    return SimpleITKReader().get_data([(image, label, uid)])
