"""Data: dataset formats, loading, transforms, caches and the data check.

``synthesize`` and ``check_data`` are imported on first use, so that ``import medsight.data`` stays cheap (no
torch, no MONAI).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["synthesize", "check_data"]

_LAZY = {"synthesize": "medsight.data.synth", "check_data": "medsight.data.check"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
