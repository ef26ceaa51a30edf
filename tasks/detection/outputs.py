"""What detection writes: the LUNA16 submission CSV, overlay PNGs of the top marks, a slice viewer page
per scan, and the FROC table, curve, plot and summary of an evaluation."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medsight.core.geometry import voxel_size_mm, voxel_to_world, world_to_voxel
from medsight.io.pictures import marks_png
from medsight.io.writers import atomic_path, write_csv, write_json
from medsight.reporting.viewer import CT_WINDOWS, Mark, slice_viewer
from medsight.task import PredictionWriter, Result

from .boxes import boxes_to_nodules
from .froc import FP_RATES, FrocResult

SUBMISSION_HEADER = ("seriesuid", "coordX", "coordY", "coordZ", "probability", "diameter_mm")


def marks_from_boxes(boxes: np.ndarray, scores: np.ndarray, affine_ras: np.ndarray,
                     voxel_centre: float = 0.5) -> np.ndarray:
    """Detected boxes on an image grid -> marks (N, 5) ``x, y, z, probability, diameter_mm``, world mm
    (LPS, as annotations.csv), highest probability first."""
    nodules = boxes_to_nodules(boxes, affine_ras, voxel_centre)
    marks = np.concatenate([nodules[:, :3], np.asarray(scores, dtype=np.float64).reshape(-1, 1), nodules[:, 3:]],
                           axis=1)
    return marks[np.argsort(-marks[:, 3], kind="stable")]


def submission_rows(seriesuid: str, marks: np.ndarray) -> list[dict]:
    return [dict(zip(SUBMISSION_HEADER, (seriesuid, float(m[0]), float(m[1]), float(m[2]), float(m[3]), float(m[4]))))
            for m in np.asarray(marks).reshape(-1, 5)]


def dicom_marks(marks: np.ndarray, source: str, seriesuid: str, out: Path, keep_identifiers: bool, min_probability: float,
                max_marks: int) -> list[Path]:
    """A DICOM SEG referencing the scan's own DICOM series: one sphere segment per mark at or above
    ``min_probability`` (the ``max_marks`` most probable), labelled with its probability and diameter. A SEG,
    not an SR: viewers (OHIF, 3D Slicer) overlay it on the series as it is."""
    from medsight.errors import DataError
    from medsight.io.dicom_out import write_segmentation
    from medsight.io.readers import load

    if not (Path(source).is_dir() or source.lower().endswith((".dcm", ".ima"))):
        raise DataError("--dicom writes a DICOM SEG referencing the input series: this scan is not DICOM (its "
                        "submission rows were written)", source)
    chosen = [m for m in np.asarray(marks).reshape(-1, 5) if m[3] >= min_probability][:max_marks]
    if not chosen:
        return []
    original = load(source)  # the series' own grid: where a DICOM SEG's frames lie
    affine = np.asarray(original.affine, dtype=np.float64)
    shape = tuple(original.shape[1:])
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    world = voxel_to_world(grid.astype(np.float64), affine, space="LPS")
    masks = {}
    for number, mark in enumerate(chosen, start=1):
        inside = np.linalg.norm(world - mark[:3], axis=1) <= max(mark[4] / 2.0, voxel_size_mm(affine).max())
        masks[f"nodule mark {number}: p {mark[3]:.2f}, {mark[4]:.1f} mm"] = inside.reshape(shape)
    return [write_segmentation(masks, affine, source, out / f"{seriesuid}_marks.dcm",
                               description="medsight lung nodule marks", keep_identifiers=keep_identifiers)]


def write_submission(rows: Iterable[dict], path: Path) -> Path:
    """LUNA16's columns (its evaluation script reads them by name), and an ensemble's ``agreement``."""
    rows = list(rows)
    extra = ("agreement",) if rows and "agreement" in rows[0] else ()
    return write_csv(rows, path, SUBMISSION_HEADER + extra)


@dataclass
class OverlaySlice:
    """An axial slice through a mark's centre, shown the radiological way (patient's right on the left,
    anterior at the top), with the mark's circle in pixels of that slice."""

    pixels: np.ndarray = field(repr=False)
    spacing_mm: tuple[float, float]
    circle: tuple[float, float, float, str]
    title: str


