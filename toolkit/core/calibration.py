"""Calibration: probabilities that mean what they say, and a per-case flag for a human look.

Each output the task calibrates (a label, a region, the detector's score) gets a monotone map of its logit z,
``sigmoid(slope * z + intercept)``, fitted by minimising the negative log-likelihood of out-of-fold
predictions (``medsight cv``: every case predicted by a model that never saw it). Two methods make it:

- **temperature scaling** (Guo et al. 2017): the slope 1/T only; it changes how sure the probabilities are;
- **Platt scaling** (Platt 1999): slope and intercept, with Platt's smoothed targets (N+ + 1)/(N+ + 2) and
  1/(N- + 2) against overfitting a rare label; it also moves them where the network's base rate is off,
  which a scale cannot (measured on NIH folds: cross-fitted ECE 0.053 -> 0.055 with temperatures, -> 0.019
  with Platt).

Both keep every ranking (AUROC, FROC, the order of voxels): the slope is kept positive. ``choose_method``
picks one on out-of-fold predictions scored *cross-fitted* (each fold with the map fitted on the other folds),
or none where neither beats the probabilities as they are. The map lives in the checkpoint's ``task_state
["calibration"]`` (output -> [slope, intercept]); checkpoints from before keep their ``temperature`` (output
-> T), read as slope 1/T. Tasks apply it where they make probabilities (``affine``), and move what they
decide at a probability (classification's thresholds, segmentation's) with it, so the same cases are called
positive before and after.

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

#: temperatures are searched in [1/20, 20], Platt slopes in [1/20, 20] and intercepts in [-10, 10]: outside,
#: a fit says more about the data than about calibration
BOUNDS = (math.log(0.05), math.log(20.0))
SLOPES = (0.05, 20.0)
INTERCEPTS = (-10.0, 10.0)
REVIEW_RATE = 0.10
#: how ``medsight cv`` calibrates: ``auto`` chooses on the out-of-fold predictions, cross-fitted
METHODS = ("auto", "platt", "temperature", "none")

#: output -> (slope, intercept) on the logit
Affine = Mapping[str, Sequence[float]]


def logit(p: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    return np.log(p) - np.log1p(-p)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))  # no overflow warnings at |z| >> 1


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


def fit_platt(logits: np.ndarray, targets: np.ndarray, weights: np.ndarray | None = None) -> tuple[float, float]:
    """The (slope > 0, intercept) minimising the NLL of ``sigmoid(slope * logits + intercept)`` against Platt's
    smoothed 0/1 ``targets`` (weights count as samples); (1, 0) where the data cannot tell."""
    from scipy.optimize import minimize

    z, y = np.ravel(logits).astype(np.float64), np.ravel(targets).astype(np.float64)
    if z.size == 0 or y.min() == y.max():
        return 1.0, 0.0
    w = np.ones_like(z) if weights is None else np.ravel(weights).astype(np.float64)
    positive = y > 0.5
    n_pos, n_neg = w[positive].sum(), w[~positive].sum()
    t = np.where(positive, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    total = w.sum()

    def loss(params):
        s = params[0] * z + params[1]
        g = (sigmoid(s) - t) * w
        return float(((np.logaddexp(0, s) - t * s) * w).sum() / total), np.array([(g * z).sum(), g.sum()]) / total

    found = minimize(loss, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B", bounds=[SLOPES, INTERCEPTS])
    return (float(found.x[0]), float(found.x[1])) if np.all(np.isfinite(found.x)) else (1.0, 0.0)


def fit(samples: Mapping[str, tuple], method: str) -> dict[str, list[float]]:
    """Per output of ``samples`` (``name -> (probabilities, targets, weights)``, uncalibrated), its
    ``[slope, intercept]`` by ``method`` (``platt``, ``temperature``; ``none``: no map)."""
    if method == "none":
        return {}
    if method not in ("platt", "temperature"):
        raise ValueError(f"calibration method must be one of {', '.join(METHODS)}, got {method!r}")
    out = {}
    for name, (p, y, w) in samples.items():
        if method == "platt":
            slope, intercept = fit_platt(logit(p), y, w)
        else:
            slope, intercept = 1.0 / fit_temperature(logit(np.ravel(p)), np.ravel(y), None if w is None else np.ravel(w)), 0.0
        out[name] = [round(slope, 5), round(intercept, 5)]
    return out


def stored(state: Mapping) -> dict[str, tuple[float, float]]:
    """A task state's map, output -> (slope, intercept): ``calibration``, or a checkpoint's ``temperature``
    from before Platt scaling (slope 1/T); empty where it has none."""
    if state.get("calibration"):
        return {name: (float(v[0]), float(v[1])) for name, v in state["calibration"].items()}
    return {name: (1.0 / float(t), 0.0) for name, t in (state.get("temperature") or {}).items()}


def apply(p: np.ndarray, affine: Sequence[float] | None) -> np.ndarray:
    """Probabilities through one output's map (unchanged without one)."""
    if affine is None:
        return np.asarray(p)
    return sigmoid(affine[0] * logit(p) + affine[1])


