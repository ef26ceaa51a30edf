"""Evaluate, predict and export from a checkpoint alone: the checkpoint carries the task name, the
resolved config and the task's learnt state (label order, thresholds, label convention...)."""

from __future__ import annotations

import io
import logging
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch
from monai.data import Dataset, decollate_batch

from medsight.core import checkpoint
from medsight.core.config import resolve
from medsight.data.loading import make_loader
from medsight.errors import CheckpointError, ConfigError, DataError, MedsightError, unwrap
from medsight.io.writers import atomic_path, write_json
from medsight.core.progress import progress
from medsight.compression.pruning import build_model
from medsight.core.registry import TASKS
from medsight.core.runtime import Runtime, set_threads
from medsight.task import Task
from medsight.inference.validation import run_validation

log = logging.getLogger(__name__)


@dataclass
class Loaded:
    task: Task
    model: torch.nn.Module | None  # None: the checkpoint carries an engine file instead of torch weights
    state: dict
    path: Path
    engine: str = "torch"  # torch, onnxruntime, openvino or auto (medsight.inference.engines)

    @property
    def run_dir(self) -> Path:
        return self.path.parent.parent if self.path.parent.name == "checkpoints" else self.path.parent


def load_for_inference(path: str | Path, overrides: list[str] | tuple = (), weights: str = "auto",
                       state: dict | None = None) -> Loaded:
    """Task, model (EMA weights when the run kept them) and raw state of a checkpoint (``state``: the
    checkpoint already loaded from ``path``)."""
    path = Path(path)
    state = state if state is not None else checkpoint.load(path)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt" if (path / "checkpoints" / "last.pt").is_file() else path / "last.pt"
    task_class = TASKS.get(state["task"])
    config = resolve(task_class.config_class, base=state["config"], overrides=list(overrides))
    task = task_class(config)
    task.load_state_dict(state.get("task_state", {}))
    task.learning = False
    if state.get("engine"):  # a compressed model: the engine file is the network (medsight compress)
        return Loaded(task=task, model=None, state=state, path=path, engine=state["engine"]["kind"])
    model = build_model(task)
    use_ema = weights == "ema" or (weights == "auto" and state.get("ema"))
    try:
        if use_ema:
            model.load_state_dict(checkpoint.ema_weights(state))
        else:
            model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"weights do not fit the model the config describes ({str(exc).splitlines()[0]})",
                              path) from None
    model.eval()
    return Loaded(task=task, model=model, state=state, path=path)


def inference_runtime(task: Task, device: str | None, precision: str | None, stage: str) -> Runtime:
    """Precision and memory layout: the command line's, else (predict) the task's ``infer.precision``
    and ``infer.channels_last``, else training's. ``evaluate`` runs as validation ran, so its metrics
    and the thresholds chosen on validation reproduce; ``predict`` may take the faster settings."""
    cfg = task.config.trainer
    set_threads(cfg.threads, cfg.deterministic)
    infer = getattr(task.config, "infer", None) if stage == "predict" else None
    precision = precision or getattr(infer, "precision", None) or cfg.precision
    channels_last = getattr(infer, "channels_last", cfg.channels_last)
    runtime = Runtime(device or cfg.device, precision, bool(channels_last), compile=False, distributed=False)
    if channels_last is None:  # auto: where the rounding is reduced precision's anyway
        runtime.channels_last = runtime.precision in ("bf16", "fp16")
    return runtime


def auto_engine(loaded: Loaded, runtime: Runtime) -> str:
    """What ``--engine auto`` runs: on a CPU, whichever of PyTorch (the run's precision and layout) and
    OpenVINO runs this network faster on this machine, timed once on the task's typical input and remembered
    in the engine cache (``medsight.inference.engines.faster``). A compressed checkpoint's own engine. PyTorch on GPUs,
    where OpenVINO is not installed or the engine cache is off, and where the task's options need
    PyTorch's gradients (Grad-CAM)."""
    from medsight.inference import engines
    task = loaded.task
    if loaded.model is None:  # a compressed checkpoint runs on the engine it carries
        return loaded.state["engine"]["kind"]
    if (runtime.device.type != "cpu" or task.engine_unsupported()
            or not engines.installed("openvino") or engines.cache_folder() is None):
        return "torch"
    return engines.faster(task.export_module(loaded.model), task.network_input(), task.engine_probe(),
                          runtime.precision, runtime.channels_last)


