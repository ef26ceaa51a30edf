"""Brain-tumour segmentation in multi-modal MRI (BraTS and clinical files)."""

from .task import BrainTumourSegmentation

__all__ = ["BrainTumourSegmentation"]
