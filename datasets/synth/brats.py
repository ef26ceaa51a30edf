"""Synthetic glioma MRI in the BraTS layouts (2021 and 2023 naming), 1 mm, skull-stripped.

A brain (white matter, grey matter, ventricles) with one tumour: oedema around a core made of an
enhancing rim and a necrotic centre, each with its own look in each modality, as on real scans:

| tissue   | T1     | T1c        | T2          | FLAIR       |
|----------|--------|------------|-------------|-------------|
| oedema   | darker | darker     | bright      | bright      |
| ET (rim) | dark   | very bright| bright-ish  | bright-ish  |
| necrosis | dark   | dark       | very bright | dark-ish    |
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from medsight.datasets.conventions import CONVENTIONS
from medsight.datasets.vocabulary import MSD_CHANNEL_ROLES, SEPARATOR, SUFFIX_ROLES
from medsight.io.writers import write_json, write_nifti

# Mean intensity (arbitrary MR units) of each tissue per role.
TISSUE = {
    #          background, wm,  gm,  csf, oedema, et,  necrosis
    "t1": (0, 560, 420, 180, 380, 300, 200),
    "t1c": (0, 580, 440, 190, 400, 1100, 210),
    "t2": (0, 300, 420, 1000, 760, 640, 1050),
    "flair": (0, 340, 430, 110, 880, 700, 380),
}
BACKGROUND, WM, GM, CSF, OEDEMA, ET, NECROSIS = range(7)


def _affine(shape, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    """BraTS-style grid: 1 mm (or ``spacing``), x and y flipped (LPS-like on disk), as in the challenge releases."""
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[1, 3] = (shape[1] - 1) * spacing[1]
    return affine


def _irregular_ball(coords, centre, radii, rng, roughness=0.18) -> np.ndarray:
    """Distance-like field (< 1 inside) of an ellipsoid with a smooth random surface."""
    d = np.sqrt(sum(((c - m) / r) ** 2 for c, m, r in zip(coords, centre, radii)))
    bumps = gaussian_filter(rng.normal(0, 1, d.shape), 3.0)
    return d + roughness * bumps / (bumps.std() + 1e-6)


def make_case(rng: np.random.Generator, shape=(96, 96, 64)) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(images per role, tissue map) for one subject; the tissue map uses the indices above."""
    coords = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    centre = np.asarray(shape) / 2 + rng.uniform(-2, 2, 3)
    brain_radii = np.asarray(shape) * np.asarray([0.42, 0.46, 0.44]) * rng.uniform(0.95, 1.03)
    brain = _irregular_ball(coords, centre, brain_radii, rng, 0.03) < 1
    tissue = np.zeros(shape, dtype=np.uint8)
    tissue[brain] = GM
    tissue[brain & (_irregular_ball(coords, centre, brain_radii * 0.75, rng, 0.08) < 1)] = WM
    for side in (-1, 1):
        ventricle = centre + np.asarray([side * 0.08 * shape[0], 0.02 * shape[1], 0.05 * shape[2]])
        tissue[_irregular_ball(coords, ventricle, np.asarray(shape) * [0.05, 0.17, 0.08], rng, 0.05) < 1] = CSF
    # Tumour somewhere in a hemisphere, kept inside the brain.
    side = rng.choice([-1, 1])
    t_centre = centre + np.asarray([side * rng.uniform(0.12, 0.22) * shape[0], rng.uniform(-0.15, 0.15) * shape[1],
                                    rng.uniform(-0.12, 0.12) * shape[2]])
    core_r = rng.uniform(5, 10)
    oedema_r = core_r + rng.uniform(5, 11)
    oedema = _irregular_ball(coords, t_centre, oedema_r * rng.uniform(0.85, 1.15, 3), rng, 0.2) < 1
    core_field = _irregular_ball(coords, t_centre, core_r * rng.uniform(0.85, 1.15, 3), rng, 0.12)
    core = core_field < 1
    enhancing = rng.random() > 0.1  # a few tumours have no enhancing part: ET is empty there
    rim = rng.uniform(0.45, 0.7)
    necrosis = core_field < rim if enhancing else core
    tissue[oedema & brain] = OEDEMA
    tissue[core & brain] = ET if enhancing else NECROSIS
    tissue[necrosis & brain] = NECROSIS
    smooth = gaussian_filter(rng.normal(0, 1, shape), 12)
    with np.errstate(over="ignore", invalid="ignore"):
        bias = np.exp(0.08 * smooth / (smooth.std() + 1e-6))  # scanner bias field: a slow multiplicative drift
    if not np.isfinite(bias).all():  # a volume a few voxels wide has no slow drift to speak of
        bias = np.ones_like(smooth)
    images = {}
    for role, means in TISSUE.items():
        image = np.asarray(means, dtype=np.float32)[tissue]
        image *= rng.uniform(0.85, 1.15)
        image += rng.normal(0, 0.04 * max(means), shape).astype(np.float32) * brain
        image = gaussian_filter(image, 0.6) * bias
        image[~brain] = 0
        images[role] = np.clip(image, 0, 32000).astype(np.int16)
    return images, tissue


