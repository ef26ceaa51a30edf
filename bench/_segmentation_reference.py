"""The MONAI reference of ``segmentation_inference_speed.py``: what a competent MONAI user writes for a whole
segmentation predict (same weights, same preprocessing and window as the checkpoint's config), and the
agreement measures between written label maps."""

from __future__ import annotations

import copy
from pathlib import Path

import nibabel as nib
import numpy as np
import torch


class Reference:
    """A competent MONAI user's predict for the same job: same weights, same preprocessing and window."""

    def __init__(self, model: torch.nn.Module, config, convention: str, bf16: bool, channels_last: bool):
        from monai.inferers import SlidingWindowInferer
        from monai.transforms import (Compose, CropForegroundd, EnsureChannelFirstd, EnsureTyped, LoadImaged,
                                      NormalizeIntensityd, Orientationd, Spacingd)

        from medsight.datasets import brats
        from medsight.data.transforms import BackgroundToZerod

        data, infer = config.data, config.infer
        steps = [LoadImaged("image", image_only=True), EnsureChannelFirstd("image"),
                 EnsureTyped("image", dtype=torch.float32)]
        if data.orient:
            steps.append(Orientationd("image", axcodes=data.orient, labels=(("L", "R"), ("P", "A"), ("I", "S"))))
        if data.resample:
            steps.append(Spacingd("image", pixdim=tuple(data.spacing_mm), mode="bilinear"))
        if data.background_to_zero:  # medsight's own step (a constant non-zero background -> 0), as configured
            steps.append(BackgroundToZerod("image"))
        steps.append(NormalizeIntensityd("image", nonzero=True, channel_wise=True))
        if data.crop_foreground:
            steps.append(CropForegroundd("image", source_key="image", select_fn=lambda x: x != 0, allow_smaller=True))
        self.preprocessing = Compose(steps)
        self.model = copy.deepcopy(model).float().eval()
        self.channels_last = channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last_3d)
        self.inferer = SlidingWindowInferer(roi_size=tuple(infer.roi_size), sw_batch_size=infer.sw_batch_size,
                                            overlap=infer.overlap, mode=infer.blend)
        self.bf16, self.threshold = bf16, infer.threshold
        self.convention = brats.CONVENTIONS[convention]

    def network(self, window: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            window = window.contiguous(memory_format=torch.channels_last_3d)
        return self.model(window)

    def __call__(self, files: list[str], out: Path) -> tuple[Path, np.ndarray]:
        """(the label map written, the region probabilities (3, X, Y, Z) on the input grid)."""
        return self.finish(self.preprocessing({"image": files}), out)

    def finish(self, data: dict, out: Path) -> tuple[Path, np.ndarray]:
        """The rest of ``__call__`` for a case ``self.preprocessing`` has made (in a DataLoader's worker, say)."""
        from monai.data import MetaTensor
        from monai.transforms import Invertd

        image = data["image"]
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.inferer(image.as_tensor()[None], self.network)
        probs = torch.sigmoid(logits.float())[0]
        data["pred"] = MetaTensor(probs, meta=dict(image.meta))
        inverted = Invertd("pred", transform=self.preprocessing, orig_keys="image", nearest_interp=False)(data)["pred"]
        probs = inverted.as_tensor().numpy()
        labels = self.convention.from_regions(probs > self.threshold).astype(np.uint8)
        out.mkdir(parents=True, exist_ok=True)
        path = out / "reference_seg.nii.gz"
        nib.save(nib.Nifti1Image(labels, np.asarray(image.meta["original_affine"], dtype=np.float64)), str(path))
        return path, probs


def regions(path: Path, convention: str) -> tuple[np.ndarray, np.ndarray]:
    from medsight.datasets import brats

    image = nib.load(str(path))
    return brats.CONVENTIONS[convention].to_regions(np.asarray(image.dataobj).astype(np.int16)), image.affine


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total
