"""A generic layout for nodule detection on any CT collection: a folder of scans plus a CSV of nodules.

    ROOT/
      nodules.csv      seriesuid,coordX,coordY,coordZ,diameter_mm   (world mm, LPS: LUNA16's convention)
      excluded.csv     optional, same columns: findings whose marks are neither hits nor false positives
      folds.csv        optional, seriesuid,fold  (default: 10 balanced folds 0..9 by seriesuid, ``stable_folds``)
      any/folders/<seriesuid>.nii.gz | .nii | .mhd | .mha | .nrrd | .nhdr
      any/folders/<series folder>/   one DICOM series per folder; seriesuid = its SeriesInstanceUID

World coordinates are LPS whatever the file format (NIfTI stores RAS; medsight converts), so the
same CSV works for NIfTI and DICOM copies of a scan. A scan without rows in ``nodules.csv`` has no
nodules: its marks are all false positives.

``nodules_from_mask`` turns a lesion mask into rows of this CSV (centre and equivalent-sphere
diameter per connected component).
"""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError

from medsight.data.formats import DatasetFormat, Problem
from medsight.datasets.luna16 import (
    ANNOTATION_COLUMNS,
    annotation_problems,
    fold_split,
    nodule_rows,
    read_annotations,
)
from medsight.datasets.schemas import NODULE_SCANS
from medsight.data.folds import assign_folds
from medsight.errors import DataError
from medsight.core.geometry import affine_from_itk, voxel_to_world
from medsight.io.writers import write_csv
from medsight.core.registry import register_dataset

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mhd", ".mha", ".nrrd", ".nhdr")
FOLDS = 10
_NOT_DICOM = (".csv", ".txt", ".json", ".raw", ".zraw", ".gz", ".md", ".png", ".jpg")


def volume_stem(path: Path) -> str | None:
    """The seriesuid of a volume file (its name without the format suffix), or None for other files."""
    name = path.name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


def dicom_series_uids(folder: Path) -> list[str]:
    """SeriesInstanceUIDs of the DICOM image files directly in ``folder`` (headers only)."""
    uids = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        if path.name.startswith(".") or path.name.lower().endswith(_NOT_DICOM) or volume_stem(path):
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError):
            continue
        if "SeriesInstanceUID" in ds and "Rows" in ds and str(ds.SeriesInstanceUID) not in uids:
            uids.append(str(ds.SeriesInstanceUID))
    return uids


def find_scans(root: Path) -> dict[str, Path]:
    """seriesuid -> volume file or DICOM series folder, anywhere below ``root``."""
    scans: dict[str, Path] = {}
    for folder in [root, *sorted(p for p in root.rglob("*") if p.is_dir())]:
        if folder.name.startswith("."):
            continue
        for path in sorted(folder.iterdir()):
            uid = volume_stem(path) if path.is_file() else None
            if uid:
                scans.setdefault(uid, path)
        uids = dicom_series_uids(folder)
        if uids:
            scans.setdefault(uids[0], folder)
    return scans


def stable_folds(seriesuids, folds: int = FOLDS) -> dict[str, int]:
    """seriesuid -> fold, like LUNA16's ten subsets: every fold holds floor(N/10) or ceil(N/10) scans, and
    adding scans moves few others (``medsight.data.folds.assign_folds``; a fixed seed, so that
    ``data.split_seed`` never moves a test scan). With fewer than 10 scans some folds are empty."""
    return assign_folds(seriesuids, folds, seed=0, allow_empty=True)


def read_folds(path: Path) -> dict[str, int]:
    folds: dict[str, int] = {}
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if not {"seriesuid", "fold"} <= set(reader.fieldnames or []):
            raise DataError("expected columns seriesuid,fold", path)
        for number, row in enumerate(reader, start=2):
            try:
                folds[row["seriesuid"].strip()] = int(row["fold"])
            except (TypeError, ValueError):
                raise DataError(f"fold {row['fold']!r} is not an integer", f"{path}:{number}") from None
    return folds


