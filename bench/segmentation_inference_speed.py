"""CPU speed of a whole segmentation predict, medsight against FAIR MONAI references, in one table.

What is timed, for every row, is the job as a user runs it on one BraTS-size case (4 x 240 x 240 x 155
by default): read the NIfTI files, preprocess, sliding-window inference, invert the preprocessing onto the
input grid, threshold, write the label map NIfTI. Loading the checkpoint is not timed (on either side);
converting the network for an engine (ONNX export, OpenVINO conversion and compilation) happens inside
``Model.predict_files`` (what ``medsight predict`` runs): predict caches the converted network (the engine
cache), so the timed runs read it back, as every predict after a model's first does; the row "engine
converted in the run" empties the cache for each run and so times the conversion too.

Reference rows: what a competent MONAI user writes for the same job with the SAME weights and the SAME
settings: ``LoadImaged`` + ``EnsureChannelFirstd`` + the preprocessing the checkpoint's config makes medsight
apply (``Orientationd``, ``Spacingd``, medsight's ``BackgroundToZerod`` where the config asks for it,
``NormalizeIntensityd(nonzero, channel_wise)``, ``CropForegroundd``), ``SlidingWindowInferer`` with the same
roi / overlap / sw_batch_size / blend mode, sigmoid + threshold, ``Invertd`` back onto the input grid,
``nibabel`` to write the label map. Variants: fp32; ``torch.autocast("cpu", dtype=torch.bfloat16)``; each
with the network and its windows in ``channels_last_3d``. Ratios are against the FASTEST reference row.

medsight rows: ``predict`` with the default engine (``auto``: the faster of PyTorch and OpenVINO, timed) and
precision, then each engine explicitly (torch bf16 / fp32, ONNX Runtime fp32, OpenVINO fp32 / bf16), and
the ``medsight compress --method int8`` checkpoint (compressed inside the bench, calibrated on a small
synthetic BraTS dataset or on ``--calibration DATA``; or ``--int8-checkpoint``). The overlay picture that
predict writes by default is switched off (``infer.overlay=false``): the reference writes no picture.

Each row: best of ``--repeats`` timed runs (default 2) after one warm-up run on a small synthetic case (the
windows have the roi's shape whatever the case's size, so the warm-up primes the same kernels). Agreement
with the reference fp32 row: Dice of the ET / TC / WT regions of the WRITTEN label maps (read back from
NIfTI), and max |delta probability| on the input grid (the region probabilities after inversion: medsight's
from one more, untimed ``Model.predict(case, probabilities=True)`` per row, the reference's before its
threshold).

Default checkpoint: a seeded random-init SegResNet with the MONAI BraTS bundle's architecture (16 filters,
blocks_down 1-2-2-4, blocks_up 1-1-1; 4 modalities) and the settings of the real fine-tuned run (roi
96^3, overlap 0.25, sw_batch_size 1, gaussian blend), saved as a medsight checkpoint; its last convolution
is scaled x25 (as tests' bundle fixture does) so its probabilities are decisive, like a trained network's,
and the thresholded agreement is not dominated by voxels sitting at p = 0.5. Speed does not depend on the
weights; agreement does: give a trained ``--checkpoint`` for the agreement that matters.

    flock /tmp/medsight-heavy.lock .venv/bin/python bench/segmentation_inference_speed.py \\
        [--checkpoint CKPT] [--case CASE_DIR] [--int8-checkpoint CKPT | --calibration DATA] \\
        [--repeats 2] [--rows ref-fp32,ref-bf16,...] [key=value config overrides ...]

Without ``--case`` it uses the real BraTS 2023 case in ../shared/data (four modalities, 240 x 240 x 155)
when present, else a full-size synthetic case.

After the table: the network alone (``_network_alone.py``), each engine on the inputs the best reference
row fed its network, and the ceiling any pipeline running this network could reach against that row.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import medsight
import nibabel as nib
import numpy as np
import torch
from _network_alone import (  # bench/, beside this script
    NetworkTimer,
    default_engine,
    engine_calls,
    network_alone,
    report,
    timed_predict,
)
from _segmentation_reference import Reference, dice, regions
from medsight.core.config import resolve, to_dict
from medsight.core.registry import DATASETS, TASKS
from medsight.core.runtime import cpu_capability, cpu_has_native_bf16
from medsight.io import checkpoint

HERE = Path(__file__).resolve().parents[1]
REAL_CASE = HERE.parent / "shared" / "data" / "brats" / "brats2023_gli_00001_unlabelled" / "BraTS-GLI-00001-000"
#: the random-init default: the MONAI BraTS bundle's SegResNet, the real fine-tuned run's inference settings
DEFAULT_SETTINGS = ["model.init_filters=16", "model.blocks_up=[1,1,1]", "infer.roi_size=[96,96,96]",
                    "infer.overlap=0.25", "infer.sw_batch_size=1", "infer.blend=gaussian",
                    "data.val_groups=[BraTS2021_00001]"]
REFERENCE_ROWS = ("ref-fp32", "ref-bf16", "ref-fp32-cl", "ref-bf16-cl")
MEDSIGHT_ROWS = ("ms-default", "ms-default-cold", "ms-torch-bf16", "ms-torch-fp32", "ms-ort-fp32", "ms-ov-fp32", "ms-ov-bf16", "ms-int8")
LABELS = {
    "ref-fp32": "MONAI reference fp32",
    "ref-bf16": "MONAI reference bf16 autocast",
    "ref-fp32-cl": "MONAI reference fp32 channels_last_3d",
    "ref-bf16-cl": "MONAI reference bf16 autocast channels_last_3d",
    "ms-default": "medsight predict default (engine auto)",
    "ms-default-cold": "  same, engine converted in the run",
    "ms-torch-bf16": "medsight --engine torch --precision bf16",
    "ms-torch-fp32": "medsight --engine torch --precision fp32",
    "ms-ort-fp32": "medsight --engine onnxruntime fp32",
    "ms-ov-fp32": "medsight --engine openvino --precision fp32",
    "ms-ov-bf16": "medsight --engine openvino --precision bf16",
    "ms-int8": "medsight compress int8 checkpoint",
}
#: row -> (engine, precision) for medsight rows (None: the checkpoint's/medsight's default)
MEDSIGHT = {"ms-default": ("auto", None), "ms-default-cold": ("auto", None), "ms-torch-bf16": ("torch", "bf16"),
            "ms-torch-fp32": ("torch", "fp32"), "ms-ort-fp32": ("onnxruntime", "fp32"),
            "ms-ov-fp32": ("openvino", "fp32"), "ms-ov-bf16": ("openvino", "bf16"),
            "ms-int8": ("auto", None)}  # int8: its compressed checkpoint's own engine
TARGET_DEFAULT, TARGET_INT8, TARGET_WT = 1.5, 2.0, 0.99


# -- inputs ---------------------------------------------------------------------------------------------
def random_checkpoint(path: Path, overrides: list[str]) -> Path:
    """A medsight checkpoint of a seeded random-init 4-modality SegResNet (see the module docstring)."""
    task_class = TASKS.get("segmentation")
    config = resolve(task_class.config_class, overrides=DEFAULT_SETTINGS + list(overrides))
    task = task_class(config)
    task.state.update(convention="brats2021", modalities=list(config.data.modalities),
                      spacing_mm=list(config.data.spacing_mm))
    torch.manual_seed(0)
    model = task.build_model().eval()
    final = [m for m in model.modules() if isinstance(m, torch.nn.Conv3d)][-1]
    with torch.no_grad():
        final.weight.mul_(25.0)
    return checkpoint.save({"task": "segmentation", "config": to_dict(config), "task_state": task.state,
                            "model": model.state_dict(), "epoch": 0}, path)


def case_files(task, case: Path) -> tuple[list[str], str]:
    """The case's files in the model's modality order (as medsight finds them) and its label convention."""
    record = task.input_records(str(case))[0]
    files = record["image"] if isinstance(record["image"], list) else [record["image"]]
    return [str(f) for f in files], record["convention"]


# -- medsight ---------------------------------------------------------------------------------------------
def medsight_run(source: Path, engine: str, precision: str | None, overrides: list[str], case: Path, out: Path,
                 cold: bool = False) -> tuple[float, Path]:
    """(seconds, the label map written) of one ``medsight predict`` of ``case``: ``_network_alone.timed_predict``."""
    report, seconds = timed_predict(source, [case], out, engine, precision, overrides, cold)
    if report.cases != 1:
        raise RuntimeError(f"medsight predict wrote {report.cases} cases, not 1")
    return seconds, Path(next(p for p in report.written if str(p).endswith("_seg.nii.gz")))


def medsight_probabilities(source: Path, engine: str, precision: str | None, overrides: list[str],
                           case: Path) -> np.ndarray:
    """The region probabilities (3, X, Y, Z) on the input grid that the row's predict thresholds (untimed)."""
    model = medsight.load(source, device="cpu", engine=engine, precision=precision)
    result = model.predict(case, overrides=overrides, probabilities=True)  # a case folder: a list of one
    if isinstance(result, list):
        if not result:
            raise RuntimeError(f"medsight predict failed: {result.failures}")
        result = result[0]
    return result.probabilities


