"""Data plumbing between volumes and the 2D network: datalists, slice batches, volume predictions.

A volume enters the network as its 7 percentile slices, stacked on the channel axis by
:class:`~sarf_bundle.transforms.SelectPercentileSlicesd` (``(7, H, W)``). :class:`SliceBatch` turns a
batch of volumes into a batch of single-channel slices, each carrying its volume's label;
:class:`VolumeOutput` averages the slice probabilities of each volume back into one probability
vector (paper, section 3.3).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from monai.data import Dataset
from monai.engines import PrepareBatch
from monai.utils import CommonKeys

from .files import claim

__all__ = [
    "NIFTI_SUFFIXES",
    "VOLUME_SUFFIXES",
    "InferenceDataset",
    "SliceBatch",
    "VolumeOutput",
    "error_message",
    "item_name",
    "list_volumes",
    "load_datalist",
    "volume_probabilities",
]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
"""Single-file NIfTI: what the skull-stripping backends read."""
VOLUME_SUFFIXES = (*NIFTI_SUFFIXES, ".hdr", ".hdr.gz")
"""Files read as volumes: NIfTI, and Analyze or NIfTI pairs by their header (``.hdr``; the ``.img`` beside it holds the data)."""
FILE_KEYS = ("image", "brain_mask")


def load_datalist(
    path: str | Path, split: str, folds: Sequence[int] | None = None, exclude_folds: Sequence[int] | None = None
) -> list[dict]:
    """Entries of one split of a datalist, with file paths made absolute (relative to the datalist).

    Args:
        path: datalist JSON (``training`` entries carry a ``fold``; ``testing`` is a separate split).
        split: ``training`` or ``testing``.
        folds: keep only these folds (validation: ``[k]``).
        exclude_folds: drop these folds (training: ``[k]``).

    Returns:
        The entries, in file order, each with a ``filename`` key (the image path, see :func:`item_name`), which
        survives the preprocessing, so that evaluation results name their volumes.

    Raises:
        FileNotFoundError: if the datalist does not exist.
        KeyError: if the split is missing, naming the splits that exist.
        ValueError: if the selection is empty.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Datalist {path} does not exist; create one with `python -m sarf_bundle synth --out DIR`.")
    content = json.loads(path.read_text())
    if split not in content:
        raise KeyError(f"Datalist {path} has no split {split!r}; it has {sorted(k for k, v in content.items() if isinstance(v, list))}.")
    entries = []
    for entry in content[split]:
        if folds is not None and entry.get("fold") not in folds:
            continue
        if exclude_folds is not None and entry.get("fold") in exclude_folds:
            continue
        resolved = {k: (str(path.parent / v) if k in FILE_KEYS else v) for k, v in entry.items()}
        entries.append({**resolved, "filename": item_name(resolved)})
    if not entries:
        raise ValueError(f"Datalist {path}: split {split!r} with folds={folds}, exclude_folds={exclude_folds} is empty.")
    return entries


def list_volumes(folder: str | Path, done: Sequence[str] = ()) -> list[dict]:
    """Every input of a folder and its subfolders: NIfTI files and DICOM series, sorted by name.

    Items: ``{"image": path}`` for a NIfTI file or an Analyze/NIfTI pair's ``.hdr`` (brain masks
    ``*_brainmask.nii*`` are skipped), ``{"image": DicomSeries, "name": ...}`` for a DICOM series (files grouped
    by SeriesInstanceUID, see :func:`sarf_bundle.dicom.find_dicom_series`), and ``{"image": path, "error": message}``
    for an input that cannot be read, so that it still gets its row: a file that looks like DICOM but whose header
    cannot be read, a symbolic link whose target is missing, an ``.img`` without its ``.hdr``. Other files are not
    inputs.

    Args:
        folder: the input folder.
        done: names to skip (the ``file`` column of an interrupted run's CSV).

    Raises:
        FileNotFoundError: if the folder does not exist.
    """
    from .dicom import find_dicom_series

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Input folder {folder} does not exist.")
    items = [_volume_item(p) for p in folder.rglob("*") if p.name.endswith((*VOLUME_SUFFIXES, ".img", ".img.gz")) and "_brainmask." not in p.name]
    items = [item for item in items if item is not None]
    series, unreadable = find_dicom_series(folder)
    items += [{"image": s, "name": str(folder / s.name)} for s in series]
    items += [{"image": str(path), "error": message} for path, message in unreadable]
    skip = set(done)
    return sorted((i for i in items if item_name(i) not in skip), key=item_name)


def _volume_item(path: Path) -> dict | None:
    """The item of a volume file, an error item for one that cannot be read, ``None`` for what is not an input."""
    if path.is_symlink() and not path.exists():
        return {"image": str(path), "error": f"broken symbolic link: its target {os.readlink(path)} does not exist"}
    if not path.is_file():
        return None
    if path.name.endswith((".img", ".img.gz")):
        header = path.with_name(path.name.replace(".img", ".hdr"))
        return None if header.exists() else {"image": str(path), "error": f"Analyze image without its header {header.name}"}
    return {"image": str(path)}


def item_name(item: dict) -> str:
    """The name of an input in the inference CSV: its ``name``, or the path of its file."""
    return str(item.get("name", item["image"]))


def error_message(error: BaseException) -> str:
    """One line naming what went wrong: the type and text of the error's cause (MONAI wraps transform errors)."""
    cause = error.__cause__ or error
    return f"{type(cause).__name__}: {cause}".replace("\n", " ")


