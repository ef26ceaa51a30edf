"""Weights for a weighted sampler: rare labels drawn more often (``data.sampler=weighted``), or every
patient as often as every other (``data.sampler=patient``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence

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


def per_group_weights(groups: Sequence[Hashable]) -> list[float]:
    """One weight per image: 1 / the number of images of its group (patient), so each patient's images
    together weigh as much as any other patient's. NIH follow-up series give some patients dozens of
    pictures; unweighted, a model learns those patients (and their identity) far more than the rest."""
    counts = Counter(groups)
    return [1.0 / counts[group] for group in groups]
