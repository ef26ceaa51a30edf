"""medsight: deep learning for chest X-rays, lung-nodule CT and brain-tumour MRI.

Importing medsight first makes torchvision importable with a CPU-only torch (see ``_compat``).
"""

from medsight._compat import ensure_torchvision_importable

ensure_torchvision_importable()

import logging  # noqa: E402
from importlib.metadata import PackageNotFoundError, version  # noqa: E402

# MONAI logs a warning on every DICOM read when the optional GPU codec (nvImageCodec) is absent.
logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)

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
