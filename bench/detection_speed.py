"""Whole-scan detection predict on CPU: ``medsight predict`` (every engine and precision, and the int8
``medsight compress`` checkpoint) against the same detector run the MONAI-tutorial way
(``generate_detection_inference_transform``-style transforms + ``detector(..., use_inferer=True)`` + the
tutorial's box post-processing), in fp32 and in ``torch.autocast`` bf16, with the same weights, the same
scans, the SAME sliding window (roi, overlap, windows per call = medsight's ``infer.sw_batch_size``) and
the same box selection.

Both read the scan, orient it RAS, resample it, window HU, detect and turn boxes into world mm; both
write a CSV. Every row: seconds per scan (median of ``--repeats`` after a warm-up run; inside predict,
counted: reading the engine from medsight's engine cache, which the warm-up filled as any first predict
does; one row empties the cache and so also times the ONNX export / OpenVINO conversion), the ratio to the
fastest reference row, and how many of its marks are identical to the reference fp32 row's: each mark's twin in
the other pipeline (nearest centre within 0.5 mm, probability within 1e-4 for fp32 rows, 1e-2 for
reduced-precision rows; printed). MONAI's ``AffineBoxToWorldCoordinated`` maps box corner coordinates
through the affine as if they were voxel centres, half a voxel off medsight's voxel-edge convention;
the comparison removes that known half-voxel offset.

    flock /tmp/medsight-heavy.lock .venv/bin/python bench/detection_speed.py [--checkpoint CKPT] [--scans 3]
        [--repeats 3] [--shape 320,320,120] [--input FILE ...] [--rows ...] [--no-int8]
    # the real chest CT (shared data, not in the repo):
    ... detection_speed.py --input ../shared/data/ct/pyradiomics_lung1/lung1_image.nrrd

Without ``--checkpoint`` a seeded random-init cpu-small detector is used: speed does not depend on the
weights, but its marks are low-confidence noise that sits near every threshold (agreement of reduced
precisions and int8 is then a worst case). int8 calibrates on a small synthetic LUNA16 set.

After the table: the network alone (``_network_alone.py``), each engine on the inputs the best reference
row fed its network, and the ceiling any pipeline running this network could reach against that row.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import medsight
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
from medsight.core.config import resolve, to_dict
from medsight.core.registry import DATASETS, TASKS
from medsight.core.runtime import cpu_capability, cpu_has_native_bf16
from medsight.io import checkpoint


def random_detector(path: Path, overrides: list[str]) -> Path:
    """A checkpoint of a seeded random-init cpu-small detector."""
    task_class = TASKS.get("detection")
    config = resolve(task_class.config_class, profile=task_class.profiles["cpu-small"], overrides=overrides)
    config.task = "detection"
    task = task_class(config)
    torch.manual_seed(0)
    model = task.build_model().eval()
    return checkpoint.save({"task": "detection", "config": to_dict(config), "task_state": task.state,
                            "model": model.state_dict(), "epoch": 0}, path)


def monai_tutorial_way(network: torch.nn.Module, cfg, inputs: list[str], out_csv: Path,
                       bf16: bool = False) -> dict[str, np.ndarray]:
    """The tutorial's inference: its transforms and post-transforms, the detector's own sliding window with
    medsight's windows per call; ``network``: medsight's detection module (its RetinaNet and anchors), ``cfg``: its
    config; ``bf16``: the detector under ``torch.autocast("cpu", dtype=torch.bfloat16)``."""
    from medsight.datasets.ct_nodules import volume_stem
    from medsight.io.readers import SimpleITKReader
    from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
    from monai.apps.detection.transforms.dictionary import (
        AffineBoxToWorldCoordinated,
        ClipBoxToImaged,
        ConvertBoxModed,
    )
    from monai.data import DataLoader, Dataset
    from monai.data.utils import no_collation
    from monai.transforms import (
        Compose,
        DeleteItemsd,
        EnsureChannelFirstd,
        EnsureTyped,
        LoadImaged,
        Orientationd,
        ScaleIntensityRanged,
        Spacingd,
    )

    detector = RetinaNetDetector(network=network.network, anchor_generator=network.anchor_generator,  # same weights
                                 debug=False)
    detector.set_target_keys(box_key="box", label_key="label")
    detector.set_box_selector_parameters(score_thresh=cfg.infer.score_threshold,
                                         topk_candidates_per_level=cfg.infer.topk_per_level,
                                         nms_thresh=cfg.infer.nms_iou,
                                         detections_per_img=cfg.infer.max_marks_per_scan)
    detector.set_sliding_window_inferer(roi_size=list(cfg.infer.roi_size), overlap=cfg.infer.overlap,
                                        sw_batch_size=cfg.infer.sw_batch_size, mode="constant",
                                        device="cpu")
    detector.eval()
    low, high = cfg.data.window_hu
    preprocessing = Compose([
        # The tutorial reads with MONAI's ITKReader(affine_lps_to_ras=True); the itk package is not installed
        # here, so this reads with medsight's SimpleITK-backed MONAI reader, which gives the same RAS affine.
        LoadImaged(keys="image", reader=SimpleITKReader(), image_only=False, meta_key_postfix="meta_dict"),
        EnsureChannelFirstd(keys="image"),
        EnsureTyped(keys="image", dtype=torch.float32),
        Orientationd(keys="image", axcodes="RAS"),
        Spacingd(keys="image", pixdim=list(cfg.data.spacing_mm)),
        ScaleIntensityRanged(keys="image", a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True),
        EnsureTyped(keys="image", dtype=torch.float32),
    ])
    postprocessing = Compose([
        ClipBoxToImaged(box_keys="box", label_keys=["label", "label_scores"], box_ref_image_keys="image",
                        remove_empty=True),
        AffineBoxToWorldCoordinated(box_keys="box", box_ref_image_keys="image", image_meta_key_postfix="meta_dict",
                                    affine_lps_to_ras=True),
        ConvertBoxModed(box_keys="box", src_mode="xyzxyz", dst_mode="cccwhd"),
        DeleteItemsd(keys=["image"]),
    ])
    loader = DataLoader(Dataset([{"image": path} for path in inputs], preprocessing), batch_size=1,
                        collate_fn=no_collation)
    marks: dict[str, np.ndarray] = {}
    rows = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for batch in loader:
            images = [item["image"] for item in batch]
            roi = cfg.infer.roi_size
            use_inferer = not all(all(s <= r for s, r in zip(image.shape[1:], roi)) for image in images)
            detections = detector(images, use_inferer=use_inferer)
            for item, detection in zip(batch, detections):
                result = postprocessing({"box": detection["box"], "label": detection["label"],
                                         "label_scores": detection["label_scores"], "image": item["image"]})
                uid = volume_stem(Path(str(item["image"].meta["filename_or_obj"])))
                box = np.asarray(torch.as_tensor(result["box"]).float(), dtype=np.float64).reshape(-1, 6)
                scores = np.asarray(torch.as_tensor(result["label_scores"]).float(), dtype=np.float64).reshape(-1)
                marks[uid] = np.concatenate([box[:, :3], scores[:, None]], axis=1)
                rows += [(uid, *b[:3], s, b[3:].mean()) for b, s in zip(box, scores)]
    with open(out_csv, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["seriesuid", "coordX", "coordY", "coordZ", "probability", "diameter_mm"])
        writer.writerows(rows)
    return marks


def read_marks(path: Path) -> dict[str, np.ndarray]:
    from medsight.tasks.detection.froc import read_submission

    return read_submission(path)


def compare(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray], half_voxel_mm: np.ndarray,
            tolerance: float = 1e-4) -> dict:
    """Each mark's twin: the other pipeline's nearest mark on the same scan (after removing MONAI's half-voxel
    offset). A twin within 0.5 mm and 1e-4 in probability is the same mark; the rest are listed."""
    matched, total, lonely, dprob = 0, 0, [], [0.0]
    for uid in sorted(set(ours) | set(theirs)):
        mine, other = ours.get(uid, np.zeros((0, 4))), theirs.get(uid, np.zeros((0, 4)))
        for a, b, who in ((mine, other, "medsight"), (other, mine, "MONAI")):
            shift = half_voxel_mm if who == "MONAI" else -half_voxel_mm
            for mark in a:
                total += who == "medsight"
                if len(b):
                    d = np.linalg.norm(b[:, :3] - (mark[:3] + shift), axis=1)
                    k = int(d.argmin())
                    if d[k] < 0.5 and abs(b[k, 3] - mark[3]) < tolerance:
                        matched += who == "medsight"
                        dprob.append(abs(b[k, 3] - mark[3]))
                        continue
                lonely.append(f"{who} only: {uid[-8:]} p={mark[3]:.3f}")
    return {"counts_agree": all(len(ours.get(u, [])) == len(theirs.get(u, [])) for u in set(ours) | set(theirs)),
            "matched": matched, "total": total, "lonely": lonely, "max_probability_difference": max(dprob)}


ROWS = {  # name: ("ref", bf16) or ("ms", engine, precision)
    "reference fp32 (MONAI tutorial)": ("ref", False),
    "reference bf16 autocast": ("ref", True),
    "medsight default (engine auto)": ("ms", "auto", None),
    "  same, engine converted in the run": ("ms", "auto", None),
    "medsight torch fp32": ("ms", "torch", "fp32"),
    "medsight torch bf16": ("ms", "torch", "bf16"),
    "medsight onnxruntime fp32": ("ms", "onnxruntime", "fp32"),
    "medsight openvino fp32": ("ms", "openvino", "fp32"),
    "medsight openvino bf16": ("ms", "openvino", "bf16"),
    "medsight int8 (compress, openvino)": ("ms", "auto", None),  # its own engine
}


def int8_checkpoint(source: Path, args, work: Path) -> Path:
    """``medsight compress --method int8`` of the bench's checkpoint."""
    data = DATASETS.get("luna16")().synth(work / "calibration", cases=4, seed=3, shape="160,160,64")
    started = time.perf_counter()
    label = medsight.compress(source, "int8", work / "int8.pt", data, samples=args.calibration_samples, split="all")
    print(f"int8: compressed in {time.perf_counter() - started:.0f} s (calibration: 4 synthetic LUNA16 scans); "
          f"size {label['size_ratio']}x of fp32", flush=True)
    return work / "int8.pt"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a detection checkpoint (default: a seeded cpu-small detector)")
    parser.add_argument("--input", nargs="*", default=[], help="scan files (default: synthetic LUNA16 scans)")
    parser.add_argument("--scans", type=int, default=3)
    parser.add_argument("--shape", default="320,320,120", help="synthetic scan size x,y,z (0.75x0.75x2.5 mm voxels)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", help="comma-separated row numbers (1-based) to run; default all")
    parser.add_argument("--no-int8", action="store_true")
    parser.add_argument("--int8-checkpoint", help="an int8 checkpoint of --checkpoint (default: made here)")
    parser.add_argument("--calibration-samples", type=int, default=16)
    parser.add_argument("overrides", nargs="*")
    return parser.parse_args()


