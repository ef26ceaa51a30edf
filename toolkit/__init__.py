"""medsight: deep learning for chest X-rays, lung-nodule CT and brain-tumour MRI.

Importing medsight first makes torchvision importable with a CPU-only torch (see ``_compat``).
"""

from medsight._compat import ensure_torchvision_importable

ensure_torchvision_importable()

import logging  # noqa: E402
from importlib.metadata import PackageNotFoundError, version  # noqa: E402

import warnings  # noqa: E402

# MONAI warns on every LoadImage when its optional GPU DICOM codec (nvImageCodec) is absent.
logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader: nvImageCodec decoder plugin")

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
