"""One registry class for every plugin kind: tasks, dataset formats, importers (classes) and each task
family's models (builder functions).

A name is registered once, with a decorator (``@register_task("segmentation")``,
``@register_model("segmentation", "segresnet")``) or through an entry point, so a separate package can add
one without touching medsight:

    [project.entry-points."medsight.tasks"]
    mytask = "mypackage.tasks:MyTask"

A registry may also hold *providers*: a whole library of names (every timm model for 2D classifiers),
asked by ``accepts(name)``.

The registry hands out classes and factories, never instances: ``get(name)`` returns the class (or
builder), ``create(name, ...)`` calls it, so every caller gets its own object and nobody shares state.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from medsight.errors import ConfigError, TaskError

T = TypeVar("T")


@dataclass(frozen=True)
class Provider:
    """Many names from one library: ``accepts(name)`` says whether ``build(name, *args)`` builds it;
    ``label`` is how ``names()`` lists it (``timm: any timm model name``)."""

    label: str
    accepts: Callable[[str], bool]
    build: Callable[..., Any]


class Registry(Generic[T]):
    """Entries by name: classes or factory functions, registered by decorator or entry point.

    ``kind`` names an entry in messages (``task``, ``classification model``); ``group`` is the entry-point
    group read on first use; with a ``prefix``, only the group's entry points named ``PREFIX.NAME`` are this
    registry's (the model families share ``medsight.models``), registered as ``NAME``.
    """

    def __init__(self, kind: str, group: str | None = None, prefix: str | None = None):
        self.kind = kind
        self.group = group
        self.prefix = prefix
        self._entries: dict[str, T] = {}
        self._providers: list[Provider] = []
        self._loaded_entry_points = group is None

    # -- filling ----------------------------------------------------------------------------------
    def register(self, name: str):
        """Decorator: register a class or a factory under ``name`` (a class learns its ``name``); a name
        taken by another entry raises."""

        def decorator(entry: T) -> T:
            self._add(name, entry)
            return entry

        return decorator

    def add_provider(self, provider: Provider) -> None:
        if all(p.label != provider.label for p in self._providers):
            self._providers.append(provider)

    def _add(self, name: str, entry: T) -> None:
        known = self._entries.get(name)
        if known is not None and known is not entry:
            raise TaskError(f"{self.kind} {name!r} is registered twice ({_where(known)} and {_where(entry)})",
                            "registry")
        self._entries[name] = entry
        if isinstance(entry, type) and getattr(entry, "name", None) != name:
            entry.name = name

    def _load_entry_points(self) -> None:
        if self._loaded_entry_points:
            return
        self._loaded_entry_points = True
        for point in entry_points(group=self.group):
            name = point.name
            if self.prefix is not None:
                family, dot, name = point.name.partition(".")
                if not dot or not name:
                    raise TaskError(f"entry point {point.name!r} of {self.group} must be named FAMILY.NAME",
                                    "registry")
                if f"{family}." != self.prefix:
                    continue
            self._add(name, point.load())  # importing the module may already have registered it

    # -- asking -----------------------------------------------------------------------------------
    def names(self, pattern: str | None = None) -> list[str]:
        """Registered names (sorted; those matching the shell-style ``pattern``, if given), then one line per
        provider."""
        self._load_entry_points()
        names = sorted(self._entries)
        if pattern is not None:
            names = fnmatch.filter(names, pattern)
        return names + [p.label for p in self._providers]

    def exists(self, name: str) -> bool:
        self._load_entry_points()
        return name in self._entries or any(p.accepts(name) for p in self._providers)

    def get(self, name: str) -> T:
        """The class or factory registered as ``name`` (a provider's: its builder for ``name``); TaskError
        with a suggestion when unknown."""
        self._load_entry_points()
        if name in self._entries:
            return self._entries[name]
        for provider in self._providers:
            if provider.accepts(name):
                return functools.partial(provider.build, name)
        known = ", ".join(self.names()) or "none registered"
        raise TaskError(f"unknown {self.kind} {name!r}{self._hint(name, quoted=True)}; known: {known}",
                        self.kind.split()[-1]) from None

    def check(self, name: str, key: str = "model.name") -> None:
        """ConfigError (for the setting ``key``) with a suggestion unless ``name`` is known."""
        if not self.exists(name):
            raise ConfigError(f"{key}={name!r} is not one of {', '.join(self.names())}{self._hint(name)}")

    def create(self, name: str, *args, **kwargs):
        """A new object: the class or factory registered as ``name``, called with the arguments."""
        return self.get(name)(*args, **kwargs)

    def _hint(self, name: str, quoted: bool = False) -> str:
        close = difflib.get_close_matches(name, list(self._entries), n=1)
        if not close:
            return ""
        return f" (did you mean {close[0]!r}?)" if quoted else f" (did you mean {close[0]}?)"


def _where(entry) -> str:
    return f"{entry.__module__}.{entry.__qualname__}"


TASKS: Registry = Registry("task", "medsight.tasks")
DATASETS: Registry = Registry("dataset", "medsight.datasets")


def register_task(name: str):
    """Register a ``medsight.task.Task`` subclass under ``name``."""
    return TASKS.register(name)


def register_dataset(name: str):
    """Register a ``medsight.data.formats.DatasetFormat`` subclass under ``name``."""
    return DATASETS.register(name)
