"""Metric logs of a run: ``metrics.jsonl`` always (one JSON object per line, flushed as written),
TensorBoard scalars when the ``tensorboard`` package is installed. Only rank 0 writes."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from medsight.io.writers import write_text


class RunLog:
    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True):
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self._tb = None
        if enabled:
            run_dir.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError:  # optional: `pip install medsight[tensorboard]`
                    SummaryWriter = None
                if SummaryWriter is not None:
                    self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    @property
    def tensorboard(self) -> bool:
        return self._tb is not None

    def truncate_after(self, global_step: int) -> None:
        """On resume: drop lines a killed run logged after the checkpoint it resumes from."""
        if not self.enabled or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line cut short by the kill
            if entry.get("global_step", 0) <= global_step:
                kept.append(line)
        write_text("".join(f"{line}\n" for line in kept), self.path)

    def log(self, phase: str, epoch: int, global_step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: _number(v) for k, v in values.items()}
        entry = {"time": round(time.time(), 3), "phase": phase, "epoch": epoch, "global_step": global_step, **clean}
        with open(self.path, "a") as handle:
            handle.write(json.dumps(entry) + "\n")
        if self._tb is not None:
            for key, value in clean.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(f"{phase}/{key}", value, global_step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _number(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def epoch_line(p, max_epochs: int, monitored: str, logs: dict, metrics: dict | None, improved: bool) -> str:
    """The line printed after each epoch: loss, rate, time, and the validation metrics that matter."""
    line = (f"epoch {p.epoch}/{max_epochs}  loss {logs.get('loss', float('nan')):.4f}  "
            f"lr {logs['lr']:.2e}  {logs['samples_per_s']:.1f} samples/s  {logs['epoch_seconds']:.1f} s")
    if logs.get("data_wait_fraction", 0) >= 0.1:  # the loader, not the model, set the pace
        line += f" ({100 * logs['data_wait_fraction']:.0f}% waiting for data)"
    if "peak_memory_gb" in logs:
        line += f"  {logs['peak_memory_gb']:.1f} GB"
    if metrics:
        name = monitored
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k == name or k.startswith("mean"))
        best = f"{p.best_value:.4f} @ epoch {p.best_epoch}" if p.best_value is not None else "none yet"
        line += f"  | val {shown}  (best {best}){' *' if improved else ''}"
    return line
