"""Nodules in world mm <-> boxes in the voxels of an image, through ``medsight.core.geometry`` only.

A nodule is a LUNA16 row: centre (x, y, z) in world mm, LPS, and a diameter in mm. A box is MONAI's
``StandardMode`` ``[x0, y0, z0, x1, y1, z1]`` in voxel-edge coordinates of the image array: voxel
``i`` spans ``[i, i + 1)``, so a continuous voxel index ``c`` (voxel centres at integers, the
convention of ``medsight.core.geometry``) sits at box coordinate ``c + 0.5``. MONAI's box flips, 90-degree
rotations, crops and zooms use the same convention, which keeps the centre exact through them.

The box of a nodule is the cube around its centre whose side along each array axis is the diameter
divided by that axis' voxel size: a sphere's extent is its diameter in any direction, so this holds
for oblique direction matrices too.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.transforms import MapTransform

from medsight.core.geometry import voxel_size_mm, voxel_to_world, world_to_voxel

#: box coordinate of the centre of voxel 0 (voxel-edge convention); MONAI Model Zoo's
#: lung_nodule_ct_detection was trained with boxes whose coordinates put voxel centres at integers (0.0):
#: ``model.box_voxel_centre`` says which convention a model learnt
VOXEL_CENTRE = 0.5


def nodules_to_boxes(nodules_mm: np.ndarray, affine_ras: np.ndarray, voxel_centre: float = VOXEL_CENTRE) -> np.ndarray:
    """Boxes of nodules on a grid.

    nodules_mm: (N, 4) rows ``x, y, z, diameter_mm`` (LPS world mm); affine_ras: (4, 4) of the image
    array. Returns (N, 6) float32 ``[x0, y0, z0, x1, y1, z1]`` in voxel-edge coordinates.
    """
    nodules_mm = np.asarray(nodules_mm, dtype=np.float64).reshape(-1, 4)
    if len(nodules_mm) == 0:
        return np.zeros((0, 6), dtype=np.float32)
    centres = world_to_voxel(nodules_mm[:, :3], affine_ras, space="LPS") + voxel_centre
    half_sides = nodules_mm[:, 3:4] / voxel_size_mm(affine_ras)[None, :] / 2.0
    return np.concatenate([centres - half_sides, centres + half_sides], axis=1).astype(np.float32)


def boxes_to_nodules(boxes: np.ndarray, affine_ras: np.ndarray, voxel_centre: float = VOXEL_CENTRE) -> np.ndarray:
    """The inverse of ``nodules_to_boxes``: (N, 6) boxes -> (N, 4) ``x, y, z, diameter_mm`` (LPS mm).

    The diameter is the mean of the box's three sides in mm (a detected box is not a perfect cube).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 6)
    if len(boxes) == 0:
        return np.zeros((0, 4), dtype=np.float64)
    centres = (boxes[:, :3] + boxes[:, 3:]) / 2.0 - voxel_centre
    world = voxel_to_world(centres, affine_ras, space="LPS")
    sides_mm = (boxes[:, 3:] - boxes[:, :3]) * voxel_size_mm(affine_ras)[None, :]
    return np.concatenate([world, sides_mm.mean(axis=1, keepdims=True)], axis=1)


def _affine_of(image) -> np.ndarray:
    affine = getattr(image, "affine", None)
    if affine is None:
        raise ValueError("the image carries no affine: load it with medsight's readers")
    return np.asarray(affine.cpu().numpy() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)


class NodulesToBoxesd(MapTransform):
    """``data[nodules_key]`` (N, 4) world-mm rows -> ``data[box_key]`` (N, 6) float32 voxel-edge boxes on
    the grid of ``data[image_key]`` as it is now (after orientation and resampling), and
    ``data[label_key]`` (N,) int64 zeros (one class: nodule)."""

    def __init__(self, image_key: str = "image", nodules_key: str = "nodules", box_key: str = "boxes",
                 label_key: str = "labels", voxel_centre: float = VOXEL_CENTRE):
        super().__init__([nodules_key])
        self.image_key, self.nodules_key, self.box_key, self.label_key = image_key, nodules_key, box_key, label_key
        self.voxel_centre = voxel_centre

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        boxes = nodules_to_boxes(np.asarray(d[self.nodules_key], dtype=np.float64), _affine_of(d[self.image_key]),
                                 self.voxel_centre)
        d[self.box_key] = torch.as_tensor(boxes)
        d[self.label_key] = torch.zeros(len(boxes), dtype=torch.long)
        return d


