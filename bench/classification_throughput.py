"""Predict throughput: ``medsight predict`` (every engine and precision) against what a competent PyTorch
user writes: a torch ``Dataset`` reading the PNGs with PIL and the same preprocessing as medsight, a
``DataLoader`` with batching (and worker processes where they help), the same DenseNet121 weights, fp32
or ``torch.autocast("cpu", dtype=torch.bfloat16)``, with and without channels-last.
Target: medsight's default (``medsight predict`` as shipped) >= 1.5x the best reference row.

    flock /tmp/medsight-heavy.lock .venv/bin/python bench/classification_throughput.py [--images 96]
        [--size 1024] [--image-size 224] [--checkpoint CKPT] [--int8-checkpoint CKPT] [--data FOLDER]
        [--calibration DATASET] [--repeats 3] [--workers 0,1,2] [--no-int8]
    # the two real 1024-px NIH PNGs (shared data, not in the repo), repeated to --images pictures:
    ... classification_throughput.py --data ../shared/data/chestxray14/samples

Pictures: without ``--data`` synthetic chest radiographs at ``--size`` pixels (NIH's PNGs are 1024 x 1024,
8-bit gray); with ``--data`` the pictures of that folder (copied, repeated if fewer than ``--images``).
Weights: without ``--checkpoint`` a DenseNet121 with seeded random weights and 14 outputs at
``--image-size`` (throughput does not depend on what the weights learnt). int8: ``medsight compress
--method int8`` of that checkpoint, calibrated on ``--calibration`` (a ChestX-ray14-layout dataset;
default: a small synthetic one at ``--size`` px), unless ``--int8-checkpoint`` is given.

Every row is timed end to end in this process: reading, preprocessing, the model, probabilities; medsight
also reads its engine from the engine cache that the warm-up filled, as any predict after a model's first
does (inside ``predict``, counted; the row "engine converted in the run" empties the cache, so the ONNX
export / OpenVINO conversion is counted too) and writes predictions.csv. Rows are interleaved over ``--repeats`` rounds after one warm-up pass each; images/s is the
median. Reference rows: each precision/layout with the best of ``--workers`` loader worker counts (the
median of the best count). ratio: images/s over the best reference row's. max |dp|: the largest
difference of any probability from the reference fp32 row's, same picture, same label.

After the table: the network alone (``_network_alone.py``), each engine on the inputs the best reference
row fed its network, and the ceiling any pipeline running this network could reach against that row.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import medsight
import numpy as np
import torch
import torch.nn.functional as F
from _network_alone import (  # bench/, beside this script
    NetworkTimer,
    default_engine,
    engine_calls,
    network_alone,
    report,
    timed_predict,
)
from medsight.core.config import resolve, to_dict
from medsight.core.registry import DATASETS
from medsight.core.runtime import cpu_capability, cpu_has_native_bf16
from medsight.io import checkpoint
from medsight.tasks.classification import XrayClassification
from medsight.tasks.classification.config import ClassificationConfig
from medsight.tasks.classification.labels import LabelSet

TARGET_RATIO = 1.5
SUFFIXES = (".png", ".jpg", ".jpeg")


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


# -- the reference: plain PyTorch ------------------------------------------------------------------
class XrayPNGs(torch.utils.data.Dataset):
    """PNG -> (C, S, S) float32: PIL to gray (alpha composited on black), area resize to S, then as the
    checkpoint's config says: clip to the [0.5, 99.5] percentiles -> 0..1 and z-score per picture (medsight's
    default), or ImageNet / torchxrayvision scaling; gray copied into C channels."""

    def __init__(self, paths: list[Path], size: int, channels: int, normalize: str, percentiles):
        self.paths, self.size, self.channels = paths, size, channels
        self.normalize, self.percentiles = normalize, percentiles

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        from PIL import Image

        with Image.open(self.paths[index]) as picture:
            if picture.mode in ("RGBA", "LA", "PA"):
                black = Image.new("RGBA", picture.size, (0, 0, 0, 255))
                picture = Image.alpha_composite(black, picture.convert("RGBA"))
            if picture.mode not in ("L", "I", "I;16", "I;16B", "I;16L", "F"):
                picture = picture.convert("L")
            array = np.asarray(picture, dtype=np.float32)
        x = F.interpolate(torch.from_numpy(array)[None, None], size=(self.size, self.size), mode="area")[0]
        if self.normalize == "imagenet":
            mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
            if self.channels == 1:
                mean, std = (sum(mean) / 3,), (sum(std) / 3,)
            x = x.div(255).expand(self.channels, -1, -1)
            x = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
            return x.contiguous()
        if self.normalize == "xrv":
            x = x / 255 * 2048 - 1024
        else:
            if self.percentiles:
                low, high = np.percentile(x.numpy(), list(self.percentiles))
                x = ((x - float(low)) / (float(high - low) if high > low else 1.0)).clamp_(0, 1)
            std = float(x.std(unbiased=False))
            x = (x - x.mean()) / (std if std else 1.0)
        return x.expand(self.channels, -1, -1).contiguous()


def reference_model(loaded: medsight.Model) -> torch.nn.Module:
    """The checkpoint's weights in a freshly built MONAI DenseNet121 (what the user's script holds)."""
    from monai.networks.nets import DenseNet121

    cfg = loaded.task.config
    if cfg.model.name != "densenet121":
        return loaded.torch_model.eval()  # another architecture: the checkpoint's module itself
    model = DenseNet121(spatial_dims=2, in_channels=cfg.data.channels, out_channels=len(loaded.task.labels.names))
    model.load_state_dict(loaded.torch_model.state_dict())
    return model.eval()


def reference_pass(model: torch.nn.Module, dataset: XrayPNGs, batch: int, workers: int, bf16: bool,
                   channels_last: bool, multi_label: bool) -> tuple[float, np.ndarray]:
    """(images/s, probabilities (N, K)) of one pass: DataLoader, model, sigmoid (softmax if single-label)."""
    started = time.perf_counter()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=False, num_workers=workers)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    out = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for images in loader:
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            logits = model(images).float()
            out.append(torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=1))
    probabilities = torch.cat(out).numpy()
    elapsed = time.perf_counter() - started
    if channels_last:
        model.to(memory_format=torch.contiguous_format)
    return len(dataset) / elapsed, probabilities


# -- medsight --------------------------------------------------------------------------------------
def medsight_pass(checkpoint_path: Path, folder: Path, out: Path, engine: str, precision: str | None,
                  overrides: list[str], names: list[str], labels: list[str],
                  cold: bool = False) -> tuple[float, float, np.ndarray]:
    """(images/s, seconds before the first picture (engine build), probabilities (N, K) in ``names`` order)."""
    report, elapsed = timed_predict(checkpoint_path, [folder], out, engine, precision, overrides, cold)
    with open(out / "predictions.csv", newline="") as handle:
        rows = {Path(r["image"]).name: r for r in csv.DictReader(handle)}
    return (report.cases / elapsed, elapsed - report.seconds,
            np.asarray([[float(rows[name][label]) for label in labels] for name in names]))


def int8_checkpoint(source: Path, calibration: Path, out: Path, samples: int) -> tuple[Path, dict]:
    from medsight.compression.compress import compress

    started = time.perf_counter()
    # measured before/after on the test split: a small dataset's validation split may be empty
    label = compress(source, "int8", out, data=calibration, samples=samples, split="test")
    label["build_seconds"] = time.perf_counter() - started
    return out, label


def pictures(args, work: Path) -> Path:
    """A folder of ``--images`` pictures: synthetic, or ``--data``'s (copied; repeated if too few)."""
    folder = work / "pictures"
    folder.mkdir()
    if args.data:
        found = sorted(p for p in Path(args.data).rglob("*") if p.suffix.lower() in SUFFIXES)
        if not found:
            return folder
        count = max(args.images, len(found)) if args.images else len(found)
        for index in range(count):
            source = found[index % len(found)]
            shutil.copyfile(source, folder / f"{index:05d}_{source.name}")  # a copy: a link would resolve to its name
        return folder
    DATASETS.get("chestxray14")().synth(work / "cxr", cases=args.images, seed=0, size=args.size)
    for path in sorted((work / "cxr").glob("images_*/images/*.png"))[: args.images]:
        os.link(path, folder / path.name)
    return folder


