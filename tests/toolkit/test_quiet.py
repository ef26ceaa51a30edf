"""Quiet by default: no library warning the user cannot act on reaches the terminal in the demo's commands
(train, evaluate, predict), nor when predict converts the detector for an engine (PyTorch's TracerWarning,
tracing MONAI's RetinaNet); ``--verbose`` shows them (``medsight.core.quiet``)."""

import logging
import warnings

import pytest

from medsight.core.quiet import Ignored, library_warnings_quiet
from tests.conftest import run_cli

#: every warning shown, libraries' DeprecationWarnings too (which Python's own defaults hide)
EVERY_WARNING = {"PYTHONWARNINGS": "default"}


def _warning_lines(result) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if "Warning" in line]


@pytest.fixture(scope="module")
def detection_demo(tmp_path_factory):
    """``medsight demo --quick --tasks detection`` (synth, train, evaluate, predict) with an empty engine cache:
    predict's ``--engine auto`` converts the detector to OpenVINO to time it."""
    out = tmp_path_factory.mktemp("quiet") / "demo"
    cache = out.parent / "engines"
    result = run_cli("demo", "--quick", "--tasks", "detection", "--out", str(out),
                     env_extra={**EVERY_WARNING, "MEDSIGHT_ENGINE_CACHE": str(cache)})
    assert result.returncode == 0, result.stdout + result.stderr
    return out, result, cache


def _scan(demo) -> str:
    return str(next((demo / "data" / "luna16").glob("subset*/*.mhd")))


def test_demo_train_evaluate_predict_show_no_library_warning(detection_demo):
    out, result, cache = detection_demo
    assert "$ medsight train detection" in result.stdout and "$ medsight predict" in result.stdout
    assert "engine auto: " in result.stdout and list(cache.glob("*.xml"))  # the detector was traced for OpenVINO
    assert _warning_lines(result) == []


def test_predict_exporting_the_detector_to_onnx_shows_no_library_warning(detection_demo, tmp_path):
    out, _, _ = detection_demo
    result = run_cli("predict", "--checkpoint", str(out / "detection"), _scan(out), "--out", str(tmp_path / "p"),
                     "--engine", "onnxruntime", env_extra={**EVERY_WARNING, "MEDSIGHT_ENGINE_CACHE": "off"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "p" / "submission.csv").is_file()
    assert _warning_lines(result) == []


def test_verbose_shows_the_tracer_warning_of_converting_the_detector(detection_demo, tmp_path):
    out, _, _ = detection_demo
    result = run_cli("--verbose", "predict", "--checkpoint", str(out / "detection"), _scan(out), "--out",
                     str(tmp_path / "p"), "--engine", "openvino", env_extra={"MEDSIGHT_ENGINE_CACHE": "off"})
    assert result.returncode == 0, result.stdout + result.stderr
    shown = _warning_lines(result)
    assert any("TracerWarning: Converting a tensor to a Python boolean" in line for line in shown), shown
    assert "openvino engine ready in " in result.stdout  # medsight's own debug messages too


def test_only_the_named_warnings_are_quiet_and_only_inside():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with library_warnings_quiet(Ignored(DeprecationWarning, "old call")):
            warnings.warn("old call, use the new one", DeprecationWarning)
            warnings.warn("something else", DeprecationWarning)
        warnings.warn("old call again", DeprecationWarning)
        logger = logging.getLogger("medsight")
        level = logger.level
        logger.setLevel(logging.DEBUG)  # what --verbose does
        try:
            with library_warnings_quiet(Ignored(DeprecationWarning, "old call")):
                warnings.warn("old call, verbose", DeprecationWarning)
        finally:
            logger.setLevel(level)
    assert [str(w.message) for w in caught] == ["something else", "old call again", "old call, verbose"]


def test_a_library_logger_shows_warnings_only_inside_and_its_level_is_restored():
    library = logging.getLogger("some_library")
    library.setLevel(logging.INFO)
    with library_warnings_quiet(loggers=("some_library",)):
        assert not library.isEnabledFor(logging.INFO) and library.isEnabledFor(logging.WARNING)
    assert library.level == logging.INFO
