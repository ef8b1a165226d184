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
from monai.bundle import ConfigParser
from monai.transforms import Compose

from .bundle import BUNDLE_ROOT

__all__ = ["Invariance", "strip_invariance"]


class Invariance(NamedTuple):
    """Least-squares fit ``inference = slope * training + intercept`` on brain pixels, and Pearson's ``r``."""

    slope: float
    intercept: float
    r: float
    pixels: int


def _parser(config: str, overrides: dict) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(BUNDLE_ROOT / "configs" / config))
    parser.update({"skull_strip": True, "skull_strip_backend": "mask", **overrides})
    return parser


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
    train = _parser("train.json", overrides)
    deterministic = Compose(train.get_parsed_content("train#deterministic_transforms"))
    finishing = Compose(train.get_parsed_content("validate#strip_transforms") + train.get_parsed_content("train#finishing_transforms"))
    sliced = deterministic({"image": str(image), "brain_mask": str(brain_mask)})
    brain = sliced["brain_mask"] > 0.5
    if not brain.any():
        raise ValueError(f"{brain_mask}: marks no pixel of the selected slices of {image} as brain")
    trained = finishing(sliced)["image"]
    inferred = _parser("inference.json", overrides).get_parsed_content("preprocessing")({"image": str(image)})["image"]
    brain = torch.as_tensor(brain)
    x, y = torch.as_tensor(trained)[brain].double(), torch.as_tensor(inferred)[brain].double()
    x_c, y_c = x - x.mean(), y - y.mean()
    slope = float((x_c * y_c).sum() / (x_c * x_c).sum())
    r = float((x_c * y_c).sum() / torch.sqrt((x_c * x_c).sum() * (y_c * y_c).sum()))
    return Invariance(slope, float(y.mean() - slope * x.mean()), r, int(brain.sum()))
