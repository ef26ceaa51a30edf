"""Reporting: run reports and descriptions of checkpoints and of this machine."""
