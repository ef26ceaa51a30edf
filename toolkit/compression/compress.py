"""``medsight compress``: a smaller or faster model, with its measured cost written on the label.

Methods (each writes a checkpoint that ``evaluate`` and ``predict`` take as ``--checkpoint``):

- ``int8``: post-training static quantization by OpenVINO's NNCF (preset MIXED), calibrated on the inputs the network
  really receives (sliding-window windows, whole scans, pictures), recorded by running the task's own
  inference on records of the calibration data's training split until ``--samples`` inputs are sampled. The
  checkpoint carries the OpenVINO model (IR bytes) instead of torch weights. Chosen by measurement: a
  SegResNet window on 2 cores (AVX512-VNNI) ran in 1.12 s in OpenVINO int8, 3.50 s in ONNX Runtime's
  QDQ int8 (no faster than its fp32, 3.60 s) and 2.58 s in PyTorch bf16 autocast.
- ``fp16`` / ``bf16``: the weights stored in half precision (half the size); loaded back into the fp32
  model, so every engine runs them.
- ``prune``: structured pruning (torch-pruning): the ``--amount`` fraction of channels of each
  convolution with the smallest L2 norm removed (the network gets thinner, not sparse), then
  ``--finetune-epochs`` of training on the calibration data by the trainer.
- ``distill``: knowledge distillation into another, smaller or faster network, for a task that offers it
  (``Task.distillation``; classification does). The trainer trains ``--student`` (a model name of the task's
  family; default ``Task.default_student``) from scratch on the calibration data with the source run's config
  and the task's distillation settings (classification: ``model.name`` and ``loss.distill_from`` = the source
  checkpoint, the teacher, whose softened outputs the student also learns), for ``--finetune-epochs``
  (default: the source run's ``trainer.max_epochs``, so the student gets the teacher's schedule and time
  budget). The checkpoint is the student's (its best on validation), an ordinary one.

Before and after, the ``--split`` (default ``val``) of ``--data`` is evaluated as ``medsight evaluate`` does
(before: the source checkpoint on PyTorch, as validation measured it; after: the compressed one on its
engine): the metrics, the evaluate throughput and the checkpoint size are written into the new checkpoint
(``state["compression"]``) and into ``<out>.compression.json``; for ``distill`` also the student's name, both
parameter counts and the training time. Sizes are compared with the source file
and with its fp32 weights alone (a training checkpoint also holds the optimizer's state).
"""

from __future__ import annotations

import logging
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from medsight.errors import ConfigError, DataError, MedsightError
from medsight.inference.model import Model, load
from medsight.io import checkpoint
from medsight.io.writers import write_json

log = logging.getLogger(__name__)

METHODS = ("int8", "fp16", "bf16", "prune", "distill")
#: what compresses an ensemble member by member (the others train a new network)
MEMBERWISE = ("int8", "fp16", "bf16")
#: what a compressed checkpoint keeps of its source (the rest is training state: optimizer, rng...)
KEPT = ("task", "config", "data", "data_format", "trained_on", "started_from", "task_state", "structure",
        "provenance", "best", "domain")


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
    """The checkpoint at ``path`` evaluated as ``medsight evaluate`` does (``engine``; a compressed checkpoint's
    own), timed from the first case (engine built)."""
    model = load(path, engine=engine)
    evaluation = model.evaluate(data, split, out=work)
    kind = model.execution(model.task, "evaluate").engine
    shown = kind if model.carried is None else f"{kind} ({model.carried['precision']})"
    return Measured(shown, evaluation.metrics, len(evaluation.cases) or 1, evaluation.seconds,
                    Path(path).stat().st_size)


def calibration_inputs(source: Model, data: Path, count: int, seed: int = 0) -> list[torch.Tensor]:
    """Up to ``count`` network inputs recorded while the task predicts records of ``data``'s training split."""
    from monai.data import Dataset, list_data_collate

    task = source.task
    records = task.records(task.open_data(data), "train")
    if not records:
        raise DataError("no training records to calibrate on", data)
    random.Random(seed).shuffle(records)
    recorder = Recorder(task.export_module(source.torch_model).float().eval(), keep=count, seed=seed)
    model = task.with_engine(source.torch_model.float().eval(), recorder).eval()
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


