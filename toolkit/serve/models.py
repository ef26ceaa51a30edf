"""Models loaded once and kept: a checkpoint is loaded on its first job and reused, until the weights of the
models kept exceed the memory budget; then the least recently used go (never the one just asked for)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path


def weight_bytes(model) -> int:
    """What a loaded model holds in memory, measured on its network (a compressed one: its checkpoint file)."""
    network = getattr(model, "torch_model", None)
    if network is None:
        return Path(model.path).stat().st_size
    tensors = list(network.parameters()) + list(network.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


class Models:
    """checkpoint path -> loaded ``Model``; ``lock(path)``: held while a job predicts with it, so two workers
    never run one model at once (its engines and caches are not made for it)."""

    def __init__(self, budget_bytes: int, load: Callable[[str], object] | None = None):
        self.budget_bytes = budget_bytes
        self._load = load or _load
        self._models: OrderedDict[str, tuple[object, int]] = OrderedDict()
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self.loads = 0

    def get(self, checkpoint: str):
        with self._lock:
            if checkpoint in self._models:
                self._models.move_to_end(checkpoint)
                return self._models[checkpoint][0]
            model = self._load(checkpoint)
            self.loads += 1
            self._models[checkpoint] = (model, weight_bytes(model))
            while len(self._models) > 1 and self.used_bytes() > self.budget_bytes:
                self._models.popitem(last=False)
            return model

    def lock(self, checkpoint: str) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault(checkpoint, threading.Lock())

    def used_bytes(self) -> int:
        return sum(size for _, size in self._models.values())

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._models)


def _load(checkpoint: str):
    from medsight.inference.model import load

    return load(checkpoint)
