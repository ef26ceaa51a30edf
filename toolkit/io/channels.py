"""Several files (or in-memory images) read as the channels of one image, as MONAI stacks them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from monai.utils import ensure_tuple

from medsight.errors import DataError
from medsight.io.checks import MIN_VOLUME_VOXELS


def names_of(filename) -> tuple[str, ...]:
    """The file names a reader was given, as strings."""
    return tuple(str(f) for f in ensure_tuple(filename))


def stack_channels(arrays: list, metas: list[dict], names: Sequence[str], read=None,
                   dtype=None) -> tuple[np.ndarray, dict]:
    """Several files are channels of one image (MONAI's convention): stack on a new first axis. Each must hold
    one image: a 4D file among them is named (it would hold several channels of its own).

    ``read``: ``arrays`` are not read yet (proxies with a shape, such as nibabel's ``dataobj``):
    ``read(array, name)`` gives each file's voxels, copied straight into its channel of one ``dtype`` array
    after every file's geometry is checked, so no file is read when another one is wrong."""
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
    if read is None:
        return np.stack(arrays, axis=0), meta
    stacked = np.empty((len(arrays), *arrays[0].shape), dtype=dtype or np.float32)
    for channel, (array, name) in enumerate(zip(arrays, names)):
        stacked[channel] = read(array, name)  # this file's voxels, then freed: one file's at a time
    return stacked, meta
