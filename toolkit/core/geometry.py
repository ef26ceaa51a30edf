"""Image geometry: one affine, two world conventions.

Every image medsight loads carries ``meta["affine"]``: a (N+1, N+1) matrix mapping voxel indices
``(i, j, k)`` of the array, in the order the array is indexed, to **RAS+** world millimetres
(MONAI's and nibabel's convention). ITK, DICOM and LUNA16 state world points in **LPS** mm:
the same physical point with x and y negated. The functions here are the only place where
medsight converts between the two, and between world and voxel coordinates; they take the full
affine, so oblique direction matrices need no special case.

At load time the readers also store the ITK view of the same grid, for people and for writers:
``meta["origin"]`` (LPS mm), ``meta["spacing"]`` (mm per index step) and ``meta["direction"]``
(LPS direction cosines, one column per index axis). Transforms keep ``meta["affine"]`` current;
those three describe the grid as it was on disk.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Space = Literal["RAS", "LPS"]


def _flip_xy(dims: int) -> np.ndarray:
    """Homogeneous matrix that negates world x and y (LPS <-> RAS), for ``dims`` spatial dims."""
    flip = np.ones(dims + 1)
    flip[: min(dims, 2)] = -1.0
    return np.diag(flip)


def affine_from_itk(origin_lps, spacing_mm, direction_lps) -> np.ndarray:
    """RAS affine of an ITK-style grid.

    origin_lps: (N,) world mm of voxel 0; spacing_mm: (N,); direction_lps: (N, N) with one column
    per index axis (ITK's ``GetDirection()`` reshaped row-major).
    """
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    dims = spacing.size
    direction = np.asarray(direction_lps, dtype=np.float64).reshape(dims, dims)
    affine = np.eye(dims + 1)
    affine[:dims, :dims] = direction @ np.diag(spacing)
    affine[:dims, dims] = np.asarray(origin_lps, dtype=np.float64)
    return _flip_xy(dims) @ affine


def itk_from_affine(affine_ras) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(origin_lps, spacing_mm, direction_lps)`` of a RAS affine: the inverse of ``affine_from_itk``."""
    affine_lps = _flip_xy(np.asarray(affine_ras).shape[0] - 1) @ np.asarray(affine_ras, dtype=np.float64)
    dims = affine_lps.shape[0] - 1
    linear = affine_lps[:dims, :dims]
    spacing = np.linalg.norm(linear, axis=0)
    return affine_lps[:dims, dims].copy(), spacing, linear / spacing


def geometry_meta(affine_ras) -> dict[str, np.ndarray]:
    """The ITK view of a grid, for ``meta``: origin (LPS mm), spacing (mm), direction (LPS)."""
    origin, spacing, direction = itk_from_affine(affine_ras)
    return {"origin": origin, "spacing": spacing, "direction": direction}


def _points(points, dims: int) -> np.ndarray:
    arr = np.asarray(points, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.shape[-1] != dims:
        raise ValueError(f"expected points with {dims} coordinates, got shape {arr.shape}")
    return arr


def _affine_in(affine_ras, space: Space) -> np.ndarray:
    """The affine mapping voxel indices to world mm in ``space``."""
    affine = np.asarray(affine_ras, dtype=np.float64)
    if space == "LPS":
        return _flip_xy(affine.shape[0] - 1) @ affine
    if space != "RAS":
        raise ValueError(f"space must be 'RAS' or 'LPS', not {space!r}")
    return affine


def voxel_to_world(indices, affine_ras, space: Space = "LPS") -> np.ndarray:
    """World mm of (continuous) voxel indices. indices: (N, dims) or (dims,) -> (N, dims)."""
    affine = _affine_in(affine_ras, space)
    dims = affine.shape[0] - 1
    return _points(indices, dims) @ affine[:dims, :dims].T + affine[:dims, dims]


def world_to_voxel(points_mm, affine_ras, space: Space = "LPS") -> np.ndarray:
    """Continuous voxel indices of world points. points_mm: (N, dims) or (dims,) -> (N, dims)."""
    affine = _affine_in(affine_ras, space)
    dims = affine.shape[0] - 1
    xyz = _points(points_mm, dims)
    return np.linalg.solve(affine[:dims, :dims], (xyz - affine[:dims, dims]).T).T


def voxel_size_mm(affine_ras) -> np.ndarray:
    """Spacing (mm per index step along each array axis) of an affine."""
    return itk_from_affine(affine_ras)[1]
