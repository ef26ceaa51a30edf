"""Post-processing of the ET/TC/WT masks chosen on validation, as nnU-Net's ``determine_postprocessing``
does: per region, try dropping connected components and keep the operation only where it improves the
validation scores; the choice (the *plan*) goes into the task state, so checkpoints carry it.

Operations on one region's mask (components: 26-connected, the full 3D connectivity nnU-Net and MONAI use):

- ``none``: the mask as thresholded;
- ``largest``: only its largest connected component;
- ``min_ml:V``: without its components under V mL. The size is a volume, not a voxel count, so one plan
  means the same on the network's grid (validation, evaluate) and on each input's own grid (predict).
  ``MIN_VOLUMES_ML``: 0.1 mL (a 4.6 mm cube, specks), 1 mL (10 mm cube) and 5 mL (17 mm cube) against
  tumours of tens of mL.

A plan ``{"ET": "none", "TC": "largest", "WT": "min_ml:1"}`` is applied outer region first (WT, TC, ET);
voxels an operation removes from a region are removed from the regions inside it too, so a WT blob that
goes takes its TC and ET with it. Nothing else changes: an all-``none`` plan returns the masks unchanged.

Choice (``choose_plan``), per region, on the per-case scores of every candidate: a candidate *improves*
when its mean Dice beats ``none``'s by more than ``DICE_MARGIN``, or is within ``DICE_MARGIN`` of it with a
lower mean HD95 (a speck far from the tumour barely moves Dice but sets HD95). Of the improving
candidates, those within ``DICE_MARGIN`` of the best mean Dice compete on mean HD95, then on their order
in ``CANDIDATES`` (mildest first). No improving candidate: ``none``.

Each region's candidates are scored on that region's own mask, the others left as they are. The scores
of a whole plan (``plan_metrics``) are therefore exact for every region except where an outer region's
operation also cuts an inner region that has an operation of its own; ``medsight evaluate`` applies the
plan to the masks and scores them exactly.

MONAI's ``KeepLargestConnectedComponent`` and ``RemoveSmallObjects`` do each operation, but label the
volume again for each one (and the latter warns under scikit-image 0.26); here each region is labelled
once (``scipy.ndimage.label``) and every candidate is a choice of its components.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage

from medsight.datasets.brats import REGIONS
from medsight.errors import CheckpointError

#: outer region first: the order a plan is applied in
OUTER_FIRST = ("WT", "TC", "ET")
MIN_VOLUMES_ML = (0.1, 1.0, 5.0)
#: the candidates tried per region, mildest first (the tie-break order)
CANDIDATES = ("none", *(f"min_ml:{v:g}" for v in MIN_VOLUMES_ML), "largest")
#: mean Dice differences within this are ties
DICE_MARGIN = 0.001
#: per-case candidate scores in validation outputs: ``pp:largest:dice_WT``
KEY_PREFIX = "pp:"
_FULL_3D = np.ones((3, 3, 3), dtype=bool)


def candidate_key(operation: str, metric: str) -> str:
    """The validation-output key of one candidate's per-case scores (``metric``: ``dice_WT``, ``hd95_WT``)."""
    return f"{KEY_PREFIX}{operation}:{metric}"


def check_operation(operation: str) -> str:
    """``operation`` if it names one (``none``, ``largest``, ``min_ml:V`` with V > 0), else an error."""
    if operation in ("none", "largest"):
        return operation
    kind, _, value = operation.partition(":")
    try:
        if kind == "min_ml" and float(value) > 0:
            return operation
    except ValueError:
        pass
    raise CheckpointError(f"post-processing operation {operation!r} is not none, largest or min_ml:V (V > 0 mL); "
                          "set infer.postprocess=false to ignore the checkpoint's post-processing", "checkpoint")


