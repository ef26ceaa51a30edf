"""The task that reads a dataset format's records, and the format's options as that task's config sets them.

``medsight data check`` and ``medsight data fingerprint`` read a folder the way ``medsight train`` would: the
format's options come from the consuming task's resolved config (task defaults <- profile <- ``data.*``
overrides, ``medsight.core.config.resolve``), through ``options_for`` as ``open_dataset`` does, so the same
profile and overrides give the same splits everywhere. Tasks are found through the registry, never by name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields, is_dataclass
from typing import Any

from omegaconf import OmegaConf

from medsight.core.config import overrides_config, parse_override, resolve
from medsight.data.formats import DatasetFormat, options_for, unknown_message
from medsight.errors import ConfigError

Overrides = Sequence[str] | Mapping[str, Any] | None


def tasks_reading(fmt_class: type[DatasetFormat], planning: bool = False) -> list[str]:
    """Registered tasks whose schema is the format's (``planning``: only those that plan from data)."""
    from medsight.core.registry import TASKS

    schema = getattr(fmt_class.schema, "name", None)
    return [name for name in TASKS.names() if schema is not None
            and getattr(TASKS.get(name).schema, "name", None) == schema
            and (not planning or TASKS.get(name).planner is not None)]


def reading_task(fmt_class: type[DatasetFormat], task: str | None = None, planning: bool = False) -> type | None:
    """The task class that reads this format: ``task`` when given (it must read it), else the only one; None
    when no registered task reads it and none was named (not when ``planning``: a plan needs a task)."""
    from medsight.core.registry import TASKS

    verb = "plans its settings from" if planning else "reads"
    candidates = tasks_reading(fmt_class, planning)
    if task is not None:
        if task not in candidates:
            TASKS.get(task)  # an unknown name: the registry's own error, with a suggestion
            raise ConfigError(f"the {task} task does not {'plan from' if planning else 'read'} {fmt_class.name} "
                              f"data (tasks that do: {', '.join(candidates) or 'none'})", "command line")
        return TASKS.get(task)
    if len(candidates) > 1:
        raise ConfigError(f"{fmt_class.name} data: several tasks read it; say which with --task "
                          f"({', '.join(candidates)})", "command line")
    if not candidates:
        if planning:
            raise ConfigError(f"{fmt_class.name} data: no task {verb} it", "command line")
        return None
    return TASKS.get(candidates[0])


def profile_of(task_class: type, profile: str | None) -> dict | None:
    """The named profile of ``task_class`` (None: none), or one line naming the profiles it has."""
    if profile is None:
        return None
    if profile not in task_class.profiles:
        known = ", ".join(task_class.profiles) or "none"
        raise ConfigError(f"task {task_class.name} has no profile {profile!r} (known: {known})", "command line")
    return task_class.profiles[profile]


def data_keys(config_class: type) -> set[str]:
    """Field names of a task config's ``data`` section."""
    data = getattr(config_class(), "data", None)
    return {f.name for f in fields(data)} if data is not None and is_dataclass(data) else set()


def _items(overrides: Overrides) -> list[tuple[str, str, Any]]:
    """(as shown, dotted key, value) of each override."""
    if not overrides:
        return []
    if isinstance(overrides, Mapping):
        return [(f"{key}={value}", str(key), value) for key, value in overrides.items()]
    return [(text, *parse_override(text)) for text in overrides]


def format_options(fmt_class: type[DatasetFormat], task: str | None = None, profile: str | None = None,
                   overrides: Overrides = None) -> tuple[Any, list[str]]:
    """(the format's options as ``train`` with this task, profile and overrides would read the folder, the
    overrides that do not concern reading it). Keys outside ``data.``, and ``data.`` keys the task knows but the
    format does not read (``data.patch_size``), are ignored, though still validated by the task's config; a
    ``data.`` key only the format reads is its ``data.format_options`` entry; any other key is an error."""
    task_class = reading_task(fmt_class, task)
    if task_class is None and profile is not None:
        raise ConfigError(f"--profile {profile}: no registered task reads {fmt_class.name} data", "command line")
    names = [f.name for f in fields(fmt_class.options_class)]
    known = data_keys(task_class.config_class) if task_class is not None else set()
    routed: dict[str, Any] = {}
    ignored: list[str] = []
    for shown, key, value in _items(overrides):
        section, _, rest = key.partition(".")
        head = rest.split(".", 1)[0]
        if section != "data" or not rest:
            ignored.append(shown)
        elif head == "format_options" or (head in names and head not in known):
            routed[f"data.format_options.{rest.removeprefix('format_options.')}"] = value
        elif head in known:
            routed[key] = value
            if head not in names:
                ignored.append(shown)
        else:
            candidates = names + sorted(known - set(names))
            raise ConfigError(unknown_message(key, head, candidates, f"format {fmt_class.name}"), "command line")
    if task_class is None:
        data = OmegaConf.to_container(overrides_config(routed)).get("data", {})
        return options_for(fmt_class, {"format_options": data.get("format_options", {})}), ignored
    config = resolve(task_class.config_class, profile=profile_of(task_class, profile), overrides=routed)
    return options_for(fmt_class, config.data), ignored
