"""CLI commands that need the trainer: train, evaluate, predict, export, demo."""

from __future__ import annotations


def add_commands(sub) -> None:
    """Register the model commands on the ``medsight`` sub-parser."""
