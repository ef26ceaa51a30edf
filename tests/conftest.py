"""Shared fixtures: tiny synthetic datasets in the official layouts, made once per test session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import medsight  # noqa: F401  (first: makes torchvision importable with a CPU torch)
from medsight.core.registry import DATASETS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def engine_cache(tmp_path_factory) -> Path:
    """Converted engines go to a folder of this test session, not the user's ~/.cache (subprocesses too)."""
    folder = tmp_path_factory.mktemp("engine-cache")
    os.environ["MEDSIGHT_ENGINE_CACHE"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def synth_chestxray14(tmp_path_factory) -> Path:
    return DATASETS.get("chestxray14")().synth(tmp_path_factory.mktemp("cxr14") / "data", cases=40, seed=3, size=64)


@pytest.fixture(scope="session")
def synth_luna16(tmp_path_factory) -> Path:
    return DATASETS.get("luna16")().synth(
        tmp_path_factory.mktemp("luna16") / "data", cases=3, seed=5, shape=(64, 64, 24), spacing=(1.4, 1.4, 2.5)
    )


@pytest.fixture(scope="session")
def synth_brats(tmp_path_factory) -> Path:
    return DATASETS.get("brats")().synth(tmp_path_factory.mktemp("brats") / "data", cases=3, seed=7, shape=(48, 48, 32))


@pytest.fixture
def copy_of(tmp_path):
    """Copy a dataset folder so a test can damage it."""

    def make(source: Path) -> Path:
        target = tmp_path / source.name
        shutil.copytree(source, target)
        return target

    return make


def run_cli(*args: str, cwd: Path | None = None, env_extra: dict | None = None, timeout: float = 600):
    """Run ``python -m medsight ARGS`` in a fresh interpreter; returns the CompletedProcess."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env_extra or {}))
    return subprocess.run(
        [sys.executable, "-m", "medsight", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout
    )
