"""Tests of sarf_bundle.foreground: Otsu's threshold, the foreground mask and its blocked per-axis counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sarf_bundle.foreground import foreground_mask, foreground_profiles, otsu_threshold


def noisy_head(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """An ellipsoid with an intensity gradient in Rician noise, cut flat near the top."""
    x, y, z = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    centre, radii = np.array([shape[0] / 2, shape[1] / 2, 0.6 * shape[2]]), 0.4 * np.array(shape)
    inside = (sum(((c - m) / r) ** 2 for c, m, r in zip((x, y, z), centre, radii)) < 1) & (z <= shape[2] - 3)
    noise = np.random.default_rng(seed).normal(0, 4, (2, *shape))
    signal = np.where(inside, 100 + 0.5 * x + y + 0.3 * z, 0.0)
    return np.sqrt((signal + noise[0]) ** 2 + noise[1] ** 2).astype(np.float32)


def test_otsu_separates_two_classes():
    values = torch.cat([torch.full((1000,), 5.0), torch.full((300,), 100.0)])
    assert 5.0 < otsu_threshold(values) < 100.0


def test_foreground_on_both_sides_of_a_zero_background():
    img = torch.zeros(1, 10, 10)
    img[0, 2:5, 2:5], img[0, 5:8, 5:8] = -1.5, 2.0
    assert torch.equal(foreground_mask(img), img[0] != 0)
    assert not foreground_mask(torch.full((1, 4, 4), 3.0)).any()


@pytest.mark.parametrize("permutation", [(0, 1, 2, 3), (0, 3, 1, 2), (0, 2, 3, 1)])
@pytest.mark.parametrize("threshold", ["otsu", 150.0])
@pytest.mark.parametrize("block_voxels", [100, 2**15 - 1, 10**7])
def test_foreground_profiles_equal_mask_sums(permutation, threshold, block_voxels):
    data = torch.as_tensor(noisy_head((30, 26, 22)))[None]
    for img in (data.permute(permutation), data.permute(permutation)[:, 2:-3, 1:, :-4], torch.cat([data, data.flip(1) / 2])):
        mask = foreground_mask(img, threshold)
        profiles = foreground_profiles(img, threshold, block_voxels=block_voxels)
        assert [p.tolist() for p in profiles] == [mask.sum(tuple(d for d in range(3) if d != k)).tolist() for k in range(3)]


def test_foreground_profiles_of_a_slice():
    img = torch.zeros(1, 6, 5)
    img[0, 1:4, 2:5] = 3.0
    assert [p.tolist() for p in foreground_profiles(img, threshold=1.0)] == [[0, 3, 3, 3, 0, 0], [0, 0, 3, 3, 3]]
