"""``medsight compress``: a smaller or faster model, with its measured cost written on the label.

Methods (each writes a checkpoint that ``evaluate`` and ``predict`` take as ``--checkpoint``):

- ``int8``: post-training static quantization by OpenVINO's NNCF (preset MIXED), calibrated on the inputs the network
  really receives (sliding-window windows, whole scans, pictures), recorded by running the task's own
  inference on ``--calibration-samples`` records of the calibration data's training split. The
  checkpoint carries the OpenVINO model (IR bytes) instead of torch weights. Chosen by measurement: a
  SegResNet window on 2 cores (AVX512-VNNI) ran in 1.12 s in OpenVINO int8, 3.50 s in ONNX Runtime's
  QDQ int8 (no faster than its fp32, 3.60 s) and 2.58 s in PyTorch bf16 autocast.
- ``fp16`` / ``bf16``: the weights stored in half precision (half the size); loaded back into the fp32
  model, so every engine runs them.
- ``prune``: structured pruning (torch-pruning): the ``--amount`` fraction of channels of each
  convolution with the smallest L2 norm removed (the network gets thinner, not sparse), then
  ``--finetune-epochs`` of training on the calibration data by the trainer.
- ``distill`` (classification): knowledge distillation into another, smaller or faster network. The
  trainer trains ``--student`` (a classification model name; default resnet18) from scratch on the
  calibration data with the source run's config, except ``model.name`` and ``loss.distill_from`` = the
  source checkpoint (the teacher, whose softened outputs the student also learns, see the classification
  task's ``loss.distill_*`` keys), for ``--finetune-epochs`` (default: the source run's
  ``trainer.max_epochs``, so the student gets the teacher's schedule and time budget). The checkpoint is
  the student's (its best on validation), an ordinary one.

Before and after, the ``--split`` (default ``val``) of ``--data`` is evaluated as ``medsight evaluate`` does
(before: the source checkpoint on PyTorch, as validation measured it; after: the compressed one on its
engine): the metrics, the evaluate throughput and the checkpoint size are written into the new checkpoint
(``state["compression"]``) and into ``<out>.compression.json``; for ``distill`` also the student's name, both
parameter counts and the training time. Sizes are compared with the source file
and with its fp32 weights alone (a training checkpoint also holds the optimizer's state).
"""

from __future__ import annotations

import json
import logging
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from medsight.core import checkpoint
from medsight.errors import ConfigError, DataError, MedsightError
from medsight.inference.predict import Loaded, evaluate, load_for_inference
from medsight.io.writers import write_json

log = logging.getLogger(__name__)

METHODS = ("int8", "fp16", "bf16", "prune", "distill")
DEFAULT_STUDENT = "resnet18"
#: what a compressed checkpoint keeps of its source (the rest is training state: optimizer, rng...)
KEPT = ("task", "config", "data", "data_format", "trained_on", "started_from", "task_state", "provenance", "best")


@dataclass
class Measured:
    """One side of the label: metrics on the validation split, evaluate throughput, size on disk."""

    engine: str
    metrics: dict[str, float]
    cases: int
    seconds: float
    size_bytes: int

    def row(self) -> dict:
        return {"engine": self.engine, "metrics": self.metrics, "cases": self.cases, "seconds": round(self.seconds, 2),
                "cases_per_second": round(self.cases / self.seconds, 3) if self.seconds else None,
                "size_bytes": self.size_bytes}


class Recorder(nn.Module):
    """Stands in for the network while the task's own inference runs: keeps a reservoir sample of the
    inputs the network receives, and answers with the torch network's outputs."""

    def __init__(self, network: nn.Module, keep: int, seed: int = 0):
        super().__init__()
        self.network, self.keep, self.rng = network, keep, random.Random(seed)
        self.seen, self.samples = 0, []

    def forward(self, images: torch.Tensor):
        for one in images.detach().float().cpu().split(1):
            self.seen += 1
            slot = len(self.samples) if len(self.samples) < self.keep else self.rng.randrange(self.seen)
            if slot < self.keep:
                self.samples[slot:slot + 1] = [one.clone()]
        return self.network(images)


def measure(path: Path, data: Path, split: str, engine: str, work: Path) -> Measured:
    loaded = load_for_inference(path)
    if loaded.model is not None:
        loaded.engine = engine
    metrics = evaluate(loaded, data, split, work)
    written = json.loads((work / "metrics.json").read_text())  # timed from the first case (engine built)
    cases, seconds = written["cases"], written["seconds"]
    return Measured(engine if loaded.model is not None else f"{loaded.engine} ({loaded.state['engine']['precision']})",
                    metrics, cases, seconds, Path(path).stat().st_size)


