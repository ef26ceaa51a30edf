"""How a loaded model runs: which engine, on which device, at which precision and memory layout.

The choice is made once per (stage, request) and handed over as a value, an ``Execution``: predict and
evaluate call ``execution.network`` inside ``execution.runtime.autocast()`` and move batches with
``execution.runtime.to_device``. Nothing is rewritten underneath: an engine has its own precision, so its
execution carries a runtime of its own (fp32, no channels-last) instead of a patched one.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from medsight.core.runtime import Runtime, set_threads
from medsight.errors import CheckpointError, ConfigError
from medsight.task import Task


@dataclass(frozen=True)
class Execution:
    """``engine``: torch, onnxruntime or openvino; ``network``: what the task's ``predict`` and
    ``validation_step`` are given; ``runtime``: device, autocast precision and layout around it."""

    engine: str
    network: nn.Module
    runtime: Runtime


def inference_runtime(task: Task, device: str | None, precision: str | None, stage: str,
                      threads: int | None = None) -> Runtime:
    """Precision and memory layout for torch: the caller's, else (predict) the task's ``infer.precision`` and
    ``infer.channels_last``, else training's. ``evaluate`` runs as validation ran, so its metrics and the
    thresholds chosen on validation reproduce; ``predict`` may take the faster settings. ``threads``: the
    compute threads chosen for this model before (``trainer.threads`` still wins), else chosen now
    (``set_threads``: the cores other processes leave free)."""
    cfg = task.config.trainer
    set_threads(cfg.threads or threads, cfg.deterministic)
    infer = getattr(task.config, "infer", None) if stage == "predict" else None
    precision = precision or getattr(infer, "precision", None) or cfg.precision
    channels_last = getattr(infer, "channels_last", cfg.channels_last)
    resolved = Runtime(device or cfg.device, precision, False, compile=False, distributed=False)
    layout_auto = channels_last is None and precision == "auto" and resolved.precision == "fp32"
    if channels_last is None:  # auto: where the rounding is reduced precision's anyway; in fp32 that precision
        # auto chose, --engine auto times both layouts per network (channels-last: 1.35x a SegResNet window on 2
        # AVX2 cores; a 2D network inside a 3D wrapper may gain nothing); fp32 asked for by name stays in the
        # default layout, which reproduces a source model's label maps exactly
        channels_last = resolved.precision in ("bf16", "fp16")
    runtime = Runtime(device or cfg.device, resolved.precision, bool(channels_last), compile=False,
                      distributed=False)
    runtime.layout_auto = layout_auto
    return runtime


def auto_engine(task: Task, model: nn.Module | None, carried: dict | None, runtime: Runtime):
    """What ``--engine auto`` runs (an ``engines.EngineChoice``): a compressed checkpoint's own engine; on a CPU,
    whichever of PyTorch (the run's precision; in fp32 with the layout left to auto, channels-last or not, per
    network), OpenVINO and ONNX Runtime (fp32) runs this network fastest on this machine, timed once on the
    task's typical input and remembered in the engine cache (``medsight.inference.engines.faster``). PyTorch on
    GPUs, where OpenVINO is not installed or the engine cache is off, and where the task's options need
    PyTorch's gradients (Grad-CAM)."""
    from medsight.inference import engines

    if model is None:
        return engines.EngineChoice(carried["kind"])
    if (runtime.device.type != "cpu" or task.engine_unsupported()
            or not engines.installed("openvino") or engines.cache_folder() is None):
        return engines.EngineChoice("torch", runtime.channels_last)
    return engines.faster(task.export_module(model), task.network_input(), task.engine_probe(),
                          runtime.precision, None if runtime.layout_auto else runtime.channels_last)


def prepare(task: Task, model: nn.Module | None, skeleton, carried: dict | None, engine: str, runtime: Runtime,
            where) -> Execution:
    """The execution of ``task`` with ``model`` (torch weights; None for a compressed checkpoint, whose engine
    files are ``carried``), for the ``engine`` asked (auto, torch, onnxruntime, openvino). ``skeleton()``: a
    freshly built network for a compressed checkpoint's engine to stand in."""
    from medsight.inference import engines

    engines.require(engine)
    if model is None and engine not in ("auto", carried["kind"]):
        raise ConfigError(f"--engine {engine}: this checkpoint holds a {carried['kind']} engine (made by medsight "
                          "compress); predict with the checkpoint it was made from to use another engine", where)
    kind = engine
    if engine == "auto":
        choice = auto_engine(task, model, carried, runtime)
        kind = choice.engine
        if kind == "torch" and choice.channels_last != runtime.channels_last:
            runtime = Runtime(str(runtime.device), runtime.precision, choice.channels_last, compile=False,
                              distributed=False)
    if kind == "torch":
        if model is None:
            raise CheckpointError(f"holds a compressed {carried['kind']} model, not torch weights: run it without "
                                  "--engine torch", where)
        return Execution("torch", runtime.setup_model(model, train=False), runtime)
    if runtime.device.type != "cpu":
        raise ConfigError(f"--engine {kind} runs on the CPU; use --engine torch on {runtime.device.type}",
                          "command line")
    reason = task.engine_unsupported()
    if reason:
        raise ConfigError(f"--engine {kind}: {reason}; use --engine torch", "command line")
    asked = runtime.precision  # as PyTorch would run it: the caller's, else predict's infer.precision or training's
    if model is None:
        network, frame = engines.from_files(carried, asked, where), skeleton()
    else:
        network, frame = engines.build(kind, task.export_module(model), task.network_input(), asked), model
    engine_runtime = Runtime(str(runtime.device), "fp32", False, compile=False, distributed=False)
    return Execution(kind, task.with_engine(frame.eval(), network).eval(), engine_runtime)