def scan_records(root: Path) -> list[dict]:
    """Records like ``medsight.datasets.luna16.scan_records``: image, id, group, seriesuid, fold, nodules,
    excluded."""
    root = Path(root)
    nodules_path = root / "nodules.csv"
    if not nodules_path.is_file():
        raise DataError(f"nodules.csv missing ({','.join(ANNOTATION_COLUMNS)}, world mm, LPS)", nodules_path)
    scans = find_scans(root)
    if not scans:
        raise DataError("no scans found (NIfTI, MHD, NRRD files or DICOM series folders)", root)
    nodules = read_annotations(nodules_path)
    excluded = read_annotations(root / "excluded.csv") if (root / "excluded.csv").is_file() else {}
    folds = read_folds(root / "folds.csv") if (root / "folds.csv").is_file() else {}
    unknown = sorted(set(nodules) - set(scans))
    if unknown:
        raise DataError(f"seriesuid {unknown[0]} has no scan ({len(unknown)} such); run "
                        f"`medsight data check ct-nodules {root}`", nodules_path)
    folds.update(stable_folds([uid for uid in scans if uid not in folds]))
    out = [{"image": str(path), "id": uid, "group": uid, "seriesuid": uid, "fold": folds[uid],
            "nodules": nodule_rows(nodules.get(uid, [])), "excluded": nodule_rows(excluded.get(uid, []))}
           for uid, path in scans.items()]
    return sorted(out, key=lambda r: (r["fold"], r["seriesuid"]))


def nodules_from_mask(mask_xyz: np.ndarray, affine_ras: np.ndarray, min_voxels: int = 1) -> list[list[float]]:
    """One ``[x, y, z, diameter_mm]`` row (world mm, LPS) per connected component of a lesion mask.

    mask_xyz: (X, Y, Z) non-zero inside lesions; affine_ras: its (4, 4) grid. The centre is the
    component's centroid; the diameter is that of the sphere with the component's volume.
    """
    from scipy import ndimage

    labels, count = ndimage.label(np.asarray(mask_xyz) > 0, structure=np.ones((3, 3, 3)))
    voxel_volume_mm3 = abs(float(np.linalg.det(np.asarray(affine_ras, dtype=np.float64)[:3, :3])))
    rows = []
    for component in range(1, count + 1):
        indices = np.argwhere(labels == component)
        if len(indices) < min_voxels:
            continue
        centre = voxel_to_world(indices.mean(axis=0), affine_ras, space="LPS")[0]
        diameter = (6.0 * len(indices) * voxel_volume_mm3 / np.pi) ** (1.0 / 3.0)
        rows.append([float(centre[0]), float(centre[1]), float(centre[2]), float(diameter)])
    return rows


def _geometry(path: Path) -> tuple[np.ndarray, tuple[int, ...]]:
    """(RAS affine, shape) of a scan without reading its voxels where the format allows."""
    if path.is_dir():
        from medsight.io.readers import load

        image = load(path)
        return np.asarray(image.affine, dtype=np.float64), tuple(image.shape[1:])
    if path.name.lower().endswith((".nii", ".nii.gz")):
        try:
            header = nib.load(str(path))
        except Exception as exc:
            raise DataError(f"unreadable NIfTI header ({exc})", path) from exc
        return np.asarray(header.affine, dtype=np.float64), tuple(header.shape[:3])
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise DataError("unreadable image header", path) from exc
    return affine_from_itk(reader.GetOrigin(), reader.GetSpacing(), reader.GetDirection()), tuple(reader.GetSize())