def network(loaded: Loaded, runtime: Runtime) -> torch.nn.Module:
    """The model predict and evaluate run: the torch model set up by ``runtime``, or the task's model with
    its network run by an inference engine (``loaded.engine``; see medsight.inference.engines)."""
    from medsight.inference import engines
    task, kind = loaded.task, loaded.engine
    if kind == "auto":
        kind = auto_engine(loaded, runtime)
    if kind == "torch":
        if loaded.model is None:
            raise CheckpointError(f"holds a compressed {loaded.state['engine']['kind']} model, not torch weights: "
                                  "run it without --engine torch", loaded.path)
        return runtime.setup_model(loaded.model, train=False)
    if runtime.device.type != "cpu":
        raise ConfigError(f"--engine {kind} runs on the CPU; use --engine torch on {runtime.device.type}",
                          "command line")
    reason = task.engine_unsupported()
    if reason:
        raise ConfigError(f"--engine {kind}: {reason}; use --engine torch", "command line")
    asked = runtime.precision  # as PyTorch would run it: --precision, else predict's infer.precision or training's
    if loaded.model is None:
        engine = engines.from_files(loaded.state["engine"], asked, loaded.path)
        skeleton = build_model(task)
    else:
        engine = engines.build(kind, task.export_module(loaded.model), task.network_input(), asked)
        skeleton = loaded.model
    runtime.precision, runtime.channels_last = "fp32", False  # the engine has its own precision
    return task.with_engine(skeleton.eval(), engine).eval()


def evaluate(loaded: Loaded, data: Path, split: str, out: Path, device: str | None = None,
             precision: str | None = None) -> dict[str, float]:
    """Metrics of the checkpoint's model on a split of a dataset, written to ``out``."""
    from medsight.data.loading import make_dataset

    task = loaded.task
    records = task.records(task.open_data(data), split)
    if not records:
        raise DataError(f"no records in split {split!r}", data)
    runtime = inference_runtime(task, device, precision, "evaluate")
    model = network(loaded, runtime)
    dataset = make_dataset(records, task.transforms("val"), task.config.data, None, cache=False)
    started = time.perf_counter()
    outputs = run_validation(task, model, dataset, task.config, runtime, desc=f"evaluate {split}")
    metrics = task.validation_metrics(outputs)
    out.mkdir(parents=True, exist_ok=True)
    write_json({"checkpoint": str(loaded.path), "data": str(data), "split": split, "cases": len(records),
                "seconds": round(time.perf_counter() - started, 2), "metrics": metrics}, out / "metrics.json")
    task.write_evaluation(outputs, metrics, out)
    return metrics


class _SafeDataset(Dataset):
    """Applies the inference transforms; a failing case becomes an error marker, not a crash."""

    def _transform(self, index: int):
        record = self.data[index]
        try:
            return super()._transform(index)
        except Exception as exc:  # a damaged file can fail deep inside a transform
            known = unwrap(exc)
            where = record.get("id", str(index))
            if known is not None:
                return {"__error__": str(known), "id": where}
            root = exc.__cause__ or exc
            return {"__error__": f"{where}: {type(root).__name__}: {root}", "id": where,
                    "__traceback__": traceback.format_exc()}


def _collate_skipping_errors(collate):
    def collate_fn(items):
        good = [i for i in items if "__error__" not in i]
        bad = [i for i in items if "__error__" in i]
        return (collate(good) if good else None), bad

    return collate_fn


@dataclass
class PredictionReport:
    written: list[Path] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    cases: int = 0
    seconds: float = 0.0


