"""Checks of files before their voxels are read: what kind of file a path is, and a MetaImage header's voxel
file. Failures are one DataError naming the file at fault (not the one that points to it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medsight.errors import DataError

#: smallest accepted sides: a picture under 16 px or a volume under 4 voxels along an axis holds no anatomy
MIN_PICTURE_PX = 16
MIN_VOLUME_VOXELS = 4

ITK_SUFFIXES = ("mhd", "mha", "nrrd", "nhdr")
DICOM_SUFFIXES = ("dcm", "dicom", "ima")
NIFTI_SUFFIXES = ("nii", "nii.gz")
PICTURE_SUFFIXES = ("png", "jpg", "jpeg", "bmp", "tif", "tiff")


def check_volume_path(path: str | Path) -> Path:
    """``path`` if it is something medsight reads as a 3D volume (NIfTI, MetaImage, NRRD, a DICOM file or series
    folder); else one DataError naming it (a PNG given as an MRI modality, say)."""
    path = Path(path)
    if not path.exists():
        raise DataError("file not found", path)
    name = path.name.lower()
    if path.is_dir() or name.endswith(tuple(f".{s}" for s in NIFTI_SUFFIXES + ITK_SUFFIXES + DICOM_SUFFIXES)) \
            or "." not in name:
        return path
    kind = "a 2D picture" if name.endswith(tuple(f".{s}" for s in PICTURE_SUFFIXES)) else "not a volume format"
    raise DataError(f"{kind}, not a 3D volume medsight reads (.nii, .nii.gz, .mhd, .mha, .nrrd, .dcm or a DICOM "
                    "series folder)", path)


_ITK_BYTES = {"MET_UCHAR": 1, "MET_CHAR": 1, "MET_USHORT": 2, "MET_SHORT": 2, "MET_UINT": 4, "MET_INT": 4,
              "MET_ULONG": 8, "MET_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8}


def check_detached_data(header: Path) -> None:
    """A MetaImage header's voxel file: present, and as long as its DimSize and ElementType say. Failures name
    the voxel file (SimpleITK would report "No such file" about the header)."""
    fields = {}
    for line in header.read_text(errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip()
    data = fields.get("ElementDataFile", "")
    if header.suffix.lower() != ".mhd" or not data or data == "LOCAL" or " " in data or data.startswith("LIST"):
        return
    raw = header.parent / data
    if not raw.is_file():
        raise DataError(f"voxel data file missing (named by ElementDataFile in {header.name})", raw)
    if fields.get("CompressedData", "False").lower() == "true":
        return
    try:
        count = int(np.prod([int(v) for v in fields.get("DimSize", "").split()]))
        count *= int(fields.get("ElementNumberOfChannels", "1"))
    except ValueError:
        return
    size = _ITK_BYTES.get(fields.get("ElementType", ""))
    if size and raw.stat().st_size < count * size:
        raise DataError(f"{raw.stat().st_size} bytes, expected {count * size} for DimSize "
                        f"{fields.get('DimSize')} of {fields.get('ElementType')} ({header.name}): truncated?", raw)