def make_int8(source: Path, calibration: Path | None, samples: int, work: Path) -> Path:
    """``medsight compress --method int8`` of ``source``, calibrated on ``calibration`` (default: a small
    synthetic 4-modality BraTS dataset; the random default checkpoint's val split is its first case)."""
    if calibration is None:
        calibration = DATASETS.get("brats")().synth(work / "calibration", cases=4, shape=(128, 128, 96))
    out = work / "int8.pt"
    started = time.perf_counter()
    label = medsight.compress(source, "int8", out, calibration, samples=samples)
    print(f"int8: compressed in {time.perf_counter() - started:.0f} s, calibrated on {calibration} "
          f"({samples} windows asked); evaluate on its val split before {label['before']['metrics']} "
          f"after {label['after']['metrics']}")
    return out


# -- measuring ------------------------------------------------------------------------------------------
def timed(run, warm, repeats: int):
    """(seconds, result) of the fastest of ``repeats`` runs, after one warm-up; ``run()`` returns its own
    (seconds, result): what it times."""
    warm()
    best, result = float("inf"), None
    for _ in range(repeats):
        seconds, got = run()
        if seconds < best:
            best, result = seconds, got
    return best, result


@dataclass
class Setting:
    """What every row runs: the torch checkpoint, its predict overrides, the loaded model and its config, the
    case (and the small warm-up case) with its files in modality order and its label convention."""

    source: Path
    overrides: list[str]
    model: medsight.Model
    cfg: object
    case: Path
    warm_case: Path
    files: list[str]
    warm_files: list[str]
    convention: str


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a segmentation checkpoint (default: seeded random-init, see above)")
    parser.add_argument("--case", help="a case folder (default: the real BraTS 2023 case, else synthetic)")
    parser.add_argument("--int8-checkpoint", help="a `medsight compress --method int8` checkpoint of --checkpoint")
    parser.add_argument("--calibration", help="int8: dataset whose training split calibrates (default synthetic)")
    parser.add_argument("--samples", type=int, default=24, help="int8: network inputs to calibrate on")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rows", default=",".join(REFERENCE_ROWS + MEDSIGHT_ROWS),
                        help=f"comma-separated rows (default all): {', '.join(REFERENCE_ROWS + MEDSIGHT_ROWS)}")
    parser.add_argument("--work", help="folder for outputs (default: a temporary one)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. infer.overlap=0.5")
    args = parser.parse_args()
    args.row_list = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in args.row_list if r not in LABELS]
    if unknown:
        parser.error(f"unknown rows {unknown}")
    if "ref-fp32" not in args.row_list:
        args.row_list.insert(0, "ref-fp32")  # the agreement baseline
    return args


