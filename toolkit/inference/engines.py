"""Inference engines: a task's network run by PyTorch, ONNX Runtime or OpenVINO.

Only the network call changes engine. Everything around it (the sliding window and its blending, a
detector's anchors, box decoding and NMS, thresholds, writers) stays the task's shared Python code: an
engine is wrapped as an ``nn.Module`` that takes a tensor and returns tensors, and the task puts it where
its network was (``Task.with_engine``).

- ``torch``: the model itself (autocast, channels-last: ``Runtime``).
- ``onnxruntime``: the task's export module exported to ONNX in memory (the TorchScript-based exporter,
  opset 17, dynamic batch and, where the task asks, spatial axes), run by ONNX Runtime's CPU provider in
  fp32.
- ``openvino``: the same module converted by OpenVINO (``ov.convert_model``), compiled for the CPU with
  the precision asked for: fp32 (``INFERENCE_PRECISION_HINT=f32``), bf16, or ``auto`` (OpenVINO's default:
  bf16 on CPUs with native bf16, as ``Runtime`` does for PyTorch).
- ``auto``: on a CPU, whichever of PyTorch (at the run's precision and memory layout) and OpenVINO runs
  this network faster on this machine (``faster``; OpenVINO only when a call is at least 10 % faster, as it
  also pays a start-up per process): both are timed once on the task's typical input
  (``Task.engine_probe``: a window, a batch of pictures) and the choice is remembered in the engine cache.
  There is no rule that holds for every network: on 2 cores with native bf16, OpenVINO bf16 ran DenseNet121
  and the cpu-small RetinaNet 1.5x faster than PyTorch bf16 + channels-last, and the BraTS-bundle
  SegResNet no faster (0.96-0.81x; the network-alone tables of bench/*_speed.py). PyTorch where OpenVINO is not installed, on
  GPUs, where the engine cache is off (no conversion to pay for every run) and where the options need
  PyTorch's gradients (Grad-CAM).

An engine file (``medsight compress --method int8``) is carried inside a medsight checkpoint
(``state["engine"] = {"kind", "precision", "encoding": "zlib", "files": {name: uint8 tensor}}``: each file
zlib-compressed (an IR's XML graph shrinks ~10x), held as a tensor because ``torch.save`` pickles ``bytes``
as latin-1 text, 1.5x larger) with the task, config and learnt
state it belongs to, so ``evaluate`` and ``predict`` take it as ``--checkpoint`` like any other.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import logging
import os
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medsight.core.quiet import library_warnings_quiet, tracing
from medsight.errors import ConfigError, DataError, MedsightError
from medsight.io.writers import atomic_path
from medsight.task import NetworkInput

log = logging.getLogger(__name__)

ENGINES = ("auto", "torch", "onnxruntime", "openvino")
_PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
_OV_PRECISION = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


def installed(kind: str) -> bool:
    return kind == "torch" or importlib.util.find_spec(_PACKAGES[kind]) is not None


def require(kind: str) -> None:
    if kind not in ENGINES:
        raise ConfigError(f"unknown engine {kind!r} (one of {', '.join(ENGINES)})", "command line")
    if kind != "auto" and not installed(kind):
        raise ConfigError(f"--engine {kind} needs the {_PACKAGES[kind]} package: pip install {_PACKAGES[kind]} "
                          "(installed with medsight's own install)", "command line")


class EngineNetwork(nn.Module):
    """A compiled network in the place of the torch module: a float tensor in, a tensor (one output) or a
    tuple of tensors out, on the input's device. No parameters: the engine holds the weights."""

    def __init__(self, run: Callable[[np.ndarray], list[np.ndarray]], kind: str, precision: str):
        super().__init__()
        self.run, self.kind, self.precision = run, kind, precision

    def forward(self, images: torch.Tensor):
        array = images.detach().float().contiguous().cpu().numpy()
        outputs = [torch.from_numpy(np.ascontiguousarray(o)).to(images.device) for o in self.run(array)]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def extra_repr(self) -> str:
        return f"engine={self.kind}, precision={self.precision}"


def _outputs(module: nn.Module, example: torch.Tensor) -> int:
    with torch.inference_mode():
        out = module(example)
    return 1 if isinstance(out, torch.Tensor) else len(out)


