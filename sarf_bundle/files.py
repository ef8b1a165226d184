"""Files: atomic writes (a temporary file in the destination folder, then a rename) and a quiet image loader.

An interrupted run never leaves a half-written NIfTI, datalist, report or CSV behind.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.transforms import LoadImage

__all__ = ["atomic_torch_save", "atomic_write_bytes", "atomic_write_text", "image_loader", "write_nifti"]


def image_loader(**kwargs) -> LoadImage:
    """MONAI's ``LoadImage(**kwargs)``, built without the two messages of its GPU DICOM reader.

    ``LoadImage`` builds every reader MONAI has, whichever it is asked to use; where nvImageCodec is not installed
    the GPU DICOM one (``NvImgCodecPydicomReader``) logs a warning and warns once more, for a reader the bundle
    never uses. Call the loader with ``reader=`` an instance, so that no other reader is tried either.
    """
    plugin_log = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    level = plugin_log.level
    plugin_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader", category=UserWarning)
            return LoadImage(**kwargs)
    finally:
        plugin_log.setLevel(level)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write bytes to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def atomic_torch_save(obj: object, path: str | Path) -> bytes:
    """``torch.save`` an object to ``path`` atomically; return the bytes written (e.g. for a checksum)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return buffer.getvalue()


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write text (UTF-8) to ``path`` through a temporary file and an atomic rename."""
    atomic_write_bytes(path, text.encode())


def write_nifti(array: np.ndarray, affine: np.ndarray, path: Path, storage: str = "float32") -> None:
    """Write a NIfTI file atomically (temporary file in the same folder, then rename).

    Args:
        array: the voxel data.
        affine: voxel-to-RAS-mm affine.
        path: destination ``.nii.gz``.
        storage: ``"int16"`` (rounded, no scaling), ``"int16_scaled"`` (nibabel picks scl_slope and
            scl_inter), ``"float32"`` or ``"uint8"``.
    """
    if storage == "int16":
        array = np.clip(np.rint(array), -32768, 32767).astype(np.int16)
    image = nib.Nifti1Image(array, affine)
    image.set_data_dtype({"int16": np.int16, "int16_scaled": np.int16, "float32": np.float32, "uint8": np.uint8}[storage])
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".nii.gz")
    os.close(fd)
    try:
        nib.save(image, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
