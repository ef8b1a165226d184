"""Figures of data: a montage of subjects x sequences from a datalist."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

from . import SEQUENCES  # noqa: E402

__all__ = ["axial_slice", "datalist_montage"]


def axial_slice(path: str | Path, fraction: float = 0.55) -> tuple[np.ndarray, tuple[float, float]]:
    """An axial slice of a volume in RAS orientation, at a fraction of its cranio-caudal extent.

    Args:
        path: NIfTI file.
        fraction: position between the lowest (0) and highest (1) slice.

    Returns:
        The slice (rows = posterior to anterior, columns = right to left as radiologists view it)
        and its pixel size (mm).
    """
    image = nib.as_closest_canonical(nib.load(str(path)))
    k = int(round(fraction * (image.shape[2] - 1)))
    data = np.asarray(image.dataobj[:, :, k], dtype=np.float32)
    zooms = image.header.get_zooms()[:2]
    return data.T[::-1, ::-1], (float(zooms[1]), float(zooms[0]))


def datalist_montage(datalist: str | Path, out: str | Path, subjects: int = 2, split: str = "testing", fraction: float = 0.55) -> Path:
    """Save a montage of the first subjects of a datalist split, one row per subject, one column per sequence.

    Args:
        datalist: a datalist JSON written by ``python -m sarf_bundle synth`` (paths relative to it).
        out: PNG file to write.
        subjects: number of subjects (rows).
        split: ``training`` or ``testing``.
        fraction: cranio-caudal position of the shown slice.

    Returns:
        The written path.

    Raises:
        ValueError: if the split has fewer subjects than asked.
    """
    datalist = Path(datalist)
    entries = json.loads(datalist.read_text())[split]
    names = list(dict.fromkeys(e["subject"] for e in entries))
    if len(names) < subjects:
        raise ValueError(f"{datalist} split {split!r} has {len(names)} subjects, fewer than {subjects}.")
    fig, axes = plt.subplots(subjects, len(SEQUENCES), figsize=(2.6 * len(SEQUENCES), 2.9 * subjects), squeeze=False)
    for row, name in enumerate(names[:subjects]):
        for col, sequence in enumerate(SEQUENCES):
            entry = next(e for e in entries if e["subject"] == name and e["sequence"] == sequence)
            data, (dy, dx) = axial_slice(datalist.parent / entry["image"], fraction)
            ax = axes[row, col]
            ax.imshow(data, cmap="gray", vmin=0, vmax=np.percentile(data, 99.5), aspect=dy / dx, interpolation="lanczos")
            acq = entry.get("acquisition", {})
            ax.set_title(f"{name} {sequence}\n{acq.get('kind', '')} {acq.get('field_t', '')}T {acq.get('orientation', '')}", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
