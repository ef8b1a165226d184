"""Figures: a montage of subjects x sequences, class relevance maps (paper Fig. 3) and ROAD curves (Fig. 5a)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

from . import SEQUENCES  # noqa: E402
from .data import load_datalist  # noqa: E402
from .files import save_figure  # noqa: E402

__all__ = ["axial_slice", "datalist_montage", "radiological", "relevance_figure", "road_figure"]


def radiological(array: np.ndarray) -> np.ndarray:
    """An axial array indexed ``[R, A]`` (RAS) as radiologists view it: anterior up, the patient's right on the left."""
    return np.asarray(array).T[::-1, ::-1]


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
    return radiological(data), (float(zooms[1]), float(zooms[0]))


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
    entries = load_datalist(datalist, split)
    names = list(dict.fromkeys(e["subject"] for e in entries))
    if len(names) < subjects:
        raise ValueError(f"{datalist} split {split!r} has {len(names)} subjects, fewer than {subjects}.")
    fig, axes = plt.subplots(subjects, len(SEQUENCES), figsize=(2.6 * len(SEQUENCES), 2.9 * subjects), squeeze=False)
    for row, name in enumerate(names[:subjects]):
        for col, sequence in enumerate(SEQUENCES):
            entry = next(e for e in entries if e["subject"] == name and e["sequence"] == sequence)
            data, (dy, dx) = axial_slice(entry["image"], fraction)
            ax = axes[row, col]
            ax.imshow(data, cmap="gray", vmin=0, vmax=np.percentile(data, 99.5), aspect=dy / dx, interpolation="lanczos")
            acq = entry.get("acquisition", {})
            ax.set_title(f"{name} {sequence}\n{acq.get('kind', '')} {acq.get('field_t', '')}T {acq.get('orientation', '')}", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    return save_figure(fig, out, dpi=110)


def relevance_figure(
    image: np.ndarray,
    relevance: dict[str, np.ndarray],
    probabilities: dict[str, np.ndarray],
    out: str | Path,
    class_names: Sequence[str] = SEQUENCES,
    percentiles: Sequence[float] | None = None,
    title: str = "",
) -> Path:
    """Save the class relevance maps of one volume's slices as a grid, as in the SaRF paper's Fig. 3.

    One row per slice and model: the input slice, then one map per class. Red is relevance for the
    class, blue against it; each row shares one symmetric colour scale, so the classes of a row compare.

    Args:
        image: the slice stack ``(S, H, W)`` (axes R, A), as the network saw it.
        relevance: per model name, maps ``(S, K, H, W)``.
        probabilities: per model name, the volume's class probabilities ``(K,)``.
        out: PNG file to write.
        class_names: the ``K`` class names.
        percentiles: the cranio-caudal percentile of each slice, for the row labels.
        title: figure title.

    Returns:
        The written path.
    """
    models = list(relevance)
    n_slices, n_classes = image.shape[0], len(class_names)
    percentiles = list(percentiles) if percentiles is not None else list(range(n_slices))
    rows = n_slices * len(models)
    fig, axes = plt.subplots(rows, n_classes + 1, figsize=(1.55 * (n_classes + 1), 1.6 * rows + 0.8), squeeze=False)
    for s in range(n_slices):
        for m, model in enumerate(models):
            row = axes[s * len(models) + m]
            if m == 0:
                row[0].imshow(radiological(image[s]), cmap="gray")
            row[0].set_ylabel(f"p{percentiles[s]:g}\n{model}", fontsize=7)
            maps = relevance[model][s]
            limit = float(np.abs(maps).max()) or 1.0
            for k in range(n_classes):
                row[k + 1].imshow(radiological(maps[k]), cmap="bwr", vmin=-limit, vmax=limit)
                if s == 0 and m == 0:
                    row[k + 1].set_title(class_names[k], fontsize=9)
            for ax in row:
                ax.set_xticks([])
                ax.set_yticks([])
                ax.spines[:].set_visible(False)
    axes[0, 0].set_title("input", fontsize=9)
    lines = [
        f"{model}: {class_names[int(np.argmax(p))]} ({', '.join(f'{c} {v:.2f}' for c, v in zip(class_names, p))})" for model, p in probabilities.items()
    ]
    lines = ([title] if title else []) + lines
    fig.suptitle("\n".join(lines), fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.14 * len(lines) / fig.get_figheight()))
    return save_figure(fig, out, dpi=72)


def road_figure(levels: Sequence[float], decrease: dict[str, Sequence[float]], out: str | Path, metric: str = "F1") -> Path:
    """Save ROAD curves as in the SaRF paper's Fig. 5a: the decrease of a metric against the share of most relevant pixels removed.

    Args:
        levels: removed shares, in percent.
        decrease: per model name, the metric without removal minus the metric at each level (higher is more faithful).
        out: PNG file to write.
        metric: the metric's name for the axis label.

    Returns:
        The written path.
    """
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for model, values in decrease.items():
        ax.plot(levels, values, marker="o", label=model)
    ax.axhline(0.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlabel("most relevant pixels removed (%)")
    ax.set_ylabel(f"{metric} decrease")
    ax.set_title("ROAD, most relevant first, noisy linear imputation", fontsize=9)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, out, dpi=110)
