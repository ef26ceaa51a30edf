"""The ``medsight`` command line: it parses arguments, calls the Python API and prints."""

from medsight.cli.main import main

__all__ = ["main"]
