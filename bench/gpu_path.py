"""GPU training path: mixed-precision channels-last training, its loss, throughput, loader and exact resume.

Classification (DenseNet121, 224 px) and segmentation (SegResNet, 128^3 patches) are trained through
``medsight train`` for a few hundred steps in bf16 (and fp16 on CUDA, ``--fp16``) with channels-last, on
synthetic data (``medsight data synth``), with the tasks' ``gpu`` profiles. Per task it measures:

- loss falls: mean of the last quarter of the logged step losses (``metrics.jsonl`` phase ``step``) below
  the mean of the first quarter;
- throughput: training samples over training seconds of every epoch after the first (phase ``train``:
  ``samples_per_s`` x ``epoch_seconds``; the first epoch holds warm-up and cache filling), in images/s;
  segmentation also in voxels/s (patch voxels x patches/s);
- the GPU kept busy: ``nvidia-smi`` utilisation sampled every 0.5 s from the end of the first epoch to the
  last logged step, mean and median; the share of each epoch the trainer waited for the loader
  (``metrics.jsonl`` ``data_wait_fraction``) and the peak GPU memory (``peak_memory_gb``); and the loader
  timed alone: the run's own training loader (same workers, cache and augmentation, no model) over two
  epochs; loader/training above 1 means it can keep up;
- the plan (segmentation): ``medsight data fingerprint`` for this GPU's memory, then ``train --plans``:
  the plan's memory estimate against the measured peak, which must stay below it;
- exact resume: run A trains uninterrupted; run B, same settings, gets SIGTERM past half its steps (the
  trainer finishes the step, writes ``last.pt``, exits 143) and continues with ``medsight train TASK
  --resume B``; the final weights of both ``last.pt`` are compared tensor by tensor (max |difference|),
  with ``trainer.deterministic=true`` (CUDA layers without a deterministic backward warn instead of
  stopping; a difference they cause shows here).

Exit status 1 when a loss did not fall or a resume was not exact (``--resume-tol``, default 0).
Sizing, from a 2-core CPU machine: the GPU-size data (1200 pictures at 256 px, 24 cases at 160 x 160 x 128)
takes 80 s to synthesise; the segmentation loader alone made 1.25 patches/s of 128^3 with its 8 workers
there, so the segmentation runs may be loader-bound: where one call's time is limited, run one task per
call (``--tasks``, same ``--work`` to keep the data).

    python bench/gpu_path.py [--steps 300] [--tasks classification,segmentation] [--work DIR] [--out DIR]
    flock /tmp/medsight-heavy.lock .venv/bin/python bench/gpu_path.py --smoke   # CPU, tiny sizes, ~10 min
                                                          # on 2 cores (bf16 emulated without AVX-512)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import medsight  # noqa: F401
import torch
from medsight.io import checkpoint
from medsight.core.config import resolve
from medsight.core.registry import TASKS

QUIET = ["trainer.progress=never", "trainer.tensorboard=false", "trainer.channels_last=true"]
# per task: synthetic data, profile, steps per epoch (a cap below the data's own), size overrides
SETTINGS = {
    "classification": {
        "gpu": {"synth": ["chestxray14", "--cases", "1200", "--size", "256"], "profile": "gpu", "per_epoch": 10,
                "overrides": []},
        "smoke": {"synth": ["chestxray14", "--cases", "96", "--size", "64"], "profile": "cpu-small", "per_epoch": 4,
                  "overrides": ["data.image_size=64", "data.batch_size=8"]},
    },
    "segmentation": {
        "gpu": {"synth": ["brats", "--cases", "24", "--shape", "160,160,128"], "profile": "gpu", "per_epoch": 8,
                "overrides": []},
        "smoke": {"synth": ["brats", "--cases", "8", "--shape", "48,48,40"], "profile": "cpu-small", "per_epoch": 3,
                  "overrides": ["data.patch_size=[32,32,32]", "model.init_filters=8", "infer.roi_size=[48,48,48]",
                                "data.batch_size=2"]},
    },
}


class GpuSampler(threading.Thread):
    """``nvidia-smi`` utilisation of the training GPU every 0.5 s, with wall-clock times."""

    def __init__(self):
        super().__init__(daemon=True)
        self.gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or "0"
        self.samples: list[tuple[float, float]] = []
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            out = subprocess.run(["nvidia-smi", f"--id={self.gpu}", "--query-gpu=utilization.gpu",
                                  "--format=csv,noheader,nounits"], capture_output=True, text=True, check=False)
            if out.returncode == 0 and out.stdout.strip():
                self.samples.append((time.time(), float(out.stdout.split()[0])))
            self.done.wait(0.5)


def train(args: list[str], run: Path, log: Path, stop_after: int | None = None,
          sampler: GpuSampler | None = None) -> int:
    """``medsight train ARGS`` for run folder ``run``, output to ``log``; SIGTERM once step ``stop_after`` is
    logged. Returns the exit status."""
    log.parent.mkdir(parents=True, exist_ok=True)
    if sampler:
        sampler.start()
    with open(log, "w") as handle:
        proc = subprocess.Popen([sys.executable, "-m", "medsight", "train", *args], stdout=handle, stderr=handle)
        while stop_after is not None and proc.poll() is None:
            if any(r["phase"] == "step" and r["global_step"] >= stop_after for r in rows(run / "metrics.jsonl")):
                proc.send_signal(signal.SIGTERM)
                break
            time.sleep(0.05)
        code = proc.wait()
    if sampler:
        sampler.done.set()
        sampler.join()
    return code


def rows(metrics: Path) -> list[dict]:
    if not metrics.is_file():
        return []
    return [json.loads(line) for line in metrics.read_text().splitlines() if line.strip().endswith("}")]


def failed(code: int, log: Path) -> SystemExit:
    tail = "\n".join(log.read_text().splitlines()[-15:])
    return SystemExit(f"medsight train exited {code}; last lines of {log}:\n{tail}")


def run_summary(run: Path, log: Path, sampler: GpuSampler | None) -> dict:
    """Steps, loss first/last quarter, steady-state samples/s, device line, GPU utilisation of one run."""
    logged = rows(run / "metrics.jsonl")
    steps = [r for r in logged if r["phase"] == "step"]
    epochs = [r for r in logged if r["phase"] == "train"]
    losses = [float(r["loss"]) for r in steps]
    quarter = len(losses) // 4
    steady = epochs[1:] or epochs
    seconds = sum(r["epoch_seconds"] for r in steady)
    device = re.search(r"device ([^;]+); run folder", log.read_text())
    out = {"steps": steps[-1]["global_step"] if steps else 0, "logged_losses": len(losses),
           "loss_first_quarter": statistics.mean(losses[:quarter]) if quarter else None,
           "loss_last_quarter": statistics.mean(losses[-quarter:]) if quarter else None,
           "samples_per_s": sum(r["samples_per_s"] * r["epoch_seconds"] for r in steady) / seconds,
           "steady_epochs": f"{steady[0]['epoch']}-{steady[-1]['epoch']}", "runtime": device and device.group(1)}
    out["loss_falls"] = bool(quarter) and out["loss_last_quarter"] < out["loss_first_quarter"]
    out["data_wait_fraction"] = sum(r.get("data_wait_fraction", 0) * r["epoch_seconds"] for r in steady) / seconds
    peaks = [r["peak_memory_gb"] for r in epochs if "peak_memory_gb" in r]
    out["peak_memory_gb"] = max(peaks) if peaks else None
    if sampler is not None:
        start = epochs[0]["time"] if len(epochs) > 1 else steps[0]["time"]
        util = [u for t, u in sampler.samples if start <= t <= steps[-1]["time"]]
        out["gpu_util"] = {"mean": statistics.mean(util), "median": statistics.median(util), "samples": len(util)} \
            if util else None
    return out


def max_difference(a: Path, b: Path) -> tuple[float, int]:
    wa, wb = checkpoint.load(a)["model"], checkpoint.load(b)["model"]
    if wa.keys() != wb.keys():
        return math.inf, len(wa)
    return max(((wa[k].double() - wb[k].double()).abs().max().item() if wa[k].numel() else 0.0) for k in wa), len(wa)


def resume_check(name: str, base: list[str], work: Path) -> dict:
    """Run A uninterrupted, run B stopped by SIGTERM past half its steps and resumed: final weights compared
    (``trainer.deterministic=true``: on CUDA, layers without a deterministic backward warn in the logs)."""
    extra = ["trainer.deterministic=true", "trainer.log_every_n_steps=1"]
    a, b = work / f"{name}-resume-A", work / f"{name}-resume-B"
    for run in (a, b):
        shutil.rmtree(run, ignore_errors=True)
    if train([*base, "--out", str(a), *extra], a, work / "logs" / f"{a.name}.log") != 0:
        raise failed(1, work / "logs" / f"{a.name}.log")
    total = checkpoint.load(a / "checkpoints" / "last.pt")["global_step"]
    code = train([*base, "--out", str(b), *extra], b, work / "logs" / f"{b.name}.log", stop_after=total // 2 + 1)
    stopped = checkpoint.load(b / "checkpoints" / "last.pt")["global_step"] if code == 143 else None
    if code != 143 or stopped >= total:
        raise SystemExit(f"{name}: run B was not stopped before its end (exit {code}); see {work / 'logs'}")
    code = train([name, "--resume", str(b)], b, work / "logs" / f"{b.name}-resumed.log")
    if code != 0:
        raise failed(code, work / "logs" / f"{b.name}-resumed.log")
    diff, tensors = max_difference(a / "checkpoints" / "last.pt", b / "checkpoints" / "last.pt")
    return {"steps": total, "stopped_at": stopped, "max_abs_diff": diff, "tensors": tensors}


def loader_alone(name: str, profile: str, overrides: list[str], data: Path, work: Path) -> float:
    """Samples/s of the training loader by itself over two epochs, as the trainer builds it (no model run)."""
    from medsight.training.trainer import Trainer

    task_class = TASKS.get(name)
    config = resolve(task_class.config_class, profile=task_class.profiles[profile],
                     overrides=[*overrides, "trainer.device=cpu", "trainer.precision=fp32",
                                "trainer.channels_last=false"])
    config.task = name
    trainer = Trainer(task_class(config), data, work / f"{name}-loader")
    trainer.setup(None)
    samples, started = 0, time.perf_counter()
    for epoch in range(2):
        for index, batch in enumerate(trainer.train_loader(epoch)):
            if index >= trainer.batches_per_epoch:
                break
            samples += len(batch["image"])
    return samples / (time.perf_counter() - started)


def plan_check(name: str, spec: dict, data: Path, work: Path, common: list[str], cuda: bool) -> dict:
    """``medsight data fingerprint`` for this GPU's memory (--smoke: 1 GB), then a short ``train --plans``:
    the plan's memory estimate against the measured peak (CUDA), which the plan promised to stay under."""
    plans_file, run, log = work / f"plans-{name}.json", work / f"{name}-planned", work / "logs" / f"{name}-planned.log"
    model = [o for o in spec["overrides"] if o.startswith("model.")]
    command = [sys.executable, "-m", "medsight", "data", "fingerprint", "auto", str(data), "--out", str(plans_file),
               "--profile", spec["profile"], *model, *([] if cuda else ["--memory", "1GB"])]
    subprocess.run(command, check=True, capture_output=True)
    plan = json.loads(plans_file.read_text())
    shutil.rmtree(run, ignore_errors=True)
    code = train([name, "--data", str(data), "--profile", spec["profile"], "--plans", str(plans_file), *common,
                  "trainer.precision=bf16", "trainer.max_epochs=2", "trainer.val_every_n_epochs=2",
                  "--out", str(run)], run, log)
    if code != 0:
        raise failed(code, log)
    epochs = [r for r in rows(run / "metrics.jsonl") if r["phase"] == "train"]
    peaks = [r["peak_memory_gb"] for r in epochs if "peak_memory_gb" in r]
    estimate = plan["memory"]["estimated_training_bytes"] / 2**30
    out = {"config": plan["config"], "estimate_gb": estimate, "budget_gb": plan["memory"]["budget_bytes"] / 2**30,
           "peak_gb": max(peaks) if peaks else None}
    out["fits"] = out["peak_gb"] is None or out["peak_gb"] <= estimate
    return out