REFERENCE_ROWS = {  # name: (bf16 autocast, channels-last)
    "reference fp32": (False, False),
    "reference fp32 + ch.-last": (False, True),
    "reference bf16 autocast": (True, False),
    "reference bf16 autocast + ch.-last": (True, True),
}
if not cpu_has_native_bf16():  # a careful user does not autocast to bf16 where it is emulated (~100x slower)
    REFERENCE_ROWS = {name: setting for name, setting in REFERENCE_ROWS.items() if not setting[0]}


def medsight_rows(bf16: str, int8: Path | None) -> dict[str, tuple]:
    """name: (engine, precision, overrides); ``bf16``: bf16 where the CPU has it natively, else fp32."""
    rows = {
        "medsight default (engine auto)": ("auto", None, []),
        "  same, 1 loader worker": ("auto", None, ["data.num_workers=1"]),
        "  same, nothing overlapped (in_flight=0)": ("auto", None, ["data.in_flight=0"]),
        "  same, engine converted in the run": ("auto", None, []),
        "medsight torch fp32": ("torch", "fp32", []),
        f"medsight torch {bf16}": ("torch", bf16, []),
        "medsight onnxruntime fp32": ("onnxruntime", "fp32", []),
        "medsight openvino fp32": ("openvino", "fp32", []),
        "medsight openvino bf16": ("openvino", "bf16", []),
    }
    if bf16 != "bf16":  # emulated here: no careful user runs it
        rows.pop("medsight openvino bf16")
    if int8 is not None:
        rows["medsight int8 (compressed, openvino)"] = ("auto", None, [])  # its own engine
    return rows


