"""Out-of-distribution flags: is an input like the data the model was trained on?

A training run stores ``domain`` in every checkpoint (``medsight.training.provenance.training_domain``): what its
task measured on a sample of its training and validation cases (``Task.domain_case``), summarised by
``summarise``. ``predict`` measures each input the same way, before reading it for the network, and ``reasons``
compares: each reason is one short phrase, and ``screen`` logs ``<file>: unlike the training data: <reasons>``,
puts the reasons in ``result.quality["domain"]`` ("" when the input is like the training data) and, with
``strict_domain``, refuses the input as a failed case. A checkpoint without a summary (trained before it was
kept, or imported from elsewhere) is not compared: a debug line says so.

The facts, by name (a task measures those that matter to its model; a rule applies only when both the summary
and the input have its fact):

- ``modality``: the DICOM Modality, else told from the values: CT when at least 1% of voxels lie at the -1000 HU
  of air and few below it (padding aside), MR otherwise. Flagged when never seen in training: a CT in HU has air
  and nothing under it; an MRI, raw or z-scored, has no such floor at -1000.
- ``spacing_mm``: voxel size along x, y, z (RAS). Flagged when an axis is more than 2x the coarsest training
  case's: within 2x, resampling and the training zoom cover it; thicker slices make the resampling invent detail.
- ``extent_mm``: the field of view (segmentation: the brain's box) along x, y, z. Flagged under half the smallest
  or over twice the largest training case's: another body part or a slab, not another patient.
- ``nonbackground_ml``: signal above a constant background, mL. Flagged over 1.5x the largest training case's: a
  skull-stripped brain holds 1.1-1.7 L (the real BRATS cases), a head keeps scalp, skull and face around it, and
  noisy air leaves no constant background at all.
- ``intensity_spread``: the 0.5-99.5 percentile spread of the values above a constant padding, in the task's
  units. Flagged when off by more than 3x: in absolute units (HU) a CT x1000 or a normalised CT is another scale,
  while padding and bone keep a real CT within 2x.
- ``bit_depth``: bits per value (picture header, DICOM BitsStored). Flagged outside the training range: 16-bit
  detector values are not ChestX-ray14's 8-bit presentation pictures.
- ``view``: the X-ray view (DICOM ViewPosition, or a ChestX-ray14 table's View Position). Flagged when never seen
  in training: a lateral X-ray for a frontal model.
- ``aspect``: picture height / width. Flagged under 1/1.5 or over 1.5x the training range: pictures are resized
  square, so a wide one is squeezed.

What is not compared, and why: MRI intensities (the segmentation model z-scores each case inside the brain, so an
image x1000 reaches the network unchanged; their percentiles are stored, not compared); an X-ray's view from the
picture alone (aspect and symmetry do not tell a lateral from a frontal reliably: no view known, no check).

Cost: a task measures header facts and statistics on a strided sample of at most ``SAMPLE_VOXELS`` voxels. A
volume is not read twice: a task with ``domain_on_load`` (segmentation, detection) measures it where predict reads
it (``DomainTapd``, right after its reading steps, in the reader threads or workers), and its verdict is given as
its result comes; a picture's facts are its header's, read before predicting (``bench/domain_check.py`` times it).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medsight.errors import unwrap
from medsight.inference.predict import FACTS, Failure

log = logging.getLogger(__name__)

VERSION = 1
#: voxels whose values a case's statistics are taken from (a regular strided grid)
SAMPLE_VOXELS = 200_000
#: a CT in Hounsfield units: air at about -1000 (lung down to -700); MRI values never go there
AIR_HU = (-1100.0, -700.0)
AIR_FRACTION = 0.01
#: a CT's padding outside its field of view (-2048, -3024...): left out of the modality cue
PADDING_HU = -1900.0
#: the tolerances of the table above (voxel size, field of view, signal volume, value spread, aspect), as factors
COARSER, EXTENT, SIGNAL, SCALE, ASPECT = 2.0, 2.0, 1.5, 3.0, 1.5
LATERAL_VIEWS = {"LL", "RL", "LAT", "LATERAL", "LLD", "RLD"}
AXES = ("x", "y", "z")


# -- measuring (for the tasks' domain_case) ----------------------------------------------------------------
def grid(volume, limit: int = SAMPLE_VOXELS) -> tuple[np.ndarray, int]:
    """(every ``step``-th value along each axis of ``volume``, ``step``): a regular grid of at most about ``limit``
    values, the same for every volume of that shape."""
    array = np.asarray(volume)
    step = max(1, math.ceil((array.size / limit) ** (1 / max(array.ndim, 1))))
    return array[(slice(None, None, step),) * array.ndim], step


def constant_background(volume) -> float | None:
    """The value a constant background holds: the most common value on the border, if it covers at least half
    of it (``BackgroundToZerod``'s rule), else None (noisy air: no constant background)."""
    array = np.asarray(volume)
    faces = [np.take(array, end, axis=axis).ravel() for axis in range(array.ndim) for end in (0, -1)]
    border = grid(np.concatenate(faces))[0]
    values, counts = np.unique(border, return_counts=True)
    top = int(np.argmax(counts))
    return float(values[top]) if counts[top] >= 0.5 * border.size else None


def ras_order(affine, values) -> list[float]:
    """Per-array-axis ``values`` reordered to x, y, z (RAS): the world axis each array axis runs along most."""
    matrix = np.abs(np.asarray(affine, dtype=np.float64)[:3, :3])
    order = [int(np.argmax(matrix[:, axis])) for axis in range(3)]
    if sorted(order) != [0, 1, 2]:  # an oblique grid no axis dominates: keep the array's order
        return [float(v) for v in values]
    out = [0.0] * 3
    for axis, world in enumerate(order):
        out[world] = float(values[axis])
    return out


def modality_of(sample: np.ndarray) -> tuple[str, str]:
    """("CT" or "MR", how it was told) from sampled values: air at -1000 HU marks a CT in Hounsfield units, and
    nothing lies below it but padding (a z-scored MRI x1000 also reaches -1000, but carries on below)."""
    values = sample[sample > PADDING_HU]
    air = float(np.mean((values >= AIR_HU[0]) & (values <= AIR_HU[1]))) if values.size else 0.0
    below = float(np.mean(values < AIR_HU[0])) if values.size else 0.0
    if air >= AIR_FRACTION and below < air / 4:
        return "CT", f"{air:.0%} of voxels at the -1000 HU of air"
    return "MR", "no voxels at the -1000 HU of air: not Hounsfield units"


def dicom_header(path: str | Path):
    """The header (no pixel data) of a DICOM file, or of the first DICOM file in a series folder; None if none."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    candidates = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    for candidate in candidates[:5]:
        try:
            return pydicom.dcmread(candidate, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError):  # not DICOM (a README beside the series): the next
            pass
    return None


def percentiles(values: np.ndarray) -> dict[str, float]:
    if not values.size:
        return {}
    low, median, high = np.percentile(values, [0.5, 50, 99.5])
    return {"p0.5": float(low), "median": float(median), "p99.5": float(high)}


# -- the training data's summary ------------------------------------------------------------------------
def summarise(cases: list[dict]) -> dict:
    """Ranges of the measured facts over the training cases: per number ``min``/``median``/``max`` (per axis for
    lists), per text the ``values`` seen and how many cases had it ``unknown``; nested facts alike."""
    names = sorted({name for case in cases for name in case if not name.endswith("_from")})  # how, not what
    return {name: entry for name in names if (entry := _summary([c.get(name) for c in cases])) is not None}


def _summary(values: list) -> dict | None:
    known = [v for v in values if v is not None]
    if not known:
        return None
    if all(isinstance(v, Mapping) for v in known):
        return summarise(known) or None
    if all(isinstance(v, str) for v in known):
        return {"values": sorted(set(known)), "unknown": len(values) - len(known)}
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in known):
        array = np.asarray(known, dtype=np.float64)
        return {"min": _round(array.min()), "median": _round(np.median(array)), "max": _round(array.max())}
    if all(isinstance(v, (list, tuple)) for v in known) and len({len(v) for v in known}) == 1:
        array = np.asarray(known, dtype=np.float64)
        return {"min": [_round(v) for v in array.min(axis=0)], "median": [_round(v) for v in np.median(array, axis=0)],
                "max": [_round(v) for v in array.max(axis=0)]}
    return None


def _round(value) -> float:
    """Four significant digits: the summary is read by people too (``medsight info``), and tolerances are wide."""
    return float(f"{float(value):.4g}")


# -- comparing -------------------------------------------------------------------------------------------
def reasons(summary: Mapping | None, facts: Mapping) -> list[str]:
    """Why one input's ``facts`` are unlike the training ``summary`` (``{"facts": ...}`` as a checkpoint holds
    it); empty when alike, or when the summary has none of the input's facts."""
    trained = (summary or {}).get("facts") or {}
    found = []
    for name, rule in RULES.items():
        if trained.get(name) and facts.get(name) is not None:
            reason = rule(trained[name], facts[name], facts)
            if reason:
                found.append(reason)
    return found


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _modality(trained: dict, value: str, facts: Mapping) -> str | None:
    if value in trained["values"]:
        return None
    how = facts.get("modality_from")
    told = f" ({how})" if how else ""
    return f"looks like {value}{told} where the training data were {', '.join(trained['values'])}"


