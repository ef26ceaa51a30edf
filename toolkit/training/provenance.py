"""What a run learns from and starts from, as recorded in its checkpoints."""

from __future__ import annotations

import hashlib
from pathlib import Path

from torch import nn

from medsight.data.formats import SYNTHETIC_MARKER, DataSource


def trained_on(source: DataSource, records: list[dict]) -> dict:
    """Format, folder, a fingerprint of the records (their ids) and whether the data are synthetic
    (``medsight data synth`` marks its folders): ``predict`` and the reports say so."""
    ids = sorted(str(r.get("id", r.get("image", ""))) for r in records)
    root = Path(source.root)
    marker = (root if root.is_dir() else root.parent) / SYNTHETIC_MARKER
    return {"format": source.format_name, "root": str(root.resolve()), "records": len(records),
            "fingerprint": hashlib.sha256("\n".join(ids).encode()).hexdigest(), "synthetic": marker.is_file()}


def pretrained_parameters(model: nn.Module, started_from: dict | None) -> set[str]:
    """The parameters of ``model`` that starting weights filled (loaded or adapted)."""
    names = set((started_from or {}).get("pretrained") or [])
    return {name for name, _ in model.named_parameters()} & names
