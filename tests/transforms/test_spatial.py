"""Tests of sarf_bundle.transforms.spatial: the cranio-caudal crop, the slice selection and resampling, the in-place orientation."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Orientationd
from nibabel.orientations import axcodes2ornt, ornt_transform
from synthetic_heads import KEYS, SPACING, circle_slab, head, load, ras_affine, volume

from sarf_bundle.transforms import (
    CropCranioCaudal,
    CropCranioCaudald,
    OrientationInPlaced,
    SelectPercentileSlices,
    SelectPercentileSlicesd,
    SkullStripd,
)


@pytest.mark.parametrize(("depth", "top", "start"), [(80, 70, 15), (36, 30, 0)])  # 200 mm: 56 x 2.5 mm kept; 90 mm
def test_crop_keeps_top_140_mm_and_crops_mask_identically(tmp_path, depth, top, start):
    arrays = head((40, 48, depth), SPACING, top=top)
    data = load(tmp_path, arrays, ras_affine(SPACING))
    cropped = CropCranioCaudald(KEYS, source_key="image", extent_mm=140.0)(data)
    slab = slice(start, top + 1)
    for key in KEYS:
        assert torch.equal(cropped[key].as_tensor(), data[key].as_tensor()[..., slab])
        assert cropped[key].affine[2, 3] == pytest.approx(float(data[key].affine[2, 3]) + start * SPACING[2])


def test_crop_ignores_noise_above_the_head():
    data = head((40, 48, 80), SPACING, top=70)["image"]
    data[5, 5, 78] = 500.0
    assert CropCranioCaudal().compute_slab(volume(data, SPACING)) == slice(15, 71)


def test_crop_ignores_a_bright_edge_slice_above_the_head():
    data = head((40, 48, 80), SPACING, top=70)["image"]
    data[5:35, 5:15, 79] = 500.0  # an artefact over a fifth of the last slice, background in between
    assert CropCranioCaudal().compute_slab(volume(data, SPACING)) == slice(15, 71)


@pytest.mark.parametrize("percentiles", [(20, 30, 40, 50, 60, 70, 80), (0, 12.5, 100)])
def test_slices_at_percentile_positions(tmp_path, percentiles):
    n_z = 36
    ramp = np.broadcast_to(np.arange(1, n_z + 1, dtype=np.float32), (20, 20, n_z)).copy()
    data = load(tmp_path, {"image": ramp}, ras_affine((1.5, 1.5, 2.0)))
    slices = SelectPercentileSlices(percentiles, extent_mm=(n_z - 1) * 2.0, size=16, fov_mm=None)(data["image"])
    expected = 1 + torch.tensor(percentiles, dtype=torch.float32) / 100 * (n_z - 1)
    assert torch.allclose(slices, expected[:, None, None].expand(-1, 16, 16), atol=1e-5)


def test_slice_levels_are_millimetres_below_the_top_whatever_the_coverage():
    """A volume covering 60 mm gets the slices of a 140 mm one at the same depths; deeper ones take its lowest slice."""
    depth_mm = np.arange(140, -1, -2.0)  # 71 slices of 2 mm, the top last
    full = volume(np.broadcast_to(depth_mm, (12, 12, 71)).astype(np.float32).copy(), (1.5, 1.5, 2.0))
    short = volume(np.broadcast_to(depth_mm[-31:], (12, 12, 31)).astype(np.float32).copy(), (1.5, 1.5, 2.0))
    select = SelectPercentileSlices(extent_mm=140.0, size=8, fov_mm=None)
    expected = [112, 98, 84, 70, 56, 42, 28]
    assert select(full)[:, 4, 4].tolist() == pytest.approx(expected, abs=1e-4)
    assert select(short)[:, 4, 4].tolist() == pytest.approx([min(d, 60) for d in expected], abs=1e-4)


@pytest.mark.parametrize(("spacing_x", "spacing_y"), [(1.0, 2.0), (1.25, 0.5)])
def test_resampling_keeps_aspect_and_centres_foreground(spacing_x, spacing_y):
    slab = circle_slab(spacing_x, spacing_y, centre_mm=(60.0, 40.0), radius_mm=30.0)
    slices = SelectPercentileSlices(size=60, fov_mm=120.0)(slab)
    disc = slices[3] > 0.5
    rows, cols = torch.nonzero(disc).double().T
    assert slices.shape == (7, 60, 60)
    assert disc.any(1).sum() == pytest.approx(30, abs=1) and disc.any(0).sum() == pytest.approx(30, abs=1)
    assert rows.mean() == pytest.approx(29.5, abs=0.5) and cols.mean() == pytest.approx(29.5, abs=0.5)
    assert slices.pixdim.tolist() == pytest.approx([2.0, 2.0])
    world_centre = slices.affine.double() @ torch.tensor([29.5, 29.5, 1.0], dtype=torch.float64)
    assert world_centre[:2].tolist() == pytest.approx([60.0 - 20.0, 40.0 - 25.0], abs=1.0)


def striped_disc(spacing_mm: float, period_mm: float) -> MetaTensor:
    """A 100 mm disc (3 slices) whose intensity is 100 + 50 x a sine of ``period_mm`` along R, at ``spacing_mm`` voxels."""
    n = round(160 / spacing_mm)
    x_mm, y_mm = np.meshgrid(np.arange(n) * spacing_mm, np.arange(n) * spacing_mm, indexing="ij")
    disc = (x_mm - 80) ** 2 + (y_mm - 80) ** 2 < 50**2
    image = np.where(disc, 100 + 50 * np.sin(2 * np.pi * x_mm / period_mm), 0.0)
    return volume(np.repeat(image[..., None], 3, axis=2).astype(np.float32), (spacing_mm, spacing_mm, 3.0))


@pytest.mark.parametrize("spacing_mm", [0.5, 1.0])
def test_detail_finer_than_the_pixels_is_smoothed_away_not_aliased(spacing_mm):
    """At 2.5 mm pixels, stripes of 2.2 mm (finer than the 5 mm the pixels can show, coarser than the 2 mm that
    1 mm voxels can) keep under a fifth of their contrast, at either acquired resolution; stripes of 20 mm pass.
    Plain sampling would alias the fine stripes into coarse ones of full contrast."""
    select = SelectPercentileSlices(percentiles=(50,), extent_mm=6.0, size=48, fov_mm=120.0)
    centre = (slice(14, 34), slice(14, 34))  # well inside the disc
    fine = select(striped_disc(spacing_mm, 2.2))[0][centre]
    coarse = select(striped_disc(spacing_mm, 20.0))[0][centre]
    assert float(fine.std()) < 0.2 * 50 / np.sqrt(2) and float(fine.mean()) == pytest.approx(100, abs=3)
    assert float(coarse.std()) > 0.8 * 50 / np.sqrt(2)
    mask = SelectPercentileSlices(percentiles=(50,), extent_mm=6.0, size=48, fov_mm=120.0)(striped_disc(spacing_mm, 2.2) > 0, mode="nearest")
    assert set(torch.unique(mask).tolist()) <= {0.0, 1.0}  # masks are sampled, never smoothed


def test_whole_head_geometry_samples_the_mask_and_stripping_the_slices_strips_the_head():
    arrays = head((40, 48, 36), SPACING, top=33)
    arrays["brain_mask"][:20] = 0.0  # a brain off the head's centre: the geometry must still be the head's
    data = {key: volume(array, SPACING) for key, array in arrays.items()}
    sliced = SelectPercentileSlicesd(KEYS, source_key="image", size=64, fov_mm=128.0, mode=["bilinear", "nearest"])(data)
    assert torch.equal(sliced["image"], SelectPercentileSlices(size=64, fov_mm=128.0)(data["image"]))
    assert set(sliced["brain_mask"].unique().tolist()) == {0.0, 1.0}
    assert torch.equal(sliced["brain_mask"].affine, sliced["image"].affine)
    stripped = SkullStripd("image")(sliced)["image"]
    assert torch.equal(stripped, sliced["image"] * sliced["brain_mask"])
    world_centre = sliced["image"].affine.double() @ torch.tensor([31.5, 31.5, 1.0], dtype=torch.float64)
    assert world_centre[:2].tolist() == pytest.approx([-20.0 + 20 * SPACING[0], -25.0 + 24 * SPACING[1]], abs=0.5)


def test_full_extent_padded_to_square_keeps_aspect():
    slab = circle_slab(1.0, 2.0, centre_mm=(30.0, 70.0), radius_mm=20.0)
    slab = slab[:, :, 10:]  # 100 mm x 80 mm: padded to 100 mm x 100 mm
    disc = SelectPercentileSlices(size=50, fov_mm=None)(slab)[0] > 0.5
    assert disc.any(1).sum() == pytest.approx(20, abs=1) and disc.any(0).sum() == pytest.approx(20, abs=1)


BAD_ARGUMENTS = [
    (CropCranioCaudal, {"extent_mm": 0}, ValueError, "extent_mm must be positive and finite, got 0"),
    (CropCranioCaudal, {"extent_mm": float("inf")}, ValueError, "extent_mm must be positive and finite, got inf"),
    (CropCranioCaudal, {"extent_mm": "140"}, TypeError, "extent_mm must be a number, got '140'"),
    (CropCranioCaudal, {"threshold": "mean"}, ValueError, "threshold must be 'otsu' or an intensity, got 'mean'"),
    (CropCranioCaudal, {"threshold": None}, TypeError, "threshold must be 'otsu' or a number, got None"),
    (SelectPercentileSlices, {"percentiles": (20, 120)}, ValueError, r"must lie in \[0, 100\], got 120"),
    (SelectPercentileSlices, {"percentiles": (-5, 50)}, ValueError, r"must lie in \[0, 100\], got -5"),
    (SelectPercentileSlices, {"percentiles": ()}, TypeError, "percentiles must be a non-empty sequence"),
    (SelectPercentileSlices, {"percentiles": 50}, TypeError, "percentiles must be a non-empty sequence"),
    (SelectPercentileSlices, {"percentiles": ("20",)}, TypeError, "percentiles must be numbers, got '20'"),
    (SelectPercentileSlices, {"size": 0}, ValueError, "size must be positive and finite, got 0"),
    (SelectPercentileSlices, {"size": 128.0}, TypeError, "size must be an int, got 128.0"),
    (SelectPercentileSlices, {"fov_mm": -240.0}, ValueError, "fov_mm must be positive and finite, got -240.0"),
    (SelectPercentileSlices, {"fov_mm": "240"}, TypeError, "fov_mm must be a number, got '240'"),
    (SelectPercentileSlices, {"threshold": "mean"}, ValueError, "threshold must be 'otsu' or an intensity"),
    (SelectPercentileSlices, {"extent_mm": 0.0}, ValueError, "extent_mm must be positive and finite, got 0.0"),
]


@pytest.mark.parametrize(("transform", "kwargs", "error", "match"), BAD_ARGUMENTS)
def test_bad_argument(transform, kwargs, error, match):
    with pytest.raises(error, match=match):
        transform(**kwargs)


BAD_VOLUMES = [
    (torch.ones(1, 8, 8, 8), TypeError, "needs a MetaTensor with an affine"),
    (MetaTensor(torch.ones(8, 8, 8)), ValueError, r"shape \(1, X, Y, Z\), got \(8, 8, 8\)"),
    (MetaTensor(torch.ones(2, 8, 8, 8)), ValueError, r"shape \(1, X, Y, Z\), got \(2, 8, 8, 8\)"),
    (MetaTensor(torch.ones(1, 8, 8, 8), affine=torch.diag(torch.tensor([-1.0, -1, 1, 1]))), ValueError, "got LPS"),
    (volume(np.zeros((8, 8, 8))), ValueError, "found no foreground above threshold 'otsu'"),
]


@pytest.mark.parametrize("transform", [CropCranioCaudal(), SelectPercentileSlices()])
@pytest.mark.parametrize(("img", "error", "match"), BAD_VOLUMES)
def test_bad_volume(transform, img, error, match):
    with pytest.raises(error, match=match):
        transform(img)


def test_bad_mode():
    with pytest.raises(ValueError, match="mode must be 'bilinear' or 'nearest', got 'bicubic'"):
        SelectPercentileSlices()(volume(head((20, 24, 20), SPACING, top=18)["image"], SPACING), mode="bicubic")


def test_too_few_slices():
    with pytest.raises(ValueError, match="volume has 1 slices along the cranio-caudal axis; at least 2 needed"):
        SelectPercentileSlices()(volume(np.ones((8, 8, 1))))


@pytest.mark.parametrize("axcodes", ["LPS", "PIR", "ASL", "LIA", "RAS"])
def test_orientation_in_place_equals_monai_orientation_without_a_copy(axcodes):
    """Same voxels and affine as MONAI's Orientation from any stored orientation; the flips reuse the input's memory."""
    data = torch.as_tensor(np.random.default_rng(3).random((1, 5, 6, 7)), dtype=torch.float32)
    reorientation = ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(axcodes))
    affine = torch.as_tensor(nib.orientations.inv_ornt_aff(reorientation, (5, 6, 7)) @ np.diag([1.5, 2.0, 3.0, 1.0]))
    expected = Orientationd("image", "RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))({"image": MetaTensor(data.clone(), affine=affine)})
    image = MetaTensor(data.clone(), affine=affine)
    storage = image.untyped_storage().data_ptr()
    result = OrientationInPlaced("image", axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))({"image": image})["image"]
    assert torch.equal(result.as_tensor(), expected["image"].as_tensor())
    np.testing.assert_allclose(result.affine.numpy(), expected["image"].affine.numpy(), atol=1e-12)
    assert nib.aff2axcodes(result.affine.numpy()) == ("R", "A", "S")
    assert result.untyped_storage().data_ptr() == storage  # flipped in place, then permuted as a view
