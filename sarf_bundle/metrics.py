"""Volume-level classification metrics of the paper (section 3.3), in two clearly named families.

- ``multiclass``: the usual definitions from the argmax decision: overall accuracy, and per class
  one-vs-rest accuracy, F1 and ROC AUC of the class probability; ``mean`` is the unweighted mean over
  classes.
- ``ovr_threshold``: each class decided on its own, probability > 0.5 (one-vs-rest); per-class
  accuracy and F1 and their means. The paper's figures (mean ACC 0.976 with mean F1 0.924) fit these.
  The AUC does not depend on a decision, so it is the same number in both families.

Plus the confusion matrix (counts, and normalised per ground-truth class), the expected calibration
error of the top-label confidence with its reliability-diagram bins, and the mean ± std over
cross-validation folds of all of these (paper, Tables 2-5).

Calibration bins are ``n_bins`` equal-width intervals ``(b/n, (b+1)/n]`` of the confidence (15 by
default, as in Guo et al. 2017); a confidence exactly on an edge belongs to the lower bin, and 0 to the
first. scikit-learn's ``calibration_curve(strategy="uniform")`` and MONAI's ``calibration_binning``
(default ``right=False``, one channel) bin the same way, up to the rounding of their edges (MONAI's are
float32); MONAI's ``CalibrationErrorMetric`` on one-hot channels is the classwise ECE, not the top-label one.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score

from . import SEQUENCES

__all__ = [
    "FAMILIES",
    "CLASS_METRICS",
    "CalibrationBins",
    "aggregate_folds",
    "calibration_bins",
    "classification_metrics",
    "expected_calibration_error",
    "reliability_bins",
    "summary_value",
]

FAMILIES: dict[str, str] = {"multiclass": "multiclass (argmax)", "ovr_threshold": "one-vs-rest at 0.5"}
"""The two metric families: key in the metric dicts, and the name reports give them."""

CLASS_METRICS: tuple[str, ...] = ("accuracy", "auc", "f1")
"""Per-class metrics of each family (paper: ACC, AUC, F1)."""


@dataclass(frozen=True)
class CalibrationBins:
    """Statistics of equal-width confidence bins, the data of a reliability diagram.

    Attributes:
        edges: ``(n_bins + 1,)`` bin edges ``b / n_bins``; bin ``b`` is ``(edges[b], edges[b + 1]]``.
        count: ``(n_bins,)`` number of samples per bin.
        confidence: ``(n_bins,)`` mean confidence per bin, NaN for an empty bin.
        accuracy: ``(n_bins,)`` fraction of correct (positive) samples per bin, NaN for an empty bin.
    """

    edges: np.ndarray
    count: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray

    @property
    def calibration_error(self) -> float:
        """Expected calibration error ``sum_b count_b / N * |accuracy_b - confidence_b|`` (NaN without samples)."""
        total = self.count.sum()
        if total == 0:
            return float("nan")
        used = self.count > 0
        return float(np.sum(self.count[used] / total * np.abs(self.accuracy[used] - self.confidence[used])))

    def to_dict(self) -> dict[str, list]:
        """The bins as JSON-ready lists (NaN stays NaN)."""
        return {"edges": self.edges.tolist(), "count": self.count.tolist(), "confidence": self.confidence.tolist(), "accuracy": self.accuracy.tolist()}


def calibration_bins(scores: np.ndarray, outcomes: np.ndarray, n_bins: int = 15) -> CalibrationBins:
    """Bin scores into equal-width intervals ``(b/n, (b+1)/n]`` and measure the outcome rate per bin.

    Args:
        scores: ``(N,)`` confidences or probabilities in ``[0, 1]``.
        outcomes: ``(N,)`` booleans: the prediction was right (top-label) or the sample is positive
            (one class against the rest).
        n_bins: number of bins, at least 1.

    Returns:
        The per-bin counts, mean scores and outcome rates.

    Raises:
        ValueError: if ``n_bins`` is below 1, the shapes differ or a score lies outside ``[0, 1]``.
    """
    scores, outcomes = np.asarray(scores, float), np.asarray(outcomes, bool)
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}.")
    if scores.ndim != 1 or outcomes.shape != scores.shape:
        raise ValueError(f"scores and outcomes must both be (N,), got {scores.shape} and {outcomes.shape}.")
    if scores.size and (scores.min() < 0 or scores.max() > 1):
        raise ValueError(f"scores must lie in [0, 1], got values from {scores.min()} to {scores.max()}.")
    n_bins = int(n_bins)
    edges = np.arange(n_bins + 1) / n_bins
    index = np.clip(np.searchsorted(edges, scores, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(index, weights=scores, minlength=n_bins) / count
        accuracy = np.bincount(index, weights=outcomes.astype(float), minlength=n_bins) / count
    return CalibrationBins(edges, count, confidence, accuracy)


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> CalibrationBins:
    """Top-label reliability-diagram bins: the confidence ``max_k p_k`` against whether the argmax is right.

    Args:
        probs: ``(N, K)`` class probabilities.
        labels: ``(N,)`` true class indices.
        n_bins: number of equal-width bins over ``[0, 1]``.

    Returns:
        Per bin: count, mean confidence and accuracy (see :func:`calibration_bins`). A tie between
        classes counts as a prediction of the first of them, as ``argmax`` decides.
    """
    probs, labels = np.asarray(probs, float), np.asarray(labels, int)
    return calibration_bins(probs.max(axis=1), probs.argmax(axis=1) == labels, n_bins)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Top-label expected calibration error with equal-width confidence bins (Naeini et al. 2015, Guo et al. 2017).

    ``ECE = sum_b |B_b|/N * |accuracy(B_b) - mean confidence(B_b)|`` over bins ``(b/n, (b+1)/n]``.

    Args:
        probs: ``(N, K)`` class probabilities.
        labels: ``(N,)`` true class indices.
        n_bins: number of equal-width bins over ``[0, 1]``.
    """
    return reliability_bins(probs, labels, n_bins).calibration_error


