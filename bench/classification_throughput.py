"""Predict throughput: ``medsight predict`` against the seed tutorials' loop (PIL open, torchvision
transform, model, one picture at a time) on the same DenseNet121 weights and the same pictures.
Target: medsight >= 3x the seeds' images/s.

    flock /tmp/medsight-heavy.lock python bench/classification_throughput.py [--images 96] [--size 1024]
        [--image-size 224] [--checkpoint CKPT] [--data FOLDER] [--repeats 3]
    # the real 64-px NIH pictures, a model at 64 px:
    ... classification_throughput.py --data ../shared/data/chestxray14/nih1000_64px/NIH1000/test --image-size 64

Without ``--data`` the pictures are synthetic chest radiographs at ``--size`` pixels (NIH's PNGs are
1024 x 1024); without ``--checkpoint`` a DenseNet121 with seeded random weights is saved as a
medsight checkpoint (throughput does not depend on what the weights learnt). Both pipelines run in
this process, interleaved, after one warm-up pass each; each time covers reading, preprocessing,
the model and turning logits into probabilities (medsight also writes predictions.csv). medsight
runs as ``medsight predict`` does by default (on a CPU a batch of about 8 x 224 x 224 model-input
pixels, ``infer.batch_size``; the checkpoint's loader workers: none, the fastest on a 2-core CPU),
and once more with one loader worker process.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import medsight  # noqa: F401
from medsight import checkpoint
from medsight.config import resolve, to_dict
from medsight.inference import load_for_inference, predict
from medsight.registry import DATASETS
from medsight.runtime import cpu_has_native_bf16
from medsight.tasks.classification import XrayClassification
from medsight.tasks.classification.config import ClassificationConfig
from medsight.tasks.classification.labels import LabelSet

TARGET_RATIO = 3.0


def random_weights_checkpoint(path: Path, image_size: int) -> Path:
    """A medsight checkpoint of the default model with seeded random weights and 14 findings."""
    from medsight.datasets.chestxray14 import FINDINGS

    config = resolve(ClassificationConfig, overrides=[f"data.image_size={image_size}"])
    config.task = "classification"
    task = XrayClassification(config)
    task.state.update(LabelSet(FINDINGS, multi_label=True).to_state())
    task.state["thresholds"] = [0.5] * len(FINDINGS)
    torch.manual_seed(0)
    model = task.build_model()
    return checkpoint.save({"task": "classification", "config": to_dict(config), "task_state": task.state,
                            "model": model.state_dict(), "epoch": 0}, path)


def seeds_loop(model: torch.nn.Module, paths: list[Path], image_size: int) -> np.ndarray:
    """The tutorials' predict: PIL open, torchvision transform, model on a batch of one."""
    from PIL import Image
    from torchvision import transforms

    transform = transforms.Compose([transforms.Resize((image_size, image_size)), transforms.ToTensor(),
                                    transforms.Normalize(mean=[0.5], std=[0.25])])
    probabilities = []
    with torch.no_grad():
        for path in paths:
            picture = Image.open(path).convert("L")
            logits = model(transform(picture).unsqueeze(0))
            probabilities.append(torch.sigmoid(logits)[0].numpy())
    return np.stack(probabilities)