def calibration_inputs(loaded: Loaded, data: Path, count: int, seed: int = 0) -> list[torch.Tensor]:
    """Up to ``count`` network inputs recorded while the task predicts records of ``data``'s training split."""
    from monai.data import Dataset, list_data_collate

    task = loaded.task
    records = task.records(task.open_data(data), "train")
    if not records:
        raise DataError("no training records to calibrate on", data)
    random.Random(seed).shuffle(records)
    recorder = Recorder(task.export_module(loaded.model).float().eval(), keep=count, seed=seed)
    model = task.with_engine(loaded.model.float().eval(), recorder).eval()
    dataset = Dataset(records, task.transforms("infer"))
    collate = task.collate_fn("infer") or list_data_collate
    with torch.no_grad():
        for index in range(len(records)):
            if recorder.seen >= 4 * count:  # enough to sample from
                break
            task.predict(model, collate([dataset[index]]))
    log.info(f"calibration: {len(recorder.samples)} network inputs sampled from {recorder.seen} seen "
             f"({'x'.join(map(str, recorder.samples[0].shape[1:]))} and alike)")
    return recorder.samples


def int8_engine(loaded: Loaded, samples: list[torch.Tensor]) -> dict:
    import nncf
    import openvino as ov

    from medsight.inference import engines
    model = engines.openvino_model(loaded.task.export_module(loaded.model), loaded.task.network_input())
    # OpenVINO's CPU plugin has no int8 kernel for a convolution with one input channel (a gray picture's or a
    # single modality's first layer: "No suitable implementations" at compile time): those stay in float
    single = [op.get_friendly_name() for op in model.get_ordered_ops()
              if op.get_type_name() == "Convolution" and op.input(1).get_partial_shape()[1].get_length() == 1]
    started = time.perf_counter()
    # MIXED: weights symmetric, activations asymmetric (z-scored images with a zero background, GroupNorm
    # outputs before ReLU are not centred on 0). On the real BRATS 2015 held-out case the largest Dice
    # change was 0.0065 (MIXED) against 0.011 (NNCF's default, symmetric), 0.011 without fast bias
    # correction, 0.011-0.012 keeping the first/last convolutions in float; speed the same.
    quantized = nncf.quantize(model, nncf.Dataset(samples, lambda tensor: tensor.numpy()),
                              subset_size=len(samples), preset=nncf.QuantizationPreset.MIXED,
                              ignored_scope=nncf.IgnoredScope(names=single) if single else None)
    log.info(f"int8: quantized in {time.perf_counter() - started:.0f} s"
             + (f" ({len(single)} single-channel convolution(s) kept in float)" if single else ""))
    try:
        ov.Core().compile_model(quantized, "CPU")
    except RuntimeError as exc:
        last = [line for line in str(exc).splitlines() if line.strip()][-1:]
        raise MedsightError(f"OpenVINO cannot run the int8 model on this CPU ({' '.join(last)}); "
                            "use --method bf16 or fp16", loaded.path) from None
    return engines.carried("openvino", "int8", engines.openvino_files(quantized))


def half_weights(state: dict, dtype: torch.dtype) -> dict:
    weights = checkpoint.model_weights(state)
    return {k: v.to(dtype) if torch.is_floating_point(v) else v for k, v in weights.items()}


def prune_and_finetune(loaded: Loaded, data: Path, amount: float, epochs: int, work: Path) -> dict:
    """Prune, then fine-tune with the trainer (the source run's config, ``epochs`` epochs) from the pruned
    weights: returns the new checkpoint's ``model`` and ``task_state`` (which holds the structure)."""
    from medsight.cli.main import main
    from medsight.core.config import to_yaml
    from medsight.errors import MedsightError
    from medsight.compression.pruning import STATE_KEY, prune

    task = loaded.task
    task_state = {**task.state_dict(), STATE_KEY: prune(task, loaded.model, amount)}
    work.mkdir(parents=True, exist_ok=True)
    start = checkpoint.save({"task": task.name, "config": loaded.state["config"], "task_state": task_state,
                             "model": loaded.model.state_dict()}, work / "pruned.pt")
    if epochs <= 0:
        return {"model": loaded.model.state_dict(), "task_state": task_state}
    (work / "config.yaml").write_text(to_yaml(task.config))
    log.info(f"prune: fine-tuning {epochs} epoch(s) on {data}")
    status = main(["train", task.name, "--data", str(data), "--config", str(work / "config.yaml"), "--init-weights",
                   str(start), "--out", str(work / "run"), f"trainer.max_epochs={epochs}"], nested=True)
    folder = work / "run" / "checkpoints"
    final = folder / "best.pt" if (folder / "best.pt").is_file() else folder / "last.pt"
    if status != 0 or not final.is_file():
        raise MedsightError(f"fine-tuning the pruned network failed (exit {status})", data)
    tuned = checkpoint.load(final)
    weights = checkpoint.model_weights(tuned)
    return {"model": weights, "task_state": tuned["task_state"],
            "finetune": {"epochs": epochs, "data": str(data), "checkpoint": final.name}}


def check_distillable(loaded: Loaded, student: str) -> None:
    from medsight.core.models import models

    if loaded.task.name != "classification":
        raise ConfigError(f"--method distill is for classification checkpoints, this one is {loaded.task.name}",
                          loaded.path)
    models("classification").check(student, key="--student")


