"""Shared transform builders: the behaviours tasks rely on."""

import numpy as np
import torch
from monai.transforms import Compose

from medsight.data import transforms as T
def test_constant_background_is_shifted_to_zero_and_cropping_then_keeps_the_whole_brain():
    brain = torch.zeros(1, 20, 20, 20)
    brain[0, 5:15, 4:16, 6:14] = torch.randn(10, 12, 8)  # z-scored: half the brain is negative
    image = torch.where(brain != 0, brain, torch.tensor(-3.16))
    out = Compose([*T.background_to_zero("image"), *T.crop_foreground("image")])({"image": image.clone()})
    assert out["image"].shape == (1, 10, 12, 8)
    np.testing.assert_allclose(out["image"][0], brain[0, 5:15, 4:16, 6:14] + 3.16, atol=1e-5)


def test_background_shift_leaves_zero_background_and_textured_borders_alone():
    image = torch.zeros(1, 10, 10, 10)
    image[0, 3:7, 3:7, 3:7] = 5.0
    same = T.background_to_zero("image")[0]({"image": image.clone()})["image"]
    assert torch.equal(same, image)
    noisy = torch.randn(1, 10, 10, 10)  # no constant background (not skull-stripped)
    assert torch.equal(T.background_to_zero("image")[0]({"image": noisy.clone()})["image"], noisy)


def test_percentile_range_matches_monai_per_channel_and_leaves_a_flat_picture_at_zero():
    from monai.data import MetaTensor
    from monai.transforms import ScaleIntensityRangePercentilesd

    picture = MetaTensor(torch.rand(2, 64, 48) * torch.tensor([1000.0, 4.0])[:, None, None])
    monai = ScaleIntensityRangePercentilesd("image", lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True,
                                            channel_wise=True)({"image": picture.clone()})["image"]
    ours = T.percentile_range("image", lower=0.5, upper=99.5)[0]({"image": picture})["image"]
    assert isinstance(ours, MetaTensor) and not torch.equal(ours, picture)
    torch.testing.assert_close(ours.as_tensor(), monai.as_tensor(), atol=1e-6, rtol=0)
    flat = T.percentile_range("image")[0]({"image": torch.full((1, 8, 8), 5.0)})["image"]
    assert torch.equal(flat, torch.zeros(1, 8, 8))