def int8_engine(source: Model, samples: list[torch.Tensor]) -> dict:
    import nncf
    import openvino as ov

    from medsight.core.quiet import library_warnings_quiet
    from medsight.inference import engines
    model = engines.openvino_model(source.task.export_module(source.torch_model), source.task.network_input())
    # OpenVINO's CPU plugin has no int8 kernel for a convolution with one input channel (a gray picture's or a
    # single modality's first layer: "No suitable implementations" at compile time): those stay in float
    single = [op.get_friendly_name() for op in model.get_ordered_ops()
              if op.get_type_name() == "Convolution" and op.input(1).get_partial_shape()[1].get_length() == 1]
    started = time.perf_counter()
    # MIXED: weights symmetric, activations asymmetric (z-scored images with a zero background, GroupNorm
    # outputs before ReLU are not centred on 0). On the real BRATS 2015 held-out case the largest Dice
    # change was 0.0065 (MIXED) against 0.011 (NNCF's default, symmetric), 0.011 without fast bias
    # correction, 0.011-0.012 keeping the first/last convolutions in float; speed the same.
    with library_warnings_quiet(loggers=("nncf",)):  # its INFO lines list graph nodes; its progress bars stay
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
                            "use --method bf16 or fp16", source.path) from None
    return engines.carried("openvino", "int8", engines.openvino_files(quantized))


def compressed_member(member: Model, entry: dict, method: str, calibration: Path, samples: int) -> dict:
    """An ensemble member's entry compressed by ``method`` (int8: its own calibration inputs and engine)."""
    entry = dict(entry)
    if method == "int8":
        entry["engine"] = int8_engine(member, calibration_inputs(member, calibration, samples))
        entry.pop("model", None)
    else:
        entry["model"] = half_weights(entry, torch.float16 if method == "fp16" else torch.bfloat16)
    entry.pop("ema", None)
    return entry


def half_weights(state: dict, dtype: torch.dtype) -> dict:
    weights = checkpoint.model_weights(state)
    return {k: v.to(dtype) if torch.is_floating_point(v) else v for k, v in weights.items()}


def prune_and_finetune(source: Model, data: Path, amount: float, epochs: int, work: Path) -> dict:
    """Prune, then fine-tune with the trainer (the source run's config, ``epochs`` epochs) from the pruned
    weights: returns the new checkpoint's ``model``, ``task_state`` and ``structure``."""
    from medsight.compression.pruning import prune
    from medsight.core.config import to_yaml
    from medsight.training.run import train

    task = source.task
    structure = prune(task, source.torch_model, amount)
    work.mkdir(parents=True, exist_ok=True)
    start = checkpoint.save({"task": task.name, "config": source.state["config"], "task_state": task.state_dict(),
                             "structure": structure, "model": source.torch_model.state_dict()}, work / "pruned.pt")
    if epochs <= 0:
        return {"model": source.torch_model.state_dict(), "task_state": task.state_dict(), "structure": structure}
    (work / "config.yaml").write_text(to_yaml(task.config))
    log.info(f"prune: fine-tuning {epochs} epoch(s) on {data}")
    run = train(task.name, data, config=[work / "config.yaml"], init_weights=start, out=work / "run",
                overrides={"trainer.max_epochs": epochs})
    tuned = checkpoint.load(run.best or run.last)
    return {"model": checkpoint.model_weights(tuned), "task_state": tuned["task_state"],
            "structure": tuned.get("structure"), "finetune": {"epochs": epochs, "data": str(data),
                                                              "checkpoint": (run.best or run.last).name}}


