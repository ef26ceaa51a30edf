"""Brain-tumour segmentation in multi-modal MRI: three sigmoid regions (ET, TC, WT), written back as the
dataset's label values on the input's own grid."""

from __future__ import annotations

import itertools
import math
import logging
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import SlidingWindowInferer
from monai.losses import DiceLoss
from monai.transforms import Invertd
from torch import nn

from medsight.data.formats import DataSource
from medsight.datasets import brats
from medsight.datasets.schemas import MRI_CASES
from medsight.errors import DataError
from medsight.core.geometry import voxel_size_mm
from medsight.io.readers import check_volume_path
from medsight.io.writers import write_csv
from medsight.core.registry import register_task
from medsight.core.runtime import channels_last_format
from medsight.inference.ensemble import Moments, members
from medsight.task import DemoSpec, Monitor, PredictionWriter, StepOutput, Task

from . import plans
from .config import PROFILES, SegmentationConfig
from .metrics import METRIC_NAMES, mask_scores, region_scores, summarise, summary_table
from .models import SliceWise, build_network
from .outputs import LabelMaps, TumourSegmentation
from .postprocess import apply_plan, candidate_key, candidate_scores, choose_plan, describe, plan_metrics
from .transforms import pipeline

log = logging.getLogger(__name__)


#: voxels sampled per case and region for calibration: from the tumour's neighbourhood (the truth, or a
#: probability above NEAR) and from the rest, each weighted back to its share of the case
SAMPLED_NEAR, SAMPLED_FAR, NEAR = 4000, 1000, 0.01


def voxel_samples(probabilities: torch.Tensor, truth: torch.Tensor, case: str) -> dict[str, tuple]:
    """Per region ``(probabilities, targets, weights)`` of a reproducible sample of the case's voxels: the
    few uncertain voxels near the tumour are what calibration is about, the many sure background voxels
    are represented by a weighted few (so ECE and the calibration fit stay those of all voxels)."""
    import zlib

    rng = np.random.default_rng(zlib.crc32(case.encode()))
    probabilities, truth = probabilities.float().cpu().numpy(), truth.cpu().numpy()
    found = {}
    for index, region in enumerate(brats.REGIONS):
        p, y = probabilities[index].ravel(), truth[index].ravel()
        near = np.flatnonzero(y | (p > NEAR))
        far = np.flatnonzero(~(y | (p > NEAR)))
        picks, weights = [], []
        for pool, size in ((near, SAMPLED_NEAR), (far, SAMPLED_FAR)):
            if pool.size:
                chosen = rng.choice(pool, size=min(size, pool.size), replace=False)
                picks.append(chosen)
                weights.append(np.full(chosen.size, pool.size / chosen.size, dtype=np.float64))
        pick = np.concatenate(picks) if picks else np.zeros(0, dtype=np.int64)
        found[region] = (p[pick].astype(np.float32), y[pick].astype(np.float32),
                         np.concatenate(weights) if weights else np.zeros(0))
    return found


def review_score(probabilities: torch.Tensor, slab: int = 16) -> float:
    """A case's review score: the mean binary entropy (bits) of its region probabilities over the voxels
    where any region is above 0.1 (0 where none is: nothing seen, nothing to doubt). In torch, on its threads
    (NumPy float64: 0.7 s for a BraTS case), ``slab`` slices of the last axis at a time: the temporaries stay
    a slab's, not the volume's (about 200 MB on a BraTS case whose every voxel is seen)."""
    total, count = 0.0, 0
    for start in range(0, probabilities.shape[-1], slab):
        p = probabilities[..., start:start + slab].float()
        seen = p.amax(dim=0) > 0.1
        if not bool(seen.any()):
            continue
        q = p[:, seen].clamp_(1e-7, 1 - 1e-7)
        entropy = torch.special.entr(q).add_(torch.special.entr(1 - q))  # nats: -q ln q - (1-q) ln(1-q)
        total += float(entropy.double().sum())
        count += entropy.numel()
    return total / count / math.log(2) if count else 0.0


