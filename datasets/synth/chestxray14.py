"""Synthetic chest radiographs in the ChestX-ray14 layout.

Each picture is a frontal chest: torso, two dark lung fields, heart, diaphragm, ribs, clavicles,
per-patient anatomy and exposure, noise. Each of the 14 findings has its own visual signature in
its own region (``FINDING_REGIONS``, in fractions of width and height), so a classifier can learn
it and Grad-CAM has a true place to point at.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import expit

from medsight.datasets.vocabulary import FINDINGS

# (x, y, radius) as fractions of the picture; x to the right of the picture, y downwards.
# The patient's right lung is on the picture's left.
#: the smallest synthetic picture, pixels per side
MIN_PICTURE_PIXELS = 16

FINDING_REGIONS: dict[str, tuple[float, float, float]] = {
    "Nodule": (0.28, 0.27, 0.05),
    "Pneumothorax": (0.74, 0.22, 0.08),
    "Mass": (0.70, 0.38, 0.08),
    "Infiltration": (0.25, 0.42, 0.08),
    "Fibrosis": (0.39, 0.30, 0.06),
    "Emphysema": (0.60, 0.27, 0.06),
    "Pneumonia": (0.75, 0.52, 0.08),
    "Consolidation": (0.26, 0.56, 0.07),
    "Edema": (0.40, 0.46, 0.06),
    "Atelectasis": (0.30, 0.68, 0.07),
    "Effusion": (0.73, 0.772, 0.08),  # the fluid's centre: it fills the base up to a meniscus above
    "Pleural_Thickening": (0.15, 0.45, 0.06),
    "Cardiomegaly": (0.55, 0.62, 0.14),
    "Hernia": (0.45, 0.82, 0.06),
}


@dataclass(frozen=True)
class Anatomy:
    """Per-patient shape and exposure, so follow-up pictures of one patient look alike."""

    shift_x: float
    shift_y: float
    scale: float
    exposure: float
    contrast: float
    rib_phase: float

    @classmethod
    def draw(cls, rng: np.random.Generator) -> Anatomy:
        return cls(
            shift_x=rng.uniform(-0.015, 0.015),
            shift_y=rng.uniform(-0.015, 0.015),
            scale=rng.uniform(0.97, 1.03),
            exposure=rng.uniform(-12, 12),
            contrast=rng.uniform(0.9, 1.1),
            rib_phase=rng.uniform(0, 2 * math.pi),
        )


def _ellipse(x, y, cx, cy, rx, ry) -> np.ndarray:
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2


def _soft(inside_measure: np.ndarray, edge: float = 0.08) -> np.ndarray:
    """1 inside (measure < 1), 0 outside, with a smooth edge."""
    return expit((1.0 - inside_measure) / edge)


def _blur(image: np.ndarray, sigma_px: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(image, sigma_px)


#: larger pictures draw their (smooth) anatomy at this size and enlarge it, adding full-size noise:
#: 1024 px pictures cost 0.1 s instead of 0.45 s, and their PNGs are as large as real ones (~0.6 MB)
SMOOTH_SIZE = 256


def render(findings: set[str], anatomy: Anatomy, size: int, rng: np.random.Generator) -> np.ndarray:
    """One picture, uint8 (size, size), rows top to bottom."""
    if size > SMOOTH_SIZE:
        from scipy.ndimage import zoom

        image = zoom(_anatomy(findings, anatomy, SMOOTH_SIZE, rng), size / SMOOTH_SIZE, order=1, grid_mode=True,
                     mode="nearest")
    else:
        image = _anatomy(findings, anatomy, size, rng)
    image += rng.normal(0, 4.0, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _anatomy(findings: set[str], anatomy: Anatomy, size: int, rng: np.random.Generator) -> np.ndarray:
    """The picture before noise, float (size, size)."""
    coords = (np.arange(size) + 0.5) / size
    y, x = np.meshgrid(coords, coords, indexing="ij")
    x = (x - 0.5 - anatomy.shift_x) / anatomy.scale + 0.5
    y = (y - 0.5 - anatomy.shift_y) / anatomy.scale + 0.5

    image = np.full((size, size), 18.0)
    torso = _soft(_ellipse(x, y, 0.5, 0.56, 0.44, 0.50), 0.05)
    image += 105 * torso
    lungs = np.maximum(
        _soft(_ellipse(x, y, 0.31, 0.45, 0.15, 0.29), 0.06), _soft(_ellipse(x, y, 0.69, 0.45, 0.15, 0.29), 0.06)
    )
    image -= 62 * lungs
    heart_scale = 1.45 if "Cardiomegaly" in findings else 1.0
    heart = _soft(_ellipse(x, y, 0.55, 0.62, 0.11 * heart_scale, 0.10 * heart_scale), 0.07)
    image += 70 * heart * lungs + 25 * heart
    spine = _soft(np.abs((x - 0.5) / 0.035) ** 2, 0.2) * torso
    image += 30 * spine
    diaphragm = _soft(_ellipse(x, y, 0.5, 0.98, 0.46, 0.22), 0.04)
    image += 40 * diaphragm * torso
    # Ribs: bright arcs across the lungs; clavicles across the apices.
    for k in range(8):
        arc = y - (0.20 + 0.075 * k) - 0.06 * (x - 0.5) ** 2 * 4 - 0.004 * math.sin(anatomy.rib_phase + k)
        image += 16 * np.exp(-((arc / 0.010) ** 2)) * lungs
    clavicles = y - 0.17 + 0.08 * np.abs(x - 0.5)
    image += 20 * np.exp(-((clavicles / 0.012) ** 2)) * _soft(np.abs((x - 0.5) / 0.38) ** 2, 0.1)

    for finding in findings:
        image += _signature(finding, x, y, lungs, rng)

    # Soft lung markings: low-frequency texture everywhere in the lungs, as on real films.
    texture = _blur(rng.normal(0, 1, (size, size)), size / 90)
    image += 14 * texture / (texture.std() + 1e-6) * lungs
    return image * anatomy.contrast + anatomy.exposure


def _signature(finding: str, x, y, lungs, rng: np.random.Generator) -> np.ndarray:
    cx, cy, r = FINDING_REGIONS[finding]
    cx += rng.uniform(-0.2, 0.2) * r
    cy += rng.uniform(-0.2, 0.2) * r
    d = _ellipse(x, y, cx, cy, r, r)
    if finding == "Nodule":  # one or two small round opacities
        out = 70 * _soft(_ellipse(x, y, cx, cy, 0.35 * r, 0.35 * r), 0.15)
        return out + 60 * _soft(_ellipse(x, y, cx + 0.5 * r, cy + 0.6 * r, 0.25 * r, 0.25 * r), 0.15)
    if finding == "Mass":  # a large dense round opacity
        return 80 * _soft(_ellipse(x, y, cx, cy, 0.8 * r, 0.75 * r), 0.06)
    if finding == "Pneumothorax":  # no lung markings, darker, with a bright pleural line
        region = _soft(d, 0.05)
        line = np.exp(-(((np.sqrt(d) - 1.0) / 0.08) ** 2))
        return -45 * region + 45 * line
    if finding == "Infiltration":  # patchy, blotchy opacities
        blobs = np.zeros_like(x)
        for _ in range(6):
            ox, oy = rng.uniform(-0.8, 0.8, 2) * r
            blobs = np.maximum(blobs, _soft(_ellipse(x, y, cx + ox, cy + oy, 0.3 * r, 0.25 * r), 0.2))
        return 55 * blobs
    if finding == "Fibrosis":  # reticular lines
        region = _soft(d, 0.1)
        grid = np.cos((x - cx) / r * 9 * math.pi) * np.cos((y - cy) / r * 9 * math.pi)
        return 55 * region * (grid > 0.3)
    if finding == "Emphysema":  # hyperlucent region with dark bullae
        region = _soft(d, 0.1)
        bullae = sum(
            _soft(_ellipse(x, y, cx + ox * r, cy + oy * r, 0.3 * r, 0.3 * r), 0.1)
            for ox, oy in ((-0.4, -0.3), (0.45, 0.2), (-0.1, 0.55))
        )
        return -35 * region - 35 * np.minimum(bullae, 1.0)
    if finding == "Pneumonia":  # a hazy, smooth, ill-defined opacity
        return 60 * np.exp(-d * 1.5)
    if finding == "Consolidation":  # a dense opacity with dark air bronchograms
        dense = 75 * _soft(d, 0.05)
        bronchi = np.exp(-(((y - cy - 0.3 * (x - cx)) / (0.08 * r)) ** 2)) + np.exp(
            -(((y - cy + 0.5 * (x - cx)) / (0.08 * r)) ** 2)
        )
        return dense - 45 * np.minimum(bronchi, 1.0) * _soft(d, 0.05)
    if finding == "Edema":  # perihilar (bat-wing) haze with horizontal septal lines
        haze = 45 * _soft(_ellipse(x, y, cx, cy, 1.2 * r, 0.8 * r), 0.15)
        lines = 30 * (np.sin((y - cy) / r * 6 * math.pi) > 0.6) * _soft(d, 0.1)
        return haze + lines
    if finding == "Atelectasis":  # plate-like horizontal band
        band = np.exp(-(((y - cy - 0.15 * (x - cx)) / (0.18 * r)) ** 2)) * (np.abs(x - cx) < 1.3 * r)
        return 75 * band
    if finding == "Effusion":  # dense fluid filling the base, with a meniscus
        fill = _soft(_ellipse(x, y, cx, cy, 1.5 * r, 1.4 * r), 0.05)
        return 85 * fill * _soft(_ellipse(x, y, cx, cy - 0.9 * r, 1.8 * r, 1.8 * r), 0.1)
    if finding == "Pleural_Thickening":  # a bright band along the lateral chest wall
        band = np.exp(-(((x - cx) / (0.18 * r)) ** 2)) * np.exp(-(((y - cy) / (2.0 * r)) ** 2))
        return 75 * band
    if finding == "Cardiomegaly":  # drawn as an enlarged heart by ``render``; add a dense border
        return 25 * np.exp(-(((np.sqrt(d) - 0.85) / 0.12) ** 2))
    if finding == "Hernia":  # a retrocardiac bubble: gas lucency over fluid density
        bubble = _soft(d, 0.08)
        return 70 * bubble * (y > cy) - 40 * bubble * (y <= cy)
    raise ValueError(f"no signature for {finding}")


def draw_findings(rng: np.random.Generator, no_finding_rate: float = 0.35,
                  choices: tuple[str, ...] = FINDINGS) -> list[str]:
    """Findings of one picture: none at ``no_finding_rate``, else 1-3 distinct findings from ``choices``
    (listed in ``FINDINGS`` order)."""
    if rng.random() < no_finding_rate:
        return []
    count = int(rng.choice([1, 2, 3], p=[0.55, 0.3, 0.15]))
    picks = rng.choice(len(choices), size=min(count, len(choices)), replace=False)
    chosen = {choices[i] for i in picks}
    return [f for f in FINDINGS if f in chosen]