def onnx_bytes(module: nn.Module, spec: NetworkInput) -> bytes:
    """The module as ONNX (opset 17), dynamic along batch and, if ``spec.dynamic_spatial``, spatial axes."""
    import onnx  # noqa: F401  (the exporter needs it)

    module = module.float().eval()
    count = _outputs(module, spec.example)
    names = [f"output_{i}" for i in range(count)]
    axes = {0: "batch", **({i: f"d{i}" for i in range(2, spec.example.dim())} if spec.dynamic_spatial else {})}
    dynamic = {"input": axes, **{name: dict(axes) for name in names}}
    buffer = io.BytesIO()
    with library_warnings_quiet(*tracing()):
        torch.onnx.export(module, (spec.example,), buffer, input_names=["input"], output_names=names,
                          dynamic_axes=dynamic, dynamo=False, opset_version=17)
    return buffer.getvalue()


def _threads() -> int:
    return max(1, torch.get_num_threads())


def onnxruntime_runner(model: bytes) -> Callable[[np.ndarray], list[np.ndarray]]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = _threads()
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    return lambda array: session.run(None, {"input": array})


def openvino_model(module: nn.Module, spec: NetworkInput):
    """The module converted to an OpenVINO model (dynamic shapes, as OpenVINO converts PyTorch by default)."""
    import openvino as ov

    with torch.no_grad(), library_warnings_quiet(*tracing()):  # it traces the module
        return ov.convert_model(module.float().eval(), example_input=spec.example)


def openvino_runner(model, precision: str) -> Callable[[np.ndarray], list[np.ndarray]]:
    import openvino as ov

    config = {"INFERENCE_NUM_THREADS": _threads(), "PERFORMANCE_HINT": "LATENCY"}
    if precision in _OV_PRECISION:
        config["INFERENCE_PRECISION_HINT"] = _OV_PRECISION[precision]
    folder = cache_folder()
    if folder is not None:  # OpenVINO's own cache of compiled models: compiling 0.3 s -> 0.1 s on later runs
        config["CACHE_DIR"] = str(folder / "compiled")
    compiled = ov.Core().compile_model(model, "CPU", config)
    request = compiled.create_infer_request()

    def run(array: np.ndarray) -> list[np.ndarray]:
        request.infer({0: array})
        return [request.get_output_tensor(i).data.copy() for i in range(len(compiled.outputs))]

    return run


def build(kind: str, module: nn.Module, spec: NetworkInput, precision: str) -> EngineNetwork:
    """An engine for ``module`` (the task's export module): converted now, or read from the engine cache."""
    started = time.perf_counter()
    if kind not in ("onnxruntime", "openvino"):
        raise ConfigError(f"unknown engine {kind!r}", "command line")
    folder, key = cache_folder(), cache_key(kind, module, spec)
    found = folder is not None and (folder / f"{key}.{_CACHED[kind]}").is_file()
    if kind == "onnxruntime":
        if precision not in ("fp32", "auto"):
            log.info(f"note: ONNX Runtime's CPU provider runs fp32 (asked: {precision})")
        model = (folder / f"{key}.onnx").read_bytes() if found else onnx_bytes(module, spec)
        if not found:
            _store(folder, key, lambda tmp: tmp.with_suffix(".onnx").write_bytes(model), (".onnx",))
        engine = EngineNetwork(onnxruntime_runner(model), kind, "fp32")
    else:
        import openvino as ov

        model = None
        if found:
            try:
                model = ov.Core().read_model(str(folder / f"{key}.xml"))
            except RuntimeError as exc:  # a damaged cache entry (a full disk, a killed writer): convert again
                log.info(f"engine cache entry {folder / key}.xml unreadable ({str(exc).splitlines()[0][:80]}): "
                         "converting again")
                found = False
        model = model or openvino_model(module, spec)
        if not found:
            _store(folder, key, lambda tmp: ov.save_model(model, str(tmp.with_suffix(".xml")), compress_to_fp16=False),
                   (".bin", ".xml"))
        engine = EngineNetwork(openvino_runner(model, precision), kind, precision)
    log.debug(f"{kind} engine ready in {time.perf_counter() - started:.1f} s "
              f"({'from the engine cache' if found else 'converted'}: {folder or 'no cache'})")
    return engine


def seconds_per_call(run: Callable[[torch.Tensor], object], probe: torch.Tensor, calls: int = 3) -> float:
    """Mean seconds of ``run(probe)`` over ``calls`` calls after two warm-up calls (oneDNN and OpenVINO build
    their kernels on the first ones), without gradients, at this process's thread count: PyTorch's own
    ``torch.utils.benchmark.Timer`` (its default of one thread would time another configuration)."""
    from torch.utils.benchmark import Timer

    timer = Timer("run(probe)", globals={"run": run, "probe": probe}, num_threads=_threads())
    with torch.no_grad():
        return timer.timeit(calls).mean


