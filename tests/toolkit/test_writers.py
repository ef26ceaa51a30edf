"""Writers: atomic files, NIfTI on the source grid as ITK-based viewers see it, CSV, pictures."""

import os

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from medsight.datasets.synth.dicom import write_series
from medsight.io.pictures import heatmap_png, marks_png, volume_overlay_png
from medsight.io.readers import load
from medsight.io.writers import atomic_path, write_csv, write_nifti

from .test_geometry import oblique_direction


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("previous")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "previous"
    assert os.listdir(tmp_path) == ["out.txt"]  # no temporary file left behind


def test_atomic_write_replaces_on_success(tmp_path):
    target = tmp_path / "sub" / "out.csv"
    write_csv([{"a": 1, "b": 0.125}], target, ["a", "b"])
    assert target.read_text().splitlines() == ["a,b", "1,0.125"]


def test_mask_written_for_a_dicom_series_lands_on_the_same_physical_points_in_itk(tmp_path):
    """ITK-SNAP and 3D Slicer read NIfTI through ITK: compare ITK's physical points of both files."""
    volume = np.zeros((20, 16, 6), dtype=np.float32) - 1000
    volume[12:15, 4:7, 3] = 100
    origin = np.array([-100.0, 50.0, -200.0])
    write_series(volume, origin, (0.7, 0.9, 2.5), oblique_direction(), tmp_path / "dicom")
    image = load(tmp_path / "dicom")
    mask = (image[0].numpy() > 0).astype(np.uint8)
    write_nifti(mask, image.affine.numpy(), tmp_path / "mask.nii.gz")

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "dicom")))
    dicom = reader.Execute()
    nifti = sitk.ReadImage(str(tmp_path / "mask.nii.gz"))
    assert nifti.GetSize() == dicom.GetSize()
    for index in [(0, 0, 0), (13, 5, 3), (19, 15, 5)]:
        np.testing.assert_allclose(nifti.TransformIndexToPhysicalPoint(index),
                                   dicom.TransformIndexToPhysicalPoint(index), atol=1e-3)
    nifti_array = sitk.GetArrayFromImage(nifti)  # [z, y, x]
    dicom_array = sitk.GetArrayFromImage(dicom)
    np.testing.assert_array_equal(nifti_array > 0, dicom_array > 0)


def test_nifti_with_reference_keeps_the_inputs_header(tmp_path):
    affine = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 239], [0, 0, 1.0, 0], [0, 0, 0, 1]])
    source = nib.Nifti1Image(np.zeros((8, 9, 10), dtype=np.int16), affine)
    source.set_qform(affine, code=2)
    source.set_sform(affine, code=1)
    source.header["descrip"] = b"scanner X"
    nib.save(source, str(tmp_path / "flair.nii.gz"))
    labels = np.zeros((8, 9, 10), dtype=np.uint8)
    labels[2, 3, 4] = 4
    write_nifti(labels, affine, tmp_path / "seg.nii.gz", reference=tmp_path / "flair.nii.gz")
    out = nib.load(str(tmp_path / "seg.nii.gz"))
    np.testing.assert_allclose(out.affine, affine)
    assert int(out.header["qform_code"]) == 2 and int(out.header["sform_code"]) == 1
    assert out.header["descrip"].tobytes().startswith(b"scanner X")
    assert out.get_data_dtype() == np.uint8
    assert np.asarray(out.dataobj)[2, 3, 4] == 4


def test_nifti_with_reference_of_another_shape_is_refused(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), dtype=np.int16), np.eye(4)), str(tmp_path / "ref.nii.gz"))
    with pytest.raises(Exception, match=r"prediction shape \(5, 4, 4\) differs"):
        write_nifti(np.zeros((5, 4, 4)), np.eye(4), tmp_path / "x.nii.gz", reference=tmp_path / "ref.nii.gz")


def test_overlay_picture_shows_the_mask_contour_in_its_colour(tmp_path):
    image = np.random.default_rng(0).normal(100, 10, (40, 40, 20)).astype(np.float32)
    mask = np.zeros(image.shape, dtype=bool)
    mask[25:32, 10:18, 8:12] = True
    path = volume_overlay_png(image, np.diag([-1.0, -1.0, 2.0, 1.0]), tmp_path / "o.png", {"WT": mask})
    picture = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert picture.shape == (440, 1200, 3)
    red = (picture[..., 0] > 200) & (picture[..., 1] < 100) & (picture[..., 2] < 100)
    assert red.sum() > 50  # the WT contour is drawn in the first region colour