def chosen_rows(args) -> dict:
    rows = dict(ROWS)
    if args.rows:
        keep = {int(i) - 1 for i in args.rows.split(",")} | {0}
        rows = {k: v for i, (k, v) in enumerate(ROWS.items()) if i in keep}
    if args.no_int8:
        rows.pop("medsight int8 (compress, openvino)", None)
    return rows


def measure(rows: dict, source: Path, int8: Path | None, model: medsight.Model, cfg, inputs: list[str],
            overrides: list[str], repeats: int, work: Path) -> tuple[dict, dict]:
    """(seconds per scan of each row's runs, each row's marks from its warm-up run)."""

    def run(name: str, out: Path) -> tuple[dict[str, np.ndarray], float]:
        kind = rows[name]
        if kind[0] == "ref":
            started = time.perf_counter()
            found = monai_tutorial_way(model.torch_model, cfg, inputs, out.with_suffix(".csv"), bf16=kind[1])
            return found, time.perf_counter() - started
        checkpoint_path = int8 if "int8" in name else source
        _, seconds = timed_predict(checkpoint_path, inputs, out, kind[1], kind[2], overrides,
                                   cold="converted in the run" in name)  # an empty engine cache: conversion timed
        return read_marks(out / "submission.csv"), seconds

    times: dict[str, list[float]] = {name: [] for name in rows}
    marks: dict[str, dict] = {}
    for name in rows:  # warm-up (kernels built on first use), keeping the marks
        marks[name] = run(name, work / f"warm-{len(marks)}")[0]
    for repeat in range(repeats):  # interleaved: drift in machine load hits every row alike
        for index, name in enumerate(rows):
            times[name].append(run(name, work / f"run-{repeat}-{index}")[1] / len(inputs))
    return times, marks


