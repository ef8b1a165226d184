"""The head (or brain) foreground of an image: Otsu's threshold about the background, as a mask or as counts per axis.

The crop and the slice selection (:mod:`sarf_bundle.transforms.spatial`) locate the head by its foreground, and
:class:`~sarf_bundle.inputs.CheckInputVolume` warns when the foreground is wider than a head. Counting the foreground
along the axes is done block by block (:func:`foreground_profiles`), in one pass over the volume in memory order,
without a temporary the size of the volume.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import torch
from monai.data import MetaTensor
from monai.utils import convert_to_tensor

__all__ = ["BLOCK_VOXELS", "foreground_mask", "foreground_profiles", "otsu_threshold"]


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
