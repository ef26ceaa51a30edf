"""What ``medsight data fingerprint`` measures of a CT scan with nodules, and the plan made from it
(``medsight.planning.plans`` has the rules)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from monai.transforms import Compose

from medsight.inference import domain
from medsight.planning import plans
from medsight.data import transforms as T
from medsight.core.geometry import voxel_size_mm, world_to_voxel

from .config import size_divisible
from .pipeline import IMAGE

SAMPLE = 20_000


def fingerprint_case(task, record: dict) -> dict:
    """Voxel size and shape (oriented RAS, as training reads), Hounsfield units over the scan and inside
    its nodules (spheres of the annotated diameters), and the nodules' diameters."""
    data = Compose([*T.load(IMAGE, channels=1), *T.orient(IMAGE)], log_stats=False)({IMAGE: record[IMAGE]})
    image = data[IMAGE]
    affine = np.asarray(image.affine, dtype=np.float64)
    spacing = voxel_size_mm(affine)
    values = image.as_tensor()[0].float().numpy()
    rng = np.random.default_rng(0)
    flat = values.ravel()
    sample = flat[rng.integers(0, flat.size, min(SAMPLE, flat.size))]
    inside = []
    nodules = np.asarray(record.get("nodules") or np.zeros((0, 4)), dtype=np.float64)
    centres = world_to_voxel(nodules[:, :3], affine, "LPS") if len(nodules) else []
    for centre, diameter in zip(centres, nodules[:, 3]):
        radius = np.asarray([diameter / 2 / s for s in spacing])
        low = np.maximum(np.floor(centre - radius).astype(int), 0)
        high = np.minimum(np.ceil(centre + radius).astype(int) + 1, values.shape)
        if np.any(high <= low):
            continue
        grid = np.meshgrid(*[np.arange(a, b) for a, b in zip(low, high)], indexing="ij")
        ball = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radius)) <= 1
        inside.append(values[tuple(slice(a, b) for a, b in zip(low, high))][ball])
    nodule_values = np.concatenate(inside) if inside else np.zeros(0)
    return {"spacing_mm": [round(float(s), 4) for s in spacing], "shape": list(values.shape),
            "hu": {"p0.5": float(np.percentile(sample, 0.5)), "median": float(np.median(sample)),
                   "p99.5": float(np.percentile(sample, 99.5))},
            "nodule_hu": nodule_values[rng.integers(0, len(nodule_values), min(SAMPLE, len(nodule_values)))].tolist()
            if len(nodule_values) else [],
            "nodule_diameters_mm": [float(n[3]) for n in record.get("nodules") or []]}


def domain_case(task, record: dict) -> dict:
    """What predict compares with the training scans (``medsight.inference.domain``): modality (the DICOM header's,
    else air at -1000 HU marks a CT in Hounsfield units), voxel size and field of view (x, y, z), and the spread of
    the values above a constant padding (a CT x1000, or normalised, is on another scale than the HU window
    expects). Read as training reads, measured on a grid."""
    image = Compose(T.load(IMAGE, channels=1), log_stats=False)({IMAGE: record[IMAGE]})[IMAGE]
    return loaded_domain_case(image, record[IMAGE])


def loaded_domain_case(image, source) -> dict:
    """``domain_case`` of a scan already read as training reads it (``source``: the input it was read from, for
    its DICOM header): what predict's reading step measures (``domain.DomainTapd``), so that a scan is read once."""
    affine = np.asarray(image.affine, dtype=np.float64)
    voxel = voxel_size_mm(affine)
    values = image.as_tensor()[0].numpy()
    sample = domain.grid(values)[0].ravel()
    padding = domain.constant_background(values)
    inside = sample[sample != padding] if padding is not None else sample
    modality, told = domain.modality_of(sample)
    header = domain.dicom_header(source) if _is_dicom(source) else None
    if header is not None and header.get("Modality"):
        modality, told = str(header.Modality), "DICOM Modality"
    hu = domain.percentiles(inside)
    return {"modality": modality, "modality_from": told, "spacing_mm": domain.ras_order(affine, voxel),
            "extent_mm": domain.ras_order(affine, np.asarray(values.shape) * voxel),
            "intensity_spread": hu["p99.5"] - hu["p0.5"] if hu else None, "intensity": hu}


