"""``medsight demo``: for every registered task, synthetic data in the official layout -> train on the
CPU -> evaluate -> predict -> report, by running the same commands a user would type."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

from medsight.io.writers import write_text
from medsight.registry import TASKS


CHECKPOINT = "<checkpoint>"


def _option(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _checkpoint(run: Path) -> Path:
    best = run / "checkpoints" / "best.pt"
    return best if best.exists() else run / "checkpoints" / "last.pt"


def _run(argv: list[str]) -> int:
    from medsight.cli import main

    print(f"\n$ medsight {shlex.join(argv)}", flush=True)
    return main(argv)


def run_demo(out: Path, tasks: list[str] | None = None, quick: bool = False) -> int:
    names = tasks or TASKS.names()
    if not names:
        print("medsight demo: no tasks are registered yet, so there is nothing to train; "
              "`medsight data synth` works for every registered dataset format")
        return 0
    out = Path(out)
    rows, failed = [], []
    for name in names:
        task = TASKS.get(name)
        spec = task.demo
        if spec is None:
            print(f"\n== {name}: no demo defined, skipped")
            continue
        started = time.perf_counter()
        print(f"\n== {name}: {task.summary}")
        if spec.note:
            print(spec.note)
        data = out / "data" / f"{spec.dataset}"
        run = out / name
        synth = dict(spec.synth, **(spec.quick_synth if quick else {}))
        cases = synth.pop("cases", None)
        steps = []
        if data.exists():
            print(f"(synthetic {spec.dataset} data already in {data})")
        else:
            steps.append(["data", "synth", spec.dataset, str(data), "--seed", "0"]
                         + (["--cases", str(cases)] if cases else [])
                         + [f"--{k}={_option(v)}" for k, v in synth.items()])
        if (run / "checkpoints" / "last.pt").exists():
            print(f"{run} holds a model from an earlier demo: training skipped (delete {run} to train again)")
        else:
            steps.append(["train", name, "--data", str(data), "--profile", spec.profile, "--out", str(run),
                          "trainer.progress=never", *spec.overrides, *(spec.quick_overrides if quick else ())])
        steps.append(["evaluate", "--checkpoint", CHECKPOINT, "--data", str(data)]
                     + (["--split", spec.evaluate_split] if spec.evaluate_split else []))
        # the inputs are picked once the data exist (the steps before it may synthesise them)
        steps.append(lambda: ["predict", "--checkpoint", CHECKPOINT, *task.demo_inputs(data), "--out",
                              str(run / "predictions"), *spec.predict_args])
        status = 0
        for step in steps:
            argv = step() if callable(step) else step
            status = _run([str(_checkpoint(run)) if a == CHECKPOINT else a for a in argv])
            if status != 0:
                failed.append(f"{name}: `medsight {shlex.join(argv)}` exited with {status}")
                break
        from medsight.report import write_report

        report = write_report(run, title=f"medsight demo: {name}") if run.exists() else None
        rows.append((name, run, report, time.perf_counter() - started, status))
    index = ["<!doctype html><html><head><meta charset='utf-8'><title>medsight demo</title></head><body>",
             "<h1>medsight demo</h1><ul>"]
    for name, run, report, seconds, status in rows:
        link = f'<a href="{report.relative_to(out)}">{name}</a>' if report else name
        index.append(f"<li>{link}: {'ok' if status == 0 else 'FAILED'} in {seconds:.0f} s</li>")
    index.append("</ul></body></html>\n")
    summary = write_text("\n".join(index), out / "report.html")
    print("\n== demo summary")
    for name, run, report, seconds, status in rows:
        print(f"{name:16s} {'ok' if status == 0 else 'FAILED':7s} {seconds:6.0f} s   outputs in {run}")
    print(f"open {summary} for the reports, pictures and metrics")
    for failure in failed:
        print(f"failed: {failure}")
    return 1 if failed else 0
