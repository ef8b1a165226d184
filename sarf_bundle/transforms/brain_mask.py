"""Skull stripping as transforms: the brain mask of a volume (:class:`BrainMask`), and zeroing the image outside it.

The paper trains on volumes skull-stripped with HD-BET and tests on whole-head ones. :class:`BrainMaskd` gives the
brain mask of the image file, either the one the datalist names or one computed by a backend of
:mod:`sarf_bundle.skullstrip` (once, then read from its disk cache); it is loaded beside the image, so that orientation,
crop and slice selection treat both alike. :class:`SkullStripd` (or :class:`RandSkullStripd` in training) then strips
the slices, which equals stripping the volume first.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, MaskIntensity, RandomizableTransform, Transform

from ..inputs import LoadVolume
from ..skullstrip import SkullStripper

__all__ = ["BrainMask", "BrainMaskd", "RandSkullStripd", "SkullStrip", "SkullStripd"]


class BrainMask(Transform):
    """The brain mask of an image file, computed by a :class:`~sarf_bundle.skullstrip.SkullStripper` once, then read from its cache.

    The stripper writes the mask as a NIfTI file on the image's voxel grid in ``<cache_dir>/<backend>/``, keyed by
    the content of the image file and the backend's settings, so a second epoch, fold or run strips nothing
    (``python -m sarf_bundle skullstrip`` fills the cache ahead of training). The mask is read from that file as
    :class:`~sarf_bundle.inputs.LoadVolume` reads the image, and its ``meta["filename_or_obj"]`` names the file.

    Args:
        stripper: the backend and its settings (cache folder, HD-BET weights and test-time augmentation, device).

    Raises:
        TypeError: ``stripper`` is not a SkullStripper; the input is not a file path.
        ValueError, FileNotFoundError: see :class:`~sarf_bundle.skullstrip.SkullStripper`.

    Example:
        >>> to_mask = BrainMask(SkullStripper("deepbet", cache_dir="cache/skullstrip"))
        >>> to_mask("sub-0001_T1.nii.gz").shape  # (1, X, Y, Z) on the image's grid, 1 inside the brain
    """

    def __init__(self, stripper: SkullStripper) -> None:
        if not isinstance(stripper, SkullStripper):
            raise TypeError(f"stripper must be a SkullStripper, got {type(stripper).__name__}")
        self.stripper = stripper
        self.loader = LoadVolume()

    def __call__(self, filename: str | os.PathLike) -> MetaTensor:
        """The brain mask ``(1, X, Y, Z)`` (float32, 1 inside the brain) of the image file ``filename``."""
        if not isinstance(filename, (str, os.PathLike)):
            raise TypeError(
                f"{type(self).__name__} needs the image file path, got {type(filename).__name__}: "
                "put it before LoadImage(d)"
            )
        return self.loader(self.stripper(filename))


class BrainMaskd(MapTransform):
    """Dictionary-based :class:`BrainMask`: puts the brain mask of the image file in ``keys`` into ``mask_key``.

    It comes before :class:`~sarf_bundle.inputs.LoadVolumed` of the image. With a ``stripper`` the mask is computed
    (or read from the stripper's cache); without one, the datalist gives the mask file in ``mask_key`` (the simulator
    writes one; the ``"mask"`` backend of the configs) and it is read from there; the entry must have one.

    Args:
        keys: key of the image file, e.g. ``"image"`` (one key).
        mask_key: key the brain mask goes to (and, without a stripper, the key of the datalist's mask file).
        stripper: the backend that computes masks, or ``None`` for the datalist's masks.
        allow_missing_keys: don't raise an exception if the image key is missing.

    Raises:
        TypeError: ``stripper`` is neither a SkullStripper nor None.
        ValueError: more than one key; without a stripper, an entry without a mask file. See also :class:`BrainMask`.

    Example:
        >>> to_mask = BrainMaskd("image", mask_key="brain_mask", stripper=SkullStripper("deepbet"))
        >>> to_mask({"image": "sub-0001_T1.nii.gz"})["brain_mask"].meta["filename_or_obj"]
        'cache/skullstrip/deepbet/3f1c...e9.nii.gz'
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str = "brain_mask",
        stripper: SkullStripper | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"{type(self).__name__} takes one image key, got {self.keys}")
        if stripper is not None and not isinstance(stripper, SkullStripper):
            raise TypeError(f"stripper must be a SkullStripper or None, got {type(stripper).__name__}")
        self.mask_key = mask_key
        self.masker = None if stripper is None else BrainMask(stripper)
        self.loader = LoadVolume()

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            if self.masker is not None:
                d[self.mask_key] = self.masker(d[key])
            elif d.get(self.mask_key) is None:
                raise ValueError(
                    f"{d[key]} has no {self.mask_key!r} file: skull-strip backend 'mask' needs a brain mask per volume "
                    "in the datalist; choose 'hd-bet-v1', 'hd-bet-v2' or 'deepbet' to compute one"
                )
            else:
                d[self.mask_key] = self.loader(d[self.mask_key])
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
                "or compute one with BrainMaskd(stripper=SkullStripper('hd-bet-v1', 'hd-bet-v2' or 'deepbet'))"
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
