"""Batch segmentation predict: ``medsight predict`` over N BraTS-size cases (its pipelined loop: the next cases
read and preprocessed by a background thread while the network runs, results written by another) against the
reference's own loop over the same cases, each row in a fresh process, with peak memory and outputs compared.

    flock /tmp/medsight-heavy.lock .venv/bin/python bench/segmentation_batch.py [--cases 20] [--case CASE_DIR]
        [--checkpoint CKPT] [--rows ref-loop,ref-loader,ms-batch,ms-single] [--work DIR]

Cases: ``--cases`` copies (symbolic links under their own BraTS names) of the real BraTS 2023 case in
../shared/data, or of ``--case``; without either, synthetic 240 x 240 x 155 cases. Copies of one case cost what
different cases of its size cost: nothing is cached between cases on either side.

Rows (each its own process: the checkpoint loaded, one small synthetic case predicted to prime kernels, engine
cache and heap, then the N cases timed):
- ``ref-loop``: ``_segmentation_reference.Reference`` (the MONAI script of ``segmentation_inference_speed.py``:
  same weights, preprocessing, window; bf16 autocast + channels-last where the CPU has native bf16, else fp32 +
  channels-last), one case after another;
- ``ref-loader``: the same, with a ``DataLoader`` worker reading and preprocessing the next case while the main
  process runs the network, inverts and writes (what a user who knows DataLoaders writes for a test set);
- ``ms-batch``: ``Model.predict_files(all cases)``, medsight's default engine and precision (``medsight predict
  CASE...``);
- ``ms-single``: ``Model.predict_files([case])`` once per case in one process (one at a time: the label maps
  ``ms-batch`` must reproduce voxel for voxel).

Printed: seconds for the N cases, cases per minute, the ratio to the faster reference row (issue 23's batch
target: >= 1.25x), the process's peak RSS and its increment over the primed process, whether every ms-batch label
map equals its ms-single one, and the lowest WT / TC / ET Dice of any case against the reference's.
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
REAL_CASE = HERE.parent.parent / "shared" / "data" / "brats" / "brats2023_gli_00001_unlabelled" / "BraTS-GLI-00001-000"
ROWS = ("ref-loop", "ref-loader", "ms-batch", "ms-single")
LABELS = {"ref-loop": "reference, one case after another",
          "ref-loader": "reference, DataLoader with 1 worker",
          "ms-batch": "medsight predict over the list (default)",
          "ms-single": "medsight predict, one call per case"}
TARGET = 1.25
MB = 2 ** 20


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes


# -- the rows, each in its own process ----------------------------------------------------------------------
def child(args) -> dict:
    import torch

    import medsight

    cases = [Path(c) for c in json.loads(Path(args.cases_file).read_text())]
    out = Path(args.out)
    if args.child.startswith("ms-"):
        model = medsight.load(args.checkpoint, device="cpu")
        overrides = ["infer.overlay=false"]
        model.predict_files([Path(args.warm_case)], out / "warm", overrides=overrides)
        base = _rss()
        started = time.perf_counter()
        written, failures = {}, []
        for group in ([cases] if args.child == "ms-batch" else [[c] for c in cases]):
            report = model.predict_files(group, out / "maps", overrides=overrides)
            failures += report.failures
            written.update({Path(p).name: str(p) for p in report.written if str(p).endswith("_seg.nii.gz")})
        seconds = time.perf_counter() - started
        if failures:
            raise RuntimeError("\n".join(failures))
        return {"seconds": seconds, "base": base, "peak": _peak(), "written": written}

    sys.path.insert(0, str(HERE))
    from _segmentation_reference import Reference
    from segmentation_inference_speed import case_files

    from medsight.core.runtime import cpu_has_native_bf16

    model = medsight.load(args.checkpoint, device="cpu", engine="torch")
    task = model.task
    files = [case_files(task, c) for c in cases]
    reference = Reference(model.torch_model, task.config, files[0][1], bf16=cpu_has_native_bf16(),
                          channels_last=True)
    del model
    with torch.no_grad():
        reference(case_files(task, Path(args.warm_case))[0], out / "warm")
    base = _rss()
    started = time.perf_counter()
    written = {}
    if args.child == "ref-loop":
        for case, (names, _) in zip(cases, files):
            written[case.name] = str(reference(names, out / case.name)[0])
    else:
        from monai.data import Dataset
        from torch.utils.data import DataLoader

        dataset = Dataset([{"image": names, "case": case.name} for case, (names, _) in zip(cases, files)],
                          reference.preprocessing)
        loader = DataLoader(dataset, batch_size=None, num_workers=1, prefetch_factor=1)
        for data in loader:
            written[data["case"]] = str(reference.finish(data, out / data["case"])[0])
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "base": base, "peak": _peak(), "written": written}


def run_row(row: str, args, cases_file: Path, warm_case: Path, work: Path) -> dict:
    command = [sys.executable, __file__, "--child", row, "--checkpoint", str(args.checkpoint),
               "--cases-file", str(cases_file), "--warm-case", str(warm_case), "--out", str(work / row)]
    done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    line = next((l for l in reversed(done.stdout.splitlines()) if l.startswith("{")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"{row} failed:\n{done.stderr[-3000:]}")
    return json.loads(line)


# -- inputs ----------------------------------------------------------------------------------------------------
def make_cases(source: Path | None, count: int, work: Path) -> list[Path]:
    """``count`` cases: links to ``source``'s files under BraTS names of their own, or synthetic cases."""
    import medsight

    if source is None:
        data = Path(medsight.synthesize("brats", work / "synthetic", cases=count, seed=0, shape="240,240,155"))
        return sorted({p.parent for p in data.rglob("*.nii.gz") if "seg" not in p.name})[:count]
    stem = source.name
    cases = []
    for k in range(count):
        name = f"BraTS-GLI-{k + 1:05d}-000"
        folder = work / "cases" / name
        folder.mkdir(parents=True, exist_ok=True)
        for f in sorted(source.glob("*.nii*")):
            target = folder / f.name.replace(stem, name)
            if not target.exists():
                target.symlink_to(f.resolve())
        cases.append(folder)
    return cases


