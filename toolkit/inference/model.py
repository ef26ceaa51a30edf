"""A checkpoint loaded for inference: ``medsight.load(checkpoint)`` -> ``Model``, then ``.predict(...)``,
``.predict_files(...)``, ``.evaluate(...)`` and ``.export(...)``.

The checkpoint carries the task name, the resolved config and the task's learnt state (label order,
thresholds, label convention...), so nothing else is needed. Task options (``cam=True``, ``tta=True``,
``probabilities=True``, any key of the task's ``infer`` section) are keyword arguments of each call; they never
change the loaded model, and engines are built once per model and precision.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import torch

from medsight.core.config import resolve
from medsight.core.registry import TASKS
from medsight.core.runtime import launched_rank
from medsight.core.structure import build_model
from medsight.errors import CheckpointError, ConfigError, DataError
from medsight.inference import ensemble
from medsight.inference import domain
from medsight.inference import inputs as inputs_
from medsight.inference.evaluate import Evaluation, evaluate
from medsight.inference.execution import Execution, inference_runtime, prepare
from medsight.inference.predict import Failure, PredictionReport, in_flight, predict_records, write_results
from medsight.io import checkpoint
from medsight.task import CaseTable, OutputOptions, Result, Task, save_results

#: how long a model keeps the compute-thread count chosen at its first predict before measuring again
THREADS_KEPT_S = 300.0

log = logging.getLogger(__name__)


class Predictions(list):
    """Results of several inputs, in input order; ``failures``: one line per input that could not be predicted.
    ``save(folder)`` writes what ``medsight predict`` writes for these inputs, summary files included."""

    def __init__(self, results=(), failures=()):
        super().__init__(results)
        self.failures: list[str] = list(failures)

    def save(self, folder: str | Path, *, dicom: bool = False, keep_identifiers: bool = False) -> list[Path]:
        return save_results(self, folder, OutputOptions(dicom=dicom, keep_identifiers=keep_identifiers))


class Model:
    """A checkpoint ready for inference. ``engine``: auto (on a CPU the faster of PyTorch and OpenVINO for this
    network, timed once and remembered), torch, onnxruntime or openvino; ``precision``: fp32, bf16, fp16 or auto
    (default: the task's ``infer.precision`` for predict, training's for evaluate); ``device``: auto, cpu, cuda..."""

    def __init__(self, state: dict, path: Path, *, device: str | None = None, engine: str = "auto",
                 precision: str | None = None):
        self.state, self.path = state, Path(path)
        self.device, self.engine, self.precision = device, engine, precision
        self.task_class = TASKS.get(state["task"])
        #: resolved configs per (options, overrides) asked, with their keys: a predict call does not resolve its
        #: config again (0.1-0.15 s of OmegaConf a call, as much as a whole X-ray job of medsight serve)
        self._configs: dict[str, tuple[object, str]] = {}
        self.task = self.configured()
        self.carried = state.get("engine")  # a compressed checkpoint: the engine files are the network
        #: an ensemble checkpoint's members, each a Model of its own (medsight.inference.ensemble)
        self.members: list[Model] = [Model(member, path, device=device, engine=engine, precision=precision)
                                     for member in ensemble.member_states(state)] if state.get("ensemble") else []
        #: the torch model per config: a task builds some settings into its model (a detector's score threshold,
        #: its sliding window), so options that change the config get a model built with them
        self._models: dict[str, object] = {}
        self._executions: dict[tuple, Execution] = {}
        #: compute threads chosen at this model's first predict (the cores other processes leave free), and
        #: when: every call of a model runs on the same count (bf16 sums do not move between two calls) and
        #: does not measure the cores again (0.1 s), until THREADS_KEPT_S have passed (a server's load changes)
        self._threads: tuple[int, float] | None = None
        self.torch_model = None if self.members else self.model_for(self.task)

    # -- what it is -------------------------------------------------------------------------------------
    @property
    def task_name(self) -> str:
        return self.task.name

    @property
    def run_dir(self) -> Path:
        return checkpoint.run_folder(self.path)

    @property
    def trained_on(self) -> dict:
        return self.state.get("trained_on") or {}

    def configured(self, options: Mapping[str, Any] | None = None, overrides=None) -> Task:
        """A task of this checkpoint with its learnt state, its config changed by ``overrides`` (``key=value``
        strings or a dict of dotted keys) and task ``options`` (keys of the ``infer`` section)."""
        import copy
        import json

        extra = _infer_overrides(self.task_class, options or {})
        if isinstance(overrides, Mapping):
            overrides = [f"{k}={_yaml(v)}" for k, v in overrides.items()]
        asked = list(overrides or []) + extra
        memo = json.dumps(asked, default=str)
        if memo not in self._configs:
            config = resolve(self.task_class.config_class, base=self.state["config"], overrides=asked)
            if len(self._configs) >= 32:  # a service asking for many option sets: keep the newest
                self._configs.pop(next(iter(self._configs)))
            self._configs[memo] = (config, _config_key_of(config))
        config, key = self._configs[memo]
        task = self.task_class(copy.deepcopy(config))  # a task may change its own config
        task._config_key = key
        task.load_state_dict(self.state.get("task_state", {}))
        task.learning = False
        return task

    def model_for(self, task: Task):
        """The torch model with this checkpoint's weights, built from ``task``'s config (None for a compressed
        checkpoint); one per distinct config, kept."""
        if self.carried:
            return None
        key = _config_key(task)
        if key not in self._models:
            self._models[key] = self._weights(task)
        return self._models[key]

    def _weights(self, task: Task):
        model = build_model(task, self.state.get("structure"))
        try:
            model.load_state_dict(checkpoint.model_weights(self.state))
        except RuntimeError as exc:
            raise CheckpointError(f"weights do not fit the model the config describes "
                                  f"({str(exc).splitlines()[0]})", self.path) from None
        return model.eval()

    def execution(self, task: Task, stage: str, precision: str | None = None, engine: str | None = None) -> Execution:
        """How ``task`` runs this model for ``stage`` (predict, evaluate): built once per choice, then kept."""
        if self.members:
            return self._ensemble_execution(task, stage, precision, engine)
        kept = self._threads if self._threads and time.monotonic() - self._threads[1] < THREADS_KEPT_S else None
        runtime = inference_runtime(task, self.device, precision or self.precision, stage, kept and kept[0])
        if kept is None:
            self._threads = (torch.get_num_threads(), time.monotonic())
        engine = engine or self.engine
        if stage == "evaluate" and engine == "auto" and not self.carried:
            engine = "torch"  # evaluate runs as validation ran, unless an engine is asked for
        key = (_config_key(task), engine, str(runtime.device), runtime.precision, runtime.channels_last)
        if key not in self._executions:
            self._executions[key] = prepare(task, self.model_for(task), lambda: build_model(task), self.carried,
                                            engine, runtime, self.path)
        return self._executions[key]

    def _ensemble_execution(self, task: Task, stage: str, precision: str | None, engine: str | None) -> Execution:
        """Every member's own execution (engine, precision and layout chosen as for one model), with the
        ensemble's task settings and each member's network, handed to the task as one ``Ensemble``."""
        key = ("ensemble", _config_key(task), stage, precision, engine)
        if key not in self._executions:
            runs = [member.execution(self._member_task(task, member), stage, precision, engine)
                    for member in self.members]
            kinds = sorted({run.engine for run in runs})
            self._executions[key] = Execution("+".join(kinds), ensemble.Ensemble([r.network for r in runs]),
                                              runs[0].runtime)
        return self._executions[key]

    def _member_task(self, task: Task, member: Model) -> Task:
        """``task`` (the ensemble's settings) with ``member``'s network: its model section and learnt state."""
        config = task.config
        if hasattr(config, "model") and hasattr(member.task.config, "model"):
            config = replace(config, model=member.task.config.model)
        own = self.task_class(config)
        own.load_state_dict(member.state.get("task_state", {}))
        own.learning = False
        return own

    # -- predict ----------------------------------------------------------------------------------------
    def predict(self, inputs: Any, *, ids: Sequence[str] | str | None = None, affine=None, spacing_mm=None,
                batch_size: int | None = None, overrides=None, strict_domain: bool = False,
                **options) -> Result | Predictions:
        """Predict one input (a result) or a list of inputs, or a folder (``Predictions``, in order).

        An input is a path, an image in memory (a NumPy array with ``affine``/``spacing_mm``, a ``MetaTensor``, a
        nibabel or SimpleITK image, pydicom datasets), or a dict ``{role: image}`` (multi-modal). ``ids`` name
        in-memory inputs in outputs. One input given alone raises its error; in a list, a bad input is listed in
        ``failures`` and the others go on. An input unlike the training data is logged and its reasons are in
        ``result.quality["domain"]``; ``strict_domain`` refuses it as a bad input."""
        items, single = inputs_.as_list(inputs)
        single = single and not (inputs_.is_path(inputs) and Path(inputs).is_dir())
        names = [ids] if isinstance(ids, str) else ids
        task = self.configured(options, overrides)
        self._note_synthetic()
        prepared = inputs_.prepare(task, items, names, geometry={"affine": affine, "spacing_mm": spacing_mm},
                                   strict=single)
        screened = domain.screen(task, self.state, prepared, strict=strict_domain)
        results, failures = [], list(prepared.failures)
        try:
            for result in screened.mark(predict_records(task, self.execution(task, "predict"), prepared.records,
                                                        batch_size, show_progress=len(prepared.records) > 1)):
                (failures if isinstance(result, Failure) else results).append(result)
        finally:
            kept = {r.id for r in results}
            prepared.release(keep=kept)
            for result in results:  # in-memory inputs stay readable (overlay pictures) while their result lives
                weakref.finalize(result, _release, prepared.names.get(result.id, []))
        if single:
            if failures:
                raise DataError(str(failures[0]))  # the message names the case or file already
            return results[0]
        return Predictions(results, [str(f) for f in failures])

    def predict_files(self, inputs: Sequence[Any], out: str | Path, *, images: Mapping[str, Any] | None = None,
                      ids: Sequence[str] | None = None, batch_size: int | None = None, dicom: bool = False,
                      keep_identifiers: bool = False, overrides=None, debug: bool = False, strict_domain: bool = False,
                      **options) -> PredictionReport:
        """Predict every input and write each case's files into ``out`` as it comes (what ``medsight predict``
        does): memory holds one batch at a time. A bad input is listed in the report, the others go on; so is an
        input unlike the training data with ``strict_domain`` (without it, a logged line and ``quality["domain"]``).
        Under ``torchrun`` each rank predicts every WORLD_SIZE-th input from its RANK and writes into
        ``out/rank<RANK>``: a node or a cluster predicts a large archive with the same command."""
        task = self.configured(options, overrides)
        out = Path(out)
        report = PredictionReport()
        self._note_synthetic()
        prepared = inputs_.prepare(task, list(inputs), ids, images=images)
        rank, world = launched_rank()
        if world > 1:  # under torchrun: every world-th input from this rank's own, into its own folder
            total = len(prepared.records)
            prepared.records[:] = prepared.records[rank::world]
            if rank:  # an input that cannot be read is reported once, by rank 0
                prepared.failures.clear()
            out = out / f"rank{rank}"
            log.info(f"rank {rank} of {world}: {len(prepared.records)} of {total} inputs, written to {out}")
        screened = domain.screen(task, self.state, prepared, strict=strict_domain)
        report.failures.extend(prepared.failures)
        execution = self.execution(task, "predict")
        out.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        writer = task.prediction_writer(out, OutputOptions(dicom=dicom, keep_identifiers=keep_identifiers))
        table = CaseTable(out)
        try:
            write_results(screened.mark(predict_records(task, execution, prepared.records, batch_size)), writer,
                          report, debug, table, behind=in_flight(task) if len(prepared.records) > 1 else 0)
        finally:
            prepared.release()
        report.written.extend(writer.finish() + table.finish())
        report.seconds = time.perf_counter() - started
        return report

    def _note_synthetic(self) -> None:
        if self.trained_on.get("synthetic"):
            log.info(f"note: this model was trained on synthetic data only ({self.trained_on.get('root')}): its "
                     "outputs on real images mean nothing; use a published model (medsight import) or train on "
                     "real data")

    # -- evaluate and export ----------------------------------------------------------------------------
    def evaluate(self, data: str | Path, split: str | None = None, *, out: str | Path | None = None,
                 precision: str | None = None, overrides=None, **options) -> Evaluation:
        """Metrics on a split of a dataset (default: the task's), run as validation ran (torch, training's
        precision) unless ``precision`` or this model's engine says otherwise; ``out``: also write the task's
        evaluation files (per-case tables, curves) and ``metrics.json`` there."""
        task = self.configured(options, overrides)
        split = split or task.evaluate_split
        return evaluate(task, self.execution(task, "evaluate", precision), Path(data), split,
                        Path(out) if out is not None else None, self.path)

    def export(self, fmt: str, out: str | Path) -> Path:
        """The network as TorchScript or ONNX, checked against PyTorch on the task's example input (an
        ensemble: each member's network, ``OUT.member<i>.<ext>``; the first is returned)."""
        from medsight.inference.export import export_network

        if self.members:  # one file per member (OUT's name with the member's index); the combination is the task's
            out = Path(out)
            for index, member in enumerate(self.members):
                if member.torch_model is None:
                    raise CheckpointError(f"member {index} holds a compressed {member.carried['kind']} model: "
                                          "export the ensemble it was made from", self.path)
                export_network(self._member_task(self.task, member), member.torch_model, fmt,
                               out.with_name(f"{out.stem}.member{index}{out.suffix}"))
            return out.with_name(f"{out.stem}.member0{out.suffix}")
        if self.torch_model is None:
            raise CheckpointError(f"holds a compressed {self.carried['kind']} model (medsight compress), not torch "
                                  "weights: export the checkpoint it was made from", self.path)
        return export_network(self.task, self.torch_model, fmt, Path(out))

    def __repr__(self) -> str:
        return f"Model({self.task_name}, {self.path}, engine={self.engine})"


