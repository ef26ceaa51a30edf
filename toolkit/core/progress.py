"""What medsight tells the user while it works: log messages (rank 0 only) and progress.

Progress is shown in one of two ways, so that no long step is silent:

- ``bars``: tqdm bars, on a terminal;
- ``lines``: a line at most every ``LINE_EVERY_S`` seconds ("epoch 3/20: 40/96 batches (42%), 0.8 s/batch,
  ETA 45 s"), for logs, pipes, SLURM output and ``make demo``.

``auto`` picks bars on a terminal and lines elsewhere; ``never`` shows nothing.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

from tqdm import tqdm

LINE_EVERY_S = 10.0
log = logging.getLogger("medsight")


class _StdoutHandler(logging.Handler):
    """Writes to whatever ``sys.stdout`` is at the time (pytest and the demo swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stdout, flush=True)
        except Exception:  # logging must never take the program down
            self.handleError(record)


def _is_rank_zero(record: logging.LogRecord) -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def setup_logging(level: int = logging.INFO) -> None:
    """Show medsight's messages (``logging.getLogger("medsight...")``) on stdout, from rank 0 only. Idempotent."""
    if any(isinstance(h, _StdoutHandler) for h in log.handlers):
        return
    handler = _StdoutHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(_is_rank_zero)
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False


def resolve_mode(mode: str) -> str:
    """bars, lines or never, for a configured ``auto|bars|always|lines|never``."""
    if mode == "auto":
        return "bars" if sys.stderr.isatty() else "lines"
    return "bars" if mode == "always" else mode


class _Lines:
    """A progress display that prints a line now and then instead of redrawing a bar."""

    def __init__(self, total: int | None, desc: str, unit: str, initial: int = 0, every_s: float = LINE_EVERY_S):
        self.total, self.desc, self.unit = total, desc, unit
        self.n, self.start_n = initial, initial
        self.every_s = every_s
        self.started = self.last = time.perf_counter()
        self.postfix = ""
        self.disable = False

    def update(self, count: int = 1) -> None:
        self.n += count
        now = time.perf_counter()
        if now - self.last >= self.every_s:
            self.last = now
            log.info(self._line(now))

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def _line(self, now: float) -> str:
        done = self.n - self.start_n
        rate = (now - self.started) / done if done else float("nan")
        parts = [f"{self.desc}: {self.n}" + (f"/{self.total}" if self.total else "")]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        if done:
            parts.append(f"{rate:.2f} s/{self.unit}")
            if self.total:
                parts.append(f"ETA {rate * (self.total - self.n):.0f} s")
        if self.postfix:
            parts.append(self.postfix)
        return ", ".join(parts)

    def close(self) -> None:
        pass


class _Silent:
    disable = True

    def update(self, count: int = 1) -> None:
        pass

    def set_postfix(self, **values: Any) -> None:
        pass

    def close(self) -> None:
        pass


def progress(total: int | None, desc: str, mode: str = "auto", unit: str = "it", initial: int = 0,
             enabled: bool = True):
    """A progress display with ``update(n)``, ``set_postfix(**values)``, ``close()`` and ``disable``."""
    shown = resolve_mode(mode) if enabled else "never"
    if shown == "bars":
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=False, dynamic_ncols=True)
    if shown == "lines":
        return _Lines(total, desc, unit, initial)
    return _Silent()


def track(iterable, total: int | None, desc: str, mode: str = "auto", unit: str = "it", enabled: bool = True):
    """Iterate ``iterable`` while showing progress."""
    display = progress(total, desc, mode, unit, enabled=enabled)
    try:
        for item in iterable:
            yield item
            display.update(1)
    finally:
        display.close()