@dataclass
class Bench:
    """What every row runs on: the pictures, the checkpoint (and its int8), the reference's model and loader."""

    folder: Path
    names: list[str]
    checkpoint: Path
    int8: Path | None
    loaded: medsight.Model
    model: torch.nn.Module
    dataset: XrayPNGs
    batch: int
    ref_batch: int
    multi_label: bool
    work: Path


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--size", type=int, default=1024, help="synthetic picture size, pixels")
    parser.add_argument("--image-size", type=int, default=224, help="model input size (random weights), pixels")
    parser.add_argument("--data", help="a folder of pictures (default: synthetic)")
    parser.add_argument("--checkpoint", help="a classification checkpoint (default: random DenseNet121 weights)")
    parser.add_argument("--int8-checkpoint", help="an int8 checkpoint of --checkpoint (default: made here)")
    parser.add_argument("--calibration", help="ChestX-ray14-layout dataset for the int8 calibration "
                                              "(default: synthetic)")
    parser.add_argument("--calibration-samples", type=int, default=32)
    parser.add_argument("--no-int8", action="store_true")
    parser.add_argument("--workers", default="0,1,2", help="reference loader worker counts to try")
    parser.add_argument("--ref-batch", type=int, help="reference batch (default: medsight's predict batch)")
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args()


def int8_row(args, source: Path, work: Path) -> Path | None:
    if args.no_int8:
        return None
    if args.int8_checkpoint:
        return Path(args.int8_checkpoint)
    calibration = Path(args.calibration) if args.calibration else \
        DATASETS.get("chestxray14")().synth(work / "calibration", cases=64, seed=1, size=args.size)
    int8, label = int8_checkpoint(source, calibration, work / "int8.pt", args.calibration_samples)
    print(f"int8 checkpoint: built in {label['build_seconds']:.0f} s from {args.calibration_samples} "
          f"calibration pictures ({'given' if args.calibration else 'synthetic'}); size ratio "
          f"{label['size_ratio']}", flush=True)
    return int8