def check_task(name: str, args, size: str, steps: int, work: Path, cuda: bool) -> tuple[dict, bool]:
    """One task's training runs (bf16, and fp16 on CUDA), its loader alone, exact resume and (segmentation)
    its plan: (the figures, whether every check passed)."""
    spec, data = SETTINGS[name][size], work / f"data-{name}"
    per_epoch = spec["per_epoch"]
    common = [*spec["overrides"], *QUIET, f"trainer.max_steps_per_epoch={per_epoch}",
              f"data.cache_dir={work / f'cache-{name}'}"]
    task_class = TASKS.get(name)
    config = resolve(task_class.config_class, profile=task_class.profiles[spec["profile"]], overrides=common)
    voxels = math.prod(config.data.patch_size) if name == "segmentation" else None
    epochs = math.ceil(steps / per_epoch)
    main_args = [name, "--data", str(data), "--profile", spec["profile"], *common, f"trainer.max_epochs={epochs}",
                 f"trainer.val_every_n_epochs={epochs}", f"trainer.log_every_n_steps={max(1, steps // 50)}"]
    batch = f"batch {config.data.batch_size}" + (f" x {config.data.patches_per_case} patches" if voxels else "")
    task, ok = {"batch": batch, "patch_voxels": voxels, "runs": {}}, True
    for precision in ("bf16", "fp16") if cuda and name in args.fp16.split(",") else ("bf16",):
        run, log = work / f"{name}-{precision}", work / "logs" / f"{name}-{precision}.log"
        shutil.rmtree(run, ignore_errors=True)
        sampler = GpuSampler() if cuda and shutil.which("nvidia-smi") else None
        code = train([*main_args, f"trainer.precision={precision}", "--out", str(run)], run, log, sampler=sampler)
        if code != 0:
            raise failed(code, log)
        summary = task["runs"][precision] = run_summary(run, log, sampler)
        summary["voxels_per_s"] = summary["samples_per_s"] * voxels if voxels else None
        ok &= summary["loss_falls"]
        print(f"{name} {precision}: done", flush=True)
    task["loader_samples_per_s"] = loader_alone(name, spec["profile"], common, data, work)
    resume_epochs = max(2, math.ceil(max(2 * per_epoch, steps // 10) / per_epoch))
    base = [name, "--data", str(data), "--profile", spec["profile"], *common, "trainer.precision=bf16",
            f"trainer.max_epochs={resume_epochs}", f"trainer.val_every_n_epochs={resume_epochs}"]
    resume = resume_check(name, base, work)
    resume["exact"] = resume["max_abs_diff"] <= args.resume_tol
    task["resume"] = resume
    ok &= resume["exact"]
    print(f"{name} resume: done", flush=True)
    if name == "segmentation":
        task["plan"] = plan_check(name, spec, data, work, common, cuda)
        ok &= task["plan"]["fits"]
        print(f"{name} plan: done", flush=True)
    return task, ok


def print_task(name: str, task: dict) -> None:
    unit = "images/s" if name == "classification" else "patches/s"
    for precision, r in task["runs"].items():
        setting = f"{(r['runtime'] or '?').split(', ', 1)[-1].replace('precision ', '')}, {task['batch']}"
        first, last = r["loss_first_quarter"], r["loss_last_quarter"]
        shown = "too few logged steps" if first is None else f"{first:.4f} -> {last:.4f} (first -> last quarter)"
        print(f"{name:15s} {'loss falls':13s} {setting:40s} {shown}, {r['steps']} steps: "
              f"{'ok' if r['loss_falls'] else 'FAILED'}")
        rate = f"{r['samples_per_s']:.1f} {unit}"
        if r["voxels_per_s"]:
            rate += f", {r['voxels_per_s'] / 1e6:.1f} Mvoxels/s"
        print(f"{'':15s} {'throughput':13s} {precision:40s} {rate} (epochs {r['steady_epochs']})")
        wait = f"waiting for data {100 * r['data_wait_fraction']:.0f} % of epoch time"
        if r["peak_memory_gb"] is not None:
            wait += f"; peak memory {r['peak_memory_gb']:.1f} GB"
        print(f"{'':15s} {'loader':13s} {precision:40s} {wait}")
        if "gpu_util" in r:
            util = r["gpu_util"]
            print(f"{'':15s} {'GPU busy':13s} {precision:40s} " + (f"utilisation mean {util['mean']:.0f} %, median "
                  f"{util['median']:.0f} % ({util['samples']} samples)" if util else "no nvidia-smi samples"))
    best = max(r["samples_per_s"] for r in task["runs"].values())
    loader = task["loader_samples_per_s"]
    print(f"{'':15s} {'loader alone':13s} {'same loader, no model, 2 epochs':40s} {loader:.1f} {unit} = "
          f"{loader / best:.2f} x training")
    r = task["resume"]
    setting = f"bf16, deterministic, stopped at {r['stopped_at']}/{r['steps']}"
    shown = f"max |diff| {r['max_abs_diff']:.3g} over {r['tensors']} tensors"
    print(f"{'':15s} {'exact resume':13s} {setting:40s} {shown}: {'ok' if r['exact'] else 'FAILED'}")
    if "plan" in task:
        p = task["plan"]
        planned = p["config"]["data"]
        setting = f"patch {'x'.join(map(str, planned['patch_size']))}, batch {planned['batch_size']}"
        shown = (f"estimate {p['estimate_gb']:.1f} GB of {p['budget_gb']:.0f} GB; measured peak "
                 + (f"{p['peak_gb']:.1f} GB: {'ok' if p['fits'] else 'FAILED (above the estimate)'}"
                    if p["peak_gb"] is not None else "n/a on a CPU"))
        print(f"{'':15s} {'plan memory':13s} {setting:40s} {shown}")


def synthesise(names: list[str], size: str, work: Path) -> None:
    """Every task's dataset made at once, in separate ``medsight data synth`` processes."""
    synth = {}
    for name in names:
        data = work / f"data-{name}"
        if not data.exists():
            dataset, *options = SETTINGS[name][size]["synth"]
            synth[name] = subprocess.Popen([sys.executable, "-m", "medsight", "data", "synth", dataset, str(data),
                                            *options], stdout=subprocess.DEVNULL)
    if any(proc.wait() for proc in synth.values()):
        raise SystemExit("medsight data synth failed")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and few steps: checks the script on a CPU")
    parser.add_argument("--steps", type=int, help="optimizer steps per training run (default 300; --smoke 16)")
    parser.add_argument("--tasks", default="classification,segmentation")
    parser.add_argument("--work", help="keep data and runs here (default: a temporary folder)")
    parser.add_argument("--out", default="/tmp/medsight-gpu-path", help="folder for gpu_path.json")
    parser.add_argument("--fp16", default="classification", help="tasks also trained in fp16 on CUDA ('' = none)")
    parser.add_argument("--resume-tol", type=float, default=0.0, help="largest max |difference| counted as exact")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        raise SystemExit("no CUDA device: this benchmark is meant for a GPU machine; --smoke checks it on a CPU")
    size, started = "smoke" if args.smoke else "gpu", time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)  # before any work: a bad --out fails at once
    steps = args.steps or (16 if args.smoke else 300)
    scratch = tempfile.TemporaryDirectory(prefix="medsight-gpu-path-")
    work = Path(args.work or scratch.name)
    names = [t for t in args.tasks.split(",") if t]
    synthesise(names, size, work)
    results, ok = {}, True
    for name in names:
        results[name], passed = check_task(name, args, size, steps, work, cuda)
        ok &= passed
    device = torch.cuda.get_device_name(0) if cuda else "CPU"
    print(f"\n== GPU training path{' (--smoke)' if args.smoke else ''}: {device}, torch {torch.__version__}, "
          f"--steps {steps}, {time.perf_counter() - started:.0f} s in all")
    print(f"{'task':15s} {'check':13s} {'setting':40s} result")
    for name, task in results.items():
        print_task(name, task)
    (out / "gpu_path.json").write_text(json.dumps({"device": device, "torch": torch.__version__, "smoke": args.smoke,
                                                   "steps": steps, "wall_s": time.perf_counter() - started, "ok": ok,
                                                   "tasks": results}, indent=2))
    print(f"figures in {out / 'gpu_path.json'}; {'all checks passed' if ok else 'a check FAILED'}")
    scratch.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
