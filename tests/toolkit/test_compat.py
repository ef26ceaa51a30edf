"""The torchvision compatibility step: imports work with a CPU torch, and it is a no-op otherwise."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from medsight import _compat
def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_importing_medsight_first_makes_torchvision_smp_and_monai_detection_importable():
    result = _python(
        "import medsight, torchvision, segmentation_models_pytorch, timm, monai.apps.detection.networks.retinanet_detector;"
        "from torchvision.ops import boxes; print('ok', torchvision.__version__)"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("ok ")


def test_import_medsight_does_not_import_torch_and_the_hook_runs_at_torchvisions_first_import():
    result = _python(
        "import sys, medsight; assert 'torch' not in sys.modules, 'torch imported';"
        "from medsight import _compat; assert _compat._LIBRARY is None;"
        "import torchvision; from torchvision.ops import boxes;"
        "assert not any(isinstance(f, _compat._BeforeTorchvision) for f in sys.meta_path), 'hook left behind';"
        "print('ok', _compat._LIBRARY is not None)"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("ok ")


def test_without_the_step_torchvision_fails_exactly_when_its_extension_does_not_load():
    probe = _python(
        "import importlib.util, pathlib; from medsight._compat import _extension_loads;"
        "spec = importlib.util.find_spec('torchvision');"
        "print(_extension_loads(pathlib.Path(next(iter(spec.submodule_search_locations)))))"
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    loads = probe.stdout.strip() == "True"
    bare = _python("import torchvision")
    if loads:
        assert bare.returncode == 0  # matching builds: nothing to fix, and nothing was defined
    else:
        assert "torchvision::nms does not exist" in bare.stderr


def test_step_is_a_no_op_when_the_compiled_extension_loads(monkeypatch):
    monkeypatch.setattr(_compat, "_LIBRARY", None)
    monkeypatch.delitem(sys.modules, "torchvision", raising=False)
    monkeypatch.setattr(_compat, "_extension_loads", lambda package_dir: True)
    assert _compat.ensure_torchvision_importable() is False
    assert _compat._LIBRARY is None


def test_step_is_a_no_op_once_torchvision_is_imported(monkeypatch):
    monkeypatch.setattr(_compat, "_LIBRARY", None)
    monkeypatch.setitem(sys.modules, "torchvision", object())
    assert _compat.ensure_torchvision_importable() is False


def _torchvision_library() -> Path | None:
    spec = importlib.util.find_spec("torchvision")
    folder = Path(next(iter(spec.submodule_search_locations)))
    return next(iter(sorted(folder.glob("_C*.so")) + sorted(folder.glob("_C*.pyd"))), None)


@pytest.mark.parametrize("name", ["nms", "qnms"])
def test_defined_schemas_are_the_ones_compiled_into_torchvisions_own_library(name):
    """Our schema text must be torchvision's: its compiled library holds the declaration (the linker may
    merge the tail of the string with another, so the argument list is compared)."""
    library = _torchvision_library()
    if library is None:
        pytest.skip("this torchvision ships no compiled library")
    arguments = _compat._SCHEMAS[name].split(")")[0]  # e.g. "nms(Tensor dets, Tensor scores, float iou_threshold"
    assert f"torchvision::{arguments[:-1]}".encode() in library.read_bytes()


def test_the_defined_schema_accepts_the_call_torchvision_makes():
    """torchvision calls ``torch.ops.torchvision.nms(boxes, scores, iou_threshold)``: with the compatibility
    step the call binds to the schema and only then finds no kernel; with matching builds it runs."""
    import torch
    import torchvision  # noqa: F401  (its first import is what runs the step)

    boxes, scores = torch.tensor([[0.0, 0, 1, 1], [0, 0, 1, 1]]), torch.tensor([0.9, 0.8])
    if _compat._LIBRARY is None:  # the extension loaded: the real operator
        assert torch.ops.torchvision.nms(boxes, scores, 0.5).tolist() == [0]
        return
    with pytest.raises(NotImplementedError, match="Could not run 'torchvision::nms' with arguments from the 'CPU'"):
        torch.ops.torchvision.nms(boxes, scores, 0.5)
    with pytest.raises(RuntimeError, match="missing value for argument 'iou_threshold'"):
        torch.ops.torchvision.nms(boxes, scores)
