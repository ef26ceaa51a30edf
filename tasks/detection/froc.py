"""FROC and CPM by the official LUNA16 rules (``noduleCADEvaluationLUNA16.py``), without a model.

The rules, as the official script applies them:

- at most ``max_marks_per_scan`` (100) marks per scan are scored: when a scan has more, only marks
  whose probability is above the 101st highest are kept;
- a mark hits a nodule when its centre lies strictly within the nodule's radius (diameter / 2) of
  the nodule's centre; a negative diameter (LUNA16's unmeasured findings) counts as 10 mm;
- several hits on one nodule count once, with the highest probability; a nodule without a hit is a
  miss (it lowers sensitivity and is never reached by lowering the threshold);
- marks on excluded findings (``annotations_excluded.csv``) are ignored, not false positives;
- every other mark is a false positive; FPs per scan come from the ROC curve over all remaining
  marks (``sklearn.metrics.roc_curve``), divided by the number of scans;
- sensitivity is read off that curve (linear interpolation) at 1/8, 1/4, 1/2, 1, 2, 4 and 8 FPs per
  scan; the CPM is their mean;
- bootstrap confidence intervals resample scans with replacement.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medsight.errors import DataError

FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
#: diameter used for findings listed with a negative diameter
UNKNOWN_DIAMETER_MM = 10.0
MAX_MARKS_PER_SCAN = 100
SUBMISSION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "probability")
#: a miss enters the analysis with the lowest possible probability, so no threshold reaches it
MISSED = -math.inf


@dataclass
class ScanOutcome:
    """One scan's contribution: ``entries`` rows ``(is_nodule, probability, scored)``, as the official
    script's FROCGTList / FROCProbList / excludeList (``scored`` False for missed nodules)."""

    entries: np.ndarray  # (E, 3) float64
    hits: int = 0
    misses: int = 0
    false_positives: int = 0
    ignored_on_excluded: int = 0
    duplicate_hits: int = 0
    dropped_over_cap: int = 0


@dataclass
class FrocResult:
    fps_per_scan: np.ndarray  # the FROC curve, (K,)
    sensitivity: np.ndarray  # (K,)
    thresholds: np.ndarray  # (K,) probability threshold of each curve point
    at_rates: np.ndarray  # (7,) sensitivity at FP_RATES
    cpm: float
    scans: int
    nodules: int
    hits: int
    false_positives: int
    ignored_on_excluded: int
    duplicate_hits: int
    dropped_over_cap: int
    #: bootstrap: (7,) lower/upper bounds and mean of the sensitivities, and the CPM's
    ci_low: np.ndarray | None = None
    ci_high: np.ndarray | None = None
    ci_mean: np.ndarray | None = None
    cpm_ci: tuple[float, float, float] | None = None  # (mean, low, high)
    confidence: float = 0.95
    bootstrap_samples: int = 0
    notes: list[str] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        """Flat metrics: ``cpm``, ``sensitivity_at_<rate>_fps``, counts; CIs when bootstrapped."""
        out = {"cpm": float(self.cpm)}
        for rate, value in zip(FP_RATES, self.at_rates):
            out[f"sensitivity_at_{rate:g}_fps"] = float(value)
        if self.cpm_ci is not None:
            out["cpm_ci_low"], out["cpm_ci_high"] = float(self.cpm_ci[1]), float(self.cpm_ci[2])
        out.update(scans=float(self.scans), nodules=float(self.nodules), hits=float(self.hits),
                   false_positives_per_scan=self.false_positives / max(self.scans, 1))
        return out


# -- matching ------------------------------------------------------------------------------------
def cap_marks(marks: np.ndarray, max_marks: int = MAX_MARKS_PER_SCAN) -> np.ndarray:
    """The official cap: with more than ``max_marks`` marks, keep those above the (max+1)-th probability.

    marks: (M, 4) rows ``x, y, z, probability``.
    """
    if max_marks <= 0 or len(marks) <= max_marks:
        return marks
    cut = np.sort(marks[:, 3])[::-1][max_marks]
    return marks[marks[:, 3] > cut]


def within(marks: np.ndarray, nodule: np.ndarray) -> np.ndarray:
    """Which marks (rows ``x, y, z, ...``) lie inside the nodule's sphere (``x, y, z, diameter_mm``; an
    unknown diameter: the official script's default)."""
    diameter = nodule[3] if nodule[3] >= 0 else UNKNOWN_DIAMETER_MM
    squared = ((marks[:, :3] - nodule[None, :3]) ** 2).sum(axis=1)
    return squared < (diameter / 2.0) ** 2


