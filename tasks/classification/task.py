"""The ``classification`` task: findings on chest X-rays (ChestX-ray14's 14, multi-label) and
single-label class-per-folder or CSV image sets, with per-label thresholds chosen on validation and
Grad-CAM pictures.

State kept in checkpoints (``self.state``): ``labels`` (names in output order), ``multi_label``,
``negative_label``, ``thresholds`` (per label, chosen on validation while training; None for
single-label data, which is decided by argmax) and ``loss_weights``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from monai.transforms import Compose, EnsureTyped
from torch import nn

from medsight.data import transforms as T
from medsight.data.formats import DataSource
from medsight.datasets.schemas import LABELLED_PICTURES
from medsight.errors import DataError, TaskError
from medsight.core.models import create_model
from medsight.data.picture_cache import CachedPicturesd
from medsight.core.registry import register_task
from medsight.inference.ensemble import Moments, members
from medsight.task import DemoSpec, Distillation, Monitor, PredictionWriter, StepOutput, Task
from medsight.tasks.classification import outputs, plans
from medsight.tasks.classification.cam import GradCamMaps
from medsight.tasks.classification.config import ClassificationConfig
from medsight.tasks.classification.labels import LabelSet, label_set
from medsight.tasks.classification.losses import (class_weights, classification_loss, distillation_loss, loss_name,
                                                  positive_weights)
from medsight.tasks.classification.metrics import DEFAULT_THRESHOLD, choose_thresholds, summarise
from medsight.tasks.classification.models import last_feature_map_layer
from medsight.tasks.classification.sampling import inverse_frequency_weights, per_group_weights

log = logging.getLogger(__name__)


def operating_point_scale(probabilities: torch.Tensor, points: list) -> torch.Tensor:
    """Each label's probability rescaled piecewise linearly so that its operating point becomes 0.5
    (torchxrayvision's ``op_norm``); labels without a point (None/NaN) keep theirs."""
    point = torch.tensor([float("nan") if p is None else float(p) for p in points], device=probabilities.device)
    point = point.expand_as(probabilities)
    below = probabilities / (point * 2)
    above = 1 - (1 - probabilities) / ((1 - point) * 2)
    scaled = torch.where(probabilities < point, below, above)
    return torch.where(torch.isnan(point), probabilities, scaled)

CPU_SMALL = {
    "data": {"image_size": 128, "batch_size": 16, "val_batch_size": 32, "cache": "memory"},
    "model": {"name": "densenet121"},
    "optim": {"lr": 1e-3, "weight_decay": 1e-4, "scheduler": "cosine", "warmup_epochs": 0.5},
    "trainer": {"max_epochs": 8, "precision": "fp32"},
}
GPU = {
    # the picture cache: 28x the per-core rate of decoding PNGs every epoch; its rows read 36x faster than the
    # disk cache's float32 files and take 1/4 of the space (bench/loader_speed.py); data.cache_dir: shared
    "data": {"image_size": 224, "batch_size": 64, "val_batch_size": 128, "num_workers": 8, "cache": "pictures"},
    "model": {"name": "densenet121"},
    "optim": {"lr": 3e-4, "weight_decay": 1e-4, "scheduler": "cosine", "warmup_epochs": 1.0},
    "trainer": {"max_epochs": 20, "precision": "bf16", "channels_last": True, "early_stopping_patience": 5},
}


#: predict on a CPU: about this many model-input pixels per batch, at most CPU_MAX_BATCH pictures.
#: DenseNet121 bf16 at 224 px: 19-22 ms/picture at batch 8, 22-24 at 32 (fp32: 34 vs 47-51)
CPU_PIXELS_PER_BATCH = 8 * 224 * 224
CPU_MAX_BATCH = 64


def review_score(probabilities: np.ndarray, multi_label: bool) -> np.ndarray:
    """Per picture (rows): the largest binary entropy over its labels (single-label: the softmax's entropy
    in bits over log2 of the class count)."""
    from medsight.core.calibration import binary_entropy

    if multi_label:
        return binary_entropy(probabilities).max(axis=1)
    p = np.clip(probabilities, 1e-7, 1.0)
    return -(p * np.log2(p)).sum(axis=1) / max(1.0, np.log2(p.shape[1]))


@register_task("classification")
class XrayClassification(Task):
    input_kind = "picture"
    domain_facts = plans  # what predict compares with the training pictures (their headers)
    default_student = "resnet18"
    summary = "findings on chest X-rays (ChestX-ray14, multi-label) and class-per-folder/CSV image sets"
    config_class = ClassificationConfig
    schema = LABELLED_PICTURES
    model_family = "classification"
    chosen_on_validation = ("thresholds",)
    inherited_from_starting_weights = ("model", "data.image_size", "data.channels", "data.normalize",
                                       "data.intensity_percentiles")
    monitor = Monitor("mean_auroc", "max")
    profiles = {"cpu-small": CPU_SMALL, "gpu": GPU}
    # 96 px pictures (cpu-small trains at 128) and ResNet-18 (cpu-small's DenseNet121 learns as well but takes
    # 18 s an epoch on 2 AVX2 cores, too long for a 5-minute demo of three tasks), channels-last (oneDNN's
    # faster layout for 2D convolutions on a CPU); Grad-CAM still gets a 3 x 3 map
    demo = DemoSpec(
        dataset="chestxray14",
        synth={"cases": 400, "size": 96},
        profile="cpu-small",
        overrides=("data.image_size=96", "model.name=resnet18", "trainer.max_epochs=6", "trainer.channels_last=true"),
        note=("400 synthetic radiographs at 96 px (the cpu-small profile trains DenseNet121 at 128): 6 epochs of\n"
              "ResNet-18, the quicker network for a demo on a CPU."),
        quick_synth={"cases": 48, "size": 64},
        quick_overrides=("data.image_size=64", "data.batch_size=8", "trainer.max_steps_per_epoch=3",
                         "trainer.max_epochs=2"),
        predict_options={"cam": True, "cam_top_k": 2},
    )
    #: evaluate's default split
    evaluate_split = "test"

    def __init__(self, config: ClassificationConfig):
        super().__init__(config)
        #: Grad-CAM per network (keyed by id; the network is kept with it, so the id stays its own)
        self._cams: dict[int, tuple[GradCamMaps, nn.Module]] = {}
        self._teacher: nn.Module | None = None  # loss.distill_from, loaded at the first training step

    # -- labels -----------------------------------------------------------------------------------
    @property
    def labels(self) -> LabelSet:
        """The label set in output order: learnt when training starts, else the checkpoint's."""
        self.require_state("labels")
        return LabelSet.from_state(self.state)

    @property
    def thresholds(self) -> list[float] | None:
        """Per label, the probability a picture is called positive at, on the scale predict gives: the
        calibrated one, or the network's own with ``infer.calibrated=false``."""
        found = self.state.get("thresholds")
        if found is None or self.config.infer.calibrated or not self.labels.multi_label:
            return found
        from medsight.core.calibration import invert, stored

        fitted = stored(self.state)
        return [float(invert(t, fitted.get(name))) for t, name in zip(found, self.labels.names)] if fitted else found

    # -- data -------------------------------------------------------------------------------------
    def learn_state(self, data: DataSource) -> None:
        """The label set (the dataset's, or ``data.labels``), default thresholds, and the loss weights
        counted on the training split."""
        labels = label_set(data.metadata(), self.config.data, data.root)
        self.state.update(labels.to_state())
        self.state["thresholds"] = [DEFAULT_THRESHOLD] * len(labels.names) if labels.multi_label else None
        train = self.records(data, "train")
        truth = np.stack([r["label"] for r in train]) if train else np.zeros((0, len(labels.names)), np.float32)
        weights = None
        if self.config.loss.pos_weight and len(truth):
            weights = positive_weights(truth) if loss_name(self.config.loss.name, labels.multi_label) == "bce" \
                else class_weights(truth)
        self.state["loss_weights"] = weights
        counts = ", ".join(f"{n} {int(c)}" for n, c in zip(labels.names, truth.sum(axis=0)))
        log.info(f"labels ({'multi' if labels.multi_label else 'single'}-label), training positives: {counts}")

    def records(self, data: DataSource, split: str) -> list[dict]:
        labels = self.labels
        return [{"image": r["image"], "path": r["image"], "id": r["id"], "group": r["group"],
                 "label": labels.encode(r["names"], r["image"])} for r in data.records(split)]

    def transforms(self, stage: str) -> Compose:
        """image: (1, S, S) float32, z-scored per picture (after clipping to its percentile range, if set).

        Per-picture scaling makes 8-bit and 16-bit PNGs and windowed DICOMs alike; resizing comes
        first so the percentiles are taken over S x S pixels, not the full-resolution picture.
        """
        d = self.config.data
        size = d.image_size
        # Pictures need no geometry past loading: plain tensors skip MetaTensor bookkeeping in every
        # later transform (about a third of the per-picture cost of predict).
        decode = [*T.load("image", kind="picture"), EnsureTyped("image", dtype=torch.float32, track_meta=False)]
        if d.cache == "pictures":  # decoded, gray and resized once (medsight.data.picture_cache), uint8
            stored = d.cache_size or size
            steps = [CachedPicturesd("image", Compose([*decode, *T.resize("image", size=(stored, stored))]), stored)]
            if stored != size or d.normalize != "picture":
                steps.append(EnsureTyped("image", dtype=torch.float32, track_meta=False))
                steps += T.resize("image", size=(size, size)) if stored != size else []
        else:
            steps = [*decode, *T.resize("image", size=(size, size))]
        if d.normalize == "imagenet":
            steps += T.imagenet_normalise("image", channels=d.channels)
        elif d.normalize == "xrv":
            steps += T.xrv_normalise("image")
            if d.channels > 1:
                steps += T.repeat_channels("image", d.channels)
        else:  # percentile clipping and z-score: one table lookup on the cache's uint8 pictures
            steps += T.picture_zscore("image", d.intensity_percentiles)
            if d.channels > 1:
                steps += T.repeat_channels("image", d.channels)
        if stage == "train":
            shift_px = d.translate_fraction * size
            steps += T.affine("image", prob=d.augment_prob, rotate_deg=d.rotate_deg, scale=d.scale_fraction,
                              translate=(shift_px, shift_px), dims=2, padding_mode="border",
                              spatial_size=(size, size))
            steps += T.intensity("image", prob=d.augment_prob, scale=d.contrast, shift=d.brightness)
            if d.hflip_prob > 0:
                steps += T.flips("image", axes=(1,), prob=d.hflip_prob)  # axis 1 = columns: left-right
        steps.append(EnsureTyped(["image", "label"], dtype=torch.float32, track_meta=False, allow_missing_keys=True))
        return Compose(steps)

    def train_sample_weights(self, records: list[dict]) -> list[float] | None:
        sampler = self.config.data.sampler
        if sampler == "weighted":
            return inverse_frequency_weights(np.stack([r["label"] for r in records]))
        if sampler == "patient":
            return per_group_weights([r["group"] for r in records])
        return None

    # -- model ------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        m = self.config.model
        return create_model("classification", m.name, m, in_channels=self.config.data.channels,
                            out_channels=len(self.labels.names))

    def adapt_starting_weights(self, tensors: dict, facts: dict, own: dict) -> tuple[dict, list[str]]:
        """The head's rows taken by label name from a classifier of another label set; labels the source
        lacks keep their fresh rows."""
        source = list((facts.get("task_state") or {}).get("labels") or [])
        names = list(self.labels.names)
        if not source or source == names:
            return tensors, []
        weight_key = next((k for k in reversed(list(own)) if own[k].dim() == 2 and own[k].shape[0] == len(names)
                           and k in tensors and tensors[k].shape[0] == len(source)
                           and tensors[k].shape[1:] == own[k].shape[1:]), None)
        if weight_key is None:
            return tensors, [f"labels {len(source)} -> {len(names)}: no head to map by name; a new one"]
        shared = [n for n in names if n in source]
        tensors = dict(tensors)
        if not shared:  # nothing to take over: the head is new (and not counted as pretrained)
            for key in (weight_key, weight_key.rsplit(".", 1)[0] + ".bias"):
                tensors.pop(key, None)
            return tensors, [f"head {weight_key.rsplit('.', 1)[0]}: new for {', '.join(names)} (the source's "
                             f"{len(source)} labels share none of these names)"]
        for key in (weight_key, weight_key.rsplit(".", 1)[0] + ".bias"):
            if key in tensors and key in own:
                rows = own[key].clone()
                for row, name in enumerate(names):
                    if name in source:
                        rows[row] = tensors[key][source.index(name)]
                tensors[key] = rows
        fresh = [n for n in names if n not in source]
        return tensors, [f"head {weight_key.rsplit('.', 1)[0]}: {len(shared)} of {len(names)} labels taken from the "
                         f"source by name" + (f"; new: {', '.join(fresh)}" if fresh else "")]

    def _probabilities(self, logits: torch.Tensor, calibrated: bool = True) -> torch.Tensor:
        """Sigmoid (multi-label) or softmax probabilities, the logits first through the map fitted on
        out-of-fold predictions (``medsight cv``) where the checkpoint holds one and ``infer.calibrated``."""
        logits = logits.float()
        affine = self._affine(logits.device) if calibrated else None
        if affine is not None:
            logits = logits * affine[0] + affine[1]
        if not self.labels.multi_label:
            return torch.softmax(logits, dim=1)
        probabilities = torch.sigmoid(logits)
        points = self.state.get("operating_points")
        if points:  # a published model's calibration (torchxrayvision): its operating point maps to 0.5
            probabilities = operating_point_scale(probabilities, points)
        return probabilities

    def _affine(self, device) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Per label, the calibration's slope and intercept as (K,) tensors (one slope for a softmax)."""
        fitted = self.calibration
        if not fitted:
            return None
        if not self.labels.multi_label:
            slope = fitted.get("all", (1.0, 0.0))[0]
            return torch.tensor(slope, device=device), torch.tensor(0.0, device=device)
        rows = [fitted.get(name, (1.0, 0.0)) for name in self.labels.names]
        return (torch.tensor([r[0] for r in rows], device=device), torch.tensor([r[1] for r in rows], device=device))

    def ensemble_probabilities(self, model: nn.Module, images: torch.Tensor, raw: bool = False):
        """The members' mean probabilities (one model: its own), their per-label standard deviation (None
        for one model) and, with ``raw``, the mean before calibration (the same tensor without a map): each
        network runs once."""
        moments = Moments()
        before = Moments() if raw and self.calibration else None
        for network in members(model):
            logits = network(images)
            moments.add(self._probabilities(logits))
            if before is not None:
                before.add(self._probabilities(logits, calibrated=False))
        found = moments.mean, (moments.std if moments.count > 1 else None)
        if not raw:
            return found
        return (*found, before.mean if before is not None else moments.mean)

    def training_step(self, model: nn.Module, batch: dict) -> StepOutput:
        logits = model(batch["image"])
        multi = self.labels.multi_label
        loss = classification_loss(logits, batch["label"], loss_name(self.config.loss.name, multi), multi,
                                   self.state.get("loss_weights"), self.config.loss.focal_gamma)
        settings = self.config.loss
        if not settings.distill_from:
            return StepOutput(loss=loss, batch_size=len(logits))
        distill = distillation_loss(logits, self._teacher_logits(batch["image"]), multi, settings.distill_temperature)
        weight = settings.distill_weight
        return StepOutput(loss=(1 - weight) * loss + weight * distill, batch_size=len(logits),
                          logs={"label_loss": loss.detach(), "distill_loss": distill.detach()})

    def distillation(self, teacher: Path, student: str) -> Distillation:
        """The student (``model.name``) learns the teacher's softened outputs too (``loss.distill_from``, weighted
        by ``loss.distill_weight`` at ``loss.distill_temperature``), from scratch."""
        loss = self.config.loss
        return Distillation(overrides=(f"model.name={student}", "model.init_weights=null", "trainer.init_weights=null",
                                       f"loss.distill_from={teacher}"),
                            settings={"weight": loss.distill_weight, "temperature": loss.distill_temperature})

    def frozen_networks(self) -> list[nn.Module]:
        """The distillation teacher (``loss.distill_from``), loaded frozen once per process (each DDP rank has
        its own unwrapped copy); the trainer puts it on the device. A resumed run reloads it from the config."""
        from medsight.tasks.classification.teacher import load_teacher

        settings = self.config.loss
        if settings.distill_from and self._teacher is None:
            self._teacher = load_teacher(settings.distill_from, self.config, self.labels)
            log.info(f"distilling from {settings.distill_from} (weight {settings.distill_weight}, "
                     f"temperature {settings.distill_temperature})")
        return [self._teacher] if self._teacher is not None else []

    def _teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher's logits (B, K) for the student's batch."""
        if self._teacher is None:
            raise TaskError("loss.distill_from is set but the teacher was not loaded (frozen_networks)", "training")
        with torch.no_grad():
            return self._teacher(images)

    def validation_step(self, model: nn.Module, batch: dict) -> dict[str, list]:
        probabilities, _, raw = self.ensemble_probabilities(model, batch["image"], raw=True)
        out = {"probabilities": list(probabilities.cpu().numpy()), "label": list(batch["label"].cpu().numpy()),
               "id": list(batch["id"])}
        if raw is not probabilities:  # evaluate reports calibration before and after
            out["uncalibrated"] = list(raw.cpu().numpy())
        return out

    def validation_metrics(self, outputs: dict[str, list]) -> dict[str, float]:
        probabilities, truth = np.stack(outputs["probabilities"]), np.stack(outputs["label"])
        labels = self.labels
        if self.learning and labels.multi_label:
            self.state["thresholds"] = choose_thresholds(probabilities, truth, self.config.metrics.threshold_rule,
                                                         fallback=self.thresholds)
        return summarise(probabilities, truth, labels.names, self.thresholds, labels.multi_label)

    def calibration_samples(self, outputs: dict[str, list]) -> dict[str, tuple]:
        """Per label (multi-label), its probabilities before any calibration and the truth; single-label
        outputs are not calibrated here (one softmax over classes)."""
        if not self.labels.multi_label or not outputs.get("probabilities"):
            return {}
        probabilities = np.stack(outputs.get("uncalibrated") or outputs["probabilities"])
        truth = np.stack(outputs["label"])
        return {name: (probabilities[:, k], truth[:, k], None) for k, name in enumerate(self.labels.names)}

    def apply_calibration(self, affine: dict[str, list[float]], method: str) -> None:
        """The map, and each label's threshold moved with its probabilities: the same pictures are called
        positive before and after calibration (the map is monotone)."""
        from medsight.core.calibration import apply, invert, stored

        previous = stored(self.state)  # thresholds set on an earlier map's scale go back to the network's first
        super().apply_calibration(affine, method)
        if self.state.get("thresholds") is not None and self.labels.multi_label:
            self.state["thresholds"] = [float(apply(invert(t, previous.get(name)), affine.get(name)))
                                        for t, name in zip(self.state["thresholds"], self.labels.names)]

    def review_scores(self, outputs: dict[str, list]) -> list[float]:
        """Per picture: the largest binary entropy over the labels of the probabilities before any
        calibration (a picture the model is unsure about on some finding)."""
        if not outputs.get("probabilities"):
            return []
        probabilities = np.stack(outputs.get("uncalibrated") or outputs["probabilities"])
        return [float(v) for v in review_score(probabilities, self.labels.multi_label)]

    def case_quality(self, outputs: dict[str, list]) -> list[float]:
        """Per picture: the share of labels decided right at the checkpoint's thresholds."""
        if not outputs.get("probabilities"):
            return []
        probabilities, truth = np.stack(outputs["probabilities"]), np.stack(outputs["label"])
        if not self.labels.multi_label:
            return [float(v) for v in (probabilities.argmax(1) == truth.argmax(1) if truth.ndim == 2
                                       else probabilities.argmax(1) == truth)]
        thresholds = np.asarray(self.thresholds if self.thresholds is not None else [DEFAULT_THRESHOLD]
                                * probabilities.shape[1])
        return [float(v) for v in ((probabilities >= thresholds) == (truth > 0.5)).mean(axis=1)]

    def case_rows(self, results: dict[str, list]) -> list[dict]:
        """Per picture: its truth, one probability per label, and the decision."""
        if not results.get("id"):
            return []
        return outputs.image_rows(results["id"], np.stack(results["probabilities"]), np.stack(results["label"]),
                                  self.labels, self.thresholds)

    def write_evaluation(self, results: dict[str, list], metrics: dict[str, float], out: Path) -> list[Path]:
        """per_image.csv, per_label.csv, roc.png (and confusion_matrix.csv for single-label data)."""
        return outputs.write_evaluation_files(results["id"], np.stack(results["probabilities"]),
                                              np.stack(results["label"]), self.labels, self.thresholds, out)

    # -- inference --------------------------------------------------------------------------------
    def input_records(self, path: str | None, images: dict[str, str] | None = None) -> list[dict]:
        from medsight.datasets.folders import IMAGE_SUFFIXES, images_in

        if images:
            return [self.input_record(str(p), Path(p).name) for p in images.values()]
        path = Path(path)
        if path.is_dir():
            found = images_in(path)
            if not found:
                raise DataError(f"no pictures ({', '.join(IMAGE_SUFFIXES)}) in this folder", path)
            return [self.input_record(str(p), p.relative_to(path).as_posix()) for p in found]
        if not path.exists():
            raise DataError("file not found", path)
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(f"not a picture this task reads ({', '.join(IMAGE_SUFFIXES)})", path)
        return [self.input_record(str(path), path.name)]

    def input_record(self, image: str | dict[str, str], case_id: str) -> dict:
        if isinstance(image, dict):
            if len(image) != 1:
                raise DataError(f"an X-ray is one picture; got {len(image)} images ({', '.join(image)})", case_id)
            image = next(iter(image.values()))
        from medsight.io.readers import is_memory_name

        return {"image": str(image), "path": case_id if is_memory_name(image) else str(image), "id": case_id}

    def predict_batch_size(self, device: torch.device) -> int:
        if self.config.infer.batch_size:
            return self.config.infer.batch_size
        if device.type != "cpu":
            return self.config.data.val_batch_size
        return max(1, min(CPU_MAX_BATCH, CPU_PIXELS_PER_BATCH // self.config.data.image_size ** 2))

    def predict(self, model: nn.Module, batch: dict) -> list[dict]:
        images = batch["image"]
        probabilities, spread, raw = self.ensemble_probabilities(model, images, raw=True)
        items = [{"probabilities": p, "score": float(score)} for p, score in
                 zip(probabilities.cpu().numpy(), review_score(raw.cpu().numpy(), self.labels.multi_label))]
        if spread is not None:
            for item, row in zip(items, spread.cpu().numpy()):
                item["spread"] = row
        if self.config.infer.cam:  # an ensemble's map: the mean of its members' maps
            top = probabilities.topk(min(self.config.infer.cam_top_k, probabilities.shape[1]), dim=1).indices
            networks = members(model)
            maps = [sum(self._gradcam(net, images)(images, top[:, rank]) for net in networks) / len(networks)
                    for rank in range(top.shape[1])]
            stacked = torch.stack(maps, dim=1).cpu().numpy()  # (B, k, H, W)
            for item, indices, cams in zip(items, top.cpu().tolist(), stacked):
                item.update(cam_labels=indices, cams=cams)
        return items

    def _gradcam(self, model: nn.Module, images: torch.Tensor) -> GradCamMaps:
        if id(model) not in self._cams:  # one per network (an ensemble's members each have theirs)
            layer = self.config.infer.cam_layer
            if layer == "auto":
                layer = last_feature_map_layer(model, images[:1])
            self._cams[id(model)] = (GradCamMaps(model, layer), model)
        return self._cams[id(model)][0]

    def to_result(self, prediction: dict, item: dict) -> outputs.Findings:
        picture = np.asarray(item["image"], dtype=np.float32)[0] if "cams" in prediction else None
        return outputs.findings(prediction, str(item["path"]), str(item["id"]), self.labels, self.thresholds,
                                picture, task=self)

    def prediction_writer(self, out: Path, options=None) -> PredictionWriter:
        return outputs.PicturePredictions(out, self.labels, options)

    def dicom_report(self, result, out: Path, keep_identifiers: bool = False) -> list[Path]:
        """A TID 1500 SR of the findings, probabilities and operating points (``report.py``)."""
        from .report import findings_report

        return findings_report(result, out, outputs.safe_stem(result.id), keep_identifiers)

    def engine_unsupported(self) -> str | None:
        return "Grad-CAM (--cam) needs PyTorch's gradients" if self.config.infer.cam else None

    def example_input(self) -> torch.Tensor:
        size = self.config.data.image_size
        return torch.zeros(1, self.config.data.channels, size, size)

    def engine_probe(self) -> torch.Tensor:
        """One CPU predict batch of pictures."""
        size = self.config.data.image_size
        return torch.randn(self.predict_batch_size(torch.device("cpu")), self.config.data.channels, size, size,
                           generator=torch.Generator().manual_seed(0))

    @classmethod
    def demo_inputs(cls, data: Path) -> list[str]:
        """The first pictures of the first four synthetic patients: every synthetic patient has a picture
        ``_000``, and the first patients' pictures land in ``images_001``."""
        return [str(Path(data) / "images_001" / "images" / f"{patient:08d}_000.png") for patient in range(1, 5)]

    # -- command line -----------------------------------------------------------------------------
    @classmethod
    def add_arguments(cls, parser, command: str) -> None:
        if command == "predict":
            parser.add_argument("--cam", action="store_true",
                                help="Grad-CAM heatmaps of the infer.cam_top_k most probable labels")

    @classmethod
    def overrides_from_arguments(cls, args, command: str) -> list[str]:
        return ["infer.cam=true"] if command == "predict" and getattr(args, "cam", False) else []
