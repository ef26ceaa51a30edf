"""Synthetic chest CT in the LUNA16 layout.

Each scan: air outside an elliptic body (soft tissue ~40 HU, a fat layer), two lungs around
-850 HU with texture, branching vessels (tubes of soft-tissue density that a detector must learn
to tell from nodules), and 0-3 spherical nodules of 3.5-25 mm at soft-tissue density with partial
volume at the edge. Anisotropic spacing, non-zero origin, int16 HU, DICOM-style series UIDs.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom.uid import generate_uid

from medsight.core.geometry import affine_from_itk, voxel_to_world

UID_PREFIX = "1.3.6.1.4.1.14519.5.2.1.6279.6001."  # the LIDC-IDRI root that LUNA16 uids share


@dataclass(frozen=True)
class Sphere:
    centre_index: tuple[float, float, float]  # continuous voxel index (x, y, z)
    diameter_mm: float
    hu: float


@dataclass
class Scan:
    uid: str
    volume: np.ndarray  # int16 HU, indexed [x, y, z]
    origin_lps: np.ndarray
    spacing_mm: np.ndarray
    direction: np.ndarray
    nodules: list[Sphere]
    excluded: list[Sphere]
    lung_mask: np.ndarray

    @property
    def affine(self) -> np.ndarray:
        return affine_from_itk(self.origin_lps, self.spacing_mm, self.direction)

    def world(self, sphere: Sphere) -> np.ndarray:
        return voxel_to_world(sphere.centre_index, self.affine, space="LPS")[0]


def _grid_mm(shape, spacing):
    axes = [np.arange(n, dtype=np.float32) * s for n, s in zip(shape, spacing)]
    return np.meshgrid(*axes, indexing="ij")


def _paint_sphere(volume: np.ndarray, spacing, centre_index, radius_mm: float, hu: float) -> None:
    """Blend a sphere into ``volume`` with a one-voxel partial-volume edge (in place)."""
    centre = np.asarray(centre_index, dtype=np.float64)
    reach = np.ceil((radius_mm + 2 * max(spacing)) / np.asarray(spacing)).astype(int)
    low = np.maximum(np.floor(centre).astype(int) - reach, 0)
    high = np.minimum(np.floor(centre).astype(int) + reach + 1, volume.shape)
    if np.any(high <= low):
        return
    idx = np.meshgrid(*[np.arange(a, b) for a, b in zip(low, high)], indexing="ij")
    dist = np.sqrt(sum(((i - c) * s) ** 2 for i, c, s in zip(idx, centre, spacing)))
    edge = float(np.mean(spacing[:2]))
    weight = np.clip(0.5 - (dist - radius_mm) / edge, 0.0, 1.0)
    region = tuple(slice(a, b) for a, b in zip(low, high))
    volume[region] = volume[region] * (1 - weight) + hu * weight


def _paint_tube(volume, spacing, start_mm, end_mm, radius_mm, hu, mask=None) -> None:
    """Blend a straight tube (segment start->end, both in mm from voxel 0) into ``volume``."""
    spacing = np.asarray(spacing)
    start, end = np.asarray(start_mm), np.asarray(end_mm)
    lo = np.maximum(np.floor((np.minimum(start, end) - radius_mm - 2) / spacing).astype(int), 0)
    hi = np.minimum(np.ceil((np.maximum(start, end) + radius_mm + 2) / spacing).astype(int) + 1, volume.shape)
    if np.any(hi <= lo):
        return
    pts = np.stack(np.meshgrid(*[np.arange(a, b) * s for a, b, s in zip(lo, hi, spacing)], indexing="ij"), -1)
    seg = end - start
    t = np.clip(((pts - start) @ seg) / max(float(seg @ seg), 1e-6), 0, 1)
    dist = np.linalg.norm(pts - (start + t[..., None] * seg), axis=-1)
    weight = np.clip(0.5 - (dist - radius_mm) / float(np.mean(spacing[:2])), 0.0, 1.0)
    region = tuple(slice(a, b) for a, b in zip(lo, hi))
    if mask is not None:
        weight = weight * mask[region]
    volume[region] = volume[region] * (1 - weight) + hu * weight


def _chest(shape, spacing: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(volume in HU, lung mask): air, body, mediastinum and two textured lungs."""
    from scipy.ndimage import gaussian_filter

    extent = np.asarray(shape) * spacing
    x, y, z = _grid_mm(shape, spacing)
    cx, cy, cz = extent / 2
    volume = np.full(shape, -1000.0, dtype=np.float32)
    body = ((x - cx) / (0.47 * extent[0])) ** 2 + ((y - cy) / (0.40 * extent[1])) ** 2 <= 1
    inner = ((x - cx) / (0.43 * extent[0])) ** 2 + ((y - cy) / (0.36 * extent[1])) ** 2 <= 1
    volume[body] = -100.0  # subcutaneous fat
    volume[inner] = 40.0  # muscle / mediastinum
    lungs = np.zeros(shape, dtype=bool)
    for side in (-1, 1):
        lx, ly = cx + side * 0.20 * extent[0], cy - 0.02 * extent[1]
        rx, ry, rz = 0.16 * extent[0], 0.28 * extent[1], 0.47 * extent[2]
        lungs |= ((x - lx) / rx) ** 2 + ((y - ly) / ry) ** 2 + ((z - cz) / rz) ** 2 <= 1
    texture = gaussian_filter(rng.normal(0, 1, shape).astype(np.float32), 1.5)
    volume[lungs] = -850.0 + 40.0 * texture[lungs] / (texture.std() + 1e-6)
    return volume, lungs