def _spacing(trained: dict, value: list, facts: Mapping) -> str | None:
    coarse = [f"{v:g} mm voxels along {AXES[i]}" for i, (v, top) in enumerate(zip(value, trained["max"]))
              if v > COARSER * top]
    if not coarse:
        return None
    coarsest = " x ".join(f"{t:g}" for t in trained["max"])
    return f"{', '.join(coarse)} where the training data's were at most {coarsest} mm"


def _extent(trained: dict, value: list, facts: Mapping) -> str | None:
    off = [i for i, (v, low, high) in enumerate(zip(value, trained["min"], trained["max"]))
           if v < low / EXTENT or v > high * EXTENT]
    if not off:
        return None
    axis = off[0]
    return (f"covers {value[axis]:.0f} mm along {AXES[axis]} where the training images covered "
            f"{trained['min'][axis]:.0f}-{trained['max'][axis]:.0f} mm")


def _signal(trained: dict, value: float, facts: Mapping) -> str | None:
    if value <= SIGNAL * trained["max"]:
        return None
    return (f"{value:,.0f} mL of signal above the background where the training images held "
            f"{trained['min']:,.0f}-{trained['max']:,.0f} mL: not skull-stripped, or a wider field of view")


def _scale(trained: dict, value: float, facts: Mapping) -> str | None:
    if trained["min"] / SCALE <= value <= trained["max"] * SCALE:
        return None
    return (f"intensities on another scale: a 0.5-99.5 percentile spread of {_number(value)} where the training "
            f"data's was {_number(trained['min'])}-{_number(trained['max'])}")


