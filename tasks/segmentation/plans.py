"""What ``medsight data fingerprint`` measures of a BraTS-like case, and the plan made from it
(``medsight.planning.plans`` has the rules)."""

from __future__ import annotations

import numpy as np
import torch
from monai.transforms import Compose

from medsight.inference import domain
from medsight.planning import plans
from medsight.data import transforms as T
from medsight.core.geometry import voxel_size_mm

from .transforms import SelectChannelsd

#: voxels per case whose intensities are kept (nnU-Net samples 10,000)
SAMPLE = 20_000


def fingerprint_case(task, record: dict) -> dict:
    """Voxel size and shape (of the brain's box when data.crop_foreground, as training crops), per modality
    the intensity statistics inside the brain (non-zero voxels, after data.background_to_zero moved a
    constant background to 0), and the tumour's volume and extent."""
    cfg = task.config.data
    labels = ("label",) if record.get("label") else ()
    steps = [*T.load("image", labels), SelectChannelsd("image")]
    if cfg.orient:
        steps += T.orient("image", labels, cfg.orient)
    data = Compose(steps, log_stats=False)(dict(record))
    image = data["image"]
    spacing = voxel_size_mm(np.asarray(image.affine)).tolist()
    values = image.as_tensor().float()
    # the brain, as training finds it: non-zero after a constant background is moved to 0 (data.background_to_zero)
    shifted = Compose(T.background_to_zero("image"))({"image": values.clone()})["image"] \
        if cfg.background_to_zero else values
    brain = (torch.as_tensor(shifted) != 0).any(dim=0)
    shape = list(values.shape[1:])
    if cfg.crop_foreground and bool(brain.any()):
        where = torch.nonzero(brain)
        shape = (where.max(dim=0).values - where.min(dim=0).values + 1).tolist()
    rng = np.random.default_rng(0)
    modalities = {}
    for role, channel in zip(task.modalities, values):
        inside = channel[brain].numpy()
        if len(inside) > SAMPLE:
            inside = rng.choice(inside, SAMPLE, replace=False)
        modalities[role] = {"mean": float(inside.mean()), "std": float(inside.std()),
                            "p0.5": float(np.percentile(inside, 0.5)), "p99.5": float(np.percentile(inside, 99.5))} \
            if len(inside) else {}
    case = {"spacing_mm": [round(s, 4) for s in spacing], "shape": shape, "modalities": modalities}
    if labels:
        tumour = torch.as_tensor(data["label"])[0] > 0
        count = int(tumour.sum())
        case["tumour_ml"] = count * float(np.prod(spacing)) / 1000
        if count:
            where = torch.nonzero(tumour)
            case["tumour_extent_mm"] = ((where.max(dim=0).values - where.min(dim=0).values + 1).numpy()
                                        * np.asarray(spacing)).round(1).tolist()
    return case


def domain_case(task, record: dict) -> dict:
    """What predict compares with the training brains (``medsight.inference.domain``): modality (CT has air at
    -1000 HU), voxel size and the brain's box (x, y, z), signal above the constant background in mL (a head that is
    not skull-stripped holds its scalp and skull too), and per modality the percentiles inside the brain (stored only: the
    model z-scores each case, so their scale does not reach it). Read as training reads, measured on a grid."""
    image = Compose([*T.load("image"), SelectChannelsd("image")], log_stats=False)(dict(record))["image"]
    return loaded_domain_case(task.modalities, image)


def loaded_domain_case(roles, image) -> dict:
    """``domain_case`` of an image already read as training reads it (channels in ``roles``' order): what
    predict's reading step measures (``domain.DomainTapd``), so that an input is read once."""
    affine = np.asarray(image.affine, dtype=np.float64)
    voxel = voxel_size_mm(affine)
    values = image.as_tensor().numpy()
    grids, step = zip(*(domain.grid(channel) for channel in values))
    brain = np.zeros(grids[0].shape, dtype=bool)
    for channel, sampled in zip(values, grids):
        background = domain.constant_background(channel)
        brain |= (sampled != background) if background is not None else True  # noisy air: no background
    shape = np.asarray(values.shape[1:])
    box = shape
    if brain.any():
        box = np.minimum([(w.max() - w.min() + 1) * step[0] for w in np.nonzero(brain)], shape)
    guesses = [domain.modality_of(sampled.ravel()) for sampled in grids]
    modality, told = next((g for g in guesses if g[0] == "CT"), guesses[0])
    return {"modality": modality, "modality_from": told, "spacing_mm": domain.ras_order(affine, voxel),
            "extent_mm": domain.ras_order(affine, box * voxel),
            "nonbackground_ml": float(brain.mean()) * float(shape.prod() * voxel.prod()) / 1000,
            "intensity": {role: domain.percentiles(sampled[brain]) for role, sampled in zip(roles, grids)}}


def summarise(task, cases: list[dict]) -> dict:
    roles = {role for c in cases for role in c["modalities"]}
    return {"intensity_nonzero": {role: {key: plans.summary([c["modalities"][role][key] for c in cases
                                                               if c["modalities"].get(role)])["median"]
                                         for key in ("mean", "std", "p0.5", "p99.5")} for role in sorted(roles)},
            "tumour_ml": plans.summary([c.get("tumour_ml") for c in cases]),
            "tumour_extent_mm": {"median": np.median([c["tumour_extent_mm"] for c in cases
                                                      if "tumour_extent_mm" in c] or [[0, 0, 0]], axis=0).tolist()}}


def plan(task, fingerprint: dict, budget: int, precision: str) -> dict:
    """Target spacing, a patch and a batch that fit ``budget`` bytes; sliding windows of the patch's size."""
    cases = fingerprint["per_case"]
    spacing, shapes = plans.resampled_shapes(cases)
    median_shape = np.median(shapes, axis=0)
    step = 2 ** (len(task.config.model.blocks_down) - 1) if task.config.model.name == "segresnet" else 16
    per_voxel, fixed = plans.network_memory(task, (len(task.modalities), *[2 * step] * 3), precision)
    smallest = 2 * step
    patch = plans.fit_patch(median_shape, spacing, [step] * 3,
                            lambda p: plans.training_bytes(per_voxel, fixed, p, 2) <= budget, [smallest] * 3)
    batch = plans.fit_batch(per_voxel, fixed, patch, budget, float(shapes.prod(axis=1).sum()))
    return {
        "config": {"data": {"spacing_mm": spacing, "patch_size": patch, "batch_size": batch},
                   "infer": {"roi_size": patch}},
        "memory": {"budget_bytes": budget, "precision": precision, "activation_bytes_per_voxel": round(per_voxel, 1),
                   "weights_and_optimizer_bytes": fixed,
                   "estimated_training_bytes": plans.training_bytes(per_voxel, fixed, patch, batch),
                   "median_shape_at_target_spacing": median_shape.round(1).tolist()},
    }