def labels_of(tissue: np.ndarray, convention: str) -> np.ndarray:
    """Tissue map -> the convention's label values."""
    regions = np.stack([tissue == ET, np.isin(tissue, (ET, NECROSIS)), np.isin(tissue, (ET, NECROSIS, OEDEMA))])
    return CONVENTIONS[convention].from_regions(regions)


def write_dataset(out: Path, cases: int, seed: int, naming: str, shape=(96, 96, 64), spacing=(1.0, 1.0, 1.0)) -> Path:
    """``cases`` synthetic subjects in one of the layouts: brats2021, brats2023, brats2015 or msd; voxels of
    ``spacing`` mm (the same voxel grid: thicker slices make a taller head)."""
    rng = np.random.default_rng(seed)
    affine = _affine(shape, spacing)
    out = Path(out)
    if naming == "msd":
        return _write_msd(out, cases, rng, shape, affine)
    for index in range(1, cases + 1):
        images, tissue = make_case(rng, shape)
        if naming == "brats2015":
            folder = out / f"brats_2013_pat{index:04d}_1"
            names = {role: f"{role.capitalize()}_subtrMeanDivStd.nii.gz" for role in images}
            label_name, convention = "OTMultiClass.nii.gz", "brats2015"
        else:
            sep = SEPARATOR[naming]
            case = f"BraTS2021_{index:05d}" if naming == "brats2021" else f"BraTS-GLI-{index:05d}-000"
            folder = out / case
            role_suffix = {role: suffix for suffix, role in SUFFIX_ROLES[naming].items()}
            names = {role: f"{case}{sep}{role_suffix[role]}.nii.gz" for role in images}
            label_name, convention = f"{case}{sep}seg.nii.gz", naming
        for role, image in images.items():
            write_nifti(image, affine, folder / names[role])
        write_nifti(labels_of(tissue, convention), affine, folder / label_name, dtype=np.uint8)
    return out


def _write_msd(out: Path, cases: int, rng: np.random.Generator, shape, affine) -> Path:
    """MSD Task01 layout: 4D images (FLAIR, T1w, T1gd, T2w), labels 1 oedema / 2 non-enhancing / 3 enhancing."""
    training = []
    for index in range(1, cases + 1):
        images, tissue = make_case(rng, shape)
        name = f"BRATS_{index:03d}.nii.gz"
        stacked = np.stack([images[role] for role in MSD_CHANNEL_ROLES], axis=-1).astype(np.float32)
        write_nifti(stacked, affine, out / "imagesTr" / name)
        write_nifti(labels_of(tissue, "msd"), affine, out / "labelsTr" / name, dtype=np.uint8)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    dataset = {
        "name": "BRATS", "tensorImageSize": "4D",
        "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
        "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
        "numTraining": cases, "numTest": 0, "training": training, "test": [],
    }
    write_json(dataset, out / "dataset.json")
    return out


def write_case_files(folder: Path, name: str, rng: np.random.Generator, shape, affine, roles_to_names: dict[str, str],
                     convention: str, label_name: str | None) -> Path:
    """One case with arbitrary file names (for pattern-based and clinical layouts in tests)."""
    images, tissue = make_case(rng, shape)
    for role, filename in roles_to_names.items():
        write_nifti(images[role].astype(np.float32), affine, folder / filename)
    if label_name:
        write_nifti(labels_of(tissue, convention), affine, folder / label_name, dtype=np.uint8)
    return folder

