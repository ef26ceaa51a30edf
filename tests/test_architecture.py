"""The layering is a contract (pyproject.toml ``[tool.importlinter]``), checked by import-linter on the package as
it is installed: ``toolkit/``, ``tasks/`` and ``datasets/`` assembled into one ``medsight`` folder, because the
three folders only become one package through setuptools' ``package-dir`` mapping, which grimp does not follow."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def assembled(folder: Path) -> Path:
    """The ``medsight`` package as a wheel lays it out, under ``folder`` (Python files only)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "toolkit", folder / "medsight", ignore=ignore)
    shutil.copytree(REPO / "tasks", folder / "medsight" / "tasks", ignore=ignore)
    shutil.copytree(REPO / "datasets", folder / "medsight" / "datasets", ignore=ignore)
    return folder / "medsight"


def lint_imports(folder: Path) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).with_name("lint-imports")), str(REPO / "pyproject.toml"),
               "--no-cache"]
    return subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(folder)))


@pytest.fixture
def package(tmp_path) -> Path:
    return assembled(tmp_path)


def test_every_import_contract_is_kept(package):
    result = lint_imports(package.parent)
    assert result.returncode == 0, result.stdout[-4000:]
    assert "Contracts: 5 kept, 0 broken." in result.stdout
    assert f"Analyzed {len(list(package.rglob('*.py')))} files" in result.stdout  # tasks and datasets included


@pytest.mark.parametrize("module, line, broken", [
    # an import hidden inside a function, from below the command line up to it
    ("core/config.py", "def _late():\n    from medsight.cli.main import main\n",
     "medsight.core is not allowed to import medsight.cli"),
    ("inference/model.py", "def _late():\n    from medsight.tasks.segmentation import outputs\n",
     "medsight.inference is not allowed to import medsight.tasks"),
    ("datasets/brats.py", "def _late():\n    import medsight.tasks.segmentation.task\n",
     "medsight.datasets is not allowed to import medsight.tasks"),
    ("io/checks.py", "def _late():\n    from medsight.io import readers\n",
     "No cycles are allowed in medsight.io"),
])
def test_a_forbidden_import_breaks_its_contract(package, module, line, broken):
    path = package / module
    path.write_text(path.read_text() + "\n\n" + line)
    result = lint_imports(package.parent)
    assert result.returncode != 0 and broken in result.stdout, result.stdout[-4000:]
