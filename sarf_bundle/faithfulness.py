"""Faithfulness evaluation of saliency maps: ROAD's pixel removal by noisy linear imputation.

ROAD ("RemOve And Debias", Rong et al., "A Consistent and Efficient Evaluation Strategy for Attribution
Methods", ICML 2022) removes the most (or least) relevant pixels of an image and watches the classifier's
output. Removed pixels are not set to a constant, which would leak the shape of the removed region into the
image, but are *imputed*: each removed pixel takes the weighted mean of its 8 neighbours,

    x_i = sum_n w_n x_n / sum_n w_n,    w = 1/6 for the 4 direct neighbours, 1/12 for the 4 diagonal ones,

over the neighbours inside the image (at the border and in the corners the remaining weights renormalise).
Neighbours that are removed themselves are unknowns too, so all removed pixels of a slice solve one sparse
linear system together; then Gaussian noise of a small standard deviation is added to the imputed pixels.

Arrays are stacks of 2D slices ``(N, H, W)`` (or one slice ``(H, W)``), numpy, on the CPU.

- :func:`noisy_linear_imputation`: replace the removed pixels of each slice.
- :func:`most_relevant_first`: the removal mask of ROAD's MoRF order, the top fraction of each relevance map.
- :func:`road_volume`: a volume's class probabilities as more and more of its most relevant pixels go.
- :func:`faithfulness`: ``python -m sarf_bundle faithfulness``, the test set's F1 decrease per removal level
  for one or more models (SaRF paper, section 3.5 and Fig. 5a), resumable.
"""

from __future__ import annotations

import csv
import io
import json
import time
import zlib
from collections.abc import Sequence
from numbers import Real
from pathlib import Path

import numpy as np
import torch
from scipy import sparse
from scipy.sparse.linalg import spsolve
from tqdm import tqdm

from .bundle import InferenceBundle, load_inference_bundle
from .data import load_datalist, volume_probabilities
from .explain import as_list, explain_slices, named_checkpoints
from .files import atomic_write_text
from .metrics import FAMILIES, classification_metrics
from .visualize import road_figure

__all__ = [
    "IMPUTATION_STENCIL",
    "ROAD_LEVELS",
    "faithfulness",
    "most_relevant_first",
    "noisy_linear_imputation",
    "road_volume",
]

ROAD_LEVELS: tuple[int, ...] = (10, 20, 30, 40, 50, 60, 70, 80, 90)
"""Shares of the most relevant pixels removed (percent), as in the SaRF paper's Fig. 5a."""

IMPUTATION_STENCIL: tuple[tuple[int, int, float], ...] = (
    (-1, 0, 1 / 6),
    (1, 0, 1 / 6),
    (0, -1, 1 / 6),
    (0, 1, 1 / 6),
    (-1, -1, 1 / 12),
    (-1, 1, 1 / 12),
    (1, -1, 1 / 12),
    (1, 1, 1 / 12),
)
"""ROAD's neighbour weights ``(row offset, column offset, weight)``: 1/6 direct, 1/12 diagonal, summing to 1."""


# --------------------------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------------------------


def _as_slices(array: np.ndarray, name: str) -> np.ndarray:
    """``array`` as a ``(N, H, W)`` view; a ``(H, W)`` slice gets ``N = 1``. Other ranks raise ``ValueError``."""
    if array.ndim not in (2, 3):
        raise ValueError(f"{name} must have shape (N, H, W) or (H, W), got shape {array.shape}")
    return array[None] if array.ndim == 2 else array


def _removal_count(pixels: int, fraction: float) -> int:
    """``int(pixels * fraction)``, where a product within floating-point rounding of an integer counts as it.

    ``100 * 0.29`` is ``28.999999999999996`` in floating point; the intended count is 29, the count that
    Quantus's ``int(size * 29 / 100)`` gives.
    """
    product = pixels * fraction
    nearest = round(product)
    if abs(product - nearest) <= 1e-9 * max(1.0, product):
        return int(nearest)
    return int(product)


# --------------------------------------------------------------------------------------------------------------
# Noisy linear imputation
# --------------------------------------------------------------------------------------------------------------


