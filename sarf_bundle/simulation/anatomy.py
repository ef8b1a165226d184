"""Whole-head anatomy of one simulated subject, as tissue fraction maps on a 1.5 mm canvas.

The brain comes from the MNI152 ICBM 2009 templates that ship inside nilearn's wheel (GM and WM
probability maps, brain mask; skull-stripped), smoothly deformed and scaled per subject. Around it
the head is generated: subarachnoid CSF, dura, skull (inner table, marrow, outer table), temporal
muscles, scalp fat and skin, a face and neck, orbits (globes with lens, extraocular muscles, optic
nerves, orbital fat), paranasal sinuses and nasal cavity, pituitary gland, dural sinuses and large
veins, arteries of the circle of Willis, cortical and medullary veins, choroid plexus, and lesions
(enhancing tumours with necrosis and oedema, white-matter hyperintensities, infarcts with restricted
diffusion, haemorrhages and microbleeds).

Coordinates: every shape is placed in MNI millimetres and evaluated at the MNI position of each
canvas voxel, so the subject's deformation reaches the head as well as the brain. The canvas is in
head millimetres (RAS), centred on the MNI origin.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from .tissues import Tissue

__all__ = ["Canvas", "FractionMaps", "HeadModel", "build_head", "mni_templates"]

VOXEL_MM = 1.5
"""Canvas voxel size in mm."""

_CANVAS_LO = np.array([-110.0, -142.0, -125.0])
_CANVAS_HI = np.array([110.0, 124.0, 110.0])

Box = tuple[slice, slice, slice]


@lru_cache(maxsize=1)
def mni_templates() -> tuple[np.ndarray, np.ndarray]:
    """The MNI152 2009 GM, WM and brain-mask maps from nilearn's wheel, as floats in [0, 1].

    Returns:
        ``(maps, affine)``: maps of shape (3, 197, 233, 189) ordered GM, WM, mask, and their affine.

    Raises:
        FileNotFoundError: if nilearn's packaged template files are missing.
    """
    import nilearn.datasets

    folder = Path(nilearn.datasets.__file__).parent / "data"
    names = ["gm", "wm"]
    images = [nib.load(folder / f"mni_icbm152_{n}_tal_nlin_sym_09a_converted.nii.gz") for n in names]
    from nilearn.datasets import load_mni152_brain_mask

    mask = load_mni152_brain_mask(resolution=1)
    maps = [np.asarray(im.dataobj, dtype=np.float32) / 255.0 for im in images]
    maps.append(np.asarray(mask.dataobj, dtype=np.float32))
    return np.stack(maps), images[0].affine


@dataclass(frozen=True)
class Canvas:
    """The subject's sampling canvas: shape, head-to-voxel mapping and MNI position of each voxel."""

    shape: tuple[int, int, int]
    origin: np.ndarray
    mni: np.ndarray
    """MNI coordinates (mm) of every canvas voxel, shape (3, X, Y, Z)."""
    scale: np.ndarray
    """Head-size scale per axis (head mm per MNI mm)."""

    @property
    def affine(self) -> np.ndarray:
        """Voxel-to-head-mm affine of the canvas."""
        aff = np.diag([VOXEL_MM, VOXEL_MM, VOXEL_MM, 1.0])
        aff[:3, 3] = self.origin
        return aff

    def box(self, lo_mni: np.ndarray, hi_mni: np.ndarray, margin: float = 8.0) -> Box | None:
        """Canvas voxel box around an MNI box (None when it falls outside the canvas)."""
        lo = (np.asarray(lo_mni) * self.scale - margin - self.origin) / VOXEL_MM
        hi = (np.asarray(hi_mni) * self.scale + margin - self.origin) / VOXEL_MM
        lo = np.clip(np.floor(lo).astype(int), 0, self.shape)
        hi = np.clip(np.ceil(hi).astype(int) + 1, 0, self.shape)
        if np.any(hi <= lo):
            return None
        return tuple(slice(a, b) for a, b in zip(lo, hi))  # type: ignore[return-value]

    def mni_in(self, box: Box) -> np.ndarray:
        """MNI coordinates inside a box, shape (3, ...)."""
        return self.mni[(slice(None), *box)]


