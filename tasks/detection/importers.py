"""The MONAI Model Zoo's ``lung_nodule_ct_detection`` bundle as a medsight detection checkpoint.

Read from the bundle's own ``configs/inference.json`` (its literal values; the arguments of its
``$expressions`` are parsed, never evaluated):

- the backbone (``resnet50(..., conv1_t_stride=[2,2,1], conv1_t_size=[7,7,7])``), the FPN's returned layers
  (``resnet_fpn_feature_extractor(@backbone, 3, False, [1, 2], None)``) and the anchors
  (``AnchorGeneratorWithAnchorShape``: feature-map scales and base shapes);
- the box selection (``set_box_selector_parameters``: score threshold, top-k, NMS IoU, marks per scan, capped
  at the 100 LUNA16 scores) and the sliding window (``infer_patch_size``, ``overlap``);
- the preprocessing: RAS orientation, the voxel size of ``Spacingd`` (0.703125 x 0.703125 x 1.25 mm: the
  bundle's raw-LUNA16 path; medsight resamples every scan to it) and the HU window of
  ``ScaleIntensityRanged`` (-1024..300 HU to 0..1).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import torch

from medsight.sources.bundles import Bundle, bundle_provenance, is_bundle, read_bundle, value
from medsight.errors import ConfigError
from medsight.sources.importers import Imported, ModelImporter, register_importer


def _call_arguments(expression: str, function: str) -> dict:
    """Keyword arguments (and ``_positional``) of ``function(...)`` inside a bundle expression, as literals."""
    match = re.search(rf"{re.escape(function)}\((.*)\)", str(expression))
    if not match:
        return {}
    try:
        call = ast.parse(f"f({match.group(1)})", mode="eval").body
    except SyntaxError:
        return {}
    arguments: dict = {"_positional": []}
    for node in call.args:
        try:
            arguments["_positional"].append(ast.literal_eval(node))
        except ValueError:
            arguments["_positional"].append(None)  # a @reference
    for keyword in call.keywords:
        try:
            arguments[keyword.arg] = ast.literal_eval(keyword.value)
        except ValueError:
            arguments[keyword.arg] = None
    return arguments


def _operation(bundle: Bundle, name: str) -> dict:
    for expression in bundle.inference.get("detector_ops", []):
        if name in str(expression):
            return _call_arguments(expression, name)
    return {}


def _settings(bundle: Bundle, where) -> dict:
    config = bundle.inference
    depth = re.search(r"resnet(\d+)\(", str(config.get("backbone", "")))
    if depth is None:
        raise ConfigError("the bundle's backbone is not a MONAI resnetNN(...) this importer reads", where)
    backbone = _call_arguments(config["backbone"], f"resnet{depth.group(1)}")
    extractor = _call_arguments(config.get("feature_extractor", ""), "resnet_fpn_feature_extractor")
    returned = (extractor.get("_positional") or [None, None, None, [1, 2]])[3] or extractor.get("returned_layers")
    anchors = config.get("anchor_generator") or {}
    scales = value(anchors.get("feature_map_scales"), [1, 2, 4])
    if list(scales) != [2**level for level in range(len(returned) + 1)]:
        raise ConfigError(f"anchor feature_map_scales {scales} do not follow the FPN levels of {returned}", where)
    selector = _operation(bundle, "set_box_selector_parameters")
    window = _operation(bundle, "set_sliding_window_inferer")
    spacing = bundle.transform("Spacingd") or {}
    scaling = bundle.transform("ScaleIntensityRanged") or {}
    model = {"name": "retinanet", "depth": int(depth.group(1)), "returned_layers": [int(v) for v in returned],
             "conv1_stride": [int(v) for v in backbone.get("conv1_t_stride", [2, 2, 1])],
             "conv1_kernel": [int(v) for v in backbone.get("conv1_t_size", [7, 7, 7])],
             "anchor_shapes_voxels": [[float(v) for v in shape] for shape in value(anchors.get("base_anchor_shapes"))],
             # the bundle's boxes map to world through the affine as they are: voxel centres at integers
             "box_voxel_centre": 0.0}
    data = {"spacing_mm": [float(v) for v in value(spacing.get("pixdim"), [0.703125, 0.703125, 1.25])],
            "window_hu": [float(value(scaling.get("a_min"), -1024.0)), float(value(scaling.get("a_max"), 500.0))]}
    infer = {"roi_size": [int(v) for v in value(config.get("infer_patch_size"), [512, 512, 192])],
             "overlap": float(window.get("overlap", 0.25)),
             "score_threshold": float(selector.get("score_thresh", 0.02)),
             "topk_per_level": int(selector.get("topk_candidates_per_level", 1000)),
             "nms_iou": float(selector.get("nms_thresh", 0.22)),
             "max_marks_per_scan": min(100, int(selector.get("detections_per_img", 100)))}
    return {"model": model, "data": data, "infer": infer}


@register_importer("monai-lung-nodules")
class LungNoduleBundle(ModelImporter):
    description = "MONAI Model Zoo bundle lung_nodule_ct_detection (folder or zip): 3D RetinaNet, LUNA16"

    @classmethod
    def accepts(cls, source: Path) -> bool:
        return is_bundle(source) and ("lung_nodule" in source.name or "nodule" in str(read_bundle(source).metadata))

    def read(self, source: Path, labels: list[str] | None = None) -> Imported:
        bundle = read_bundle(source)
        settings = _settings(bundle, source)
        # the bundle saves the RetinaNet network; medsight's detector holds it as ``network``
        weights = {f"network.{k.removeprefix('network.')}": v for k, v in bundle.weights.items()
                   if isinstance(v, torch.Tensor)}
        selector = _operation(bundle, "set_box_selector_parameters")
        provenance = bundle_provenance(bundle, source, "chest CT (lung window), nodules 3-30 mm as in "
                                       "LUNA16/LIDC-IDRI", "LUNA16")
        notes = [f"RetinaNet ResNet{settings['model']['depth']} + FPN on layers {settings['model']['returned_layers']}, "
                 f"anchors {settings['model']['anchor_shapes_voxels']}",
                 f"scans resampled to {settings['data']['spacing_mm']} mm, HU {settings['data']['window_hu']} -> 0..1; "
                 f"window {settings['infer']['roi_size']}; score >= {settings['infer']['score_threshold']}, NMS IoU "
                 f"{settings['infer']['nms_iou']}"]
        if int(selector.get("detections_per_img", 100)) > 100:
            notes.append(f"marks per scan: the bundle keeps {selector['detections_per_img']}, medsight the 100 that "
                         "LUNA16 scores")
        return Imported("detection", settings, {}, weights, provenance, notes)