def missing_input(args) -> str | None:
    for flag, path, kind in (("checkpoint", args.checkpoint, "checkpoint"), ("case", args.case, "case folder"),
                             ("calibration", args.calibration, "calibration data")):
        if path and not (Path(path).is_file() if flag == "checkpoint" else Path(path).is_dir()):
            return f"skip: no {kind} at {path}"
    return None


def setting(args, work: Path) -> Setting:
    source = Path(args.checkpoint) if args.checkpoint else random_checkpoint(work / "random.pt", args.overrides)
    overrides = ["infer.overlay=false", "infer.probabilities=false", *args.overrides]
    model = medsight.load(source, device="cpu")
    if model.torch_model is None:
        raise SystemExit("--checkpoint must hold torch weights (give a compressed one as --int8-checkpoint)")
    task = model.configured(overrides=overrides)  # what predict runs with, for the reference too
    case = Path(args.case) if args.case else REAL_CASE
    if not case.is_dir():
        case = DATASETS.get("brats")().synth(work / "synthetic", cases=1, shape=(240, 240, 155)) / "BraTS2021_00001"
        print(f"no real BraTS 2023 case at {REAL_CASE}: using a synthetic full-size case")
    warm_case = DATASETS.get("brats")().synth(work / "warm", cases=1, shape=(64, 64, 64)) / "BraTS2021_00001"
    files, convention = case_files(task, case)
    warm_files, _ = case_files(task, warm_case)
    return Setting(source, overrides, model, task.config, case, warm_case, files, warm_files, convention)


