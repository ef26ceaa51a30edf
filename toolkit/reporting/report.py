"""``report.html`` for a run folder: training curves, best and evaluation metrics, prediction pictures and
links to the slice viewer pages."""

from __future__ import annotations

import html
import json
from pathlib import Path
from urllib.parse import quote

from matplotlib.figure import Figure

from medsight.io.writers import atomic_path, write_text

MAX_PICTURES = 12
MAX_VIEWERS = 100


def read(path: Path) -> list[dict]:
    """The records of a run's ``metrics.jsonl`` (written by ``medsight.training.runlog``), in order."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _curves(run_dir: Path) -> Path | None:
    entries = read(run_dir / "metrics.jsonl")
    train = [e for e in entries if e["phase"] == "train"]
    val = [e for e in entries if e["phase"] == "val"]
    if not train:
        return None
    val_keys = [k for k in (val[0] if val else {}) if k not in ("time", "phase", "epoch", "global_step")
                and isinstance(val[0][k], (int, float))][:6]
    fig = Figure(figsize=(10, 3.6))
    axes = fig.subplots(1, 2)
    axes[0].plot([e["epoch"] for e in train], [e.get("loss") for e in train], marker="o")
    axes[0].set_title("training loss")
    axes[0].set_xlabel("epoch")
    for key in val_keys:
        axes[1].plot([e["epoch"] for e in val], [e.get(key) for e in val], marker="o", label=key)
    axes[1].set_title("validation")
    axes[1].set_xlabel("epoch")
    if val_keys:
        axes[1].legend(fontsize=7)
    fig.tight_layout()
    path = run_dir / "curves.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    return path


def _table(metrics: dict) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{v:.4f}</td></tr>" if isinstance(v, float)
        else f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
        for k, v in metrics.items()
    )
    return f"<table>{rows}</table>"


def _origin(run_dir: Path) -> str:
    """What the run learnt from and started from (synthetic data and published sources said plainly)."""
    from medsight.io import checkpoint
    from medsight.reporting.info import describe_provenance

    last = checkpoint.in_run(run_dir)
    if not last.is_file():
        return ""
    try:
        state = checkpoint.load(last)
    except Exception:  # a report never fails a run
        return ""
    items = []
    trained = state.get("trained_on") or {}
    if trained:
        kind = "<b>synthetic data only</b>: the model knows nothing of real images" if trained.get("synthetic") \
            else "real data"
        items.append(f"<li>trained on {html.escape(str(trained.get('root')))} ({html.escape(str(trained.get('format')))}"
                     f", {trained.get('records')} records): {kind}</li>")
    started = state.get("started_from") or {}
    if started:
        items.append(f"<li>started from {html.escape(str(started.get('path')))}</li>")
        items += [f"<li>{html.escape(line)}</li>" for line in describe_provenance(started.get("provenance"))]
    return "<h2>Data and origin</h2><ul>" + "".join(items) + "</ul>" if items else ""


def _href(path: Path, run_dir: Path) -> str:
    return html.escape(quote(path.relative_to(run_dir).as_posix()))


def _viewer_of(picture: Path) -> Path:
    """``<case>_viewer.html`` beside ``<case>_overlay.png`` or ``<seriesuid>_markN.png``."""
    return picture.with_name(picture.stem.rsplit("_", 1)[0] + "_viewer.html")


def _picture(path: Path, run_dir: Path) -> str:
    """A prediction picture; a click opens its case's slice viewer where predict wrote one."""
    image = f'<img src="{_href(path, run_dir)}">'
    viewer = _viewer_of(path)
    if viewer.is_file():
        image = f'<a href="{_href(viewer, run_dir)}" title="open the slice viewer">{image}</a>'
    return f"<figure>{image}<figcaption>{html.escape(path.name)}</figcaption></figure>"


def _viewers(run_dir: Path) -> str:
    """Links to the slice viewer pages predict wrote (``*_viewer.html``: self-contained, they open offline)."""
    pages = sorted(run_dir.glob("predictions/**/*_viewer.html"))
    if not pages:
        return ""
    links = "".join(f'<li><a href="{_href(p, run_dir)}">{html.escape(p.stem.removesuffix("_viewer"))}</a></li>'
                    for p in pages[:MAX_VIEWERS])
    more = f"<p>and {len(pages) - MAX_VIEWERS} more in predictions/</p>" if len(pages) > MAX_VIEWERS else ""
    return ("<h2>Slice viewers</h2><p>Scroll the axial, coronal and sagittal slices with the prediction over them; "
            f"set the window; toggle each region or the marks.</p><ul>{links}</ul>{more}")


