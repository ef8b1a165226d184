"""Tests of sarf_bundle.transforms.intensity: NormalizeCentral(d), the same brain with and without a skull."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from synthetic_heads import volume

from sarf_bundle.transforms import NormalizeCentral, NormalizeCentrald

BAD_ARGUMENTS = [
    (NormalizeCentral, {"radius_mm": -1.0}, ValueError, "radius_mm must be positive and finite, got -1.0"),
    (NormalizeCentral, {"radius_mm": "40"}, TypeError, "radius_mm must be a number, got '40'"),
    (NormalizeCentral, {"statistics": "median"}, ValueError, "statistics must be 'robust' or 'moments', got 'median'"),
    (NormalizeCentral, {"slices": [1.5]}, TypeError, r"slices must be a non-empty sequence of slice indices or None, got \[1.5\]"),
    (NormalizeCentral, {"slices": []}, TypeError, r"slices must be a non-empty sequence of slice indices or None, got \[\]"),
]


@pytest.mark.parametrize(("transform", "kwargs", "error", "match"), BAD_ARGUMENTS)
def test_bad_argument(transform, kwargs, error, match):
    with pytest.raises(error, match=match):
        transform(**kwargs)


def slice_stack(values: np.ndarray, pixel_mm: float = 2.0) -> MetaTensor:
    """A ``(S, H, W)`` stack as SelectPercentileSlices returns it: a 3x3 affine of ``pixel_mm`` pixels."""
    return MetaTensor(torch.as_tensor(values, dtype=torch.float32), affine=torch.diag(torch.tensor([pixel_mm, pixel_mm, 1.0])))


def disc_stack(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Slices of 2 mm pixels: a 'brain' of random tissue within 45 mm of the centre, and a bright 'skull' ring outside."""
    rng = np.random.default_rng(seed)
    r = np.hypot(*np.meshgrid(*(np.arange(64) - 31.5,) * 2, indexing="ij")) * 2.0
    brain = np.where(r < 45, rng.gamma(4.0, 50.0, (5, 64, 64)), 0.0)
    skull = np.where((r >= 45) & (r < 55), 900.0, 0.0) + np.where(r >= 55, rng.rayleigh(5.0, (5, 64, 64)), 0.0)
    return brain, brain + skull


@pytest.mark.parametrize("statistics", ["robust", "moments"])
def test_normalize_central_same_brain_with_and_without_skull(statistics):
    brain, whole_head = disc_stack()
    normalize = NormalizeCentral(radius_mm=40.0, statistics=statistics)
    stripped, whole = normalize(slice_stack(brain)), normalize(slice_stack(whole_head))
    inside = torch.as_tensor(brain != 0)
    assert torch.allclose(stripped[inside], whole[inside], atol=1e-5)
    central = stripped[inside & torch.as_tensor(np.hypot(*np.meshgrid(*(np.arange(64) - 31.5,) * 2, indexing="ij")) * 2 <= 40)]
    if statistics == "robust":
        q1, median, q3 = torch.quantile(central.double(), torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
        assert float(median) == pytest.approx(0.0, abs=1e-3) and float(q3 - q1) == pytest.approx(1.349, abs=1e-3)
    else:
        assert float(central.mean()) == pytest.approx(0.0, abs=1e-4) and float(central.std(correction=0)) == pytest.approx(1.0, abs=1e-4)
    # one affine map for every pixel: the zero background of the stripped stack becomes one value, below all tissue
    assert stripped[~inside].unique().numel() == 1 and float(stripped[~inside][0]) < float(stripped[inside].min())


def test_normalize_central_uses_only_the_chosen_slices_and_keeps_the_metadata():
    brain, _ = disc_stack()
    brain[0] *= 10.0  # a slice with other statistics, left out
    img = slice_stack(brain)
    out = NormalizeCentral(radius_mm=40.0, slices=[1, 2, 3, 4])(img)
    assert torch.allclose(out[1:], NormalizeCentral(radius_mm=40.0)(slice_stack(brain[1:])), atol=1e-5)
    assert isinstance(out, MetaTensor) and torch.equal(out.affine, img.affine) and out.dtype == torch.float32
    assert torch.equal(NormalizeCentrald("image", radius_mm=40.0, slices=[1, 2, 3, 4])({"image": img})["image"], out)
    with pytest.raises(KeyError, match="was missing in the data and allow_missing_keys==False"):
        NormalizeCentrald(["image", "t2"])({"image": img})
    assert set(NormalizeCentrald(["image", "t2"], allow_missing_keys=True)({"image": img})) == {"image"}


def test_normalize_central_edge_cases():
    constant = slice_stack(np.full((2, 8, 8), 3.0))
    assert not NormalizeCentral()(constant).any()  # scale 0 counts as 1
    empty = slice_stack(np.zeros((2, 8, 8)))
    assert NormalizeCentral()(empty) is empty
    with pytest.raises(ValueError, match=r"slices \[5\] do not exist in a stack of 2 slices"):
        NormalizeCentral(slices=[5])(constant)
    with pytest.raises(TypeError, match="needs the slice stack of SelectPercentileSlices"):
        NormalizeCentral()(torch.ones(2, 8, 8))
    with pytest.raises(TypeError, match="needs the slice stack of SelectPercentileSlices"):
        NormalizeCentral()(volume(np.ones((4, 4, 4))))
