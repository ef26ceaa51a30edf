"""``medsight serve``: a DICOM node and an HTTP API in front of a durable job queue, running
``Model.predict`` in worker threads and sending DICOM results (SEG, SR) exactly once per destination.

``medsight.serve(config, workers=None, retry_failed=False)`` runs it until stopped; ``medsight.Server(config)``
starts and stops it from Python. Importing this package is light: the queue needs only the standard
library; the DICOM node, the HTTP API and the models are imported when a server starts.
"""

from __future__ import annotations

import sys
import types

__all__ = ["Server", "serve"]


def __getattr__(name: str):
    if name in __all__:
        from medsight.serve import server

        return getattr(server, name)
    raise AttributeError(f"module 'medsight.serve' has no attribute {name!r}")


class _Callable(types.ModuleType):
    """``medsight.serve(...)`` is the function even once this package is imported (and so is
    ``medsight.serve``, the attribute the import system sets on ``medsight``)."""

    def __call__(self, *args, **kwargs):
        from medsight.serve.server import serve

        return serve(*args, **kwargs)


sys.modules[__name__].__class__ = _Callable