def print_table(rows: dict, times: dict, marks: dict, cfg, inputs: list[str], args) -> str:
    """The table and the target; returns the fastest reference row."""
    spacing = np.asarray(cfg.data.spacing_mm)
    # MONAI's world point is medsight's plus half a voxel along each RAS array axis (axis-aligned scans);
    # in LPS, x and y change sign: medsight = MONAI + (sx, sy, -sz) / 2.
    half_voxel = np.asarray([0.5, 0.5, -0.5]) * spacing
    truth = marks["reference fp32 (MONAI tutorial)"]
    medians = {name: statistics.median(t) for name, t in times.items()}
    best_ref = min((n for n in rows if rows[n][0] == "ref"), key=medians.get)
    names = ", ".join(Path(i).name[-24:] for i in inputs)
    print(f"\n== detection predict on CPU, {len(inputs)} scan(s) ({names}), median of {args.repeats}, "
          f"{torch.get_num_threads()} threads, weights: {args.checkpoint or 'seeded random-init cpu-small'}")
    print(f"sliding window {list(cfg.infer.roi_size)}, overlap {cfg.infer.overlap}, windows per call "
          f"{cfg.infer.sw_batch_size} (both pipelines); score threshold {cfg.infer.score_threshold}, "
          f"NMS IoU {cfg.infer.nms_iou}")
    print(f"{'pipeline':38s} {'s/scan':>7s} {'ratio':>6s} {'marks':>6s} {'identical':>10s}  runs")
    summary = {}
    for name in rows:
        fp32 = rows[name][0] == "ref" and not rows[name][1] or rows[name][0] == "ms" and rows[name][2] == "fp32"
        if rows[name][0] == "ref":
            # the reference's own world points: compare like with like (no half-voxel shift)
            agreement = compare_same(marks[name], truth, 1e-4 if fp32 else 1e-2)
        else:
            agreement = compare(marks[name], truth, half_voxel, 1e-4 if fp32 else 1e-2)
        count = agreement["total"]
        share = agreement["matched"] / count if count else 1.0
        ratio = medians[best_ref] / medians[name]
        print(f"{name:38s} {medians[name]:7.2f} {ratio:5.2f}x {count:6d} {100 * share:9.1f}%  "
              f"{', '.join(f'{t:.2f}' for t in times[name])}")
        summary[name] = {"seconds_per_scan": medians[name], "ratio": ratio, "marks": count, "identical": share}
    default = summary["medsight default (engine auto)"] if "medsight default (engine auto)" in summary else None
    print(f"ratio: s/scan of the fastest reference row ({best_ref}) / the row's; identical: share of the row's "
          "marks with a twin among the reference fp32 row's (centre within 0.5 mm after MONAI's half-voxel "
          "offset, probability within 1e-4 (fp32 rows) or 1e-2 (bf16/int8 rows))")
    if default:
        met = default["ratio"] >= 1.5 and default["identical"] >= 0.98
        print(f"target: default >= 1.5x the best reference with >= 98 % identical marks: {default['ratio']:.2f}x, "
              f"{100 * default['identical']:.1f}% -> {'MET' if met else 'NOT MET'}")
    return best_ref


