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
import SimpleITK as sitk
from monai.data import ImageReader, NibabelReader, PILReader
from monai.data.utils import is_supported_format
from monai.transforms import LoadImage, LoadImaged
from monai.utils import ensure_tuple
from PIL import Image

from medsight.errors import DataError
from medsight.core.geometry import affine_from_itk, geometry_meta
from medsight.io.dicom import _first_line, read_series

from medsight.io.channels import names_of, stack_channels
from medsight.io.xray import XrayDicomReader
from medsight.io.checks import (  # noqa: E402,F401  (suffixes and checks re-exported here)
    DICOM_SUFFIXES,
    ITK_SUFFIXES,
    NIFTI_SUFFIXES,
    MIN_VOLUME_VOXELS,
    PICTURE_SUFFIXES,
    check_detached_data,
    check_volume_path,
)


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
            for name in names_of(filename)
        )

    def read(self, data, **kwargs) -> list[tuple[sitk.Image, str]]:
        images = []
        for name in names_of(data):
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
        for name in names_of(data):  # one at a time, so a failure names its own file
            if not Path(name).exists():
                raise DataError("file not found", name)
            try:
                images.append(super().read(name, **kwargs))
            except Exception as exc:  # nibabel raises several unrelated types for damaged files
                raise DataError(f"cannot read NIfTI ({exc})", name) from exc
        return images if len(images) > 1 else images[0]

    def _get_array_data(self, img, filename):
        """The file's data proxy, not its voxels: ``get_data`` reads them, each file straight into its channel
        of the stacked image, so a multi-file case never holds its voxels twice (4 BraTS files: 143 MB at
        most, not 286 MB while ``np.stack`` copies them)."""
        return img.dataobj

    @staticmethod
    def _voxels(proxy, name: str) -> np.ndarray:
        try:
            return np.asanyarray(proxy)
        except Exception as exc:  # truncated gzip streams fail only when the data are read
            raise DataError(f"cannot read NIfTI data ({exc})", name) from exc

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        proxies, metas, names = [], [], []
        for image in ensure_tuple(img):  # one at a time, so a mismatch is reported with its file
            name = str(image.get_filename())
            try:
                proxy, meta = super().get_data(image)
            except Exception as exc:  # a header nibabel cannot make sense of
                raise DataError(f"cannot read NIfTI data ({exc})", name) from exc
            meta.update(geometry_meta(np.asarray(meta["affine"], dtype=np.float64)))
            proxies.append(proxy)
            metas.append(meta)
            names.append(name)
        if len(proxies) == 1:
            return self._voxels(proxies[0], names[0]), metas[0]  # keep MONAI's channel handling of a 4D file
        # float32: what LoadImage makes of the stack anyway (its dtype), one channel at a time
        return stack_channels(proxies, metas, names, read=self._voxels, dtype=np.float32)


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
            images = [Image.open(name) for name in names_of(data)]
            for image in images:
                image.load()  # decode now, so a truncated file fails here with its name
        except FileNotFoundError as exc:
            raise DataError("file not found", exc.filename) from exc
        except Image.DecompressionBombError as exc:
            raise DataError(f"refused: the picture claims more pixels than any X-ray holds ({exc}); a "
                            "decompression-bomb guard", names_of(data)[0]) from exc
        except (OSError, SyntaxError, ValueError) as exc:
            raise DataError(f"cannot read picture ({exc})", names_of(data)[0]) from exc
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
