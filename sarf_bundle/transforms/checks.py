"""Argument and input checks shared by the transforms; errors name the transform, the argument and the bad value."""

from __future__ import annotations

from numbers import Integral, Real

import nibabel as nib
from monai.data import MetaTensor


def check_positive(name: str, value: object, integer: bool = False) -> None:
    """Refuse a ``value`` of argument ``name`` that is not a positive finite number (an int if ``integer``)."""
    if isinstance(value, bool) or not isinstance(value, Integral if integer else Real):
        kind = "an int" if integer else "a number"
        raise TypeError(f"{name} must be {kind}, got {value!r} ({type(value).__name__})")
    if not 0 < value < float("inf"):
        raise ValueError(f"{name} must be positive and finite, got {value!r}")


def check_threshold(threshold: object) -> None:
    """Refuse a foreground ``threshold`` that is neither ``"otsu"`` nor a number."""
    if isinstance(threshold, str):
        if threshold != "otsu":
            raise ValueError(f"threshold must be 'otsu' or an intensity, got {threshold!r}")
    elif isinstance(threshold, bool) or not isinstance(threshold, Real):
        raise TypeError(f"threshold must be 'otsu' or a number, got {threshold!r} ({type(threshold).__name__})")


def require_ras_volume(img: object, transform: str) -> None:
    """Refuse anything but a channel-first RAS volume ``(1, X, Y, Z)`` MetaTensor (what the crop and the slice selection need)."""
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