def match_scan(marks: np.ndarray, nodules: np.ndarray, excluded: np.ndarray,
               max_marks: int = MAX_MARKS_PER_SCAN) -> ScanOutcome:
    """Match one scan's marks to its nodules by the official rules.

    marks: (M, 4) ``x, y, z, probability``; nodules, excluded: (N, 4) ``x, y, z, diameter_mm``; all
    world mm in one convention (LUNA16: LPS).
    """
    marks = np.asarray(marks, dtype=np.float64).reshape(-1, 4)
    kept = cap_marks(marks, max_marks)
    outcome = ScanOutcome(entries=np.zeros((0, 3)), dropped_over_cap=len(marks) - len(kept))
    unused = np.ones(len(kept), dtype=bool)  # marks not (yet) a hit nor ignored: the false positives
    rows = []
    for nodule in np.asarray(nodules, dtype=np.float64).reshape(-1, 4):
        inside = within(kept, nodule)
        if inside.any():
            rows.append((1.0, kept[inside, 3].max(), 1.0))
            outcome.hits += 1
            outcome.duplicate_hits += int(inside.sum()) - 1
            unused &= ~inside
        else:
            rows.append((1.0, MISSED, 0.0))
            outcome.misses += 1
    for finding in np.asarray(excluded, dtype=np.float64).reshape(-1, 4):
        inside = within(kept, finding) & unused
        outcome.ignored_on_excluded += int(inside.sum())
        unused &= ~inside
    rows.extend((0.0, probability, 1.0) for probability in kept[unused, 3])
    outcome.false_positives = int(unused.sum())
    outcome.entries = np.asarray(rows, dtype=np.float64).reshape(-1, 3)
    return outcome


