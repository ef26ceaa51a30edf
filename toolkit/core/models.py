"""Models per task family, one builder signature (like timm's and smp's ``create_model``).

    @register_model("segmentation", "segresnet")
    def segresnet(config, in_channels: int, out_channels: int) -> nn.Module: ...

    model = create_model("segmentation", "segresnet", config.model, in_channels=4, out_channels=3)

``config`` is the task's ``model`` config section; ``in_channels``/``out_channels`` come from the data
(modalities, label set). A family may also have *providers* (``Provider``): a whole library of names
accepted by a test (every timm model for 2D classifiers). A separate package adds a model through the
entry-point group ``medsight.models``, named ``FAMILY.NAME``:

    [project.entry-points."medsight.models"]
    "classification.mynet" = "mypackage.models:build_mynet"

Each family is a ``medsight.core.registry.Registry`` of builder functions, the same class as the task and
dataset registries. Builders return a new module on every call: nothing is shared between callers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from medsight.core.registry import Provider, Registry

if TYPE_CHECKING:
    from torch import nn

    Builder = Callable[[Any, int, int], nn.Module]

GROUP = "medsight.models"

__all__ = ["GROUP", "Provider", "create_model", "models", "register_model"]

_FAMILIES: dict[str, Registry] = {}


def models(family: str) -> Registry:
    """The registry of ``family``'s model builders (made on first use; its ``FAMILY.NAME`` entry points of
    ``medsight.models`` are loaded when it is first asked for a name)."""
    registry = _FAMILIES.get(family)
    if registry is None:
        registry = _FAMILIES[family] = Registry(f"{family} model", GROUP, prefix=f"{family}.")
    return registry


def register_model(family: str, name: str):
    """Register a builder ``(config, in_channels, out_channels) -> nn.Module`` in ``family``."""
    return models(family).register(name)


def create_model(family: str, name: str, config: Any, in_channels: int, out_channels: int) -> nn.Module:
    """A new module from ``family``'s builder ``name`` (or a provider that accepts it); ConfigError with a
    suggestion for an unknown ``model.name``."""
    registry = models(family)
    registry.check(name)
    return registry.create(name, config, in_channels, out_channels)