@dataclass
class NoduleMarks(Result):
    """One CT: ``marks`` (N, 5) ``x, y, z, probability, diameter_mm``, the centres in world mm (LPS, as LUNA16's
    annotations.csv), highest probability first; ``seriesuid``: the scan's (a file name for a file without one);
    ``source``: the file or DICOM folder read (or the name given for an in-memory image); ``overlays``: the
    slices through the top marks, for the overlay pictures."""

    seriesuid: str = ""
    source: str = ""
    marks: np.ndarray = field(default_factory=lambda: np.zeros((0, 5)), repr=False)
    overlays: list[OverlaySlice] = field(default_factory=list, repr=False)
    #: an ensemble's marks: how many members found each (in ``marks`` order)
    agreement: np.ndarray | None = field(default=None, repr=False)

    def rows(self) -> list[dict]:
        """The submission rows of this scan (``seriesuid,coordX,coordY,coordZ,probability,diameter_mm``, and
        an ensemble's ``agreement``)."""
        rows = submission_rows(self.seriesuid, self.marks)
        if self.agreement is not None:
            for row, count in zip(rows, self.agreement):
                row["agreement"] = int(count)
        return rows


class NoduleSubmission(PredictionWriter):
    """One predict call: the marks of every scan, gathered for one ``submission.csv`` (written by
    ``finish``), and overlay PNGs of each scan's top marks as the scan comes."""

    def __init__(self, out: Path, options=None, dicom_min_probability: float = 0.5, dicom_max_marks: int = 10):
        super().__init__(out, options)
        self.dicom_min_probability, self.dicom_max_marks = dicom_min_probability, dicom_max_marks
        self.rows: list[dict] = []

    def write(self, result: NoduleMarks) -> list[Path]:
        self.rows.extend(result.rows())
        written = []
        if self.options.dicom:
            written += dicom_marks(result.marks, result.source, result.seriesuid, self.out,
                                   self.options.keep_identifiers, self.dicom_min_probability, self.dicom_max_marks)
        for rank, view in enumerate(result.overlays if self.options.pictures else [], start=1):
            written.append(marks_png(view.pixels, view.spacing_mm, [view.circle],
                                     self.out / "overlays" / f"{result.seriesuid}_mark{rank}.png", title=view.title,
                                     window=(0.0, 1.0)))
        if self.options.pictures and _viewer_wanted(result):
            written.append(marks_viewer(result, self.out / "overlays" / f"{result.seriesuid}_viewer.html"))
        return written

    def finish(self) -> list[Path]:
        return [write_submission(self.rows, self.out / "submission.csv")]


def marks_viewer(result: NoduleMarks, path: Path) -> Path:
    """The scan as read (HU, on its own grid) with its marks circled on the slices they cross; the page
    shows the ten most probable first, and its score filter the rest."""
    from medsight.io.readers import load

    scan = load(result.source)
    affine = np.asarray(scan.affine, dtype=np.float64)
    marks = np.asarray(result.marks).reshape(-1, 5)
    centres = world_to_voxel(marks[:, :3], affine, space="LPS") if len(marks) else np.zeros((0, 3))
    circles = [Mark(tuple(centre), mark[4] / 2.0, f"p {mark[3]:.2f}, {mark[4]:.1f} mm", float(mark[3]))
               for centre, mark in zip(centres, marks)]
    return slice_viewer(scan[0].numpy(), affine, path, marks=circles, windows=CT_WINDOWS,
                        title=f"{result.seriesuid}: {len(circles)} marks")


def _viewer_wanted(result: NoduleMarks) -> bool:
    """``infer.viewer`` with overlay pictures on (``infer.overlays_per_scan`` > 0), for a scan that can be read again."""
    infer = getattr(getattr(result.task, "config", None), "infer", None)
    return bool(result.source) and getattr(infer, "viewer", True) and getattr(infer, "overlays_per_scan", 1) > 0


def overlay_slices(image: np.ndarray, affine_ras: np.ndarray, marks: np.ndarray, seriesuid: str,
                   count: int) -> list[OverlaySlice]:
    """For each of the ``count`` top marks, the axial slice through its centre with a circle of its diameter.

    image: (X, Y, Z) on the grid ``affine_ras`` (oriented RAS by the pipeline); marks: (N, 5) world LPS.
    """
    views = []
    spacing = voxel_size_mm(affine_ras)
    for rank, mark in enumerate(np.asarray(marks).reshape(-1, 5)[:count], start=1):
        i, j, k = world_to_voxel(mark[:3], affine_ras, space="LPS")[0]
        slice_index = int(np.clip(round(k), 0, image.shape[2] - 1))
        # RAS array -> LPS array: [x, y].T shows rows from anterior, columns from the patient's right.
        axial = np.ascontiguousarray(image[::-1, ::-1, slice_index])
        x, y = image.shape[0] - 1 - i, image.shape[1] - 1 - j
        radius = max(mark[4] / 2.0 / spacing[0], 2.0)
        title = (f"...{seriesuid[-12:]} mark {rank}: p={mark[3]:.2f}, {mark[4]:.1f} mm at "
                 f"({mark[0]:.1f}, {mark[1]:.1f}, {mark[2]:.1f}) mm LPS")
        views.append(OverlaySlice(axial, (float(spacing[0]), float(spacing[1])), (x, y, radius, f"{mark[3]:.2f}"),
                                  title))
    return views


