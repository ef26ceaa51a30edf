"""Whole-scan inference speed on CPU: ``medsight predict`` against the same detector run the MONAI-tutorial
way (``generate_detection_inference_transform`` + ``detector(..., use_inferer=True)`` + the tutorial's
box post-processing), fp32, same weights, same scans, same sliding window and box selection.

Both read the scan, orient it RAS, resample it, window HU, detect and turn boxes into world mm; both
write a CSV. Prints seconds per scan for each, the ratio (MONAI-tutorial time / medsight time: above 1
means medsight is faster) and whether the marks agree: each mark's twin in the other pipeline (nearest
centre within 0.5 mm, probability within 1e-4); marks without a twin are listed. MONAI's ``AffineBoxToWorldCoordinated`` maps box corner coordinates
through the affine as if they were voxel centres, half a voxel off medsight's voxel-edge convention;
the comparison reports the distance before and after removing that known half-voxel offset.

    flock /tmp/medsight-heavy.lock python bench/detection_speed.py [--checkpoint CKPT] [--scans 3]
        [--repeats 3] [--shape 320,320,120] [--input FILE ...]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import medsight  # noqa: F401
from medsight.config import resolve
from medsight.inference import Loaded, load_for_inference, predict
from medsight.registry import DATASETS, TASKS


def loaded_detector(checkpoint: str | None, overrides: list[str]) -> Loaded:
    if checkpoint:
        return load_for_inference(checkpoint, overrides)
    task_class = TASKS.get("detection")
    config = resolve(task_class.config_class, profile=task_class.profiles["cpu-small"], overrides=overrides)
    task = task_class(config)
    task.learning = False
    torch.manual_seed(0)
    model = task.build_model().eval()
    return Loaded(task=task, model=model, state={}, path=Path("random-init"))


def monai_tutorial_way(loaded: Loaded, inputs: list[str], out_csv: Path) -> dict[str, np.ndarray]:
    """The tutorial's inference: its transforms and post-transforms, the detector's own sliding window."""
    from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
    from monai.apps.detection.transforms.dictionary import (
        AffineBoxToWorldCoordinated,
        ClipBoxToImaged,
        ConvertBoxModed,
    )
    from monai.data import DataLoader, Dataset
    from monai.data.utils import no_collation
    from medsight.datasets.ct_nodules import volume_stem
    from medsight.io.readers import SimpleITKReader
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

    cfg = loaded.task.config
    network = loaded.model.network  # same weights
    detector = RetinaNetDetector(network=network, anchor_generator=loaded.model.anchor_generator, debug=False)
    detector.set_target_keys(box_key="box", label_key="label")
    detector.set_box_selector_parameters(score_thresh=cfg.infer.score_threshold,
                                         topk_candidates_per_level=cfg.infer.topk_per_level,
                                         nms_thresh=cfg.infer.nms_iou,
                                         detections_per_img=cfg.infer.max_marks_per_scan)
    detector.set_sliding_window_inferer(roi_size=list(cfg.infer.roi_size), overlap=cfg.infer.overlap,
                                        sw_batch_size=1, mode="constant", device="cpu")
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
    with torch.no_grad():
        for batch in loader:
            images = [item["image"] for item in batch]
            roi = cfg.infer.roi_size
            use_inferer = not all(all(s <= r for s, r in zip(image.shape[1:], roi)) for image in images)
            detections = detector(images, use_inferer=use_inferer)
            for item, detection in zip(batch, detections):
                result = postprocessing({"box": detection["box"], "label": detection["label"],
                                         "label_scores": detection["label_scores"], "image": item["image"]})
                uid = volume_stem(Path(str(item["image"].meta["filename_or_obj"])))
                box = np.asarray(result["box"], dtype=np.float64).reshape(-1, 6)
                scores = np.asarray(result["label_scores"], dtype=np.float64).reshape(-1)
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


def compare(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray], half_voxel_mm: np.ndarray) -> dict:
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
                    if d[k] < 0.5 and abs(b[k, 3] - mark[3]) < 1e-4:
                        matched += who == "medsight"
                        dprob.append(abs(b[k, 3] - mark[3]))
                        continue
                lonely.append(f"{who} only: {uid[-8:]} p={mark[3]:.3f}")
    return {"counts_agree": all(len(ours.get(u, [])) == len(theirs.get(u, [])) for u in set(ours) | set(theirs)),
            "matched": matched, "total": total, "lonely": lonely, "max_probability_difference": max(dprob)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a detection checkpoint (default: a seeded cpu-small detector)")
    parser.add_argument("--input", nargs="*", default=[], help="scan files (default: synthetic LUNA16 scans)")
    parser.add_argument("--scans", type=int, default=3)
    parser.add_argument("--shape", default="320,320,120", help="synthetic scan size x,y,z (0.75x0.75x2.5 mm voxels)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    work = Path(tempfile.mkdtemp(prefix="medsight-det-speed-"))
    inputs = list(args.input)
    if not inputs:
        data = DATASETS.get("luna16")().synth(work / "data", cases=args.scans, seed=7, shape=args.shape)
        inputs = sorted(str(p) for p in data.glob("subset*/*.mhd"))
    loaded = loaded_detector(args.checkpoint, ["infer.overlays_per_scan=0", *args.overrides])
    ours_times, theirs_times = [], []
    for repeat in range(args.repeats):
        started = time.perf_counter()
        report = predict(loaded, inputs, work / f"medsight-{repeat}", device="cpu", precision="fp32")
        ours_times.append((time.perf_counter() - started) / len(inputs))
        if report.failures:
            print("\n".join(report.failures))
            return 1
        started = time.perf_counter()
        theirs = monai_tutorial_way(loaded, inputs, work / f"monai-{repeat}.csv")
        theirs_times.append((time.perf_counter() - started) / len(inputs))
    ours = read_marks(work / "medsight-0" / "submission.csv")
    spacing = np.asarray(loaded.task.config.data.spacing_mm)
    # MONAI's world point is medsight's plus half a voxel along each RAS array axis (axis-aligned scans);
    # in LPS, x and y change sign: medsight = MONAI + (sx, sy, -sz) / 2.
    agreement = compare(ours, theirs, half_voxel_mm=np.asarray([0.5, 0.5, -0.5]) * spacing)
    median_ours, median_theirs = statistics.median(ours_times), statistics.median(theirs_times)
    names = ", ".join(Path(i).name[-20:] for i in inputs)
    print(f"\n== detection inference on CPU, fp32, {len(inputs)} scan(s) ({names}), {args.repeats} repeats, "
          f"{torch.get_num_threads()} threads, weights: {loaded.path}")
    windows = f"sliding window {list(loaded.task.config.infer.roi_size)}, overlap {loaded.task.config.infer.overlap}"
    print(f"{windows}; windows per call: medsight {loaded.task.config.infer.sw_batch_size}, MONAI tutorial 1")
    print(f"medsight predict:        {median_ours:.2f} s/scan (runs: {', '.join(f'{t:.2f}' for t in ours_times)})")
    print(f"MONAI tutorial pipeline: {median_theirs:.2f} s/scan (runs: {', '.join(f'{t:.2f}' for t in theirs_times)})")
    print(f"speed ratio (MONAI time / medsight time): {median_theirs / median_ours:.2f}")
    print(f"marks: {agreement['matched']} of {agreement['total']} medsight marks have a MONAI twin (centre within "
          f"0.5 mm after MONAI's half-voxel offset, probability within 1e-4; max difference "
          f"{agreement['max_probability_difference']:.1e}); same count per scan: {agreement['counts_agree']}")
    for line in agreement["lonely"]:
        print(f"  {line}")
    if agreement["lonely"]:
        print("  (the network's output maps agree to 1e-5 whatever the windows per call, so such marks come from box\n"
              "   selection, where a 1e-6 difference can flip a top-k or NMS decision at its threshold)")
    agree = agreement["matched"] >= 0.95 * agreement["total"]
    print(f"marks agree (>= 95 % twins): {agree}")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
