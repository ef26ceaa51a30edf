"""What ``predict`` writes: ``predictions.csv`` (one row per picture: one probability per label and
the labels called positive) and Grad-CAM heatmap PNGs, and what ``evaluate`` writes beside its
metrics (per-picture and per-label tables, ROC curves, a confusion matrix for single-label data)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from medsight.io.pictures import heatmap_png
from medsight.io.writers import atomic_path, write_csv
from medsight.task import PredictionWriter, Result
from medsight.tasks.classification.labels import LabelSet
from medsight.tasks.classification.metrics import has_both_classes, per_label_table, single_label_confusion

PREDICTIONS_CSV = "predictions.csv"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_stem(identifier: str) -> str:
    """A file-name stem from a picture's id (``sub/dir/00000001_000.png`` -> ``sub_dir_00000001_000``)."""
    stem = identifier.rsplit(".", 1)[0] if "." in Path(identifier).name else identifier
    return _UNSAFE.sub("_", stem).strip("_") or "image"


def decision_column(labels: LabelSet) -> str:
    return "findings" if labels.multi_label else "prediction"


def called_labels(probabilities: np.ndarray, labels: LabelSet, thresholds: Sequence[float] | None) -> str:
    """Multi-label: the labels at or above their threshold, '|'-joined (the negative name if none);
    single-label: the most probable class."""
    if not labels.multi_label:
        return labels.names[int(np.argmax(probabilities))]
    positive = [name for name, p, t in zip(labels.names, probabilities, thresholds) if p >= t]
    return "|".join(positive) or labels.negative


def prediction_row(image: str, probabilities: np.ndarray, labels: LabelSet,
                   thresholds: Sequence[float] | None) -> dict:
    row = {"image": image}
    row.update({name: f"{float(p):.6f}" for name, p in zip(labels.names, probabilities)})
    row[decision_column(labels)] = called_labels(probabilities, labels, thresholds)
    return row


def write_predictions(rows: list[dict], labels: LabelSet, out: Path) -> Path:
    """One row per picture; an ensemble's rows also carry each label's spread over the members."""
    spread = [f"{name}_spread" for name in labels.names] if rows and f"{labels.names[0]}_spread" in rows[0] else []
    return write_csv(rows, out / PREDICTIONS_CSV, ["image", *labels.names, decision_column(labels), *spread])


def write_cams(picture: np.ndarray, cams: np.ndarray, label_indices: Sequence[int], probabilities: np.ndarray,
               labels: LabelSet, identifier: str, out: Path) -> list[Path]:
    """One PNG per heatmap: picture (H, W) as the model saw it, heatmaps (k, H, W) in 0..1."""
    written = []
    for cam, index in zip(cams, label_indices):
        name = labels.names[int(index)]
        path = out / "cam" / f"{safe_stem(identifier)}__{safe_stem(name)}.png"
        title = f"{identifier}: {name} (p = {float(probabilities[int(index)]):.2f})"
        written.append(heatmap_png(picture, cam, path, title=title))
    return written


@dataclass
class Findings(Result):
    """One picture: ``probabilities`` (one per label, in ``labels`` order), ``positive`` (multi-label: the labels
    at or above their threshold chosen on validation; single-label: the most probable class), and, when asked
    for (``cam=True``), ``cams``: label -> Grad-CAM heatmap (H, W) in 0..1 over ``picture`` (H, W), the
    picture as the network saw it. ``source``: the file (or the name given for an in-memory picture)."""

    source: str = ""
    labels: tuple[str, ...] = ()
    probabilities: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    positive: list[str] = field(default_factory=list)
    decision: str = ""
    thresholds: tuple[float, ...] | None = None
    cams: dict[str, np.ndarray] | None = field(default=None, repr=False)
    picture: np.ndarray | None = field(default=None, repr=False)
    #: an ensemble's per-label standard deviation of its members' probabilities
    spread: np.ndarray | None = field(default=None, repr=False)

    def probability(self, label: str) -> float:
        return float(self.probabilities[list(self.labels).index(label)])


