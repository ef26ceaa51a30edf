"""Calibration: probabilities that mean what they say, and a per-case flag for a human look.

Temperature scaling (Guo et al. 2017): one positive number T per output (a label, a region, the detector's
score) divides the logits before the sigmoid or softmax, fitted by minimising the negative log-likelihood
of out-of-fold predictions (``medsight cv``: every case predicted by a model that never saw it). It keeps
every ranking (AUROC, FROC, the argmax) and changes only how sure the probabilities are; one parameter per
output cannot overfit a few hundred cases. The fitted values live in the checkpoint's ``task_state
["temperature"]``; tasks apply them where they make probabilities.

ECE is the expected calibration error over ``bins`` equal-width bins of the predicted probability (the
weighted mean gap between mean prediction and observed frequency), Brier the mean squared error of the
probability; both take sample weights (segmentation samples voxels unevenly and weighs them back).

Review: a case's review score (its predictive entropy: the task's ``quality["score"]``) above a threshold
chosen on out-of-fold scores for a review rate (default 10 %) flags it (``quality["review"]``), as does an
input unlike the training data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

#: temperatures are searched in [1/20, 20]: outside, a fit says more about the data than about calibration
BOUNDS = (math.log(0.05), math.log(20.0))
REVIEW_RATE = 0.10


def logit(p: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    return np.log(p) - np.log1p(-p)


def _nll(z: np.ndarray, y: np.ndarray, w: np.ndarray | None, softmax: bool) -> float:
    if softmax:  # z (N, C) logits, y (N,) class index
        z = z - z.max(axis=1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        loss = -log_p[np.arange(len(y)), y.astype(int)]
    else:
        loss = np.logaddexp(0, z) - y * z  # binary cross-entropy with logits
    return float(np.average(loss, weights=w))


def fit_temperature(logits: np.ndarray, targets: np.ndarray, weights: np.ndarray | None = None,
                    softmax: bool = False) -> float:
    """The T > 0 minimising the NLL of ``sigmoid(logits / T)`` (or softmax over axis 1) against ``targets``
    (0/1, or class indices for softmax); 1.0 where the data cannot tell (no samples, one class only)."""
    from scipy.optimize import minimize_scalar

    z, y = np.asarray(logits, dtype=np.float64), np.asarray(targets, dtype=np.float64)
    if z.size == 0 or (not softmax and (y.min() == y.max())):
        return 1.0
    w = None if weights is None else np.asarray(weights, dtype=np.float64)
    found = minimize_scalar(lambda log_t: _nll(z / math.exp(log_t), y, w, softmax), bounds=BOUNDS,
                            method="bounded", options={"xatol": 1e-4})
    return float(math.exp(found.x)) if found.success else 1.0


def ece(probabilities: np.ndarray, targets: np.ndarray, weights: np.ndarray | None = None, bins: int = 15) -> float:
    """Expected calibration error of binary probabilities (flattened) against 0/1 targets."""
    p, y = np.ravel(probabilities).astype(np.float64), np.ravel(targets).astype(np.float64)
    w = np.ones_like(p) if weights is None else np.ravel(weights).astype(np.float64)
    if p.size == 0 or w.sum() <= 0:
        return float("nan")
    index = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = index == b
        if inside.any():
            weight = w[inside].sum()
            total += weight * abs(np.average(p[inside], weights=w[inside]) - np.average(y[inside], weights=w[inside]))
    return float(total / w.sum())


def brier(probabilities: np.ndarray, targets: np.ndarray, weights: np.ndarray | None = None) -> float:
    p, y = np.ravel(probabilities).astype(np.float64), np.ravel(targets).astype(np.float64)
    if p.size == 0:
        return float("nan")
    return float(np.average((p - y) ** 2, weights=None if weights is None else np.ravel(weights)))


def reliability(probabilities: np.ndarray, targets: np.ndarray, weights: np.ndarray | None = None,
                bins: int = 15) -> list[tuple[float, float, float]]:
    """Per non-empty bin: (mean prediction, observed frequency, share of the weight)."""
    p, y = np.ravel(probabilities).astype(np.float64), np.ravel(targets).astype(np.float64)
    w = np.ones_like(p) if weights is None else np.ravel(weights).astype(np.float64)
    index = np.minimum((p * bins).astype(int), bins - 1)
    rows = []
    for b in range(bins):
        inside = index == b
        if inside.any() and w[inside].sum() > 0:
            rows.append((float(np.average(p[inside], weights=w[inside])),
                         float(np.average(y[inside], weights=w[inside])), float(w[inside].sum() / w.sum())))
    return rows


def calibration_metrics(samples: Mapping[str, tuple], temperatures: Mapping[str, float] | None = None) -> dict:
    """ECE and Brier of each output's samples ``name -> (probabilities, targets, weights)``, and their means
    (``ece``, ``brier``); with ``temperatures`` the samples are uncalibrated and the metrics are of both:
    ``*_uncalibrated`` of the samples as they are, the plain names of them with the temperatures applied."""
    out: dict[str, float] = {}
    for suffix, use in (("", temperatures), ("_uncalibrated", None)) if temperatures else (("", None),):
        eces, briers = [], []
        for name, (p, y, w) in samples.items():
            if use:
                p = 1 / (1 + np.exp(-logit(p) / use.get(name, 1.0)))
            e, b = ece(p, y, w), brier(p, y, w)
            out[f"ece_{name}{suffix}"], out[f"brier_{name}{suffix}"] = e, b
            eces.append(e)
            briers.append(b)
        if eces:
            out[f"ece{suffix}"], out[f"brier{suffix}"] = float(np.nanmean(eces)), float(np.nanmean(briers))
    return out


def cross_fitted_metrics(folds: Sequence[Mapping[str, tuple]]) -> dict:
    """ECE and Brier of out-of-fold samples (per fold ``name -> (probabilities, targets, weights)``) before and
    after temperatures fitted on the OTHER folds' samples: calibration scored on samples it was not fitted on,
    as a new case from the same population would see it (the pooled OOF metrics of ``calibration_metrics``
    score the temperatures on their own fitting data). Pooled over the folds; the same keys as there."""
    folds = [{name: (np.asarray(p, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel(),
                     np.ones(np.size(p)) if w is None else np.asarray(w, dtype=np.float64).ravel())
              for name, (p, y, w) in fold.items()} for fold in folds]  # weights None: every sample counts once
    names = sorted({name for fold in folds for name in fold})
    before: dict[str, list] = {n: [] for n in names}
    after: dict[str, list] = {n: [] for n in names}
    for k, fold in enumerate(folds):
        for name, (p, y, w) in fold.items():
            rest = [f[name] for j, f in enumerate(folds) if j != k and name in f]
            if not rest:
                continue
            temperature = fit_temperature(logit(np.concatenate([r[0] for r in rest])),
                                          np.concatenate([r[1] for r in rest]), np.concatenate([r[2] for r in rest]))
            calibrated = 1 / (1 + np.exp(-logit(p) / temperature))
            before[name].append((p, y, w))
            after[name].append((calibrated, y, w))
    def pooled(chosen: dict[str, list]) -> dict[str, tuple]:
        return {name: tuple(np.concatenate([part[i] for part in parts]) for i in range(3))
                for name, parts in chosen.items() if parts}

    crossed = calibration_metrics(pooled(after))  # the same ECE and Brier as the in-sample figures
    crossed.update({f"{k}_uncalibrated": v for k, v in calibration_metrics(pooled(before)).items()})
    return crossed


# -- review ---------------------------------------------------------------------------------------------
def binary_entropy(p: np.ndarray) -> np.ndarray:
    """Entropy (bits) of Bernoulli probabilities: 0 when sure, 1 at 0.5."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def review_threshold(scores: Sequence[float], rate: float = REVIEW_RATE) -> float:
    """The score above which ``rate`` of the out-of-fold cases lie (at least one case flagged)."""
    values = np.sort(np.asarray([s for s in scores if s is not None and math.isfinite(s)], dtype=np.float64))
    if values.size == 0:
        return float("inf")
    flagged = max(1, int(round(rate * values.size)))
    return float(values[values.size - flagged])


def flagged_versus_rest(scores: Sequence[float], quality: Sequence[float], threshold: float) -> dict:
    """Mean per-case quality (Dice, accuracy) of the flagged cases and of the others, and their counts."""
    s, q = np.asarray(scores, dtype=np.float64), np.asarray(quality, dtype=np.float64)
    flagged = s >= threshold
    mean = (lambda x: float(np.nanmean(x)) if x.size and np.isfinite(x).any() else float("nan"))
    return {"flagged": int(flagged.sum()), "rest": int((~flagged).sum()), "flagged_mean": mean(q[flagged]),
            "rest_mean": mean(q[~flagged])}


def mark_review(quality: dict, rule: Mapping | None) -> None:
    """Set ``quality["review"]``: the score at or above the rule's threshold, or an input unlike the
    training data. Without a rule (a model that had no cross-validation) only the domain flags."""
    reasons = []
    score = quality.get("score")
    if rule and score is not None and score >= rule.get("threshold", float("inf")):
        reasons.append(f"score {score:.3f} >= {rule['threshold']:.3f}")
    if quality.get("domain"):
        reasons.append("unlike the training data")
    quality["review"] = bool(reasons)