#: --engine auto takes OpenVINO or ONNX Runtime when a call takes under this fraction of PyTorch's best time
OPENVINO_MARGIN = 0.9
#: ... and PyTorch's channels-last layout (when the layout is left to it) under this fraction of the default's
CHANNELS_LAST_MARGIN = 0.95


@dataclass(frozen=True)
class EngineChoice:
    """What ``--engine auto`` runs: ``engine`` (torch, openvino, onnxruntime) and, for torch, the layout."""

    engine: str
    channels_last: bool = False


def faster(module: nn.Module, spec: NetworkInput, probe: torch.Tensor, precision: str,
           channels_last: bool | None) -> EngineChoice:
    """Which engine runs ``module`` fastest on ``probe`` here: PyTorch at ``precision`` (autocast) in the layout
    ``channels_last`` (``None``: both layouts are timed, as the layout is left to the choice), OpenVINO at
    ``precision``, and ONNX Runtime where the precision is fp32 (its CPU provider's only one). An engine is taken
    only when clearly faster than PyTorch's best; channels-last only when clearly faster than the default
    layout (its rounding differs). Each candidate is timed (``seconds_per_call``) once per network, probe,
    precision, layout and thread count; the answer is remembered in the engine cache."""
    import copy
    import json

    from medsight.core.runtime import Runtime

    folder = cache_folder()
    measured = f"{cache_key('openvino', module, spec)}|{tuple(probe.shape)}|{precision}|{channels_last}|{_threads()}"
    key = "choice-" + hashlib.sha256(measured.encode()).hexdigest()[:40]
    note = folder / f"{key}.json" if folder is not None else None
    if note is not None and note.is_file():
        try:
            found = json.loads(note.read_text())
            return EngineChoice(found["engine"], bool(found["channels_last"]))
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a damaged note: measure again

    def torch_run(layout: bool):
        runtime = Runtime("cpu", precision, layout, distributed=False)  # as predict runs PyTorch
        model = runtime.setup_model(copy.deepcopy(module).float().eval(), train=False)

        def run(x: torch.Tensor):
            with runtime.autocast():
                return model(runtime.to_device(x))
        return run

    seconds = {"torch": seconds_per_call(torch_run(bool(channels_last)), probe)}
    if channels_last is None:
        seconds["torch+channels_last"] = seconds_per_call(torch_run(True), probe)
    for kind in ("openvino", "onnxruntime"):
        if installed(kind) and (kind == "openvino" or precision == "fp32"):
            seconds[kind] = seconds_per_call(build(kind, module, spec, precision), probe)
    layout = bool(channels_last) if channels_last is not None else \
        seconds["torch+channels_last"] < CHANNELS_LAST_MARGIN * seconds["torch"]
    best_torch = seconds["torch+channels_last" if layout and channels_last is None else "torch"]
    # another engine only when clearly faster per call: each process also reads and compiles its engine
    # (0.1-0.3 s) and copies every input and output, which a near tie per call does not repay (a BraTS case)
    engines_timed = {k: v for k, v in seconds.items() if not k.startswith("torch")}
    fastest = min(engines_timed, key=engines_timed.get, default=None)
    choice = EngineChoice(fastest, False) if fastest and engines_timed[fastest] < OPENVINO_MARGIN * best_torch \
        else EngineChoice("torch", layout)
    timings = ", ".join(f"{k} {v:.3f} s" for k, v in seconds.items())
    log.info(f"engine auto: {choice.engine}{' channels-last' if choice.channels_last else ''} for this network "
             f"here (input {tuple(probe.shape)}, {precision}: {timings}); remembered in {folder}")
    _store(folder, key, lambda tmp: tmp.with_suffix(".json").write_text(
        json.dumps({"engine": choice.engine, "channels_last": choice.channels_last, "seconds": seconds,
                    "input": list(probe.shape), "precision": precision, "layout_asked": channels_last,
                    "threads": _threads()})), (".json",))
    return choice


# -- the engine cache ---------------------------------------------------------------------------------------
#: the file that holds a cached engine, per kind
_CACHED = {"onnxruntime": "onnx", "openvino": "xml"}


