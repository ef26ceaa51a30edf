"""The network alone, for the predict-speed benches: how much of a pipeline's time its network call takes,
and so the most that ANY pipeline running the same network on the same inputs could gain over it.

A pipeline's time is (time around the network: reading, preprocessing, windows, post-processing, writing)
+ (time in the network). A faster pipeline can shrink the first part to nothing; the second part is set by
the engine's kernels. So, against the best reference row (total R, of which N in its network), a pipeline
whose network calls take E seconds on the fastest engine can reach at most R / E: the ceiling. A speed
target above the ceiling cannot be met by pipeline work, only by a cheaper network (int8, pruning, a
distilled student) or other hardware.

- ``NetworkTimer``: forward hooks on the reference's network that sum the seconds spent in it and keep
  the inputs it was given (the windows, the picture batches, the scans), during the bench's own runs;
- ``network_alone``: each engine's seconds on exactly those inputs, best of ``repeats``;
- ``engine_calls``: the engines medsight offers for a task's network (torch fp32, torch bf16 autocast +
  channels-last, OpenVINO bf16 / fp32, a compressed checkpoint's engine);
- ``report``: the table and the ceiling;
- ``timed_predict``: one medsight row, ``Model.predict_files`` timed as a user's predict runs it (the engine
  read from the engine cache, or converted in the run under ``cold_engine_cache``).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn


class NetworkTimer:
    """Seconds spent inside ``module``'s forward (summed over calls) and, when ``keep``, a copy of each
    call's input tensor. Use as a context manager around one pipeline run."""

    def __init__(self, module: nn.Module, keep: bool = False):
        self.module, self.keep = module, keep
        self.seconds, self.calls, self.inputs = 0.0, 0, []
        self._started: list[float] = []
        self._handles = []

    def __enter__(self) -> NetworkTimer:
        self.seconds, self.calls, self.inputs = 0.0, 0, []

        def before(_module, args):
            if self.keep:
                self.inputs.append(args[0].detach().float().clone())
            self._started.append(time.perf_counter())

        def after(_module, _args, _output):
            self.seconds += time.perf_counter() - self._started.pop()
            self.calls += 1

        self._handles = [self.module.register_forward_pre_hook(before), self.module.register_forward_hook(after)]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def torch_call(module: nn.Module, bf16: bool, channels_last: bool) -> Callable[[torch.Tensor], object]:
    """``module`` run as medsight's PyTorch path runs it (``Runtime``): optional bf16 autocast and channels-last."""
    import copy

    from medsight.core.runtime import Runtime

    runtime = Runtime("cpu", "bf16" if bf16 else "fp32", channels_last, distributed=False)
    model = runtime.setup_model(copy.deepcopy(module).float().eval(), train=False)

    def call(x: torch.Tensor):
        with torch.no_grad(), runtime.autocast():
            return model(runtime.to_device(x))

    return call


def engine_calls(task, model: nn.Module, compressed=None, native_bf16: bool = True) -> dict[str, Callable]:
    """name -> a call of the task's network (``task.export_module``) on one input, per engine medsight offers.
    ``compressed``: a compressed checkpoint's ``medsight.Model``, whose engine is added as "int8 (compressed)"."""
    from medsight.inference import engines
    module = task.export_module(model).float().eval()
    calls = {"torch fp32": torch_call(module, False, False),
             "torch fp32 + channels-last": torch_call(module, False, True)}
    if native_bf16:
        calls["torch bf16 autocast"] = torch_call(module, True, False)
        calls["torch bf16 autocast + channels-last"] = torch_call(module, True, True)
    if engines.installed("openvino"):
        spec = task.network_input()
        for precision in ("fp32", "bf16") if native_bf16 else ("fp32",):
            engine = engines.build("openvino", module, spec, precision)
            calls[f"openvino {precision}"] = engine
    if engines.installed("onnxruntime"):
        calls["onnxruntime fp32"] = engines.build("onnxruntime", module, task.network_input(), "fp32")
    if compressed is not None and compressed.carried is not None:
        calls["int8 (compressed, openvino)"] = engines.from_files(compressed.carried, "auto", compressed.path)
    return calls


def network_alone(calls: dict[str, Callable], inputs: list[torch.Tensor], repeats: int = 2) -> dict[str, float]:
    """Seconds each call takes over all ``inputs`` (one warm-up pass, then the best of ``repeats``)."""
    seconds = {}
    for name, call in calls.items():
        with torch.no_grad():
            for x in inputs[:1]:
                call(x)
            best = float("inf")
            for _ in range(repeats):
                started = time.perf_counter()
                for x in inputs:
                    call(x)
                best = min(best, time.perf_counter() - started)
        seconds[name] = best
    return seconds