class FractionMaps:
    """Per-tissue volume fractions on the canvas, built by painting shapes over each other.

    Painting a shape with coverage ``c`` scales every tissue already there by ``1 - c`` and adds the
    shape's tissues, so the fractions of each voxel always sum to one. Each tissue is stored only
    inside its bounding box.
    """

    def __init__(self, shape: tuple[int, int, int]) -> None:
        self.shape = shape
        full = tuple(slice(0, n) for n in shape)
        self.maps: dict[Tissue, tuple[Box, np.ndarray]] = {Tissue.AIR: (full, np.ones(shape, np.float32))}

    def paint(self, box: Box, parts: dict[Tissue, np.ndarray]) -> None:
        """Paint tissues over a box; ``parts`` maps tissue to fraction, their sum is the coverage."""
        coverage = np.clip(sum(parts.values()), 0.0, 1.0).astype(np.float32)
        for own_box, arr in self.maps.values():
            inter = _intersect(own_box, box)
            if inter is not None:
                arr[_relative(inter, own_box)] *= 1.0 - coverage[_relative(inter, box)]
        for tissue, frac in parts.items():
            self._add(tissue, box, np.broadcast_to(frac, coverage.shape).astype(np.float32))

    def _add(self, tissue: Tissue, box: Box, frac: np.ndarray) -> None:
        if tissue not in self.maps:
            self.maps[tissue] = (box, frac.copy())
            return
        own_box, arr = self.maps[tissue]
        union = tuple(slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in zip(own_box, box))
        if union != own_box:
            grown = np.zeros([s.stop - s.start for s in union], np.float32)
            grown[_relative(own_box, union)] = arr
            own_box, arr = union, grown
            self.maps[tissue] = (own_box, arr)
        arr[_relative(box, own_box)] += frac

    def weighted_sum(self, values: dict[Tissue, float]) -> np.ndarray:
        """Voxel-wise sum of ``values[tissue] * fraction`` over tissues (a dense canvas)."""
        out = np.zeros(self.shape, np.float32)
        for tissue, (box, arr) in self.maps.items():
            v = values.get(tissue, 0.0)
            if v != 0.0:
                out[box] += np.float32(v) * arr
        return out

    def fraction(self, tissue: Tissue) -> np.ndarray:
        """Dense fraction map of one tissue."""
        out = np.zeros(self.shape, np.float32)
        if tissue in self.maps:
            box, arr = self.maps[tissue]
            out[box] = arr
        return out


@dataclass
class HeadModel:
    """One subject's head: the canvas, its tissue fractions and its ground-truth brain mask."""

    canvas: Canvas
    tissues: FractionMaps
    brain: np.ndarray
    """Ground-truth brain fraction (MNI brain mask, deformed), shape of the canvas."""
    field_ppm: np.ndarray
    """Off-resonance of the whole head (susceptibility field, ppm of B0), B0 along head z."""
    local_field_ppm: np.ndarray
    """The same from tissue sources only (veins, blood products, calcium): what SWI phase shows."""


def _intersect(a: Box, b: Box) -> Box | None:
    out = tuple(slice(max(x.start, y.start), min(x.stop, y.stop)) for x, y in zip(a, b))
    return None if any(s.stop <= s.start for s in out) else out  # type: ignore[return-value]


def _relative(inner: Box, outer: Box) -> Box:
    return tuple(slice(i.start - o.start, i.stop - o.start) for i, o in zip(inner, outer))  # type: ignore[return-value]


