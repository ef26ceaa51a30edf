"""The slice viewer page in headless Chromium: the overlay's pixels lie where the label map says, on the
radiological screen layout, derived here from the affine alone (not from the page's own code)."""

from __future__ import annotations

import html.parser
import io
import json
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from medsight.reporting.report import write_report
from medsight.reporting.viewer import Mark, slice_viewer

SHAPE = (40, 36, 24)
#: stored as ITK files often are: array i runs towards the patient's left, j towards posterior, k up
AFFINE = np.array([[-1.0, 0, 0, 20.0], [0, -1.5, 0, 30.0], [0, 0, 2.0, -10.0], [0, 0, 0, 1]])
VIEWPORT = {"width": 1200, "height": 760}
#: views: (the world axis across the screen, the one up it, the one a slider moves along); on screen
#: the larger world coordinate is at the left (R, A) and at the top (A, S)
VIEWS = {"axial": (0, 1, 2), "coronal": (0, 2, 1), "sagittal": (1, 2, 0)}
SUBPLOT = {"axial": "xy", "coronal": "x2y2", "sagittal": "x3y3"}


def volume() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """An image that is 100 on the patient's right half and 200 on the left; a box ("outer") on the right,
    anterior and superior, holding a smaller box ("inner")."""
    image = np.full(SHAPE, 100.0, dtype=np.float32)
    image[SHAPE[0] // 2:] = 200.0
    outer = np.zeros(SHAPE, dtype=bool)
    outer[4:14, 5:15, 13:20] = True
    inner = np.zeros(SHAPE, dtype=bool)
    inner[7:11, 8:12, 15:18] = True
    return image, {"inner": inner, "outer": outer}


def world_axes() -> list[np.ndarray]:
    """The world coordinate (RAS mm) of each voxel centre along each axis (the affine is diagonal)."""
    return [AFFINE[a, a] * np.arange(SHAPE[a]) + AFFINE[a, 3] for a in range(3)]


def page_slice(view: str, world_mm: float) -> int:
    """The page's slice number at a world position: slices count from the patient's left, posterior, inferior."""
    along = VIEWS[view][2]
    return round(float((world_mm - world_axes()[along].min()) / abs(AFFINE[along, along])))


def expected_screen(mask: np.ndarray, view: str, world_mm: float, box: dict) -> np.ndarray:
    """Which screen pixels of the view's plot area should show ``mask``: (height, width) bool."""
    across, up, along = VIEWS[view]
    axes = world_axes()
    size = np.abs(np.diag(AFFINE)[:3])
    width, height = round(box["width"]), round(box["height"])
    # pixel centres -> world: the plot area spans the voxels' outer edges, larger coordinates left and top
    u = axes[across].max() + size[across] / 2 - (np.arange(width) + 0.5) / width * (np.ptp(axes[across]) + size[across])
    v = axes[up].max() + size[up] / 2 - (np.arange(height) + 0.5) / height * (np.ptp(axes[up]) + size[up])
    world = np.zeros((height, width, 3))
    world[..., across], world[..., up], world[..., along] = u[None, :], v[:, None], world_mm
    index = np.rint((world - AFFINE[:3, 3]) / np.diag(AFFINE)[:3]).astype(int)
    inside = np.all((index >= 0) & (index < np.asarray(SHAPE)), axis=-1)
    index = np.clip(index, 0, np.asarray(SHAPE) - 1)
    return inside & mask[index[..., 0], index[..., 1], index[..., 2]]


def coloured(pixels: np.ndarray) -> np.ndarray:
    """Pixels with colour in them: an overlay or a mark over the grey image."""
    rgb = pixels[..., :3].astype(int)
    return rgb.max(axis=-1) - rgb.min(axis=-1) > 40


def agreement(shown: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    """(share of the expected pixels not shown, shown pixels outside them per expected pixel), a pixel's
    width of edge left out (anti-aliasing)."""
    edge = np.zeros_like(expected)
    for axis in (0, 1):
        for shift in (-1, 1):
            edge |= np.roll(expected, shift, axis) != expected
    core, outside = expected & ~edge, ~expected & ~edge
    missing = float((core & ~shown).sum()) / max(int(core.sum()), 1)
    extra = float((outside & shown).sum()) / max(int(expected.sum()), 1)
    return missing, extra


@pytest.fixture(scope="module")
def browser():
    if os.environ.get("MEDSIGHT_NO_BROWSER") == "1":
        pytest.skip("MEDSIGHT_NO_BROWSER=1: the viewer's browser tests are skipped")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("Chromium is not installed: `apt-get install chromium` (.ci/run does), or set "
                    "MEDSIGHT_NO_BROWSER=1 to skip the viewer's browser tests", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install -e '.[dev]'", pytrace=False)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield launched
        launched.close()


class Page:
    """One viewer page in the browser, offline: any request that is not for a file is refused and kept."""

    def __init__(self, browser, path):
        self.page = browser.new_page(viewport=VIEWPORT)
        self.url = path.resolve().as_uri()
        self.remote: list[str] = []
        self.errors: list[str] = []
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.route("**/*", self._route)

    def _route(self, route):
        if route.request.url.startswith(("file:", "data:", "blob:")):
            route.continue_()
        else:
            self.remote.append(route.request.url)
            route.abort()

    def show(self, **state) -> None:
        """Open the page at a state (``axial=12, hide="outer"``) and wait until it is drawn."""
        text = "&".join(f"{k}={v}" for k, v in state.items())
        self.page.goto(f"{self.url}#{text}")
        self.page.wait_for_function("(want) => want.split('&').every((part) => "
                                    "(document.documentElement.dataset.rendered || '').split('&').includes(part))",
                                    arg=text, timeout=20_000)
        assert not self.errors, self.errors

    def view(self, view: str, screenshot: str | None = None) -> tuple[np.ndarray, dict]:
        """The pixels of one view's plot area, and where it lies on the page."""
        box = self.page.locator(f'.nsewdrag[data-subplot="{SUBPLOT[view]}"]').bounding_box()
        shot = self.page.screenshot(path=screenshot)
        pixels = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB"))
        left, top = round(box["x"]), round(box["y"])
        return pixels[top:top + round(box["height"]), left:left + round(box["width"])], box


@pytest.fixture(scope="module")
def segmentation_page(tmp_path_factory):
    image, regions = volume()
    folder = tmp_path_factory.mktemp("viewer")
    return slice_viewer(image, AFFINE, folder / "case_viewer.html", regions=regions, title="synthetic case")


def test_overlay_lies_where_the_label_map_says_and_nowhere_on_a_slice_outside_it(browser, segmentation_page):
    _, regions = volume()
    union = regions["inner"] | regions["outer"]
    inside_z, outside_z = world_axes()[2][16], world_axes()[2][6]
    page = Page(browser, segmentation_page)
    for view, world_mm in (("axial", inside_z), ("coronal", world_axes()[1][10]), ("sagittal", world_axes()[0][9])):
        page.show(**{view: page_slice(view, world_mm)})
        pixels, box = page.view(view, screenshot="/tmp/medsight-viewer-inside.png" if view == "axial" else None)
        expected = expected_screen(union, view, world_mm, box)
        assert expected.sum() > 500, f"{view}: the box should cover a good part of the view"
        missing, extra = agreement(coloured(pixels), expected)
        assert missing < 0.03 and extra < 0.03, f"{view}: {missing:.1%} of the region not drawn, {extra:.1%} drawn outside"
    page.show(axial=page_slice("axial", outside_z))
    pixels, _ = page.view("axial", screenshot="/tmp/medsight-viewer-outside.png")
    assert coloured(pixels).sum() == 0, "overlay drawn on an axial slice the regions do not reach"
    assert not page.remote, f"the page asked the network for {page.remote}"


def test_a_region_toggled_off_disappears_and_the_others_stay(browser, segmentation_page):
    _, regions = volume()
    page = Page(browser, segmentation_page)
    world_mm = world_axes()[2][16]
    page.show(axial=page_slice("axial", world_mm), hide="outer")
    pixels, box = page.view("axial")
    missing, extra = agreement(coloured(pixels), expected_screen(regions["inner"], "axial", world_mm, box))
    assert missing < 0.03 and extra < 0.03, f"{missing:.1%} of inner not drawn, {extra:.1%} drawn outside it"
    page.show(axial=page_slice("axial", world_mm), hide="outer,inner")
    assert coloured(page.view("axial")[0]).sum() == 0


def test_window_level_sets_the_grey_and_the_image_is_shown_radiologically(browser, segmentation_page):
    page = Page(browser, segmentation_page)
    world_mm = world_axes()[2][3]  # below the regions
    page.show(axial=page_slice("axial", world_mm), level=150, width=20)
    right, left = halves(page.view("axial")[0])
    # the patient's right (value 100, below the window) on the screen's left: black; the left (200): white
    assert right.max() < 20 and left.min() > 235
    page.show(axial=page_slice("axial", world_mm), level=100, width=400)
    right, left = halves(page.view("axial")[0])
    assert 110 < np.median(right) < 145 and np.median(left) > 170  # (100 - -100) / 400 and 300 / 400 of white


def halves(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The grey of the view's left and right halves, away from the edges' orientation letters."""
    grey = pixels[..., 0].astype(int)
    height, width = grey.shape
    band = grey[height // 5: 4 * height // 5]
    return band[:, width // 10: 9 * width // 20], band[:, 11 * width // 20: 9 * width // 10]


@pytest.mark.parametrize("damage", ["flipped left-right", "shifted 3 voxels"])
def test_the_pixel_check_catches_an_overlay_in_the_wrong_place(browser, tmp_path, damage):
    image, regions = volume()
    wrong = np.flip(regions["outer"], 0) if damage.startswith("flipped") else np.roll(regions["outer"], 3, axis=1)
    path = slice_viewer(image, AFFINE, tmp_path / "wrong_viewer.html", regions={"outer": wrong})
    page = Page(browser, path)
    world_mm = world_axes()[2][16]
    page.show(axial=page_slice("axial", world_mm))
    pixels, box = page.view("axial")
    missing, extra = agreement(coloured(pixels), expected_screen(regions["outer"], "axial", world_mm, box))
    assert missing > 0.2 and extra > 0.2, f"{damage}: the check should fail ({missing:.1%} missing, {extra:.1%} extra)"


def test_marks_are_circled_on_the_slices_they_cross_only(browser, tmp_path):
    image, _ = volume()
    centre = (30.0, 10.0, 12.0)  # the patient's left, anterior
    path = slice_viewer(image, AFFINE, tmp_path / "scan_viewer.html", marks=[Mark(centre, 6.0, "p 0.90", 0.9)])
    page = Page(browser, path)
    world = AFFINE[:3, :3] @ np.asarray(centre) + AFFINE[:3, 3]
    page.show(axial=page_slice("axial", world[2]))
    pixels, box = page.view("axial", screenshot="/tmp/medsight-viewer-mark.png")
    ys, xs = np.nonzero(coloured(pixels))
    assert len(xs) > 50, "no circle drawn on the slice through the mark's centre"
    size = np.abs(np.diag(AFFINE)[:3])
    axes = world_axes()
    expected_x = (axes[0].max() + size[0] / 2 - world[0]) / (np.ptp(axes[0]) + size[0]) * box["width"]
    expected_y = (axes[1].max() + size[1] / 2 - world[1]) / (np.ptp(axes[1]) + size[1]) * box["height"]
    assert abs(xs.mean() - expected_x) < 3 and abs(ys.mean() - expected_y) < 3
    radius_px = 6.0 / (np.ptp(axes[0]) + size[0]) * box["width"]
    assert abs(np.hypot(xs - xs.mean(), ys - ys.mean()).mean() - radius_px) < 0.15 * radius_px
    page.show(axial=page_slice("axial", world[2] + 8.0))  # beyond the 6 mm radius
    assert coloured(page.view("axial")[0]).sum() == 0


class _References(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.found: list[str] = []
        self.scripts: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script" and "src" in attrs:
            self.scripts.append(attrs["src"])
        self.found += [v for k, v in attrs.items() if k in ("src", "href") and v and re.match(r"\s*(https?:)?//", v)]


def test_the_page_is_self_contained_and_keeps_the_input_unchanged(tmp_path):
    image, regions = volume()
    before = image.copy()
    path = slice_viewer(image, AFFINE, tmp_path / "case_viewer.html", regions=regions)
    np.testing.assert_array_equal(image, before)
    text = path.read_text()
    references = _References()
    references.feed(text)
    assert references.found == [] and references.scripts == ["plotly.min.js"]  # a file beside the page, once
    assert "Plotly.newPlot" in text and "plotly.js v" in (tmp_path / "plotly.min.js").read_text()[:200]


def test_a_large_volume_is_thinned_to_the_caps_keeping_its_geometry(tmp_path):
    image = np.random.default_rng(0).normal(size=(96, 80, 60)).astype(np.float32)  # noise: compresses worst
    affine = np.diag([0.7, 0.7, 2.5, 1.0])
    path = slice_viewer(image, affine, tmp_path / "big_viewer.html", max_voxels=100_000, max_payload_bytes=80_000)
    data = json.loads(re.search(r"<script id='viewer-data' type='application/json'>(.*?)</script>",
                                path.read_text(), re.DOTALL).group(1))
    assert np.prod(data["shape"]) <= 100_000 and len(data["image"]) <= 80_000
    assert data["strides"][0] > 1 and data["strides"][2] == 1  # the fine axes thinned first
    assert data["shape"] == [-(-n // s) for n, s in zip(image.shape, data["strides"])]
    assert data["spacing"] == [0.7, 0.7, 2.5]


def test_mark_centres_follow_the_reorientation_to_ras():
    from medsight.reporting.viewer import _as_ras, _mark_json

    _, _, ras_affine, to_ras = _as_ras(np.zeros(SHAPE), AFFINE)
    centre = _mark_json(Mark((30.0, 10.0, 12.0), 5.0), to_ras)["centre"]
    assert centre == [SHAPE[0] - 1 - 30.0, SHAPE[1] - 1 - 10.0, 12.0]
    np.testing.assert_allclose(ras_affine @ [*centre, 1], AFFINE @ [30.0, 10.0, 12.0, 1])


def test_report_links_each_viewer_and_its_picture_opens_it(tmp_path):
    predictions = tmp_path / "predictions"
    predictions.mkdir()
    (predictions / "BraTS_001_overlay.png").write_bytes(b"")
    (predictions / "BraTS_001_viewer.html").write_text("<html></html>")
    text = write_report(tmp_path).read_text()
    assert '<li><a href="predictions/BraTS_001_viewer.html">BraTS_001</a></li>' in text
    assert '<a href="predictions/BraTS_001_viewer.html" title="open the slice viewer"><img ' \
           'src="predictions/BraTS_001_overlay.png">' in text
