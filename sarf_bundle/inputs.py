"""Real-world inputs: NIfTI files and DICOM series read with MONAI's readers, the 4D rule, and checks.

A folder from a hospital holds NIfTI files, DICOM series, 4D series and broken files side by side.
:class:`LoadVolume` reads one input as a single-channel volume ``(1, X, Y, Z)``; :class:`CheckVolume`
refuses what cannot be classified with a :class:`VolumeError` that says what is wrong, and warns (the
status becomes ``uncertain``) about what looks like no head at all. Both have dictionary twins.

The 4D rule (a DWI with several b-values, a multi-echo or a time series):

- DICOM series: decided per series when the folder is scanned, see :func:`sarf_bundle.dicom.find_dicom_series`
  (highest b-value of a DWI, last echo of a multi-echo series, else the first volume).
- NIfTI ``(X, Y, Z, T)``: with an FSL ``.bval`` sidecar (``name.bval`` beside ``name.nii.gz``, one b-value
  per volume), the mean of the volumes at the highest b-value (the trace-weighted image the model knows as
  DWI); without one, the last volume (the last echo of a multi-echo series, a high b-value of a DWI stored
  b=0 first).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor, NibabelReader
from monai.transforms import MapTransform, Transform

from .dicom import DicomSeries, read_series
from .files import image_loader
from .transforms import foreground_mask

__all__ = ["CheckVolume", "CheckVolumed", "LoadVolume", "LoadVolumed", "VolumeError", "bvals_of"]


class VolumeError(ValueError):
    """An input that cannot be classified; the message names the problem."""


def bvals_of(path: str | Path) -> list[float] | None:
    """The b-values of the FSL sidecar ``<name>.bval`` beside a NIfTI file, or None when there is none.

    Raises:
        VolumeError: when the sidecar exists but does not hold numbers.
    """
    path = Path(path)
    stem = path.name.removesuffix(".gz").removesuffix(".nii")
    sidecar = path.with_name(f"{stem}.bval")
    if not sidecar.is_file():
        return None
    try:
        return [float(v) for v in sidecar.read_text().split()]
    except ValueError as error:
        raise VolumeError(f"b-value sidecar {sidecar.name} is not a list of numbers ({error})") from error


class LoadVolume(Transform):
    """Read a NIfTI file or a DICOM series as one volume ``(1, X, Y, Z)``, applying the 4D rule (module notes).

    NIfTI goes through MONAI's ``LoadImage`` (nibabel), DICOM through MONAI's ``PydicomReader``
    (:func:`sarf_bundle.dicom.read_series`). The result is a float32 ``MetaTensor`` with its affine; its
    ``meta["sarf_note"]`` says how a 4D input was reduced ("" otherwise).

    Raises:
        VolumeError: a NIfTI with more than 4 dimensions, or a ``.bval`` sidecar that does not match it.
    """

    def __init__(self) -> None:
        self.nifti = image_loader(image_only=True, ensure_channel_first=True, dtype=np.float32)
        self.nibabel = NibabelReader()  # the one reader tried: a corrupt file gives nibabel's error, not one per reader

    def __call__(self, source: str | Path | DicomSeries) -> MetaTensor:
        if isinstance(source, DicomSeries):
            image = read_series(source)
            image.meta["sarf_note"] = source.note
            return image
        image = self.nifti(str(source), reader=self.nibabel)
        note = ""
        if image.ndim > 4:
            dim = [int(v) for v in np.asarray(image.meta["dim"]).reshape(-1)]
            raise VolumeError(f"{dim[0]}D image of shape {tuple(dim[1 : dim[0] + 1])}: only 3D and 4D volumes are read")
        if image.ndim == 4 and image.shape[0] > 1:
            volumes = image.shape[0]
            bvals = bvals_of(source)
            if bvals is not None:
                if len(bvals) != volumes:
                    raise VolumeError(f"the .bval sidecar lists {len(bvals)} b-values for {volumes} volumes")
                top = max(bvals)
                keep = [i for i, b in enumerate(bvals) if b == top]
                image = image[keep].mean(dim=0, keepdim=True)
                note = f"4D: mean of the {len(keep)} volume(s) at b={top:g} of {volumes} (b-values {sorted(set(bvals))})"
            else:
                image = image[-1:]
                note = f"4D: last of {volumes} volumes"
        image.meta["sarf_note"] = note
        return image


class LoadVolumed(MapTransform):
    """Dictionary twin of :class:`LoadVolume`; also stores the 4D note under ``note_key``."""

    def __init__(self, keys: KeysCollection = "image", note_key: str = "note", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadVolume()
        self.note_key = note_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        notes = []
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key])
            notes.append(d[key].meta["sarf_note"])
        d[self.note_key] = "; ".join(n for n in notes if n)
        return d


class CheckVolume(Transform):
    """Refuse a volume ``(1, X, Y, Z)`` that cannot be classified, and say when it does not look like a head.

    Errors (:class:`VolumeError`): a 2D image (a spatial size of 1), NaN or infinite values, a constant
    image (e.g. all zero), a voxel spacing outside ``spacing_mm`` (a broken header), fewer than
    ``min_slices`` slices along the axis closest to cranio-caudal. The warning (returned, not raised): the
    foreground (Otsu, on a coarse copy) spans more than ``max_head_mm`` in either axial direction.

    Args:
        min_slices: fewest slices along the cranio-caudal axis; the configs use the number of sampled slices (7),
            so that no two sampled slices are the same.
        spacing_mm: plausible voxel spacing range in mm.
        max_head_mm: largest plausible extent of a head in the axial plane, in mm.

    Returns:
        ``(image, warning)``: the unchanged image and ``""`` or the warning.
    """

    def __init__(self, min_slices: int = 7, spacing_mm: tuple[float, float] = (0.1, 25.0), max_head_mm: float = 260.0) -> None:
        self.min_slices = min_slices
        self.spacing_mm = spacing_mm
        self.max_head_mm = max_head_mm

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, str]:
        shape = tuple(image.shape[1:])
        if len(shape) != 3 or min(shape) == 1:
            raise VolumeError(f"2D image of shape {shape}: a 3D volume with at least {self.min_slices} slices is needed")
        low, high = (float(v) for v in torch.aminmax(torch.as_tensor(image)))  # NaN and inf show in these
        if not (np.isfinite(low) and np.isfinite(high)):
            bad = int((~torch.isfinite(torch.as_tensor(image))).sum())
            raise VolumeError(f"{bad} of {image.numel()} voxels are NaN or infinite")
        if low == high:
            raise VolumeError(f"every voxel is {low:g}: the image is empty")
        affine = image.affine.numpy() if isinstance(image, MetaTensor) else np.eye(4)
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        if not ((spacing >= self.spacing_mm[0]) & (spacing <= self.spacing_mm[1])).all():
            raise VolumeError(
                f"voxel spacing {tuple(round(float(s), 3) for s in spacing)} mm is outside {self.spacing_mm[0]:g}-{self.spacing_mm[1]:g} mm "
                "(a broken header?)"
            )
        axial_axes = [int(a) for a in np.argsort(np.abs(affine[2, :3] / spacing))[:2]]
        cranio_caudal = 3 - sum(axial_axes)
        if shape[cranio_caudal] < self.min_slices:
            raise VolumeError(f"only {shape[cranio_caudal]} slices along the cranio-caudal axis: at least {self.min_slices} are needed")
        return image, self._head_warning(image, spacing, axial_axes)

    def _head_warning(self, image: torch.Tensor, spacing: np.ndarray, axial_axes: list[int]) -> str:
        step = [max(1, round(4.0 / float(s))) for s in spacing]  # about 4 mm voxels
        coarse = torch.as_tensor(image)[0, :: step[0], :: step[1], :: step[2]]
        mask = foreground_mask(coarse[None])
        if not bool(mask.any()):
            return "no foreground found: is this a brain scan?"
        extents = []
        for axis in axial_axes:
            occupied = mask.any(dim=tuple(a for a in range(3) if a != axis)).nonzero()
            extents.append(float(occupied.max() - occupied.min() + 1) * step[axis] * float(spacing[axis]))
        if max(extents) > self.max_head_mm:
            return (
                f"the foreground spans {extents[0]:.0f} x {extents[1]:.0f} mm in the axial plane, more than a head "
                f"({self.max_head_mm:.0f} mm): is this a brain scan?"
            )
        return ""


class CheckVolumed(MapTransform):
    """Dictionary twin of :class:`CheckVolume`; stores the warning under ``warning_key``."""

    def __init__(
        self,
        keys: KeysCollection = "image",
        warning_key: str = "warning",
        min_slices: int = 7,
        spacing_mm: tuple[float, float] = (0.1, 25.0),
        max_head_mm: float = 260.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.checker = CheckVolume(min_slices, tuple(spacing_mm), max_head_mm)
        self.warning_key = warning_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        warnings = []
        for key in self.key_iterator(d):
            d[key], warning = self.checker(d[key])
            warnings.append(warning)
        d[self.warning_key] = "; ".join(w for w in warnings if w)
        return d