def distill(source: Model, teacher: Path, data: Path, student: str, epochs: int, work: Path) -> tuple[dict, dict]:
    """Train ``student`` from scratch with the trainer on ``data``, learning the teacher's outputs too (the
    teacher's run config and the task's distillation settings, ``epochs`` epochs): returns the student's
    checkpoint, to save as it is, and what was done."""
    from medsight.core.config import to_yaml
    from medsight.training.run import train

    plan = source.task.distillation(Path(teacher).resolve(), student)
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.yaml").write_text(to_yaml(source.task.config))
    log.info(f"distill: training {student} for {epochs} epoch(s) on {data}, taught by {teacher}")
    started = time.perf_counter()
    run = train(source.task.name, data, config=[work / "config.yaml"], out=work / "run",
                overrides=[*plan.overrides, f"trainer.max_epochs={epochs}"])
    seconds = time.perf_counter() - started
    final = run.best or run.last
    trained = checkpoint.load(final)
    state = {key: trained[key] for key in KEPT if key in trained}
    state["model"] = checkpoint.model_weights(trained)
    return state, {"epochs": epochs, "data": str(data), "checkpoint": final.name,
                   "training_seconds": round(seconds, 1), **plan.settings}


def compress(source: Path, method: str, out: Path, data: Path, calibration: Path | None = None,
             samples: int = 100, amount: float = 0.3, finetune_epochs: int | None = None, split: str = "val",
             baseline_engine: str = "torch", student: str | None = None) -> dict:
    """Compress the checkpoint ``source`` by ``method`` into ``out``, measured before and after on ``split`` of
    ``data``; returns the label (also in the checkpoint and in ``OUT.compression.json``). ``calibration``: int8's
    calibration data, prune's and distill's training data (default ``data``); ``finetune_epochs``: prune's
    fine-tuning (default 1) or distill's training (default: the source run's ``trainer.max_epochs``);
    ``student``: distill's model name (default: the task's ``default_student``)."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r} (one of {', '.join(METHODS)})", "command line")
    if student is not None and method != "distill":
        raise ConfigError("--student is for --method distill", "command line")
    if not 0 < amount < 1:
        raise ConfigError(f"--amount must be between 0 and 1, got {amount}", "command line")
    source = Path(source)
    model = load(source, engine="torch")
    if model.members and method not in MEMBERWISE:
        raise ConfigError(f"--method {method} trains a new network: compress each member, then join them with "
                          "medsight ensemble", source)
    if any(m.torch_model is None for m in model.members):
        raise ConfigError("holds compressed members already: compress the ensemble it came from", source)
    if model.torch_model is None and not model.members:
        raise ConfigError(f"already compressed ({model.carried['kind']} engine): compress the checkpoint it came "
                          "from", source)
    if method == "distill":
        student = student or model.task.default_student
        model.task.check_student(student, source)
    if finetune_epochs is None:
        finetune_epochs = model.task.config.trainer.max_epochs if method == "distill" else 1
    calibration = calibration or data
    networks = [m.torch_model for m in model.members] or [model.torch_model]
    fp32_bytes = sum(v.numel() * 4 if torch.is_floating_point(v) else v.numel() * v.element_size()
                     for n in networks for v in n.state_dict().values())  # the source's, before pruning thins it
    teacher_parameters = sum(checkpoint.parameter_count(n) for n in networks)
    with tempfile.TemporaryDirectory(prefix="medsight-compress-") as folder:
        work = Path(folder)
        before = measure(source, data, split, baseline_engine, work / "before")
        log.info(f"before: {before.metrics} ({before.engine}, {before.size_bytes / 1e6:.1f} MB)")
        state = {key: model.state[key] for key in KEPT if key in model.state}
        if model.members:  # every member, one after another, as a single checkpoint would be
            state["ensemble"] = {**model.state["ensemble"], "members": [
                compressed_member(member, member_state, method, calibration, samples)
                for member, member_state in zip(model.members, model.state["ensemble"]["members"])]}
        elif method == "int8":
            state["engine"] = int8_engine(model, calibration_inputs(model, calibration, samples))
        elif method in ("fp16", "bf16"):
            state["model"] = half_weights(model.state, torch.float16 if method == "fp16" else torch.bfloat16)
        elif method == "prune":
            state.update(prune_and_finetune(model, calibration, amount, finetune_epochs, work / "finetune"))
        else:
            state, training = distill(model, source, calibration, student, finetune_epochs, work / "distill")
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
            "teacher": teacher_parameters, "student": checkpoint.parameter_count(load(out).torch_model)})
    state["compression"] = label
    checkpoint.save(state, out)  # the label, both sides measured, inside the checkpoint too
    write_json(label, out.with_name(out.name + ".compression.json"))
    return label