def network_section(rows: dict, times: dict, best_ref: str, model: medsight.Model, cfg, int8: Path | None,
                    inputs: list[str], repeats: int, work: Path) -> None:
    """The network alone, on the windows/scans the best reference row fed its network: how far any pipeline
    could go."""
    medians = {name: statistics.median(t) for name, t in times.items()}
    with NetworkTimer(model.torch_model.network, keep=True) as recorder:
        started = time.perf_counter()
        monai_tutorial_way(model.torch_model, cfg, inputs, work / "recorded.csv", bf16=rows[best_ref][1])
        recorded_seconds = time.perf_counter() - started
    native = cpu_has_native_bf16()
    compressed = medsight.load(int8, device="cpu") if int8 is not None else None
    alone = network_alone(engine_calls(model.task, model.torch_model, compressed, native), recorder.inputs, repeats)
    per_scan = {name: seconds / len(inputs) for name, seconds in alone.items()}
    engine_of = {"medsight default (engine auto)": default_engine(model), "medsight torch fp32": "torch fp32",
                 "medsight torch bf16": default_engine(model, "bf16" if native else "fp32", "torch"),
                 "medsight openvino fp32": "openvino fp32", "medsight openvino bf16": "openvino bf16",
                 "medsight int8 (compress, openvino)": "int8 (compressed, openvino)"}
    report(best_ref, medians[best_ref], recorder.seconds / recorded_seconds * medians[best_ref], per_scan,
           recorder.inputs, 1.5, per=" per scan",
           rows={name: (medians[name], engine) for name, engine in engine_of.items() if name in medians})