def medsight_predict(checkpoint_path: Path, folder: Path, out: Path, batch_size: int, precision: str,
                     overrides: list[str]) -> tuple[float, np.ndarray]:
    """(images/s, probabilities (N, K) from predictions.csv) of one ``medsight predict`` run on ``folder``."""
    import csv

    loaded = load_for_inference(checkpoint_path, overrides)
    started = time.perf_counter()
    report = predict(loaded, [str(folder)], out, device="cpu", precision=precision, batch_size=batch_size)
    elapsed = time.perf_counter() - started
    assert not report.failures, report.failures
    names = loaded.task.labels.names
    with open(out / "predictions.csv", newline="") as handle:
        rows = sorted(csv.DictReader(handle), key=lambda r: r["image"])
    return report.cases / elapsed, np.asarray([[float(r[n]) for n in names] for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--size", type=int, default=1024, help="synthetic picture size, pixels")
    parser.add_argument("--image-size", type=int, default=224, help="model input size, pixels")
    parser.add_argument("--data", help="a folder of pictures (default: synthetic)")
    parser.add_argument("--checkpoint", help="a classification checkpoint (default: random DenseNet121 weights)")
    parser.add_argument("--batch-size", type=int, help="medsight's batch (default: the checkpoint's)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    bf16 = "bf16" if cpu_has_native_bf16() else "fp32"
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        if args.data:
            folder = Path(args.data)
        else:
            DATASETS.get("chestxray14")().synth(work / "cxr", cases=args.images, seed=0, size=args.size)
            folder = work / "pictures"
            folder.mkdir()
            for path in sorted((work / "cxr").glob("images_*/images/*.png"))[: args.images]:
                path.rename(folder / path.name)
        paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        ckpt = Path(args.checkpoint) if args.checkpoint else random_weights_checkpoint(work / "random.pt",
                                                                                       args.image_size)
        loaded = load_for_inference(ckpt)
        model, batch = loaded.model.eval(), args.batch_size or loaded.task.predict_batch_size(torch.device("cpu"))
        seeds_loop(model, paths[:2], args.image_size)  # warm-up: oneDNN builds its kernels on first use
        settings = {  # medsight predict's defaults are bf16 (where the CPU has it) and channels-last
            "medsight fp32 + ch.-last": ("fp32", []),  # what a CPU without native bf16 gets
            f"medsight default ({bf16} + ch.-last)": (bf16, []),
            "  same, 1 loader worker": (bf16, ["data.num_workers=1"]),
        }
        reference = None
        for name, (precision, overrides) in settings.items():  # warm-up, and the outputs to compare
            _, probabilities = medsight_predict(ckpt, folder, work / "warm", args.batch_size, precision, overrides)
            reference = probabilities if reference is None else reference
            settings[name] += (float(np.abs(probabilities - reference).max()),)
        seeds, ours = [], {name: [] for name in settings}
        for _ in range(args.repeats):  # interleaved, so drift in machine load hits every pipeline alike
            started = time.perf_counter()
            seeds_loop(model, paths, args.image_size)
            seeds.append(len(paths) / (time.perf_counter() - started))
            for name, (precision, overrides, _) in settings.items():
                speed, _ = medsight_predict(ckpt, folder, work / "out", args.batch_size, precision, overrides)
                ours[name].append(speed)
    base = statistics.median(seeds)
    print(f"predict throughput: {len(paths)} pictures ({'given' if args.data else f'synthetic {args.size} px PNG'}), "
          f"DenseNet121 at {args.image_size} px, same weights, {torch.get_num_threads()} CPU threads, "
          f"median of {args.repeats}; medsight batch {batch}")
    print(f"{'pipeline':34s} {'images/s':>9s} {'ratio':>7s} {'max |dp| vs fp32':>17s}   runs")
    print(f"{'seeds loop (PIL, batch of 1, fp32)':34s} {base:9.2f} {1.0:7.2f} {'':17s}   "
          f"{', '.join(f'{v:.2f}' for v in seeds)}")
    best = 0.0
    for name, values in ours.items():
        speed = statistics.median(values)
        best = max(best, speed / base)
        print(f"{name:34s} {speed:9.2f} {speed / base:7.2f} {settings[name][2]:17.4f}   "
              f"{', '.join(f'{v:.2f}' for v in values)}")
    print(f"best ratio {best:.2f} (target >= {TARGET_RATIO}: "
          f"{'met' if best >= TARGET_RATIO else 'NOT met'})")
    with torch.inference_mode():  # where the time goes: the model alone, on random pictures
        model_alone = {}
        for label, size, dtype in (("batch 1, fp32", 1, None), (f"batch {batch}, {bf16} + channels-last",
                                                                  batch, torch.bfloat16)):
            x = torch.randn(size, 1, args.image_size, args.image_size)
            net = model
            if dtype is not None:
                net = model.to(memory_format=torch.channels_last)
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                net(x)
                started = time.perf_counter()
                for _ in range(max(1, 32 // size)):
                    net(x)
                model_alone[label] = 1000 * (time.perf_counter() - started) / (max(1, 32 // size) * size)
    print("model alone: " + "; ".join(f"{k} {v:.1f} ms/image" for k, v in model_alone.items())
          + f" (ratio {list(model_alone.values())[0] / list(model_alone.values())[1]:.2f})")


if __name__ == "__main__":
    main()
