"""Let torchvision's pure-Python parts import when its compiled extension cannot load.

On CPU-only machines pip installs the CPU build of torch next to the registry's torchvision,
which is built against CUDA torch. Its ``_C`` extension then fails to load, and
``import torchvision`` dies at ``register_fake("torchvision::nms")`` with
``operator torchvision::nms does not exist``; segmentation-models-pytorch, timm and
``monai.apps.detection`` fail with it. Defining the two operator schemas that torchvision's
import-time registrations need is enough for everything medsight uses: MONAI does its own NMS,
and no compiled torchvision kernel is ever called.

This must run before anything imports torchvision. ``import medsight`` therefore installs a one-shot import
hook (``make_torchvision_importable_on_first_import``) that runs it just before torchvision's first import,
whoever imports it (segmentation-models-pytorch, timm, MONAI): torch itself is imported only then, so a
command that never needs torchvision starts without it. Where the extension loads (matching torch and
torchvision), it does nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

# Schemas as torchvision's C++ sources define them (csrc/ops/nms.cpp, csrc/ops/quantized/cpu/qnms_kernel.cpp).
_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}

# A torch.library.Library drops its definitions when garbage-collected: keep it for the process.
_LIBRARY = None


def _operator_exists(name: str) -> bool:
    import torch

    try:
        torch._C._get_schema(f"torchvision::{name}", "")
    except RuntimeError:
        return False
    return True


def _extension_loads(package_dir: Path) -> bool:
    """Try to load torchvision's compiled ops the way torchvision itself does."""
    import torch

    for library in sorted(package_dir.glob("_C*.so")) + sorted(package_dir.glob("_C*.pyd")):
        try:
            torch.ops.load_library(str(library))
        except (OSError, RuntimeError):
            return False
        return True
    return False


def ensure_torchvision_importable() -> bool:
    """Define the missing ``torchvision::`` operator schemas if torchvision's extension won't load.

    Returns True when schemas were defined, False when nothing was needed (torchvision absent,
    already imported, or its compiled extension loads).
    """
    global _LIBRARY
    if _LIBRARY is not None:
        return True
    if "torchvision" in sys.modules:
        return False
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    if _extension_loads(Path(next(iter(spec.submodule_search_locations)))):
        return False
    missing = [schema for name, schema in _SCHEMAS.items() if not _operator_exists(name)]
    if not missing:
        return False
    import torch

    library = torch.library.Library("torchvision", "FRAGMENT")
    for schema in missing:
        library.define(schema)
    _LIBRARY = library
    return True


class _BeforeTorchvision(importlib.abc.MetaPathFinder):
    """Runs ``ensure_torchvision_importable`` when ``torchvision`` is first imported, then steps aside (it finds
    nothing itself: the import goes on through the usual finders)."""

    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            _remove_hook()
            ensure_torchvision_importable()
        return None


def _remove_hook() -> None:
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _BeforeTorchvision)]


def make_torchvision_importable_on_first_import() -> None:
    """Install the hook (once); where torchvision is already imported, there is nothing left to do."""
    if "torchvision" in sys.modules or any(isinstance(f, _BeforeTorchvision) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _BeforeTorchvision())