def classification_metrics(probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str] = SEQUENCES, n_bins: int = 15) -> dict:
    """All volume-level metrics for predicted probabilities and true labels.

    Args:
        probs: ``(N, K)`` class probabilities (rows sum to one).
        labels: ``(N,)`` true class indices.
        class_names: names of the K classes.
        n_bins: bins of the expected calibration error.

    Returns:
        ``{"n_volumes", "accuracy", "macro_f1", "multiclass": {class: {accuracy, f1, auc}, "mean": ...},
        "ovr_threshold": {...}, "class_names", "confusion_matrix": [[...]], "confusion_matrix_normalised": [[...]],
        "ece", "ece_bins"}``. An AUC is NaN for a class absent from (or alone in) the labels.

    Raises:
        ValueError: if shapes disagree or labels fall outside ``0..K-1``.
    """
    probs, labels = np.asarray(probs, float), np.asarray(labels, int)
    k = len(class_names)
    if probs.ndim != 2 or probs.shape[1] != k or labels.shape != (probs.shape[0],):
        raise ValueError(f"probs must be (N, {k}) and labels (N,), got {probs.shape} and {labels.shape}.")
    if labels.size and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(f"labels must lie in 0..{k - 1}, got values from {labels.min()} to {labels.max()}.")
    predicted = probs.argmax(axis=1)
    families: dict[str, dict] = {family: {} for family in FAMILIES}
    for i, name in enumerate(class_names):
        truth = labels == i
        auc = roc_auc_score(truth, probs[:, i]) if 0 < truth.sum() < len(truth) else float("nan")
        for family, decision in (("multiclass", predicted == i), ("ovr_threshold", probs[:, i] > 0.5)):
            families[family][name] = {
                "accuracy": float((decision == truth).mean()),
                "f1": float(f1_score(truth, decision, zero_division=0.0)),
                "auc": float(auc),
            }
    for per_class in families.values():
        per_class["mean"] = {m: _nanmean([per_class[c][m] for c in class_names]) for m in CLASS_METRICS}
    matrix = confusion_matrix(labels, predicted, labels=list(range(k)))
    with np.errstate(invalid="ignore", divide="ignore"):
        normalised = matrix / matrix.sum(axis=1, keepdims=True)
    return {
        "n_volumes": int(len(labels)),
        "accuracy": float((predicted == labels).mean()),
        "macro_f1": float(f1_score(labels, predicted, labels=list(range(k)), average="macro", zero_division=0.0)),
        **families,
        "class_names": list(class_names),
        "confusion_matrix": matrix.tolist(),
        "confusion_matrix_normalised": np.nan_to_num(normalised).tolist(),
        "ece": expected_calibration_error(probs, labels, n_bins),
        "ece_bins": n_bins,
    }


