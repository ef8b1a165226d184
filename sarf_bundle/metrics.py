"""Volume-level classification metrics of the paper (section 3.3), in two clearly named families.

- ``multiclass``: the usual definitions from the argmax decision: overall accuracy, and per class
  one-vs-rest accuracy, F1 and ROC AUC of the class probability; ``mean`` is the unweighted mean over
  classes.
- ``ovr_threshold``: each class decided on its own, probability > 0.5 (one-vs-rest); per-class
  accuracy and F1 and their means. The paper's figures (mean ACC 0.976 with mean F1 0.924) fit these.

Plus the confusion matrix (counts, and normalised per ground-truth class) and the expected calibration
error of the top-label confidence.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score

from . import SEQUENCES

__all__ = ["classification_metrics", "expected_calibration_error"]


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Top-label expected calibration error with equal-width confidence bins (Naeini et al. 2015).

    ``ECE = sum_b |B_b|/N * |accuracy(B_b) - mean confidence(B_b)|`` over bins ``(i/n, (i+1)/n]``.

    Args:
        probs: ``(N, K)`` class probabilities.
        labels: ``(N,)`` true class indices.
        n_bins: number of equal-width bins over (0, 1].
    """
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    bins = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def classification_metrics(probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str] = SEQUENCES, n_bins: int = 15) -> dict:
    """All volume-level metrics for predicted probabilities and true labels.

    Args:
        probs: ``(N, K)`` class probabilities (rows sum to one).
        labels: ``(N,)`` true class indices.
        class_names: names of the K classes.
        n_bins: bins of the expected calibration error.

    Returns:
        ``{"n_volumes", "accuracy", "multiclass": {class: {accuracy, f1, auc}, "mean": ...},
        "ovr_threshold": {...}, "confusion_matrix": [[...]], "confusion_matrix_normalised": [[...]],
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
    families: dict[str, dict] = {"multiclass": {}, "ovr_threshold": {}}
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
        per_class["mean"] = {m: float(np.nanmean([per_class[c][m] for c in class_names])) for m in ("accuracy", "f1", "auc")}
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
