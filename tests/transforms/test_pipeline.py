"""The transforms chained as the configs chain them: any stored orientation, dictionary twins equal to the array transforms, missing keys."""

from __future__ import annotations

import pytest
import torch
from monai.transforms import Compose
from synthetic_heads import KEYS, SPACING, head, load, ras_affine, volume

from sarf_bundle.transforms import (
    CropCranioCaudal,
    CropCranioCaudald,
    NormalizeCentral,
    NormalizeCentrald,
    RandSkullStripd,
    SelectPercentileSlices,
    SelectPercentileSlicesd,
    SkullStrip,
    SkullStripd,
)


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
