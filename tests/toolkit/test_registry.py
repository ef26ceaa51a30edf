"""One Registry class for tasks, dataset formats, importers and each family's models: names, entry points,
providers, close-match errors, and every caller getting its own object."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest
from torch import nn

from medsight.core import models as model_registry
from medsight.core import registry
from medsight.core.models import Provider, create_model, models, register_model
from medsight.core.registry import DATASETS, TASKS, Registry
from medsight.errors import ConfigError, TaskError


def build_tiny(config, in_channels: int, out_channels: int) -> nn.Module:
    """An entry point's builder (loaded as ``tests.toolkit.test_registry:build_tiny``)."""
    return nn.Conv2d(in_channels, out_channels, 1)


class Widget:
    """An entry point's class (``tests.toolkit.test_registry:Widget``)."""

    def __init__(self, size: int = 1):
        self.size = size
        self.parts: list[int] = []


@pytest.fixture
def points(monkeypatch):
    """Entry points the registries see: {group: [(name, "module:attr")]}, set by the test."""
    found: dict[str, list[tuple[str, str]]] = {}

    def entry_points(group: str):
        return [EntryPoint(name, value, group) for name, value in found.get(group, [])]

    monkeypatch.setattr(registry, "entry_points", entry_points)
    monkeypatch.setattr(model_registry, "_FAMILIES", {})
    return found


def test_the_shipped_tasks_and_datasets_come_from_their_entry_points():
    from importlib.metadata import entry_points

    shipped = sorted(point.name for point in entry_points(group=TASKS.group))
    assert shipped == ["classification", "detection", "segmentation"]
    assert set(shipped) <= set(TASKS.names())  # other tests of this process register their own (toy) tasks
    assert {"brats", "chestxray14", "csv", "ct-nodules", "folders", "luna16"} <= set(DATASETS.names())
    task = TASKS.get("segmentation")
    assert isinstance(task, type) and task.name == "segmentation"
    with pytest.raises(TaskError) as unknown:
        DATASETS.get("chestxray15")
    assert str(unknown.value).startswith("dataset: unknown dataset 'chestxray15' (did you mean 'chestxray14'?); "
                                         "known: brats, chestxray14, csv, ct-nodules, folders, luna16")


def test_a_class_registry_hands_out_classes_and_new_instances(points):
    points["medsight.widgets"] = [("widget", "tests.toolkit.test_registry:Widget")]
    widgets = Registry("widget", "medsight.widgets")
    assert widgets.names() == ["widget"] and widgets.get("widget") is Widget and Widget.name == "widget"
    first, second = widgets.create("widget", size=3), widgets.create("widget")
    first.parts.append(1)
    assert (first.size, second.size, second.parts) == (3, 1, [])
    assert widgets.exists("widget") and not widgets.exists("gadget")


def test_a_name_is_registered_once(points):
    widgets = Registry("widget")
    widgets.register("a")(Widget)
    widgets.register("a")(Widget)  # the same class again (a module imported twice): fine

    class Other:
        pass

    with pytest.raises(TaskError, match=r"widget 'a' is registered twice \(tests.toolkit.test_registry.Widget and "
                                        r"tests.toolkit.test_registry.test_a_name_is_registered_once.<locals>.Other\)"):
        widgets.register("a")(Other)


def test_model_families_read_their_own_family_dot_name_entry_points(points):
    points["medsight.models"] = [("toyfamily.tiny", "tests.toolkit.test_registry:build_tiny"),
                                 ("otherfamily.big", "tests.toolkit.test_registry:build_tiny")]
    assert models("toyfamily").names() == ["tiny"]
    first = create_model("toyfamily", "tiny", None, in_channels=2, out_channels=5)
    second = create_model("toyfamily", "tiny", None, in_channels=2, out_channels=5)
    assert isinstance(first, nn.Conv2d) and first.weight.shape == (5, 2, 1, 1)
    assert first is not second and first.weight is not second.weight, "a new module on every call"
    assert models("otherfamily").names() == ["big"]


def test_a_model_entry_point_without_a_family_is_refused(points):
    points["medsight.models"] = [("tiny", "tests.toolkit.test_registry:build_tiny")]
    with pytest.raises(TaskError, match="entry point 'tiny' of medsight.models must be named FAMILY.NAME"):
        models("toyfamily").names()


def test_providers_build_any_name_they_accept_and_unknown_names_get_a_suggestion(points):
    @register_model("toyfamily", "unet_small")
    def unet_small(config, in_channels, out_channels):
        return nn.Conv2d(in_channels, out_channels, 3)

    family = models("toyfamily")
    family.add_provider(Provider("lib: any lib_* name", lambda name: name.startswith("lib_"),
                                 lambda name, config, i, o: nn.Linear(i, o if name == "lib_wide" else 1)))
    family.add_provider(Provider("lib: any lib_* name", lambda name: False, None))  # same label: once
    assert family.names() == ["unet_small", "lib: any lib_* name"]
    assert family.names("unet*") == ["unet_small", "lib: any lib_* name"]
    assert family.names("resnet*") == ["lib: any lib_* name"]
    assert family.exists("lib_wide") and family.exists("unet_small") and not family.exists("unet_smal")
    assert family.get("unet_small") is unet_small
    assert create_model("toyfamily", "lib_wide", None, 3, 7).out_features == 7
    assert create_model("toyfamily", "lib_other", None, 3, 7).out_features == 1
    with pytest.raises(ConfigError) as refused:
        create_model("toyfamily", "unet_smal", None, 1, 1)
    assert str(refused.value) == ("config: model.name='unet_smal' is not one of unet_small, lib: any lib_* name "
                                  "(did you mean unet_small?)")
    with pytest.raises(ConfigError, match=r"^config: --student='x' is not one of unet_small"):
        family.check("x", key="--student")
    with pytest.raises(TaskError, match=r"unknown toyfamily model 'unet_smal' \(did you mean 'unet_small'\?\)"):
        family.get("unet_smal")