@register_dataset("ct-nodules")
class CtNodules(DatasetFormat):
    description = "CT scans (NIfTI/MHD/NRRD/DICOM series) + nodules.csv in world mm (LPS): generic nodule detection"
    schema = NODULE_SCANS
    synth_options = {
        "shape": "volume size x,y,z in voxels (default 96,96,32)",
        "spacing": "voxel size x,y,z in mm (default 1.0,1.0,2.5)",
    }

    def synth(self, out: Path, cases: int | None = None, seed: int = 0, shape: str | tuple = (96, 96, 32),
              spacing: str | tuple = (1.0, 1.0, 2.5), **options) -> Path:
        """Synthetic chest CTs written in turn as NIfTI (stored RAS-flipped), NRRD and a DICOM series."""
        from medsight.datasets.luna16 import MIN_SCAN_VOXELS
        from medsight.datasets.synth import triple, whole
        from medsight.datasets.synth.dicom import write_series
        from medsight.datasets.synth.luna16 import make_scan
        from medsight.io.writers import write_nifti

        if options:
            raise DataError(f"unknown option(s) {', '.join(options)} for ct-nodules", "synth")
        count = 3 if cases is None else whole("cases", cases)
        shape, spacing = triple("shape", shape, int, MIN_SCAN_VOXELS), triple("spacing", spacing, float, 0)
        out = Path(out)
        rng = np.random.default_rng(seed)
        rows, excluded_rows = [], []
        for index in range(count):
            kind = ("nifti", "nrrd", "dicom")[index % 3]
            # NIfTI files usually store x and y reversed from DICOM: exercise that direction matrix.
            direction = np.diag([-1.0, -1.0, 1.0]) if kind == "nifti" else np.eye(3)
            scan = make_scan(index, rng, shape=shape, spacing=spacing, seed=seed,
                             direction_lps=direction)
            if kind == "nifti":
                write_nifti(scan.volume, scan.affine, out / "scans" / f"{scan.uid}.nii.gz")
            elif kind == "nrrd":
                _write_itk(scan, out / "scans" / f"{scan.uid}.nrrd")
            else:
                write_series(scan.volume.astype(np.float32), scan.origin_lps, scan.spacing_mm, scan.direction,
                             out / "scans" / f"series{index:03d}", series_uid=scan.uid)
            for sphere in scan.nodules:
                rows.append(dict(zip(ANNOTATION_COLUMNS, (scan.uid, *scan.world(sphere), sphere.diameter_mm))))
            for sphere in scan.excluded:
                excluded_rows.append(dict(zip(ANNOTATION_COLUMNS, (scan.uid, *scan.world(sphere), sphere.diameter_mm))))
        write_csv(rows, out / "nodules.csv", ANNOTATION_COLUMNS)
        write_csv(excluded_rows, out / "excluded.csv", ANNOTATION_COLUMNS)
        return out

    @classmethod
    def detect(cls, root: Path) -> float:
        return 0.9 if (Path(root) / "nodules.csv").is_file() else 0.0

    def records(self, root: Path, split: str) -> list[dict]:
        return fold_split(scan_records(root), split, self.options)

    def check(self, root: Path) -> list[Problem]:
        root = Path(root)
        nodules_path = root / "nodules.csv"
        if not nodules_path.is_file():
            return [Problem(str(nodules_path), "missing")]
        problems: list[Problem] = []
        scans = find_scans(root)
        if not scans:
            problems.append(Problem(str(root), "no scans found (NIfTI, MHD, NRRD files or DICOM series folders)"))
        for folder in {p for p in scans.values() if p.is_dir()}:
            uids = dicom_series_uids(folder)
            if len(uids) > 1:
                problems.append(Problem(str(folder), f"{len(uids)} DICOM series in one folder; keep one per folder"))
        for name in ("nodules.csv", "excluded.csv"):
            path = root / name
            if not path.is_file():
                continue
            problems += annotation_problems(path, scans, lambda uid: _geometry(scans[uid]))
        return problems


def _write_itk(scan, path: Path) -> Path:
    from medsight.io.writers import atomic_path

    image = sitk.GetImageFromArray(np.ascontiguousarray(scan.volume.transpose(2, 1, 0)))
    image.SetOrigin(tuple(float(v) for v in scan.origin_lps))
    image.SetSpacing(tuple(float(v) for v in scan.spacing_mm))
    image.SetDirection(tuple(float(v) for v in np.asarray(scan.direction).ravel()))
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
    return path
