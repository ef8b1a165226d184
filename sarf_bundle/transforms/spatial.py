"""From a loaded volume to the paper's slice stack: in-place reorientation, cranio-caudal crop, percentile slices.

The paper (You, Wiest, Reyes, CMPB 2023, section 3.2) crops every volume to about 140 mm in the cranio-caudal
direction and selects 7 axial slices at percentiles 20, 30, ..., 80 of that extent. The crop and the slice levels
are measured on the whole head (:mod:`sarf_bundle.foreground`), so that a skull-stripped volume and the whole head
give the same slices. Beyond reading the file, the crop and the slice selection each make one pass over the volume,
block by block, and only the selected slices are resampled.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from numbers import Real
from typing import Literal, NamedTuple

import nibabel as nib
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Orientation, SpatialCrop, Transform
from monai.utils import MetaKeys, ensure_tuple_rep

from ..foreground import foreground_profiles
from .checks import check_positive, check_threshold, require_ras_volume

__all__ = [
    "CropCranioCaudal",
    "CropCranioCaudald",
    "OrientationInPlace",
    "OrientationInPlaced",
    "SelectPercentileSlices",
    "SelectPercentileSlicesd",
    "SliceGeometry",
]


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
    :func:`~sarf_bundle.foreground.foreground_mask`) to the last slice whose foreground covers at least 1 % of that area, so that
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
        check_positive("extent_mm", extent_mm)
        check_threshold(threshold)
        self.extent_mm = float(extent_mm)
        self.threshold = threshold

    def compute_slab(self, img: MetaTensor) -> slice:
        """Axial slice range (along the last axis) of the ``extent_mm`` below the top of the head in ``img``."""
        require_ras_volume(img, type(self).__name__)
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
      centroid of the foreground (see :func:`~sarf_bundle.foreground.foreground_mask`), so the physical aspect ratio is kept;
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
        check_positive("extent_mm", extent_mm)
        check_positive("size", size, integer=True)
        if fov_mm is not None:
            check_positive("fov_mm", fov_mm)
        check_threshold(threshold)
        self.percentiles = tuple(float(p) for p in percentiles)
        self.extent_mm = float(extent_mm)
        self.size = int(size)
        self.fov_mm = fov_mm
        self.threshold = threshold

    def compute_geometry(self, img: MetaTensor) -> SliceGeometry:
        """The slice levels and in-plane centre of ``img`` of shape ``(1, X, Y, Z)`` (RAS)."""
        name = type(self).__name__
        require_ras_volume(img, name)
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
            require_ras_volume(img, type(self).__name__)
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
