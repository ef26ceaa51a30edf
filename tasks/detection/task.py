"""``detection``: lung nodules in chest CT (LUNA16 and the generic ct-nodules layout), MONAI 3D RetinaNet,
scored by the official LUNA16 FROC/CPM rules."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medsight.datasets.schemas import NODULE_SCANS
from medsight.errors import ConfigError, DataError
from medsight.core.quiet import Ignored, library_warnings_quiet
from medsight.core.registry import register_task
from medsight.core.calibration import apply
from medsight.inference.ensemble import members
from medsight.task import DemoSpec, Monitor, PredictionWriter, StepOutput, Task

from . import froc, outputs, pipeline
from . import plans
from .boxes import fuse_boxes
from .config import DetectionConfig, size_divisible
from .model import BOX_KEY, LABEL_KEY, SCORE_KEY, EngineRetinaNet, ExportedNetwork, build_detector

log = logging.getLogger(__name__)

#: NumPy 2's deprecation met by MONAI's RetinaNetDetector padding each image (np.ceil of a 0-d tensor in
#: monai.transforms.utils.compute_divisible_spatial_size), on every detection
_PADDING_DEPRECATION = Ignored(DeprecationWarning, "__array_wrap__ must accept context", module=r"monai\.")

INPUT_SUFFIXES = (".nii.gz", ".nii", ".mhd", ".mha", ".nrrd", ".nhdr")

CPU_SMALL = {
    # bench/detection_learnability.py: CPM 0.83 on held-out synthetic scans in about 20 CPU-minutes
    "trainer": {"max_epochs": 60, "val_every_n_epochs": 10, "precision": "fp32"},
    "optim": {"name": "adamw", "lr": 2e-3, "weight_decay": 1e-4, "scheduler": "cosine", "warmup_epochs": 0},
    "data": {
        "spacing_mm": [1.40625, 1.40625, 2.5],  # twice the GPU voxel size
        "patch_size": [64, 64, 32],
        "patches_per_scan": 4,
        "batch_size": 2,
        "val_fraction": 0.2,
        "cache": "memory",
    },
    "model": {
        "depth": 18,
        "widths": [16, 32, 64, 128],
        "fpn_channels": 16,
        "anchor_shapes_voxels": [[3, 3, 2], [5, 5, 3], [7, 7, 4]],
    },
    "infer": {"roi_size": [128, 128, 64], "sw_batch_size": 4},
}

GPU = {
    # The MONAI lung_nodule_ct_detection bundle's published training settings.
    "trainer": {"max_epochs": 300, "val_every_n_epochs": 5, "precision": "auto"},
    "optim": {"name": "sgd", "lr": 1e-2, "momentum": 0.9, "nesterov": True, "weight_decay": 3e-5,
              "scheduler": "step", "warmup_epochs": 10, "step_epochs": 150, "gamma": 0.1},
    "data": {
        "spacing_mm": [0.703125, 0.703125, 1.25],
        "patch_size": [192, 192, 80],
        "patches_per_scan": 4,
        "batch_size": 1,
        "val_fraction": 0.05,
        # resampled float32 LUNA16 would need ~240 GB of cache: workers resample each epoch instead
        "cache": "none",
        "num_workers": 8,
    },
    "model": {"depth": 50, "widths": [64, 128, 256, 512], "fpn_channels": 256,
              "anchor_shapes_voxels": [[6, 8, 4], [8, 6, 5], [10, 10, 6]]},
    "infer": {"roi_size": [512, 512, 192], "score_threshold": 0.02, "nms_iou": 0.22},
}


def review_score(probabilities) -> float:
    """The largest binary entropy (bits) of a scan's mark probabilities; 0 without marks."""
    from medsight.core.calibration import binary_entropy

    values = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    return float(binary_entropy(values).max()) if values.size else 0.0


#: NMS overlaps tried on validation (with the config's own)
NMS_CANDIDATES = (0.1, 0.22, 0.3, 0.4, 0.5)


