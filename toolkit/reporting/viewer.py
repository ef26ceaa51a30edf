"""``<case>_viewer.html``: a page to scroll a volume's axial, coronal and sagittal slices with its regions
or marks over them, toggle each, and set the window level.

Drawn by plotly: three heatmap subplots (zoom, pan, hover values, PNG export); plotly.js is written once
beside the pages (``plotly.min.js``, 4.8 MB) and loaded by its relative name, so a folder of pages opens from
the run folder with no server and no network. The volume travels once, quantised to
uint8 and zlib-compressed (the browser's ``DecompressionStream`` inflates it); a short script of ours cuts
the slices the sliders ask for and hands them to ``Plotly.update``. Plotly's own sliders and frames would
carry every slice of every view: three copies of the volume, uncompressed.

Slices are shown the radiological way, whatever the orientation on disk (as ``medsight.io.pictures``):
axial with the patient's right on the left and anterior at the top, coronal with the right on the left
and superior at the top, sagittal with anterior on the left and superior at the top.

The page reads its state from the URL hash, so a link (or a test) opens a given position:
``#axial=40&coronal=120&sagittal=96&level=300&width=600&hide=WT,marks&opacity=0.5&score=0.5``. Slice numbers
count the page's slices from the patient's inferior, posterior and left side (the RAS order); on a
volume thinned to fit the page (``MAX_VOXELS``), slice n lies at n * stride of the full grid.
"""

from __future__ import annotations

import base64
import html
import json
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from medsight.core.geometry import voxel_size_mm
from medsight.io.pictures import REGION_COLOURS
from medsight.io.writers import write_text

#: voxels the page holds at most: larger volumes keep every 2nd, 3rd... voxel along their finest axes
MAX_VOXELS = 16_000_000
#: compressed volume and regions, base64, at most (plotly.js adds 4.8 MB): past it the volume is thinned more
MAX_PAYLOAD_BYTES = 10_000_000
#: (level, width) in HU
CT_WINDOWS = {"lung": (-600.0, 1500.0), "mediastinum": (40.0, 400.0), "bone": (400.0, 1800.0)}
MARK_COLOUR = "#ffcc00"
#: marks shown when the page opens (the rest wait below the score filter)
MARKS_SHOWN = 10
#: views: name, the axis a slider moves along, the axes drawn across and up (RAS array axes), and the
#: screen edges' letters (left, right, bottom, top)
VIEWS = (("axial", 2, 0, 1, "RLPA"), ("coronal", 1, 0, 2, "RLIS"), ("sagittal", 0, 1, 2, "APIS"))


@dataclass(frozen=True)
class Mark:
    """A sphere to circle: ``centre_voxel`` (i, j, k) indices of the image array, ``radius_mm``; ``label``
    and ``score`` (a probability, for the page's filter) as shown beside it."""

    centre_voxel: tuple[float, float, float]
    radius_mm: float
    label: str = ""
    score: float | None = None


def slice_viewer(
    image: np.ndarray,
    affine: np.ndarray,
    path: str | Path,
    *,
    regions: Mapping[str, np.ndarray] | None = None,
    colours: Sequence[str] = REGION_COLOURS,
    marks: Sequence[Mark] = (),
    title: str = "",
    windows: Mapping[str, tuple[float, float]] | None = None,
    max_voxels: int = MAX_VOXELS,
    max_payload_bytes: int = MAX_PAYLOAD_BYTES,
) -> Path:
    """Write the viewer page of one volume; returns ``path``.

    image: (X, Y, Z) on the grid ``affine`` (voxel indices to RAS mm); regions: name -> boolean (X, Y, Z)
    on the same grid, at most 8, drawn in ``colours`` (where regions overlap, the first one named shows);
    windows: preset name -> (level, width) in the image's units, the first shown first; ``auto`` (the 1st to
    99th percentile of the non-zero voxels) and ``full`` (the range stored) follow. Intensities are stored
    in 256 levels between the 0.1st and 99.9th percentiles, narrowed to the presets' reach when given.
    A volume past ``max_voxels`` or ``max_payload_bytes`` keeps every n-th voxel (regions too: nearest).
    """
    regions = _checked(np.asarray(image), dict(regions or {}))
    volume, spacing, ras_affine, to_ras = _as_ras(np.asarray(image), affine)
    masks = [_as_ras(np.asarray(m, dtype=bool), affine)[0] for m in regions.values()]
    strides, payload = _fit(volume, masks, spacing, windows, max_voxels, max_payload_bytes)
    presets = dict(windows or {})
    presets.update({k: w for k, w in payload["windows"].items() if k not in presets})
    marks_ras = [_mark_json(m, to_ras) for m in marks]
    scores = sorted((m["score"] for m in marks_ras if m["score"] is not None), reverse=True)
    data = {
        "shape": payload["shape"], "strides": list(strides), "spacing": [float(s) for s in spacing],
        "affine": np.round(ras_affine, 6).tolist(), "image": payload["image"], "mask": payload["mask"],
        "value": payload["value"], "range": payload["range"],
        "windows": {k: [float(v) for v in w] for k, w in presets.items()},
        "regions": [{"name": n, "colour": c} for n, c in zip(regions, _cycle(colours, len(regions)))],
        "marks": marks_ras, "colour": MARK_COLOUR, "score": scores[:MARKS_SHOWN][-1] if scores else 0.0,
        "start": _start(payload["union"], marks_ras, strides, payload["shape"]),
    }
    _plotly_beside(Path(path))
    return write_text(_page(data, title or Path(path).stem), Path(path))


