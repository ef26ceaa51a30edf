"""medsight: deep learning for chest X-rays, lung-nodule CT and brain-tumour MRI.

Importing medsight first makes torchvision importable with a CPU-only torch (see ``_compat``); that is
its only import-time side effect.
"""

from medsight._compat import ensure_torchvision_importable

ensure_torchvision_importable()

from importlib.metadata import PackageNotFoundError, version  # noqa: E402

from medsight.errors import (  # noqa: E402
    CheckpointError,
    ConfigError,
    DataError,
    MedsightError,
    TaskError,
    TrainingError,
)

try:
    __version__ = version("medsight")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "MedsightError",
    "TaskError",
    "TrainingError",
    "__version__",
]