def invert(p: np.ndarray, affine: Sequence[float] | None) -> np.ndarray:
    """Calibrated probabilities back to the network's own scale (``apply``'s inverse)."""
    if affine is None:
        return np.asarray(p)
    return sigmoid((logit(p) - affine[1]) / affine[0])


def describe(affine: Affine) -> str:
    return ", ".join(f"{name} {float(a):.2f}z{float(b):+.2f}" for name, (a, b) in affine.items())


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


def calibration_metrics(samples: Mapping[str, tuple], affine: Affine | None = None) -> dict:
    """ECE and Brier of each output's samples ``name -> (probabilities, targets, weights)``, and their means
    (``ece``, ``brier``); with a map (output -> (slope, intercept)) the samples are uncalibrated and the
    metrics are of both: ``*_uncalibrated`` of the samples as they are, the plain names with the map applied."""
    out: dict[str, float] = {}
    for suffix, use in (("", affine), ("_uncalibrated", None)) if affine else (("", None),):
        eces, briers = [], []
        for name, (p, y, w) in samples.items():
            if use:
                p = apply(p, use.get(name))
            e, b = ece(p, y, w), brier(p, y, w)
            out[f"ece_{name}{suffix}"], out[f"brier_{name}{suffix}"] = e, b
            eces.append(e)
            briers.append(b)
        if eces:
            out[f"ece{suffix}"], out[f"brier{suffix}"] = float(np.nanmean(eces)), float(np.nanmean(briers))
    return out


def cross_fitted_metrics(folds: Sequence[Mapping[str, tuple]], method: str = "temperature") -> dict:
    """ECE and Brier of out-of-fold samples (per fold ``name -> (probabilities, targets, weights)``) before and
    after the map ``method`` fits on the OTHER folds' samples: calibration scored on samples it was not fitted
    on, as a new case from the same population would see it (the pooled OOF metrics of ``calibration_metrics``
    score the map on its own fitting data). Pooled over the folds; the same keys as there."""
    folds = [{name: (np.asarray(p, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel(),
                     np.ones(np.size(p)) if w is None else np.asarray(w, dtype=np.float64).ravel())
              for name, (p, y, w) in fold.items()} for fold in folds]  # weights None: every sample counts once
    names = sorted({name for fold in folds for name in fold})
    before: dict[str, list] = {n: [] for n in names}
    after: dict[str, list] = {n: [] for n in names}
    for k, fold in enumerate(folds):
        rest = {name: tuple(np.concatenate([f[name][i] for j, f in enumerate(folds) if j != k and name in f])
                            for i in range(3)) for name in fold
                if any(name in f for j, f in enumerate(folds) if j != k)}
        fitted = fit(rest, method)
        for name in rest:
            p, y, w = fold[name]
            before[name].append((p, y, w))
            after[name].append((apply(p, fitted.get(name)), y, w))

    def pooled(chosen: dict[str, list]) -> dict[str, tuple]:
        return {name: tuple(np.concatenate([part[i] for part in parts]) for i in range(3))
                for name, parts in chosen.items() if parts}

    crossed = calibration_metrics(pooled(after))  # the same ECE and Brier as the in-sample figures
    crossed.update({f"{k}_uncalibrated": v for k, v in calibration_metrics(pooled(before)).items()})
    return crossed


def choose_method(folds: Sequence[Mapping[str, tuple]], method: str = "auto") -> tuple[str, dict[str, float]]:
    """The calibration method for these out-of-fold samples (per fold, as ``cross_fitted_metrics`` takes them)
    and the cross-fitted ECE and Brier of each candidate (``ece_platt``, ``brier_temperature``, ``ece_none``...).
    ``auto``: the candidate with the lowest cross-fitted ECE, ``none`` where no map beats the probabilities as
    they are; with fewer than two folds nothing can be scored and ``auto`` means ``temperature`` (one
    parameter per output, the safer fit). Any other method is taken as given and scored."""
    if method not in METHODS:
        raise ValueError(f"calibration method must be one of {', '.join(METHODS)}, got {method!r}")
    folds = [f for f in folds if f]
    scores: dict[str, float] = {}
    if len(folds) >= 2:
        for candidate in (("platt", "temperature") if method == "auto" else (method,) if method != "none" else ()):
            crossed = cross_fitted_metrics(folds, candidate)
            scores[f"ece_{candidate}"], scores[f"brier_{candidate}"] = crossed["ece"], crossed["brier"]
            scores["ece_none"], scores["brier_none"] = crossed["ece_uncalibrated"], crossed["brier_uncalibrated"]
    if method != "auto":
        return method, scores
    if not scores:
        return "temperature", scores
    best = min(("none", "platt", "temperature"), key=lambda m: scores.get(f"ece_{m}", float("inf")))
    return best, scores


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