def _bit_depth(trained: dict, value: float, facts: Mapping) -> str | None:
    if trained["min"] <= value <= trained["max"]:
        return None
    depths = sorted({int(trained["min"]), int(trained["max"])})
    return f"{int(value)}-bit values where the training pictures were {'-'.join(map(str, depths))}-bit"


def _view(trained: dict, value: str, facts: Mapping) -> str | None:
    if value in trained["values"]:
        return None
    kind = " (lateral)" if value in LATERAL_VIEWS else ""
    return f"view {value}{kind} where the training pictures were {', '.join(trained['values'])}"


def _aspect(trained: dict, value: float, facts: Mapping) -> str | None:
    if trained["min"] / ASPECT <= value <= trained["max"] * ASPECT:
        return None
    return (f"height/width {value:.2f} where the training pictures' was {trained['min']:.2f}-{trained['max']:.2f} "
            "(pictures are resized square)")


RULES = {"modality": _modality, "spacing_mm": _spacing, "extent_mm": _extent, "nonbackground_ml": _signal,
         "intensity_spread": _scale, "bit_depth": _bit_depth, "view": _view, "aspect": _aspect}


# -- predict ---------------------------------------------------------------------------------------------
#: record key: measure this input's facts where predict reads it (``DomainTapd``); its value is the input's name
CHECK_ON_LOAD = "domain_check_on_load"
#: batch key: the facts measured there, as JSON ("" when they could not be measured): ``predict.FACTS``


