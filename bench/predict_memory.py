"""Peak memory of one predict, medsight against the MONAI reference, on a BraTS-size MRI and a 512 x 512 x 600 CT.

    flock /tmp/medsight-heavy.lock .venv/bin/python bench/predict_memory.py [--part seg|det|both]
        [--seg-checkpoint CKPT] [--case CASE_DIR] [--det-checkpoint CKPT] [--slices 600] [--repeats 3]

Each row runs in a fresh process: the checkpoint is loaded, the process's resident memory (RSS) read, then one
whole predict runs (read, preprocess, sliding window, invert onto the input grid, write) and the peak RSS of
the process is read back (``ru_maxrss``). medsight's default engine (auto) is timed and cached by a first,
unmeasured predict, as on any machine after a model's first predict. The row reports the peak, and the increment over the loaded process,
against what is needed to hold the input and its output in float32 (issue 23's measure: the increment should be
at most 2x that).

- Segmentation: the real BraTS 2023 case in ../shared/data (4 x 240 x 240 x 155) or ``--case``, else a synthetic
  one of that size; the seeded random-init SegResNet of ``segmentation_inference_speed.py`` (the MONAI bundle's
  architecture, roi 96^3) or ``--seg-checkpoint``. The reference is that bench's MONAI script (``Reference``):
  bf16 autocast with channels-last where the CPU has native bf16, else fp32 with channels-last. Outputs compared:
  Dice of the written label maps (WT, TC, ET).
- Detection: a synthetic LUNA16-style CT of 512 x 512 x ``--slices`` (MetaImage, int16, 0.7 x 0.7 x 0.625 mm);
  the checkpoint: ``--det-checkpoint`` or a detector trained for one epoch on small synthetic scans (memory does
  not depend on what it learnt). Only medsight is run (no reference detection script exists in bench/ yet); the
  marks of two runs are compared (the same marks).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
MB = 2 ** 20


def _peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes


def _rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


# -- the rows, each in its own process ------------------------------------------------------------------------
def child(args) -> dict:
    import torch

    import medsight
    from medsight.core.runtime import cpu_has_native_bf16

    out = Path(args.out)
    if args.child == "seg-medsight":
        model = medsight.load(args.checkpoint, device="cpu")
        base = _rss_bytes()
        started = time.perf_counter()
        report = model.predict_files([Path(args.case)], out, overrides=["infer.overlay=false"])
        seconds = time.perf_counter() - started
        written = next(str(p) for p in report.written if str(p).endswith("_seg.nii.gz"))
        return {"base": base, "peak": _peak_bytes(), "seconds": seconds, "written": written,
                "engine": getattr(model, "engine", "auto")}
    if args.child == "seg-reference":
        sys.path.insert(0, str(HERE))
        from _segmentation_reference import Reference
        from segmentation_inference_speed import case_files

        model = medsight.load(args.checkpoint, device="cpu", engine="torch")
        task = model.task
        files, convention = case_files(task, Path(args.case))
        native = cpu_has_native_bf16()
        reference = Reference(model.torch_model, task.config, convention, bf16=native, channels_last=True)
        del model
        base = _rss_bytes()
        started = time.perf_counter()
        with torch.no_grad():
            written, _ = reference(files, out)
        seconds = time.perf_counter() - started
        return {"base": base, "peak": _peak_bytes(), "seconds": seconds, "written": str(written),
                "engine": f"torch {'bf16' if native else 'fp32'} + channels-last"}
    if args.child == "det-medsight":
        model = medsight.load(args.checkpoint, device="cpu")
        base = _rss_bytes()
        started = time.perf_counter()
        report = model.predict_files([Path(args.case)], out, overrides=["infer.overlays_per_scan=0"])
        seconds = time.perf_counter() - started
        return {"base": base, "peak": _peak_bytes(), "seconds": seconds,
                "written": str(out / "submission.csv"), "failures": list(report.failures)}
    raise SystemExit(f"unknown row {args.child}")


def run_row(row: str, checkpoint: Path, case: Path, out: Path, repeats: int = 1) -> dict:
    """The row's figures, each its median over ``repeats`` fresh processes (peak memory varies by tens of MB
    from run to run: which thread's heap a buffer lands in), with the increments of every run."""
    import statistics

    runs = []
    for k in range(repeats):
        command = [sys.executable, __file__, "--child", row, "--checkpoint", str(checkpoint), "--case", str(case),
                   "--out", str(out / str(k))]
        done = subprocess.run(command, capture_output=True, text=True,
                              env=dict(os.environ, PYTHONWARNINGS="ignore"))
        line = next((l for l in reversed(done.stdout.splitlines()) if l.startswith("{")), None)
        if done.returncode != 0 or line is None:
            raise RuntimeError(f"{row} failed:\n{done.stderr[-3000:]}")
        runs.append(json.loads(line))
    found = dict(runs[0])
    for key in ("base", "peak", "seconds"):
        found[key] = statistics.median(r[key] for r in runs)
    increments = sorted(r["peak"] - r["base"] for r in runs)
    found["increment"] = statistics.median(increments)
    found["increments"] = [round(i / MB) for i in increments]
    return found


