"""Seeds and determinism: every global RNG from one number, and deterministic kernels on request."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure_determinism(deterministic: bool) -> None:
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # warn_only: CUDA has no deterministic backward for some layers DenseNet and SegResNet use (adaptive
        # average pooling, trilinear upsampling); those warn instead of stopping the run. On a CPU every
        # kernel used here is deterministic, so exact resume holds there bit for bit.
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True
