"""Files: atomic writes (a temporary file in the destination folder, then a rename), claims that let concurrent
runs share a folder's work, and a quiet image loader.

Every file the package writes for a user goes through one of the atomic writers here (:func:`atomic_write_text`,
:func:`atomic_write_bytes`, :func:`atomic_copy`, :func:`atomic_torch_save`, :func:`write_nifti`, :func:`save_figure`):
an interrupted run never leaves a half-written NIfTI, datalist, report, figure or CSV behind, and two runs started
on one folder classify each input once between them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import logging
import os
import shutil
import socket
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np
import torch
from monai.transforms import LoadImage

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "atomic_copy",
    "atomic_folder",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "claim",
    "image_loader",
    "locked",
    "finish_claims",
    "save_figure",
    "shared_run",
    "write_nifti",
]


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


@contextlib.contextmanager
def _replacing(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary file beside ``path`` to write; renamed onto ``path`` when the block ends, removed if it raises.

    The name is unique (writers may run at once) and ends with ``suffix`` (e.g. ``.nii.gz`` for nibabel).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_folder(path: str | Path, staging: str | Path | None = None) -> Iterator[Path]:
    """A new, empty folder to fill; renamed onto ``path`` when the block ends, removed with its content if it raises.

    A folder of several files (a DICOM series) then appears whole or not at all. Interrupted for good (the process
    killed), the half-filled folder stays behind in ``staging``, under a hidden unique name: give a ``staging``
    folder that nothing scans (e.g. not the input folder of an inference), on the same file system as ``path``.

    Args:
        path: the folder to make; it must not exist.
        staging: where the folder is filled; default ``path``'s parent.

    Raises:
        FileExistsError: ``path`` exists (when the block starts or when it ends).
    """
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists already.")
    staging = Path(staging) if staging is not None else path.parent
    staging.mkdir(parents=True, exist_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging / f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.partial"
    tmp.mkdir()
    try:
        yield tmp
        try:
            os.rename(tmp, path)  # never merges: fails when a non-empty path appeared meanwhile
        except OSError as error:
            raise FileExistsError(f"{path} could not be put in place: {error}") from error
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write bytes to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _replacing(path) as tmp:
        tmp.write_bytes(data)


def atomic_copy(source: str | Path, path: str | Path) -> None:
    """Copy a file's content to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _replacing(path) as tmp:
        shutil.copyfile(source, tmp)


def save_figure(fig: Figure, path: str | Path, dpi: float | None = None, **kwargs: Any) -> Path:
    """Save a Matplotlib figure atomically and close it; returns the path.

    The figure is rendered in memory (format from the file's extension), then written with
    :func:`atomic_write_bytes`: a render that fails leaves no file and an existing one as it was. The figure is
    closed either way.

    Args:
        fig: the figure.
        path: the file to write (its folder is created).
        dpi: resolution; None for Matplotlib's ``savefig.dpi``.
        **kwargs: other arguments of ``Figure.savefig``, e.g. ``bbox_inches="tight"``.
    """
    import matplotlib.pyplot as plt

    path = Path(path)
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format=path.suffix.removeprefix(".") or None, dpi=dpi, **kwargs)
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path


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
    with _replacing(Path(path), suffix=".tmp.nii.gz") as tmp:
        nib.save(image, tmp)


@contextlib.contextmanager
def locked(folder: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on a folder (``flock`` on the folder itself, so no lock file is left behind).

    Processes that write one file of the folder (e.g. an inference CSV that concurrent runs share) read, merge and
    write it inside this lock, so that none overwrites the rows of another.
    """
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _claim_path(folder: Path, name: str) -> Path:
    return folder / f"{hashlib.sha1(name.encode()).hexdigest()}.claim"


def _owner(pid: int) -> str:
    """``host pid start`` of a process: the start time (from ``/proc``) tells a process from a later one with its pid."""
    try:
        start = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        start = "?"
    return f"{socket.gethostname()} {pid} {start}"


def _alive(owner: str) -> bool:
    """Whether the process of an owner line still runs; one of another host counts as alive (it cannot be checked)."""
    host, pid, start = (owner.split() + ["", "", ""])[:3]
    if host != socket.gethostname() or not pid.isdigit():
        return True
    return _owner(int(pid)).split()[2] == start and Path(f"/proc/{pid}").exists()


_DONE = "done"


def claim(folder: str | Path, name: str, pid: int | None = None) -> bool:
    """Claim the work on ``name`` for the process ``pid`` (default: this one).

    A claim is a file in ``folder`` created exclusively (``O_EXCL``), holding its owner. ``False`` when a running
    process holds the claim, or when the work is done (:func:`finish_claims`). The claim of a process that no longer
    runs on this host (a crashed run) is taken over, under :func:`locked`, so that exactly one process gets it.
    Claims of other hosts are never taken over.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = _claim_path(folder, name)
    owner = _owner(os.getpid() if pid is None else pid)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        with locked(folder):
            try:
                lines = path.read_text().splitlines()
                age = time.time() - path.stat().st_mtime
            except FileNotFoundError:  # the folder was cleared this instant: the run that held it has finished
                return False
            held = bool(lines) and (lines[0] == _DONE or _alive(lines[0]))
            if held or (not lines and age < 60):  # an empty claim is being written by its creator
                return False
            path.unlink()
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)  # under the lock: no one else takes over
    with os.fdopen(fd, "w") as f:
        f.write(f"{owner}\n{name}\n")
    return True


def finish_claims(folder: str | Path, names: Sequence[str]) -> None:
    """Mark the claims of finished work done, so that no concurrent run takes them up again."""
    for name in names:
        atomic_write_bytes(_claim_path(Path(folder), name), f"{_DONE}\n{name}\n".encode())


@contextlib.contextmanager
def shared_run(folder: str | Path, pid: int | None = None) -> Iterator[Path]:
    """Take part in the work that concurrent runs share through the claims in ``folder``.

    On entry, a folder left by runs that no longer run is cleared (their claims and done marks mean nothing once
    their rows are written), and this run registers itself (a ``.run`` file). On exit, the last run to leave removes
    the folder, so that nothing is left behind once all runs have finished.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pid = os.getpid() if pid is None else pid
    me = folder / f"{pid}.{os.urandom(4).hex()}.run"
    with locked(folder):
        if not _live_runs(folder):
            for path in folder.iterdir():
                path.unlink(missing_ok=True)
        me.write_text(_owner(pid))
    try:
        yield folder
    finally:
        with locked(folder):
            me.unlink(missing_ok=True)
            if not _live_runs(folder):
                for path in folder.iterdir():
                    path.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    folder.rmdir()  # the lock is on the folder's descriptor, which outlives its name


def _live_runs(folder: Path) -> list[Path]:
    """The registrations of runs that still run (a crashed run's ``.run`` file does not count)."""
    live = []
    for path in folder.glob("*.run"):
        with contextlib.suppress(FileNotFoundError):
            if _alive(path.read_text()):
                live.append(path)
    return live