def warm_case(work: Path) -> Path:
    import medsight

    data = Path(medsight.synthesize("brats", work / "warm-data", cases=1, seed=1, shape="96,96,64"))
    return next(p.parent for p in data.rglob("*.nii.gz"))


def compare(rows: dict, convention: str = "brats2021") -> None:
    import numpy as np

    sys.path.insert(0, str(HERE))
    from _segmentation_reference import dice, regions

    def maps(row):
        return {k: v for k, v in rows[row]["written"].items()}

    if "ms-batch" in rows and "ms-single" in rows:
        batch, single = maps("ms-batch"), maps("ms-single")
        same = [np.array_equal(np.asarray(__import__("nibabel").load(batch[k]).dataobj),
                               np.asarray(__import__("nibabel").load(single[k]).dataobj)) for k in sorted(single)]
        print(f"ms-batch label maps identical to ms-single: {sum(same)}/{len(same)} "
              f"({'yes' if all(same) and len(batch) == len(single) else 'NO'})")
    ref = next((r for r in ("ref-loop", "ref-loader") if r in rows), None)
    if ref and "ms-batch" in rows:
        theirs = rows[ref]["written"]
        ours = {k.replace("_seg.nii.gz", ""): v for k, v in maps("ms-batch").items()}
        worst = [1.0, 1.0, 1.0]
        for case, path in theirs.items():
            a, _ = regions(Path(ours[case]), convention)
            b, _ = regions(Path(path), convention)
            worst = [min(w, dice(a[i], b[i])) for i, w in enumerate(worst)]
        print(f"ms-batch against {ref}: lowest Dice over the cases ET {worst[0]:.4f}, TC {worst[1]:.4f}, "
              f"WT {worst[2]:.4f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--case", help="a BraTS case folder to copy (default: the real BraTS 2023 case)")
    parser.add_argument("--checkpoint", help="a segmentation checkpoint (default: segmentation_inference_speed's "
                                             "seeded random-init SegResNet)")
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--work", help="folder for outputs (default: a temporary one)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--cases-file", help=argparse.SUPPRESS)
    parser.add_argument("--warm-case", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return 0

    sys.path.insert(0, str(HERE))
    from segmentation_inference_speed import random_checkpoint

    from medsight.core.runtime import cpu_capability

    scratch = tempfile.TemporaryDirectory(prefix="medsight-segbatch-")
    work = Path(args.work) if args.work else Path(scratch.name)
    work.mkdir(parents=True, exist_ok=True)
    os.environ["MEDSIGHT_ENGINE_CACHE"] = str(work / "engine-cache")  # the rows' primed engine, shared
    source = Path(args.case) if args.case else (REAL_CASE if REAL_CASE.is_dir() else None)
    cases = make_cases(source, args.cases, work)
    cases_file = work / "cases.json"
    cases_file.write_text(json.dumps([str(c) for c in cases]))
    args.checkpoint = Path(args.checkpoint) if args.checkpoint else random_checkpoint(work / "seg.pt", [])
    warm = warm_case(work)
    print(f"CPU: {cpu_capability()}")
    print(f"{len(cases)} cases of {source.name if source else 'synthetic 240 x 240 x 155'}; checkpoint "
          f"{args.checkpoint.name}")
    rows = {}
    for row in args.rows.split(","):
        rows[row] = run_row(row, args, cases_file, warm, work)
        print(f"  {LABELS[row]:44s} {rows[row]['seconds']:7.1f} s", flush=True)
    refs = [r for r in rows if r.startswith("ref-")]
    best = min(refs, key=lambda r: rows[r]["seconds"]) if refs else None
    print(f"\n| row | seconds | cases/min | ratio to the faster reference | peak RSS MB | increment MB |")
    print("|---|---|---|---|---|---|")
    for row, found in rows.items():
        ratio = rows[best]["seconds"] / found["seconds"] if best else float("nan")
        print(f"| {LABELS[row]} | {found['seconds']:.1f} | {60 * len(cases) / found['seconds']:.1f} | {ratio:.2f}x | "
              f"{found['peak'] / MB:.0f} | {(found['peak'] - found['base']) / MB:.0f} |")
    if best and "ms-batch" in rows:
        ratio = rows[best]["seconds"] / rows["ms-batch"]["seconds"]
        print(f"target: medsight batch >= {TARGET}x the faster reference ({LABELS[best]}): {ratio:.2f}x "
              f"({'met' if ratio >= TARGET else 'NOT met'})")
    compare(rows)
    (work / "summary.json").write_text(json.dumps(rows, indent=2))
    scratch.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
