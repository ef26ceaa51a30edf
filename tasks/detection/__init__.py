"""Lung-nodule detection in chest CT (LUNA16): MONAI 3D RetinaNet, official FROC/CPM scoring."""

from .task import LungNoduleDetection

__all__ = ["LungNoduleDetection"]
