"""Every reader on files written by SimpleITK, nibabel, pydicom and PIL: values, layout, geometry, errors."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image
from pydicom.uid import JPEG2000Lossless, generate_uid

from medsight.datasets.synth.dicom import write_series, write_xray
from medsight.errors import DataError
from medsight.core.geometry import voxel_to_world
from medsight.io.readers import image_loader, image_loaderd, load

from .test_geometry import oblique_direction

ORIGIN = np.array([-120.5, 80.25, -300.0])
SPACING = np.array([0.7, 0.8, 2.5])


def ramp(shape=(12, 10, 6)) -> np.ndarray:
    """Values that encode their own index: v = 100 x + 10 y + z."""
    x, y, z = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return (100 * x + 10 * y + z).astype(np.int16)


def write_itk(path: Path, volume_xyz: np.ndarray, direction=np.eye(3)) -> sitk.Image:
    image = sitk.GetImageFromArray(volume_xyz.transpose(2, 1, 0))
    image.SetOrigin(tuple(ORIGIN))
    image.SetSpacing(tuple(SPACING))
    image.SetDirection(tuple(np.asarray(direction).ravel()))
    sitk.WriteImage(image, str(path))
    return image


@pytest.mark.parametrize("suffix", [".mhd", ".mha", ".nrrd"])
def test_itk_formats_load_indexed_xyz_with_itk_geometry(tmp_path, suffix):
    volume = ramp()
    image = write_itk(tmp_path / f"vol{suffix}", volume, oblique_direction())
    loaded = load(tmp_path / f"vol{suffix}")
    assert loaded.shape == (1, 12, 10, 6)
    np.testing.assert_array_equal(loaded[0].numpy(), volume)
    np.testing.assert_allclose(loaded.meta["spacing"], SPACING)
    np.testing.assert_allclose(loaded.meta["origin"], ORIGIN)
    np.testing.assert_allclose(loaded.meta["direction"], oblique_direction(), atol=1e-12)
    index = (7.0, 2.5, 4.0)
    np.testing.assert_allclose(
        voxel_to_world(index, loaded.affine.numpy(), "LPS")[0], image.TransformContinuousIndexToPhysicalPoint(index),
        atol=1e-6,
    )


def test_nifti_loads_with_nibabel_affine(tmp_path):
    affine = np.array([[-1.0, 0, 0, 10], [0, -1.2, 0, 239], [0, 0, 2.0, -5], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(ramp(), affine), str(tmp_path / "vol.nii.gz"))
    loaded = load(tmp_path / "vol.nii.gz")
    np.testing.assert_array_equal(loaded[0].numpy(), ramp())
    np.testing.assert_allclose(loaded.affine.numpy(), affine)
    np.testing.assert_allclose(loaded.meta["spacing"], [1.0, 1.2, 2.0])
    np.testing.assert_allclose(loaded.meta["origin"], [-10, -239, -5])  # LPS view of the RAS translation


def test_several_files_load_as_channels_and_must_share_shape_and_geometry(tmp_path):
    for name in ("a", "b"):
        nib.save(nib.Nifti1Image(ramp(), np.eye(4)), str(tmp_path / f"{name}.nii.gz"))
    assert load([tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"]).shape == (2, 12, 10, 6)
    nib.save(nib.Nifti1Image(ramp()[:-1], np.eye(4)), str(tmp_path / "short.nii.gz"))
    with pytest.raises(DataError) as error:
        load([tmp_path / "a.nii.gz", tmp_path / "short.nii.gz"])
    assert str(error.value) == f"{tmp_path / 'short.nii.gz'}: shape (11, 10, 6) differs from (12, 10, 6) of a.nii.gz, " \
                               "the first file of this image"
    shifted = np.eye(4)
    shifted[0, 3] = 5.0
    nib.save(nib.Nifti1Image(ramp(), shifted), str(tmp_path / "moved.nii.gz"))
    with pytest.raises(DataError, match=r"moved.nii.gz: geometry \(affine\) differs from that of a.nii.gz"):
        load([tmp_path / "a.nii.gz", tmp_path / "moved.nii.gz"])
    # Among three or more, the odd file out is named, wherever it stands in the list.
    with pytest.raises(DataError, match=r"short.nii.gz: shape \(11, 10, 6\) differs from \(12, 10, 6\) of a.nii.gz$"):
        load([tmp_path / "short.nii.gz", tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"])
    with pytest.raises(DataError, match=r"moved.nii.gz: geometry \(affine\) differs from that of a.nii.gz"):
        load([tmp_path / "moved.nii.gz", tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"])



def test_channel_files_are_read_into_one_array_without_a_second_copy(tmp_path):
    """Four float32 modalities of a case: each file's voxels go straight into its channel. The old way held
    every file's array and their ``np.stack`` copy at once: 2.01x the case's voxels here, against 1.56x now (the
    rest is one file's voxels and nibabel's buffers while it is read). Values and order unchanged, int16 files
    (BraTS 2021-2023) included."""
    import tracemalloc

    rng = np.random.default_rng(0)
    shape = (64, 64, 40)
    volumes = [rng.normal(size=shape).astype(np.float32) for _ in range(3)] + \
        [rng.integers(-1000, 3000, size=shape).astype(np.int16)]
    names = []
    for k, volume in enumerate(volumes):
        names.append(tmp_path / f"m{k}.nii.gz")
        nib.save(nib.Nifti1Image(volume, np.eye(4)), str(names[-1]))
    loader = image_loader(ensure_channel_first=True)
    loader(names)  # imports and first-use buffers out of the measure
    tracemalloc.start()
    try:
        loaded = loader(names)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    stacked = np.stack([v.astype(np.float32) for v in volumes])
    np.testing.assert_array_equal(loaded.numpy(), stacked)
    assert loaded.dtype == torch.float32
    assert peak < 1.75 * stacked.nbytes, f"peak {peak / stacked.nbytes:.2f}x the loaded case"

def test_dicom_series_with_shuffled_file_names_is_ordered_by_position(tmp_path):
    volume = ramp((16, 12, 8)).astype(np.float32) - 500
    names = [f"slice_{n}.dcm" for n in np.random.default_rng(0).permutation(8)]
    write_series(volume, ORIGIN, SPACING, oblique_direction(), tmp_path / "series", file_names=names)
    loaded = load(tmp_path / "series")
    np.testing.assert_array_equal(loaded[0].numpy(), volume)
    np.testing.assert_allclose(loaded.meta["spacing"], SPACING, atol=1e-5)
    np.testing.assert_allclose(loaded.meta["origin"], ORIGIN, atol=1e-4)
    np.testing.assert_allclose(loaded.meta["direction"], oblique_direction(), atol=1e-5)


def test_folder_with_two_series_reads_the_longer_one_or_the_one_asked_for(tmp_path):
    folder = tmp_path / "study"
    long_uid = write_series(ramp((8, 8, 6)).astype(np.float32), ORIGIN, SPACING, np.eye(3), folder,
                            file_names=[f"a{k}.dcm" for k in range(6)])
    scout = np.full((8, 8, 2), 7.0, dtype=np.float32)
    scout_uid = write_series(scout, ORIGIN, SPACING, np.eye(3), folder, file_names=["b0.dcm", "b1.dcm"])
    default = load(folder)
    assert default.shape == (1, 8, 8, 6) and default.meta["series_uid"] == long_uid
    chosen = image_loader(series_uid=scout_uid, ensure_channel_first=True)(folder)
    assert chosen.shape == (1, 8, 8, 2) and float(chosen.max()) == 7.0
    with pytest.raises(DataError, match="no series with SeriesInstanceUID 1.2.3"):
        image_loader(series_uid="1.2.3")(folder)


def test_series_with_a_missing_slice_is_refused_naming_folder_and_gap(tmp_path):
    folder = tmp_path / "gappy"
    write_series(ramp((8, 8, 6)).astype(np.float32), ORIGIN, SPACING, np.eye(3), folder, slices=[0, 1, 2, 4, 5])
    with pytest.raises(DataError) as error:
        load(folder)
    message = str(error.value)
    assert message.startswith(f"{folder}: series ")
    assert "1 missing slice(s) between -295.00 mm (IM0002.dcm) and -290.00 mm (IM0004.dcm)" in message


def test_series_with_uneven_spacing_is_refused(tmp_path):
    folder = tmp_path / "uneven"
    uid = generate_uid()
    volume = ramp((8, 8, 4)).astype(np.float32)
    write_series(volume[:, :, :3], ORIGIN, SPACING, np.eye(3), folder, series_uid=uid)
    shifted = ORIGIN + [0, 0, 3 * 2.5 + 0.6]  # the fourth slice 0.6 mm too far
    write_series(volume[:, :, 3:], shifted, SPACING, np.eye(3), folder, series_uid=uid, file_names=["IMlast.dcm"])
    with pytest.raises(DataError, match="inconsistent slice spacing"):
        load(folder)


def test_series_with_a_slice_of_another_size_is_refused_naming_it(tmp_path):
    folder = tmp_path / "mixed"
    uid = generate_uid()
    write_series(ramp((8, 8, 3)).astype(np.float32), ORIGIN, SPACING, np.eye(3), folder, series_uid=uid)
    write_series(ramp((6, 8, 1)).astype(np.float32), ORIGIN + [0, 0, 3 * 2.5], SPACING, np.eye(3), folder,
                 series_uid=uid, file_names=["IModd.dcm"])
    with pytest.raises(DataError, match=r"1 slice\(s\) of another size \(IModd.dcm is 8 x 6, the others 8 x 8\)"):
        load(folder)


def test_jpeg2000_compressed_series_decodes(tmp_path):
    volume = np.clip(np.random.default_rng(1).normal(0, 300, (64, 64, 3)), -1000, 2000).round().astype(np.float32)
    write_series(volume, ORIGIN, SPACING, np.eye(3), tmp_path / "j2k", transfer_syntax=JPEG2000Lossless)
    np.testing.assert_array_equal(load(tmp_path / "j2k")[0].numpy(), volume)


def test_single_dicom_file_reads_as_a_one_slice_volume(tmp_path):
    write_series(ramp((8, 8, 1)).astype(np.float32), ORIGIN, SPACING, np.eye(3), tmp_path / "one")
    loaded = load(tmp_path / "one" / "IM0000.dcm")
    assert loaded.shape == (1, 8, 8, 1)
    np.testing.assert_allclose(loaded.meta["origin"], ORIGIN, atol=1e-4)


def test_xray_monochrome1_is_inverted_after_rescale_and_window(tmp_path):
    stored = np.array([[0, 1000, 2000, 3000]], dtype=np.uint16)  # 12-bit
    write_xray(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1", rescale=(2.0, -100.0))
    values = load(tmp_path / "m1.dcm", kind="picture")[0].numpy()
    modality = stored * 2.0 - 100.0
    low, high = -100.0, 4095 * 2.0 - 100.0
    np.testing.assert_allclose(values, (low + high) - modality)
    assert values[0, 0] > values[0, -1]  # stored 0 is white in MONOCHROME1


def test_xray_window_is_applied_to_modality_values(tmp_path):
    stored = np.array([[100, 1100, 2100, 4000]], dtype=np.uint16)
    write_xray(tmp_path / "w.dcm", stored, rescale=(1.0, -100.0), window=(1000.0, 1000.0))
    values = load(tmp_path / "w.dcm", kind="picture")[0].numpy()
    # PS3.3 C.11.2.1.2 linear window on modality values 0, 1000, 2000, 3900 into the 12-bit output range.
    low, high = -100.0, 3995.0
    expected = np.clip(((np.array([0.0, 1000, 2000, 3900]) - 999.5) / 999 + 0.5), 0, 1) * (high - low) + low
    np.testing.assert_allclose(values[0], expected, rtol=1e-5)


def test_xray_dicom_is_rows_by_columns_like_the_png(tmp_path):
    stored = np.zeros((6, 9), dtype=np.uint16)
    stored[1, 7] = 4000
    write_xray(tmp_path / "x.dcm", stored)
    Image.fromarray(stored.astype(np.uint8) * 0 + (stored > 0).astype(np.uint8) * 255).save(tmp_path / "x.png")
    from_dicom = load(tmp_path / "x.dcm", kind="picture")[0].numpy()
    from_png = load(tmp_path / "x.png", kind="picture")[0].numpy()
    assert from_dicom.shape == from_png.shape == (6, 9)
    assert np.unravel_index(from_dicom.argmax(), (6, 9)) == np.unravel_index(from_png.argmax(), (6, 9)) == (1, 7)


def test_png_16_bit_keeps_its_values(tmp_path):
    values = np.array([[0, 1, 4095], [30000, 65535, 12]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "p16.png")
    loaded = load(tmp_path / "p16.png", kind="picture")[0].numpy()
    np.testing.assert_array_equal(loaded, values)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "P"])
def test_colour_pictures_become_gray(tmp_path, mode):
    gray = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (5, 1))
    Image.fromarray(gray).convert(mode).save(tmp_path / "c.png")
    loaded = load(tmp_path / "c.png", kind="picture")
    assert loaded.shape == (1, 5, 25)
    np.testing.assert_allclose(loaded[0].numpy(), gray, atol=1)


def test_dictionary_loader_uses_the_same_readers(tmp_path):
    write_itk(tmp_path / "v.nrrd", ramp())
    out = image_loaderd("image", ensure_channel_first=True)({"image": str(tmp_path / "v.nrrd")})
    np.testing.assert_array_equal(out["image"][0].numpy(), ramp())


@pytest.mark.parametrize("name, kind", [("gone.nii.gz", "volume"), ("gone.mhd", "volume"), ("gone.png", "picture"),
                                        ("gone.dcm", "picture")])
def test_missing_file_is_a_data_error_naming_it(tmp_path, name, kind):
    with pytest.raises(DataError) as error:
        load(tmp_path / name, kind=kind)
    assert str(error.value) == f"{tmp_path / name}: file not found"


@pytest.mark.parametrize("name, kind", [("bad.nii.gz", "volume"), ("bad.nrrd", "volume"), ("bad.png", "picture"),
                                        ("bad.dcm", "picture")])
def test_damaged_file_is_a_data_error_naming_it(tmp_path, name, kind):
    (tmp_path / name).write_bytes(b"\x89 this is not an image" * 10)
    with pytest.raises(DataError) as error:
        load(tmp_path / name, kind=kind)
    assert str(error.value).startswith(f"{tmp_path / name}: ")
