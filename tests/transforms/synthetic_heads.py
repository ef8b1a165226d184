"""Synthetic heads and volumes for the transform tests: NIfTI written in any orientation, loaded the MONAI way."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd
from nibabel.orientations import axcodes2ornt, ornt_transform

SPACING = (1.1, 0.9, 2.5)


KEYS = ["image", "brain_mask"]


def ras_affine(spacing: tuple[float, float, float]) -> np.ndarray:
    return np.diag([*spacing, 1.0]) + np.array([[0, 0, 0, -20.0], [0, 0, 0, -25.0], [0, 0, 0, -60.0], [0, 0, 0, 0]])


def head(shape: tuple[int, int, int], spacing: tuple[float, float, float], top: int, seed: int = 0) -> dict:
    """Whole-head ellipsoid with an intensity gradient, cut flat at slice ``top``, in Rician noise; and its brain."""
    x, y, z = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    centre = np.array([shape[0] / 2, shape[1] / 2, top - 0.3 * shape[2]])
    radii = 0.4 * np.array(shape)
    distance = np.sqrt(sum(((c - m) / r) ** 2 for c, m, r in zip((x, y, z), centre, radii)))
    inside = (distance < 1) & (z <= top)
    brain = (distance < 0.75) & (z <= top - 2)
    noise = np.random.default_rng(seed).normal(0, 4, (2, *shape))
    signal = np.where(inside, 100 + 0.5 * x + y + 0.3 * z, 0.0)
    image = np.sqrt((signal + noise[0]) ** 2 + noise[1] ** 2)
    return {"image": image.astype(np.float32), "brain_mask": brain.astype(np.float32)}


def load(tmp_path, arrays: dict, affine: np.ndarray, axcodes: str = "RAS") -> dict:
    """Write each array as NIfTI stored in ``axcodes`` order, then Load, EnsureChannelFirst, Orientation RAS."""
    reorientation = ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(axcodes))
    files = {}
    for key, array in arrays.items():
        files[key] = str(tmp_path / f"{key}_{axcodes}.nii.gz")
        nib.save(nib.Nifti1Image(array, affine).as_reoriented(reorientation), files[key])
    keys = list(files)
    loader = [LoadImaged(keys, image_only=True), EnsureChannelFirstd(keys), Orientationd(keys, "RAS", labels=None)]
    return Compose(loader)(files)


def volume(data: np.ndarray, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> MetaTensor:
    return MetaTensor(torch.as_tensor(data, dtype=torch.float32)[None], affine=torch.as_tensor(ras_affine(spacing)))


def circle_slab(spacing_x: float, spacing_y: float, centre_mm: tuple[float, float], radius_mm: float) -> MetaTensor:
    """100 mm x 100 mm x 4 slices, a disc of ``radius_mm`` at ``centre_mm`` from the first voxel, in every slice."""
    n_x, n_y = round(100 / spacing_x), round(100 / spacing_y)
    x_mm, y_mm = np.meshgrid(np.arange(n_x) * spacing_x, np.arange(n_y) * spacing_y, indexing="ij")
    disc = (x_mm - centre_mm[0]) ** 2 + (y_mm - centre_mm[1]) ** 2 < radius_mm**2
    return volume(np.repeat(disc[..., None], 4, axis=2).astype(np.float32), (spacing_x, spacing_y, 3.0))
