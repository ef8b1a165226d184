"""Preprocessing transforms of the SaRF paper: skull stripping, cranio-caudal crop, slices, z-score.

The paper (You, Wiest, Reyes, CMPB 2023, section 3.2) crops every volume to about 140 mm in the cranio-caudal
direction, z-scores it, and selects 7 axial slices at percentiles 20, 30, ..., 80 of the cranio-caudal extent;
training volumes are skull-stripped with HD-BET, test volumes are not. The same brain must therefore reach the
network as the same numbers whether it comes stripped or whole-head, so everything that locates or scales the slices
is measured on the whole head or on tissue that is brain in both cases. Each step is an array transform with a
dictionary twin ``<Name>d``, following MONAI's conventions, in one module per kind:

- :mod:`~sarf_bundle.transforms.brain_mask`: ``BrainMask(d)`` (the brain mask of an image file), ``SkullStrip(d)``,
  ``RandSkullStripd``;
- :mod:`~sarf_bundle.transforms.spatial`: ``OrientationInPlace(d)``, ``CropCranioCaudal(d)``,
  ``SelectPercentileSlices(d)``;
- :mod:`~sarf_bundle.transforms.intensity`: ``NormalizeCentral(d)``.

The order (the configs name each class as ``sarf_bundle.transforms.<Name>``)::

    BrainMaskd("image", mask_key="brain_mask", stripper=...)          # training and validation only: the brain mask
    LoadVolumed("image"), OrientationInPlaced(["image", "brain_mask"], axcodes="RAS")
    CropCranioCaudald(["image", "brain_mask"], source_key="image")  # 140 mm below the top of the head
    SelectPercentileSlicesd(["image", "brain_mask"], source_key="image")  # (7, 96, 96): levels and centre of the whole head
    (RandSkull)SkullStripd("image", mask_key="brain_mask")           # training and validation only, on the slices
    NormalizeCentrald("image")                                       # z-score from the central brain of slices 3-6

The slice levels are fixed depths below the top of the head (percentile ``p`` of 140 mm), so a volume that
covers less of the head gets its slices at the same levels. The brain mask is computed from the image file
(once, then read from a disk cache, see :mod:`sarf_bundle.skullstrip`) and carried beside the image, so that
orientation, crop and slice selection treat both alike; stripping the 7 slices equals stripping the volume first.
"""

from __future__ import annotations

from .brain_mask import BrainMask, BrainMaskd, RandSkullStripd, SkullStrip, SkullStripd
from .intensity import NormalizeCentral, NormalizeCentrald
from .spatial import (
    CropCranioCaudal,
    CropCranioCaudald,
    OrientationInPlace,
    OrientationInPlaced,
    SelectPercentileSlices,
    SelectPercentileSlicesd,
    SliceGeometry,
)

__all__ = [
    "BrainMask",
    "BrainMaskd",
    "CropCranioCaudal",
    "CropCranioCaudald",
    "NormalizeCentral",
    "NormalizeCentrald",
    "OrientationInPlace",
    "OrientationInPlaced",
    "RandSkullStripd",
    "SelectPercentileSlices",
    "SelectPercentileSlicesd",
    "SkullStrip",
    "SkullStripd",
    "SliceGeometry",
]
