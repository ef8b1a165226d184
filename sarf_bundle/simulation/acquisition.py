"""Acquisition of one volume from a head model: scanner geometry, physics of the read-out, artefacts.

The head sits in the scanner with a random pose. The acquisition grid (axial, sagittal or coronal,
slightly oblique) is laid out in scanner coordinates; each voxel averages the canvas over its slice
profile. Then, in order: susceptibility dephasing (gradient echoes and EPI), EPI distortion along the
phase-encoding direction (DWI), the SWI phase mask, a smooth receive bias field, k-space effects
(motion ghosts, truncation ringing), complex Gaussian noise (so the magnitude is Rician), zero-filled
reconstruction to the stored matrix, and an arbitrary stored intensity scale. The array is written in
an axis order that is not always RAS, with the affine that maps it to scanner (RAS) millimetres.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from .anatomy import VOXEL_MM, HeadModel
from .sequences import GAMMA_MHZ_PER_T, Protocol, tissue_signals
from .tissues import Tissue, TissueProperties

__all__ = ["Volume", "acquire", "head_pose", "tissue_labels"]

_BRAIN_CENTRE_MNI = np.array([0.0, -18.0, 15.0])
_AXES = {"axial": (0, 1, 2), "sagittal": (1, 2, 0), "coronal": (0, 2, 1)}
"""Scanner axes of the read-out, phase-encoding and slice directions per orientation."""


@dataclass
class Volume:
    """An acquired volume in its stored axis order, with its ground-truth brain mask."""

    image: np.ndarray
    brain_mask: np.ndarray
    affine: np.ndarray
    protocol: Protocol
    labels: np.ndarray | None = None
    """Dominant tissue per voxel (:class:`~sarf_bundle.simulation.tissues.Tissue` values), if requested."""


def head_pose(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A subject's head rotation (mostly pitch) and translation (mm) in the scanner for a session."""
    angles = np.clip(rng.normal(0.0, [7.0, 3.0, 3.0]), [-20, -8, -8], [20, 8, 8])
    return Rotation.from_euler("xyz", angles, degrees=True).as_matrix(), rng.normal(0.0, 5.0, 3)


def tissue_labels(head: HeadModel) -> np.ndarray:
    """The dominant tissue of each canvas voxel (a ground-truth segmentation), as uint8 labels."""
    best = np.zeros(head.canvas.shape, np.float32)
    labels = np.zeros(head.canvas.shape, np.uint8)
    for tissue in head.tissues.maps:
        frac = head.tissues.fraction(tissue)
        better = frac > best
        labels[better], best[better] = int(tissue), frac[better]
    return labels


def _grid(protocol: Protocol, centre: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int, int], np.ndarray]:
    """Acquisition grid: direction matrix (columns = read, phase, slice), shape and spacing."""
    read, phase, slc = _AXES[protocol.orientation]
    directions = np.eye(3)[:, [read, phase, slc]]
    directions = Rotation.from_euler("xyz", rng.normal(0, 1, 3) * protocol.oblique_deg, degrees=True).as_matrix() @ directions
    spacing = np.array([protocol.pixel_mm, protocol.pixel_mm, protocol.slice_mm + protocol.gap_mm])
    extent = np.array([protocol.fov_mm, protocol.fov_mm * rng.uniform(0.8, 1.0) if protocol.orientation == "axial" else protocol.fov_mm, protocol.coverage_mm])
    shape = tuple(int(max(2, round(e / s))) for e, s in zip(extent, spacing))
    return directions, shape, spacing  # type: ignore[return-value]


