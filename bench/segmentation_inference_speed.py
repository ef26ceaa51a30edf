"""CPU speed of a whole segmentation predict, medsight against FAIR MONAI references, in one table.

What is timed, for every row, is the job as a user runs it on one BraTS-size case (4 x 240 x 240 x 155
by default): read the NIfTI files, preprocess, sliding-window inference, invert the preprocessing onto the
input grid, threshold, write the label map NIfTI. Loading the checkpoint is not timed (on either side);
converting the network for an engine (ONNX export, OpenVINO conversion and compilation) happens inside
``medsight.inference.predict.predict``: predict caches the converted network (the engine cache), so the timed runs
read it back, as every predict after a model's first does; the row "engine converted in the run" empties
the cache for each run and so times the conversion too.

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
NIfTI), and max |delta probability| on the preprocessed grid (medsight's probabilities are taken from its
writer, before inversion).

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
import copy
import json
import os
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

import medsight  # noqa: F401
from medsight.core import checkpoint
from medsight.core.config import resolve, to_dict
from medsight.inference.predict import Loaded, load_for_inference, predict
from medsight.core.registry import DATASETS, TASKS
from medsight.core.runtime import cpu_has_native_bf16

from _network_alone import NetworkTimer, default_engine, engine_calls, network_alone, report  # bench/, beside this script

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
MEDSIGHT = {"ms-default": ("auto", None), "ms-default-cold": ("auto", None), "ms-torch-bf16": ("torch", "bf16"), "ms-torch-fp32": ("torch", "fp32"),
            "ms-ort-fp32": ("onnxruntime", "fp32"), "ms-ov-fp32": ("openvino", "fp32"),
            "ms-ov-bf16": ("openvino", "bf16"), "ms-int8": (None, None)}
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


def case_files(loaded: Loaded, case: Path) -> tuple[list[str], str]:
    """The case's files in the model's modality order (as medsight finds them) and its label convention."""
    record = loaded.task.input_records(str(case))[0]
    files = record["image"] if isinstance(record["image"], list) else [record["image"]]
    return [str(f) for f in files], record["convention"]


# -- the reference ----------------------------------------------------------------------------------------
class Reference:
    """A competent MONAI user's predict for the same job: same weights, same preprocessing and window."""

    def __init__(self, model: torch.nn.Module, config, convention: str, bf16: bool, channels_last: bool):
        from monai.inferers import SlidingWindowInferer
        from monai.transforms import (Compose, CropForegroundd, EnsureChannelFirstd, EnsureTyped, LoadImaged,
                                      NormalizeIntensityd, Orientationd, Spacingd)

        from medsight.datasets import brats
        from medsight.data.transforms import BackgroundToZerod

        data, infer = config.data, config.infer
        steps = [LoadImaged("image", image_only=True), EnsureChannelFirstd("image"),
                 EnsureTyped("image", dtype=torch.float32)]
        if data.orient:
            steps.append(Orientationd("image", axcodes=data.orient, labels=(("L", "R"), ("P", "A"), ("I", "S"))))
        if data.resample:
            steps.append(Spacingd("image", pixdim=tuple(data.spacing_mm), mode="bilinear"))
        if data.background_to_zero:  # medsight's own step (a constant non-zero background -> 0), as configured
            steps.append(BackgroundToZerod("image"))
        steps.append(NormalizeIntensityd("image", nonzero=True, channel_wise=True))
        if data.crop_foreground:
            steps.append(CropForegroundd("image", source_key="image", select_fn=lambda x: x != 0, allow_smaller=True))
        self.preprocessing = Compose(steps)
        self.model = copy.deepcopy(model).float().eval()
        self.channels_last = channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last_3d)
        self.inferer = SlidingWindowInferer(roi_size=tuple(infer.roi_size), sw_batch_size=infer.sw_batch_size,
                                            overlap=infer.overlap, mode=infer.blend)
        self.bf16, self.threshold = bf16, infer.threshold
        self.convention = brats.CONVENTIONS[convention]

    def network(self, window: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            window = window.contiguous(memory_format=torch.channels_last_3d)
        return self.model(window)

    def __call__(self, files: list[str], out: Path) -> tuple[Path, torch.Tensor]:
        from monai.data import MetaTensor
        from monai.transforms import Invertd

        data = self.preprocessing({"image": files})
        image = data["image"]
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.inferer(image.as_tensor()[None], self.network)
        probs = torch.sigmoid(logits.float())[0]
        data["pred"] = MetaTensor(probs, meta=dict(image.meta))
        inverted = Invertd("pred", transform=self.preprocessing, orig_keys="image", nearest_interp=False)(data)["pred"]
        labels = self.convention.from_regions(inverted.as_tensor().numpy() > self.threshold).astype(np.uint8)
        out.mkdir(parents=True, exist_ok=True)
        path = out / "reference_seg.nii.gz"
        nib.save(nib.Nifti1Image(labels, np.asarray(image.meta["original_affine"], dtype=np.float64)), str(path))
        return path, probs


# -- medsight ---------------------------------------------------------------------------------------------
def capture_probabilities(loaded: Loaded, sink: dict) -> None:
    """Keep the probabilities predict hands its writer (preprocessed grid), for the agreement column."""
    task = loaded.task
    original = task.prediction_writer

    def writer(out, options=None):
        made = original(out, options)
        write = made.write

        def capturing(prediction, data):
            sink["probs"] = prediction
            return write(prediction, data)

        made.write = capturing
        return made

    task.prediction_writer = writer


def medsight_run(loaded: Loaded, precision: str | None, case: Path, out: Path, sink: dict,
                 cold: bool = False) -> tuple[Path, torch.Tensor]:
    cache = os.environ["MEDSIGHT_ENGINE_CACHE"]
    if cold:  # an empty engine cache: the conversion is timed too
        os.environ["MEDSIGHT_ENGINE_CACHE"] = str(out / f"empty-engine-cache-{time.perf_counter()}")
    try:
        report = predict(loaded, [str(case)], out, precision=precision)
    finally:
        os.environ["MEDSIGHT_ENGINE_CACHE"] = cache
    if report.failures or report.cases != 1:
        raise RuntimeError(f"medsight predict failed: {report.failures}")
    label_map = next(p for p in report.written if str(p).endswith("_seg.nii.gz"))
    return Path(label_map), sink.pop("probs")


def make_int8(source: Path, calibration: Path | None, samples: int, work: Path) -> Path:
    """``medsight compress --method int8`` of ``source``, calibrated on ``calibration`` (default: a small
    synthetic 4-modality BraTS dataset; the random default checkpoint's val split is its first case)."""
    from medsight.compression.compress import compress

    if calibration is None:
        calibration = DATASETS.get("brats")().synth(work / "calibration", cases=4, shape=(128, 128, 96))
    out = work / "int8.pt"
    started = time.perf_counter()
    label = compress(source, "int8", out, calibration, samples=samples)
    print(f"int8: compressed in {time.perf_counter() - started:.0f} s, calibrated on {calibration} "
          f"({samples} windows asked); evaluate on its val split before {label['before']['metrics']} "
          f"after {label['after']['metrics']}")
    return out


# -- measuring ------------------------------------------------------------------------------------------
def regions(path: Path, convention: str) -> tuple[np.ndarray, np.ndarray]:
    from medsight.datasets import brats

    image = nib.load(str(path))
    return brats.CONVENTIONS[convention].to_regions(np.asarray(image.dataobj).astype(np.int16)), image.affine


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def timed(run, warm, repeats: int):
    """(seconds, result) of the fastest of ``repeats`` runs, after one warm-up."""
    warm()
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        got = run()
        seconds = time.perf_counter() - started
        if seconds < best:
            best, result = seconds, got
    return best, result


def main() -> int:
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
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in LABELS]
    if unknown:
        parser.error(f"unknown rows {unknown}")
    if "ref-fp32" not in rows:
        rows.insert(0, "ref-fp32")  # the agreement baseline
    if args.checkpoint and not Path(args.checkpoint).is_file():
        print(f"skip: no checkpoint at {args.checkpoint}")
        return 0
    if args.case and not Path(args.case).is_dir():
        print(f"skip: no case folder at {args.case}")
        return 0
    if args.calibration and not Path(args.calibration).is_dir():
        print(f"skip: no calibration data at {args.calibration}")
        return 0
    scratch = tempfile.TemporaryDirectory(prefix="medsight-segspeed-")
    work = Path(args.work) if args.work else Path(scratch.name)
    work.mkdir(parents=True, exist_ok=True)
    started_all = time.perf_counter()
    # converted engines are cached (as predict does by default), in this run's folder: the warm-up fills it
    os.environ["MEDSIGHT_ENGINE_CACHE"] = str(work / "engine-cache")

    source = Path(args.checkpoint) if args.checkpoint else random_checkpoint(work / "random.pt", args.overrides)
    overrides = ["infer.overlay=false", "infer.probabilities=false", *args.overrides]
    loaded = load_for_inference(source, overrides)
    if loaded.model is None:
        print("--checkpoint must hold torch weights (give a compressed one as --int8-checkpoint)")
        return 2
    cfg = loaded.task.config
    case = Path(args.case) if args.case else REAL_CASE
    if not case.is_dir():
        case = DATASETS.get("brats")().synth(work / "synthetic", cases=1, shape=(240, 240, 155)) / "BraTS2021_00001"
        print(f"no real BraTS 2023 case at {REAL_CASE}: using a synthetic full-size case")
    warm_case = DATASETS.get("brats")().synth(work / "warm", cases=1, shape=(64, 64, 64)) / "BraTS2021_00001"
    files, convention = case_files(loaded, case)
    warm_files, _ = case_files(loaded, warm_case)
    shape = tuple(nib.load(files[0]).shape)
    params = sum(p.numel() for p in loaded.model.parameters()) / 1e6
    print(f"case {case.name}: {len(files)} x {' x '.join(map(str, shape))} ({', '.join(Path(f).name for f in files)})")
    print(f"checkpoint {source if args.checkpoint else 'seeded random-init (x25 last conv)'}: "
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

    int8_loaded = None
    if "ms-int8" in rows:
        int8_path = Path(args.int8_checkpoint) if args.int8_checkpoint else None
        if int8_path is None:
            int8_path = make_int8(source, Path(args.calibration) if args.calibration else None, args.samples,
                                  work / "compress")
        int8_loaded = load_for_inference(int8_path, overrides)
        if int8_loaded.model is not None:
            print(f"--int8-checkpoint {int8_path} holds torch weights, not an engine: int8 row skipped")
            int8_loaded = None
            rows.remove("ms-int8")
    print()

    results: dict[str, dict] = {}
    references: dict[str, Reference] = {}
    sink: dict = {}
    capture_probabilities(loaded, sink)
    if int8_loaded is not None:
        capture_probabilities(int8_loaded, sink)
    for row in rows:
        out = work / row
        if row.startswith("ref-"):
            reference = references[row] = Reference(loaded.model, cfg, convention, bf16="bf16" in row,
                                                    channels_last=row.endswith("-cl"))
            timer = NetworkTimer(reference.model)

            def run_reference(reference=reference, timer=timer, out=out):
                with timer:
                    return reference(files, out), timer.seconds

            seconds, ((label_map, probs), network_seconds) = timed(
                run_reference, lambda: reference(warm_files, work / "warm-out" / row), args.repeats)
            results[row] = {"network_seconds": network_seconds}
        else:
            engine, precision = MEDSIGHT[row]
            target = int8_loaded if row == "ms-int8" else loaded
            if row != "ms-int8":
                target.engine = engine
            cold = row == "ms-default-cold"
            seconds, (label_map, probs) = timed(lambda: medsight_run(target, precision, case, out, sink, cold),
                                                lambda: medsight_run(target, precision, warm_case,
                                                                     work / "warm-out" / row, sink), args.repeats)
        results.setdefault(row, {}).update(seconds=seconds, label_map=label_map, probs=probs)
        print(f"  {LABELS[row]:48s} {seconds:7.2f} s", flush=True)

    base = results["ref-fp32"]
    base_regions, base_affine = regions(base["label_map"], convention)
    best_ref = min((r for r in results if r.startswith("ref-")), key=lambda r: results[r]["seconds"])
    best = results[best_ref]["seconds"]
    print(f"\nratio = seconds of the fastest reference row ({LABELS[best_ref]}, {best:.2f} s) / seconds of the row; "
          "agreement vs MONAI reference fp32 (written label maps)")
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
        delta = float((probs.float() - reference_probs.float()).abs().max()) \
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
    # the network alone, on the windows the best reference fed its network: how far any pipeline could go
    with NetworkTimer(references[best_ref].model, keep=True) as recorder:
        references[best_ref](files, work / "recorded")
    calls = engine_calls(loaded.task, loaded.model, int8_loaded, native_bf16=cpu_has_native_bf16())
    alone = network_alone(calls, recorder.inputs, args.repeats)
    native = cpu_has_native_bf16()
    engine_of = {"ms-default": default_engine(loaded),
                 "ms-torch-bf16": default_engine(loaded, "bf16" if native else "fp32", "torch"),
                 "ms-torch-fp32": "torch fp32",
                 "ms-ov-fp32": "openvino fp32", "ms-ov-bf16": "openvino bf16", "ms-int8": "int8 (compressed, openvino)"}
    ceiling = report(LABELS[best_ref], best, results[best_ref]["network_seconds"], alone, recorder.inputs,
                     TARGET_DEFAULT, rows={LABELS[r]: (results[r]["seconds"], engine_of[r]) for r in results
                                           if r in engine_of})
    if "int8 (compressed, openvino)" in alone:
        print(f"int8 ceiling: {best / alone['int8 (compressed, openvino)']:.2f}x the best reference "
              f"(target {TARGET_INT8}x)")
    (work / "summary.json").write_text(json.dumps({"best_reference": best_ref, "rows": summary, "ceiling": ceiling},
                                                  indent=2))
    print(f"total bench time {time.perf_counter() - started_all:.0f} s; outputs in {work}"
          f"{' (temporary, removed)' if not args.work else ''}")
    scratch.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
