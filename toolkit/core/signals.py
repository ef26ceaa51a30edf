"""Stopping a run cleanly: SIGINT/SIGTERM ask for a stop after the current step (the trainer then writes
``last.pt`` and raises ``Interrupted``); a second Ctrl-C stops at once."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable

from medsight.errors import MedsightError


class Interrupted(MedsightError):
    """SIGINT/SIGTERM: the current step finished, ``last.pt`` was written, training stopped."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_status = 128 + signum


@contextlib.contextmanager
def stop_requests(request: Callable[[int], None]):
    """While inside, SIGINT and SIGTERM call ``request(signum)`` instead of stopping the process; a second
    SIGINT raises KeyboardInterrupt. Only the main thread can install handlers; elsewhere this does nothing."""
    requested = []

    def handle(signum, frame):
        if requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        requested.append(signum)
        request(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {signum: signal.signal(signum, handle) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