def bench_setting(args, folder: Path, paths: list[Path], work: Path) -> Bench:
    ckpt = Path(args.checkpoint) if args.checkpoint else random_weights_checkpoint(work / "random.pt",
                                                                                   args.image_size)
    loaded = medsight.load(ckpt, device="cpu")
    cfg, task = loaded.task.config, loaded.task
    batch = task.predict_batch_size(torch.device("cpu"))
    if task.state.get("operating_points"):
        print("note: this checkpoint rescales probabilities by operating points; the reference does not")
    dataset = XrayPNGs(paths, cfg.data.image_size, cfg.data.channels, cfg.data.normalize,
                       cfg.data.intensity_percentiles)
    return Bench(folder, [p.name for p in paths], ckpt, int8_row(args, ckpt, work), loaded, reference_model(loaded),
                 dataset, batch, args.ref_batch or batch, task.labels.multi_label, work)


def measure(bench: Bench, rows: dict, workers: list[int], repeats: int, wall: float):
    """(outputs by row from the warm-up pass, images/s by (row, workers), medsight's setup seconds by row)."""
    labels = bench.loaded.task.labels.names

    def medsight_row(name: str, out: Path):
        engine, precision, overrides = rows[name]
        source = bench.int8 if "int8" in name else bench.checkpoint
        return medsight_pass(source, bench.folder, out, engine, precision, overrides, bench.names, labels,
                             cold="converted" in name)

    def reference_row(name: str, w: int):
        use_bf16, cl = REFERENCE_ROWS[name]
        return reference_pass(bench.model, bench.dataset, bench.ref_batch, w, use_bf16, cl, bench.multi_label)

    # warm-up pass of every row (oneDNN builds kernels on first use), keeping the outputs
    outputs: dict[str, np.ndarray] = {name: reference_row(name, 0)[1] for name in REFERENCE_ROWS}
    outputs.update({name: medsight_row(name, bench.work / "warm")[2] for name in rows})
    print(f"warm-up done at {time.perf_counter() - wall:.0f} s", flush=True)
    speeds = {(name, w): [] for name in REFERENCE_ROWS for w in workers}
    speeds.update({(name, None): [] for name in rows})
    setup = {name: [] for name in rows}
    for _ in range(repeats):  # interleaved: drift in machine load hits every row alike
        for name in REFERENCE_ROWS:
            for w in workers:
                speeds[name, w].append(reference_row(name, w)[0])
        for name in rows:
            speed, seconds, _ = medsight_row(name, bench.work / "out")
            speeds[name, None].append(speed)
            setup[name].append(seconds)
    return outputs, speeds, setup


def print_table(args, bench: Bench, rows: dict, workers: list[int], outputs, speeds, setup) -> tuple[str, dict]:
    """The table and the target; returns (the best reference row, (workers, images/s, ...) of each)."""
    try:  # the OpenVINO precision medsight's default gets on this CPU
        import openvino as ov

        ov_default = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")
    except Exception as exc:  # noqa: BLE001
        ov_default = f"? ({exc})"
    reference_best = {}
    for name in REFERENCE_ROWS:
        medians = {w: statistics.median(speeds[name, w]) for w in workers}
        w = max(medians, key=medians.get)
        reference_best[name] = (w, medians[w], speeds[name, w], medians)
    best_name = max(reference_best, key=lambda n: reference_best[n][1])
    base = reference_best[best_name][1]
    truth = outputs["reference fp32"]
    source = "given: " + str(args.data) if args.data else f"synthetic {args.size} px PNG"
    print(f"\n== predict throughput: {len(bench.names)} pictures ({source}), DenseNet121 at "
          f"{bench.loaded.task.config.data.image_size} px, "
          f"{'checkpoint ' + str(args.checkpoint) if args.checkpoint else 'seeded random weights'}, "
          f"{torch.get_num_threads()} CPU threads, median of {args.repeats}")
    print(f"CPU: {cpu_capability()}")
    print(f"batch: medsight {bench.batch}, reference {bench.ref_batch}; reference worker counts tried: {workers}; "
          f"OpenVINO CPU default precision here: {ov_default}; native bf16: {cpu_has_native_bf16()}")
    print(f"{'pipeline':40s} {'images/s':>9s} {'ratio':>6s} {'max|dp|':>8s} {'setup s':>8s}   runs (images/s)")
    for name, (w, speed, runs, medians) in reference_best.items():
        others = ", ".join(f"{k}w {v:.1f}" for k, v in medians.items())
        print(f"{name + f' ({w}w)':40s} {speed:9.2f} {speed / base:6.2f} "
              f"{float(np.abs(outputs[name] - truth).max()):8.4f} {'':>8s}   "
              f"{', '.join(f'{v:.2f}' for v in runs)}  [medians {others}]")
    for name in rows:
        runs = speeds[name, None]
        speed = statistics.median(runs)
        print(f"{name:40s} {speed:9.2f} {speed / base:6.2f} {float(np.abs(outputs[name] - truth).max()):8.4f} "
              f"{statistics.median(setup[name]):8.2f}   {', '.join(f'{v:.2f}' for v in runs)}")
    default = statistics.median(speeds["medsight default (engine auto)", None])
    print(f"best reference: {best_name} ({reference_best[best_name][0]} workers), {base:.2f} images/s; "
          f"medsight default / best reference = {default / base:.2f} (target >= {TARGET_RATIO}: "
          f"{'met' if default / base >= TARGET_RATIO else 'NOT met'})")
    print("setup s: seconds inside predict before the first picture (engine export/conversion/compilation), "
          "counted in images/s")
    return best_name, reference_best