def findings(prediction: dict, source: str, identifier: str, labels: LabelSet, thresholds: Sequence[float] | None,
             picture: np.ndarray | None, task=None) -> Findings:
    probabilities = np.asarray(prediction["probabilities"], dtype=np.float32)
    decision = called_labels(probabilities, labels, thresholds)
    positive = [] if decision == labels.negative and labels.multi_label else decision.split("|")
    cams = None
    if "cams" in prediction:
        cams = {labels.names[int(index)]: np.asarray(cam, dtype=np.float32)
                for cam, index in zip(prediction["cams"], prediction["cam_labels"])}
    spread = prediction.get("spread")
    spread = None if spread is None else np.asarray(spread, dtype=np.float32)
    quality = {} if spread is None else {"uncertainty": round(float(spread.max()), 5)}
    if prediction.get("score") is not None:
        quality["score"] = round(float(prediction["score"]), 5)
    return Findings(id=identifier, source=source, labels=tuple(labels.names), probabilities=probabilities,
                    positive=positive, decision=decision, task=task,
                    thresholds=tuple(thresholds) if thresholds is not None else None, cams=cams,
                    picture=picture if cams is not None else None, spread=spread, quality=quality)


class PicturePredictions(PredictionWriter):
    """One predict call: a row per picture for ``predictions.csv`` (written by ``finish``), Grad-CAM PNGs
    as each picture comes."""

    def __init__(self, out: Path, labels: LabelSet, options=None):
        super().__init__(out, options)
        self.labels = labels
        self.rows: list[dict] = []

    def write(self, result: Findings) -> list[Path]:
        row = {"image": result.source}
        row.update({name: f"{float(p):.6f}" for name, p in zip(self.labels.names, result.probabilities)})
        row[decision_column(self.labels)] = result.decision
        if result.spread is not None:
            row.update({f"{name}_spread": f"{float(v):.6f}" for name, v in zip(self.labels.names, result.spread)})
        self.rows.append(row)
        if not result.cams or not self.options.pictures:
            return []
        indices = [list(self.labels.names).index(name) for name in result.cams]
        return write_cams(result.picture, np.stack(list(result.cams.values())), indices, result.probabilities,
                          self.labels, result.id, self.out)

    def finish(self) -> list[Path]:
        return [write_predictions(self.rows, self.labels, self.out)] if self.rows else []


# -- evaluation files ------------------------------------------------------------------------------
def image_rows(ids: Sequence[str], probabilities: np.ndarray, truth: np.ndarray, labels: LabelSet,
               thresholds: Sequence[float] | None) -> list[dict]:
    """One row per evaluated picture: its truth, one probability per label, and the decision."""
    rows = []
    for identifier, p, y in zip(ids, probabilities, truth):
        row = {"image": identifier, "truth": "|".join(n for n, v in zip(labels.names, y) if v) or labels.negative}
        row.update(prediction_row(identifier, p, labels, thresholds))
        rows.append(row)
    return rows


def write_evaluation_files(ids: Sequence[str], probabilities: np.ndarray, truth: np.ndarray, labels: LabelSet,
                           thresholds: Sequence[float] | None, out: Path) -> list[Path]:
    """per_image.csv, per_label.csv, roc.png and (single-label) confusion_matrix.csv under ``out``."""
    names = list(labels.names)
    rows = image_rows(ids, probabilities, truth, labels, thresholds)
    written = [write_csv(rows, out / "per_image.csv", ["image", "truth", *names, decision_column(labels)])]
    table = per_label_table(probabilities, truth, names, thresholds, labels.multi_label)
    written.append(write_csv(table, out / "per_label.csv", list(table[0])))
    written.append(roc_png(probabilities, truth, names, out / "roc.png"))
    if not labels.multi_label:
        matrix = single_label_confusion(probabilities, truth)
        rows = [{"truth \\ predicted": name, **{other: int(matrix[i, j]) for j, other in enumerate(names)}}
                for i, name in enumerate(names)]
        written.append(write_csv(rows, out / "confusion_matrix.csv", ["truth \\ predicted", *names]))
    return written


def roc_png(probabilities: np.ndarray, truth: np.ndarray, names: Sequence[str], path: Path) -> Path:
    """ROC curve of every label that has positives and negatives, AUROC in the legend."""
    from sklearn.metrics import roc_auc_score

    fig = Figure(figsize=(6.5, 6))
    ax = fig.subplots()
    for k, name in enumerate(names):
        if not has_both_classes(truth[:, k]):
            continue
        fpr, tpr, _ = roc_curve(truth[:, k], probabilities[:, k])
        ax.plot(fpr, tpr, linewidth=1.2, label=f"{name} ({roc_auc_score(truth[:, k], probabilities[:, k]):.3f})")
    ax.plot([0, 1], [0, 1], color="gray", linestyle=":", linewidth=1)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title("ROC per label (AUROC)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    return path