def show(row: str, found: dict, needed: int) -> None:
    increment = found["increment"]
    print(f"| {row} | {found['seconds']:.2f} | {found['base'] / MB:.0f} | {found['peak'] / MB:.0f} | "
          f"{increment / MB:.0f} ({', '.join(map(str, found['increments']))}) | {needed / MB:.0f} | "
          f"{increment / needed:.2f}x |")


HEADER = ("| row | predict s | loaded RSS MB | peak RSS MB | increment MB, median (every run) | input + output in "
          "float32 MB | increment / that |\n|---|---|---|---|---|---|---|")


# -- segmentation -----------------------------------------------------------------------------------------------
def segmentation(args, work: Path) -> None:
    import nibabel as nib
    import numpy as np

    sys.path.insert(0, str(HERE))
    from _segmentation_reference import dice, regions
    from segmentation_inference_speed import random_checkpoint

    import medsight

    case = Path(args.case) if args.case else DATA / "brats" / "brats2023_gli_00001_unlabelled"
    if not case.is_dir():
        case = medsight.synthesize("brats", work / "synthetic", cases=1, seed=0, shape="240,240,155")
        case = next(p for p in Path(case).rglob("*") if p.is_dir() and any(p.glob("*.nii.gz")))
    checkpoint = Path(args.seg_checkpoint) if args.seg_checkpoint else random_checkpoint(work / "seg.pt", [])
    files = sorted(case.rglob("*.nii*"))
    shapes = [nib.load(str(f)).shape for f in files if "seg" not in f.name]
    model_modalities = len(medsight.load(checkpoint, engine="torch").task.modalities)
    voxels = int(np.prod(shapes[0][:3]))
    needed = voxels * model_modalities * 4 + voxels * 4  # the modalities and a label map, float32
    print(f"\n== segmentation: {case.name}, {model_modalities} x {' x '.join(map(str, shapes[0][:3]))}; "
          f"checkpoint {checkpoint.name}")
    run_row("seg-medsight", checkpoint, case, work / "warm-up")  # engine auto: timed and cached once, as any first predict
    rows = {}
    for row in ("seg-reference", "seg-medsight"):
        rows[row] = run_row(row, checkpoint, case, work / row, args.repeats)
    print(HEADER)
    for row, found in rows.items():
        show(f"{row} ({found['engine']})", found, needed)
    ours, theirs = (regions(Path(rows[r]["written"]), "brats2021")[0] for r in ("seg-medsight", "seg-reference"))
    print("label maps, medsight vs reference: Dice " + ", ".join(
        f"{name} {dice(ours[k], theirs[k]):.4f}" for k, name in enumerate(("ET", "TC", "WT"))))
    ratio = rows["seg-medsight"]["increment"] / needed
    print(f"target: increment <= 2x the input and output in float32: {ratio:.2f}x "
          f"({'met' if ratio <= 2 else 'NOT met'}); the reference: {rows['seg-reference']['increment'] / needed:.2f}x")