def _soft_inside(signed_depth: np.ndarray) -> np.ndarray:
    """Partial-volume fraction from a signed depth in mm (positive inside), one voxel wide edge."""
    return np.clip(signed_depth / VOXEL_MM + 0.5, 0.0, 1.0).astype(np.float32)


def _ellipsoid_depth(p: np.ndarray, centre, radii) -> np.ndarray:
    """Approximate signed depth (mm, positive inside) of points p (3, ...) in an ellipsoid."""
    c = np.asarray(centre, np.float32).reshape(-1, *([1] * (p.ndim - 1)))
    r = np.asarray(radii, np.float32).reshape(-1, *([1] * (p.ndim - 1)))
    rho = np.sqrt((((p - c) / r) ** 2).sum(0))
    return (1.0 - rho) * float(np.min(radii))


def _polyline_distance(p: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Distance (mm) of points p (3, ...) to a polyline given as (N, 3) vertices."""
    best = np.full(p.shape[1:], np.inf, np.float32)
    for a, b in zip(points[:-1], points[1:]):
        a_ = a.reshape(3, *([1] * (p.ndim - 1))).astype(np.float32)
        ab = (b - a).reshape(3, *([1] * (p.ndim - 1))).astype(np.float32)
        t = np.clip(((p - a_) * ab).sum(0) / max(float((ab**2).sum()), 1e-6), 0.0, 1.0)
        best = np.minimum(best, np.sqrt(((p - a_ - t * ab) ** 2).sum(0)))
    return best


class _Painter:
    """Paints MNI-space shapes of one subject onto its fraction maps."""

    def __init__(self, canvas: Canvas, tissues: FractionMaps, brain: np.ndarray) -> None:
        self.canvas, self.tissues, self.brain = canvas, tissues, brain

    def ellipsoid(self, tissue: Tissue, centre, radii, spare_brain: bool = True) -> None:
        centre, radii = np.asarray(centre, float), np.asarray(radii, float)
        box = self.canvas.box(centre - radii, centre + radii)
        if box is None:
            return
        frac = _soft_inside(_ellipsoid_depth(self.canvas.mni_in(box), centre, radii))
        if spare_brain:
            frac *= 1.0 - self.brain[box]
        self.tissues.paint(box, {tissue: frac})

    def tube(self, tissue: Tissue, points, radius: float, spare_brain: bool = False) -> None:
        points = np.asarray(points, float)
        box = self.canvas.box(points.min(0) - radius, points.max(0) + radius)
        if box is None:
            return
        dist = _polyline_distance(self.canvas.mni_in(box), points)
        frac = _soft_inside(radius - dist) * min(1.0, 2.0 * radius / VOXEL_MM)
        if spare_brain:
            frac *= 1.0 - self.brain[box]
        self.tissues.paint(box, {tissue: frac})


def _smooth_curve(rng: np.random.Generator, knots: np.ndarray, wiggle: float, n: int = 12) -> np.ndarray:
    """A polyline through the knots with n points per span and random lateral wiggle (mm)."""
    out = []
    for a, b in zip(knots[:-1], knots[1:]):
        t = np.linspace(0.0, 1.0, n, endpoint=False)[:, None]
        out.append(a + t * (b - a))
    out.append(knots[-1:])
    pts = np.concatenate(out)
    noise = ndimage.gaussian_filter1d(rng.normal(0.0, wiggle, pts.shape), sigma=3.0, axis=0, mode="nearest")
    noise[0] = noise[-1] = 0.0
    return pts + noise


def _make_canvas(rng: np.random.Generator) -> Canvas:
    scale = np.clip(rng.normal(1.0, 0.05, 3), 0.88, 1.12) * rng.uniform(0.94, 1.06)
    origin = _CANVAS_LO * scale
    shape = tuple(int(np.ceil((_CANVAS_HI - _CANVAS_LO)[i] * scale[i] / VOXEL_MM)) for i in range(3))
    axes = [(origin[i] + VOXEL_MM * np.arange(shape[i])) / scale[i] for i in range(3)]
    mni = np.stack(np.meshgrid(*axes, indexing="ij")).astype(np.float32)
    coarse = rng.normal(0.0, 1.0, (3, 6, 6, 6))
    zoom = [(n - 1) / 5.0 for n in shape]
    for k in range(3):
        warp = ndimage.affine_transform(coarse[k], 1.0 / np.array(zoom), output_shape=shape, order=1, mode="nearest")
        mni[k] += (rng.uniform(1.5, 3.5) * warp / max(np.abs(coarse[k]).max(), 1e-6)).astype(np.float32)
    return Canvas(shape=shape, origin=origin, mni=mni, scale=scale)  # type: ignore[arg-type]


def _sample_templates(canvas: Canvas) -> np.ndarray:
    """GM, WM and brain-mask maps at the subject's MNI coordinates, shape (3, *canvas.shape)."""
    maps, affine = mni_templates()
    inv = np.linalg.inv(affine)
    vox = np.einsum("ij,j...->i...", inv[:3, :3], canvas.mni) + inv[:3, 3].reshape(3, 1, 1, 1)
    inside = np.all((vox >= -1) & (vox <= np.array(maps.shape[1:]).reshape(3, 1, 1, 1)), axis=0)
    out = np.zeros((3, *canvas.shape), np.float32)
    idx = np.nonzero(inside)
    coords = vox[(slice(None), *idx)]
    for k in range(3):
        out[(k, *idx)] = ndimage.map_coordinates(maps[k], coords, order=1, mode="constant", prefilter=False)
    return out


def _susceptibility_field(chi: np.ndarray) -> np.ndarray:
    """Field offset in ppm of B0 (along axis 2) from a susceptibility map, by the dipole kernel in k-space."""
    k = np.meshgrid(*[np.fft.fftfreq(n) for n in chi.shape[:2]], np.fft.rfftfreq(chi.shape[2]), indexing="ij")
    k2 = k[0] ** 2 + k[1] ** 2 + k[2] ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        kernel = 1.0 / 3.0 - np.where(k2 > 0, k[2] ** 2 / k2, 0.0)
    kernel[0, 0, 0] = 0.0
    return np.fft.irfftn(np.fft.rfftn(chi - chi.mean()) * kernel, s=chi.shape, axes=(0, 1, 2)).astype(np.float32)


def build_head(rng: np.random.Generator, lesions: bool = True) -> HeadModel:
    """Build one subject's head model.

    Args:
        rng: the subject's random generator (everything is drawn from it, so a seed fixes the head).
        lesions: whether to draw random lesions (a few subjects are healthy either way).

    Returns:
        The :class:`HeadModel`.
    """
    canvas = _make_canvas(rng)
    gm, wm, mask = _sample_templates(canvas)
    brain = ndimage.gaussian_filter(mask, 0.5).astype(np.float32)
    tissues = FractionMaps(canvas.shape)
    full: Box = tuple(slice(0, n) for n in canvas.shape)  # type: ignore[assignment]
    mni = canvas.mni

    # Head outline: a shell around the brain, the face below the frontal lobes, and the neck.
    outside_brain = ndimage.distance_transform_edt(brain < 0.5, sampling=VOXEL_MM).astype(np.float32)
    inside_brain = ndimage.distance_transform_edt(brain >= 0.5, sampling=VOXEL_MM).astype(np.float32)
    dist = ndimage.gaussian_filter(outside_brain - inside_brain, 0.7)
    csf_mm = rng.uniform(1.2, 3.5)
    inner_mm, marrow_mm, outer_mm = rng.uniform(1.2, 2.2), rng.uniform(1.5, 4.5), rng.uniform(1.2, 2.2)
    fat_mm, skin_mm = rng.uniform(2.0, 6.0), rng.uniform(1.5, 2.5)
    skull_out = csf_mm + 1.0 + inner_mm + marrow_mm + outer_mm
    temporal = np.exp(
        -(((np.abs(mni[0]) - 62) / 14) ** 2) - ((mni[1] + 5) / 30) ** 2 - ((mni[2] - 5) / 22) ** 2
    ).astype(np.float32)
    muscle_mm = rng.uniform(5.0, 14.0) * temporal
    face = _ellipsoid_depth(mni, (0, 40 + rng.normal(0, 3), -62), (62, 62, 48))
    nose = _ellipsoid_depth(mni, (0, 92, -52), (12, 22, 26))
    neck = np.minimum(
        _ellipsoid_depth(mni[:2], (0, -22), (58 * rng.uniform(0.9, 1.1), 55)), -(mni[2] + 55)
    )
    head_depth = np.maximum.reduce([skull_out + muscle_mm + fat_mm + skin_mm - dist, face, nose, neck])
    del face, nose, neck
    tissues.paint(full, {Tissue.SKIN: _soft_inside(head_depth)})
    depth = ndimage.distance_transform_edt(head_depth > 0, sampling=VOXEL_MM).astype(np.float32)
    depth = ndimage.gaussian_filter(depth, 0.7)
    tissues.paint(full, {Tissue.FAT: _soft_inside(depth - skin_mm)})
    tissues.paint(full, {Tissue.MUSCLE: _soft_inside(depth - skin_mm - fat_mm - rng.uniform(2, 6))})
    tissues.paint(full, {Tissue.MUSCLE: _soft_inside(skull_out + muscle_mm - dist) * (temporal > 0.05)})
    layers = [
        (Tissue.BONE, skull_out),
        (Tissue.MARROW, skull_out - outer_mm),
        (Tissue.BONE, csf_mm + 1.0 + inner_mm),
        (Tissue.DURA, csf_mm + 1.0),
        (Tissue.CSF, csf_mm),
    ]
    for tissue, radius in layers:
        tissues.paint(full, {tissue: _soft_inside(radius - dist)})
    del depth, head_depth, temporal, muscle_mm

    painter = _Painter(canvas, tissues, brain)
    _paint_face(painter, rng)
    _paint_neck(painter, rng)
    tissues.paint(full, {Tissue.GM: gm * brain, Tissue.WM: wm * brain, Tissue.CSF: np.clip(1.0 - gm - wm, 0, 1) * brain})
    del gm, wm
    _paint_vessels(painter, rng, dist, csf_mm)
    _paint_choroid_plexus(painter, rng)
    if lesions:
        _paint_lesions(painter, rng)
    chi_values = {t: 0.0 for t in Tissue}
    from .tissues import PROPERTIES

    chi_values.update({t: p.chi for t, p in PROPERTIES.items()})
    chi = tissues.weighted_sum(chi_values)
    field = _susceptibility_field(chi)
    local_sources = {t: (v if t not in (Tissue.AIR, Tissue.BONE, Tissue.MARROW) else 0.0) for t, v in chi_values.items()}
    local = _susceptibility_field(tissues.weighted_sum(local_sources))
    return HeadModel(canvas=canvas, tissues=tissues, brain=brain, field_ppm=field, local_field_ppm=local)


def _paint_face(p: _Painter, rng: np.random.Generator) -> None:
    """Orbits, globes, optic nerves, extraocular muscles, sinuses, nasal cavity, pituitary."""
    eye_r = rng.uniform(11.0, 12.5)
    for side in (-1.0, 1.0):
        globe = np.array([side * 33.0, 60.0, -40.0]) + rng.normal(0, 1.5, 3)
        apex = np.array([side * 14.0, 22.0, -38.0])
        cone = np.linspace(apex, globe, 8)
        for i, c in enumerate(cone):
            r = 4.0 + (eye_r + 5.0 - 4.0) * i / (len(cone) - 1)
            p.ellipsoid(Tissue.FAT, c, (r, 6.0, r))
        p.ellipsoid(Tissue.VITREOUS, globe, (eye_r, eye_r, eye_r))
        p.ellipsoid(Tissue.LENS, globe + [0, eye_r - 3.0, 0], (4.5, 2.0, 4.5))
        for offset in ([0, 0, 1], [0, 0, -1], [1, 0, 0], [-1, 0, 0]):
            insertion = globe + (eye_r - 1.0) * np.array(offset) + [0, 2.0, 0]
            p.tube(Tissue.EXTRAOCULAR_MUSCLE, [apex, insertion], rng.uniform(2.0, 2.8), spare_brain=True)
        back = globe - [0, eye_r, 0]
        nerve = [back, apex, np.array([side * 6.0, 8.0, -22.0])]
        p.tube(Tissue.CSF, nerve[:2], 3.0, spare_brain=True)
        p.tube(Tissue.OPTIC_NERVE, nerve, 1.9, spare_brain=True)
    sinus = rng.uniform(0.6, 1.3)
    p.ellipsoid(Tissue.MUCOSA, (0, 74, 10), (15 * sinus + 2, 7, 11 * sinus + 2))
    p.ellipsoid(Tissue.AIR, (0, 74, 10), (15 * sinus, 5, 11 * sinus))
    for centre, radii in [((0, 52, -42), (9, 17, 12)), ((0, 18, -50), (13, 12, 10))]:
        p.ellipsoid(Tissue.MUCOSA, centre, np.add(radii, 2.5))
        p.ellipsoid(Tissue.AIR, centre, radii)
    for side in (-1.0, 1.0):
        p.ellipsoid(Tissue.MUCOSA, (side * 27, 48, -72), (14, 17, 18))
        p.ellipsoid(Tissue.AIR, (side * 27, 48, -72), (12 * sinus, 15, 16))
        p.ellipsoid(Tissue.AIR, (side * 48, -32, -45), np.array([7.0, 8.0, 7.0]) * sinus)
    p.ellipsoid(Tissue.MUCOSA, (0, 70, -70), (12, 30, 20))
    p.ellipsoid(Tissue.AIR, (0, 72, -70), (7, 28, 17))
    p.ellipsoid(Tissue.PITUITARY, (0, 4, -36), (6, 5, 4))


def _paint_neck(p: _Painter, rng: np.random.Generator) -> None:
    """Cervical spine: vertebral bodies (marrow in a bony rim), spinal canal with cord."""
    top, bottom = -58.0, -160.0
    canal = [(0, -42, top + 10), (0, -38, -90), (0, -30, bottom)]
    p.tube(Tissue.BONE, [(0, -15, top - 10), (0, -10, bottom)], 12.0, spare_brain=True)
    p.tube(Tissue.MARROW, [(0, -15, top - 10), (0, -10, bottom)], 10.0, spare_brain=True)
    p.tube(Tissue.CSF, canal, 8.0, spare_brain=True)
    p.tube(Tissue.CORD, canal, 5.0 * rng.uniform(0.9, 1.1), spare_brain=True)


def _paint_vessels(p: _Painter, rng: np.random.Generator, dist: np.ndarray, csf_mm: float) -> None:
    """Dural sinuses, deep and cortical veins, medullary veins and the large arteries."""
    # Superior sagittal sinus and torcula along the inner table, straight and transverse sinuses.
    angles = np.deg2rad(np.linspace(25, 200, 30))
    maps, affine = mni_templates()
    sss = _boundary_path(maps[2], affine, np.array([0.0, -18.0, 12.0]), np.stack([0 * angles, np.cos(angles), np.sin(angles)], 1), csf_mm + 3.5)
    radius = rng.uniform(3.0, 4.5)
    p.tube(Tissue.VEIN, sss, radius)
    torcula = sss[-1]
    for side in (-1.0, 1.0):
        psi = np.deg2rad(np.linspace(0, 80, 12))
        dirs = np.stack([side * np.sin(psi), -np.cos(psi), 0 * psi], 1)
        transverse = _boundary_path(maps[2], affine, np.array([0.0, -45.0, torcula[2]]), dirs, csf_mm + 3.0)
        sigmoid = [transverse[-1], transverse[-1] + [-side * 5, 8, -25], (side * 38, -28, -68), (side * 32, -20, -150)]
        p.tube(Tissue.VEIN, np.concatenate([[torcula], transverse, sigmoid]), radius * 0.85)
        p.tube(Tissue.VEIN, _smooth_curve(rng, np.array([[side * 2.5, 2, 18], [side * 3, -25, 16], [0, -46, 8]]), 0.8), 1.2)
    p.tube(Tissue.VEIN, [(0, -46, 8), (0, -72, 12), torcula], 2.5)
    # Cortical veins climbing over the convexity to the SSS.
    for _ in range(int(rng.integers(14, 26))):
        start = np.array([rng.choice([-1, 1]) * rng.uniform(35, 60), rng.uniform(-80, 50), rng.uniform(0, 40)])
        knots = np.linspace(start, [0.0, start[1] + rng.normal(0, 10), 75.0], 6)
        knots = _snap_to_surface(maps[2], affine, knots, csf_mm * 0.5 + 0.5)
        p.tube(Tissue.VEIN, _smooth_curve(rng, knots, 1.5, n=6), rng.uniform(0.7, 1.6))
    # Medullary veins: short straight radial lines in deep white matter.
    wm_points = np.argwhere(maps[1] > 0.85)
    for idx in wm_points[rng.choice(len(wm_points), size=int(rng.integers(40, 80)))]:
        a = (affine @ np.r_[idx, 1.0])[:3]
        direction = a - np.array([np.sign(a[0]) * 15.0, -15.0, 15.0])
        direction /= max(np.linalg.norm(direction), 1e-6)
        p.tube(Tissue.VEIN, [a, a - direction * rng.uniform(10, 22)], rng.uniform(0.6, 1.0))
    # Arteries: internal carotids, vertebrobasilar system, circle of Willis and its branches.
    w = rng.normal(0, 1.5, 3)
    for side in (-1.0, 1.0):
        ica = np.array([[side * 22, -2, -150], [side * 22, -6, -75], [side * 16, 8, -45], [side * 18, 0, -30], [side * 14, 8, -22]]) + w
        p.tube(Tissue.ARTERY, _smooth_curve(rng, ica, 1.0), 2.2)
        mca = np.array([[side * 14, 8, -22], [side * 30, 8, -18], [side * 42, 6, -8], [side * 50, -10, 8], [side * 50, -40, 20]])
        p.tube(Tissue.ARTERY, _smooth_curve(rng, mca, 1.5), 1.5)
        aca = np.array([[side * 14, 8, -22], [side * 3, 18, -14], [side * 3, 38, 2], [side * 3, 30, 30], [side * 3, -10, 45]])
        p.tube(Tissue.ARTERY, _smooth_curve(rng, aca, 1.0), 1.1)
        vert = np.array([[side * 10, -30, -150], [side * 12, -35, -80], [side * 5, -38, -60], [0, -30, -48]])
        p.tube(Tissue.ARTERY, _smooth_curve(rng, vert, 1.0), 1.8)
        pca = np.array([[0, -22, -22], [side * 15, -22, -18], [side * 25, -45, -8], [side * 18, -80, 4]])
        p.tube(Tissue.ARTERY, _smooth_curve(rng, pca, 1.2), 1.2)
    p.tube(Tissue.ARTERY, [(0, -30, -48), (0, -24, -30), (0, -22, -22)], 1.8)


def _boundary_path(mask: np.ndarray, affine: np.ndarray, centre: np.ndarray, directions: np.ndarray, offset: float) -> np.ndarray:
    """Points at ``offset`` mm beyond the MNI brain boundary along rays from a centre."""
    inv = np.linalg.inv(affine)
    radii = np.arange(0.0, 130.0, 1.0)
    out = []
    for d in directions:
        pts = centre[None] + radii[:, None] * d[None]
        vox = (inv[:3, :3] @ pts.T + inv[:3, 3:4])
        inside = ndimage.map_coordinates(mask, vox, order=1, mode="constant") > 0.5
        r = radii[np.nonzero(inside)[0].max()] if inside.any() else 60.0
        out.append(centre + (r + offset) * d)
    return np.array(out)


def _snap_to_surface(mask: np.ndarray, affine: np.ndarray, points: np.ndarray, offset: float) -> np.ndarray:
    """Move points radially (from the brain centre) to ``offset`` mm outside the MNI brain boundary."""
    centre = np.array([0.0, -18.0, 18.0])
    dirs = points - centre
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    return _boundary_path(mask, affine, centre, dirs, offset)


def _paint_choroid_plexus(p: _Painter, rng: np.random.Generator) -> None:
    for side in (-1.0, 1.0):
        glomus = np.array([side * 27.0, -40.0, 16.0]) + rng.normal(0, 1.0, 3)
        p.ellipsoid(Tissue.CHOROID_PLEXUS, glomus, (4.0, 6.0, 4.0), spare_brain=False)
        p.tube(Tissue.CHOROID_PLEXUS, [glomus, [side * 16.0, -10.0, 20.0], [side * 8.0, 5.0, 16.0]], 1.6)
        if rng.random() < 0.5:
            p.ellipsoid(Tissue.CALCIFICATION, glomus, (2.0, 2.5, 2.0), spare_brain=False)
    if rng.random() < 0.5:
        p.ellipsoid(Tissue.CALCIFICATION, (0, -32, 4), (2.5, 3.0, 2.5), spare_brain=False)


def _paint_lesions(p: _Painter, rng: np.random.Generator) -> None:
    """Random lesions: enhancing tumours, WM hyperintensities, infarcts, haemorrhages, microbleeds."""
    maps, affine = mni_templates()
    wm_points, gm_points = np.argwhere(maps[1] > 0.8), np.argwhere(maps[0] > 0.6)

    def where(points: np.ndarray) -> np.ndarray:
        return (affine @ np.r_[points[rng.integers(len(points))], 1.0])[:3]

    def blob(tissue: Tissue, centre: np.ndarray, radius: float) -> None:
        p.ellipsoid(tissue, centre, radius * rng.uniform(0.7, 1.3, 3), spare_brain=False)

    if rng.random() < 0.25:
        c, r = where(wm_points), rng.uniform(8, 20)
        blob(Tissue.EDEMA, c, r * 1.8)
        blob(Tissue.ENHANCING_TUMOUR, c, r)
        blob(Tissue.NECROSIS, c, r * rng.uniform(0.4, 0.7))
    if rng.random() < 0.4:
        for _ in range(int(rng.integers(3, 25))):
            blob(Tissue.WHITE_MATTER_HYPERINTENSITY, where(wm_points), rng.uniform(2, 7))
    if rng.random() < 0.2:
        blob(Tissue.INFARCT, where(gm_points), rng.uniform(6, 18))
    if rng.random() < 0.15:
        tissue = Tissue.HAEMORRHAGE_ACUTE if rng.random() < 0.5 else Tissue.HAEMORRHAGE_SUBACUTE
        c, r = where(wm_points), rng.uniform(6, 15)
        blob(Tissue.EDEMA, c, r * 1.5)
        blob(tissue, c, r)
    if rng.random() < 0.25:
        for _ in range(int(rng.integers(1, 10))):
            blob(Tissue.HAEMORRHAGE_ACUTE, where(gm_points), rng.uniform(1.0, 2.0))