def _world_to_canvas(head: HeadModel, rotation: np.ndarray, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Affine (matrix, offset) from scanner mm to canvas voxel indices."""
    m = rotation.T / VOXEL_MM
    return m, (-rotation.T @ shift - head.canvas.origin) / VOXEL_MM


def _bias(shape: tuple[int, ...], axes_mm: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth multiplicative receive field: exp of a random quadratic polynomial in scanner mm / 100.

    Evaluated on a coarse grid (every 8th voxel) and interpolated, as the field is smooth.
    """
    coarse_shape = [max(2, n // 8 + 1) for n in shape]
    idx = np.meshgrid(*[np.linspace(0, n - 1, c) - (n - 1) / 2 for n, c in zip(shape, coarse_shape)], indexing="ij")
    x, y, z = (np.einsum("ij,j...->i...", axes_mm, np.stack(idx)) / 100.0)
    terms = [x, y, z, x * x, y * y, z * z, x * y, x * z, y * z]
    log_field = sum(rng.normal(0.0, strength) * t for t in terms)
    zoom = [(c - 1) / max(n - 1, 1) for n, c in zip(shape, coarse_shape)]
    return np.exp(ndimage.affine_transform(log_field, zoom, output_shape=shape, order=1, mode="nearest")).astype(np.float32)


def _kspace_effects(image: np.ndarray, protocol: Protocol, rng: np.random.Generator) -> np.ndarray:
    """Motion ghosts (phase errors along the phase-encoding lines) and truncation ringing, per slice."""
    k = np.fft.fftshift(np.fft.fft2(image, axes=(0, 1)), axes=(0, 1))
    n_read, n_phase = image.shape[:2]
    if protocol.ghost > 0:
        lines = np.arange(n_phase)
        if protocol.kind == "epi":
            error = protocol.ghost * np.pi * (lines % 2)
        else:
            error = protocol.ghost * np.sin(2 * np.pi * lines / rng.uniform(3, 12) + rng.uniform(0, 2 * np.pi))
        k = k * np.exp(1j * error)[None, :, None]
    if protocol.ringing > 0:
        keep = [int(n * protocol.ringing / 2) for n in (n_read, n_phase)]
        window = np.zeros((n_read, n_phase), bool)
        window[n_read // 2 - keep[0] : n_read // 2 + keep[0], n_phase // 2 - keep[1] : n_phase // 2 + keep[1]] = True
        k = k * window[:, :, None]
    return np.fft.ifft2(np.fft.ifftshift(k, axes=(0, 1)), axes=(0, 1))


def _zero_fill(image: np.ndarray, factor: int) -> np.ndarray:
    """Interpolate in-plane by zero-filling k-space, as scanners reconstruct to a finer matrix."""
    if factor == 1:
        return image
    k = np.fft.fftshift(np.fft.fft2(image, axes=(0, 1)), axes=(0, 1))
    pad = [((factor - 1) * n // 2, (factor - 1) * n - (factor - 1) * n // 2) for n in image.shape[:2]]
    k = np.pad(k, pad + [(0, 0)])
    return np.fft.ifft2(np.fft.ifftshift(k, axes=(0, 1)), axes=(0, 1)) * factor**2


def _disk_order(rng: np.random.Generator, arrays: list[np.ndarray], affine: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Store in a random axis order with random flips, keeping the affine exact."""
    perm = rng.permutation(3) if rng.random() < 0.5 else np.arange(3)
    flips = rng.random(3) < 0.4
    arrays = [a.transpose(perm) for a in arrays]
    affine = affine.copy()
    affine[:3, :3] = affine[:3, :3][:, perm]
    for axis in np.nonzero(flips)[0]:
        arrays = [np.flip(a, axis) for a in arrays]
        affine[:3, 3] += affine[:3, axis] * (arrays[0].shape[axis] - 1)
        affine[:3, axis] *= -1
    return [np.ascontiguousarray(a) for a in arrays], affine


def acquire(
    head: HeadModel,
    props: dict[Tissue, TissueProperties],
    protocol: Protocol,
    rng: np.random.Generator,
    pose: tuple[np.ndarray, np.ndarray] | None = None,
    labels: np.ndarray | None = None,
) -> Volume:
    """Acquire one volume of a head with a protocol.

    Args:
        head: the subject's head model.
        props: the subject's tissue properties.
        protocol: the acquisition.
        rng: the volume's random generator.
        pose: the session's head pose (:func:`head_pose`); the volume adds a small movement to it.
            Drawn when None.
        labels: canvas tissue labels (:func:`tissue_labels`); when given, the volume carries them
            resampled to its grid (nearest neighbour), e.g. to measure tissue contrasts.

    Returns:
        The stored :class:`Volume`.
    """
    signal = head.tissues.weighted_sum(tissue_signals(protocol, props))
    larmor_hz_per_ppm = GAMMA_MHZ_PER_T * protocol.field_t
    rotation, shift = pose if pose is not None else head_pose(rng)
    rotation = Rotation.from_euler("xyz", rng.normal(0, 0.7, 3), degrees=True).as_matrix() @ rotation
    shift = shift + rng.normal(0, 1.0, 3)
    directions, shape, spacing = _grid(protocol, head.canvas.scale * _BRAIN_CENTRE_MNI, rng)
    slice_normal_canvas = rotation.T @ directions[:, 2]
    if protocol.kind in ("spgr", "swi", "mprage", "epi"):
        te_s = (15.0 if protocol.kind == "epi" else protocol.te) * 1e-3
        gradient = sum(n * g for n, g in zip(slice_normal_canvas, np.gradient(head.field_ppm, VOXEL_MM)))
        signal *= np.abs(np.sinc(larmor_hz_per_ppm * gradient * protocol.slice_mm * te_s)).astype(np.float32)
    if protocol.kind == "swi":
        phase = -2 * np.pi * larmor_hz_per_ppm * head.local_field_ppm * protocol.te * 1e-3
        signal *= (np.clip(1 - np.abs(phase) / np.pi, 0, 1) ** 4).astype(np.float32)

    centre_world = rotation @ (head.canvas.scale * _BRAIN_CENTRE_MNI) + shift
    centre_world = centre_world + rng.normal(0, 4, 3) + directions[:, 2] * rng.uniform(0, 10) * (protocol.orientation == "axial")
    axes_mm = directions * spacing
    origin = centre_world - axes_mm @ ((np.array(shape) - 1) / 2.0)
    to_canvas, to_canvas_offset = _world_to_canvas(head, rotation, shift)
    matrix = to_canvas @ axes_mm
    offset = to_canvas @ origin + to_canvas_offset

    n_sub = max(1, int(round(protocol.slice_mm / VOXEL_MM)))
    sub = ((np.arange(n_sub) + 0.5) / n_sub - 0.5) * protocol.slice_mm / spacing[2]
    if protocol.kind == "epi":
        grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"))
        canvas_pts = np.einsum("ij,j...->i...", matrix, grid) + offset.reshape(3, 1, 1, 1)
        field = ndimage.map_coordinates(head.field_ppm, canvas_pts, order=1, prefilter=False)
        shift_px = field * larmor_hz_per_ppm / protocol.pe_bandwidth_hz
        jacobian = np.clip(1.0 + np.gradient(shift_px, axis=1), 0.2, 5.0)
        canvas_pts = canvas_pts - shift_px[None] * matrix[:, 1].reshape(3, 1, 1, 1)
        image = sum(
            ndimage.map_coordinates(signal, canvas_pts + s * matrix[:, 2].reshape(3, 1, 1, 1), order=1, prefilter=False)
            for s in sub
        ) / n_sub / jacobian
        mask = ndimage.map_coordinates(head.brain, canvas_pts, order=1, prefilter=False)
        if labels is not None:
            labels = ndimage.map_coordinates(labels, canvas_pts, order=0, prefilter=False)
    else:
        image = sum(
            ndimage.affine_transform(signal, matrix, offset + s * matrix[:, 2], output_shape=shape, order=1, prefilter=False)
            for s in sub
        ) / n_sub
        mask = ndimage.affine_transform(head.brain, matrix, offset, output_shape=shape, order=1, prefilter=False)
        if labels is not None:
            labels = ndimage.affine_transform(labels, matrix, offset, output_shape=shape, order=0, prefilter=False)
    mask = mask > 0.5

    image = image * _bias(shape, axes_mm, protocol.bias, rng)
    brain_level = float(image[mask].mean()) if mask.any() else float(image.mean())
    if protocol.ghost > 0 or protocol.ringing > 0:
        image = _kspace_effects(image.astype(np.complex64), protocol, rng)
    sigma = np.float32(brain_level / protocol.snr)
    noise = rng.standard_normal((2, *image.shape), dtype=np.float32) * sigma
    image = image + noise[0] + 1j * noise[1]
    del noise
    image = np.abs(_zero_fill(image, protocol.recon_factor)).astype(np.float32)
    if protocol.recon_factor > 1:
        mask = np.repeat(np.repeat(mask, protocol.recon_factor, 0), protocol.recon_factor, 1)
        if labels is not None:
            labels = np.repeat(np.repeat(labels, protocol.recon_factor, 0), protocol.recon_factor, 1)
        axes_mm = axes_mm @ np.diag([1.0 / protocol.recon_factor, 1.0 / protocol.recon_factor, 1.0])
        origin = origin - axes_mm[:, :2] @ np.full(2, (protocol.recon_factor - 1) / 2.0)

    image *= rng.uniform(300, 4000) / max(float(np.percentile(image, 99.5)), 1e-6)
    affine = np.eye(4)
    affine[:3, :3], affine[:3, 3] = axes_mm, origin
    arrays, affine = _disk_order(rng, [image, mask.astype(np.uint8)] + ([labels] if labels is not None else []), affine)
    return Volume(image=arrays[0], brain_mask=arrays[1], affine=affine, protocol=protocol, labels=arrays[2] if labels is not None else None)
