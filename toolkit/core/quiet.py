"""Library warnings the user cannot act on, kept off the terminal where they arise.

A warning from PyTorch, MONAI or OpenVINO about medsight's own use of them (``TracerWarning: Converting a
tensor to a Python boolean...`` while a detector is traced for an engine, ``torch.jit.trace is deprecated``)
tells the user nothing they can change. Each call that causes one is wrapped in ``library_warnings_quiet``
with the filters that name it (category, message, module), so nothing is filtered anywhere else and a new
warning still shows.

Verbose (the filters skipped, every warning shown): ``medsight --verbose ...``, or from Python the
``medsight`` logger at DEBUG (``logging.getLogger("medsight").setLevel(logging.DEBUG)``).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple


class Ignored(NamedTuple):
    """One ``warnings.filterwarnings("ignore", ...)``: ``message`` and ``module`` are regular expressions
    matched at the start of the message and of the module the warning is attributed to."""

    category: type[Warning]
    message: str = ""
    module: str = ""


def verbose() -> bool:
    """Whether library warnings are shown: the ``medsight`` logger is at DEBUG (``medsight --verbose``)."""
    return logging.getLogger("medsight").isEnabledFor(logging.DEBUG)


def tracing() -> tuple[Ignored, ...]:
    """What tracing a network (``torch.jit.trace``, ``torch.onnx.export``, ``openvino.convert_model``, which
    traces PyTorch modules) warns about: ``TracerWarning`` (data-dependent Python branches, such as MONAI
    RetinaNet's NaN checks, frozen at the traced input: the traced networks are checked against the eager
    module where it matters, ``medsight.inference.export``) and PyTorch's deprecation of TorchScript and of
    the TorchScript-based ONNX exporter medsight uses on purpose (``medsight.inference.engines``)."""
    from torch.jit import TracerWarning

    return (Ignored(TracerWarning),
            Ignored(DeprecationWarning, r"`torch\.jit\.\w+` is deprecated"),
            Ignored(DeprecationWarning, "You are using the legacy TorchScript-based ONNX export"),
            Ignored(DeprecationWarning, "The feature will be removed", module=r"torch\.onnx"))


@contextmanager
def library_warnings_quiet(*ignored: Ignored, loggers: tuple[str, ...] = ()) -> Iterator[None]:
    """Inside: the ``ignored`` warnings are not shown, and the ``loggers`` (a library's own, such as
    ``"nncf"``) show warnings and errors only; unless ``verbose()``. Everything is as before on leaving."""
    if verbose():
        yield
        return
    levels = {name: logging.getLogger(name).level for name in loggers}
    with warnings.catch_warnings():
        for rule in ignored:
            warnings.filterwarnings("ignore", message=rule.message, category=rule.category, module=rule.module)
        for name in loggers:
            logging.getLogger(name).setLevel(max(levels[name], logging.WARNING))
        try:
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)
