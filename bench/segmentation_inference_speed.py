"""CPU inference speed of segmentation: medsight's predict path (bf16 autocast and/or channels-last 3D)
against plain fp32 MONAI ``SlidingWindowInferer`` on the same weights and the same preprocessed volume.
Prints the speed ratio and the Dice agreement between the two thresholded outputs per region.

    python bench/segmentation_inference_speed.py --checkpoint RUN/checkpoints/best.pt [--case CASE_DIR]

Without ``--case`` it uses the real BraTS 2023 case in ../shared/data (240 x 240 x 155, four
modalities) when present, else a full-size synthetic case.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import torch
from monai.inferers import SlidingWindowInferer

import medsight  # noqa: F401
from medsight.inference import load_for_inference
from medsight.runtime import Runtime

HERE = Path(__file__).resolve().parents[1]
REAL_CASE = HERE.parent / "shared" / "data" / "brats" / "brats2023_gli_00001_unlabelled" / "BraTS-GLI-00001-000"


def dice(a: torch.Tensor, b: torch.Tensor) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def timed(fn, repeats: int):
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="/tmp/medsight-bench/segmentation/run/checkpoints/best.pt")
    parser.add_argument("--case", help="a case folder (default: the real BraTS 2023 case, else synthetic)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    loaded = load_for_inference(args.checkpoint)
    task = loaded.task
    case = Path(args.case) if args.case else REAL_CASE
    scratch = contextlib.nullcontext()
    if not case.is_dir():
        from medsight.registry import DATASETS

        scratch = tempfile.TemporaryDirectory()
        case = DATASETS.get("brats")().synth(Path(scratch.name) / "b", cases=1, shape=(240, 240, 155)) / "BraTS2021_00001"
    with scratch:
        record = task.input_records(str(case))[0]
        image = task.transforms("infer")(record)["image"].as_tensor()[None]
    cfg = task.config.infer
    print(f"model {task.config.model.name} ({sum(p.numel() for p in loaded.model.parameters()) / 1e6:.2f} M params), "
          f"case {case.name}, preprocessed volume {tuple(image.shape[2:])}, roi {tuple(cfg.roi_size)}, "
          f"overlap {cfg.overlap}, {torch.get_num_threads()} threads")

    reference_model = loaded.model.float().eval()
    inferer = SlidingWindowInferer(roi_size=tuple(cfg.roi_size), sw_batch_size=cfg.sw_batch_size,
                                   overlap=cfg.overlap, mode=cfg.blend)
    with torch.inference_mode():
        base_seconds, base = timed(lambda: torch.sigmoid(inferer(image, reference_model)), args.repeats)
    base_mask = base > 0.5
    print(f"{'plain MONAI SlidingWindowInferer fp32':42s} {base_seconds:7.2f} s   1.00x")
    for precision, channels_last in (("fp32", True), ("bf16", False), ("bf16", True)):
        runtime = Runtime("cpu", precision, channels_last=channels_last, distributed=False)
        model = runtime.setup_model(load_for_inference(args.checkpoint).model, train=False)
        batch = runtime.to_device(image)

        def ours():
            with torch.inference_mode(), runtime.autocast():
                return task.probabilities(model, batch)

        seconds, probs = timed(ours, args.repeats)
        mask = probs > 0.5
        agreement = ", ".join(f"{r} {dice(mask[0, i], base_mask[0, i]):.4f}" for i, r in enumerate(("ET", "TC", "WT")))
        label = f"medsight {precision}{' + channels-last' if channels_last else ''}"
        print(f"{label:42s} {seconds:7.2f} s   {base_seconds / seconds:.2f}x   Dice agreement {agreement}   "
              f"max |dp| {float((probs - base).abs().max()):.4f}")


if __name__ == "__main__":
    main()
