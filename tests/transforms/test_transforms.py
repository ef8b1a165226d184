"""Tests of sarf_bundle.transforms (spatial, intensity, brain_mask) on synthetic heads written to NIfTI and loaded the MONAI way."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    LoadImaged,
    Orientationd,
)
from nibabel.orientations import axcodes2ornt, ornt_transform

from sarf_bundle.transforms import (
    BrainMask,
    BrainMaskd,
    CropCranioCaudal,
    CropCranioCaudald,
    NormalizeCentral,
    NormalizeCentrald,
    OrientationInPlaced,
    RandSkullStripd,
    SelectPercentileSlices,
    SelectPercentileSlicesd,
    SkullStrip,
    SkullStripd,
)

SPACING = (1.1, 0.9, 2.5)
KEYS = ["image", "brain_mask"]


def ras_affine(spacing: tuple[float, float, float]) -> np.ndarray:
    return np.diag([*spacing, 1.0]) + np.array([[0, 0, 0, -20.0], [0, 0, 0, -25.0], [0, 0, 0, -60.0], [0, 0, 0, 0]])


def head(shape: tuple[int, int, int], spacing: tuple[float, float, float], top: int, seed: int = 0) -> dict:
    """Whole-head ellipsoid with an intensity gradient, cut flat at slice ``top``, in Rician noise; and its brain."""
    x, y, z = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    centre = np.array([shape[0] / 2, shape[1] / 2, top - 0.3 * shape[2]])
    radii = 0.4 * np.array(shape)
    distance = np.sqrt(sum(((c - m) / r) ** 2 for c, m, r in zip((x, y, z), centre, radii)))
    inside = (distance < 1) & (z <= top)
    brain = (distance < 0.75) & (z <= top - 2)
    noise = np.random.default_rng(seed).normal(0, 4, (2, *shape))
    signal = np.where(inside, 100 + 0.5 * x + y + 0.3 * z, 0.0)
    image = np.sqrt((signal + noise[0]) ** 2 + noise[1] ** 2)
    return {"image": image.astype(np.float32), "brain_mask": brain.astype(np.float32)}


def load(tmp_path, arrays: dict, affine: np.ndarray, axcodes: str = "RAS") -> dict:
    """Write each array as NIfTI stored in ``axcodes`` order, then Load, EnsureChannelFirst, Orientation RAS."""
    reorientation = ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(axcodes))
    files = {}
    for key, array in arrays.items():
        files[key] = str(tmp_path / f"{key}_{axcodes}.nii.gz")
        nib.save(nib.Nifti1Image(array, affine).as_reoriented(reorientation), files[key])
    keys = list(files)
    loader = [LoadImaged(keys, image_only=True), EnsureChannelFirstd(keys), Orientationd(keys, "RAS", labels=None)]
    return Compose(loader)(files)


def volume(data: np.ndarray, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> MetaTensor:
    return MetaTensor(torch.as_tensor(data, dtype=torch.float32)[None], affine=torch.as_tensor(ras_affine(spacing)))


def circle_slab(spacing_x: float, spacing_y: float, centre_mm: tuple[float, float], radius_mm: float) -> MetaTensor:
    """100 mm x 100 mm x 4 slices, a disc of ``radius_mm`` at ``centre_mm`` from the first voxel, in every slice."""
    n_x, n_y = round(100 / spacing_x), round(100 / spacing_y)
    x_mm, y_mm = np.meshgrid(np.arange(n_x) * spacing_x, np.arange(n_y) * spacing_y, indexing="ij")
    disc = (x_mm - centre_mm[0]) ** 2 + (y_mm - centre_mm[1]) ** 2 < radius_mm**2
    return volume(np.repeat(disc[..., None], 4, axis=2).astype(np.float32), (spacing_x, spacing_y, 3.0))


@pytest.mark.parametrize("axcodes", ["LPS", "PIR", "ASL", "LIA"])
def test_pipeline_same_for_any_stored_orientation(tmp_path, axcodes):
    arrays, affine = head((40, 48, 36), (1.1, 0.9, 4.5), top=33), ras_affine((1.1, 0.9, 4.5))
    pipeline = Compose(
        [
            CropCranioCaudald(KEYS, source_key="image"),
            SelectPercentileSlicesd("image", size=64),
            NormalizeCentrald("image", radius_mm=15.0),
        ]
    )
    expected = pipeline(load(tmp_path, arrays, affine))
    result = pipeline(load(tmp_path, arrays, affine, axcodes))
    assert result["image"].shape == (7, 64, 64)
    assert torch.allclose(result["image"], expected["image"], atol=1e-5)
    assert torch.allclose(result["image"].affine, expected["image"].affine, atol=1e-5)
    assert torch.equal(result["brain_mask"], expected["brain_mask"])
    assert torch.allclose(result["brain_mask"].affine, expected["brain_mask"].affine, atol=1e-5)


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
    (NormalizeCentral, {"radius_mm": -1.0}, ValueError, "radius_mm must be positive and finite, got -1.0"),
    (NormalizeCentral, {"radius_mm": "40"}, TypeError, "radius_mm must be a number, got '40'"),
    (NormalizeCentral, {"statistics": "median"}, ValueError, "statistics must be 'robust' or 'moments', got 'median'"),
    (NormalizeCentral, {"slices": [1.5]}, TypeError, r"slices must be a non-empty sequence of slice indices or None, got \[1.5\]"),
    (NormalizeCentral, {"slices": []}, TypeError, r"slices must be a non-empty sequence of slice indices or None, got \[\]"),
    (BrainMaskd, {"keys": "image", "stripper": "deepbet"}, TypeError, "stripper must be a SkullStripper or None, got str"),
    (BrainMask, {"stripper": None}, TypeError, "stripper must be a SkullStripper, got NoneType"),
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


def test_dictionary_matches_array():
    data = {key: volume(array, SPACING) for key, array in head((40, 48, 80), SPACING, top=70).items()}
    cropped = CropCranioCaudald(KEYS, source_key="image")(data)
    stripped = SkullStripd("image")(cropped)
    selected = SelectPercentileSlicesd("image", size=32)(stripped)
    normalized = NormalizeCentrald("image", radius_mm=20.0, statistics="moments", slices=[2, 3])(selected)
    slab = CropCranioCaudal().compute_slab(data["image"])
    assert torch.equal(cropped["image"], CropCranioCaudal()(data["image"]))
    assert torch.equal(cropped["brain_mask"], CropCranioCaudal.crop(data["brain_mask"], slab))
    assert torch.equal(stripped["image"], SkullStrip()(cropped["image"], cropped["brain_mask"]))
    assert torch.equal(selected["image"], SelectPercentileSlices(size=32)(stripped["image"]))
    assert torch.equal(normalized["image"], NormalizeCentral(20.0, "moments", [2, 3])(selected["image"]))


@pytest.mark.parametrize(
    "transform",
    [
        CropCranioCaudald(KEYS, source_key="image"),
        SelectPercentileSlicesd(KEYS, size=16),
        SkullStripd(["image", "t2"]),
        RandSkullStripd(["image", "t2"]),
    ],
)
def test_allow_missing_keys(transform):
    data = {key: volume(array, SPACING) for key, array in head((20, 24, 20), SPACING, top=18).items()}
    data = {"image": data["image"]} if "brain_mask" in transform.keys else data
    with pytest.raises(KeyError, match="was missing in the data and allow_missing_keys==False"):
        transform(data)
    transform.allow_missing_keys = True
    assert set(transform(data)) == set(data)


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


def test_rand_skull_strip_is_skull_strip_or_nothing():
    data = {key: volume(array, SPACING) for key, array in head((20, 24, 20), SPACING, top=18).items()}
    assert torch.equal(RandSkullStripd("image", prob=1.0)(data)["image"], SkullStripd("image")(data)["image"])
    assert RandSkullStripd("image", prob=0.0)(data)["image"] is data["image"]
    strip = RandSkullStripd("image", prob=0.5)
    strip.set_random_state(0)
    stripped = [bool((strip(data)["image"] == 0).sum() > (data["image"] == 0).sum()) for _ in range(200)]
    assert 70 < sum(stripped) < 130


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