def report(best_name: str, best_seconds: float, best_network_seconds: float, alone: dict[str, float],
           inputs: list[torch.Tensor], target: float, per: str = "", rows: dict[str, tuple[float, str]] | None = None) -> dict:
    """Prints the network-alone table and the ceiling; returns them as a dict (for a summary file).
    ``rows``: medsight rows, name -> (seconds, the engine in ``alone`` its network runs on), split into the
    network and the time around it."""
    shapes = sorted({tuple(x.shape) for x in inputs})
    fastest = min(alone, key=alone.get)
    ceiling = best_seconds / alone[fastest] if alone[fastest] else float("inf")
    around = best_seconds - best_network_seconds
    print(f"\n== the network alone: {len(inputs)} call(s) ({', '.join('x'.join(map(str, s)) for s in shapes)}), "
          f"the inputs the best reference row fed its network; seconds{per}, best of the repeats")
    for name, seconds in sorted(alone.items(), key=lambda kv: kv[1]):
        print(f"  {name:40s} {seconds:8.3f} s   ceiling {best_seconds / seconds:5.2f}x")
    print(f"best reference row ({best_name}): {best_seconds:.3f} s{per}, of which {best_network_seconds:.3f} s "
          f"({100 * best_network_seconds / best_seconds:.0f} %) in its network and {around:.3f} s around it")
    lean = best_seconds / (alone[fastest] + around)
    print(f"ceiling: a pipeline with NOTHING around the network, on the fastest engine here ({fastest}), "
          f"would take {alone[fastest]:.3f} s{per} = {ceiling:.2f}x the best reference "
          f"(target {target}x: {'within reach' if ceiling >= target else 'out of reach for any pipeline'}); "
          f"one that spends the best reference's own {around:.3f} s around it (reading, preprocessing, writing): "
          f"{lean:.2f}x")
    for name, (seconds, engine) in (rows or {}).items():
        if engine in alone:
            print(f"  {name}: {seconds:.3f} s{per}, of which about {alone[engine]:.3f} s in the network ({engine}) "
                  f"and {seconds - alone[engine]:.3f} s around it (the best reference: {around:.3f} s)")
    return {"best_reference": best_name, "best_reference_seconds": best_seconds,
            "best_reference_network_seconds": best_network_seconds, "network_alone": alone,
            "fastest_engine": fastest, "ceiling": ceiling, "ceiling_with_reference_pipeline": lean}


def default_engine(model, precision: str | None = None, engine: str = "auto") -> str:
    """The ``engine_calls`` row that ``medsight predict [--precision P] [--engine E]`` runs for ``model`` (a
    ``medsight.Model`` of torch weights) on this CPU (default: engine auto, the task's precision and layout)."""
    from medsight.inference.execution import auto_engine, inference_runtime

    runtime = inference_runtime(model.task, "cpu", precision, "predict")
    layout = runtime.channels_last
    chosen = engine
    if engine == "auto":
        choice = auto_engine(model.task, model.torch_model, model.carried, runtime)
        chosen, layout = choice.engine, choice.channels_last
    if chosen != "torch":
        return f"{chosen} {'fp32' if chosen == 'onnxruntime' else runtime.precision}"
    name = "torch fp32" if runtime.precision == "fp32" else f"torch {runtime.precision} autocast"
    return name + (" + channels-last" if layout else "")


# -- medsight rows --------------------------------------------------------------------------------------
@contextlib.contextmanager
def cold_engine_cache(folder: Path, cold: bool = True):
    """With ``cold``, medsight's engine cache is an empty folder under ``folder`` inside the context: a predict
    there converts its engine (ONNX export, OpenVINO conversion) as a model's very first predict does."""
    cache = os.environ.get("MEDSIGHT_ENGINE_CACHE")
    if cold:
        os.environ["MEDSIGHT_ENGINE_CACHE"] = str(Path(folder) / f"empty-engine-cache-{time.perf_counter()}")
    try:
        yield
    finally:
        if cache is None:
            os.environ.pop("MEDSIGHT_ENGINE_CACHE", None)
        else:
            os.environ["MEDSIGHT_ENGINE_CACHE"] = cache


def timed_predict(checkpoint: Path, inputs: list, out: Path, engine: str = "auto", precision: str | None = None,
                  overrides=(), cold: bool = False):
    """(report, seconds) of one ``medsight predict`` as a user's process runs it: the checkpoint loaded (not
    timed), then ``Model.predict_files``, timed, which builds the engine (from the engine cache, or converted
    when ``cold``) and reads, predicts and writes every input. ``engine`` auto for a compressed checkpoint:
    its own."""
    import medsight

    model = medsight.load(checkpoint, device="cpu", engine=engine, precision=precision)
    with cold_engine_cache(out, cold):
        started = time.perf_counter()
        report = model.predict_files(inputs, out, overrides=list(overrides))
        seconds = time.perf_counter() - started
    if report.failures:
        raise RuntimeError("medsight predict failed:\n" + "\n".join(report.failures))
    return report, seconds