def predict(loaded: Loaded, inputs: list[str], out: Path, images: dict[str, str] | None = None,
            device: str | None = None, precision: str | None = None, batch_size: int | None = None,
            debug: bool = False, options=None) -> PredictionReport:
    """Predict every input case; a bad case is reported and skipped, the others go on."""
    from monai.data import list_data_collate

    task = loaded.task
    report = PredictionReport()
    records: list[dict] = []
    for item in inputs:
        try:
            records.extend(task.input_records(item))
        except MedsightError as exc:
            report.failures.append(str(exc))
    if images:
        try:
            records.extend(task.input_records(None, images=images))
        except MedsightError as exc:
            report.failures.append(str(exc))
    runtime = inference_runtime(task, device, precision, "predict")
    model = network(loaded, runtime)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    writer = task.prediction_writer(out, options)
    if records:
        dataset = _SafeDataset(records, task.transforms("infer"))
        collate = _collate_skipping_errors(task.collate_fn("infer") or list_data_collate)
        size = batch_size or task.predict_batch_size(runtime.device)
        loader = make_loader(dataset, task.config.data, size, shuffle=False, seed=0, collate_fn=collate)
        display = progress(len(records), "predict", task.config.trainer.progress, unit="case")
        # no_grad, not inference_mode: a task may turn autograd back on (Grad-CAM needs it).
        with torch.no_grad():
            for batch, errors in loader:
                display.update(len(errors))
                for error in errors:
                    report.failures.append(error["__error__"])
                    if debug and "__traceback__" in error:
                        log.error(error["__traceback__"])
                if batch is None:
                    continue
                items = decollate_batch(batch, detach=True)
                try:
                    with runtime.autocast():
                        predictions = task.predict(model, runtime.to_device(batch))
                except Exception as exc:  # the model cannot take this input: those cases fail, the rest go on
                    known = unwrap(exc)
                    reason = str(known) if known else f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                    for item in items:
                        report.failures.append(f"{item.get('id', '?')}: {reason}")
                    display.update(len(items))
                    continue
                for prediction, item in zip(predictions, items):
                    try:
                        report.written.extend(writer.write(prediction, item))
                        report.cases += 1
                    except MedsightError as exc:
                        report.failures.append(str(exc))
                    except Exception as exc:  # a writer's library failing on this case: the others go on
                        report.failures.append(f"{item.get('id', '?')}: writing failed ({type(exc).__name__}: "
                                               f"{str(exc).splitlines()[0][:200] if str(exc) else ''})")
                        if debug:
                            log.error(traceback.format_exc())
                    display.update(1)
        display.close()
    report.written.extend(writer.finish())
    report.seconds = time.perf_counter() - started
    return report


def export(loaded: Loaded, fmt: str, out: Path) -> Path:
    """TorchScript (traced) or ONNX of the task's export module; checked against the eager module on
    the task's example input."""
    if loaded.model is None:
        raise CheckpointError(f"holds a compressed {loaded.engine} model (medsight compress), not torch weights: "
                              "export the checkpoint it was made from", loaded.path)
    model = loaded.task.export_module(loaded.model).float().eval()
    example = loaded.task.example_input()
    with torch.inference_mode():
        expected = model(example)
    expected = expected if isinstance(expected, torch.Tensor) else expected[0]
    with atomic_path(out) as tmp:
        if fmt == "torchscript":
            with torch.no_grad():
                traced = torch.jit.trace(model, example, check_trace=False)
            buffer = io.BytesIO()  # in memory first: a full disk is then an OSError, not a native abort
            torch.jit.save(traced, buffer)
            tmp.write_bytes(buffer.getvalue())
            with torch.inference_mode():
                got = torch.jit.load(io.BytesIO(buffer.getvalue()))(example)
        elif fmt == "onnx":
            try:
                import onnx  # noqa: F401  (torch's exporter needs it)
            except ImportError:
                raise MedsightError("ONNX export needs the onnx package: pip install onnx (medsight[onnx])",
                                    "export") from None
            buffer = io.BytesIO()
            torch.onnx.export(model, (example,), buffer, input_names=["input"], output_names=["output"],
                              dynamo=False, opset_version=17)
            tmp.write_bytes(buffer.getvalue())
            got = None
        else:
            raise MedsightError(f"unknown export format {fmt!r} (torchscript or onnx)", "export")
        if got is not None:
            got = got if isinstance(got, torch.Tensor) else got[0]
            if not torch.allclose(got, expected, atol=1e-4, rtol=1e-3):
                raise MedsightError("exported model disagrees with the eager model", out)
    return out