def main() -> int:
    args = parse_args()
    missing = [i for i in args.input if not Path(i).exists()]
    if missing:
        print(f"skipped: {', '.join(missing)} not found")
        return 0
    wall = time.perf_counter()
    print(f"CPU: {cpu_capability()}")
    work = Path(tempfile.mkdtemp(prefix="medsight-det-speed-"))
    # converted engines are cached (as predict does by default), in this run's folder: the warm-up fills it
    os.environ["MEDSIGHT_ENGINE_CACHE"] = str(work / "engine-cache")
    inputs = list(args.input)
    if not inputs:
        data = DATASETS.get("luna16")().synth(work / "data", cases=args.scans, seed=7, shape=args.shape)
        inputs = sorted(str(p) for p in data.glob("subset*/*.mhd"))
    overrides = ["infer.overlays_per_scan=0", *args.overrides]
    source = Path(args.checkpoint) if args.checkpoint else random_detector(work / "random.pt", overrides)
    model = medsight.load(source, device="cpu")
    cfg = model.configured(overrides=overrides).config  # what predict runs with, for the reference too
    rows = chosen_rows(args)
    int8 = None
    if "medsight int8 (compress, openvino)" in rows:
        int8 = Path(args.int8_checkpoint) if args.int8_checkpoint else int8_checkpoint(source, args, work)
    times, marks = measure(rows, source, int8, model, cfg, inputs, overrides, args.repeats, work)
    best_ref = print_table(rows, times, marks, cfg, inputs, args)
    network_section(rows, times, best_ref, model, cfg, int8, inputs, args.repeats, work)
    print(f"wall time {time.perf_counter() - wall:.0f} s; outputs in {work}")
    return 0


def compare_same(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray], tolerance: float) -> dict:
    """``compare`` between two rows of the reference pipeline (same world convention)."""
    return compare(ours, theirs, np.zeros(3), tolerance)


if __name__ == "__main__":
    sys.exit(main())
