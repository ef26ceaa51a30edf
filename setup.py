"""The package list, found rather than kept by hand.

Three folders make one package: ``toolkit/`` is ``medsight``, ``tasks/`` is ``medsight.tasks`` and
``datasets/`` is ``medsight.datasets``. ``[tool.setuptools.packages.find]`` finds packages under one root
and names them from it (``toolkit/core`` would become ``core``), so the same finder
(``setuptools.find_packages``) runs here once per folder, under that folder's package name.
Everything else is in pyproject.toml.
"""

from setuptools import find_packages, setup

ROOTS = {"medsight": "toolkit", "medsight.tasks": "tasks", "medsight.datasets": "datasets"}
PACKAGES = [name for prefix, folder in ROOTS.items()
            for name in [prefix, *(f"{prefix}.{found}" for found in find_packages(folder))]]

setup(packages=PACKAGES, package_dir=ROOTS)
