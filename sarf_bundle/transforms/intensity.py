"""Intensity normalisation of the slice stack: a z-score from the central brain, the same with and without the skull."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from numbers import Integral
from typing import Literal

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

from .checks import check_positive

__all__ = ["NormalizeCentral", "NormalizeCentrald"]


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
        check_positive("radius_mm", radius_mm)
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