def _vessels(volume: np.ndarray, spacing: np.ndarray, lungs: np.ndarray, rng: np.random.Generator) -> None:
    """Branching tubes from each hilum outwards, painted into ``volume`` inside the lungs."""
    extent = np.asarray(volume.shape) * spacing
    cx, cy, cz = extent / 2
    lung_weight = lungs.astype(np.float32)
    for side in (-1, 1):
        hilum = np.asarray([cx + side * 0.10 * extent[0], cy, cz])
        for _ in range(14):
            start = hilum + rng.normal(0, 3, 3)
            direction = rng.normal(0, 1, 3) + np.asarray([side * 1.2, 0, 0])
            direction /= np.linalg.norm(direction)
            radius = rng.uniform(1.2, 2.4)
            for _segment in range(3):
                end = start + direction * rng.uniform(10, 25)
                _paint_tube(volume, spacing, start, end, radius, 40.0, mask=lung_weight)
                start = end
                direction = direction + rng.normal(0, 0.45, 3)
                direction /= np.linalg.norm(direction)
                radius = max(0.6, radius * 0.75)


def _findings(lungs: np.ndarray, spacing: np.ndarray, rng: np.random.Generator,
              nodule_mm: tuple[float, float] = (3.5, 25.0)) -> tuple[list, list]:
    """(nodules, excluded findings): spheres placed wholly inside the lungs, nodules apart from each other,
    their diameters log-uniform in ``nodule_mm`` (smallest, largest)."""
    from scipy.ndimage import distance_transform_edt

    def place(diameter: float) -> tuple[float, float, float] | None:
        inside = distance_transform_edt(lungs, sampling=spacing) > diameter / 2 + 1.0
        candidates = np.argwhere(inside)
        if candidates.size == 0:
            return None
        pick = candidates[rng.integers(len(candidates))] + rng.uniform(-0.5, 0.5, 3)
        return tuple(float(v) for v in pick)

    nodules, excluded = [], []
    for _ in range(int(rng.choice([0, 1, 1, 2, 2, 3]))):
        diameter = float(math.exp(rng.uniform(math.log(nodule_mm[0]), math.log(nodule_mm[1]))))
        centre = place(diameter)
        while centre is None and diameter > nodule_mm[0]:
            diameter *= 0.8
            centre = place(diameter)
        if centre is None:
            continue
        if any(np.linalg.norm((np.asarray(centre) - n.centre_index) * spacing) < (diameter + n.diameter_mm) / 2 + 3
               for n in nodules):
            continue
        nodules.append(Sphere(centre, diameter, float(rng.uniform(-20, 60))))
    for _ in range(int(rng.choice([0, 0, 1, 2]))):
        diameter = float(rng.uniform(2.0, 3.0))
        centre = place(diameter)
        if centre is not None:
            excluded.append(Sphere(centre, diameter, float(rng.uniform(-100, 20))))
    return nodules, excluded


def make_scan(
    index: int,
    rng: np.random.Generator,
    shape=(160, 160, 48),
    spacing=(0.75, 0.75, 2.5),
    seed: int = 0,
    direction_lps=None,
    nodule_mm: tuple[float, float] = (3.5, 25.0),
) -> Scan:
    """One synthetic chest CT; ``direction_lps`` (LPS cosines, one column per array axis) defaults to identity;
    ``nodule_mm``: the smallest and largest nodule diameter.

    Nodules and vessels are painted in array space, so any direction gives the same array; world
    coordinates follow from the grid (``Scan.world``).
    """
    shape = tuple(int(n) for n in shape)
    spacing = np.asarray(spacing, dtype=np.float64)
    volume, lungs = _chest(shape, spacing, rng)
    _vessels(volume, spacing, lungs, rng)
    nodules, excluded = _findings(lungs, spacing, rng, nodule_mm)
    for sphere in nodules + excluded:
        _paint_sphere(volume, spacing, sphere.centre_index, sphere.diameter_mm / 2, sphere.hu)
    volume += rng.normal(0, 20, shape).astype(np.float32)
    cx, cy, _ = np.asarray(shape) * spacing / 2
    origin = np.asarray([-cx + rng.uniform(-30, 30), -cy - 40 + rng.uniform(-30, 30), -300 + rng.uniform(-60, 60)])
    uid = generate_uid(prefix=UID_PREFIX, entropy_srcs=[f"medsight-synth-luna16:{seed}:{index}"])
    return Scan(
        uid=uid,
        volume=np.clip(np.round(volume), -1024, 3071).astype(np.int16),
        origin_lps=origin,
        spacing_mm=spacing,
        direction=np.eye(3) if direction_lps is None else np.asarray(direction_lps, dtype=np.float64).reshape(3, 3),
        nodules=nodules,
        excluded=excluded,
        lung_mask=lungs,
    )


def write_mhd(volume_xyz: np.ndarray, origin_lps, spacing_mm, direction, path: Path) -> Path:
    """Write ``<name>.mhd`` + ``<name>.raw`` (uncompressed, as LUNA16 ships them), both or neither."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume_xyz.transpose(2, 1, 0)))
    image.SetOrigin(tuple(float(v) for v in origin_lps))
    image.SetSpacing(tuple(float(v) for v in spacing_mm))
    image.SetDirection(tuple(float(v) for v in np.asarray(direction).ravel()))
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".partial-") as tmp:
        sitk.WriteImage(image, str(Path(tmp) / path.name), useCompression=False)
        raw = path.with_suffix(".raw")
        shutil.move(str(Path(tmp) / raw.name), raw)  # the header last: it is what readers look for
        shutil.move(str(Path(tmp) / path.name), path)
    return path