@register_task("segmentation")
class BrainTumourSegmentation(Task):
    summary = "brain tumour in multi-modal MRI (BraTS): ET/TC/WT regions, Dice and HD95"
    config_class = SegmentationConfig
    profiles = PROFILES
    schema = MRI_CASES
    planner = plans  # medsight data fingerprint, train --plans
    model_family = "segmentation"
    domain_on_load = True  # predict measures an input's domain facts where it reads it (read once)
    windowed = True  # each sliding window is put in channels-last, not the whole volume (a copy of it)
    spends_inputs = True  # to_result inverts with the input's metadata only
    chosen_on_validation = ("postprocessing",)
    inherited_from_starting_weights = ("model", "data.orient", "data.resample", "data.spacing_mm", "data.background_to_zero",
                                       "data.crop_foreground")
    monitor = Monitor("mean_dice", "max")
    evaluate_split = "all"
    # Four 32^3 patches per case instead of two of 48^3: a CPU runs SegResNet on nearly 4 times as many patches a
    # second (about 2 s an epoch on 2 cores, channels-last), and the held-out Dice is no lower
    demo = DemoSpec(
        dataset="brats",
        synth={"cases": 10, "shape": (96, 96, 64)},
        profile="cpu-small",
        overrides=("trainer.max_epochs=14", "trainer.val_every_n_epochs=7", "data.folds=5",
                   "data.patch_size=[32,32,32]", "data.patches_per_case=4", "trainer.channels_last=true"),
        note="10 synthetic cases of 96 x 96 x 64 voxels: 8 train, 2 choose the checkpoint and the post-processing.",
        held_out_cases=4,
        quick_synth={"cases": 4, "shape": (40, 40, 32)},
        # two balanced folds of the four quick cases: two train, two validate
        quick_overrides=("data.patch_size=[32,32,32]", "data.patches_per_case=1", "infer.roi_size=[48,48,48]",
                         "model.init_filters=8", "data.folds=2", "data.split_seed=1", "trainer.max_epochs=4",
                         "trainer.val_every_n_epochs=2"),
    )

    def __init__(self, config: SegmentationConfig):
        super().__init__(config)
        self._transforms: dict[tuple[str, str], object] = {}
        self._dice = DiceLoss(sigmoid=True, smooth_nr=0.0, smooth_dr=1e-5, squared_pred=True)
        self._bce = nn.BCEWithLogitsLoss()

    # -- data -------------------------------------------------------------------------------------
    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.config.data.modalities)

    def learn_state(self, data: DataSource) -> None:
        """The label convention of the cases (one for all), the modalities and the voxel size."""
        conventions = {r["convention"] for r in data.records("train") + data.records("val")}
        if len(conventions) > 1:
            raise DataError(f"cases use different label conventions ({', '.join(sorted(conventions))})", data.root)
        if not conventions:
            raise DataError("no labelled cases to train on", data.root)
        self.state.update(convention=conventions.pop(), modalities=list(self.modalities),
                          spacing_mm=list(self.config.data.spacing_mm))

    def transforms(self, stage: str):
        convention = self.state.get("convention", "brats2021")
        if (stage, convention) not in self._transforms:
            tap = None
            if stage == "infer":  # predict's out-of-distribution facts, measured on the image just read
                from medsight.inference.domain import DomainTapd

                roles = list(self.modalities)
                tap = DomainTapd(lambda d, name: plans.loaded_domain_case(roles, d["image"]))
            self._transforms[stage, convention] = pipeline(stage, self.config, convention, tap)
        return self._transforms[stage, convention]

    # -- model ------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        return build_network(self.config.model, in_channels=len(self.modalities))

    def adapt_starting_weights(self, tensors: dict, facts: dict, own: dict) -> tuple[dict, list[str]]:
        """The first convolution's input channels chosen by modality role: a model made for T1c, T1, T2 and
        FLAIR starts a FLAIR + T1c model from its FLAIR and T1c kernels (a role it lacks starts from the mean)."""
        source_roles = list((facts.get("task_state") or {}).get("modalities") or [])
        roles = list(self.modalities)
        if not source_roles or source_roles == roles:
            return tensors, []
        key = next((k for k, v in own.items() if v.dim() == 5 and v.shape[1] == len(roles)
                     and k in tensors and tensors[k].dim() == 5 and tensors[k].shape[1] == len(source_roles)), None)
        if key is None:
            return tensors, [f"modalities {source_roles} -> {roles}: no first convolution to map by role"]
        weight = tensors[key]
        columns = [weight[:, source_roles.index(r)] if r in source_roles else weight.mean(dim=1) for r in roles]
        tensors = dict(tensors)
        tensors[key] = torch.stack(columns, dim=1)
        missing = [r for r in roles if r not in source_roles]
        note = f"{key}: input channels by role {source_roles} -> {roles}"
        return tensors, [note + (f" ({', '.join(missing)} from the mean of the others)" if missing else "")]

    def training_step(self, model: nn.Module, batch: dict) -> StepOutput:
        logits = model(batch["image"])
        dice, bce = self._dice, self._bce
        label = batch["label"].as_tensor() if isinstance(batch["label"], MetaTensor) else batch["label"]
        dice_loss = dice(logits.float(), label)
        bce_loss = bce(logits.float(), label)
        return StepOutput(loss=dice_loss + bce_loss, logs={"dice_loss": dice_loss.detach(), "bce": bce_loss.detach()},
                          batch_size=label.shape[0])

    # -- inference --------------------------------------------------------------------------------
    def _inferer(self, model: nn.Module) -> SlidingWindowInferer:
        cfg = self.config.infer
        if isinstance(model, SliceWise) or isinstance(getattr(model, "module", None), SliceWise):
            # 2D network: whole slices, a window of slices at a time, no overlap (slices are independent).
            return SlidingWindowInferer(roi_size=(-1, -1, max(1, cfg.roi_size[2] // 8)), sw_batch_size=1,
                                        overlap=0.0, mode="constant")
        return SlidingWindowInferer(roi_size=tuple(cfg.roi_size), sw_batch_size=cfg.sw_batch_size,
                                    overlap=cfg.overlap, mode=cfg.blend)

    def probabilities(self, model: nn.Module, image: torch.Tensor, spread: bool = False, raw: bool = False):
        """(B, C, X, Y, Z) z-scored image -> (B, 3, X, Y, Z) sigmoid probabilities (calibrated where the
        checkpoint holds a map), averaged over an ensemble's members and the flips of TTA.
        ``spread``: also their standard deviation over members and flips (None for one model without TTA);
        ``raw``: also the mean before calibration (the same tensor where there is none)."""
        image = image.as_tensor() if isinstance(image, MetaTensor) else image
        flips = [()] if not self.config.infer.tta else [
            axes for n in range(4) for axes in itertools.combinations((2, 3, 4), n)]
        affine = self._affine(image.device)
        moments, before = Moments(), Moments() if raw and affine is not None else None
        for network in members(model):
            inferer = self._inferer(network)
            layout = channels_last_format(network)
            if layout is not torch.channels_last_3d:  # windows are 5-D; a 2D network inside a 3D wrapper
                layout = None                             # slices them itself
            run = network if layout is None else (
                lambda window, net=network, fmt=layout: net(window.contiguous(memory_format=fmt)))
            for axes in flips:
                flipped = torch.flip(image, axes) if axes else image
                logits = inferer(flipped, run).float()  # the stitched buffer, ours: changed in place below
                logits = torch.flip(logits, axes) if axes else logits
                if before is not None:
                    before.add(torch.sigmoid(logits))
                if affine is not None:
                    logits.mul_(affine[0]).add_(affine[1])
                moments.add(logits.sigmoid_())
        if not spread and not raw:
            return moments.mean
        found = [moments.mean]
        if spread:
            found.append(moments.std if moments.count > 1 else None)
        if raw:
            found.append(before.mean if before is not None else moments.mean)
        return tuple(found)

    def _affine(self, device) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Per region, the calibration's slope and intercept fitted on out-of-fold predictions (``medsight
        cv``), each as (1, 3, 1, 1, 1)."""
        fitted = self.calibration
        if not fitted:
            return None
        rows = [fitted.get(r, (1.0, 0.0)) for r in brats.REGIONS]
        return tuple(torch.tensor([row[i] for row in rows], device=device).view(1, -1, 1, 1, 1) for i in (0, 1))

    def decision_thresholds(self) -> np.ndarray:
        """Per region, the probability a voxel must exceed to be in it: ``infer.threshold`` on the network's
        own scale, moved with the calibration (a monotone map), so a calibrated model draws the same masks."""
        from medsight.core.calibration import apply

        fitted = self.calibration
        return np.array([float(apply(self.config.infer.threshold, fitted.get(r))) for r in brats.REGIONS])

    @property
    def postprocessing(self) -> dict[str, str] | None:
        """The post-processing plan label maps are made with outside training (region -> operation, chosen
        on validation: postprocess.py); None when the checkpoint has none or infer.postprocess=false."""
        return self.state.get("postprocessing") if self.config.infer.postprocess else None

    def validation_step(self, model: nn.Module, batch: dict) -> dict[str, list]:
        """Per case: ``dice_ET``... ``hd95_WT`` of the thresholded masks. While learning, of the masks as
        they are, plus every post-processing candidate's scores (``pp:largest:dice_WT``...) to choose a plan
        from; otherwise (evaluate) of the masks with the checkpoint's plan applied."""
        probs, raw = self.probabilities(model, batch["image"], raw=True)
        truth = batch["label"] > 0.5
        out: dict[str, list] = {"id": list(batch["id"])}
        if not self.learning or self.calibrating:  # calibration samples and review scores (not while training)
            for index, (before, label) in enumerate(zip(raw, truth)):
                out.setdefault("calibration", []).append(voxel_samples(before, label, str(batch["id"][index])))
                out.setdefault("review_score", []).append(review_score(before))
        spacings = self._spacings(batch["image"], len(probs))
        plan = None if self.learning else self.postprocessing
        choosing = self.learning and self.config.infer.postprocess
        decision = torch.from_numpy(self.decision_thresholds()).to(probs.device, probs.dtype).view(-1, 1, 1, 1)
        for prob, label, spacing in zip(probs, truth, spacings):
            prediction, label = (prob > decision).cpu(), label.cpu()
            if plan:
                prediction = torch.from_numpy(apply_plan(prediction.numpy(), plan, spacing))
            scores = region_scores(prediction, label, spacing)
            if choosing:
                scores.update(candidate_scores(prediction.numpy(), scores, spacing,
                                               lambda mask, index: mask_scores(mask, label[index], spacing)))
            for name, value in scores.items():
                out.setdefault(name, []).append(value)
        return out

    def _spacings(self, image, count: int) -> list:
        """Voxel size (mm) of each item: data.spacing_mm after resampling, else each image's own grid."""
        if self.config.data.resample or not hasattr(image, "affine"):
            return [self.config.data.spacing_mm] * count
        affines = image.affine.reshape(-1, 4, 4).cpu().numpy()
        return [voxel_size_mm(a).tolist() for a in affines]

    def validation_metrics(self, outputs: dict[str, list]) -> dict[str, float]:
        """Means of the per-case scores and ``mean_dice`` (the monitor: always without post-processing while
        learning, so the checkpoint is not picked by a choice made on the same cases). While learning, also
        chooses the post-processing plan (state ``postprocessing``) and reports its scores as ``pp_*``."""
        metrics = summarise(outputs)
        if self.learning:
            metrics.update(self._choose_postprocessing(outputs, metrics))
        elif describe(self.postprocessing) != "none":
            log.info(f"post-processing chosen on validation applied: {describe(self.postprocessing)} "
                     "(infer.postprocess=false turns it off)")
        return metrics

    def _choose_postprocessing(self, outputs: dict[str, list], raw: dict[str, float]) -> dict[str, float]:
        if not self.config.infer.postprocess or not outputs.get(candidate_key("largest", "dice_WT")):
            self.state.pop("postprocessing", None)  # a plan chosen for earlier weights would not fit these
            return {}
        plan = choose_plan(outputs)
        self.state["postprocessing"] = plan
        chosen = {f"pp_{name}": value for name, value in summarise(plan_metrics(outputs, plan)).items()}
        log.info(f"post-processing chosen on validation: {describe(plan)} (mean Dice {raw['mean_dice']:.4f} -> "
                 f"{chosen['pp_mean_dice']:.4f}, WT HD95 {raw['hd95_WT']:.2f} -> {chosen['pp_hd95_WT']:.2f} mm)")
        return chosen

    def write_evaluation(self, outputs: dict[str, list], metrics: dict[str, float], out: Path) -> list[Path]:
        cases = [{"id": case, **{name: outputs[name][i] for name in METRIC_NAMES}} for i, case in enumerate(outputs["id"])]
        per_case = write_csv(cases, out / "per_case.csv", ["id", *METRIC_NAMES])
        table = summary_table(outputs)
        summary = write_csv(table, out / "summary.csv", ["statistic", *METRIC_NAMES])
        lines = [f"{'':10s}" + "".join(f"{name:>10s}" for name in METRIC_NAMES)]
        lines += [f"{row['statistic']:10s}" + "".join(f"{row[name]:10.3f}" for name in METRIC_NAMES)
                  for row in table[:2]]
        log.info("\n".join(lines))
        return [per_case, summary]

    def input_records(self, path: str | None, images: dict[str, str] | None = None) -> list[dict]:
        """A case folder (or a folder of cases) in any BraTS naming, or one case from explicit ``role=file``s."""
        if images:
            missing = [role for role in self.modalities if role not in images]
            if missing:
                raise DataError(f"the model needs {', '.join(self.modalities)}; missing {', '.join(missing)} "
                                f"(give --image ROLE=PATH for each)", "command line")
            for image in images.values():
                check_volume_path(image)
            first = Path(images[self.modalities[0]])
            return [self.input_record(images, first.name.split(".")[0] if first.is_file() else first.name)]
        folder = Path(path)
        if not folder.is_dir():
            raise DataError("a case is a folder holding one file per modality (or use --image ROLE=PATH)", folder)
        cfg = self.config.data
        naming = brats.detect_naming(folder) if cfg.naming == "auto" else cfg.naming
        convention = self.state.get("convention", "brats2021")
        records = []
        for case in brats.find_cases(folder, naming, cfg.patterns):
            record = case.record(self.modalities, brats.DEFAULT_CONVENTION.get(naming, convention))
            record.pop("label", None)
            paths = record["image"] if isinstance(record["image"], list) else [record["image"]]
            record["sources"] = "\n".join(paths)  # one string: it survives collation unchanged
            records.append(record)
        return records

    def input_record(self, image: str | dict[str, str], case_id: str) -> dict:
        """``{role: name}`` with every modality the model reads, or one name holding them all as channels (a
        4D file or array, in the model's modality order)."""
        if isinstance(image, dict):
            missing = [role for role in self.modalities if role not in image]
            if missing:
                raise DataError(f"the model needs {', '.join(self.modalities)}; missing {', '.join(missing)}",
                                case_id)
            names = [str(image[role]) for role in self.modalities]
        else:
            names = [str(image)]
        return {"image": names if len(names) > 1 else names[0], "id": case_id, "sources": "\n".join(names),
                "convention": self.state.get("convention", "brats2021")}

    def predict(self, model: nn.Module, batch: dict) -> list[dict]:
        """Per case: the region probabilities, the review score and, where members or flips disagree (and
        ``infer.uncertainty``), their spread."""
        probs, spread, raw = self.probabilities(model, batch["image"], spread=True, raw=True)
        spreads = (list(spread.amax(dim=1, keepdim=True).cpu()) if spread is not None and self.config.infer.uncertainty
                   else [None] * len(probs))
        return [{"probabilities": p, "spread": u, "score": review_score(r)}
                for p, u, r in zip(probs.cpu(), spreads, raw)]

    def calibration_samples(self, outputs: dict[str, list]) -> dict[str, tuple]:
        """Per region, the sampled voxels of every case (``voxel_samples``) before any calibration."""
        cases = [c for c in outputs.get("calibration") or [] if c]
        if not cases:
            return {}
        return {region: tuple(np.concatenate([case[region][i] for case in cases]) for i in range(3))
                for region in brats.REGIONS}

    def review_scores(self, outputs: dict[str, list]) -> list[float]:
        return [float(v) for v in outputs.get("review_score") or []]

    def case_quality(self, outputs: dict[str, list]) -> list[float]:
        """Per case: the mean Dice of its regions (a region empty in both truth and prediction counts 1)."""
        names = [f"dice_{r}" for r in brats.REGIONS if f"dice_{r}" in outputs]
        if not names:
            return []
        return [float(np.nanmean([outputs[n][i] for n in names])) for i in range(len(outputs[names[0]]))]

    def to_result(self, prediction: dict | torch.Tensor, item: dict) -> TumourSegmentation:
        """Invert the preprocessing (crop, spacing, orientation) onto the input's grid, threshold, post-process,
        regions -> the convention's label values; the spread, where measured, onto the same grid, and its
        mean over the tumour the members see (any region above 0.1) as the case's uncertainty."""
        image = item["image"]
        prediction = {"probabilities": prediction} if isinstance(prediction, torch.Tensor) else prediction
        spread = prediction.get("spread")
        stacked = prediction["probabilities"] if spread is None else torch.cat([prediction["probabilities"], spread])
        inverted = Invertd(keys="pred", transform=self.transforms("infer"), orig_keys="image", nearest_interp=False)(
            {"image": image, "pred": MetaTensor(stacked, meta=dict(image.meta))})["pred"]
        probs = inverted.as_tensor().numpy()
        uncertainty = None
        if spread is not None:
            probs, uncertainty = probs[:3], probs[3].astype(np.float32)
        affine = np.asarray(image.meta["original_affine"], dtype=np.float64)
        convention = brats.CONVENTIONS[item.get("convention") or self.state.get("convention", "brats2021")]
        regions = probs > self.decision_thresholds().reshape(-1, 1, 1, 1).astype(probs.dtype)
        if self.postprocessing:
            regions = apply_plan(regions, self.postprocessing, voxel_size_mm(affine))
        labels = convention.from_regions(regions)
        sources = item.get("sources")
        quality = {"score": round(float(prediction["score"]), 5)} if prediction.get("score") is not None else {}
        if uncertainty is not None:
            seen = probs.max(axis=0) > 0.1
            quality["uncertainty"] = round(float(uncertainty[seen].mean()) if seen.any() else 0.0, 5)
        return TumourSegmentation(
            id=str(item["id"]), labels=labels, affine=affine, regions=np.asarray(convention.to_regions(labels)),
            convention=convention.name, modalities=self.modalities, task=self,
            sources=sources.split("\n") if sources else [str(image.meta.get("filename_or_obj", ""))],
            probabilities=probs.astype(np.float32, copy=False) if self.config.infer.probabilities else None,
            uncertainty=uncertainty, quality=quality)

    def prediction_writer(self, out: Path, options=None) -> PredictionWriter:
        return LabelMaps(out, self.config.infer.overlay, options)

    @classmethod
    def add_arguments(cls, parser, command: str) -> None:
        if command == "predict":
            parser.add_argument("--tta", action="store_true", help="average over the 8 flips of the three axes")

    @classmethod
    def overrides_from_arguments(cls, args, command: str) -> list[str]:
        return ["infer.tta=true"] if command == "predict" and getattr(args, "tta", False) else []

    def network_input(self):
        from medsight.task import NetworkInput

        return NetworkInput(self.example_input(), dynamic_spatial=True)  # a window, or a whole small volume

    def example_input(self) -> torch.Tensor:
        size = [64 if s <= 0 else min(s, 64) for s in self.config.infer.roi_size]
        return torch.zeros(1, len(self.modalities), *size)

    def engine_probe(self) -> torch.Tensor:
        """One window batch (each side at most 128, to keep the one-off timing short)."""
        infer = self.config.infer
        size = [128 if s <= 0 else min(s, 128) for s in infer.roi_size]
        return torch.randn(min(infer.sw_batch_size, 4), len(self.modalities), *size,
                           generator=torch.Generator().manual_seed(0))

    @classmethod
    def demo_inputs(cls, data: Path) -> list[str]:
        cases = sorted(p for p in Path(data).iterdir() if p.is_dir())
        return [str(cases[-1])]

