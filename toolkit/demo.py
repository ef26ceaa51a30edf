"""``medsight demo``: for every registered task, synthetic data in the official layout -> train on the
CPU -> evaluate on data the run never saw -> predict -> report, through the Python API; each step prints the
command a user would type for it. The top page ``report.html`` shows each task's key figure and picture."""

from __future__ import annotations

import html
import json
import logging
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

from medsight.core.registry import TASKS
from medsight.errors import MedsightError
from medsight.io import checkpoint
from medsight.io.writers import write_text

log = logging.getLogger(__name__)


@dataclass
class DemoResult:
    name: str
    run: Path
    report: Path | None
    seconds: float
    status: int
    metric: str = ""
    value: float | None = None
    evaluated_on: str = ""
    note: str = ""


def _option(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _say(argv: list[str]) -> None:
    """The command a user would type for this step (the demo calls the Python API, the same code)."""
    log.info(f"\n$ medsight {shlex.join(argv)}")


def _synthesize(dataset: str, folder: Path, synth: dict, seed: int) -> None:
    from medsight.data import synthesize

    synth = dict(synth)
    cases = synth.pop("cases", None)
    _say(["data", "synth", dataset, str(folder), "--seed", str(seed)] + (["--cases", str(cases)] if cases else [])
         + [f"--{k}={_option(v)}" for k, v in synth.items()])
    synthesize(dataset, folder, cases=cases, seed=seed, **{k: _option(v) for k, v in synth.items()})


def _run_task(name: str, task, out: Path, run: Path, quick: bool) -> str:
    """One task's demo: synthetic data, training, evaluation on data the run never saw, prediction. Returns a
    description of the data its evaluation used."""
    from medsight.inference.model import load
    from medsight.training.run import train

    spec = task.demo
    data = out / "data" / spec.dataset
    synth = dict(spec.synth, **(spec.quick_synth if quick else {}))
    if data.exists():
        log.info(f"(synthetic {spec.dataset} data already in {data})")
    else:
        _synthesize(spec.dataset, data, synth, seed=0)
    overrides = [*spec.overrides, *(spec.quick_overrides if quick else ())]
    if checkpoint.in_run(run).exists():
        log.info(f"{run} holds a model from an earlier demo: training skipped (delete {run} to train again)")
    else:
        _say(["train", name, "--data", str(data), "--profile", spec.profile, "--out", str(run), *overrides])
        train(name, data, profile=spec.profile, out=run, overrides=overrides)
    model = load(checkpoint.best_or_last(run))
    predict_data, split = data, spec.evaluate_split or task.evaluate_split
    if spec.held_out_cases:
        predict_data, split = out / "data" / f"{spec.dataset}-held-out", "all"
        cases = min(spec.held_out_cases, 2) if quick else spec.held_out_cases
        if not predict_data.exists():
            _synthesize(spec.dataset, predict_data, dict(synth, cases=cases), seed=1)
        evaluated_on, folder = f"{cases} held-out cases synthesised with another seed", "held-out"
    else:
        evaluated_on, folder = f"the {split} split, which training never reads", split
    _say(["evaluate", "--checkpoint", str(model.path), "--data", str(predict_data), "--split", split,
          "--out", str(run / "evaluation" / folder)])
    model.evaluate(predict_data, split, out=run / "evaluation" / folder)
    inputs = task.demo_inputs(predict_data)  # picked once the data exist
    _say(["predict", "--checkpoint", str(model.path), *inputs, "--out", str(run / "predictions"),
          *(f"infer.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in spec.predict_options.items())])
    report = model.predict_files(inputs, run / "predictions", **spec.predict_options)
    if report.failures:
        raise MedsightError(f"predict failed on {len(report.failures)} input(s): {report.failures[0]}", run)
    return evaluated_on


def run_demo(out: Path, tasks: list[str] | None = None, quick: bool = False) -> int:
    """Every registered task's demo, then the top page; 0 when all worked, else 1 (each failure printed)."""
    names = tasks or TASKS.names()
    if not names:
        log.info("medsight demo: no tasks are registered yet, so there is nothing to train; "
                 "`medsight data synth` works for every registered dataset format")
        return 0
    out = Path(out)
    results, failed = [], []
    for name in names:
        task = TASKS.get(name)
        if task.demo is None:
            log.info(f"\n== {name}: no demo defined, skipped")
            continue
        started = time.perf_counter()
        log.info(f"\n== {name}: {task.summary}")
        if task.demo.note:
            log.info(task.demo.note)
        run = out / name
        status, evaluated_on = 0, ""
        try:
            evaluated_on = _run_task(name, task, out, run, quick)
        except MedsightError as exc:
            status = exc.exit_status
            failed.append(f"{name}: {exc}")
        from medsight.reporting.report import write_report

        report = write_report(run, title=f"medsight demo: {name}") if run.exists() else None
        result = DemoResult(name, run, report, time.perf_counter() - started, status, task.monitor.metric,
                            evaluated_on=evaluated_on, note=task.demo.note)
        result.value = _evaluated(run, result.metric)
        results.append(result)
    summary = write_text(_index_page(results, out), out / "report.html")
    log.info("\n== demo summary")
    for r in results:
        figure = f"{r.metric} {r.value:.3f}" if r.value is not None else ""
        log.info(f"{r.name:16s} {'ok' if r.status == 0 else 'FAILED':7s} {r.seconds:6.0f} s   {figure:22s} "
                 f"outputs in {r.run}")
    log.info(f"open {summary} for the reports, pictures and metrics")
    for failure in failed:
        log.info(f"failed: {failure}")
    return 1 if failed else 0


def _evaluated(run: Path, metric: str) -> float | None:
    """The monitored metric of the run's evaluation (on held-out data), if it was written."""
    for path in sorted(run.glob("evaluation/*/metrics.json")):
        value = json.loads(path.read_text()).get("metrics", {}).get(metric)
        if isinstance(value, (int, float)):
            return float(value)
    return None


def _picture(run: Path) -> Path | None:
    """The first prediction picture (Grad-CAM, overlay), else an evaluation plot."""
    for pattern in ("predictions/**/*.png", "evaluation/*/*.png"):
        found = sorted(run.glob(pattern))
        if found:
            return found[0]
    return None


def _index_page(results: list[DemoResult], out: Path) -> str:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>medsight demo</title><style>"
             "body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}img{max-width:100%}"
             "section{border-top:1px solid #ccc;padding:0.5em 0}</style></head><body><h1>medsight demo</h1>",
             "<p>Synthetic data in each dataset's official layout; models trained on a CPU for a few minutes. "
             "The figures say the pipeline works end to end, not that the models are useful on real images.</p>"]
    for r in results:
        link = f'<a href="{html.escape(str(r.report.relative_to(out)))}">full report</a>' if r.report else ""
        figure = (f"<p><b>{html.escape(r.metric)} {r.value:.3f}</b> on {html.escape(r.evaluated_on)}</p>"
                  if r.value is not None else "<p>no evaluation</p>")
        picture = _picture(r.run)
        image = (f'<img src="{html.escape(str(picture.relative_to(out)))}" alt="{html.escape(picture.name)}">'
                 if picture else "")
        note = f"<p><i>{html.escape(r.note)}</i></p>" if r.note else ""
        parts.append(f"<section><h2>{html.escape(r.name)}: {'ok' if r.status == 0 else 'FAILED'} in "
                     f"{r.seconds:.0f} s</h2>{figure}{note}{image}<p>{link}</p></section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
