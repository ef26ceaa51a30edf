"""The ``classification`` task plugin: chest X-ray findings (ChestX-ray14) and class-per-folder or
CSV image sets; MONAI DenseNet121 by default; per-label thresholds chosen on validation; Grad-CAM."""

from medsight.tasks.classification.task import XrayClassification

__all__ = ["XrayClassification"]
