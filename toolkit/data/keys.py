"""Disk-cache keys: a record's (its content and the size and mtime of every file it names) and a pipeline's
(the deterministic transforms' classes and full parameter state), so a changed parameter or a replaced file
never reuses a stale entry."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _file_stats(value: Any) -> list:
    """(path, size, mtime_ns) for every existing file named in a record value (folders: their files)."""
    stats = []
    if isinstance(value, (str, os.PathLike)) and len(str(value)) < 4096:
        path = Path(value)
        try:
            if path.is_file():
                st = path.stat()
                stats.append((str(path), st.st_size, st.st_mtime_ns))
            elif path.is_dir():
                for child in sorted(p for p in path.rglob("*") if p.is_file()):
                    st = child.stat()
                    stats.append((str(child), st.st_size, st.st_mtime_ns))
        except OSError:
            pass
    elif isinstance(value, (list, tuple)):
        for item in value:
            stats.extend(_file_stats(item))
    elif isinstance(value, dict):
        for item in value.values():
            stats.extend(_file_stats(item))
    return stats


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return {"ndarray": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, torch.Tensor):
        return {"tensor": value.tolist()}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def record_hash(record: dict) -> bytes:
    """Disk-cache key of a record: its content plus size and mtime of every file it names."""
    payload = json.dumps({"record": _plain(record), "files": _file_stats(record)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest().encode()


def _state_fingerprint(obj: Any, depth: int = 0) -> Any:
    if depth > 6:
        return type(obj).__name__
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        return _plain(obj)
    if isinstance(obj, (list, tuple)):
        return [_state_fingerprint(v, depth + 1) for v in obj]
    if isinstance(obj, dict):
        return {str(k): _state_fingerprint(v, depth + 1) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if callable(obj) and hasattr(obj, "__qualname__"):
        return f"{getattr(obj, '__module__', '')}.{obj.__qualname__}"
    if hasattr(obj, "__dict__"):
        return {"class": f"{type(obj).__module__}.{type(obj).__qualname__}",
                "state": _state_fingerprint(vars(obj), depth + 1)}
    return _ADDRESS.sub("", repr(obj))


def transform_hash(transforms: Sequence[Any], guarded: bool = False) -> bytes:
    """Hash of the deterministic transforms' classes and full parameter state (MONAI passes the prefix);
    ``guarded``: the items may be failure markers (``data.on_error=skip``), so they get keys of their own."""
    state = _state_fingerprint(list(transforms) if not isinstance(transforms, str) else transforms)
    payload = json.dumps({"transforms": state, "guarded": True} if guarded else state, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest().encode()
