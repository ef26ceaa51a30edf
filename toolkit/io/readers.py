"""MONAI image readers for every format medsight accepts, registered once in ``image_loader``.

Each reader keeps MONAI's three-method contract (``verify_suffix``, ``read``, ``get_data``), so it
plugs into ``LoadImage``/``LoadImaged``; a read failure becomes a ``DataError`` naming the file.

Array layout:
- volumes (NIfTI, MHD/MHA, NRRD, DICOM series) are indexed ``[x, y, z]`` like MONAI's ITK and
  nibabel readers; ``meta["affine"]`` maps those indices to RAS mm (see ``medsight.core.geometry``);
- 2D pictures (PNG/JPEG, X-ray DICOM) are indexed ``[row, column]`` like every 2D vision library,
  so weights trained elsewhere on X-rays see images the right way up.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
from monai.data import ImageReader, NibabelReader, PILReader
from monai.data.utils import is_supported_format
from monai.transforms import LoadImage, LoadImaged
from monai.utils import ensure_tuple
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from medsight.errors import DataError
from medsight.core.geometry import affine_from_itk, geometry_meta
from medsight.io.dicom import _first_line, read_series

from medsight.io.checks import (  # noqa: E402,F401  (suffixes and checks re-exported here)
    DICOM_SUFFIXES,
    ITK_SUFFIXES,
    NIFTI_SUFFIXES,
    MIN_VOLUME_VOXELS,
    PICTURE_SUFFIXES,
    check_detached_data,
    check_volume_path,
)


def _names(filename) -> tuple[str, ...]:
    return tuple(str(f) for f in ensure_tuple(filename))


def stack_channels(arrays: list[np.ndarray], metas: list[dict], names: Sequence[str]) -> tuple[np.ndarray, dict]:
    """Several files are channels of one image (MONAI's convention): stack on a new first axis. Each must hold
    one image: a 4D file among them is named (it would hold several channels of its own)."""
    meta = metas[0]
    if len(arrays) == 1:
        meta["original_channel_dim"] = float("nan")
        return arrays[0], meta
    for array, other, name in zip(arrays, metas, names):
        spatial = len(np.asarray(other["spatial_shape"]).reshape(-1))
        if array.ndim > spatial or (array.ndim == 4 and spatial >= 4):
            raise DataError(f"holds {array.shape[-1]} volumes (a 4D image) where one file per channel is read: give "
                            "one 3D volume per file", name)
    for other, name in zip(metas, names):  # each file's own geometry first, so the faulty one is named
        matrix = np.asarray(other["affine"], dtype=np.float64)[:3, :3]
        if not np.all(np.isfinite(matrix)) or abs(np.linalg.det(matrix)) < 1e-12:
            raise DataError("its affine is singular or not finite (a zero voxel size?): no geometry to place it in "
                            "the world", name)
    for other, name in zip(metas, names):  # a one-voxel "volume" would otherwise be blamed on its neighbours
        spatial = [int(n) for n in other["spatial_shape"]]
        if len(spatial) >= 3 and min(spatial) < MIN_VOLUME_VOXELS:
            raise DataError(f"volume is {' x '.join(map(str, spatial))}: too small to hold anatomy", name)
    # The grid most files share is the reference, so the odd file out is the one named (ties: the first file's).
    shapes = [tuple(int(n) for n in m["spatial_shape"]) for m in metas]
    usual = max(shapes, key=lambda shape: (shapes.count(shape), -shapes.index(shape)))
    agree = [sum(np.allclose(m["affine"], o["affine"], atol=1e-2) for o in metas) if shape == usual else -1
             for m, shape in zip(metas, shapes)]
    ref = agree.index(max(agree))
    for other, shape, name in zip(metas, shapes, names):
        if shape != usual:
            raise DataError(f"shape {shape} differs from {usual} of {Path(names[ref]).name}"
                            f"{', the first file of this image' if ref == 0 else ''}", name)
        # Channels of one image must lie on one grid (0.01 mm: rounding in headers).
        if not np.allclose(other["affine"], metas[ref]["affine"], atol=1e-2):
            raise DataError(
                f"geometry (affine) differs from that of {Path(names[ref]).name}; resample the files onto one grid "
                "first",
                name,
            )
    meta["original_channel_dim"] = 0
    meta["channel_files"] = "\n".join(str(name) for name in names)  # one string: metadata collates it as is
    return np.stack(arrays, axis=0), meta


class SimpleITKReader(ImageReader):
    """MHD/MHA, NRRD, DICOM series folders and single DICOM files, through SimpleITK.

    ``series_uid`` picks one series of a folder holding several; by default the series with the
    most slices is read. Pixel values come out as stored after the modality rescale (CT in HU).
    """

    def __init__(self, series_uid: str | None = None):
        super().__init__()
        self.series_uid = series_uid

    def verify_suffix(self, filename) -> bool:
        return all(
            Path(name).is_dir() or is_supported_format(name, ITK_SUFFIXES + DICOM_SUFFIXES)
            for name in _names(filename)
        )

    def read(self, data, **kwargs) -> list[tuple[sitk.Image, str]]:
        images = []
        for name in _names(data):
            path = Path(name)
            if path.is_dir():
                image, uid = read_series(path, kwargs.get("series_uid", self.series_uid))
                images.append((image, name, uid))
                continue
            if not path.exists():
                raise DataError("file not found", path)
            if path.suffix.lower() in (".mhd", ".nhdr"):
                check_detached_data(path)
            try:
                image = sitk.ReadImage(str(path))
            except RuntimeError as exc:
                raise DataError(f"cannot read image ({_first_line(exc)})", path) from exc
            images.append((image, name, None))
        return images

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        arrays, metas = [], []
        for image, name, series_uid in img:
            if image.GetNumberOfComponentsPerPixel() > 1:  # colour DICOM/NRRD: mean of the components
                image = _mean_components(image)
            array = sitk.GetArrayFromImage(image).T  # ITK gives [z, y, x]; MONAI indexes [x, y, z]
            dims = image.GetDimension()
            affine = affine_from_itk(image.GetOrigin(), image.GetSpacing(), image.GetDirection())
            meta: dict[str, Any] = {
                "affine": affine,
                "original_affine": affine.copy(),
                "spatial_shape": np.asarray(array.shape[:dims]),
                "space": "RAS",
                **geometry_meta(affine),
            }
            if series_uid is not None:
                meta["series_uid"] = series_uid
            arrays.append(array)
            metas.append(meta)
        return stack_channels(arrays, metas, [name for _, name, _ in img])


def _mean_components(image: sitk.Image) -> sitk.Image:
    channels = [sitk.Cast(sitk.VectorIndexSelectionCast(image, c), sitk.sitkFloat32)
                for c in range(image.GetNumberOfComponentsPerPixel())]
    total = channels[0]
    for channel in channels[1:]:
        total = total + channel
    return total / float(len(channels))


class NiftiReader(NibabelReader):
    """NIfTI through nibabel (MONAI's reader), with ``DataError`` on failure and the ITK geometry keys."""

    def read(self, data, **kwargs):
        images = []
        for name in _names(data):  # one at a time, so a failure names its own file
            if not Path(name).exists():
                raise DataError("file not found", name)
            try:
                images.append(super().read(name, **kwargs))
            except Exception as exc:  # nibabel raises several unrelated types for damaged files
                raise DataError(f"cannot read NIfTI ({exc})", name) from exc
        return images if len(images) > 1 else images[0]

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        arrays, metas, names = [], [], []
        for image in ensure_tuple(img):  # one at a time, so a mismatch is reported with its file
            name = str(image.get_filename())
            try:
                array, meta = super().get_data(image)
            except Exception as exc:  # truncated gzip streams fail only when the data are read
                raise DataError(f"cannot read NIfTI data ({exc})", name) from exc
            meta.update(geometry_meta(np.asarray(meta["affine"], dtype=np.float64)))
            arrays.append(array)
            metas.append(meta)
            names.append(name)
        if len(arrays) == 1:
            return arrays[0], metas[0]  # keep MONAI's channel handling of a single (4D) file
        return stack_channels(arrays, metas, names)


def _to_gray(image: Image.Image) -> Image.Image:
    """Colour and palette pictures become 8-bit luminance; 8/16/32-bit gray stays as it is."""
    if image.mode in ("L", "I", "I;16", "I;16B", "I;16L", "F"):
        return image
    if image.mode in ("RGBA", "LA", "PA"):
        # X-ray exports use alpha only as padding: composite on black, as a viewer would show them.
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("L")


class PictureReader(PILReader):
    """PNG/JPEG/BMP/TIFF through PIL (MONAI's reader), to gray, indexed ``[row, column]``; 8 and 16 bit."""

    def __init__(self):
        super().__init__(converter=_to_gray, reverse_indexing=False)

    def verify_suffix(self, filename) -> bool:
        return is_supported_format(filename, PICTURE_SUFFIXES)

    def read(self, data, **kwargs):
        try:
            images = [Image.open(name) for name in _names(data)]
            for image in images:
                image.load()  # decode now, so a truncated file fails here with its name
        except FileNotFoundError as exc:
            raise DataError("file not found", exc.filename) from exc
        except Image.DecompressionBombError as exc:
            raise DataError(f"refused: the picture claims more pixels than any X-ray holds ({exc}); a "
                            "decompression-bomb guard", _names(data)[0]) from exc
        except (OSError, SyntaxError, ValueError) as exc:
            raise DataError(f"cannot read picture ({exc})", _names(data)[0]) from exc
        images = [self.converter(image) for image in images]
        return images if len(images) > 1 else images[0]

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        arrays, metas = [], []
        for image in ensure_tuple(img):
            array = np.asarray(image)
            if array.dtype == np.int32 and image.mode == "I":  # 16-bit PNGs open as 32-bit "I" on some Pillows
                array = array.astype(np.float32)
            affine = np.eye(3)
            meta = {
                "affine": affine,
                "original_affine": affine.copy(),
                "spatial_shape": np.asarray(array.shape[:2]),
                "space": "RAS",
                "mode": image.mode,
                "bits": 16 if image.mode.startswith("I") else 8,
                **geometry_meta(affine),
            }
            arrays.append(array)
            metas.append(meta)
        return stack_channels(arrays, metas, [str(getattr(i, "filename", "")) for i in ensure_tuple(img)])


class XrayDicomReader(ImageReader):
    """Single-frame projection DICOM (CR, DX, MG...) as a presentation-ready picture, ``[row, column]``.

    The standard display pipeline, in order: stored values -> modality LUT (rescale slope/intercept)
    -> VOI LUT or window -> MONOCHROME1 inverted, so bone is bright whatever the file's convention.
    pydicom decodes the pixel data (JPEG, JPEG-LS, JPEG 2000 via pylibjpeg).
    """

    def verify_suffix(self, filename) -> bool:
        return all(not Path(name).is_dir() and is_supported_format(name, DICOM_SUFFIXES) for name in _names(filename))

    def read(self, data, **kwargs) -> list[tuple[pydicom.Dataset, str]]:
        datasets = []
        for name in _names(data):
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


#: images handed over in memory (``medsight.io.memory.register``): name -> (array, meta) as a reader gives them
MEMORY_IMAGES: dict[str, tuple[np.ndarray, dict]] = {}
MEMORY_PREFIX = "<memory:"


def is_memory_name(name: Any) -> bool:
    return isinstance(name, str) and name.startswith(MEMORY_PREFIX)


class MemoryReader(ImageReader):
    """Reads the names ``medsight.io.memory.register`` gave (several names are channels of one image, as
    several files are)."""

    def verify_suffix(self, filename) -> bool:
        return all(is_memory_name(str(name)) for name in ensure_tuple(filename))

    def read(self, data, **kwargs):
        found = []
        for name in ensure_tuple(data):
            entry = MEMORY_IMAGES.get(str(name))
            if entry is None:
                raise DataError("this in-memory image was released (its result is gone)", str(name))
            found.append((str(name), entry))
        return found

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        arrays = [array.copy() for _, (array, _) in img]
        metas = [{**meta, "affine": meta["affine"].copy(), "original_affine": meta["original_affine"].copy()}
                 for _, (_, meta) in img]
        return stack_channels(arrays, metas, [name for name, _ in img])


def readers(kind: str = "volume", series_uid: str | None = None) -> list[ImageReader]:
    """The readers for a kind of input, lowest priority first (MONAI tries the last one first).

    kind: ``volume`` (3D medical formats, DICOM series) or ``picture`` (2D X-rays: PNG/JPEG/DICOM).
    """
    if kind == "volume":
        return [NiftiReader(), SimpleITKReader(series_uid=series_uid), MemoryReader()]
    if kind == "picture":
        return [PictureReader(), XrayDicomReader(), MemoryReader()]
    raise ValueError(f"unknown reader kind {kind!r} (expected 'volume' or 'picture')")


@contextlib.contextmanager
def _without_gpu_codec_notice():
    """MONAI's ``LoadImage`` builds its optional GPU DICOM reader (nvImageCodec) and, where that codec is
    absent (every CPU machine), warns and logs about it each time: silenced while one is built."""
    logger = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader: nvImageCodec decoder plugin")
            yield
    finally:
        logger.setLevel(level)


def image_loader(kind: str = "volume", series_uid: str | None = None, **kwargs) -> LoadImage:
    """A MONAI ``LoadImage`` that picks medsight's readers by file suffix (folders are DICOM series)."""
    with _without_gpu_codec_notice():
        loader = LoadImage(reader=None, image_only=True, **kwargs)
    # Registered after construction, so LoadImage keeps choosing by suffix and our readers come first.
    for reader in readers(kind, series_uid):
        loader.register(reader)
    return loader


def image_loaderd(keys: Sequence[str] | str, kind: str = "volume", **kwargs) -> LoadImaged:
    """The dictionary version of ``image_loader``."""
    with _without_gpu_codec_notice():
        loaderd = LoadImaged(keys=keys, reader=None, image_only=True, **kwargs)
    for reader in readers(kind):
        loaderd.register(reader)
    return loaderd


def load(path: str | Path | Sequence[str | Path], kind: str = "volume", **kwargs):
    """Load one image (or several files as channels) as a channel-first MetaTensor."""
    return image_loader(kind, ensure_channel_first=True, **kwargs)(path)