def write_froc(result: FrocResult, out: Path, title: str = "FROC") -> list[Path]:
    """``froc.csv`` (the seven operating points), ``froc_curve.csv``, ``froc.png`` and ``summary.json``."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, rate in enumerate(FP_RATES):
        row = {"fps_per_scan": rate, "sensitivity": float(result.at_rates[index])}
        if result.ci_low is not None:
            row.update(ci_low=float(result.ci_low[index]), ci_high=float(result.ci_high[index]))
        rows.append(row)
    columns = ["fps_per_scan", "sensitivity"] + (["ci_low", "ci_high"] if result.ci_low is not None else [])
    written = [write_csv(rows, out / "froc.csv", columns)]
    curve = [{"fps_per_scan": float(f), "sensitivity": float(s), "threshold": float(t)}
             for f, s, t in zip(result.fps_per_scan, result.sensitivity, result.thresholds)]
    written.append(write_csv(curve, out / "froc_curve.csv", ["fps_per_scan", "sensitivity", "threshold"]))
    written.append(_froc_png(result, out / "froc.png", title))
    summary = {
        "cpm": result.cpm,
        "sensitivity": {f"{rate:g}": float(v) for rate, v in zip(FP_RATES, result.at_rates)},
        "scans": result.scans, "nodules": result.nodules, "hits": result.hits,
        "false_positives": result.false_positives, "ignored_on_excluded": result.ignored_on_excluded,
        "duplicate_hits": result.duplicate_hits, "dropped_over_cap": result.dropped_over_cap,
        "notes": result.notes,
    }
    if result.cpm_ci is not None:
        summary["bootstrap"] = {
            "samples": result.bootstrap_samples, "confidence": result.confidence,
            "cpm": {"mean": result.cpm_ci[0], "low": result.cpm_ci[1], "high": result.cpm_ci[2]},
            "sensitivity_low": {f"{r:g}": float(v) for r, v in zip(FP_RATES, result.ci_low)},
            "sensitivity_high": {f"{r:g}": float(v) for r, v in zip(FP_RATES, result.ci_high)},
        }
    written.append(write_json(summary, out / "summary.json"))
    return written


def _froc_png(result: FrocResult, path: Path, title: str) -> Path:
    from matplotlib.figure import Figure

    grid = np.geomspace(FP_RATES[0], FP_RATES[-1], 200)
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    if np.all(np.isfinite(result.sensitivity)):
        ax.plot(grid, np.interp(grid, result.fps_per_scan, result.sensitivity), lw=2, label=f"CPM {result.cpm:.3f}")
    ax.plot(FP_RATES, result.at_rates, "o", color="C0")
    if result.ci_low is not None:
        ax.fill_between(FP_RATES, result.ci_low, result.ci_high, alpha=0.2, color="C0",
                        label=f"{result.confidence:.0%} bootstrap interval")
    ax.set_xscale("log", base=2)
    ax.set_xticks(FP_RATES, [f"{r:g}" for r in FP_RATES])
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("average false positives per scan")
    ax.set_ylabel("sensitivity")
    ax.set_title(f"{title}: {result.scans} scans, {result.nodules} nodules")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path


def froc_table(result: FrocResult) -> str:
    """The seven operating points and the CPM as a text table (for people and logs)."""
    lines = ["FPs/scan  sensitivity" + ("  95% CI" if result.ci_low is not None else "")]
    for index, rate in enumerate(FP_RATES):
        line = f"{rate:8g}  {result.at_rates[index]:11.4f}"
        if result.ci_low is not None:
            line += f"  [{result.ci_low[index]:.4f}, {result.ci_high[index]:.4f}]"
        lines.append(line)
    line = f"{'CPM':>8s}  {result.cpm:11.4f}"
    if result.cpm_ci is not None:
        line += f"  [{result.cpm_ci[1]:.4f}, {result.cpm_ci[2]:.4f}]"
    lines.append(line)
    return "\n".join(lines)


def arrays_by_uid(uids: Sequence[str], arrays: Sequence) -> dict[str, np.ndarray]:
    return {uid: np.asarray(a, dtype=np.float64).reshape(-1, 4) for uid, a in zip(uids, arrays)}
