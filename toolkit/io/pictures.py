"""PNG pictures for people: three orthogonal planes with label contours, a heatmap over an X-ray,
an axial CT slice with circled marks. Drawn on matplotlib ``Figure`` objects (no global backend or
pyplot state is touched), written atomically.

Volumes are shown the radiological way: axial and coronal planes with the patient's right on
the picture's left and anterior/superior at the top, whatever the orientation on disk.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Circle

from medsight.core.geometry import voxel_size_mm
from medsight.io.writers import atomic_path

REGION_COLOURS = ("#ff3b30", "#ffcc00", "#34c759", "#0a84ff", "#bf5af2", "#ff9f0a")


def _to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorder/flip the first three axes so they run towards R, A, S; returns (array, spacing)."""
    orientation = nib.orientations.io_orientation(affine)
    ras = nib.orientations.apply_orientation(array, orientation)
    spacing = voxel_size_mm(affine)[orientation[:, 0].astype(int)]
    return ras, spacing


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, facecolor="black")
    return path


def _planes(volume: np.ndarray, centre: Sequence[int]) -> list[tuple[str, np.ndarray]]:
    """Axial, coronal, sagittal slices of a RAS volume, as display arrays (rows top to bottom)."""
    i, j, k = (int(c) for c in centre)
    return [
        ("axial", np.flipud(np.fliplr(volume[:, :, k].T))),
        ("coronal", np.flipud(np.fliplr(volume[:, j, :].T))),
        ("sagittal", np.flipud(np.fliplr(volume[i, :, :].T))),
    ]


def volume_overlay_png(
    image: np.ndarray,
    affine: np.ndarray,
    path: str | Path,
    masks: Mapping[str, np.ndarray] | None = None,
    centre: Sequence[int] | None = None,
    title: str = "",
) -> Path:
    """Three planes through ``centre`` (voxel indices; default: centre of the masks, else the volume).

    image: (x, y, z); masks: name -> boolean (x, y, z) on the same grid, one contour colour each.
    """
    masks = dict(masks or {})
    image_ras, spacing = _to_ras(np.asarray(image, dtype=np.float32), affine)
    masks_ras = {name: _to_ras(np.asarray(mask, dtype=np.uint8), affine)[0] for name, mask in masks.items()}
    union = np.zeros(image_ras.shape, dtype=bool)
    for mask in masks_ras.values():
        union |= mask > 0
    if centre is None:
        centre = np.argwhere(union).mean(axis=0).round() if union.any() else np.asarray(image_ras.shape) // 2
    else:  # centre is given in the input's indices: map it through the same reorientation
        marker = np.zeros(np.asarray(image).shape, dtype=np.uint8)
        marker[tuple(int(c) for c in centre)] = 1
        centre = np.argwhere(_to_ras(marker, affine)[0])[0]
    low, high = np.percentile(image_ras[image_ras != 0] if np.any(image_ras != 0) else image_ras, [0.5, 99.5])
    aspects = [spacing[1] / spacing[0], spacing[2] / spacing[0], spacing[2] / spacing[1]]
    fig = Figure(figsize=(12, 4.4))
    axes = fig.subplots(1, 3)
    for ax, (plane, picture), aspect in zip(axes, _planes(image_ras, centre), aspects):
        ax.imshow(picture, cmap="gray", vmin=low, vmax=max(high, low + 1e-6), aspect=aspect, interpolation="nearest")
        for colour, (name, mask) in zip(REGION_COLOURS, masks_ras.items()):
            outline = dict(_planes(mask.astype(np.float32), centre))[plane]
            if outline.max() > 0:
                ax.contour(outline, levels=[0.5], colors=[colour], linewidths=1.2)
        ax.set_title(plane, color="white", fontsize=10)
        ax.axis("off")
    handles = [Line2D([], [], color=c, label=n) for c, n in zip(REGION_COLOURS, masks_ras)]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, labelcolor="white")
    fig.suptitle(title, color="white")
    return _save(fig, Path(path))


def heatmap_png(image: np.ndarray, heatmap: np.ndarray, path: str | Path, title: str = "") -> Path:
    """A 2D picture ``[row, column]`` with a heatmap (same shape, values in 0..1) over it."""
    fig = Figure(figsize=(8, 4.4))
    axes = fig.subplots(1, 2)
    for ax in axes:
        ax.imshow(image, cmap="gray", interpolation="bilinear")
        ax.axis("off")
    axes[1].imshow(heatmap, cmap="jet", alpha=0.45, vmin=0.0, vmax=1.0, interpolation="bilinear")
    fig.suptitle(title, color="white")
    return _save(fig, Path(path))


def marks_png(
    axial_slice: np.ndarray,
    spacing_mm: Sequence[float],
    circles: Sequence[tuple[float, float, float, str]],
    path: str | Path,
    title: str = "",
    window: tuple[float, float] = (-1000.0, 400.0),
) -> Path:
    """An axial slice ``[x, y]`` with circles ``(x_index, y_index, radius_in_x_voxels, label)``."""
    fig = Figure(figsize=(6, 6.3))
    ax = fig.subplots()
    ax.imshow(axial_slice.T, cmap="gray", vmin=window[0], vmax=window[1], aspect=spacing_mm[1] / spacing_mm[0])
    for x, y, radius, label in circles:
        ax.add_patch(Circle((x, y), radius, fill=False, color="#ffcc00", linewidth=1.5))
        ax.text(x + radius + 2, y, label, color="#ffcc00", fontsize=9)
    ax.axis("off")
    ax.set_title(title, color="white", fontsize=10)
    return _save(fig, Path(path))


def reliability_png(samples: Mapping[str, tuple], path: Path, affine: Mapping[str, tuple] | None = None,
                    title: str = "reliability", method: str | None = None) -> Path:
    """Reliability diagram per output: observed frequency against mean prediction, before and after the
    calibration (output -> (slope, intercept), by ``method``) when given, with the diagonal of perfect
    calibration."""
    from matplotlib.figure import Figure

    from medsight.core.calibration import apply, ece, reliability

    names = list(samples)[:16]
    columns = min(4, max(1, len(names)))
    rows = math.ceil(len(names) / columns) if names else 1
    fig = Figure(figsize=(3.2 * columns, 3.0 * rows))
    for k, name in enumerate(names):
        axis = fig.add_subplot(rows, columns, k + 1)
        p, y, w = samples[name]
        axis.plot([0, 1], [0, 1], color="0.7", linewidth=1)
        curves = [("as trained", p)]
        if affine:
            slope, intercept = affine.get(name, (1.0, 0.0))
            shown = f"T={1 / slope:.2f}" if method == "temperature" or (method is None and intercept == 0) else (
                f"{slope:.2f}z{intercept:+.2f}")
            curves.append((f"calibrated {shown}", apply(p, (slope, intercept))))
        for label, values in curves:
            points = reliability(values, y, w)
            axis.plot([a for a, _, _ in points], [b for _, b, _ in points], marker="o", markersize=3,
                      label=f"{label} (ECE {ece(values, y, w):.3f})")
        axis.set_title(name, fontsize=9)
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1)
        axis.legend(fontsize=6, loc="upper left")
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    return Path(path)