def _config_key(task: Task) -> str:
    """The task's config as a key of the models and executions built for it (computed once per config asked)."""
    known = getattr(task, "_config_key", None)
    return known if known is not None else _config_key_of(task.config)


def _config_key_of(config) -> str:
    import json

    from medsight.core.config import to_dict

    return json.dumps(to_dict(config), sort_keys=True, default=str)


def _release(names: list[str]) -> None:
    from medsight.io import memory

    memory.release(names)


def _yaml(value: Any) -> str:
    import json

    return json.dumps(value) if isinstance(value, (list, tuple, dict, bool)) or value is None else str(value)


def _infer_overrides(task_class, options: Mapping[str, Any]) -> list[str]:
    """Task options (``name=True``) as ``infer.name=true``; an unknown one is a ConfigError naming the known."""
    if not options:
        return []
    section = next((f for f in fields(task_class.config_class) if f.name == "infer"), None)
    known = ({f.name for f in fields(section.default_factory())}  # type: ignore[misc]
             if section is not None and is_dataclass(section.default_factory()) else set())  # type: ignore[misc]
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"{task_class.name} has no option {unknown[0]!r} (its options are the infer.* keys: "
                          f"{', '.join(sorted(known)) or 'none'})", "predict")
    return [f"infer.{k}={_yaml(v)}" for k, v in options.items()]


def load(checkpoint_path: str | Path, *, device: str | None = None, engine: str = "auto",
         precision: str | None = None) -> Model:
    """A checkpoint (a file, or a run folder: its last checkpoint) ready for inference."""
    path = checkpoint.resolve_path(checkpoint_path)
    return Model(checkpoint.load(path), path, device=device, engine=engine, precision=precision)


def export(checkpoint_path: str | Path, fmt: str, out: str | Path) -> Path:
    """A checkpoint's network as TorchScript or ONNX (``medsight export``), checked numerically against PyTorch."""
    return load(checkpoint_path, engine="torch").export(fmt, out)