def cache_folder() -> Path | None:
    """Where converted engines are kept: ``$MEDSIGHT_ENGINE_CACHE``, else ``$XDG_CACHE_HOME/medsight/engines``
    (``~/.cache/...``); ``MEDSIGHT_ENGINE_CACHE=off`` converts every time. Converting a network takes 4-6 s
    on 2 cores (more than a whole chest X-ray batch): each predict or evaluate process would pay it."""
    value = os.environ.get("MEDSIGHT_ENGINE_CACHE", "")
    if value.lower() in ("off", "0", "false", "no"):
        return None
    if value:
        return Path(value).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "medsight" / "engines"


def cache_key(kind: str, module: nn.Module, spec: NetworkInput) -> str:
    """What the converted engine depends on: the engine and its version, torch's, the module's structure
    (its repr) and every weight, the input's shape and which axes vary."""
    import importlib.metadata as metadata

    digest = hashlib.sha256()
    versions = [metadata.version(p) for p in (_PACKAGES[kind],)] + [torch.__version__]
    digest.update(f"{kind}|{versions}|{tuple(spec.example.shape)}|{spec.dynamic_spatial}|{module!r}".encode())
    for name, tensor in module.state_dict().items():
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()[:40]


def _store(folder: Path | None, key: str, write: Callable[[Path], None], suffixes: Sequence[str]) -> None:
    """Write an engine into the cache atomically (``writers.atomic_path``; the last suffix is the file
    readers look for, renamed last): a concurrent reader sees a whole engine or none. A cache that cannot
    be written is skipped."""
    if folder is None:
        return
    *siblings, main = suffixes
    try:
        with atomic_path(folder / f"{key}{main}", siblings=siblings) as tmp:
            write(tmp)
    except (OSError, DataError) as exc:
        log.debug(f"engine cache {folder} not written: {exc}")


# -- engine files carried in checkpoints ---------------------------------------------------------------
def openvino_files(model) -> dict[str, bytes]:
    """An OpenVINO model serialised (IR: .xml graph + .bin weights) into bytes."""
    import openvino as ov

    with tempfile.TemporaryDirectory(prefix="medsight-ov-") as folder:
        path = Path(folder) / "model.xml"
        ov.save_model(model, str(path), compress_to_fp16=False)
        return {"model.xml": path.read_bytes(), "model.bin": path.with_suffix(".bin").read_bytes()}


def carried(kind: str, precision: str, files: dict[str, bytes]) -> dict:
    """The checkpoint entry of an engine: its files zlib-compressed, as uint8 tensors."""
    return {"kind": kind, "precision": precision, "encoding": "zlib",
            "files": {name: torch.frombuffer(bytearray(zlib.compress(data, 6)), dtype=torch.uint8)
                      for name, data in files.items()}}


def file_bytes(engine: dict, name: str) -> bytes:
    """One of a carried engine's files, as written (entries from before ``carried`` hold plain ``bytes``)."""
    data = engine["files"][name]
    data = data if isinstance(data, bytes) else data.numpy().tobytes()
    return zlib.decompress(data) if engine.get("encoding") == "zlib" else data


def from_files(engine: dict, precision: str, where: str | Path) -> EngineNetwork:
    """The engine a compressed checkpoint carries."""
    kind = engine.get("kind")
    files = {name: file_bytes(engine, name) for name in engine.get("files") or {}}
    if kind == "openvino":
        if not installed("openvino"):
            raise MedsightError("this checkpoint holds an OpenVINO engine: pip install openvino", where)
        import openvino as ov

        weights = ov.Tensor(np.frombuffer(files["model.bin"], dtype=np.uint8).copy())
        model = ov.Core().read_model(model=files["model.xml"].decode(), weights=weights)
        return EngineNetwork(openvino_runner(model, precision), kind, engine.get("precision", precision))
    if kind == "onnxruntime":
        if not installed("onnxruntime"):
            raise MedsightError("this checkpoint holds an ONNX model: pip install onnxruntime", where)
        return EngineNetwork(onnxruntime_runner(files["model.onnx"]), kind, engine.get("precision", "fp32"))
    raise MedsightError(f"unknown engine {kind!r} in this checkpoint", where)


def engine_size(engine: dict) -> int:
    """Bytes the engine's files take in the checkpoint."""
    return sum(len(b) if isinstance(b, bytes) else b.numel() for b in (engine.get("files") or {}).values())


def describe(names: Sequence[str] = ENGINES[1:]) -> str:
    return ", ".join(f"{name}{'' if installed(name) else ' (not installed)'}" for name in names)