# -- ensembles: the members' boxes fused ---------------------------------------------------------------
#: how an ensemble's boxes are fused: ``wbf`` (weighted box fusion, Solovyev et al. 2021: a box joins the
#: cluster whose running fused box it overlaps) or ``wbc`` (weighted box clustering as in nnDetection's
#: consolidation: clusters form around the highest-scoring box, like NMS, and are then averaged)
FUSIONS = ("wbf", "wbc")


def _iou_with(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one (x1, y1, z1, x2, y2, z2) box with each of ``others`` (M, 6): MONAI's ``box_iou`` in one NumPy
    expression (called once per box while fusing, where a torch call per box costs more than the arithmetic)."""
    inter = np.prod(np.clip(np.minimum(box[3:], others[:, 3:]) - np.maximum(box[:3], others[:, :3]), 0, None), 1)
    union = np.prod(box[3:] - box[:3]) + np.prod(others[:, 3:] - others[:, :3], 1) - inter
    return inter / np.maximum(union, np.finfo(np.float64).eps)


def fuse_boxes(detections: list[dict[str, np.ndarray]], iou: float, mode: str = "wbf",
               max_boxes: int | None = None) -> dict[str, np.ndarray]:
    """One scan's boxes from several members' (``{"boxes": (N, 6), "scores": (N,)}`` each): clusters of
    boxes overlapping by at least ``iou`` become one box, the score-weighted mean of theirs, scored by the
    sum of the best score of each member in it over the member count (a box one member of five found at
    0.9 scores 0.18); ``agreement``: how many members found it."""
    from monai.data.box_utils import box_iou

    members = len(detections)
    boxes = np.concatenate([d["boxes"].reshape(-1, 6) for d in detections]).astype(np.float64)
    scores = np.concatenate([d["scores"].reshape(-1) for d in detections]).astype(np.float64)
    owner = np.concatenate([np.full(len(d["scores"]), k) for k, d in enumerate(detections)])
    if boxes.size == 0:
        return {"boxes": np.zeros((0, 6), np.float32), "scores": np.zeros(0, np.float32),
                "agreement": np.zeros(0, np.int64)}
    order = np.argsort(-scores, kind="stable")
    overlaps = box_iou(torch.from_numpy(boxes), torch.from_numpy(boxes)).numpy() if mode == "wbc" else None
    clusters: list[list[int]] = []
    fused = np.zeros_like(boxes)  # row c: cluster c's fused box so far (its first len(clusters) rows)
    for i in order:
        if not clusters:
            values = np.zeros(0)
        elif mode == "wbc":  # against each cluster's seed, its highest-scoring box
            values = overlaps[i, [members_of[0] for members_of in clusters]]
        else:  # against each cluster's fused box so far
            values = _iou_with(boxes[i], fused[:len(clusters)])
        if not len(values) or values.max() < iou:
            fused[len(clusters)] = boxes[i]
            clusters.append([i])
            continue
        best = len(values) - 1 - int(np.argmax(values[::-1]))  # the best overlap; the latest cluster on a tie
        clusters[best].append(i)
        weights = scores[clusters[best]]
        fused[best] = (boxes[clusters[best]] * weights[:, None]).sum(0) / weights.sum()
    out_scores, agreement = [], []
    for members_of in clusters:
        best_per_member: dict[int, float] = {}
        for i in members_of:
            best_per_member[owner[i]] = max(best_per_member.get(owner[i], 0.0), scores[i])
        out_scores.append(sum(best_per_member.values()) / members)
        agreement.append(len(best_per_member))
    keep = np.argsort(-np.asarray(out_scores), kind="stable")[:max_boxes]
    return {"boxes": fused[:len(clusters)].astype(np.float32)[keep], "scores": np.asarray(out_scores, np.float32)[keep],
            "agreement": np.asarray(agreement, dtype=np.int64)[keep]}