def describe(bench: Setting, args) -> None:
    cfg, files = bench.cfg, bench.files
    shape = tuple(nib.load(files[0]).shape)
    params = sum(p.numel() for p in bench.model.torch_model.parameters()) / 1e6
    print(f"case {bench.case.name}: {len(files)} x {' x '.join(map(str, shape))} "
          f"({', '.join(Path(f).name for f in files)})")
    print(f"checkpoint {bench.source if args.checkpoint else 'seeded random-init (x25 last conv)'}: "
          f"{cfg.model.name} {cfg.model.init_filters} filters, {params:.2f} M params, modalities {cfg.data.modalities}")
    print(f"window: roi {tuple(cfg.infer.roi_size)}, overlap {cfg.infer.overlap}, sw_batch_size "
          f"{cfg.infer.sw_batch_size}, blend {cfg.infer.blend}; preprocessing: orient {cfg.data.orient or 'as stored'}, "
          f"resample {cfg.data.resample}, background_to_zero {cfg.data.background_to_zero}, z-score non-zero, "
          f"crop_foreground {cfg.data.crop_foreground}")
    try:
        import openvino as ov

        ov_default = str(ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT"))
    except Exception as exc:  # noqa: BLE001
        ov_default = f"n/a ({type(exc).__name__})"
    print(f"{torch.get_num_threads()} torch threads; native bf16 {cpu_has_native_bf16()}; OpenVINO default CPU "
          f"precision {ov_default}; repeats {args.repeats} (best), after 1 warm-up on a 64^3 synthetic case")
    print(f"CPU: {cpu_capability()}")


def int8_model(args, bench: Setting, work: Path) -> medsight.Model | None:
    """The int8 row's compressed checkpoint, loaded (None when the row is not run or the file holds weights)."""
    if "ms-int8" not in args.row_list:
        return None
    path = Path(args.int8_checkpoint) if args.int8_checkpoint else make_int8(
        bench.source, Path(args.calibration) if args.calibration else None, args.samples, work / "compress")
    compressed = medsight.load(path, device="cpu")
    if compressed.carried is None:
        print(f"--int8-checkpoint {path} holds torch weights, not an engine: int8 row skipped")
        args.row_list.remove("ms-int8")
        return None
    return compressed


def measure(rows: list[str], bench: Setting, int8: medsight.Model | None, repeats: int, work: Path):
    """Each row's {seconds, label_map, probs (, network_seconds)}, and the reference pipelines by row."""
    results: dict[str, dict] = {}
    references: dict[str, Reference] = {}
    for row in rows:
        out = work / row
        if row.startswith("ref-"):
            reference = references[row] = Reference(bench.model.torch_model, bench.cfg, bench.convention,
                                                    bf16="bf16" in row, channels_last=row.endswith("-cl"))

            def run_reference(reference=reference, out=out):
                with NetworkTimer(reference.model) as timer:
                    started = time.perf_counter()
                    made = reference(bench.files, out)
                    return time.perf_counter() - started, (made, timer.seconds)

            seconds, ((label_map, probs), network_seconds) = timed(
                run_reference, lambda: reference(bench.warm_files, work / "warm-out" / row), repeats)
            results[row] = {"network_seconds": network_seconds}
        else:
            engine, precision = MEDSIGHT[row]
            source = int8.path if row == "ms-int8" else bench.source
            seconds, label_map = timed(
                lambda: medsight_run(source, engine, precision, bench.overrides, bench.case, out,
                                     cold=row == "ms-default-cold"),
                lambda: medsight_run(source, engine, precision, bench.overrides, bench.warm_case,
                                     work / "warm-out" / row), repeats)
            probs = medsight_probabilities(source, engine, precision, bench.overrides, bench.case)
        results.setdefault(row, {}).update(seconds=seconds, label_map=label_map, probs=probs)
        print(f"  {LABELS[row]:48s} {seconds:7.2f} s", flush=True)
    return results, references


def print_table(results: dict, convention: str) -> tuple[dict, str]:
    """The table of seconds, ratios and agreement, and the targets; returns (summary by row, best reference)."""
    base = results["ref-fp32"]
    base_regions, base_affine = regions(base["label_map"], convention)
    best_ref = min((r for r in results if r.startswith("ref-")), key=lambda r: results[r]["seconds"])
    best = results[best_ref]["seconds"]
    print(f"\nratio = seconds of the fastest reference row ({LABELS[best_ref]}, {best:.2f} s) / seconds of the row; "
          "agreement vs MONAI reference fp32 (written label maps; probabilities on the input grid)")
    header = f"{'row':50s} {'seconds':>8s} {'ratio':>7s} {'Dice WT':>8s} {'Dice TC':>8s} {'Dice ET':>8s} {'max|dp|':>8s}"
    print(header)
    print("-" * len(header))
    summary = {}
    for row, result in results.items():
        got, affine = regions(result["label_map"], convention)
        if got.shape != base_regions.shape or not np.allclose(affine, base_affine, atol=1e-4):
            print(f"  WARNING {row}: label map grid {got.shape[1:]} differs from the reference's {base_regions.shape[1:]}")
            scores = [float("nan")] * 3
        else:
            scores = [dice(got[i], base_regions[i]) for i in range(3)]  # to_regions: ET, TC, WT
        probs, reference_probs = result["probs"], base["probs"]
        delta = float(np.abs(probs.astype(np.float32) - reference_probs.astype(np.float32)).max()) \
            if probs is not None and probs.shape == reference_probs.shape else float("nan")
        ratio = best / result["seconds"]
        print(f"{LABELS[row]:50s} {result['seconds']:8.2f} {ratio:6.2f}x {scores[2]:8.4f} {scores[1]:8.4f} "
              f"{scores[0]:8.4f} {delta:8.4f}")
        summary[row] = {"seconds": round(result["seconds"], 3), "ratio_vs_best_reference": round(ratio, 3),
                        "dice_wt": scores[2], "dice_tc": scores[1], "dice_et": scores[0], "max_abs_dprob": delta}
    print()
    if "ms-default" in summary:
        row = summary["ms-default"]
        met = row["ratio_vs_best_reference"] >= TARGET_DEFAULT and row["dice_wt"] >= TARGET_WT
        print(f"target default >= {TARGET_DEFAULT}x best reference with WT Dice >= {TARGET_WT}: "
              f"{row['ratio_vs_best_reference']:.2f}x, WT {row['dice_wt']:.4f} -> {'MET' if met else 'NOT MET'}")
    if "ms-int8" in summary:
        row = summary["ms-int8"]
        met = row["ratio_vs_best_reference"] >= TARGET_INT8
        print(f"target int8 >= {TARGET_INT8}x best reference: {row['ratio_vs_best_reference']:.2f}x "
              f"(WT Dice {row['dice_wt']:.4f}) -> {'MET' if met else 'NOT MET'}")
    return summary, best_ref


def network_section(results: dict, references: dict, best_ref: str, bench: Setting, int8, repeats: int,
                    work: Path) -> dict:
    """The network alone, on the windows the best reference fed its network: how far any pipeline could go."""
    best = results[best_ref]["seconds"]
    with NetworkTimer(references[best_ref].model, keep=True) as recorder:
        references[best_ref](bench.files, work / "recorded")
    native = cpu_has_native_bf16()
    model = bench.model
    alone = network_alone(engine_calls(model.task, model.torch_model, int8, native_bf16=native), recorder.inputs,
                          repeats)
    engine_of = {"ms-default": default_engine(model),
                 "ms-torch-bf16": default_engine(model, "bf16" if native else "fp32", "torch"),
                 "ms-torch-fp32": "torch fp32",
                 "ms-ov-fp32": "openvino fp32", "ms-ov-bf16": "openvino bf16", "ms-int8": "int8 (compressed, openvino)"}
    ceiling = report(LABELS[best_ref], best, results[best_ref]["network_seconds"], alone, recorder.inputs,
                     TARGET_DEFAULT, rows={LABELS[r]: (results[r]["seconds"], engine_of[r]) for r in results
                                           if r in engine_of})
    if "int8 (compressed, openvino)" in alone:
        print(f"int8 ceiling: {best / alone['int8 (compressed, openvino)']:.2f}x the best reference "
              f"(target {TARGET_INT8}x)")
    return ceiling


def main() -> int:
    args = parse_args()
    skipped = missing_input(args)
    if skipped:
        print(skipped)
        return 0
    scratch = tempfile.TemporaryDirectory(prefix="medsight-segspeed-")
    work = Path(args.work) if args.work else Path(scratch.name)
    work.mkdir(parents=True, exist_ok=True)
    started_all = time.perf_counter()
    # converted engines are cached (as predict does by default), in this run's folder: the warm-up fills it
    os.environ["MEDSIGHT_ENGINE_CACHE"] = str(work / "engine-cache")
    bench = setting(args, work)
    describe(bench, args)
    int8 = int8_model(args, bench, work)
    print()
    results, references = measure(args.row_list, bench, int8, args.repeats, work)
    summary, best_ref = print_table(results, bench.convention)
    ceiling = network_section(results, references, best_ref, bench, int8, args.repeats, work)
    (work / "summary.json").write_text(json.dumps({"best_reference": best_ref, "rows": summary, "ceiling": ceiling},
                                                  indent=2))
    print(f"total bench time {time.perf_counter() - started_all:.0f} s; outputs in {work}"
          f"{' (temporary, removed)' if not args.work else ''}")
    scratch.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
