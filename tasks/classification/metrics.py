"""Validation metrics from scikit-learn: per-label AUROC, decision thresholds chosen on validation
(Youden's J or best F1), sensitivity, specificity, precision and F1 at those thresholds; accuracy and
the confusion matrix for single-label data.

Arrays: ``probabilities`` and ``labels`` are (N, K): N images, K labels in the task's order; labels
are 0/1 (multi-hot for multi-label data, one-hot for single-label data).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

DEFAULT_THRESHOLD = 0.5


def has_both_classes(column: np.ndarray) -> bool:
    return 0 < int(np.sum(column)) < len(column)


def auroc_per_label(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(K,) AUROC of each label; NaN where validation holds only positives or only negatives."""
    return np.asarray([roc_auc_score(labels[:, k], probabilities[:, k]) if has_both_classes(labels[:, k])
                       else np.nan for k in range(labels.shape[1])])


def threshold_for(scores: np.ndarray, truth: np.ndarray, rule: str) -> float:
    """The probability at or above which a label is called positive, for one label with both classes.

    youden: the ROC point maximising sensitivity + specificity - 1; f1: the point of best F1.
    """
    if rule == "youden":
        fpr, tpr, thresholds = roc_curve(truth, scores)
        finite = np.isfinite(thresholds)  # roc_curve's first threshold is +inf (nothing positive)
        best = int(np.argmax((tpr - fpr)[finite]))
        return float(thresholds[finite][best])
    if rule == "f1":
        precision, recall, thresholds = precision_recall_curve(truth, scores)
        precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
        f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(precision),
                       where=(precision + recall) > 0)
        return float(thresholds[int(np.argmax(f1))])
    raise ValueError(f"unknown threshold rule {rule!r}")


def choose_thresholds(probabilities: np.ndarray, labels: np.ndarray, rule: str,
                      fallback: Sequence[float] | None = None) -> list[float]:
    """(K,) thresholds; a label with one class only in validation keeps ``fallback`` (or 0.5)."""
    fallback = list(fallback) if fallback is not None else [DEFAULT_THRESHOLD] * labels.shape[1]
    return [threshold_for(probabilities[:, k], labels[:, k], rule) if has_both_classes(labels[:, k]) else
            float(fallback[k]) for k in range(labels.shape[1])]


def decisions(probabilities: np.ndarray, thresholds: Sequence[float] | None, multi_label: bool) -> np.ndarray:
    """(N, K) 0/1 calls: probability >= threshold per label (multi-label), or the argmax (single-label)."""
    if multi_label:
        return (probabilities >= np.asarray(thresholds)[None, :]).astype(np.int64)
    calls = np.zeros(probabilities.shape, dtype=np.int64)
    calls[np.arange(len(probabilities)), probabilities.argmax(axis=1)] = 1
    return calls


def operating_points(calls: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Per label (K,): sensitivity, specificity, precision, F1 of 0/1 ``calls`` against ``labels``;
    NaN where undefined (sensitivity without positives, specificity without negatives)."""
    out: dict[str, list[float]] = {"sensitivity": [], "specificity": [], "precision": [], "f1": []}
    for k in range(labels.shape[1]):
        truth, called = labels[:, k].astype(np.int64), calls[:, k]
        positives = int(truth.sum())
        out["sensitivity"].append(recall_score(truth, called, zero_division=0) if positives else np.nan)
        out["specificity"].append(recall_score(truth, called, pos_label=0, zero_division=0)
                                  if positives < len(truth) else np.nan)
        out["precision"].append(precision_score(truth, called, zero_division=0) if called.any() or positives
                                else np.nan)
        out["f1"].append(f1_score(truth, called, zero_division=0) if called.any() or positives else np.nan)
    return {key: np.asarray(values, dtype=np.float64) for key, values in out.items()}


def _mean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def summarise(probabilities: np.ndarray, labels: np.ndarray, names: Sequence[str], thresholds: Sequence[float] | None,
              multi_label: bool) -> dict[str, float]:
    """The metrics logged per validation and written by ``evaluate``: means, then AUROC per label."""
    auroc = auroc_per_label(probabilities, labels)
    points = operating_points(decisions(probabilities, thresholds, multi_label), labels)
    metrics = {"mean_auroc": _mean(auroc)}
    metrics.update({f"mean_{key}": _mean(values) for key, values in points.items()})
    if not multi_label:
        metrics["accuracy"] = float(accuracy_score(labels.argmax(axis=1), probabilities.argmax(axis=1)))
    metrics.update({f"auroc_{name}": float(value) for name, value in zip(names, auroc)})
    return metrics


def per_label_table(probabilities: np.ndarray, labels: np.ndarray, names: Sequence[str],
                    thresholds: Sequence[float] | None, multi_label: bool) -> list[dict]:
    """One row per label: positives, AUROC, threshold and the operating point it gives."""
    auroc = auroc_per_label(probabilities, labels)
    points = operating_points(decisions(probabilities, thresholds, multi_label), labels)
    rows = []
    for k, name in enumerate(names):
        rows.append({"label": name, "positives": int(labels[:, k].sum()), "images": len(labels),
                     "auroc": float(auroc[k]),
                     "threshold": float(thresholds[k]) if multi_label else "argmax",
                     **{key: float(values[k]) for key, values in points.items()}})
    return rows


def single_label_confusion(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(K, K) counts: row = true class, column = predicted class (argmax)."""
    k = labels.shape[1]
    return confusion_matrix(labels.argmax(axis=1), probabilities.argmax(axis=1), labels=list(range(k)))
