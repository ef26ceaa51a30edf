"""LUNA16: ``subset0..subset9/<seriesuid>.mhd/.raw``, ``annotations.csv``, ``annotations_excluded.csv``,
``candidates.csv``. Coordinates in the CSVs are world mm in ITK's LPS convention; the subset index
is the cross-validation fold.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medsight.data.formats import DatasetFormat, Problem, SplitOptions
from medsight.datasets.schemas import NODULE_SCANS
from medsight.datasets.splits import validation_split
from medsight.errors import DataError
from medsight.core.geometry import affine_from_itk, voxel_to_world, world_to_voxel
from medsight.io.writers import write_csv
from medsight.core.registry import register_dataset

ANNOTATION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
CANDIDATE_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "class")
SUBSET = re.compile(r"^subset(\d+)$")
#: the smallest synthetic scan, voxels per axis
MIN_SCAN_VOXELS = 8
#: the synthetic nodules' diameters, mm (smallest, largest): LUNA16's annotations are nodules of 3 mm and more
NODULE_DIAMETERS_MM = (3.5, 25.0)


@dataclass(frozen=True)
class Nodule:
    """One row of annotations.csv: centre in world mm (LPS) and diameter in mm."""

    seriesuid: str
    x: float
    y: float
    z: float
    diameter_mm: float

    @property
    def centre(self) -> np.ndarray:
        return np.asarray([self.x, self.y, self.z])


def read_annotations(path: Path) -> dict[str, list[Nodule]]:
    """seriesuid -> nodules, from annotations.csv or annotations_excluded.csv."""
    nodules: dict[str, list[Nodule]] = {}
    if not Path(path).is_file():
        raise DataError("annotation file not found", path)
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in ANNOTATION_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"missing column(s) {', '.join(missing)}; expected {','.join(ANNOTATION_COLUMNS)}", path)
        for number, row in enumerate(reader, start=2):
            try:
                nodule = Nodule(row["seriesuid"].strip(), float(row["coordX"]), float(row["coordY"]),
                                float(row["coordZ"]), float(row["diameter_mm"]))
            except (TypeError, ValueError, AttributeError) as exc:
                raise DataError(f"cannot parse row ({exc})", f"{path}:{number}") from exc
            if not all(math.isfinite(v) for v in (nodule.x, nodule.y, nodule.z, nodule.diameter_mm)):
                raise DataError("coordinates and diameter must be finite numbers (NaN or inf in this row)",
                                f"{path}:{number}")
            nodules.setdefault(nodule.seriesuid, []).append(nodule)
    return nodules


def nodule_rows(nodules: list[Nodule]) -> list[list[float]]:
    """Plain ``[x, y, z, diameter_mm]`` rows (world mm, LPS) for records and caches."""
    return [[n.x, n.y, n.z, n.diameter_mm] for n in nodules]


def scan_records(root: Path) -> list[dict]:
    """One record per scan of a LUNA16 folder, sorted by fold then seriesuid.

    ``{"image": mhd path, "id": uid, "group": uid, "seriesuid": uid, "fold": subset index, "nodules": rows,
    "excluded": rows}``; rows are ``[x, y, z, diameter_mm]`` in world mm (LPS), from
    ``annotations.csv`` and ``annotations_excluded.csv`` (optional; a negative diameter means unmeasured).
    Boxes are made from these on each scan's grid by the task, after resampling.
    """
    root = Path(root)
    scans = find_scans(root)
    if not scans:
        raise DataError("no subsetN/<seriesuid>.mhd scans found (LUNA16 layout)", root)
    annotations_path = root / "annotations.csv"
    if not annotations_path.is_file():
        raise DataError("annotations.csv missing (seriesuid,coordX,coordY,coordZ,diameter_mm)", annotations_path)
    nodules = read_annotations(annotations_path)
    excluded_path = root / "annotations_excluded.csv"
    excluded = read_annotations(excluded_path) if excluded_path.is_file() else {}
    unknown = sorted(set(nodules) - set(scans))
    if unknown:
        raise DataError(f"seriesuid {unknown[0]} has no scan in any subset folder "
                        f"({len(unknown)} such); run `medsight data check luna16 {root}`", annotations_path)
    out = [{"image": str(path), "id": uid, "group": uid, "seriesuid": uid, "fold": fold,
            "nodules": nodule_rows(nodules.get(uid, [])), "excluded": nodule_rows(excluded.get(uid, []))}
           for uid, (path, fold) in scans.items()]
    return sorted(out, key=lambda r: (r["fold"], r["seriesuid"]))


def fold_split(scans: list[dict], split: str, options: SplitOptions) -> list[dict]:
    """``test``: the scans of fold ``options.fold`` (LUNA16's subset index: its cross-validation fold);
    ``val``: the other scans named in ``val_groups``, else those whose own hash falls below ``val_fraction``;
    ``train``: the rest; ``all``: every scan."""
    if split == "all":
        return list(scans)
    if split == "test":
        return [r for r in scans if r["fold"] == options.fold]
    rest = [r for r in scans if r["fold"] != options.fold]
    train, val = validation_split(rest, lambda r: r["group"], options)
    return val if split == "val" else train


def find_scans(root: Path) -> dict[str, tuple[Path, int]]:
    """seriesuid -> (mhd path, fold) for every ``subsetN/<uid>.mhd``."""
    scans: dict[str, tuple[Path, int]] = {}
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        match = SUBSET.match(folder.name)
        if match and folder.is_dir():
            for path in sorted(folder.glob("*.mhd")):
                scans[path.stem] = (path, int(match.group(1)))
    return scans


def header_geometry(path: Path) -> tuple[np.ndarray, tuple[int, ...], int]:
    """(RAS affine, shape [x, y, z], bytes per voxel) from an .mhd header, without reading voxels."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise DataError("unreadable MetaImage header", path) from exc
    affine = affine_from_itk(reader.GetOrigin(), reader.GetSpacing(), reader.GetDirection())
    component_bytes = _COMPONENT_BYTES.get(reader.GetPixelID())
    if component_bytes is None:
        raise DataError(f"unsupported voxel type {sitk.GetPixelIDValueAsString(reader.GetPixelID())}", path)
    return affine, tuple(reader.GetSize()), component_bytes * reader.GetNumberOfComponents()


_COMPONENT_BYTES = {
    sitk.sitkUInt8: 1, sitk.sitkInt8: 1, sitk.sitkUInt16: 2, sitk.sitkInt16: 2, sitk.sitkUInt32: 4,
    sitk.sitkInt32: 4, sitk.sitkUInt64: 8, sitk.sitkInt64: 8, sitk.sitkFloat32: 4, sitk.sitkFloat64: 8,
}


def _diameter_range(value) -> tuple[float, float]:
    """``synth --nodule_mm``: two comma-separated diameters (``"6,25"``) or a pair, 0 < smallest <= largest."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        low, high = (float(str(p).strip()) for p in parts)
    except ValueError:
        low = high = 0.0
    if not 0 < low <= high:
        raise DataError(f"nodule_mm needs two comma-separated diameters in mm, 0 < smallest <= largest, "
                        f"got {value!r}", "synth")
    return low, high


@register_dataset("luna16")
class Luna16(DatasetFormat):
    description = "LUNA16: lung nodules in chest CT (subsetN/<seriesuid>.mhd + annotations.csv, world mm)"
    schema = NODULE_SCANS
    synth_options = {
        "subsets": "number of subsetN folders (default: min(cases, 10))",
        "shape": "volume size x,y,z in voxels (default 160,160,48)",
        "spacing": "voxel size x,y,z in mm (default 0.75,0.75,2.5)",
        "nodule_mm": "smallest and largest nodule diameter in mm, drawn log-uniformly (default 3.5,25)",
    }

    def synth(self, out: Path, cases: int | None = None, seed: int = 0, subsets: int | None = None,
              shape: str | tuple = (160, 160, 48), spacing: str | tuple = (0.75, 0.75, 2.5),
              nodule_mm: str | tuple = NODULE_DIAMETERS_MM, **options) -> Path:
        from medsight.datasets.synth import triple, whole
        from medsight.datasets.synth.luna16 import make_scan, write_mhd

        if options:
            raise DataError(f"unknown option(s) {', '.join(options)} for luna16", "synth")
        count = 10 if cases is None else whole("cases", cases)
        folds = whole("subsets", subsets) if subsets is not None else min(count, 10)
        shape = triple("shape", shape, int, MIN_SCAN_VOXELS)
        spacing = triple("spacing", spacing, float, 0)
        nodule_mm = _diameter_range(nodule_mm)
        out = Path(out)
        rng = np.random.default_rng(seed)
        annotations, excluded, candidates = [], [], []
        for index in range(count):
            scan = make_scan(index, rng, shape=shape, spacing=spacing, seed=seed, nodule_mm=nodule_mm)
            write_mhd(scan.volume, scan.origin_lps, scan.spacing_mm, scan.direction,
                      out / f"subset{index % folds}" / f"{scan.uid}.mhd")
            for sphere in scan.nodules:
                x, y, z = scan.world(sphere)
                annotations.append({"seriesuid": scan.uid, "coordX": x, "coordY": y, "coordZ": z,
                                    "diameter_mm": sphere.diameter_mm})
                jitter = rng.normal(0, 1.0, 3)
                candidates.append({"seriesuid": scan.uid, "coordX": x + jitter[0], "coordY": y + jitter[1],
                                   "coordZ": z + jitter[2], "class": 1})
            for sphere in scan.excluded:
                x, y, z = scan.world(sphere)
                diameter = sphere.diameter_mm if rng.random() < 0.5 else -1.0  # LUNA16 lists non-nodules as -1
                excluded.append({"seriesuid": scan.uid, "coordX": x, "coordY": y, "coordZ": z, "diameter_mm": diameter})
            lung_voxels = np.argwhere(scan.lung_mask)
            picks = lung_voxels[rng.choice(len(lung_voxels), size=min(20, len(lung_voxels)), replace=False)]
            for x, y, z in voxel_to_world(picks, scan.affine, space="LPS"):
                candidates.append({"seriesuid": scan.uid, "coordX": x, "coordY": y, "coordZ": z, "class": 0})
        write_csv(annotations, out / "annotations.csv", ANNOTATION_COLUMNS)
        write_csv(excluded, out / "annotations_excluded.csv", ANNOTATION_COLUMNS)
        write_csv(candidates, out / "candidates.csv", CANDIDATE_COLUMNS)
        return out

    @classmethod
    def detect(cls, root: Path) -> float:
        return 1.0 if Path(root).is_dir() and find_scans(Path(root)) else 0.0

    def records(self, root: Path, split: str) -> list[dict]:
        return fold_split(scan_records(root), split, self.options)

    def check(self, root: Path) -> list[Problem]:
        root = Path(root)
        problems: list[Problem] = []
        scans = find_scans(root)
        if not scans:
            return [Problem(str(root), "no subsetN/<seriesuid>.mhd scans found")]
        geometry = {}
        for uid, (path, _fold) in scans.items():
            try:
                affine, shape, nbytes = header_geometry(path)
            except DataError as exc:
                problems.append(Problem(str(path), exc.message))
                continue
            raw = path.with_suffix(".raw")
            if not raw.is_file():
                problems.append(Problem(str(raw), "voxel data file missing"))
                continue
            expected = int(np.prod(shape)) * nbytes
            if raw.stat().st_size != expected:
                problems.append(Problem(str(raw), f"{raw.stat().st_size} bytes, expected {expected} for shape {shape}"))
                continue
            geometry[uid] = (affine, shape)
        for name in ("annotations.csv", "annotations_excluded.csv"):
            path = root / name
            if not path.is_file():
                if name == "annotations.csv":
                    problems.append(Problem(str(path), "missing"))
                continue
            problems += annotation_problems(path, scans, geometry.get, missing="has no scan in any subset folder")
        return problems


def annotation_problems(path: Path, scans, geometry, missing: str = "has no scan") -> list[Problem]:
    """Problems of one annotation CSV: unreadable, rows naming a scan that is not there, nodules outside
    their scan. ``geometry(uid)`` gives the scan's (affine, shape), None to skip it, or raises DataError."""
    try:
        table = read_annotations(path)
    except DataError as exc:
        return [Problem(exc.where or str(path), exc.message)]
    problems = []
    for uid, nodules in table.items():
        if uid not in scans:
            problems.append(Problem(str(path), f"seriesuid {uid} {missing}"))
            continue
        try:
            found = geometry(uid)
        except DataError as exc:
            problems.append(Problem(exc.where or str(scans[uid]), exc.message))
            continue
        if found is None:
            continue
        affine, shape = found
        for nodule in nodules:
            index = world_to_voxel(nodule.centre, affine, space="LPS")[0]
            if np.any(index < -0.5) or np.any(index > np.asarray(shape[:3]) - 0.5):
                problems.append(Problem(str(path), f"nodule at ({nodule.x:.1f}, {nodule.y:.1f}, {nodule.z:.1f}) mm "
                                                   f"lies outside scan {uid} (voxel {np.round(index, 1).tolist()})"))
    return problems


