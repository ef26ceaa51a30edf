"""Model registries: one per task family, one builder signature (like timm's and smp's ``create_model``).

    @register_model("segmentation", "segresnet")
    def segresnet(config, in_channels: int, out_channels: int) -> nn.Module: ...

    model = create_model("segmentation", "segresnet", config.model, in_channels=4, out_channels=3)

``config`` is the task's ``model`` config section; ``in_channels``/``out_channels`` come from the data
(modalities, label set). A family may also have *providers*: a whole library of names accepted by a
test (every timm model for 2D classifiers). A separate package adds a model through the entry-point
group ``medsight.core.models``, named ``FAMILY.NAME``:

    [project.entry-points."medsight.models"]
    "classification.mynet" = "mypackage.models:build_mynet"

Builders return a new module on every call: nothing is shared between callers.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from torch import nn

from medsight.errors import ConfigError, TaskError

Builder = Callable[[Any, int, int], nn.Module]
GROUP = "medsight.models"


@dataclass(frozen=True)
class Provider:
    """Many names from one library: ``accepts(name)`` says whether it builds ``name``."""

    label: str
    accepts: Callable[[str], bool]
    build: Callable[[str, Any, int, int], nn.Module]


class ModelRegistry:
    def __init__(self, family: str):
        self.family = family
        self._builders: dict[str, Builder] = {}
        self._providers: list[Provider] = []

    def register(self, name: str):
        """Function decorator: register ``builder(config, in_channels, out_channels)`` under ``name``."""

        def decorator(builder: Builder) -> Builder:
            known = self._builders.get(name)
            if known is not None and known is not builder:
                raise TaskError(f"model {self.family}.{name} is registered twice", "registry")
            self._builders[name] = builder
            return builder

        return decorator

    def add_provider(self, provider: Provider) -> None:
        if all(p.label != provider.label for p in self._providers):
            self._providers.append(provider)

    def names(self) -> list[str]:
        """Registered names (sorted), then one line per provider (e.g. ``timm: any timm model name``)."""
        return sorted(self._builders) + [p.label for p in self._providers]

    def exists(self, name: str) -> bool:
        return name in self._builders or any(p.accepts(name) for p in self._providers)

    def check(self, name: str, key: str = "model.name") -> None:
        """ConfigError with a suggestion unless ``name`` can be built."""
        if not self.exists(name):
            close = difflib.get_close_matches(name, list(self._builders), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"{key}={name!r} is not one of {', '.join(self.names())}{hint}")

    def create(self, name: str, config: Any, in_channels: int, out_channels: int) -> nn.Module:
        if name in self._builders:
            return self._builders[name](config, in_channels, out_channels)
        for provider in self._providers:
            if provider.accepts(name):
                return provider.build(name, config, in_channels, out_channels)
        self.check(name)
        raise AssertionError("unreachable")


_FAMILIES: dict[str, ModelRegistry] = {}
_loaded_entry_points = False


def models(family: str) -> ModelRegistry:
    """The registry of ``family`` (made on first use), with the entry points of ``medsight.core.models`` loaded."""
    global _loaded_entry_points
    registry = _FAMILIES.setdefault(family, ModelRegistry(family))
    if not _loaded_entry_points:
        _loaded_entry_points = True
        for point in entry_points(group=GROUP):
            point_family, _, name = point.name.partition(".")
            if not name:
                raise TaskError(f"entry point {point.name!r} of {GROUP} must be named FAMILY.NAME", "registry")
            _FAMILIES.setdefault(point_family, ModelRegistry(point_family)).register(name)(point.load())
    return registry


def register_model(family: str, name: str):
    """Register a builder ``(config, in_channels, out_channels) -> nn.Module`` in ``family``."""
    return _FAMILIES.setdefault(family, ModelRegistry(family)).register(name)


def create_model(family: str, name: str, config: Any, in_channels: int, out_channels: int) -> nn.Module:
    return models(family).create(name, config, in_channels, out_channels)
