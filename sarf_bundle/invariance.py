"""Does the same brain reach the network as the same numbers with and without its skull?

Training volumes are skull-stripped and inference volumes are not (paper, section 3.2), so the preprocessing
must give a brain the same values either way. :func:`strip_invariance` runs one whole-head volume through the
training preprocessing of ``configs/train.json`` (stripped with its brain mask, no augmentation) and through the
inference preprocessing of ``configs/inference.json`` (whole head), and fits ``inference = a * training + b`` on
the brain pixels of the slices: ``a = 1``, ``b = 0`` and ``r = 1`` is perfect invariance.
``python -m sarf_bundle invariance IMAGE MASK`` prints the three numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from monai.transforms import Compose

from .bundle import read_config

__all__ = ["Invariance", "invariance", "strip_invariance"]


class Invariance(NamedTuple):
    """Least-squares fit ``inference = slope * training + intercept`` on brain pixels, and Pearson's ``r``."""

    slope: float
    intercept: float
    r: float
    pixels: int


def strip_invariance(image: str | Path, brain_mask: str | Path, **overrides) -> Invariance:
    """Compare the training (stripped) and inference (whole-head) preprocessing of one volume on its brain pixels.

    Args:
        image: a whole-head volume file.
        brain_mask: its brain mask (non-zero is brain), on the same grid.
        **overrides: config keys of both configs, e.g. ``image_size=96``.

    Returns:
        The fit over the pixels that the mask marks as brain in the 7 slices.

    Raises:
        ValueError: when the mask marks no pixel of the slices as brain.
    """
    train = read_config("train.json", **{"skull_strip": True, "val_skull_strip": True, "skull_strip_backend": "mask", **overrides})
    deterministic = Compose(train.get_parsed_content("train#deterministic_transforms"))
    finishing = Compose(train.get_parsed_content("validate#strip_transforms") + train.get_parsed_content("train#finishing_transforms"))
    sliced = deterministic({"image": str(image), "brain_mask": str(brain_mask)})
    brain = torch.as_tensor(sliced["brain_mask"] > 0.5)
    if not brain.any():
        raise ValueError(f"{brain_mask}: marks no pixel of the selected slices of {image} as brain")
    trained = finishing(sliced)["image"]
    inferred = read_config("inference.json", **overrides).get_parsed_content("preprocessing")({"image": str(image)})["image"]
    x, y = torch.as_tensor(trained)[brain].double(), torch.as_tensor(inferred)[brain].double()
    x_c, y_c = x - x.mean(), y - y.mean()
    slope = float((x_c * y_c).sum() / (x_c * x_c).sum())
    r = float((x_c * y_c).sum() / torch.sqrt((x_c * x_c).sum() * (y_c * y_c).sum()))
    return Invariance(slope, float(y.mean() - slope * x.mean()), r, int(brain.sum()))


def invariance(
    image: str | None = None,
    brain_mask: str | None = None,
    datalist: str | None = None,
    split: str = "testing",
    limit: int | None = None,
    **overrides,
) -> None:
    """``python -m sarf_bundle invariance``: print the fit of :func:`strip_invariance` for volumes and their masks.

    Either one ``image`` with its ``brain_mask``, or the entries of a datalist split (each with a ``brain_mask``).

    Args:
        image: a whole-head volume.
        brain_mask: its brain mask.
        datalist: a datalist JSON whose entries carry ``brain_mask`` (``python -m sarf_bundle synth`` writes one).
        split: the datalist split.
        limit: at most this many entries of the split.
        **overrides: config keys of both configs.

    It prints one row per volume (file, sequence, field strength, orientation, ``a``, ``b``, ``r``) and, for
    several volumes, the range of each figure.

    Raises:
        ValueError: neither or both of ``image`` and ``datalist``, or ``image`` without ``brain_mask``.

    Example:
        ``python -m sarf_bundle invariance /usr/share/mricron/templates/ch2.nii.gz /usr/share/mricron/templates/ch2bet.nii.gz``
    """
    from .data import load_datalist

    if (image is None) == (datalist is None) or (image is not None and brain_mask is None):
        raise ValueError("give an IMAGE and its BRAIN_MASK, or --datalist (whose entries carry brain_mask)")
    entries = [{"image": image, "brain_mask": brain_mask}] if datalist is None else load_datalist(datalist, split)[:limit]
    fits = []
    print(f"{'file':<40} {'sequence':<8} {'field':>5} {'orientation':<11} {'a':>6} {'b':>7} {'r':>7}")
    for entry in entries:
        fit = strip_invariance(entry["image"], entry["brain_mask"], **overrides)
        fits.append(fit)
        acquisition = entry.get("acquisition", {})
        print(
            f"{Path(entry['image']).name:<40} {entry.get('sequence', ''):<8} {acquisition.get('field_t', '')!s:>5} "
            f"{acquisition.get('orientation', ''):<11} {fit.slope:6.3f} {fit.intercept:7.3f} {fit.r:7.4f}"
        )
    if len(fits) > 1:
        for key in ("slope", "intercept", "r"):
            values = [getattr(fit, key) for fit in fits]
            print(f"{key}: min {min(values):.4f}, max {max(values):.4f} over {len(fits)} volumes")
