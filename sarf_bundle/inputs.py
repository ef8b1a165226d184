"""Real-world inputs: NIfTI files and DICOM series read with MONAI's readers, the 4D rule, and checks.

A folder from a hospital holds NIfTI files, DICOM series, 4D series and broken files side by side.
:class:`LoadVolume` reads one input as a single-channel volume ``(1, X, Y, Z)``; :class:`CheckInputVolume`
refuses what cannot be classified with a :class:`VolumeError` that says what is wrong, and warns (the
status becomes ``uncertain``) about what looks like no head at all. Both have dictionary twins.

A 4D input (a DWI with several b-values, a multi-echo or a time series) is reduced to one volume by the 4D rule of
:mod:`sarf_bundle.reduce_4d`: a DICOM series when the folder is scanned (:func:`sarf_bundle.dicom.find_dicom_series`),
a NIfTI ``(X, Y, Z, T)`` here, with the b-values of its FSL ``.bval`` sidecar (``name.bval`` beside
``name.nii.gz``, one b-value per volume) when it has one.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor, NibabelReader
from nibabel.openers import ImageOpener
from monai.transforms import MapTransform, Transform

from .dicom import DicomSeries, read_series
from .files import image_loader
from .reduce_4d import ImageTags, reduce_4d
from .foreground import foreground_mask

__all__ = [
    "CheckInputVolume",
    "CheckInputVolumed",
    "Float32NibabelReader",
    "LoadVolume",
    "LoadVolumed",
    "VolumeError",
    "bvals_of",
    "check_header",
    "orientation_problem",
    "read_float32",
]


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


GZIP_MAX_RATIO = 1032
"""Deflate, the method of gzip, compresses at most about 1032 to 1: a file cannot hold more data than that."""


def check_header(path: str | Path) -> None:
    """Refuse a NIfTI or Analyze file whose header cannot be right, before its voxels are read.

    Two checks on the header alone:

    - the data it declares must fit in the file: a header that declares 30000^3 voxels over a file of 1 kB would
      otherwise make the reader allocate them and fail with a bare ``MemoryError``. Uncompressed data must fit in
      the data file after the header's offset; compressed (``.gz``) data cannot exceed :data:`GZIP_MAX_RATIO` times
      the file's size;
    - its affine (sform, else qform) must give an orientation (:func:`orientation_problem`). This is checked here,
      on the header as stored, because MONAI's reader replaces a broken sform by one made from the voxel sizes.

    Raises:
        VolumeError: naming the declared shape, data type and size and the file's size; or the broken affine.
    """
    image = nib.load(str(path))  # reads the header only
    data_file = Path(image.file_map["image"].filename)
    size = data_file.stat().st_size
    shape, dtype = tuple(int(n) for n in image.shape), image.header.get_data_dtype()
    declared = math.prod(shape) * dtype.itemsize
    offset = int(image.header.get("vox_offset", 0)) if data_file == Path(path) else 0
    compressed = data_file.name.endswith(".gz")
    room = size * GZIP_MAX_RATIO if compressed else size - offset
    if declared > room:
        holds = f"{_bytes(size)} compressed, at most {_bytes(room)} of data" if compressed else f"{_bytes(max(room, 0))} of data"
        raise VolumeError(
            f"the header declares {' x '.join(map(str, shape))} voxels of {dtype} ({_bytes(declared)}), but {data_file.name} "
            f"holds {holds}: the file is truncated or its header is wrong"
        )
    problem = orientation_problem(image.affine)
    if problem:
        raise VolumeError(problem)


def orientation_problem(affine: np.ndarray) -> str:
    """Why a voxel-to-world affine gives no orientation (voxel axes that are not independent), or ``""``."""
    matrix = np.asarray(affine, dtype=np.float64)[:3, :3]
    spacing = np.linalg.norm(matrix, axis=0)
    if np.isfinite(matrix).all() and abs(np.linalg.det(matrix)) >= 1e-3 * float(np.prod(spacing)) > 0:
        return ""
    rows = "; ".join(" ".join(f"{v:g}" for v in row) for row in matrix)
    return f"the voxel axes of the affine ({rows}) are not independent: the header (sform/qform) gives no valid orientation"


def _bytes(n: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def read_float32(image: nib.spatialimages.SpatialImage) -> np.ndarray:
    """The voxels of a nibabel image as one C-ordered float32 array, read plane by plane from its file.

    NIfTI and Analyze files store the voxels Fortran-ordered. Reading them whole and then converting (the scaled
    array is float64 for an integer file with ``scl_slope``, and MONAI makes tensors C-contiguous) holds two to four
    copies of the volume at once; reading each stored plane into its place in the float32 result holds one copy and
    one plane. ``scl_slope``/``scl_inter`` are applied in place. Other layouts (an image not backed by a file) are
    converted whole.

    Raises:
        VolumeError: when the file ends before the data its header declares (an uncompressed file; a compressed one
            raises ``EOFError`` from gzip).
    """
    proxy = image.dataobj
    if not nib.is_proxy(proxy) or getattr(proxy, "order", "F") != "F" or proxy.dtype.kind not in "iuf" or len(proxy.shape) < 2:
        return np.asarray(np.asanyarray(proxy), dtype=np.float32)
    shape = tuple(proxy.shape)
    out = np.empty(shape, np.float32)
    n_planes = math.prod(shape[2:])
    plane_bytes = shape[0] * shape[1] * proxy.dtype.itemsize
    with ImageOpener(proxy.file_like) as f:
        f.seek(proxy.offset)
        for k in range(n_planes):
            raw = f.read(plane_bytes)
            if len(raw) < plane_bytes:
                raise VolumeError(f"the file ends after {k} of the {n_planes} planes its header declares: it is truncated")
            where = np.unravel_index(k, shape[2:], order="F")  # stored order: z fastest, then t
            out[(slice(None), slice(None), *where)] = np.frombuffer(raw, proxy.dtype).reshape(shape[1], shape[0]).T
    if proxy.slope != 1:
        out *= np.float32(proxy.slope)
    if proxy.inter != 0:
        out += np.float32(proxy.inter)
    return out


class Float32NibabelReader(NibabelReader):
    """MONAI's ``NibabelReader`` that reads the voxels with :func:`read_float32`: one float32 copy of the volume.

    A 1024 x 1024 x 400 volume (1.6 GB as float32) costs about 1.6 GB here, where ``NibabelReader`` and
    ``LoadImage`` hold two (float32 files) to four (scaled integer files) such copies at their peak; see
    ``benchmarks/large_volume_memory.py``.
    """

    def _get_array_data(self, img, filename):  # noqa: D102 - the one step that differs from NibabelReader
        return read_float32(img)


class LoadVolume(Transform):
    """Read a NIfTI file or a DICOM series as one volume ``(1, X, Y, Z)``, applying the 4D rule (:mod:`sarf_bundle.reduce_4d`).

    NIfTI goes through MONAI's ``LoadImage`` with :class:`Float32NibabelReader` (one float32 copy), DICOM through MONAI's ``PydicomReader``
    (:func:`sarf_bundle.dicom.read_series`). The result is a float32 ``MetaTensor`` with its affine; its
    ``meta["sarf_note"]`` says how a 4D input was reduced ("" otherwise).

    Raises:
        VolumeError: a NIfTI with more than 4 dimensions, a header that declares more data than the file holds
            (:func:`check_header`), an affine without orientation, or a ``.bval`` sidecar that does not match it.
    """

    def __init__(self) -> None:
        self.nifti = image_loader(image_only=True, ensure_channel_first=True, dtype=np.float32)
        self.nibabel = Float32NibabelReader()  # the one reader tried: a corrupt file gives nibabel's error, not one per reader

    def __call__(self, source: str | Path | DicomSeries) -> MetaTensor:
        if isinstance(source, DicomSeries):
            image = read_series(source)
            image.meta["sarf_note"] = source.note
            return image
        check_header(source)
        image = self.nifti(str(source), reader=self.nibabel)
        note = ""
        if image.ndim > 4:
            dim = [int(v) for v in np.asarray(image.meta["dim"]).reshape(-1)]
            raise VolumeError(f"{dim[0]}D image of shape {tuple(dim[1 : dim[0] + 1])}: only 3D and 4D volumes are read")
        if image.ndim == 4 and image.shape[0] > 1:
            image, note = _reduce_nifti(image, bvals_of(source))
        image.meta["sarf_note"] = note
        return image


def _reduce_nifti(image: MetaTensor, bvals: list[float] | None) -> tuple[MetaTensor, str]:
    """The 4D rule on the volumes ``(T, X, Y, Z)`` of a NIfTI, with the b-values of its sidecar: one volume and the note."""
    volumes = image.shape[0]
    if bvals is not None and len(bvals) != volumes:
        raise VolumeError(f"the .bval sidecar lists {len(bvals)} b-values for {volumes} volumes")
    tags = [ImageTags(b=None if bvals is None else bvals[t]) for t in range(volumes)]
    (keep,), steps = reduce_4d(range(volumes), tags.__getitem__, lambda kept: [list(kept)], "volumes")
    return image[keep].mean(dim=0, keepdim=True), "4D: " + "; ".join(steps)


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


class CheckInputVolume(Transform):
    """Refuse a volume ``(1, X, Y, Z)`` that cannot be classified, and say when it does not look like a head.

    Errors (:class:`VolumeError`): a 2D image (a spatial size of 1), NaN or infinite values, a constant
    image (e.g. all zero), a voxel spacing outside ``spacing_mm`` (a broken header), a singular affine (voxel axes
    that are not independent, so no orientation), fewer than
    ``min_slices`` slices along the axis closest to cranio-caudal. The warning (in the metadata, not raised): the
    foreground (Otsu, on a coarse copy) spans more than ``max_head_mm`` in either axial direction.

    Args:
        min_slices: fewest slices along the cranio-caudal axis; the configs use the number of sampled slices (7),
            so that no two sampled slices are the same.
        spacing_mm: plausible voxel spacing range in mm.
        max_head_mm: largest plausible extent of a head in the axial plane, in mm.

    Returns:
        The unchanged image (a MetaTensor; a plain tensor is wrapped, without a copy), whose
        ``meta["sarf_warning"]`` is ``""`` or the warning, so that the check chains with the next transform.
    """

    def __init__(self, min_slices: int = 7, spacing_mm: tuple[float, float] = (0.1, 25.0), max_head_mm: float = 260.0) -> None:
        self.min_slices = min_slices
        self.spacing_mm = spacing_mm
        self.max_head_mm = max_head_mm

    def __call__(self, image: torch.Tensor) -> MetaTensor:
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
        if problem := orientation_problem(affine):
            raise VolumeError(problem)
        axial_axes = [int(a) for a in np.argsort(np.abs(affine[2, :3] / spacing))[:2]]
        cranio_caudal = 3 - sum(axial_axes)
        if shape[cranio_caudal] < self.min_slices:
            raise VolumeError(f"only {shape[cranio_caudal]} slices along the cranio-caudal axis: at least {self.min_slices} are needed")
        warning = self._head_warning(image, spacing, axial_axes)
        image = image if isinstance(image, MetaTensor) else MetaTensor(image)
        image.meta["sarf_warning"] = warning
        return image

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


class CheckInputVolumed(MapTransform):
    """Dictionary twin of :class:`CheckInputVolume`; also stores the warning (of all keys) under ``warning_key``."""

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
        self.checker = CheckInputVolume(min_slices, tuple(spacing_mm), max_head_mm)
        self.warning_key = warning_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        warnings = []
        for key in self.key_iterator(d):
            d[key] = self.checker(d[key])
            warnings.append(d[key].meta["sarf_warning"])
        d[self.warning_key] = "; ".join(w for w in warnings if w)
        return d
