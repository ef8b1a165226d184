"""Tests of sarf_bundle.transforms.brain_mask: SkullStrip(d), RandSkullStripd and the arguments of BrainMask(d)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from synthetic_heads import SPACING, head, volume

from sarf_bundle.transforms import BrainMask, BrainMaskd, RandSkullStripd, SkullStrip, SkullStripd

BAD_ARGUMENTS = [
    (BrainMaskd, {"keys": "image", "stripper": "deepbet"}, TypeError, "stripper must be a SkullStripper or None, got str"),
    (BrainMask, {"stripper": None}, TypeError, "stripper must be a SkullStripper, got NoneType"),
]


@pytest.mark.parametrize(("transform", "kwargs", "error", "match"), BAD_ARGUMENTS)
def test_bad_argument(transform, kwargs, error, match):
    with pytest.raises(error, match=match):
        transform(**kwargs)


def test_skull_strip_zeros_outside_mask_and_keeps_inside():
    image = volume(np.random.default_rng(0).uniform(1, 2, (6, 6, 6)))
    mask = volume((np.arange(6)[:, None, None] < 3) * np.ones((6, 6, 6)))
    stripped = SkullStrip()(image, mask)
    assert torch.equal(stripped[:, :3], image[:, :3]) and not stripped[:, 3:].any()


def test_skull_strip_shape_mismatch():
    with pytest.raises(ValueError, match=r"image shape \(1, 6, 6, 6\) and brain mask shape \(1, 6, 6, 5\) differ"):
        SkullStrip()(volume(np.ones((6, 6, 6))), volume(np.ones((6, 6, 5))))


def test_skull_strip_affine_mismatch():
    with pytest.raises(ValueError, match="image affine .* and brain mask affine .* differ"):
        SkullStrip()(volume(np.ones((6, 6, 6))), volume(np.ones((6, 6, 6)), (2.0, 1.0, 1.0)))


def test_skull_strip_needs_mask():
    with pytest.raises(ValueError, match=r"SkullStrip needs a brain mask on the image grid, got None"):
        SkullStripd("image")({"image": volume(np.ones((6, 6, 6)))})


def test_rand_skull_strip_is_skull_strip_or_nothing():
    data = {key: volume(array, SPACING) for key, array in head((20, 24, 20), SPACING, top=18).items()}
    assert torch.equal(RandSkullStripd("image", prob=1.0)(data)["image"], SkullStripd("image")(data)["image"])
    assert RandSkullStripd("image", prob=0.0)(data)["image"] is data["image"]
    strip = RandSkullStripd("image", prob=0.5)
    strip.set_random_state(0)
    stripped = [bool((strip(data)["image"] == 0).sum() > (data["image"] == 0).sum()) for _ in range(200)]
    assert 70 < sum(stripped) < 130
