"""The 4D rule: which images of an input with several volumes make the one volume that is classified.

It serves both input forms: a DICOM series whose files repeat slice positions (each file an image, grouped by
position; :func:`sarf_bundle.dicom.find_dicom_series`) and a NIfTI ``(X, Y, Z, T)`` array (each volume an image,
all at one "position"; b-values from an FSL ``.bval`` sidecar; :class:`sarf_bundle.inputs.LoadVolume`). Applied
in this order until one image per position is left:

1. several b-values (a DWI with b=0 and b=1000, say): keep the images of the highest b-value; an image without a
   b-value counts as b=0 when others have one.
2. several echoes (EchoTime, else EchoNumbers): keep the last echo (longest TE, the most T2*-weighted).
3. derived maps (ImageType ADC, EADC, FA or EXP) among other images: drop them. Then a trace-weighted (isotropic)
   image (ImageType TRACE or TRACEW, or DiffusionDirectionality ISOTROPIC): keep it; magnitude and phase images:
   keep the magnitude (ImageType M or MAGNITUDE).
4. diffusion images still repeated (b-values known: the directions of one b-value without a trace image, or
   repeats of it): their mean at each position, the trace-weighted image the model knows as DWI (when every
   position has as many; else step 5).
5. anything else still repeated (a time series, repeated acquisitions, a NIfTI without sidecar): the last image at
   each position in acquisition order (DICOM: AcquisitionNumber, TemporalPositionIdentifier, InstanceNumber;
   NIfTI: the volume index), which for a NIfTI without metadata is the last echo of a multi-echo series or the
   high b-value of a DWI stored b=0 first.

A NIfTI array can express steps 1, 4 and 5 (its sidecar gives b-values, nothing gives echoes or image types).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["ImageTags", "reduce_4d"]

T = TypeVar("T")


@dataclass(frozen=True)
class ImageTags:
    """What the 4D rule knows of one image (a DICOM file, or one volume of a NIfTI array).

    Attributes:
        b: diffusion b-value in s/mm², None when unknown.
        echo_time: EchoTime in ms, None when unknown.
        echo_number: EchoNumbers, None when unknown.
        trace: a trace-weighted (isotropic) diffusion image.
        derived_map: an ADC, eADC, FA or exponential map.
        magnitude: a magnitude image.
        phase: a phase image.
    """

    b: float | None = None
    echo_time: float | None = None
    echo_number: int | None = None
    trace: bool = False
    derived_map: bool = False
    magnitude: bool = False
    phase: bool = False


def reduce_4d(
    images: Sequence[T],
    tags: Callable[[T], ImageTags],
    positions: Callable[[Sequence[T]], list[list[T]]],
    what: str,
) -> tuple[list[list[T]], list[str]]:
    """Apply the 4D rule (module documentation) to the images of one input.

    Args:
        images: the images, any type.
        tags: what the rule knows of an image.
        positions: the images grouped by position, in position order, each group in acquisition order.
        what: what the repeated things are called in the notes, e.g. ``"volumes"`` or ``"images per position"``.

    Returns:
        ``(groups, steps)``: per position, the images whose mean is the volume (one image, or the diffusion images
        of step 4, as many at every position); and what was done, e.g. ``["kept b=1000 of b=0,1000"]``.
    """
    steps: list[str] = []
    kept = list(images)
    b_values = sorted({tags(im).b or 0.0 for im in kept}) if any(tags(im).b is not None for im in kept) else []
    if len(b_values) > 1:
        kept = [im for im in kept if (tags(im).b or 0.0) == b_values[-1]]
        steps.append(f"kept b={b_values[-1]:g} of b={_fmt(b_values)}")
    if _repeated(positions(kept)):
        echo_times = sorted({tags(im).echo_time for im in kept if tags(im).echo_time is not None})
        echo_numbers = sorted({tags(im).echo_number for im in kept if tags(im).echo_number is not None})
        if len(echo_times) > 1:
            kept = [im for im in kept if tags(im).echo_time == echo_times[-1]]
            steps.append(f"kept the last echo TE={echo_times[-1]:g} ms of TE={_fmt(echo_times)} ms")
        elif len(echo_numbers) > 1:
            kept = [im for im in kept if tags(im).echo_number == echo_numbers[-1]]
            steps.append(f"kept the last echo (EchoNumbers {echo_numbers[-1]} of {len(echo_numbers)})")
    if _repeated(positions(kept)):
        originals = [im for im in kept if not tags(im).derived_map]
        if originals and len(originals) < len(kept):
            kept = originals
            steps.append("dropped the ADC/FA maps")
    if _repeated(positions(kept)):
        trace = [im for im in kept if tags(im).trace and not tags(im).derived_map]
        magnitude = [im for im in kept if tags(im).magnitude and not tags(im).phase]
        if trace and len(trace) < len(kept):
            kept = trace
            steps.append("kept the trace-weighted image")
        elif magnitude and len(magnitude) < len(kept):
            kept = magnitude
            steps.append("kept the magnitude images")
    groups = positions(kept)
    if not _repeated(groups):
        return groups, steps
    counts = sorted({len(g) for g in groups})
    if b_values and len(counts) == 1:
        steps.append(f"mean of the {counts[0]} diffusion {what} at b={b_values[-1]:g}")
        return groups, steps
    uneven = " (not as many at every position)" if len(counts) > 1 else ""
    steps.append(f"kept the last of {counts[-1]} {what}{uneven}")
    return [g[-1:] for g in groups], steps


def _repeated(groups: list[list]) -> bool:
    return max(len(g) for g in groups) > 1


def _fmt(values: Sequence[float]) -> str:
    return ",".join(f"{v:g}" for v in values)