def _content_box(rgb: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the non-black pixels: where the picture was drawn."""
    rows, cols = np.nonzero(rgb.max(axis=-1) > 12)
    return rows.min(), rows.max(), cols.min(), cols.max()


def _panels(rgb: np.ndarray) -> list[np.ndarray]:
    """The side-by-side panels of a figure: runs of columns holding non-black pixels."""
    used = (rgb.max(axis=-1) > 12).any(axis=0)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], used.astype(int), [0]])))
    return [rgb[:, start:stop] for start, stop in zip(edges[::2], edges[1::2]) if stop - start > 20]


def test_heatmap_is_drawn_over_the_picture_where_its_values_are_high(tmp_path):
    picture = np.tile(np.linspace(50, 200, 32), (32, 1))
    heat = np.zeros((32, 32))
    heat[2:10, 4:12] = 1.0  # upper left
    path = heatmap_png(picture, heat, tmp_path / "h.png", title="")
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
    plain, right = _panels(rgb)  # the second panel carries the heatmap
    top, bottom, left, rightmost = _content_box(right)
    hot = right[..., 0] - right[..., 2] > 40  # reddish: the top of the jet colour map
    rows, cols = np.nonzero(hot)
    assert len(rows) > 100
    centre_row = (rows.mean() - top) / (bottom - top) * 32
    centre_col = (cols.mean() - left) / (rightmost - left) * 32
    assert abs(centre_row - 6) < 2.5 and abs(centre_col - 8) < 2.5
    assert not (plain[..., 0] - plain[..., 2] > 40).any()  # the first panel is the picture alone


def test_a_mark_is_circled_where_it_is_on_the_slice(tmp_path):
    axial = np.full((40, 40), -800.0)  # [x, y]: shown with x across and y down
    path = marks_png(axial, (1.0, 1.0), [(30, 10, 4, "")], tmp_path / "m.png", title="")
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
    top, bottom, left, right = _content_box(rgb)
    yellow = (rgb[..., 0] > 200) & (rgb[..., 1] > 150) & (rgb[..., 2] < 80)
    rows, cols = np.nonzero(yellow)
    assert len(rows) > 20
    x = (cols.mean() - left) / (right - left) * 40 - 0.5
    y = (rows.mean() - top) / (bottom - top) * 40 - 0.5
    assert abs(x - 30) < 1.5 and abs(y - 10) < 1.5
    radius = (cols.max() - cols.min()) / 2 / (right - left) * 40
    assert abs(radius - 4) < 1.0


# -- one command per output folder -------------------------------------------------------------------------
_HOLDER = """
import sys
from medsight.io.writers import exclusive
with exclusive(sys.argv[1], "train"):
    print("held", flush=True)
    sys.stdin.readline()
"""


def _hold_in_another_process(folder):
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(folder)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    return holder


def test_a_second_command_on_a_held_folder_is_refused_at_once(tmp_path):
    from medsight.errors import DataError
    from medsight.io.writers import exclusive

    with exclusive(tmp_path / "out", "predict") as folder:
        assert folder == tmp_path / "out" and (folder / ".medsight.lock").is_file()
        with pytest.raises(DataError) as refused:
            with exclusive(tmp_path / "out", "predict"):
                pass
        assert str(refused.value) == (f"{tmp_path / 'out'}: another medsight predict is writing to this folder now; "
                                      "wait for it to finish or choose another --out")
    with exclusive(tmp_path / "out", "predict"):  # released: the next command takes it
        pass


@pytest.mark.parametrize("ending", ["finishes", "is killed"])
def test_the_folder_is_held_while_another_process_runs_and_free_when_it_ends(tmp_path, ending):
    import fcntl

    from medsight.errors import DataError
    from medsight.io.writers import exclusive

    holder = _hold_in_another_process(tmp_path)
    try:
        with pytest.raises(DataError, match="another medsight train is writing to this folder now"):
            with exclusive(tmp_path, "train"):
                pass
        with open(tmp_path / ".medsight.lock", "a+") as handle:  # the same lock as a plain flock sees it
            with pytest.raises(BlockingIOError):
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        if ending == "finishes":
            holder.communicate("\n", timeout=30)
        else:
            holder.kill()
            holder.wait(timeout=30)
    with exclusive(tmp_path, "train"):
        pass