# -- the curve -----------------------------------------------------------------------------------
def froc_curve(entries: np.ndarray, scans: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(FPs per scan, sensitivity, thresholds) from all scans' entries, as the official computeFROC."""
    from sklearn.metrics import roc_curve

    entries = np.asarray(entries, dtype=np.float64).reshape(-1, 3)
    total_nodules = entries[:, 0].sum()
    scored = entries[entries[:, 2] > 0]
    detected = scored[:, 0].sum()
    false_marks = len(scored) - detected
    if total_nodules == 0:
        return np.zeros(1), np.full(1, np.nan), np.full(1, np.inf)
    if detected == 0:  # no hit at all: sensitivity is 0 at every rate
        return np.asarray([0.0, false_marks / max(scans, 1)]), np.zeros(2), np.asarray([np.inf, -np.inf])
    if false_marks == 0:  # no false positive: the official script's border case
        return np.zeros(2), np.asarray([0.0, detected / total_nodules]), np.asarray([np.inf, scored[:, 1].min()])
    fpr, tpr, thresholds = roc_curve(scored[:, 0], scored[:, 1])
    return fpr * false_marks / max(scans, 1), tpr * detected / total_nodules, thresholds


def sensitivities_at(fps: np.ndarray, sensitivity: np.ndarray, rates: Sequence[float] = FP_RATES) -> np.ndarray:
    """Sensitivity of the curve at each FP rate (linear interpolation, the official ``np.interp``)."""
    return np.interp(np.asarray(rates, dtype=np.float64), fps, sensitivity)


# -- evaluation ----------------------------------------------------------------------------------
def evaluate(marks: Mapping[str, np.ndarray], nodules: Mapping[str, np.ndarray], excluded: Mapping[str, np.ndarray],
             seriesuids: Sequence[str], max_marks: int = MAX_MARKS_PER_SCAN, bootstrap: int = 0, seed: int = 0,
             confidence: float = 0.95) -> FrocResult:
    """FROC and CPM over the scans ``seriesuids`` (marks and nodules of other scans are not scored).

    marks: seriesuid -> (M, 4) ``x, y, z, probability``; nodules, excluded: seriesuid -> (N, 4)
    ``x, y, z, diameter_mm``.
    """
    uids = list(dict.fromkeys(seriesuids))
    if not uids:
        raise ValueError("no scans to score")
    empty = np.zeros((0, 4))
    outcomes = [match_scan(marks.get(uid, empty), nodules.get(uid, empty), excluded.get(uid, empty), max_marks)
                for uid in uids]
    entries = np.concatenate([o.entries for o in outcomes])
    fps, sens, thresholds = froc_curve(entries, len(uids))
    at_rates = sensitivities_at(fps, sens)
    result = FrocResult(
        fps_per_scan=fps, sensitivity=sens, thresholds=thresholds, at_rates=at_rates, cpm=float(np.mean(at_rates)),
        scans=len(uids), nodules=int(entries[:, 0].sum()), hits=sum(o.hits for o in outcomes),
        false_positives=sum(o.false_positives for o in outcomes),
        ignored_on_excluded=sum(o.ignored_on_excluded for o in outcomes),
        duplicate_hits=sum(o.duplicate_hits for o in outcomes),
        dropped_over_cap=sum(o.dropped_over_cap for o in outcomes), confidence=confidence,
    )
    if result.nodules == 0:
        result.notes.append("no nodules in the scored scans: sensitivity and CPM are undefined")
    if bootstrap > 0 and result.nodules > 0:
        _bootstrap(result, [o.entries for o in outcomes], bootstrap, seed, confidence)
    return result


def _order_statistic_interval(values: np.ndarray, confidence: float) -> tuple[float, float, float]:
    """(mean, lower, upper) as the official compute_mean_ci: sorted values at floor(p * n)."""
    ordered = np.sort(values)
    tail = (1.0 - confidence) / 2.0
    n = len(ordered)
    return (float(ordered.mean()), float(ordered[int(math.floor(tail * n))]),
            float(ordered[min(int(math.floor((1.0 - tail) * n)), n - 1)]))


def _bootstrap(result: FrocResult, per_scan: list[np.ndarray], samples: int, seed: int, confidence: float) -> None:
    rng = np.random.default_rng(seed)
    scans = len(per_scan)
    rows = []
    for _ in range(samples):
        picks = rng.integers(scans, size=scans)
        entries = np.concatenate([per_scan[i] for i in picks])
        if entries[:, 0].sum() == 0:  # a resample without any nodule has no sensitivity: left out
            continue
        fps, sens, _ = froc_curve(entries, scans)
        rows.append(sensitivities_at(fps, sens))
    table = np.asarray(rows).reshape(-1, len(FP_RATES))
    if len(table) == 0:
        return
    stats = [_order_statistic_interval(table[:, j], confidence) for j in range(len(FP_RATES))]
    result.ci_mean = np.asarray([s[0] for s in stats])
    result.ci_low = np.asarray([s[1] for s in stats])
    result.ci_high = np.asarray([s[2] for s in stats])
    result.cpm_ci = _order_statistic_interval(table.mean(axis=1), confidence)
    result.bootstrap_samples = samples


# -- files ---------------------------------------------------------------------------------------
def _float(value: str, where: str, column: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{column} {value!r} is not a number", where) from None
    if not math.isfinite(number):
        raise DataError(f"{column} is {value}, not a finite number", where)
    return number


def read_submission(path: Path) -> dict[str, np.ndarray]:
    """A LUNA16 submission CSV (``seriesuid,coordX,coordY,coordZ,probability``, extra columns allowed)
    -> seriesuid -> (M, 4) ``x, y, z, probability``."""
    path = Path(path)
    if not path.is_file():
        raise DataError("predictions file not found", path)
    rows: dict[str, list[tuple[float, ...]]] = {}
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in SUBMISSION_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"missing column(s) {', '.join(missing)}; a LUNA16 submission has "
                            f"{','.join(SUBMISSION_COLUMNS)}", path)
        for number, row in enumerate(reader, start=2):
            where = f"{path}:{number}"
            uid = (row["seriesuid"] or "").strip()
            if not uid:
                raise DataError("empty seriesuid", where)
            rows.setdefault(uid, []).append(tuple(_float(row[c], where, c) for c in SUBMISSION_COLUMNS[1:]))
    return {uid: np.asarray(values, dtype=np.float64).reshape(-1, 4) for uid, values in rows.items()}


def read_seriesuids(path: Path) -> list[str]:
    """One seriesuid per line (the official ``seriesuids.csv``: no header; a ``seriesuid`` header is skipped)."""
    path = Path(path)
    if not path.is_file():
        raise DataError("seriesuid list not found", path)
    uids = []
    for line in path.read_text().splitlines():
        uid = line.split(",")[0].strip()
        if uid and uid != "seriesuid":
            uids.append(uid)
    if not uids:
        raise DataError("the seriesuid list is empty", path)
    return uids


def nodule_arrays(table: Mapping[str, Iterable]) -> dict[str, np.ndarray]:
    """seriesuid -> list of ``Nodule`` (``medsight.datasets.luna16``) -> seriesuid -> (N, 4) array."""
    return {uid: np.asarray([[n.x, n.y, n.z, n.diameter_mm] for n in items], dtype=np.float64).reshape(-1, 4)
            for uid, items in table.items()}