def distill(loaded: Loaded, teacher: Path, data: Path, student: str, epochs: int, work: Path) -> tuple[dict, dict]:
    """Train ``student`` from scratch with the trainer on ``data``, learning the teacher's outputs too (the
    teacher's run config, ``epochs`` epochs): returns the student's checkpoint, to save as it is, and what
    was done."""
    from medsight.cli.main import main
    from medsight.core.config import to_yaml

    work.mkdir(parents=True, exist_ok=True)
    (work / "config.yaml").write_text(to_yaml(loaded.task.config))
    log.info(f"distill: training {student} for {epochs} epoch(s) on {data}, taught by {teacher}")
    started = time.perf_counter()
    status = main(["train", "classification", "--data", str(data), "--config", str(work / "config.yaml"),
                   "--out", str(work / "run"), f"model.name={student}", "model.init_weights=null",
                   "trainer.init_weights=null", f"loss.distill_from={Path(teacher).resolve()}",
                   f"trainer.max_epochs={epochs}"], nested=True)
    seconds = time.perf_counter() - started
    folder = work / "run" / "checkpoints"
    final = folder / "best.pt" if (folder / "best.pt").is_file() else folder / "last.pt"
    if status != 0 or not final.is_file():
        raise MedsightError(f"training the student failed (exit {status})", data)
    trained = checkpoint.load(final)
    state = {key: trained[key] for key in KEPT if key in trained}
    state["model"] = checkpoint.model_weights(trained)
    settings = trained["config"]["loss"]
    return state, {"epochs": epochs, "data": str(data), "checkpoint": final.name, "training_seconds": round(seconds, 1),
                   "weight": settings["distill_weight"], "temperature": settings["distill_temperature"]}


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def compress(source: Path, method: str, out: Path, data: Path, calibration: Path | None = None,
             samples: int = 100, amount: float = 0.3, finetune_epochs: int | None = None, split: str = "val",
             baseline_engine: str = "torch", student: str | None = None) -> dict:
    """``finetune_epochs``: prune's fine-tuning (default 1) or distill's training (default: the source run's
    ``trainer.max_epochs``); ``student``: distill's model name (default resnet18)."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r} (one of {', '.join(METHODS)})", "command line")
    if student is not None and method != "distill":
        raise ConfigError("--student is for --method distill", "command line")
    loaded = load_for_inference(source)
    if loaded.model is None:
        raise ConfigError(f"already compressed ({loaded.engine} engine): compress the checkpoint it came from",
                          source)
    if method == "distill":
        student = student or DEFAULT_STUDENT
        check_distillable(loaded, student)
    if finetune_epochs is None:
        finetune_epochs = loaded.task.config.trainer.max_epochs if method == "distill" else 1
    calibration = calibration or data
    fp32_bytes = sum(v.numel() * 4 if torch.is_floating_point(v) else v.numel() * v.element_size()
                     for v in loaded.model.state_dict().values())  # the source's, before pruning thins it
    with tempfile.TemporaryDirectory(prefix="medsight-compress-") as folder:
        work = Path(folder)
        before = measure(source, data, split, baseline_engine, work / "before")
        log.info(f"before: {before.metrics} ({before.engine}, {before.size_bytes / 1e6:.1f} MB)")
        state = {key: loaded.state[key] for key in KEPT if key in loaded.state}
        if method == "int8":
            state["engine"] = int8_engine(loaded, calibration_inputs(loaded, calibration, samples))
        elif method in ("fp16", "bf16"):
            state["model"] = half_weights(loaded.state, torch.float16 if method == "fp16" else torch.bfloat16)
        elif method == "prune":
            state.update(prune_and_finetune(loaded, calibration, amount, finetune_epochs, work / "finetune"))
        else:
            state, training = distill(loaded, source, calibration, student, finetune_epochs, work / "distill")
        state["compression"] = {"method": method, "source": str(source), "before": before.row()}
        checkpoint.save(state, out)
        after = measure(out, data, split, baseline_engine if method != "int8" else "auto", work / "after")
    label = {"method": method, "source": str(source), "data": str(data), "split": split, "before": before.row(),
             "after": after.row(), "size_ratio": round(after.size_bytes / before.size_bytes, 3),
             "fp32_weights_bytes": fp32_bytes, "size_ratio_vs_fp32_weights": round(after.size_bytes / fp32_bytes, 3),
             "speed_ratio": round(before.seconds / after.seconds, 3) if after.seconds else None,
             "metric_change": {k: round(after.metrics[k] - v, 4) for k, v in before.metrics.items()
                               if isinstance(v, float) and isinstance(after.metrics.get(k), float)}}
    if method == "distill":
        label.update(student=student, distill=training, parameters={
            "teacher": parameter_count(loaded.model), "student": parameter_count(load_for_inference(out).model)})
    state["compression"] = label
    checkpoint.save(state, out)  # the label, both sides measured, inside the checkpoint too
    write_json(label, out.with_name(out.name + ".compression.json"))
    return label
