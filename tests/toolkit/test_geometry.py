"""World <-> voxel conversions against SimpleITK's own physical-point maths."""

import numpy as np
import pytest
import SimpleITK as sitk

from medsight.core.geometry import affine_from_itk, itk_from_affine, voxel_to_world, world_to_voxel

ORIGIN = (-183.25, 97.5, -312.75)
SPACING = (0.703, 0.86, 2.5)


def oblique_direction() -> np.ndarray:
    """A rotation of 20 degrees about z then 15 about x: no axis lines up with the world."""
    a, b = np.radians(20), np.radians(15)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def itk_image(direction) -> sitk.Image:
    image = sitk.Image(40, 30, 20, sitk.sitkInt16)
    image.SetOrigin(ORIGIN)
    image.SetSpacing(SPACING)
    image.SetDirection(tuple(np.asarray(direction).ravel()))
    return image


@pytest.mark.parametrize("direction", [np.eye(3), oblique_direction(), np.diag([-1.0, 1.0, -1.0])])
def test_voxel_to_world_agrees_with_itk_in_lps(direction):
    image = itk_image(direction)
    affine = affine_from_itk(image.GetOrigin(), image.GetSpacing(), image.GetDirection())
    index = np.array([[3.25, 17.5, 11.0], [0, 0, 0], [39, 29, 19]])
    ours = voxel_to_world(index, affine, space="LPS")
    theirs = np.array([image.TransformContinuousIndexToPhysicalPoint(tuple(map(float, i))) for i in index])
    np.testing.assert_allclose(ours, theirs, atol=1e-9)


def test_world_to_voxel_round_trip_on_oblique_direction_within_1e_4_mm():
    affine = affine_from_itk(ORIGIN, SPACING, oblique_direction())
    world_lps = np.array([[-150.0, 110.0, -290.0], [-170.3, 101.9, -300.1]])
    index = world_to_voxel(world_lps, affine, space="LPS")
    back = voxel_to_world(index, affine, space="LPS")
    assert np.abs(back - world_lps).max() < 1e-4
    image = itk_image(oblique_direction())
    expected = [image.TransformPhysicalPointToContinuousIndex(tuple(p)) for p in world_lps]
    np.testing.assert_allclose(index, expected, atol=1e-9)


def test_ras_and_lps_differ_by_negated_x_and_y():
    affine = affine_from_itk(ORIGIN, SPACING, oblique_direction())
    index = [5.0, 6.0, 7.0]
    lps = voxel_to_world(index, affine, space="LPS")[0]
    ras = voxel_to_world(index, affine, space="RAS")[0]
    np.testing.assert_allclose(ras, lps * [-1, -1, 1])
    np.testing.assert_allclose(world_to_voxel(ras, affine, space="RAS")[0], index, atol=1e-9)


def test_itk_from_affine_inverts_affine_from_itk():
    origin, spacing, direction = itk_from_affine(affine_from_itk(ORIGIN, SPACING, oblique_direction()))
    np.testing.assert_allclose(origin, ORIGIN, atol=1e-12)
    np.testing.assert_allclose(spacing, SPACING, atol=1e-12)
    np.testing.assert_allclose(direction, oblique_direction(), atol=1e-12)


def test_unknown_space_is_refused():
    with pytest.raises(ValueError, match="space must be"):
        world_to_voxel([0, 0, 0], np.eye(4), space="XYZ")