def _linear_imputation(images: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Noise-free imputed values of the removed pixels of ``(N, H, W)`` float64 ``images``, in C order.

    All slices form one block-diagonal system: a neighbour is looked up only inside its own slice, so the
    slices stay independent. Row ``r`` (removed pixel ``p``) reads ``x_p * sum_n w_n - sum_{removed n} w_n x_n
    = sum_{kept n} w_n x_n`` over the neighbours ``n`` of ``p`` inside the slice.
    """
    _, height, width = images.shape
    flat_removed = removed.ravel()
    pixels = np.flatnonzero(flat_removed)  # flat index into the whole stack
    unknowns = pixels.size
    unknown_of_pixel = np.full(flat_removed.size, -1, dtype=np.int64)
    unknown_of_pixel[pixels] = np.arange(unknowns)

    rows_in_slice, cols_in_slice = np.divmod(pixels % (height * width), width)
    d_row = np.array([s[0] for s in IMPUTATION_STENCIL])[:, None]
    d_col = np.array([s[1] for s in IMPUTATION_STENCIL])[:, None]
    weight = np.array([s[2] for s in IMPUTATION_STENCIL])[:, None].repeat(unknowns, axis=1)

    # (8, unknowns): the neighbour of every removed pixel in every direction, and whether it lies in the slice.
    n_row = rows_in_slice + d_row
    n_col = cols_in_slice + d_col
    inside = (n_row >= 0) & (n_row < height) & (n_col >= 0) & (n_col < width)
    neighbour = pixels + d_row * width + d_col  # meaningful where inside
    equation = np.broadcast_to(np.arange(unknowns), inside.shape)

    neighbour_in, weight_in, equation_in = neighbour[inside], weight[inside], equation[inside]
    neighbour_unknown = unknown_of_pixel[neighbour_in]
    is_unknown = neighbour_unknown >= 0

    diagonal = np.bincount(equation_in, weights=weight_in, minlength=unknowns)
    known = ~is_unknown
    rhs = np.bincount(
        equation_in[known], weights=weight_in[known] * images.ravel()[neighbour_in[known]], minlength=unknowns
    )
    system = sparse.coo_array(
        (
            np.concatenate([diagonal, -weight_in[is_unknown]]),
            (
                np.concatenate([np.arange(unknowns), equation_in[is_unknown]]),
                np.concatenate([np.arange(unknowns), neighbour_unknown[is_unknown]]),
            ),
        ),
        shape=(unknowns, unknowns),
    ).tocsc()
    return np.atleast_1d(spsolve(system, rhs))


def noisy_linear_imputation(
    images: np.ndarray,
    removed: np.ndarray,
    noise: float = 0.01,
    rng: np.random.Generator | int | None = None,
) -> np.ndarray:
    """ROAD's noisy linear imputation: replace the removed pixels of each slice by the mean of their neighbours.

    For each slice independently, the removed pixels solve the sparse linear system in which every removed
    pixel equals the weighted mean of its neighbours inside the slice (weights :data:`IMPUTATION_STENCIL`: 1/6
    for the 4 direct neighbours, 1/12 for the 4 diagonal ones, renormalised over those inside the slice), i.e.
    ``x_i * sum_n w_n = sum_n w_n x_n``; removed neighbours are unknowns of the same system, kept ones move to
    the right-hand side. Gaussian noise of standard deviation ``noise`` is then added to the imputed pixels.
    Kept pixels are returned unchanged, bit for bit.

    The system has a unique solution as soon as a slice keeps at least one pixel (every group of connected
    removed pixels then borders a kept pixel, which makes its block irreducibly diagonally dominant). A slice
    with every pixel removed has no information to impute from: its system is singular, and it raises.

    Args:
        images: ``(N, H, W)`` stack of slices, or one ``(H, W)`` slice; real and finite. Solved in float64.
        removed: boolean array of the same shape, ``True`` where a pixel is removed.
        noise: standard deviation of the Gaussian noise added to the imputed pixels, ``>= 0``; 0 for none.
        rng: ``numpy.random.Generator`` (or seed) the noise is drawn from; ``None`` for a fresh
            ``np.random.default_rng()``. With ``noise > 0``, one normal draw per removed pixel, in C order of
            the whole stack.

    Returns:
        A new array of the shape of ``images`` and of its dtype (float64 for integer images), with the removed
        pixels imputed. Without any removed pixel, a copy of ``images``.

    Raises:
        TypeError: ``removed`` is not a boolean array.
        ValueError: the shapes of ``images`` and ``removed`` differ or are neither ``(N, H, W)`` nor
            ``(H, W)``; ``images`` has a NaN or infinite value; ``noise`` is negative or not finite; or a slice
            has all its pixels removed.

    Example:
        >>> image = np.array([[6.0, 3.0, 6.0], [3.0, 0.0, 3.0], [6.0, 3.0, 6.0]])
        >>> removed = np.zeros((3, 3), dtype=bool)
        >>> removed[1, 1] = True
        >>> float(noisy_linear_imputation(image, removed, noise=0.0)[1, 1])  # 4 * 3 / 6 + 4 * 6 / 12
        4.0
    """
    images = np.asarray(images)
    removed = np.asarray(removed)
    if removed.dtype != np.bool_:
        raise TypeError(f"removed must be a boolean array (True where a pixel is removed), got dtype {removed.dtype}")
    if images.shape != removed.shape:
        raise ValueError(
            f"images and removed must have the same shape, got images {images.shape} and removed {removed.shape}"
        )
    if not (np.issubdtype(images.dtype, np.floating) or np.issubdtype(images.dtype, np.integer)):
        raise TypeError(f"images must be a real numeric array, got dtype {images.dtype}")
    if not isinstance(noise, Real) or not np.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a finite standard deviation >= 0, got {noise!r}")
    slices = _as_slices(images, "images")
    removed_slices = _as_slices(removed, "removed")
    if not np.isfinite(slices).all():
        raise ValueError("images must be finite, got NaN or infinite values")

    out_dtype = images.dtype if np.issubdtype(images.dtype, np.floating) else np.float64
    result = slices.astype(out_dtype, copy=True)
    if not removed_slices.any():
        return result.reshape(images.shape)
    fully_removed = np.flatnonzero(removed_slices.reshape(removed_slices.shape[0], -1).all(axis=1))
    if fully_removed.size:
        raise ValueError(
            f"cannot impute a slice with all its pixels removed (slices {fully_removed.tolist()} of "
            f"{slices.shape[0]}): its linear system is singular, nothing is left to impute from"
        )

    values = _linear_imputation(slices.astype(np.float64), removed_slices)
    if noise > 0:
        values = values + np.random.default_rng(rng).normal(0.0, noise, size=values.shape)
    result[removed_slices] = values  # boolean indexing assigns in C order, the order of the unknowns
    return result.reshape(images.shape)


# --------------------------------------------------------------------------------------------------------------
# Removal orders
# --------------------------------------------------------------------------------------------------------------


def most_relevant_first(relevance: np.ndarray, fraction: float) -> np.ndarray:
    """Removal mask of ROAD's MoRF order: the most relevant ``fraction`` of the pixels of each slice.

    In each slice, the ``int(H * W * fraction)`` pixels of highest relevance are marked (a product within
    floating-point rounding of an integer counts as that integer: 29 pixels of 100 for ``fraction=0.29``).
    Ties are broken by position: of equal relevances, the one first in C order of the slice goes first
    (``np.argsort(-r, kind="stable")`` on the flattened slice).

    Args:
        relevance: ``(N, H, W)`` relevance maps, or one ``(H, W)`` map; real and finite.
        fraction: fraction of the pixels of each slice to mark, in ``[0, 1]``.

    Returns:
        Boolean array of the shape of ``relevance``, ``True`` on the pixels to remove.

    Raises:
        TypeError: ``relevance`` is not a real numeric array.
        ValueError: ``relevance`` is neither ``(N, H, W)`` nor ``(H, W)`` or has a NaN or infinite value, or
            ``fraction`` is not in ``[0, 1]``.

    Example:
        >>> most_relevant_first(np.array([[0.1, 0.9], [0.5, 0.5]]), 0.5)
        array([[False,  True],
               [ True, False]])
    """
    relevance = np.asarray(relevance)
    if not (np.issubdtype(relevance.dtype, np.floating) or np.issubdtype(relevance.dtype, np.integer)):
        raise TypeError(f"relevance must be a real numeric array, got dtype {relevance.dtype}")
    if not isinstance(fraction, Real) or not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
    slices = _as_slices(relevance, "relevance")
    if not np.isfinite(slices).all():
        raise ValueError("relevance must be finite, got NaN or infinite values")

    flat = slices.reshape(slices.shape[0], -1).astype(np.float64)
    count = _removal_count(flat.shape[1], float(fraction))
    order = np.argsort(-flat, axis=1, kind="stable")[:, :count]
    mask = np.zeros(flat.shape, dtype=bool)
    np.put_along_axis(mask, order, True, axis=1)
    return mask.reshape(relevance.shape)


# --------------------------------------------------------------------------------------------------------------
# ROAD of a model on volumes
# --------------------------------------------------------------------------------------------------------------


def road_volume(
    bundle: InferenceBundle,
    slices: torch.Tensor,
    levels: Sequence[float] = ROAD_LEVELS,
    noise: float = 0.01,
    rng: np.random.Generator | int | None = None,
    target: int | None = None,
) -> np.ndarray:
    """Class probabilities of one volume as its most relevant pixels are removed (ROAD, most relevant first).

    Each slice is explained (:mod:`sarf_bundle.relevance`) for one class, the volume's prediction unless
    ``target`` is given; at each level, that share of each slice's most relevant pixels is imputed
    (:func:`noisy_linear_imputation`) and the volume is classified again (mean of its slices' softmax).

    Args:
        bundle: a loaded model (:func:`sarf_bundle.bundle.load_inference_bundle`).
        slices: the volume's preprocessed slice stack ``(S, H, W)``.
        levels: removed shares in percent.
        noise: standard deviation of the imputation noise, in the units of the z-scored image.
        rng: generator (or seed) of the noise.
        target: the class whose relevance orders the removal; default the predicted class.

    Returns:
        Probabilities ``(1 + len(levels), K)``: row 0 without removal, then one row per level.
    """
    images = slices[:, None].to(bundle.device)
    with torch.no_grad():
        probabilities = [volume_probabilities(bundle.network(images), len(slices))[0]]
    target = int(probabilities[0].argmax()) if target is None else int(target)
    relevance, _ = explain_slices(bundle, slices, targets=torch.full((len(slices),), target))
    rng = np.random.default_rng(rng)
    for level in levels:
        perturbed = noisy_linear_imputation(slices.numpy(), most_relevant_first(relevance[:, 0], level / 100), noise, rng)
        with torch.no_grad():
            logits = bundle.network(torch.as_tensor(perturbed[:, None], dtype=images.dtype, device=bundle.device))
        probabilities.append(volume_probabilities(logits, len(slices))[0])
    return torch.stack(probabilities).cpu().numpy()


def faithfulness(
    datalist: str,
    model: str | Sequence[str] = "models/model.pt",
    names: str | Sequence[str] | None = None,
    out: str = "eval/faithfulness",
    split: str = "testing",
    levels: Sequence[float] = ROAD_LEVELS,
    noise: float = 0.01,
    target: str = "predicted",
    family: str = "multiclass",
    seed: int = 0,
    limit: int | None = None,
    **overrides,
) -> str:
    """ROAD faithfulness test of one or more models on a datalist split, as in the SaRF paper's Fig. 5a.

    For every volume and model, :func:`road_volume` gives the class probabilities at each removal level;
    the split's F1 at each level (and its decrease from no removal: higher means more faithful maps)
    follows. Each volume's result is kept in ``<out>/volumes/<model>/`` as soon as it is computed, so
    an interrupted run resumes where it stopped; a volume that cannot be read is reported and skipped.

    Args:
        datalist: a datalist JSON (``python -m sarf_bundle synth``).
        model: one checkpoint or several, as a list or comma-separated.
        names: a name per model (default: the folder holding each checkpoint's ``models/``).
        out: output folder: ``road.json``, ``road.csv``, ``road.png`` and the per-volume results.
        split: the datalist split (volumes are not skull-stripped, as in evaluation).
        levels: removed shares in percent.
        noise: standard deviation of the imputation noise (z-scored intensity units).
        target: ``predicted`` (explain the model's decision) or ``label`` (explain the true class).
        family: F1 of ``multiclass`` (argmax, macro mean) or ``ovr_threshold`` (one-vs-rest at 0.5, mean).
        seed: noise seed; each volume draws from its own stream, so results do not depend on order or resumption.
        limit: use only the first ``limit`` volumes of the split (quick looks).
        **overrides: config keys of ``configs/inference.json``, e.g. ``--image_size 96``.

    Returns:
        The path of ``road.json``.

    Raises:
        ValueError: for an unknown ``target`` or ``family``, names that do not fit the models, or when no
            volume could be evaluated.
    """
    if target not in ("predicted", "label"):
        raise ValueError(f"target must be 'predicted' or 'label', got {target!r}.")
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {list(FAMILIES)}, got {family!r}.")
    checkpoints, names = named_checkpoints(model, names)
    levels = [float(v) for v in (as_list(levels) if isinstance(levels, str) else levels)]
    entries = load_datalist(datalist, split)[:limit]
    out = Path(out)
    results, errors = {}, {}
    for name, checkpoint in zip(names, checkpoints):
        bundle = load_inference_bundle(checkpoint, **overrides)
        settings = {
            "checkpoint": str(Path(checkpoint).resolve()),
            "checkpoint_mtime_ns": Path(checkpoint).stat().st_mtime_ns,
            "levels": levels,
            "noise": noise,
            "target": target,
            "seed": seed,
            "overrides": {k: str(v) for k, v in sorted(overrides.items())},
        }
        rows, seconds = _road_rows(bundle, entries, out / "volumes" / name, settings, errors, desc=f"ROAD {name}")
        if not rows:
            raise ValueError(f"No volume of {datalist} split {split!r} could be evaluated: {errors}")
        results[name] = _road_summary(rows, levels, bundle.class_names, family, seconds)
    report = {
        "datalist": str(datalist),
        "split": split,
        "levels": levels,
        "noise": noise,
        "target": target,
        "family": family,
        "metric": f"{FAMILIES[family]} mean F1",
        "models": results,
        "errors": errors,
    }
    _write_road(out, report)
    for name, result in results.items():
        print(f"{name}: F1 {result['f1'][0]:.3f} -> decrease " + " ".join(f"{level:g}%:{d:+.3f}" for level, d in zip(levels, result["f1_decrease"][1:])))
    for message in errors.values():
        print(f"skipped {message}")
    return str(out / "road.json")


def _road_rows(
    bundle: InferenceBundle, entries: list[dict], folder: Path, settings: dict, errors: dict[str, str], desc: str
) -> tuple[list[dict], list[float]]:
    """One model's ROAD result per volume, and the seconds of those computed now.

    A volume's result is read from ``folder`` when it was computed with the same ``settings``, else computed
    (:func:`road_volume`) and kept there at once. A volume that cannot be read goes into ``errors`` and is skipped.
    """
    levels, noise, seed = settings["levels"], settings["noise"], settings["seed"]
    rows, seconds = [], []
    for entry in tqdm(entries, desc=desc, unit="volume"):
        cache = folder / f"{Path(entry['image']).name}.json"
        if cache.is_file() and (kept := json.loads(cache.read_text()))["settings"] == settings:
            rows.append(kept)
            continue
        tick = time.perf_counter()
        try:
            slices = bundle.load(entry["image"])
        except ValueError as error:
            errors.setdefault(entry["image"], str(error))
            continue
        rng = np.random.default_rng([seed, zlib.crc32(Path(entry["image"]).name.encode())])
        probabilities = road_volume(bundle, slices, levels, noise, rng, target=entry["label"] if settings["target"] == "label" else None)
        row = {"file": entry["image"], "label": int(entry["label"]), "probabilities": probabilities.tolist(), "settings": settings}
        seconds.append(time.perf_counter() - tick)
        atomic_write_text(cache, json.dumps(row))
        rows.append(row)
    return rows, seconds


def _write_road(out: Path, report: dict) -> None:
    """``road.json`` (the report), ``road.csv`` (F1, its decrease and accuracy per model and level) and ``road.png``."""
    levels, results = report["levels"], report["models"]
    atomic_write_text(out / "road.json", json.dumps(report, indent=1))
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["model", "removed_percent", "f1", "f1_decrease", "accuracy"])
    for name, result in results.items():
        for i, level in enumerate([0.0, *levels]):
            writer.writerow([name, level, result["f1"][i], result["f1_decrease"][i], result["accuracy"][i]])
    atomic_write_text(out / "road.csv", table.getvalue())
    road_figure(levels, {name: r["f1_decrease"][1:] for name, r in results.items()}, out / "road.png", metric="F1")


def _road_summary(rows: list[dict], levels: Sequence[float], class_names: Sequence[str], family: str, seconds: list[float]) -> dict:
    """F1, its decrease and accuracy at each removal level (level 0 first) over the evaluated volumes."""
    labels = np.array([r["label"] for r in rows])
    probabilities = np.array([r["probabilities"] for r in rows])  # (volumes, 1 + levels, K)
    f1, accuracy = [], []
    for i in range(1 + len(levels)):
        metrics = classification_metrics(probabilities[:, i], labels, class_names)
        f1.append(float(metrics[family]["mean"]["f1"]))
        accuracy.append(float(metrics["accuracy"]))
    return {
        "n_volumes": len(rows),
        "f1": f1,
        "f1_decrease": [f1[0] - v for v in f1],
        "accuracy": accuracy,
        "seconds_per_volume": float(np.mean(seconds)) if seconds else None,
    }