def write_report(run_dir: Path, title: str | None = None) -> Path:
    run_dir = Path(run_dir)
    parts = [f"<h1>{html.escape(title or run_dir.name)}</h1>", _origin(run_dir)]
    curves = _curves(run_dir)
    if curves:
        parts.append(f'<h2>Training</h2><img src="{curves.name}" alt="training curves">')
    val = [e for e in read(run_dir / "metrics.jsonl") if e["phase"] == "val"]
    if val:
        last = {k: v for k, v in val[-1].items() if k not in ("time", "phase", "global_step")}
        parts.append("<h2>Last validation</h2>" + _table(last))
    for metrics_file in sorted(run_dir.glob("evaluation/*/metrics.json")):
        content = json.loads(metrics_file.read_text())
        split = metrics_file.parent.name
        parts.append(f"<h2>Evaluation ({html.escape(split)}, {content.get('cases', '?')} cases)</h2>"
                     + _table(content.get("metrics", {})))
        for extra in sorted(metrics_file.parent.glob("*.png")):
            parts.append(f'<img src="{extra.relative_to(run_dir)}" alt="{extra.name}">')
        for table in sorted(metrics_file.parent.glob("*.csv")):
            parts.append(f'<p><a href="{table.relative_to(run_dir)}">{table.name}</a></p>')
    pictures = sorted(run_dir.glob("predictions/**/*.png"))[:MAX_PICTURES]
    if pictures:
        parts.append("<h2>Predictions</h2>")
        parts.extend(_picture(p, run_dir) for p in pictures)
    parts.append(_viewers(run_dir))
    for table in sorted(run_dir.glob("predictions/*.csv")):
        parts.append(f'<p><a href="{table.relative_to(run_dir)}">{table.name}</a></p>')
    config = run_dir / "config.yaml"
    if config.is_file():
        parts.append(f"<h2>Configuration</h2><pre>{html.escape(config.read_text())}</pre>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}img{max-width:100%}"
             "table{border-collapse:collapse}td{border:1px solid #ccc;padding:2px 8px}figure{display:inline-block}")
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(run_dir.name)}</title>" \
           f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n"
    return write_text(page, run_dir / "report.html")


def write_cv_report(folder: Path, summary: dict, reliability: Path | None = None, headline: str | None = None) -> Path:
    """``report.html`` of a ``medsight cv`` folder, from its ``cv.json`` content: each fold's metrics, their mean
    and sd, the pooled out-of-fold metrics with their 95 % intervals, what was chosen on them, calibration before
    and after (with the reliability diagram), and the review flag's evidence (flagged cases against the rest)."""
    folder = Path(folder)
    folds = [f for f in summary.get("folds", []) if f.get("metrics")]
    names = [k for k in summary.get("mean", {}) if not k.startswith(("ece", "brier"))]
    # the task's headline metric (``headline``), then summaries over labels or regions, then the rest
    names = sorted(names, key=lambda n: (n != headline, not n.startswith(("mean_", "cpm", "dice_", "hd95_"))))[:12]
    parts = [f"<h1>Cross-validation: {html.escape(folder.name)}</h1>",
             f"<p>{summary.get('finished', 0)} of {len(summary.get('folds', []))} folds finished; ensemble: "
             f"{html.escape(str(summary.get('ensemble')))}</p>"]
    if folds and names:
        head = "".join(f"<td><b>{html.escape(n)}</b></td>" for n in names)
        rows = "".join("<tr><td>fold {}</td>{}</tr>".format(f["fold"], "".join(
            f"<td>{f['metrics'][n]:.4f}</td>" if isinstance(f["metrics"].get(n), (int, float)) else "<td></td>"
            for n in names)) for f in folds)
        spread = "".join(f"<td>{summary['mean'][n]:.4f} &plusmn; {summary['sd'].get(n, float('nan')):.4f}</td>"
                         for n in names)
        ci = summary.get("ci95_oof", {})
        pooled = "".join(f"<td>{summary['pooled_oof'].get(n, float('nan')):.4f}"
                         + (f" [{ci[n][0]:.4f}, {ci[n][1]:.4f}]" if n in ci else "") + "</td>" for n in names)
        parts.append(f"<h2>Folds</h2><table><tr><td></td>{head}</tr>{rows}<tr><td>mean &plusmn; sd</td>{spread}</tr>"
                     f"<tr><td>pooled out-of-fold [95 % CI]</td>{pooled}</tr></table>")
    oof = summary.get("oof_with_choices", {})
    calibration = {k: v for k, v in oof.items() if k.startswith(("ece", "brier"))}
    if calibration:
        method = summary.get("chosen_on_oof", {}).get("calibration_method")
        parts.append("<h2>Calibration on the out-of-fold predictions</h2>"
                     + (f"<p>method: {html.escape(str(method))} (chosen by the cross-fitted ECE below)</p>"
                        if method else "") + _table(calibration))
        crossed = {k.removeprefix("cross_fitted_"): v for k, v in oof.items() if k.startswith("cross_fitted_")}
        if crossed:
            parts.append("<h3>Cross-fitted: each fold calibrated by a map fitted on the other folds</h3>"
                         + _table(crossed))
    if reliability is not None and reliability.is_file():
        parts.append(f'<img src="{reliability.relative_to(folder)}" alt="reliability diagram">')
    chosen = dict(summary.get("chosen_on_oof", {}))
    review = chosen.pop("review", None)
    if review:
        evidence = review.get("oof", {})
        parts.append(f"<h2>Review flag</h2><p>threshold {review['threshold']:.4f} on the {review['score']} flags "
                     f"{review['rate']:.0%} of the out-of-fold cases.</p>" + _table(evidence))
    if chosen:
        parts.append("<h2>Chosen on the out-of-fold predictions</h2><pre>"
                     + html.escape(json.dumps(chosen, indent=1, default=str)) + "</pre>")
    style = "body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}img{max-width:100%}" \
            "table{border-collapse:collapse}td{border:1px solid #ccc;padding:2px 8px}"
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>cv {html.escape(folder.name)}</title>" \
           f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n"
    return write_text(page, folder / "report.html")