class InferenceDataset(Dataset):
    """A dataset that never fails on a bad input: the item gets ``status="error"`` and a ``message``.

    Every item carries ``filename`` (the input's name, see :func:`item_name`), ``status`` (``ok`` or
    ``error``), ``message`` (why it failed, or a note such as how a 4D input was reduced), ``warning``
    (why the prediction should not be trusted, e.g. no head in view; empty if none) and ``header`` (a
    DICOM series' header summary as JSON, empty for NIfTI). The image is a plain tensor (a zero
    placeholder of ``placeholder_shape`` when the input failed), so good and bad items collate into
    one batch.

    With a ``claims`` folder, each input is claimed (:func:`sarf_bundle.files.claim`) for the process that builds
    the dataset before it is read; an input that another running process has claimed is not read and gets
    ``status="skipped"``. So runs started at once on one folder share its inputs instead of each doing them all.

    Args:
        data: items of :func:`list_volumes` (at least ``{"image": path}``).
        transform: the preprocessing; it may add ``note`` and ``warning`` keys.
        placeholder_shape: shape of a preprocessed image, ``(n_slices, size, size)``.
        claims: the folder of claims shared by concurrent runs (see :func:`sarf_bundle.handlers.claims_folder`), or
            ``None`` to read every input.
    """

    def __init__(self, data: Sequence[dict], transform, placeholder_shape: Sequence[int], claims: str | Path | None = None) -> None:
        super().__init__(data, transform)
        self.placeholder_shape = tuple(placeholder_shape)
        self.claims = claims
        self.owner = os.getpid()  # DataLoader workers claim for the process that writes the rows

    def _transform(self, index: int) -> dict:
        source = self.data[index]
        header = getattr(source["image"], "header", None)
        row = {"filename": item_name(source), "header": json.dumps(header) if header else "", "warning": ""}
        if self.claims is not None and not claim(self.claims, row["filename"], pid=self.owner):
            return {"image": torch.zeros(self.placeholder_shape), **row, "status": "skipped", "message": "claimed by another run"}
        try:
            if "error" in source:
                raise ValueError(source["error"])
            item = super()._transform(index)
            image = torch.as_tensor(item["image"]).as_subclass(torch.Tensor).float()
            return {"image": image, **row, "status": "ok", "message": item.get("note", ""), "warning": item.get("warning", "")}
        except Exception as error:  # a bad input must not stop the run: record it in its row
            message = error_message(error)
            return {"image": torch.zeros(self.placeholder_shape), **row, "status": "error", "message": message}


class SliceBatch(PrepareBatch):
    """Prepare a batch of volumes ``(B, S, H, W)`` as ``B*S`` single-channel slices with their labels.

    Each volume's ``S`` slices follow each other, so slice ``b*S + s`` belongs to volume ``b``.
    Labels of shape ``(B,)`` or ``(B, 1)`` are repeated per slice as ``(B*S,)`` long integers;
    a batch without labels (inference) gives ``None`` targets.

    Example:
        >>> batch = {"image": torch.zeros(2, 7, 32, 32), "label": torch.tensor([3, 1])}
        >>> x, y = SliceBatch()(batch)
        >>> x.shape, y.tolist()
        (torch.Size([14, 1, 32, 32]), [3, 3, 3, 3, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1])
    """

    def __call__(
        self, batchdata: dict[str, torch.Tensor], device: str | torch.device | None = None, non_blocking: bool = False, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        images = batchdata[CommonKeys.IMAGE]
        if images.ndim != 4:
            raise ValueError(f"SliceBatch expects images of shape (B, S, H, W), got {tuple(images.shape)}.")
        n_slices = images.shape[1]
        images = images.reshape(-1, 1, *images.shape[2:]).to(device=device, non_blocking=non_blocking)
        labels = batchdata.get(CommonKeys.LABEL)
        if labels is not None:
            labels = torch.as_tensor(labels).reshape(-1).long().repeat_interleave(n_slices).to(device=device, non_blocking=non_blocking)
        return images, labels


def volume_probabilities(logits: torch.Tensor, n_slices: int, temperature: float = 1.0) -> torch.Tensor:
    """Class probabilities of each volume ``(B, K)``: the mean softmax of its ``n_slices`` consecutive slice logits ``(B*S, K)``.

    The one place where slice logits become a volume's probabilities (paper, section 3.3), for training's
    validation, evaluation, inference, calibration, explanations and MONAI Label alike.

    Args:
        logits: slice logits ``(B*S, K)``, the slices of each volume consecutive.
        n_slices: slices per volume ``S``.
        temperature: divides the logits before the softmax (temperature scaling, :mod:`sarf_bundle.calibration`).
    """
    return torch.softmax(logits.float() / temperature, dim=1).reshape(-1, n_slices, logits.shape[1]).mean(dim=1)


class VolumeOutput:
    """Ignite ``output_transform``: slice logits and labels of a batch to volume probabilities and labels.

    The probability of a volume is the mean of the softmax of its slices (paper, section 3.3).

    Args:
        n_slices: slices per volume.
        one_hot: return labels one-hot ``(B, K)`` (MONAI metrics) instead of ``(B,)`` (Ignite metrics).
        temperature: divides the logits before the softmax (:mod:`sarf_bundle.calibration`).
    """

    def __init__(self, n_slices: int = 7, one_hot: bool = False, temperature: float = 1.0) -> None:
        self.n_slices = n_slices
        self.one_hot = one_hot
        self.temperature = temperature

    def __call__(self, output: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = output[CommonKeys.PRED]
        probs = volume_probabilities(logits, self.n_slices, self.temperature)
        labels = output[CommonKeys.LABEL].reshape(-1, self.n_slices)[:, 0]
        if self.one_hot:
            labels = torch.nn.functional.one_hot(labels, logits.shape[1])
        return probs, labels
