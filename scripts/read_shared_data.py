"""Read every image under a data folder (default ../shared/data) with medsight's readers and print
shape, spacing and orientation per file. Exits 1 if any image fails to load; skips cleanly when
the folder is absent.

    python scripts/read_shared_data.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom

import medsight  # noqa: F401
from medsight.errors import MedsightError
from medsight.io.readers import DICOM_SUFFIXES, NIFTI_SUFFIXES, PICTURE_SUFFIXES, load

PROJECTION_MODALITIES = {"CR", "DX", "MG", "RF", "XA", "PX", "IO"}
NOT_IMAGES = {"RTSTRUCT", "RTPLAN", "SR", "PR", "KO", "REG"}


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return "nii.gz" if name.endswith(".nii.gz") else path.suffix.lower().lstrip(".")


def inputs(root: Path):
    """(path, kind) for every image: files by suffix, DICOM files by modality, series folders once."""
    series_folders = set()
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        suffix = _suffix(path)
        if suffix in NIFTI_SUFFIXES or suffix in ("mhd", "mha", "nrrd", "nhdr"):
            yield path, "volume"
        elif suffix in PICTURE_SUFFIXES:
            yield path, "picture"
        elif suffix in DICOM_SUFFIXES or not path.suffix:
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True, force=suffix in DICOM_SUFFIXES)
            except Exception:
                continue
            modality = str(ds.get("Modality", ""))
            if "Rows" not in ds or modality in NOT_IMAGES:
                what = "DICOMDIR" if path.name == "DICOMDIR" else modality or "no Modality"
                reason = "no pixel data" if "Rows" not in ds else "not an image object"
                yield path, f"skip: {reason} ({what})"
            elif suffix in DICOM_SUFFIXES:
                yield path, "picture" if modality in PROJECTION_MODALITIES else "volume"
            elif path.parent not in series_folders:
                series_folders.add(path.parent)
                yield path.parent, "series"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    args = parser.parse_args()
    root = Path(args.data)
    if not root.is_dir():
        print(f"skip: {root} not found")
        return 0
    failures, counts = [], {}
    todo = list(inputs(root))
    while todo:
        path, kind = todo.pop(0)
        rel = path.relative_to(root)
        if kind.startswith("skip"):
            print(f"{str(rel):78s} {kind}")
            counts["skipped"] = counts.get("skipped", 0) + 1
            continue
        try:
            image = load(path, kind="volume" if kind == "series" else kind)
        except MedsightError as exc:
            if kind == "series":
                # An incomplete series is refused as a volume, by design; its files are still images.
                print(f"{str(rel):78s} series refused: {exc.message}; reading its files one by one")
                counts["refused series"] = counts.get("refused series", 0) + 1
                files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
                todo[:0] = [(f, "volume") for f in files]
                continue
            failures.append(f"{rel}: {exc}")
            print(f"{str(rel):78s} FAILED {exc}")
            continue
        kind = "volume" if kind == "series" else kind
        spatial = tuple(image.shape[1:])
        spacing = np.round(np.asarray(image.meta["spacing"], dtype=float), 3).tolist()
        if kind == "volume" and image.affine.shape == (4, 4):
            axcodes = "".join(c or "?" for c in nib.orientations.aff2axcodes(image.affine.numpy()))
        else:
            axcodes = "rows,cols"
        print(f"{str(rel):78s} {kind:7s} {str(spatial):20s} spacing {str(spacing):26s} {axcodes} "
              f"channels {image.shape[0]} range [{float(image.min()):.0f}, {float(image.max()):.0f}]")
        counts[kind] = counts.get(kind, 0) + 1
    print(f"\nread {counts.get('volume', 0)} volumes and {counts.get('picture', 0)} pictures; "
          f"{counts.get('refused series', 0)} incomplete DICOM series refused as volumes (their files read singly); "
          f"skipped {counts.get('skipped', 0)} non-image DICOM objects; {len(failures)} failures")
    for failure in failures:
        print(f"FAILED {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