def _is_dicom(path) -> bool:
    from medsight.io.readers import DICOM_SUFFIXES, is_memory_name

    name = str(path)
    suffixes = tuple(f".{suffix}" for suffix in DICOM_SUFFIXES)
    return not is_memory_name(name) and (Path(name).is_dir() or name.lower().endswith(suffixes))


def summarise(task, cases: list[dict]) -> dict:
    nodule_hu = np.concatenate([np.asarray(c["nodule_hu"]) for c in cases]) if cases else np.zeros(0)
    for case in cases:  # the samples served the dataset's percentiles; the file keeps only their count
        case["nodule_hu"] = len(case["nodule_hu"])
    return {"hu_scan": {k: plans.summary([c["hu"][k] for c in cases])["median"] for k in ("p0.5", "median", "p99.5")},
            "hu_nodules": {"p0.5": float(np.percentile(nodule_hu, 0.5)), "p99.5": float(np.percentile(nodule_hu, 99.5)),
                           "voxels": int(len(nodule_hu))} if len(nodule_hu) else {},
            "nodule_diameter_mm": plans.summary([d for c in cases for d in c["nodule_diameters_mm"]]),
            "nodules": sum(len(c["nodule_diameters_mm"]) for c in cases)}


def plan(task, fingerprint: dict, budget: int, precision: str) -> dict:
    """Target spacing, an HU window (top: the nodules' 99.5th percentile, nnU-Net's foreground rule for CT;
    bottom: the scans' 0.5th percentile, the air a nodule stands out against), a patch (x = y, for the
    90-degree rotations) holding at least two of the largest nodules across, and scans per step that fit
    ``budget`` bytes."""
    cases = fingerprint["per_case"]
    cfg = task.config
    spacing, shapes = plans.resampled_shapes(cases)
    median_shape = np.median(shapes, axis=0)
    step = list(size_divisible(cfg.model))
    per_voxel, fixed = plans.network_memory(task, (1, *[2 * s for s in step]), precision)
    largest = fingerprint.get("nodule_diameter_mm", {}).get("max", 30.0)
    smallest = [max(2 * st, int(math.ceil(2 * largest / sp / st)) * st) for st, sp in zip(step, spacing)]
    smallest[0] = smallest[1] = max(smallest[:2])
    patches = cfg.data.patches_per_scan

    def fits(patch) -> bool:
        square = [min(patch[0], patch[1])] * 2 + [patch[2]]
        return plans.training_bytes(per_voxel, fixed, square, patches) <= budget

    patch = plans.fit_patch(median_shape, spacing, step, fits, smallest)
    patch[0] = patch[1] = min(patch[0], patch[1])
    scans = plans.fit_batch(per_voxel, fixed, patch, budget, float(shapes.prod(axis=1).sum()), batch_min=patches,
                            batch_max=16 * patches) // patches
    config = {"data": {"spacing_mm": spacing, "patch_size": patch, "batch_size": max(1, scans)}}
    nodules, scan = fingerprint.get("hu_nodules") or {}, fingerprint.get("hu_scan") or {}
    if nodules and scan:  # a nodule is seen against the lung's air: the window starts at the scan's lowest values
        config["data"]["window_hu"] = [round(min(scan["p0.5"], nodules["p0.5"])), round(nodules["p99.5"])]
    return {"config": config,
            "memory": {"budget_bytes": budget, "precision": precision, "activation_bytes_per_voxel": round(per_voxel, 1),
                       "weights_and_optimizer_bytes": fixed, "patches_per_step": max(1, scans) * patches,
                       "estimated_training_bytes": plans.training_bytes(per_voxel, fixed, patch, max(1, scans) * patches),
                       "median_shape_at_target_spacing": median_shape.round(1).tolist()}}