def _nanmean(values: Sequence[float]) -> float:
    """Mean of the finite values, NaN (without a warning) when there are none."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(np.asarray(values, float)))


def _summary(values: Sequence[float], ddof: int) -> dict:
    """``{"mean", "std", "n", "values"}`` over the finite values (NaN mean and std when there are none)."""
    values = [float(v) for v in values]
    finite = np.array([v for v in values if np.isfinite(v)])
    std = float(finite.std(ddof=ddof)) if finite.size > ddof else float("nan")
    return {"mean": float(finite.mean()) if finite.size else float("nan"), "std": std, "n": int(finite.size), "values": values}


def aggregate_folds(fold_metrics: Sequence[dict], ddof: int = 0) -> dict:
    """Mean ± standard deviation over cross-validation folds of :func:`classification_metrics` dicts.

    Each fold counts once (paper, Tables 2-5): the ``ALL`` row is the mean over folds of each fold's
    mean over classes. A NaN (an AUC of a class missing from a fold's test set) is left out, and ``n``
    says how many folds a number rests on.

    Args:
        fold_metrics: one dict per fold, as returned by :func:`classification_metrics`.
        ddof: delta degrees of freedom of the standard deviation: 0 (default, numpy's ``std``) divides
            by the number of folds, 1 by one less.

    Returns:
        ``{"n_folds", "class_names", "accuracy", "macro_f1", "ece", "ece_bins", "multiclass": {class or
        "mean": {metric: stats}}, "ovr_threshold": {...}}`` where every ``stats`` is ``{"mean", "std",
        "n", "values"}`` (``values``: the per-fold numbers in fold order).

    Raises:
        ValueError: if there are no folds, or the folds disagree on class names or ECE bins.
    """
    if not fold_metrics:
        raise ValueError("aggregate_folds needs at least one fold's metrics, got none.")
    first = fold_metrics[0]
    for key in ("class_names", "ece_bins"):
        found = {str(m.get(key)) for m in fold_metrics}
        if len(found) > 1:
            raise ValueError(f"The folds disagree on {key}: {sorted(found)}.")
    out: dict = {"n_folds": len(fold_metrics), "class_names": list(first["class_names"]), "ece_bins": first["ece_bins"]}
    for key in ("accuracy", "macro_f1", "ece"):
        out[key] = _summary([m[key] for m in fold_metrics], ddof)
    for family in FAMILIES:
        out[family] = {
            row: {metric: _summary([m[family][row][metric] for m in fold_metrics], ddof) for metric in CLASS_METRICS}
            for row in [*first["class_names"], "mean"]
        }
    return out


def summary_value(summary: dict, path: Sequence[str]) -> Any:
    """The entry of a nested summary (as :func:`aggregate_folds` writes it) at ``path``, e.g. ``("multiclass", "mean", "f1")``.

    Raises:
        KeyError: naming the first key of ``path`` that is missing.
    """
    for key in path:
        summary = summary[key]
    return summary
