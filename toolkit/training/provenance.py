"""What a run learns from and starts from, as recorded in its checkpoints."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from torch import nn

from medsight.data.formats import SYNTHETIC_MARKER, DataSource
from medsight.inference.domain import VERSION, summarise

log = logging.getLogger(__name__)

#: training cases measured for the checkpoint's ``domain`` (evenly spread over the ids): enough for the ranges the
#: tolerances of ``medsight.inference.domain`` widen, few enough to add seconds, not minutes, to a run's start
DOMAIN_CASES = 32


def trained_on(source: DataSource, records: list[dict]) -> dict:
    """Format, folder, a fingerprint of the records (their ids) and whether the data are synthetic
    (``medsight data synth`` marks its folders): ``predict`` and the reports say so."""
    ids = sorted(str(r.get("id", r.get("image", ""))) for r in records)
    root = Path(source.root)
    marker = (root if root.is_dir() else root.parent) / SYNTHETIC_MARKER
    return {"format": source.format_name, "root": str(root.resolve()), "records": len(records),
            "fingerprint": hashlib.sha256("\n".join(ids).encode()).hexdigest(), "synthetic": marker.is_file()}


def training_domain(task, records: list[dict], cases: int = DOMAIN_CASES) -> dict | None:
    """What ``predict`` compares its inputs with (``medsight.inference.domain``): the task's ``domain_case`` facts
    of up to ``cases`` of the training and validation records, summarised; None when nothing could be measured (a
    case that cannot be read is left out: training reports it where it matters)."""
    ordered = sorted(records, key=lambda r: str(r.get("id", r.get("image", ""))))
    step = max(1, len(ordered) / cases) if ordered else 1
    sample = [ordered[int(i * step)] for i in range(min(cases, len(ordered)))]
    measured = []
    for record in sample:
        try:
            facts = task.domain_case(record)
        except Exception as exc:  # the domain is a note for predict: it never stops a run
            log.debug(f"{record.get('id')}: left out of the training domain ({exc})")
            continue
        if facts:
            measured.append(facts)
    if not measured:
        return None
    return {"version": VERSION, "task": task.name, "cases": len(measured), "of": len(records),
            "facts": summarise(measured)}


def pretrained_parameters(model: nn.Module, started_from: dict | None) -> set[str]:
    """The parameters of ``model`` that starting weights filled (loaded or adapted)."""
    names = set((started_from or {}).get("pretrained") or [])
    return {name for name, _ in model.named_parameters()} & names