#: plotly.js, once per folder of pages (4.8 MB: inlined in every page, a test set's pages would repeat it)
PLOTLY_JS = "plotly.min.js"


def _plotly_beside(page: Path) -> Path:
    """``plotly.min.js`` in the page's folder (written once, atomically): the pages load it by a relative
    name, so a folder of pages opens offline, from the run folder or a copy of it."""
    import plotly.offline

    script = page.parent / PLOTLY_JS
    if not script.is_file():
        script.parent.mkdir(parents=True, exist_ok=True)
        write_text(plotly.offline.get_plotlyjs(), script)
    return script


def _checked(image: np.ndarray, regions: dict) -> dict:
    if image.ndim != 3:
        raise ValueError(f"slice_viewer needs a 3D image (X, Y, Z), got shape {image.shape}")
    if len(regions) > 8:
        raise ValueError(f"slice_viewer draws at most 8 regions, got {len(regions)}")
    for name, mask in regions.items():
        if np.shape(mask) != image.shape:
            raise ValueError(f"region {name}: shape {np.shape(mask)} is not the image's {image.shape}")
    return regions


def _fit(volume, masks, spacing, windows, max_voxels: int, max_payload_bytes: int):
    """The strides that keep the page within ``max_voxels`` and ``max_payload_bytes``, and its payload."""
    strides = [1, 1, 1]
    while np.prod([-(-n // s) for n, s in zip(volume.shape, strides)]) > max_voxels:
        strides = _coarser(strides, spacing)
    while True:
        payload = _payload(volume, masks, strides, windows)
        if payload["bytes"] <= max_payload_bytes or min(payload["shape"]) <= 16:
            return strides, payload
        strides = _coarser(strides, spacing)


def _as_ras(array: np.ndarray, affine: np.ndarray):
    """The array with its axes running towards R, A, S; its spacing; its affine; and the matrix taking
    voxel indices of the input to indices of the RAS array."""
    orientation = nib.orientations.io_orientation(affine)
    ras = nib.orientations.apply_orientation(array, orientation)
    ras_affine = np.asarray(affine, dtype=np.float64) @ nib.orientations.inv_ornt_aff(orientation, array.shape)
    return ras, voxel_size_mm(ras_affine), ras_affine, np.linalg.inv(ras_affine) @ affine


def _coarser(strides: list[int], spacing: np.ndarray) -> list[int]:
    """One more step on the axis with the finest kept spacing: thinning keeps voxels near cubic."""
    kept = [s * float(d) for s, d in zip(strides, spacing)]
    axis = int(np.argmin(kept))
    return [s + (a == axis) for a, s in enumerate(strides)]


def _payload(volume: np.ndarray, masks: list[np.ndarray], strides: Sequence[int], windows) -> dict:
    """The kept voxels, quantised and compressed, with what the page needs to undo the quantisation."""
    keep = tuple(slice(None, None, s) for s in strides)
    kept = np.ascontiguousarray(volume[keep], dtype=np.float32)
    if not np.isfinite(kept).all():  # NaN voxels (outside a resampled field of view) shown as 0
        kept = np.where(np.isfinite(kept), kept, np.float32(0))
    sample = kept.ravel()[:: max(1, kept.size // 2_000_000)]
    low, high = (float(v) for v in np.percentile(sample, [0.1, 99.9]))
    if windows:  # no levels spent below or above every preset (a CT's -3024 HU outside its field of view)
        low = max(low, min(level - width / 2 for level, width in windows.values()))
        high = min(high, max(level + width / 2 for level, width in windows.values()))
    high = max(high, low + 1e-3)
    scale = (high - low) / 255.0
    scaled = (kept - np.float32(low)) / np.float32(scale) + np.float32(0.5)  # a new array: the caller's stays
    quantised = np.clip(scaled, 0, 255, out=scaled).astype(np.uint8)
    bits = np.zeros(kept.shape, dtype=np.uint8)
    for bit, mask in enumerate(masks):
        bits |= mask[keep].astype(np.uint8) << bit
    nonzero = sample[sample != 0]
    auto = np.percentile(nonzero if nonzero.size else sample, [1, 99])
    image_text = _encode(quantised)
    mask_text = _encode(bits) if masks else None
    return {
        "shape": list(kept.shape), "image": image_text, "mask": mask_text, "union": bits > 0,
        "value": {"low": low, "scale": scale}, "range": [low, high],
        "windows": {"auto": ((auto[0] + auto[1]) / 2, max(auto[1] - auto[0], scale)),
                    "full": ((low + high) / 2, high - low)},
        "bytes": len(image_text) + len(mask_text or ""),
    }


def _encode(array: np.ndarray) -> str:
    return base64.b64encode(zlib.compress(array.tobytes(), 1)).decode("ascii")


def _cycle(colours: Sequence[str], count: int) -> list[str]:
    return [colours[i % len(colours)] for i in range(count)]


def _mark_json(mark: Mark, to_ras: np.ndarray) -> dict:
    centre = (to_ras @ np.append(np.asarray(mark.centre_voxel, dtype=np.float64), 1.0))[:3]
    return {"centre": [round(float(c), 3) for c in centre], "radius_mm": float(mark.radius_mm),
            "label": mark.label, "score": None if mark.score is None else float(mark.score)}


def _start(union: np.ndarray, marks: list[dict], strides, shape) -> list[int]:
    """Where the page opens, in kept slices: the first mark, else the regions' centre, else the middle."""
    if marks:
        centre = np.asarray(marks[0]["centre"]) / strides
    elif union.any():
        centre = np.argwhere(union).mean(axis=0)
    else:
        centre = (np.asarray(shape) - 1) / 2
    return [int(np.clip(round(c), 0, n - 1)) for c, n in zip(centre, shape)]


def _figure(data: dict):
    """Three subplots, each an image heatmap and an overlay heatmap, axes in full-grid voxel indices."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=3, subplot_titles=[v[0] for v in VIEWS], horizontal_spacing=0.03)
    count = len(data["regions"])
    steps = [[0, "rgba(0,0,0,0)"], [1, "rgba(0,0,0,0)"]]
    if count:
        steps = [pair for i, r in enumerate(data["regions"]) for pair in ([i / count, r["colour"]],
                                                                         [(i + 1) / count, r["colour"]])]
    for column, (name, _, across, up, letters) in enumerate(VIEWS, start=1):
        grid = {"x0": 0, "dx": data["strides"][across], "y0": 0, "dy": data["strides"][up]}
        fig.add_trace(go.Heatmap(z=[[0]], colorscale="gray", showscale=False, zsmooth=False, name=name,
                                 hovertemplate="%{z:.4~g}<extra></extra>",
                                 **grid), row=1, col=column)
        fig.add_trace(go.Heatmap(z=[[None]], colorscale=steps, zmin=0.5, zmax=count + 0.5, showscale=False,
                                 zsmooth=False, hoverinfo="skip", opacity=0.5, name=f"{name} regions", **grid),
                      row=1, col=column)
        suffix = "" if column == 1 else str(column)
        for axis, key, reverse in ((across, f"xaxis{suffix}", True), (up, f"yaxis{suffix}", False)):
            step, n = data["strides"][axis], data["shape"][axis]
            ends = [-step / 2, (n - 1) * step + step / 2]
            fig.layout[key].update(range=ends[::-1] if reverse else ends, showgrid=False, zeroline=False,
                                   showticklabels=False, ticks="", constrain="domain")
        fig.layout[f"yaxis{suffix}"].update(scaleanchor=f"x{suffix}",
                                            scaleratio=data["spacing"][up] / data["spacing"][across])
        for letter, x, y in zip(letters, (0, 1, 0.5, 0.5), (0.5, 0.5, 0, 1)):
            fig.add_annotation(text=letter, x=x, y=y, xref=f"x{suffix} domain", yref=f"y{suffix} domain",
                               showarrow=False, font={"color": "#dddddd", "size": 13}, bgcolor="rgba(0,0,0,0.6)",
                               xanchor={0: "left", 1: "right"}.get(x, "center"),
                               yanchor={0: "bottom", 1: "top"}.get(y, "middle"))
    fig.update_layout(template="none", paper_bgcolor="black", plot_bgcolor="black", font={"color": "white"},
                      margin={"l": 10, "r": 10, "t": 30, "b": 10}, height=480, showlegend=False,
                      dragmode="pan", uirevision="keep")
    return fig


def _page(data: dict, title: str) -> str:
    import plotly.io as pio

    plot = pio.to_html(_figure(data), include_plotlyjs=False, full_html=False, div_id="plot",
                       config={"displaylogo": False, "scrollZoom": False, "responsive": True},
                       post_script="medsightViewer.start(document.getElementById('{plot_id}'));")
    shape = " x ".join(str(n) for n in data["shape"])
    thinned = "" if data["strides"] == [1, 1, 1] else f", every {'/'.join(map(str, data['strides']))} voxel kept"
    note = (f"{shape} voxels{thinned}; {' x '.join(f'{s:.2f}' for s in data['spacing'])} mm; intensities in 256 "
            f"levels over {data['range'][0]:.4g}..{data['range'][1]:.4g}. Scroll the sliders (or the mouse wheel "
            "over a view); drag to pan, double-click to reset the zoom.")
    payload = json.dumps(data).replace("</", "<\\/")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style><script src='{PLOTLY_JS}'></script></head><body><h1>{html.escape(title)}</h1><p class='note'>{html.escape(note)}</p>"
            f"{_CONTROLS}<script id='viewer-data' type='application/json'>{payload}</script>"
            f"<script>{_SCRIPT}</script>{plot}<div id='sliders'></div><div id='marklist'></div></body></html>\n")


_STYLE = """
body{background:#111;color:#eee;font-family:sans-serif;margin:0 1em}h1{font-size:1.2em;margin:.4em 0}
.note{color:#aaa;font-size:.85em;margin:.2em 0}#controls{display:flex;flex-wrap:wrap;gap:.4em 1.6em;margin:.4em 0}
#controls label{white-space:nowrap}#sliders{display:grid;grid-template-columns:repeat(3,1fr);gap:1em}
#sliders input{width:100%}#marklist button{margin:.15em;background:#333;color:#ffcc00;border:1px solid #555}
.swatch{display:inline-block;width:.8em;height:.8em;margin-right:.2em}
"""

_CONTROLS = """<div id='controls'>
<label>window <select id='preset'></select></label>
<label>level <input id='level' type='range'> <output id='level-value'></output></label>
<label>width <input id='width' type='range'> <output id='width-value'></output></label>
<span id='toggles'></span>
<label>opacity <input id='opacity' type='range' min='0' max='1' step='0.05' value='0.5'></label>
<label id='score-box' hidden>marks from score <input id='score' type='range' min='0' max='1' step='0.01'>
<output id='score-value'></output></label></div>"""

# Our glue: decode the volume once, cut slices, keep the state in the URL hash, call Plotly.update.
_SCRIPT = r"""
const medsightViewer = (() => {
  "use strict";
  const data = JSON.parse(document.getElementById("viewer-data").textContent);
  const VIEWS = [["axial", 2, 0, 1], ["coronal", 1, 0, 2], ["sagittal", 0, 1, 2]], LISTED = 20;
  const [X, Y, Z] = data.shape, step = [Y * Z, Z, 1];
  const state = {slice: VIEWS.map(([, along]) => data.start[along]), level: 0, width: 1, hidden: new Set(), opacity: 0.5,
                 score: data.score};
  let gd, image, bits, pending = null, busy = Promise.resolve();
  const $ = (id) => document.getElementById(id);

  async function inflate(text) {
    const raw = atob(text), bytes = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }

  function cut(view, source, pixel) {  // rows go up the view's vertical axis, columns across
    const [, along, across, up] = VIEWS[view], base = state.slice[view] * step[along], rows = [];
    for (let r = 0; r < data.shape[up]; r++) {
      const row = new Float32Array(data.shape[across]), start = base + r * step[up];
      for (let c = 0; c < row.length; c++) row[c] = pixel(source[start + c * step[across]]);
      rows.push(row);
    }
    return rows;
  }

  function overlayPixel() {
    const order = data.regions.map((r, i) => i).filter((i) => !state.hidden.has(data.regions[i].name));
    return (b) => { for (const i of order) if (b & (1 << i)) return i + 1; return NaN; };
  }

  function circles() {
    if (state.hidden.has("marks")) return [];
    const shapes = [];
    VIEWS.forEach(([, along, across, up], view) => {
      const axis = view === 0 ? "" : String(view + 1), here = state.slice[view] * data.strides[along];
      for (const mark of shownMarks()) {
        const depth = (mark.centre[along] - here) * data.spacing[along], r2 = mark.radius_mm ** 2 - depth ** 2;
        if (r2 < 0) continue;
        const r = Math.max(Math.sqrt(r2), data.spacing[across]), dx = r / data.spacing[across],
              dy = r / data.spacing[up], cx = mark.centre[across], cy = mark.centre[up];
        shapes.push({type: "circle", xref: "x" + axis, yref: "y" + axis, x0: cx - dx, x1: cx + dx,
                     y0: cy - dy, y1: cy + dy, line: {color: data.colour, width: 2}});
      }
    });
    return shapes;
  }

  function shownMarks() {
    return data.marks.filter((m) => m.score === null || m.score >= state.score - 1e-9);
  }

  function styles() {
    const low = state.level - state.width / 2, high = state.level + state.width / 2, n = data.regions.length;
    return {zmin: [low, 0.5, low, 0.5, low, 0.5], zmax: [high, n + 0.5, high, n + 0.5, high, n + 0.5],
            opacity: [1, state.opacity, 1, state.opacity, 1, state.opacity]};
  }

  function draw(views = [0, 1, 2]) {  // coalesced: a dragged slider asks faster than plotly draws
    if (pending) { views.forEach((view) => pending.add(view)); return busy; }
    pending = new Set(views);
    busy = busy.then(() => { const todo = [...pending]; pending = null; return render(todo); }).then(shown);
    return busy;
  }

  function render(views) {  // new slices for these views; window, opacity and marks for all
    const value = (q) => data.value.low + q * data.value.scale, overlay = overlayPixel();
    const z = [0, 1, 2].flatMap((view) => views.includes(view) ?
      [cut(view, image, value), bits ? cut(view, bits, overlay) : [[NaN]]] : [undefined, undefined]);
    const update = Object.assign(styles(), views.length ? {z} : {});
    return Plotly.update(gd, update, {shapes: circles()}, [0, 1, 2, 3, 4, 5]);
  }

  function shown() {
    const point = [2, 1, 0].map((view, axis) => state.slice[view] * data.strides[axis]).concat([1]);
    VIEWS.forEach(([name, along], view) => {
      $("slice-" + name).value = state.slice[view];
      const world = data.affine[along].reduce((sum, a, i) => sum + a * point[i], 0);
      $("label-" + name).textContent = `${name} ${state.slice[view]} / ${data.shape[along] - 1}` +
        ` (${"xyz"[along]} ${world.toFixed(1)} mm RAS)`;
    });
    $("level").value = state.level; $("width").value = state.width; $("opacity").value = state.opacity;
    const preset = Object.keys(data.windows).find((name) =>
      Math.abs(data.windows[name][0] - state.level) + Math.abs(data.windows[name][1] - state.width) < 1e-6);
    $("preset").value = preset || "custom";
    $("level-value").textContent = (+state.level).toPrecision(4);
    $("width-value").textContent = (+state.width).toPrecision(4);
    $("score").value = state.score; $("score-value").textContent = state.score.toFixed(2);
    document.querySelectorAll("#toggles input").forEach((box) => { box.checked = !state.hidden.has(box.value); });
    listMarks();
    const text = hash();
    history.replaceState(null, "", "#" + text);
    document.documentElement.dataset.rendered = text;
  }

  function hash() {
    const parts = VIEWS.map(([name], view) => `${name}=${state.slice[view]}`);
    parts.push(`level=${+(+state.level).toPrecision(6)}`, `width=${+(+state.width).toPrecision(6)}`);
    if (state.hidden.size) parts.push("hide=" + [...state.hidden].join(","));
    parts.push(`opacity=${state.opacity}`);
    if (data.marks.length) parts.push(`score=${state.score}`);
    return parts.join("&");
  }

  function readHash() {
    const query = new URLSearchParams(location.hash.slice(1));
    VIEWS.forEach(([name, along], view) => {
      if (query.has(name)) state.slice[view] = clamp(parseInt(query.get(name)), 0, data.shape[along] - 1);
    });
    for (const key of ["level", "width", "opacity", "score"]) if (query.has(key)) state[key] = +query.get(key);
    if (query.has("window") && data.windows[query.get("window")]) [state.level, state.width] = data.windows[query.get("window")];
    if (query.has("hide")) state.hidden = new Set(query.get("hide").split(",").filter(Boolean));
  }

  function clamp(v, low, high) { return Math.min(high, Math.max(low, Number.isFinite(v) ? v : low)); }

  function controls() {
    const [low, high] = data.range, names = Object.keys(data.windows);
    $("preset").innerHTML = names.map((n) => `<option>${n}</option>`).join("") + "<option hidden>custom</option>";
    $("preset").onchange = () => { [state.level, state.width] = data.windows[$("preset").value]; draw(); };
    Object.assign($("level"), {min: low - (high - low), max: high + (high - low), step: (high - low) / 1000});
    Object.assign($("width"), {min: data.value.scale, max: 2 * (high - low), step: (high - low) / 1000});
    for (const key of ["level", "width", "opacity"]) $(key).oninput = () => {
      state[key] = +$(key).value; if (key !== "opacity") $("preset").value = "custom"; draw([]);
    };
    const toggles = data.regions.map((r) => [r.name, r.colour]);
    if (data.marks.length) toggles.push(["marks", data.colour]);
    for (const [name, colour] of toggles) {
      const label = document.createElement("label"), box = document.createElement("input"),
            swatch = document.createElement("span");
      Object.assign(box, {type: "checkbox", value: name, checked: true});
      box.onchange = () => { box.checked ? state.hidden.delete(name) : state.hidden.add(name); draw(); };
      swatch.className = "swatch"; swatch.style.background = colour;
      label.append(box, swatch, name); $("toggles").append(label, " ");
    }
    $("sliders").innerHTML = VIEWS.map(([name, along]) => `<label><span id="label-${name}"></span>` +
      `<input id="slice-${name}" type="range" min="0" max="${data.shape[along] - 1}" step="1"></label>`).join("");
    VIEWS.forEach(([name], view) => $("slice-" + name).oninput = (e) => {
      state.slice[view] = +e.target.value; draw([view]);
    });
    if (data.marks.some((m) => m.score !== null)) {
      $("score-box").hidden = false;
      $("score").oninput = () => { state.score = +$("score").value; draw([]); };
    }
  }

  function listMarks() {  // a button per mark the filter shows (the first LISTED): all views through it
    const shownNow = shownMarks(), list = $("marklist");
    if (list.dataset.score === String(state.score)) return;
    list.dataset.score = String(state.score);
    list.replaceChildren();
    shownNow.slice(0, LISTED).forEach((mark) => {
      const button = document.createElement("button");
      button.textContent = `${data.marks.indexOf(mark) + 1}: ${mark.label}`;
      button.onclick = () => {
        state.slice = VIEWS.map(([, along]) => clamp(Math.round(mark.centre[along] / data.strides[along]), 0,
                                                     data.shape[along] - 1));
        state.hidden.delete("marks");
        draw();
      };
      list.append(button);
    });
    if (shownNow.length > LISTED) list.append(` and ${shownNow.length - LISTED} more: raise the score filter`);
  }

  function wheel() {
    gd.addEventListener("wheel", (e) => {  // over a view: the next or previous slice
      const plot = e.target.closest && e.target.closest(".nsewdrag");
      if (!plot) return;
      const view = ["xy", "x2y2", "x3y3"].indexOf(plot.dataset.subplot);
      if (view < 0) return;
      e.preventDefault();
      state.slice[view] = clamp(state.slice[view] + Math.sign(e.deltaY), 0, data.shape[VIEWS[view][1]] - 1);
      draw([view]);
    }, {passive: false});
  }

  async function start(div) {
    gd = div;
    [image, bits] = await Promise.all([inflate(data.image), data.mask ? inflate(data.mask) : null]);
    [state.level, state.width] = data.windows[Object.keys(data.windows)[0]];
    controls();
    wheel();
    readHash();
    window.addEventListener("hashchange", () => { readHash(); draw(); });
    return draw();
  }

  return {start, draw, state, data};
})();
"""