# -- detection --------------------------------------------------------------------------------------------------
def detection(args, work: Path) -> None:
    import numpy as np
    import SimpleITK as sitk

    import medsight

    scan = work / "ct" / "1.3.6.1.4.1.14519.5.2.1.6279.6001.999999999999999999999999999999.mhd"
    scan.parent.mkdir(parents=True, exist_ok=True)
    shape = (args.slices, 512, 512)
    rng = np.random.default_rng(0)
    volume = np.full(shape, -1000, dtype=np.int16)  # air, a body, lungs, a few nodules
    yy, xx = np.ogrid[:shape[1], :shape[2]]
    volume[:, ((yy - 256) / 220) ** 2 + ((xx - 256) / 180) ** 2 <= 1] = 40
    for cx in (180, 332):
        volume[:, ((yy - 256) / 150) ** 2 + ((xx - cx) / 70) ** 2 <= 1] = -850
    bz, by, bx = np.ogrid[-6:7, -6:7, -6:7]
    ball = bz ** 2 + by ** 2 + bx ** 2 <= 36
    for _ in range(5):
        z, y, x = int(rng.integers(40, shape[0] - 40)), int(rng.integers(180, 330)), int(rng.choice((180, 332)))
        volume[z - 6:z + 7, y - 6:y + 7, x - 6:x + 7][ball] = 30
    volume += rng.normal(0, 15, shape).astype(np.int16)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((0.7, 0.7, 0.625))
    sitk.WriteImage(image, str(scan), useCompression=False)
    del volume
    if args.det_checkpoint:
        checkpoint = Path(args.det_checkpoint)
    else:
        data = medsight.synthesize("luna16", work / "det-train", cases=3, seed=5, shape="64,64,24",
                                   spacing="1.4,1.4,2.5")
        run = medsight.train("detection", data, out=work / "det-run", profile="cpu-small", overrides={
            "trainer.progress": "never", "trainer.tensorboard": False, "trainer.max_epochs": 1,
            "data.patch_size": [32, 32, 16], "data.patches_per_scan": 1})
        checkpoint = run.last
    voxels = int(np.prod(shape))
    needed = voxels * 4 * 2  # the scan and a same-size output in float32 (the marks themselves are a few rows)
    print(f"\n== detection: synthetic CT 512 x 512 x {args.slices} (int16 MetaImage, "
          f"{sum(p.stat().st_size for p in scan.parent.iterdir()) / MB:.0f} MB on disk); checkpoint {checkpoint}")
    run_row("det-medsight", checkpoint, scan, work / "det-warm-up")  # the engine cache, as for segmentation
    rows = {"det-medsight": run_row("det-medsight", checkpoint, scan, work / "det-a", args.repeats),
            "det-medsight again": run_row("det-medsight", checkpoint, scan, work / "det-b")}
    print(HEADER)
    for row, found in rows.items():
        show(row, found, needed)
    a, b = (Path(rows[r]["written"]).read_text() for r in rows)  # each row's first run
    print(f"marks: the two runs wrote {'the same' if a == b else 'DIFFERENT'} submission rows "
          f"({len(a.splitlines()) - 1} marks)")
    ratio = rows["det-medsight"]["increment"] / needed
    print(f"against the same measure (scan + a same-size output in float32): {ratio:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("seg", "det", "both"), default="both")
    parser.add_argument("--case", help="a BraTS case folder (segmentation)")
    parser.add_argument("--seg-checkpoint")
    parser.add_argument("--det-checkpoint")
    parser.add_argument("--slices", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per row (median)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    from medsight.core.runtime import cpu_capability

    print(f"CPU: {cpu_capability()}")
    with tempfile.TemporaryDirectory(prefix="medsight-memory-") as folder:
        work = Path(folder)
        if args.part in ("seg", "both"):
            segmentation(args, work)
        if args.part in ("det", "both"):
            detection(args, work)


if __name__ == "__main__":
    main()
