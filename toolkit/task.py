"""The task protocol: what a task plugin owns, and what the trainer and the runtime own.

A task owns its default config and profiles, the record schema it reads (every dataset format that
produces it can feed the task), its transforms per stage, the model family it builds from, the
training step (loss + values to log), validation outputs and metrics (and which metric picks the
best checkpoint, in which direction), inference, post-processing into typed results, and writing them.

The trainer and the runtime own devices, precision and distribution: a task never calls ``backward()``,
never builds optimizers, never loads starting weights, never touches AMP, DDP or the device of the model or
the batch (both arrive on the device, inside autocast). What a task may do with tensors is shape its own
network calls: a task arranges the inputs of its inferer for the kernels that run them (segmentation hands
each sliding window to a channels-last network in that layout; detection pairs a CPU scan with itself,
because PyTorch's 3D convolutions of a batch of one take a slow path), and a task that holds a frozen
helper network (classification's distillation teacher) gives it to the trainer through
``frozen_networks``, which puts it on the device.

Lifecycle. A task is made from its config; its ``state`` (what it learns from data that inference
needs: label order, thresholds, label convention) is then set once, either by ``learn_state(data)``
when a training run starts, or by ``load_state_dict`` from a checkpoint (evaluate, predict, export,
resume). Afterwards only ``validation_metrics`` updates it, while ``learning`` (thresholds and
post-processing chosen on validation). The network's structure (a pruned network's thinner layers) is the
model's, not the task's: it travels in the checkpoint beside the weights (``medsight.core.models``).

    @register_task("segmentation")
    class BrainTumourSegmentation(Task):
        config_class = SegmentationConfig
        schema = MRI_CASES                     # the records it reads
        model_family = "segmentation"          # medsight.core.models registry it builds from
        def learn_state(self, data): ...        # fresh training only
        def records(self, data, split): ...     # default: data.records(split)
        def transforms(self, stage): ...
        def build_model(self): ...              # architecture only; weights come from elsewhere
        def training_step(self, model, batch) -> StepOutput: ...
        def validation_step(self, model, batch) -> dict[str, list]: ...
        def validation_metrics(self, outputs) -> dict[str, float]: ...
        def input_records(self, path, images) -> list[dict]: ...   # command-line inputs (files, folders)
        def input_record(self, image, case_id) -> dict: ...        # one case from reader names
        def predict(self, model, batch) -> list: ...
        def to_result(self, prediction, item) -> Result: ...       # on the input's own grid
        def prediction_writer(self, out) -> PredictionWriter: ...   # writes results; one per predict call
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from medsight.core.config import TaskConfig
from medsight.data.formats import DataSource, RecordSchema, open_dataset
from medsight.errors import TaskError

Stage = Literal["train", "val", "infer"]
Split = Literal["train", "val", "test", "all"]


@dataclass
class StepOutput:
    """What a training step returns: the loss to minimise and values to log (floats or 0-d tensors)."""

    loss: torch.Tensor
    logs: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 1


@dataclass(frozen=True)
class Monitor:
    """The validation metric that selects the best checkpoint and drives early stopping."""

    metric: str
    mode: Literal["max", "min"] = "max"

    def better(self, value: float, best: float | None) -> bool:
        if best is None:
            return True
        return value > best if self.mode == "max" else value < best


@dataclass(frozen=True)
class DemoSpec:
    """How ``medsight demo`` runs a task: which synthetic data, which profile and overrides."""

    dataset: str
    synth: dict = field(default_factory=dict)
    profile: str = "cpu-small"
    overrides: tuple[str, ...] = ()
    #: smaller data and shorter training for ``demo --quick`` (tests)
    quick_synth: dict = field(default_factory=dict)
    quick_overrides: tuple[str, ...] = ()
    #: task options of the demo's predict (``Model.predict_files`` keywords: keys of the task's infer section)
    predict_options: dict = field(default_factory=dict)
    #: the split ``medsight demo`` evaluates; None = the task's evaluate_split. It must be data the run
    #: never saw: with ``held_out_cases`` the demo synthesises that many more cases (another seed) and
    #: evaluates all of them instead
    evaluate_split: str | None = None
    held_out_cases: int = 0
    #: printed under the task's heading: what this short run can and cannot show
    note: str = ""


@dataclass(frozen=True)
class OutputOptions:
    """How a ``predict`` call writes: also DICOM objects for viewers (``--dicom``: a task's DICOM SEG...),
    whether patient identifiers may be copied into them (``--keep-identifiers``; never by default), and
    whether pictures for a person are drawn (overlay PNGs, slice viewers, heatmap PNGs; off where only the
    files a machine reads are wanted: ``medsight serve``, whose viewer is the PACS)."""

    dicom: bool = False
    keep_identifiers: bool = False
    pictures: bool = True


@dataclass
class NetworkInput:
    """What a task's export module (the network an engine runs) takes: an example batch, and whether its spatial
    axes vary at run time (a detector running on whole scans) or only the batch does (a window, a picture)."""

    example: torch.Tensor
    dynamic_spatial: bool = False


@dataclass
class Result:
    """One case's prediction, made by ``Task.to_result`` on the input's own grid. Tasks derive their own
    (findings of an X-ray, nodule marks of a CT, a label map of an MRI case); ``save(folder)`` writes exactly
    the files ``medsight predict`` writes for it."""

    #: the case's name in outputs (a file name, a case folder's name, or the name given for an in-memory image)
    id: str
    #: the task that made it: its writer saves it
    task: Any = field(default=None, repr=False, compare=False, kw_only=True)
    #: what says how far to trust it, filled around the task: ``domain`` (why the input is unlike the training
    #: data; "" when alike), ``uncertainty`` (the members' disagreement), ``review`` (flagged for a human look)
    quality: dict[str, Any] = field(default_factory=dict, repr=False, compare=False, kw_only=True)

    def save(self, folder: str | Path, *, dicom: bool = False, keep_identifiers: bool = False,
             pictures: bool = True) -> list[Path]:
        return save_results([self], folder, OutputOptions(dicom=dicom, keep_identifiers=keep_identifiers,
                                                          pictures=pictures))


def save_results(results, folder: str | Path, options: OutputOptions | None = None) -> list[Path]:
    """Every result written into ``folder`` by its task's writer, with the files that sum them up."""
    results = list(results)
    if not results:
        return []
    writer = results[0].task.prediction_writer(Path(folder), options)
    table = CaseTable(Path(folder))
    written = []
    for result in results:
        written += writer.write_case(result)
        table.add(result)
    return written + writer.finish() + table.finish()


class CaseTable:
    """``cases.csv`` of one predict call: per case its id and ``quality`` (``domain``, ``score``,
    ``uncertainty``, ``review``), written when any case has something to say."""

    COLUMNS = ("case", "review", "domain", "score", "uncertainty")

    def __init__(self, out: Path):
        self.out, self.rows = Path(out), []

    def add(self, result: Result) -> None:
        from medsight.core.calibration import mark_review

        task = result.task
        mark_review(result.quality, (getattr(task, "state", None) or {}).get("review"))
        self.rows.append({"case": result.id, **{k: result.quality.get(k, "") for k in self.COLUMNS[1:]}})

    def finish(self) -> list[Path]:
        from medsight.io.writers import write_csv

        if not any(row["review"] or row["domain"] or row["score"] != "" for row in self.rows):
            return []
        return [write_csv(self.rows, self.out / "cases.csv", list(self.COLUMNS))]


class PredictionWriter:
    """Writes one ``predict`` call's outputs; made fresh for each call by ``Task.prediction_writer``, so
    rows gathered for a summary file (a CSV of every image) belong to that call alone."""

    def __init__(self, out: Path, options: OutputOptions | None = None):
        self.out = Path(out)
        self.options = options or OutputOptions()

    def write(self, result: Result) -> list[Path]:
        """Write one case's result; returns the files written."""
        raise NotImplementedError

    def write_case(self, result: Result) -> list[Path]:
        """``write``, and with ``dicom`` the task's DICOM report of the case as well (``Task.dicom_report``:
        detection's TID 1500 SR of its marks, classification's of its findings): what a PACS takes."""
        written = self.write(result)
        if self.options.dicom and getattr(result, "task", None) is not None:
            written += result.task.dicom_report(result, self.out, keep_identifiers=self.options.keep_identifiers)
        return written

    def finish(self) -> list[Path]:
        """Files that sum up the whole call (e.g. one CSV for all images). Default: none."""
        return []


@dataclass(frozen=True)
class Distillation:
    """How a task trains a student from a teacher (``Task.distillation``): the config overrides of the student's
    run, and the settings to record on the compressed checkpoint's label."""

    overrides: tuple[str, ...]
    settings: dict = field(default_factory=dict)


class Task:
    name: ClassVar[str]
    summary: ClassVar[str] = ""
    config_class: ClassVar[type[TaskConfig]] = TaskConfig
    #: named partial configs (nested dicts), e.g. "cpu-small" and "gpu"
    profiles: ClassVar[dict[str, dict]] = {}
    #: the record schema this task reads; None = the task reads its data without dataset formats
    schema: ClassVar[RecordSchema | None] = None
    #: the ``medsight.core.models`` family ``build_model`` creates from (``medsight tasks`` lists its names)
    model_family: ClassVar[str | None] = None
    monitor: ClassVar[Monitor] = Monitor("loss", "min")
    demo: ClassVar[DemoSpec | None] = None
    #: the split ``medsight evaluate`` uses when none is given
    evaluate_split: ClassVar[str] = "test"
    #: DDP: set when some parameters get no gradient in some steps
    find_unused_parameters: ClassVar[bool] = False
    #: config keys (sections or dotted keys) a run takes from a medsight checkpoint given as starting
    #: weights: the architecture and the input preprocessing it was trained with (user settings still win)
    inherited_from_starting_weights: ClassVar[tuple[str, ...]] = ("model",)
    #: state keys chosen on validation while training (thresholds, post-processing): a run trained with
    #: ``--plans`` records them in its plans.json next to what was planned
    chosen_on_validation: ClassVar[tuple[str, ...]] = ()
    #: ``medsight compress --method distill``: the student trained when none is named; None = no distillation
    default_student: ClassVar[str | None] = None
    #: what reads this task's inputs: ``volume`` (3D medical formats, DICOM series) or ``picture`` (2D X-rays)
    input_kind: ClassVar[str] = "volume"
    #: ``medsight data fingerprint`` / ``train --plans``: a module with ``fingerprint_case(task, record)``,
    #: ``summarise(task, cases)`` and ``plan(task, fingerprint, budget_bytes, precision)``; None = no planning
    planner: ClassVar[Any] = None

    def __init__(self, config: TaskConfig):
        name = getattr(getattr(config, "model", None), "name", None)
        if self.model_family and isinstance(name, str):  # the family's registry is filled by the task's module
            from medsight.core.models import models

            models(self.model_family).check(name)
        self.config = config
        #: values learnt from data that inference needs (label names, thresholds...): saved in checkpoints
        self.state: dict[str, Any] = {}
        #: True while training: ``validation_metrics`` may then update ``state`` (e.g. choose thresholds on
        #: validation). ``evaluate``/``predict`` set it False: they use the checkpoint's state unchanged.
        self.learning = True

    # -- data -------------------------------------------------------------------------------------
    def open_data(self, root: Path | str) -> DataSource:
        """The dataset at ``root`` through ``data.format`` (or the registered format that recognises it)."""
        return open_dataset(root, self.config.data, self.schema)

    def learn_state(self, data: DataSource) -> None:
        """Fresh training only, before anything else: learn ``self.state`` from the data (label set, label
        convention, loss weights...). Resume, evaluate, predict and export load the state instead."""

    def records(self, data: DataSource, split: Split) -> list[dict]:
        """The records of a split as the transforms read them. Default: the format's records."""
        return data.records(split)

    def transforms(self, stage: Stage) -> Callable:
        raise NotImplementedError

    def collate_fn(self, stage: Stage) -> Callable | None:
        """Batch collation; None means MONAI's ``list_data_collate``."""
        return None

    def train_sample_weights(self, records: list[dict]) -> list[float] | None:
        """Relative chance of drawing each training record (a weighted sampler, with replacement,
        ``len(records)`` draws per epoch); None shuffles every record once per epoch."""
        return None

    # -- model ------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        """The architecture, freshly initialised. Starting weights are applied by the trainer when a run
        starts, checkpoint weights by whoever loads the checkpoint."""
        raise NotImplementedError

    def adapt_starting_weights(self, tensors: dict, facts: dict, own: dict) -> tuple[dict, list[str]]:
        """Map starting weights onto this task's model where a name or a role says how (input channels by
        modality, head rows by label name); ``facts``: the source checkpoint's task, task_state and
        provenance (empty for a plain state dict). Returns (tensors, notes for the user). Default: as is."""
        return tensors, []

    def training_step(self, model: nn.Module, batch: Any) -> StepOutput:
        raise NotImplementedError

    def validation_step(self, model: nn.Module, batch: Any) -> dict[str, list]:
        """Per-sample outputs (plain Python/numpy values), gathered over batches and ranks."""
        raise NotImplementedError

    def validation_metrics(self, outputs: dict[str, list]) -> dict[str, float]:
        """Metrics from all validation outputs; may update ``self.state`` (e.g. thresholds) when
        ``self.learning`` is True."""
        raise NotImplementedError

    def write_evaluation(self, outputs: dict[str, list], metrics: dict[str, float], out: Path) -> list[Path]:
        """Files for ``medsight evaluate`` (per-case tables, curves). Default: none."""
        return []

    def case_rows(self, outputs: dict[str, list]) -> list[dict]:
        """One row per evaluated case from the validation outputs. Default: every output that is one number or
        string per case."""
        import numbers

        count = max((len(v) for v in outputs.values()), default=0)
        columns = [k for k, v in outputs.items() if len(v) == count and not k.startswith("pp:")
                   and all(isinstance(x, (numbers.Number, str)) for x in v)]
        return [{k: outputs[k][i] for k in columns} for i in range(count)]

    # -- trust: calibration and review (medsight.core.calibration) -------------------------------------
    #: validation also gathers what calibration and review need (voxel samples, review scores): always outside
    #: training (evaluate), and in cross-validation's out-of-fold pass, which sets it; not in training's own
    #: validations, where nothing reads them
    calibrating: bool = False
    #: predict and validation cut each input into windows and put every window in the runtime's memory layout
    #: (segmentation's sliding window): the whole input is handed over as read, not copied into channels-last
    windowed: bool = False
    #: ``to_result`` reads only the inputs' metadata and transform trace (segmentation's inversion), not their
    #: voxels: predict frees those once the network has run, before the result is made (a BraTS case's 55 MB)
    spends_inputs: bool = False

    def calibration_samples(self, outputs: dict[str, list]) -> dict[str, tuple]:
        """Per output the task calibrates (a label, a region, the score): ``(probabilities, targets, weights)``
        as the network gives them, before any calibration (weights: None, or how many each sample stands
        for). Calibration is fitted and ECE/Brier reported on these. Default: none."""
        return {}

    @property
    def calibration(self) -> dict[str, tuple[float, float]]:
        """Per output, the (slope, intercept) its logits go through before the sigmoid (fitted on out-of-fold
        predictions by ``medsight cv``: ``medsight.core.calibration``); empty where the checkpoint has none
        or ``infer.calibrated`` is false."""
        from medsight.core.calibration import stored

        infer = getattr(self.config, "infer", None)
        return {} if not getattr(infer, "calibrated", True) else stored(self.state)

    def apply_calibration(self, affine: dict[str, list[float]], method: str) -> None:
        """Keep the map (output -> [slope, intercept]) in the learnt state, in place of any earlier one; a
        task whose chosen settings are probability values (thresholds) moves them to the calibrated scale."""
        self.state.pop("temperature", None)
        self.state["calibration"] = {name: list(v) for name, v in affine.items()}
        self.state["calibration_method"] = method

    def review_scores(self, outputs: dict[str, list]) -> list[float]:
        """Per case, in ``case_rows`` order: the score that flags it for review (the same as ``to_result``
        puts in ``quality["score"]``; higher = less sure). Default: none."""
        return []

    def case_quality(self, outputs: dict[str, list]) -> list[float]:
        """Per case: how good its prediction was (Dice, accuracy), to show that flagged cases are worse."""
        return []

    # -- inference --------------------------------------------------------------------------------
    def input_records(self, path: str | None, images: dict[str, str] | None = None) -> list[dict]:
        """Records for one command-line input (a file, or a folder of files or of one case), or for
        explicit ``role=file`` images. Raise ``DataError`` naming the file for a bad input."""
        raise NotImplementedError

    def input_record(self, image: str | dict[str, str], case_id: str) -> dict:
        """One case's record from names the readers take as they are (files already checked, or in-memory
        images: ``medsight.io.memory``): one name, or ``{role: name}`` for a multi-modal case."""
        raise NotImplementedError

    def predict_batch_size(self, device: torch.device) -> int:
        """Items per ``predict`` batch on ``device`` (``medsight predict --batch-size`` overrides it)."""
        return self.config.data.val_batch_size

    def predict(self, model: nn.Module, batch: Any) -> list[Any]:
        """One prediction per item of ``batch`` (already on the device, inside autocast)."""
        raise NotImplementedError

    def to_result(self, prediction: Any, item: dict) -> Result:
        """One item's prediction (from ``predict``) post-processed into a result on the input's own grid;
        ``item``: the item's de-collated CPU inputs with their metadata."""
        raise NotImplementedError

    def prediction_writer(self, out: Path, options: OutputOptions | None = None) -> PredictionWriter:
        """A writer for one ``predict`` call into ``out``."""
        raise NotImplementedError

    def frozen_networks(self) -> list[nn.Module]:
        """Networks the task uses in its training step besides the model (a distillation teacher), frozen; the
        trainer puts them on its device once, before the first step. Default: none."""
        return []

    def example_input(self) -> torch.Tensor:
        """A batch-of-one input for export (TorchScript/ONNX)."""
        raise NotImplementedError

    def export_module(self, model: nn.Module) -> nn.Module:
        """The module ``medsight export`` traces and an inference engine runs. Default: the model itself; a
        task whose model has untraceable post-processing (e.g. a detector's NMS) returns its network here."""
        return model

    def network_input(self):
        """What the export module takes (``NetworkInput``): an example batch, and whether
        its spatial size varies at run time. Default: ``example_input()``, batch axis dynamic only."""
        return NetworkInput(self.example_input())

    def with_engine(self, model: nn.Module, engine: nn.Module) -> nn.Module:
        """``model`` with its export module replaced by ``engine`` (same inputs, same outputs). Default: the
        engine is the whole model."""
        return engine

    def engine_probe(self) -> torch.Tensor:
        """A typical input of the network at predict time (a window batch, a batch of pictures), on which
        ``--engine auto`` times the engines against each other. Default: ``network_input().example``."""
        return self.network_input().example

    def engine_unsupported(self) -> str | None:
        """Why the options asked for need PyTorch itself (e.g. gradients for Grad-CAM), or None."""
        return None

    @classmethod
    def demo_inputs(cls, data: Path) -> list[str]:
        """Inputs ``medsight demo`` predicts on, from the synthetic dataset at ``data``."""
        return []

    # -- compression ------------------------------------------------------------------------------
    def check_student(self, student: str | None, where: str | Path = "command line") -> None:
        """ConfigError unless this task distils and ``student`` is a model of its family (``where``: the
        checkpoint to distil, named in the error)."""
        if self.default_student is None:
            raise TaskError(f"--method distill: the {self.name} task offers no distillation", where)
        from medsight.core.models import models

        models(self.model_family).check(student, key="--student")

    def distillation(self, teacher: Path, student: str) -> Distillation:
        """The settings that train ``student`` (a model name of this task's family) to imitate the checkpoint
        ``teacher`` as well as learn the labels."""
        raise TaskError(f"--method distill: the {self.name} task offers no distillation", "command line")

    # -- command line -----------------------------------------------------------------------------
    @classmethod
    def add_arguments(cls, parser: argparse._ArgumentGroup, command: str) -> None:
        """Add this task's own options to ``command`` (``predict``, ``evaluate``...) of the CLI."""

    @classmethod
    def overrides_from_arguments(cls, args: argparse.Namespace, command: str) -> list[str]:
        """Config overrides (``key=value``) that this task's options given to ``command`` stand for."""
        return []

    @classmethod
    def score_predictions(cls, predictions: Path, out: Path, **options) -> dict[str, float]:
        """``medsight evaluate TASK --predictions FILE``: score a predictions file without a model (``options``:
        the task's own evaluate options, e.g. detection's ``annotations``), writing its files to ``out``."""
        raise TaskError(f"task {cls.name} cannot score a predictions file", "command line")

    # -- settings planned from the data (medsight data fingerprint; train --plans) -----------------
    def _planner(self):
        if self.planner is None:
            raise TaskError(f"the {self.name} task does not plan its settings from the data", "command line")
        return self.planner

    def fingerprint_case(self, record: dict) -> dict:
        """One case measured (``medsight.planning.plans``): at least ``spacing_mm`` and ``shape``; read as training reads."""
        return self._planner().fingerprint_case(self, record)

    def summarise_fingerprint(self, cases: list[dict]) -> dict:
        """Dataset-wide statistics of this task's measurements, for the plans file."""
        return self._planner().summarise(self, cases)

    def plan(self, fingerprint: dict, budget_bytes: int, precision: str) -> dict:
        """``{"config": overrides as nested dicts, "memory": how they were sized}`` from a fingerprint."""
        return self._planner().plan(self, fingerprint, budget_bytes, precision)

    # -- the training data's domain (predict's out-of-distribution flags) --------------------------
    #: a module with ``domain_case(task, record)`` (a task without a planner); None: the planner's
    domain_facts: ClassVar[Any] = None
    #: predict measures an input's domain facts where it reads the input for the network (its predict transforms
    #: hold a ``medsight.inference.domain.DomainTapd``), instead of reading it once more before
    domain_on_load: ClassVar[bool] = False

    def domain_case(self, record: dict) -> dict:
        """One case's facts that ``predict`` compares with the training data's (``medsight.inference.domain`` names
        them: modality, spacing_mm, extent_mm, ...), measured cheaply: header facts, a strided sample of voxels.
        Default: the task's module's ``domain_case``; else voxel size and extent from ``fingerprint_case``; else none
        (nothing compared)."""
        module = self.domain_facts or self.planner
        if module is not None and hasattr(module, "domain_case"):
            return module.domain_case(self, record)
        if self.planner is None:
            return {}
        case = self.fingerprint_case(record)
        spacing = [float(s) for s in case["spacing_mm"]]
        return {"spacing_mm": spacing, "extent_mm": [n * s for n, s in zip(case["shape"], spacing)]}

    # -- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return dict(self.state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = dict(state)

    def require_state(self, key: str) -> Any:
        """``self.state[key]``, or a clear error when neither ``learn_state`` nor a checkpoint set it."""
        if key not in self.state:
            raise TaskError(f"{self.name}: {key!r} is not known yet: it is learnt when training starts "
                            "(learn_state) or loaded from a checkpoint", "task")
        return self.state[key]

    # -- DICOM reports (medsight serve) -----------------------------------------------------------
    def dicom_report(self, result: Result, out: Path, keep_identifiers: bool = False) -> list[Path]:
        """DICOM objects beyond what ``result.save(..., dicom=True)`` writes, for a PACS: a structured report
        of the result (detection: TID 1500 per nodule; classification: findings and operating points),
        referencing the DICOM input it was made from. Default: none."""
        return []