class DomainTapd:
    """A step of a task's predict transforms, right after its reading steps: for a record that asks
    (``CHECK_ON_LOAD``, set by ``screen``), the facts ``measure(data, name)`` of the image just read, carried to the
    screen as JSON in the batch (``FACTS``): the input is read once, for both. Without the key: nothing."""

    def __init__(self, measure):
        self.measure = measure

    def __call__(self, data: Mapping) -> dict:
        import json

        if CHECK_ON_LOAD not in data:
            return data
        d = dict(data)
        source = d.pop(CHECK_ON_LOAD)
        try:
            d[FACTS] = json.dumps(self.measure(d, source), default=float)
        except Exception as exc:  # noqa: BLE001  (not measurable: not compared; predict reports a bad input itself)
            log.debug(f"{source}: not compared with the training data ({unwrap(exc) or type(exc).__name__})")
            d[FACTS] = ""
        return d


@dataclass
class Screen:
    """What ``screen`` found: the reasons per case id ("" when alike); ``mark`` puts them in the results. Inputs
    measured where predict reads them (``pending``: id -> name) are judged in ``mark``, from their results."""

    verdicts: dict[str, str] = field(default_factory=dict)
    summary: Mapping | None = None
    strict: bool = False
    pending: dict[str, str] = field(default_factory=dict)

    def mark(self, results: Iterable) -> Iterator:
        """The results (and failures) as they come, each result with ``quality["domain"]`` set when checked (with
        ``strict``, a failure instead of a result unlike the training data)."""
        import json

        for result in results:
            facts = result.quality.pop(FACTS, None) if hasattr(result, "quality") else None
            where = self.pending.pop(str(getattr(result, "id", None)), None)
            if facts and where is not None and self.summary:
                verdict = "; ".join(reasons(self.summary, json.loads(facts)))
                if verdict and self.strict:
                    yield Failure(f"{where}: unlike the training data: {verdict} (refused: strict domain)")
                    continue
                if verdict:
                    log.warning(f"{where}: unlike the training data: {verdict}")
                self.verdicts[str(result.id)] = verdict
            verdict = self.verdicts.get(getattr(result, "id", None))
            if verdict is not None:
                result.quality["domain"] = verdict
                if verdict and "review" in result.quality:  # review was decided before the domain was known
                    result.quality["review"] = True
            yield result


def screen(task, state: Mapping, prepared, strict: bool = False) -> Screen:
    """Compare each of ``prepared.records`` with the checkpoint ``state``'s training summary, log one line per
    input unlike it and (``strict``) move such inputs to ``prepared.failures``. An input that cannot be measured
    is left to predict, whose own reading reports it."""
    summary = state.get("domain")
    if not summary or summary.get("version") != VERSION:
        log.debug("the checkpoint holds no summary of its training data that this medsight reads (trained before "
                  "one was kept, imported, or from another version): inputs are not compared with it")
        return Screen()
    found, kept = Screen(summary=summary, strict=strict), []
    for record in prepared.records:
        where = source_of(record)
        if getattr(task, "domain_on_load", False):  # measured where predict reads it, not read here
            record[CHECK_ON_LOAD] = where
            found.pending[str(record.get("id"))] = where
            kept.append(record)
            continue
        try:
            facts = task.domain_case(record)
        except Exception as exc:  # unreadable here is unreadable for predict too: it says why, once
            known = unwrap(exc)
            log.debug(f"{where}: not compared with the training data ({known or type(exc).__name__})")
            kept.append(record)
            continue
        verdict = "; ".join(reasons(summary, facts))
        if verdict and strict:
            prepared.failures.append(f"{where}: unlike the training data: {verdict} (refused: strict domain)")
            continue
        if verdict:
            log.warning(f"{where}: unlike the training data: {verdict}")
        found.verdicts[str(record.get("id"))] = verdict
        kept.append(record)
    prepared.records[:] = kept
    return found


def source_of(record: Mapping) -> str:
    """The file an input record names (a case's folder when its files share one; its id for in-memory images)."""
    from medsight.io.readers import is_memory_name

    image = record.get("image")
    names = [str(n) for n in (image if isinstance(image, (list, tuple)) else [image]) if n]
    if not names or any(is_memory_name(n) for n in names):
        return str(record.get("id", "input"))
    if len(names) == 1:
        return names[0]
    parents = {str(Path(n).parent) for n in names}
    return parents.pop() if len(parents) == 1 else names[0]