def components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(X, Y, Z) bool -> (labels (X, Y, Z) int32, 0 = background; sizes in voxels per label, sizes[0] = 0)."""
    labels, count = ndimage.label(mask, structure=_FULL_3D)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0
    return labels, sizes


def kept_components(sizes: np.ndarray, operation: str, voxel_ml: float) -> np.ndarray:
    """Which labels ``operation`` keeps: bool per label (``sizes`` from ``components``; label 0 never)."""
    keep = sizes > 0
    if operation == "largest" and len(sizes) > 2:
        keep = np.zeros_like(keep)
        keep[int(np.argmax(sizes))] = True  # the first of equal largest ones, in scan order
    elif operation.startswith("min_ml:"):
        # round(): 0.1 mL of 1 mm^3 voxels is 100 voxels, not 100.00000000000001
        min_voxels = math.ceil(round(float(operation.split(":", 1)[1]) / voxel_ml, 6))
        keep &= sizes >= min_voxels
    return keep


def voxel_volume_ml(spacing_mm: Sequence[float]) -> float:
    return float(np.prod([float(s) for s in spacing_mm])) / 1000.0


def apply_plan(regions: np.ndarray, plan: dict[str, str] | None, spacing_mm: Sequence[float]) -> np.ndarray:
    """(3, X, Y, Z) bool masks, channels ET, TC, WT, on a grid of ``spacing_mm`` -> the plan's masks (a new
    array; the input is not changed). ``plan``: region -> operation; missing regions and None: ``none``."""
    out = np.array(regions, dtype=bool, copy=True)
    if not plan:
        return out
    voxel_ml = voxel_volume_ml(spacing_mm)
    removed = np.zeros(out.shape[1:], dtype=bool)
    for region in OUTER_FIRST:
        index = REGIONS.index(region)
        mask = out[index]
        if removed.any():
            mask &= ~removed
        operation = check_operation(plan.get(region, "none"))
        if operation == "none" or not mask.any():
            continue
        labels, sizes = components(mask)
        keep = kept_components(sizes, operation, voxel_ml)
        if keep[1:].all():
            continue
        new = keep[labels]
        removed |= mask & ~new
        out[index] = new
    return out


def candidate_scores(prediction: np.ndarray, raw_scores: dict[str, float], spacing_mm: Sequence[float],
                     score: Callable[[np.ndarray, int], tuple[float, float]]) -> dict[str, float]:
    """Per-case scores of every candidate but ``none`` for every region, keyed by ``candidate_key``.

    prediction: (3, X, Y, Z) bool masks (ET, TC, WT); raw_scores: ``dice_ET``... of ``prediction`` as is;
    score(mask, region_index) -> (dice, hd95 mm) of one region's mask. A candidate that leaves the mask
    as it is reuses ``raw_scores``, and candidates keeping the same components share one scoring (HD95
    is the expensive part)."""
    out: dict[str, float] = {}
    voxel_ml = voxel_volume_ml(spacing_mm)
    for index, region in enumerate(REGIONS):
        raw = (raw_scores[f"dice_{region}"], raw_scores[f"hd95_{region}"])
        mask = prediction[index]
        labels, sizes = components(mask) if mask.any() else (None, np.zeros(1, dtype=np.int64))
        scored: dict[bytes, tuple[float, float]] = {}
        for operation in CANDIDATES[1:]:
            keep = kept_components(sizes, operation, voxel_ml)
            if keep[1:].all():
                dice, hd95 = raw
            else:
                key = keep.tobytes()
                if key not in scored:
                    scored[key] = score(keep[labels], index)
                dice, hd95 = scored[key]
            out[candidate_key(operation, f"dice_{region}")] = dice
            out[candidate_key(operation, f"hd95_{region}")] = hd95
    return out


def choose_plan(outputs: dict[str, list], candidates: Sequence[str] = CANDIDATES) -> dict[str, str]:
    """region -> operation, from per-case validation outputs: ``dice_WT``... (no post-processing) and
    ``candidate_key(operation, "dice_WT")``... (module docstring: the rule). Candidates without scores in
    ``outputs`` are not considered."""
    plan = {}
    for region in REGIONS:
        base_dice = float(np.mean(outputs[f"dice_{region}"]))
        base_hd95 = float(np.mean(outputs[f"hd95_{region}"]))
        improving = []
        for order, operation in enumerate(candidates):
            dice_key, hd95_key = candidate_key(operation, f"dice_{region}"), candidate_key(operation, f"hd95_{region}")
            if operation == "none" or not outputs.get(dice_key) or not outputs.get(hd95_key):
                continue
            dice, hd95 = float(np.mean(outputs[dice_key])), float(np.mean(outputs[hd95_key]))
            gain = dice - base_dice
            if gain > DICE_MARGIN or (gain >= -DICE_MARGIN and hd95 < base_hd95):
                improving.append((dice, hd95, order, operation))
        if not improving:
            plan[region] = "none"
            continue
        best_dice = max(dice for dice, *_ in improving)
        tied = [(hd95, order, operation) for dice, hd95, order, operation in improving
                if dice >= best_dice - DICE_MARGIN]
        plan[region] = min(tied)[2]
    return plan


def plan_metrics(outputs: dict[str, list], plan: dict[str, str]) -> dict[str, list]:
    """Per-case ``dice_ET``... ``hd95_WT`` with ``plan`` applied, from the candidates' validation scores
    (exact but where an outer region's operation cuts an inner one with its own: module docstring)."""
    out = {}
    for region in REGIONS:
        operation = plan.get(region, "none")
        for metric in (f"dice_{region}", f"hd95_{region}"):
            out[metric] = list(outputs[metric] if operation == "none" else outputs[candidate_key(operation, metric)])
    return out


def describe(plan: dict[str, str] | None) -> str:
    """``WT largest, TC min_ml:1`` (regions with an operation, outer first), or ``none``."""
    chosen = [f"{region} {plan[region]}" for region in OUTER_FIRST if plan and plan.get(region, "none") != "none"]
    return ", ".join(chosen) or "none"
