"""Dice and HD95 per region (ET, TC, WT) with MONAI's metric functions and the BraTS conventions for
empty regions: both empty -> Dice 1, HD95 0; only one empty -> Dice 0, HD95 373.13 mm (the value
the BraTS evaluation uses, the diagonal of its 240 x 240 x 155 mm volume)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance

from medsight.datasets.brats import REGIONS

HD95_ONE_EMPTY_MM = 373.13
METRIC_NAMES = [f"{kind}_{region}" for kind in ("dice", "hd95") for region in REGIONS]


def region_scores(prediction: torch.Tensor, truth: torch.Tensor, spacing_mm: Sequence[float]) -> dict[str, float]:
    """prediction, truth: (3, X, Y, Z) boolean masks, channels ET, TC, WT, on a grid of ``spacing_mm``."""
    scores = {}
    for index, region in enumerate(REGIONS):
        scores[f"dice_{region}"], scores[f"hd95_{region}"] = mask_scores(prediction[index], truth[index], spacing_mm)
    return scores


def mask_scores(prediction: torch.Tensor, truth: torch.Tensor, spacing_mm: Sequence[float]) -> tuple[float, float]:
    """(Dice, HD95 in mm) of one region: (X, Y, Z) boolean masks, with the BraTS conventions for empty ones."""
    p, t = torch.as_tensor(prediction).bool(), torch.as_tensor(truth).bool()
    p_any, t_any = bool(p.any()), bool(t.any())
    if not p_any and not t_any:
        return 1.0, 0.0
    if not p_any or not t_any:
        return 0.0, HD95_ONE_EMPTY_MM
    pair = (p[None, None].float(), t[None, None].float())
    dice = float(compute_dice(*pair, include_background=True, ignore_empty=False)[0, 0])
    with warnings.catch_warnings():  # MONAI warns about its own deprecated internal argument
        warnings.simplefilter("ignore", FutureWarning)
        hd95 = float(compute_hausdorff_distance(*pair, include_background=True, percentile=95,
                                                spacing=[float(s) for s in spacing_mm])[0, 0])
    return dice, hd95


def summarise(outputs: dict[str, list]) -> dict[str, float]:
    """Mean of each per-case metric, plus ``mean_dice`` over the three regions (the checkpoint monitor)."""
    metrics = {name: float(np.mean(outputs[name])) for name in METRIC_NAMES if outputs.get(name)}
    if all(f"dice_{r}" in metrics for r in REGIONS):
        metrics["mean_dice"] = float(np.mean([metrics[f"dice_{r}"] for r in REGIONS]))
    return metrics


def summary_table(outputs: dict[str, list]) -> list[dict]:
    """Rows ``{"statistic", dice_ET, ..., hd95_WT}`` for mean, median, std, 25th and 75th percentile."""
    rows = []
    for statistic, function in (("mean", np.mean), ("median", np.median), ("std", np.std),
                                ("25quantile", lambda v: np.percentile(v, 25)),
                                ("75quantile", lambda v: np.percentile(v, 75))):
        rows.append({"statistic": statistic, **{name: float(function(outputs[name])) for name in METRIC_NAMES}})
    return rows