def network_section(bench: Bench, best_name: str, reference_best: dict, speeds: dict, bf16: str,
                    repeats: int) -> None:
    """The network alone, on the batches the best reference row fed its network: how far any pipeline could go."""
    base = reference_best[best_name][1]
    use_bf16, cl = REFERENCE_ROWS[best_name]
    with NetworkTimer(bench.model, keep=True) as recorder:
        speed = reference_pass(bench.model, bench.dataset, bench.ref_batch, reference_best[best_name][0], use_bf16,
                               cl, bench.multi_label)[0]
    compressed = medsight.load(bench.int8, device="cpu") if bench.int8 is not None else None
    alone = network_alone(engine_calls(bench.loaded.task, bench.model, compressed, cpu_has_native_bf16()),
                          recorder.inputs, repeats)
    count = len(bench.names)
    per_picture = {name: seconds / count for name, seconds in alone.items()}
    engine_of = {"medsight default (engine auto)": default_engine(bench.loaded),
                 f"medsight torch {bf16}": default_engine(bench.loaded, bf16, "torch"),
                 "medsight torch fp32": "torch fp32", "medsight openvino fp32": "openvino fp32",
                 "medsight openvino bf16": "openvino bf16",
                 "medsight int8 (compressed, openvino)": "int8 (compressed, openvino)"}
    report(f"{best_name} (this pass: {speed:.1f} images/s)", 1 / base, recorder.seconds / count * (speed * (1 / base)),
           per_picture, recorder.inputs, TARGET_RATIO, per=" per picture",
           rows={name: (1 / statistics.median(speeds[name, None]), engine) for name, engine in engine_of.items()
                 if (name, None) in speeds})


def main() -> int:
    args = parse_args()
    if args.data and not Path(args.data).is_dir():
        print(f"skipped: {args.data} not found")
        return 0
    wall = time.perf_counter()
    scratch = tempfile.TemporaryDirectory(prefix="medsight-cls-speed-")  # removed at the end
    work = Path(scratch.name)
    # converted engines are cached (as predict does by default), in this run's folder: the warm-up fills it
    os.environ["MEDSIGHT_ENGINE_CACHE"] = str(work / "engine-cache")
    folder = pictures(args, work)
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES)
    if not paths:
        print(f"skipped: no pictures in {args.data}")
        return 0
    bench = bench_setting(args, folder, paths, work)
    bf16 = "bf16" if cpu_has_native_bf16() else "fp32"
    rows = medsight_rows(bf16, bench.int8)
    workers = [int(w) for w in args.workers.split(",")]
    outputs, speeds, setup = measure(bench, rows, workers, args.repeats, wall)
    best_name, reference_best = print_table(args, bench, rows, workers, outputs, speeds, setup)
    network_section(bench, best_name, reference_best, speeds, bf16, args.repeats)
    scratch.cleanup()
    print(f"wall time {time.perf_counter() - wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
