"""Weights for a weighted sampler (``data.sampler=weighted``): rare labels are drawn more often."""

from __future__ import annotations

import numpy as np


def inverse_frequency_weights(labels: np.ndarray) -> list[float]:
    """One weight per image from its labels (N, K): 1 / count of its rarest positive label, or
    1 / count of all-negative images for an image with no positive label. Single-label data (one-hot)
    gets 1 / class count, so every class is drawn equally often."""
    labels = np.asarray(labels) > 0
    counts = labels.sum(axis=0)
    negatives = int((~labels.any(axis=1)).sum())
    weights = []
    for row in labels:
        if row.any():
            weights.append(1.0 / float(counts[row].min()))
        else:
            weights.append(1.0 / max(negatives, 1))
    return weights
