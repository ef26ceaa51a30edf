"""Registries of tasks and dataset formats.

A name is registered once, with a decorator (``@register_task("segmentation")``) or through an
entry point, so a separate package can add a task or a dataset format without touching medsight:

    [project.entry-points."medsight.tasks"]
    mytask = "mypackage.tasks:MyTask"

The registry hands out classes; callers build their own instances, so nobody shares state.
"""

from __future__ import annotations

import difflib
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from medsight.errors import TaskError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, group: str):
        self.kind = kind
        self.group = group
        self._entries: dict[str, type[T]] = {}
        self._loaded_entry_points = False

    def register(self, name: str):
        """Class decorator: register ``cls`` under ``name``; a name taken by another class raises."""

        def decorator(cls: type[T]) -> type[T]:
            self._add(name, cls)
            cls.name = name
            return cls

        return decorator

    def _add(self, name: str, cls: type[T]) -> None:
        known = self._entries.get(name)
        if known is not None and known is not cls:
            raise TaskError(
                f"{self.kind} {name!r} is registered twice ({_where(known)} and {_where(cls)})", "registry"
            )
        self._entries[name] = cls

    def _load_entry_points(self) -> None:
        if self._loaded_entry_points:
            return
        self._loaded_entry_points = True
        for point in entry_points(group=self.group):
            cls = point.load()  # importing the module may already have registered it
            self._add(point.name, cls)
            if getattr(cls, "name", None) != point.name:
                cls.name = point.name

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._entries)

    def get(self, name: str) -> type[T]:
        self._load_entry_points()
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            known = ", ".join(self.names()) or "none registered"
            raise TaskError(f"unknown {self.kind} {name!r}{hint}; known: {known}", self.kind) from None


def _where(cls) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


TASKS: Registry = Registry("task", "medsight.tasks")
DATASETS: Registry = Registry("dataset", "medsight.datasets")


def register_task(name: str):
    """Register a ``medsight.task.Task`` subclass under ``name``."""
    return TASKS.register(name)


def register_dataset(name: str):
    """Register a ``medsight.data.formats.DatasetFormat`` subclass under ``name``."""
    return DATASETS.register(name)