@register_task("detection")
class LungNoduleDetection(Task):
    summary = "lung nodules in chest CT: 3D RetinaNet, LUNA16 submission CSV, official FROC/CPM"
    config_class = DetectionConfig
    profiles = {"cpu-small": CPU_SMALL, "gpu": GPU}
    chosen_on_validation = ("box_selection",)
    schema = NODULE_SCANS
    planner = plans  # medsight data fingerprint, train --plans
    model_family = "detection"
    domain_on_load = True  # predict measures an input's domain facts where it reads it (read once)
    inherited_from_starting_weights = ("model", "data.spacing_mm", "data.window_hu")
    monitor = Monitor("cpm", "max")
    evaluate_split = "test"
    # a batch of patches without a nodule has no matched anchor: the box-regression head gets no gradient
    # on that rank, which DDP must be told about (torchrun stopped with "parameters that did not receive grad")
    find_unused_parameters = True
    # A coarse grid with nodules of 6 mm and more (3-13 voxels across): a detector learns them in about a minute
    # on 2 cores (40 scans of 12 cm cubed: 26 train, 6 validate, subset0's 8 are the test split). Validation keeps
    # the 100 best boxes per level: the NMS sweep over all of an early model's boxes took 10 s per validation.
    demo = DemoSpec(
        dataset="luna16",
        synth={"cases": 40, "subsets": 5, "shape": (64, 64, 40), "spacing": (1.875, 1.875, 3.0),
               "nodule_mm": (6, 25)},
        profile="cpu-small",
        overrides=("data.spacing_mm=[1.875,1.875,3.0]", "data.patch_size=[32,32,16]", "trainer.max_epochs=32",
                   "trainer.val_every_n_epochs=16", "infer.topk_per_level=100"),
        note=("Synthetic scans on a coarse grid (1.9 x 1.9 x 3 mm) with nodules of 6-25 mm, so that a detector\n"
              "learns them in about a minute of CPU: 32 epochs on 26 scans, scored on the 8 scans of subset0.\n"
              "Real LUNA16 nodules start at 3 mm: bench/detection_learnability.py trains on 0.75 mm scans."),
        quick_synth={"cases": 3, "shape": (64, 64, 24), "spacing": (1.8, 1.8, 3.0)},
        quick_overrides=("data.patches_per_scan=2", "data.batch_size=1", "infer.roi_size=[64,64,32]",
                         "trainer.max_epochs=4", "trainer.val_every_n_epochs=2", "trainer.max_steps_per_epoch=2",
                         "infer.overlays_per_scan=1"),
    )

    def transforms(self, stage: str):
        if stage == "train":
            return pipeline.train_transforms(self.config.data, self.config.model.box_voxel_centre)
        from medsight.inference.domain import DomainTapd

        # predict's out-of-distribution facts, measured on the scan just read (a no-op unless predict asks)
        return pipeline.eval_transforms(self.config.data, tap=DomainTapd(
            lambda d, name: plans.loaded_domain_case(d[pipeline.IMAGE], name)))

    def collate_fn(self, stage: str):
        return pipeline.collate_fn(stage)

    # -- model ------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        return build_detector(self.config.model, self.config.infer)

    def export_module(self, model: nn.Module) -> nn.Module:
        """The RetinaNet network (backbone, FPN, heads; a flat list of output maps): the detector's box
        decoding, NMS and sliding window are data-dependent Python and cannot be traced."""
        return ExportedNetwork(model.network)

    def network_input(self):
        from medsight.task import NetworkInput

        return NetworkInput(self.example_input(), dynamic_spatial=True)  # whole scans when they fit the window

    def with_engine(self, model: nn.Module, engine: nn.Module) -> nn.Module:
        """A detector (anchors, box decoding, NMS, sliding window: the same code) around the engine."""
        return build_detector(self.config.model, self.config.infer, network=EngineRetinaNet(engine, model.network))

    def training_step(self, model: nn.Module, batch: dict) -> StepOutput:
        targets = [{BOX_KEY: boxes, LABEL_KEY: labels} for boxes, labels in zip(batch[BOX_KEY], batch[LABEL_KEY])]
        losses = model(batch["image"], targets)
        classification, regression = losses["classification"], losses["box_regression"]
        return StepOutput(loss=classification + regression,
                          logs={"cls_loss": classification.detach(), "box_loss": regression.detach()},
                          batch_size=len(targets))

    def _detect(self, model: nn.Module, images, sweeping: bool = False) -> list[dict[str, np.ndarray]]:
        """Whole-scan detection: one pass when a scan fits ``infer.roi_size``, else sliding windows. An
        ensemble's members detect one after another; their boxes are fused per scan (``infer.fusion``),
        with each fused box's ``agreement``, the number of members that found it."""
        networks = members(model)
        if len(networks) == 1:
            return self._calibrated(self._detect_one(model, images, sweeping))
        found = [self._detect_one(network, images) for network in networks]
        infer = self.config.infer
        return self._calibrated([fuse_boxes([member[i] for member in found], infer.fusion_iou, infer.fusion,
                                            infer.max_marks_per_scan) for i in range(len(found[0]))])

    def _calibrated(self, detections: list[dict]) -> list[dict]:
        """Each mark's probability through the score's calibration (a monotone map: the FROC is unchanged);
        ``raw_scores``: the probabilities before it (review scores and calibration read those)."""
        affine = self.calibration.get("score")
        for detection in detections:
            detection["raw_scores"] = detection["scores"]
            if affine is not None:
                detection["scores"] = apply(detection["scores"], affine).astype(np.float32)
        return detections

    @property
    def nms_iou(self) -> float:
        """The NMS overlap predict and evaluate use: chosen on validation (``box_selection``), else the config's."""
        chosen = self.state.get("box_selection") or {}
        return float(chosen.get("nms_iou", self.config.infer.nms_iou))

    def _sweeping(self, model: nn.Module) -> bool:
        """Choosing the NMS overlap on this validation: while learning, for one model (an ensemble's boxes
        are fused after each member's own selection)."""
        return self.learning and self.config.infer.sweep_nms and len(members(model)) == 1

    def _select_boxes(self, model: nn.Module, sweeping: bool) -> None:
        """The detector's box selection for this call: while choosing on validation, no NMS and no cap (the
        candidates are applied to the same boxes afterwards, ``_sweep``); else the chosen NMS overlap."""
        if not hasattr(model, "set_box_selector_parameters"):
            return
        infer = self.config.infer
        model.set_box_selector_parameters(
            score_thresh=infer.score_threshold, topk_candidates_per_level=infer.topk_per_level,
            nms_thresh=1.0 if sweeping else self.nms_iou,
            detections_per_img=10 ** 6 if sweeping else infer.max_marks_per_scan)

    def _detect_one(self, model: nn.Module, images, sweeping: bool = False) -> list[dict[str, np.ndarray]]:
        self._select_boxes(model, sweeping)
        results = []
        roi = self.config.infer.roi_size
        for image in images:
            image = torch.as_tensor(image).as_subclass(torch.Tensor).float()
            use_window = any(size > limit for size, limit in zip(image.shape[-3:], roi))
            # On CPU, PyTorch runs 3D convolutions of a batch of one with its slow native kernel (oneDNN
            # only from two): pairing the scan with itself is about three times faster.
            pair = not use_window and image.device.type == "cpu"
            with library_warnings_quiet(_PADDING_DEPRECATION):
                detection = model([image, image] if pair else [image], use_inferer=use_window)[0]
            results.append({"boxes": detection[BOX_KEY].float().cpu().numpy(),
                            "scores": detection[SCORE_KEY].float().cpu().numpy()})
        return results

    def validation_step(self, model: nn.Module, batch: dict) -> dict[str, list]:
        """Per scan: its marks (world mm), their probabilities before calibration, its nodules; while
        choosing on validation also the marks at every NMS candidate (``nms:<iou>``), from the same boxes."""
        sweeping = self._sweeping(model)
        detections = self._detect(model, batch["image"], sweeping)
        affines = batch["image"].affine.reshape(-1, 4, 4).cpu().numpy()
        centre = self.config.model.box_voxel_centre
        sweep = {}
        if sweeping:
            for iou in sorted({*NMS_CANDIDATES, self.config.infer.nms_iou}):
                sweep[f"nms:{iou:g}"] = [outputs.marks_from_boxes(kept["boxes"], kept["scores"], affine, centre)
                                         for kept, affine in zip(self._nms(detections, iou), affines)]
            detections = self._nms(detections, self.config.infer.nms_iou)
        marks = [outputs.marks_from_boxes(d["boxes"], d["scores"], affine, centre)
                 for d, affine in zip(detections, affines)]
        raw = [outputs.marks_from_boxes(d["boxes"], d["raw_scores"], affine, centre)[:, 3]
               for d, affine in zip(detections, affines)]
        return {"seriesuid": list(batch["seriesuid"]), "marks": marks, "raw_probability": raw, **sweep,
                "nodules": [np.asarray(n, dtype=np.float64).reshape(-1, 4) for n in batch["nodules"]],
                "excluded": [np.asarray(e, dtype=np.float64).reshape(-1, 4) for e in batch["excluded"]]}

    def _nms(self, detections: list[dict], iou: float) -> list[dict]:
        """The boxes the detector keeps at NMS overlap ``iou`` and the cap of marks per scan (the same
        selection its box selector makes, applied to its unsuppressed boxes)."""
        from monai.data.box_utils import non_max_suppression

        kept = []
        for d in detections:
            boxes, scores = torch.as_tensor(d["boxes"]).reshape(-1, 6), torch.as_tensor(d["scores"]).reshape(-1)
            keep = (non_max_suppression(boxes, scores, iou, self.config.infer.max_marks_per_scan).numpy()
                    if len(scores) else np.zeros(0, dtype=np.int64))
            kept.append({k: np.asarray(v)[keep] for k, v in d.items()})
        return kept

    def calibration_samples(self, outputs_: dict[str, list]) -> dict[str, tuple]:
        """Every mark's probability before calibration, and whether it lies in a nodule (marks in an
        excluded finding only, as the FROC ignores them, are left out)."""
        scores, hits = [], []
        for marks, raw, nodules, excluded in zip(outputs_.get("marks") or [], outputs_.get("raw_probability") or [],
                                                 outputs_.get("nodules") or [], outputs_.get("excluded") or []):
            marks = np.asarray(marks, dtype=np.float64).reshape(-1, 5)
            inside = np.zeros(len(marks), dtype=bool)
            for nodule in np.asarray(nodules).reshape(-1, 4):
                inside |= froc.within(marks, nodule)
            ignored = np.zeros(len(marks), dtype=bool)
            for finding in np.asarray(excluded).reshape(-1, 4):
                ignored |= froc.within(marks, finding) & ~inside
            scores.append(np.asarray(raw, dtype=np.float64)[~ignored])
            hits.append(inside[~ignored].astype(np.float64))
        if not scores or not sum(len(s) for s in scores):
            return {}
        return {"score": (np.concatenate(scores), np.concatenate(hits), None)}

    def review_scores(self, outputs_: dict[str, list]) -> list[float]:
        """Per scan: the largest binary entropy of its marks' probabilities before calibration (a scan
        with a mark the model is unsure of)."""
        return [review_score(raw) for raw in outputs_.get("raw_probability") or []]

    def case_quality(self, outputs_: dict[str, list]) -> list[float]:
        """Per scan: the share of its marks at or above 0.5 that lie in a nodule (none: 1 when the scan has
        no nodule, else 0)."""
        quality = []
        for marks, nodules in zip(outputs_.get("marks") or [], outputs_.get("nodules") or []):
            marks = np.asarray(marks, dtype=np.float64).reshape(-1, 5)
            called = marks[marks[:, 3] >= 0.5]
            nodules = np.asarray(nodules).reshape(-1, 4)
            if not len(called):
                quality.append(1.0 if not len(nodules) else 0.0)
                continue
            inside = np.zeros(len(called), dtype=bool)
            for nodule in nodules:
                inside |= froc.within(called, nodule)
            quality.append(float(inside.mean()))
        return quality

    def _score(self, outputs_: dict[str, list], bootstrap: int = 0) -> froc.FrocResult:
        uids = outputs_["seriesuid"]
        return froc.evaluate(
            marks={uid: np.asarray(m)[:, :4] for uid, m in zip(uids, outputs_["marks"])},
            nodules=outputs.arrays_by_uid(uids, outputs_["nodules"]),
            excluded=outputs.arrays_by_uid(uids, outputs_["excluded"]),
            seriesuids=uids, max_marks=self.config.infer.max_marks_per_scan, bootstrap=bootstrap,
            seed=self.config.trainer.seed)

    def validation_metrics(self, outputs_: dict[str, list]) -> dict[str, float]:
        """LUNA16's metrics of the marks at the config's NMS overlap (the monitor: comparable across epochs);
        while learning, also each NMS candidate's CPM, and the best one is kept (``box_selection``), as
        nnDetection sweeps its box selection on validation. The score threshold and the cap of marks are
        not swept: the FROC ranks marks, and dropping the lowest ones can never raise a sensitivity."""
        metrics = self._score(outputs_).metrics()
        candidates = {key: self._score({**outputs_, "marks": outputs_[key]}).cpm for key in outputs_
                      if key.startswith("nms:")} if self.learning else {}
        if candidates:
            configured = f"nms:{self.config.infer.nms_iou:g}"
            best = max(candidates, key=lambda k: (candidates[k], k == configured))
            self.state["box_selection"] = {"nms_iou": float(best.split(":")[1]),
                                           "cpm": {k.split(":")[1]: round(float(v), 4) for k, v in candidates.items()}}
            metrics["cpm_chosen"] = float(candidates[best])
            log.info(f"box selection chosen on validation: NMS overlap {best.split(':')[1]} (CPM "
                     + ", ".join(f"{k.split(':')[1]}: {v:.3f}" for k, v in sorted(candidates.items())) + ")")
        return metrics

    def case_rows(self, outputs_: dict[str, list]) -> list[dict]:
        """Per scan: its nodules, its marks and the most probable mark's probability."""
        return [{"seriesuid": uid, "nodules": len(nodules), "marks": len(marks),
                 "top_probability": float(np.asarray(marks)[:, 3].max()) if len(marks) else 0.0}
                for uid, nodules, marks in zip(outputs_["seriesuid"], outputs_["nodules"], outputs_["marks"])]

    def write_evaluation(self, outputs_: dict[str, list], metrics: dict[str, float], out: Path) -> list[Path]:
        rows = [row for uid, marks in zip(outputs_["seriesuid"], outputs_["marks"])
                for row in outputs.submission_rows(uid, marks)]
        written = [outputs.write_submission(rows, out / "submission.csv")]
        result = self._score(outputs_)
        written += outputs.write_froc(result, out, title="FROC")
        log.info(outputs.froc_table(result))
        return written

    # -- inference --------------------------------------------------------------------------------
    def input_records(self, path: str | None, images: dict[str, str] | None = None) -> list[dict]:
        """A CT file (.mhd, NIfTI, NRRD), a DICOM series folder, or a folder of such scans."""
        if images:
            raise DataError("detection reads one CT per case: give files or folders as inputs, not --image",
                            "command line")
        source = Path(path)
        if not source.exists():
            raise DataError("file or folder not found", source)
        if source.is_file():
            if not source.name.lower().endswith(INPUT_SUFFIXES):
                raise DataError(f"not a CT volume ({', '.join(INPUT_SUFFIXES)} or a DICOM series folder)", source)
            return [self.input_record(str(source), _scan_id(source))]
        from medsight.datasets.ct_nodules import dicom_series_uids, volume_stem

        volumes = sorted(p for p in source.rglob("*") if p.is_file() and volume_stem(p))
        if volumes:
            return [self.input_record(str(p), _scan_id(p)) for p in volumes]
        uids = dicom_series_uids(source)
        if uids:
            # several series: the reader takes the one with most slices and reports its uid in the metadata
            return [{"image": str(source), "id": source.name, "seriesuid": uids[0] if len(uids) == 1 else source.name}]
        raise DataError("no CT scans here (NIfTI, MHD, NRRD files or DICOM series)", source)

    def input_record(self, image: str | dict[str, str], case_id: str) -> dict:
        if isinstance(image, dict):
            if len(image) != 1:
                raise DataError(f"detection reads one CT per case; got {len(image)} images ({', '.join(image)})",
                                case_id)
            image = next(iter(image.values()))
        return {"image": str(image), "id": case_id, "seriesuid": case_id}

    def predict(self, model: nn.Module, batch: dict) -> list[dict[str, np.ndarray]]:
        return self._detect(model, batch["image"])

    def to_result(self, prediction: dict, item: dict) -> outputs.NoduleMarks:
        image = item["image"]
        affine = np.asarray(image.affine.cpu().numpy(), dtype=np.float64)
        seriesuid = str(image.meta.get("series_uid") or item.get("seriesuid") or item.get("id"))
        marks = outputs.marks_from_boxes(prediction["boxes"], prediction["scores"], affine,
                                         self.config.model.box_voxel_centre)
        count = self.config.infer.overlays_per_scan
        views = outputs.overlay_slices(image[0].cpu().numpy(), affine, marks, seriesuid, count) if count else []
        raw = prediction.get("raw_scores", prediction["scores"])
        return outputs.NoduleMarks(id=str(item["id"]), seriesuid=seriesuid, marks=marks, overlays=views, task=self,
                                   source=str((image.meta or {}).get("filename_or_obj", "")),
                                   agreement=prediction.get("agreement"),
                                   quality={"score": round(review_score(raw), 5)})

    def prediction_writer(self, out: Path, options=None) -> PredictionWriter:
        infer = self.config.infer
        return outputs.NoduleSubmission(out, options, infer.dicom_min_probability, infer.dicom_max_marks)

    def dicom_report(self, result, out: Path, keep_identifiers: bool = False) -> list[Path]:
        """A TID 1500 SR of the marks the DICOM SEG holds (``report.py``)."""
        from .report import nodule_report

        infer = self.config.infer
        return nodule_report(result.marks, result.source, out, result.seriesuid, keep_identifiers,
                             infer.dicom_min_probability, infer.dicom_max_marks)

    def example_input(self) -> torch.Tensor:
        size = [2 * d for d in size_divisible(self.config.model)]
        return torch.rand(1, 1, *size, generator=torch.Generator().manual_seed(0))

    def engine_probe(self) -> torch.Tensor:
        """One window batch (each side at most 128, to keep the one-off timing short)."""
        infer = self.config.infer
        size = [min(s, 128) for s in infer.roi_size]
        return torch.rand(min(infer.sw_batch_size, 4), 1, *size, generator=torch.Generator().manual_seed(0))

    @classmethod
    def demo_inputs(cls, data: Path) -> list[str]:
        from medsight.datasets.luna16 import find_scans

        held_out = sorted(str(path) for path, fold in find_scans(Path(data)).values() if fold == 0)
        return held_out[:2]

    # -- command line: scoring a submission file --------------------------------------------------
    @classmethod
    def add_arguments(cls, parser, command: str) -> None:
        if command == "evaluate":
            parser.add_argument("--annotations", help="with --predictions: annotations.csv of the scans")
            parser.add_argument("--excluded", help="with --predictions: annotations_excluded.csv (marks on these "
                                                   "are neither hits nor false positives)")
            parser.add_argument("--seriesuids", help="with --predictions: the scans scored (CSV or one uid a line)")
            parser.add_argument("--bootstrap", type=int, default=0,
                                help="with --predictions: bootstrap resamples for confidence intervals")

    @classmethod
    def score_predictions(cls, predictions: Path, out: Path, annotations=None, excluded=None, seriesuids=None,
                          bootstrap: int = 0) -> dict[str, float]:
        """Score any system's LUNA16 submission CSV by the official rules; writes froc.csv, froc.png,
        froc_curve.csv and summary.json to ``out``. Without ``seriesuids``, the scans scored are those
        named in the annotations or the predictions (scans with neither would be missed: pass the list)."""
        from medsight.datasets.luna16 import read_annotations

        bootstrap = bootstrap or 0
        if bootstrap < 0:
            raise ConfigError(f"--bootstrap must be 0 or more, got {bootstrap}", "command line")
        if not annotations:
            raise DataError("scoring needs --annotations (annotations.csv of the scans)", "command line")
        marks = froc.read_submission(Path(predictions))
        nodules = froc.nodule_arrays(read_annotations(Path(annotations)))
        skipped = froc.nodule_arrays(read_annotations(Path(excluded))) if excluded else {}
        uids = froc.read_seriesuids(Path(seriesuids)) if seriesuids else sorted(set(nodules) | set(marks))
        if not uids:
            raise DataError("no scans to score: the annotations and the predictions name none", predictions)
        result = froc.evaluate(marks, nodules, skipped, uids, bootstrap=bootstrap)
        if not seriesuids:
            result.notes.append("no --seriesuids: scored the scans named in the annotations or the predictions")
        outputs.write_froc(result, Path(out), title=Path(predictions).stem)
        log.info(outputs.froc_table(result))
        return result.metrics()


def _scan_id(path: Path) -> str:
    from medsight.datasets.ct_nodules import volume_stem

    return volume_stem(path) or path.stem
