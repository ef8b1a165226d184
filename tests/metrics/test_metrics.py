"""Volume-level metrics against scikit-learn and hand-computed cases; slice batching and averaging."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from sarf_bundle import SEQUENCES
from sarf_bundle.data import SliceBatch, VolumeOutput
from sarf_bundle.metrics import classification_metrics, expected_calibration_error


def _random_case(seed=0, n=60):
    rng = np.random.default_rng(seed)
    labels = np.tile(np.arange(6), n // 6)
    logits = rng.normal(size=(n, 6)) + 2.0 * np.eye(6)[labels] * rng.random((n, 1))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return probs, labels


def test_multiclass_metrics_match_sklearn():
    probs, labels = _random_case()
    m = classification_metrics(probs, labels)
    pred = probs.argmax(1)
    assert m["accuracy"] == pytest.approx(accuracy_score(labels, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(labels, pred, average="macro"))
    per_class_f1 = f1_score(labels, pred, average=None)
    for i, name in enumerate(SEQUENCES):
        assert m["multiclass"][name]["f1"] == pytest.approx(per_class_f1[i])
        assert m["multiclass"][name]["auc"] == pytest.approx(roc_auc_score(labels == i, probs[:, i]))
        assert m["multiclass"][name]["accuracy"] == pytest.approx(accuracy_score(labels == i, pred == i))
        assert m["ovr_threshold"][name]["f1"] == pytest.approx(f1_score(labels == i, probs[:, i] > 0.5))
    assert m["multiclass"]["mean"]["auc"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
    assert np.array(m["confusion_matrix"]).sum() == len(labels)
    np.testing.assert_allclose(np.array(m["confusion_matrix_normalised"]).sum(1), 1.0)


def test_ece_hand_computed():
    # Two bins used: confidences 0.9 (2 right of 2) and 0.6 (1 right of 2) -> (2/4)*0.1 + (2/4)*0.1 = 0.1
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    labels = np.array([0, 0, 1, 1])
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(0.1)
    perfect = np.eye(3)[[0, 1, 2]]
    assert expected_calibration_error(perfect, np.array([0, 1, 2])) == 0.0


@pytest.mark.parametrize(
    "probs, labels, message",
    [(np.ones((4, 5)) / 5, np.zeros(4), "must be"), (np.ones((4, 6)) / 6, np.full(4, 6), "labels must lie")],
)
def test_metric_bad_inputs(probs, labels, message):
    with pytest.raises(ValueError, match=message):
        classification_metrics(probs, labels)


def test_slice_batch_and_volume_output_round_trip():
    images = torch.arange(2 * 7 * 4 * 4, dtype=torch.float32).reshape(2, 7, 4, 4)
    x, y = SliceBatch()({"image": images, "label": torch.tensor([[4], [1]])})
    assert x.shape == (14, 1, 4, 4) and torch.equal(x[8, 0], images[1, 1])
    assert y.tolist() == [4] * 7 + [1] * 7
    logits = torch.randn(14, 6)
    probs, labels = VolumeOutput(7)({"pred": logits, "label": y})
    torch.testing.assert_close(probs[1], torch.softmax(logits[7:], 1).mean(0))
    assert labels.tolist() == [4, 1]
    with pytest.raises(ValueError, match="expects images of shape"):
        SliceBatch()({"image": torch.zeros(2, 1, 7, 4, 4)})
