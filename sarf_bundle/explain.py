"""``python -m sarf_bundle explain``: class relevance maps of one volume, as in the SaRF paper's Fig. 3."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .bundle import InferenceBundle, load_inference_bundle
from .data import volume_probabilities
from .files import atomic_write_bytes
from .relevance import relevance_maps
from .visualize import relevance_figure

__all__ = ["as_list", "class_map_similarity", "explain", "explain_slices", "named_checkpoints"]


def as_list(value: str | os.PathLike | Sequence[str]) -> list[str]:
    """A command-line list: a sequence as is, a string split at commas."""
    if isinstance(value, (str, os.PathLike)):
        return [v.strip() for v in str(value).split(",") if v.strip()]
    return [str(v) for v in value]


def named_checkpoints(model: str | os.PathLike | Sequence[str], names: str | Sequence[str] | None) -> tuple[list[str], list[str]]:
    """Checkpoints and their display names, both given as lists or comma-separated strings.

    Without names, each checkpoint is named by the folder that holds its ``models/`` (``runs/sarf/models/model.pt``
    is ``sarf``).

    Raises:
        ValueError: when the names are not one distinct name per checkpoint.
    """
    checkpoints = as_list(model)
    names = (as_list(names) if names is not None else []) or [Path(c).resolve().parent.parent.name or str(c) for c in checkpoints]
    if len(names) != len(checkpoints) or len(set(names)) != len(names):
        raise ValueError(f"names must give each of the {len(checkpoints)} models a distinct name, got {names}.")
    return checkpoints, names


def explain_slices(bundle: InferenceBundle, slices: torch.Tensor, targets: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Relevance maps and volume probabilities of one preprocessed volume.

    Args:
        bundle: a loaded model (:func:`sarf_bundle.bundle.load_inference_bundle`).
        slices: the volume's slice stack ``(S, H, W)``.
        targets: classes to explain per slice, ``(S,)`` or ``(S, T)``; default every class.

    Returns:
        ``(relevance, probabilities)``: maps ``(S, T, H, W)`` and the volume's class probabilities ``(K,)``,
        temperature-scaled as in inference.
    """
    images = slices[:, None].to(bundle.device)
    explanation = relevance_maps(bundle.network, images, None if targets is None else targets.to(bundle.device))
    probabilities = volume_probabilities(explanation.logits, slices.shape[0], bundle.temperature)[0]
    return explanation.relevance[:, :, 0].cpu().numpy(), probabilities.cpu().numpy()


def class_map_similarity(relevance: np.ndarray) -> float:
    """Mean ``|cos|`` between the class maps of each slice, ``(S, K, H, W)`` -> one number.

    The image-space counterpart of the SaRF loss's saliency distinctiveness (eq. 2): 1 when every
    class has the same map, lower for more distinctive maps.
    """
    flat = relevance.reshape(*relevance.shape[:2], -1).astype(np.float64)
    flat = flat / np.maximum(np.linalg.norm(flat, axis=-1, keepdims=True), 1e-12)
    cosine = np.abs(np.einsum("skd,sjd->skj", flat, flat))
    upper = np.triu_indices(relevance.shape[1], 1)
    return float(cosine[:, upper[0], upper[1]].mean())


def explain(
    volume: str,
    model: str | Sequence[str] = "models/model.pt",
    names: Sequence[str] | None = None,
    out: str = "eval/explanations",
    **overrides,
) -> dict[str, str]:
    """Write the class relevance maps of a volume's slices as a PNG grid and a NumPy archive.

    The volume goes through the inference preprocessing of ``configs/inference.json``; every slice
    gets one Deep Taylor decomposition map per class (:mod:`sarf_bundle.relevance`), for each model.

    Args:
        volume: a NIfTI volume.
        model: one checkpoint, or several to compare (e.g. baseline and SaRF, as in Fig. 3), as a list
            or comma-separated (``--model base/models/model.pt,sarf/models/model.pt``).
        names: a name per model for the figure, list or comma-separated (default: the folder that
            holds each checkpoint's ``models/``).
        out: output folder; writes ``<volume>_relevance.png`` and ``<volume>_relevance.npz`` (``image``
            ``(S, H, W)``, ``relevance`` ``(M, S, K, H, W)``, ``probabilities`` ``(M, K)``, ``models``,
            ``class_names``, ``percentiles``).
        **overrides: config keys of ``configs/inference.json``, e.g. ``--image_size 96``.

    Returns:
        The paths written, ``{"figure": ..., "maps": ...}``.

    Raises:
        ValueError: when the volume cannot be read, or ``names`` does not match the models.
    """
    checkpoints, names = named_checkpoints(model, names)
    bundles = [load_inference_bundle(c, **overrides) for c in checkpoints]
    slices = bundles[0].load(volume)
    relevance, probabilities, seconds = {}, {}, {}
    for name, bundle in zip(names, bundles):
        tick = time.perf_counter()
        relevance[name], probabilities[name] = explain_slices(bundle, slices)
        seconds[name] = time.perf_counter() - tick
    stem = Path(volume).name.removesuffix(".gz").removesuffix(".nii")
    out = Path(out)
    figure = relevance_figure(
        slices.numpy(), relevance, probabilities, out / f"{stem}_relevance.png", bundles[0].class_names, bundles[0].percentiles, title=Path(volume).name
    )
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        image=slices.numpy(),
        relevance=np.stack([relevance[n] for n in names]).astype(np.float32),
        probabilities=np.stack([probabilities[n] for n in names]),
        models=np.array(names),
        class_names=np.array(bundles[0].class_names),
        percentiles=np.array(bundles[0].percentiles),
    )
    maps = out / f"{stem}_relevance.npz"
    atomic_write_bytes(maps, buffer.getvalue())
    for name in names:
        p = probabilities[name]
        print(
            f"{name}: {bundles[0].class_names[int(np.argmax(p))]} (p={p.max():.2f}); maps of {len(slices)} slices in "
            f"{seconds[name]:.1f} s; mean |cos| between class maps {class_map_similarity(relevance[name]):.3f}"
        )
    return {"figure": str(figure), "maps": str(maps)}
