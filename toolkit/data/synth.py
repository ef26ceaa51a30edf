"""``medsight.data.synthesize``: a small synthetic dataset in a registered format's own layout."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from medsight.errors import ConfigError, MedsightError

log = logging.getLogger(__name__)

NOTE = "synthetic data made by medsight data synth: models trained on it know nothing of real images"


def synthesize(dataset: str, out: str | Path, *, cases: int | None = None, seed: int = 0, **options: Any) -> Path:
    """Write a synthetic ``dataset`` (a registered format: chestxray14, luna16, brats, ...) under ``out`` and mark
    it synthetic (``SYNTHETIC_MARKER``: checkpoints trained on it say so). ``cases``: images, scans or cases
    (default: the format's own); ``options``: the format's own (``shape="96,96,64"``, ``naming="2023"``...).
    Returns the dataset's folder (or file) as the format gives it."""
    from medsight.core.registry import DATASETS
    from medsight.data.formats import SYNTHETIC_MARKER
    from medsight.io.writers import output_folder, write_json

    if cases is not None and (isinstance(cases, bool) or not isinstance(cases, int) or cases < 1):
        raise ConfigError(f"cases must be a whole number of at least 1, got {cases!r}", "synth")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a whole number of at least 0, got {seed!r}", "synth")
    fmt = DATASETS.get(dataset)()
    out = Path(out)
    existed = out.exists()
    try:
        made = Path(fmt.synth(output_folder(out), cases=cases, seed=seed, **options))
    except MedsightError:  # a bad option: leave no empty folder behind
        if not existed and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    folder = made if made.is_dir() else made.parent
    write_json({"format": dataset, "cases": cases, "seed": seed, "options": options, "note": NOTE},
               folder / SYNTHETIC_MARKER)
    log.debug(f"wrote synthetic {dataset} dataset to {made}")
    return made
