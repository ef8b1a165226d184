"""Volume-level metrics against scikit-learn, MONAI and hand-computed cases; fold aggregation; slice batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.metrics import CalibrationErrorMetric
from monai.metrics.calibration import calibration_binning
from sklearn.calibration import calibration_curve
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, roc_auc_score

from sarf_bundle import SEQUENCES
from sarf_bundle.data import SliceBatch, VolumeOutput
from sarf_bundle.metrics import aggregate_folds, calibration_bins, classification_metrics, expected_calibration_error, reliability_bins


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


def test_metrics_match_sklearn_on_a_known_case():
    # 8 volumes, 3 classes; class 2 never occurs, so its AUC is undefined (NaN) and left out of the mean.
    probs = np.array(
        [[0.7, 0.2, 0.1], [0.4, 0.5, 0.1], [0.5, 0.1, 0.4], [0.3, 0.3, 0.4], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [0.2, 0.45, 0.35], [0.3, 0.6, 0.1]]
    )
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    names = ["A", "B", "C"]
    m = classification_metrics(probs, labels, names)
    pred = probs.argmax(1)
    # Class C has no volume: its row is 0 here (nan_to_num: some scikit-learn versions give NaN there).
    np.testing.assert_allclose(m["confusion_matrix_normalised"], np.nan_to_num(confusion_matrix(labels, pred, labels=[0, 1, 2], normalize="true")))
    assert m["confusion_matrix"] == confusion_matrix(labels, pred, labels=[0, 1, 2]).tolist()
    assert m["accuracy"] == accuracy_score(labels, pred) == 0.625
    for i, name in enumerate(names):
        assert m["multiclass"][name]["f1"] == pytest.approx(f1_score(labels == i, pred == i, zero_division=0.0))
        assert m["ovr_threshold"][name]["accuracy"] == pytest.approx(accuracy_score(labels == i, probs[:, i] > 0.5))
        assert m["ovr_threshold"][name]["f1"] == pytest.approx(f1_score(labels == i, probs[:, i] > 0.5, zero_division=0.0))
    assert m["multiclass"]["A"]["auc"] == pytest.approx(roc_auc_score(labels == 0, probs[:, 0]))
    assert np.isnan(m["multiclass"]["C"]["auc"])
    assert m["multiclass"]["mean"]["auc"] == pytest.approx((roc_auc_score(labels == 0, probs[:, 0]) + roc_auc_score(labels == 1, probs[:, 1])) / 2)
    # Hand-checked: OvR at 0.5 decides A only for 0.7 and 0.6 (one right, one wrong) -> F1 = 2*1 / (2*1 + 1 + 3) = 1/3.
    assert m["ovr_threshold"]["A"]["f1"] == pytest.approx(1 / 3)


def test_ece_confidence_on_a_bin_edge_belongs_to_the_lower_bin():
    # 0.6 is the edge between bins (0.5, 0.6] and (0.6, 0.7] of 10: alone in the lower bin, |1 - 0.6| / 2 + |0 - 0.65| / 2.
    probs = np.array([[0.6, 0.4], [0.65, 0.35]])
    labels = np.array([0, 1])
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(0.2 + 0.325)
    bins = reliability_bins(probs, labels, n_bins=10)
    assert bins.count.tolist() == [0, 0, 0, 0, 0, 1, 1, 0, 0, 0]
    # Had the edge gone to the upper bin, both would share one bin: |0.5 - 0.625| = 0.125.
    assert expected_calibration_error(probs, labels, n_bins=10) != pytest.approx(0.125)


def test_ece_empty_bins_ties_and_extremes():
    # Confidences 0.5 (a tie: argmax says class 0, wrong), 0.75 right, 0.75 wrong, 1.0 right, with 4 bins.
    probs = np.array([[0.5, 0.5], [0.75, 0.25], [0.25, 0.75], [1.0, 0.0]])
    labels = np.array([1, 0, 0, 0])
    bins = reliability_bins(probs, labels, n_bins=4)
    assert bins.edges.tolist() == [0, 0.25, 0.5, 0.75, 1.0]
    assert bins.count.tolist() == [0, 1, 2, 1]
    assert np.isnan(bins.confidence[0]) and np.isnan(bins.accuracy[0])
    np.testing.assert_allclose(bins.confidence[1:], [0.5, 0.75, 1.0])
    np.testing.assert_allclose(bins.accuracy[1:], [0.0, 0.5, 1.0])
    assert bins.calibration_error == pytest.approx(0.25 * 0.5 + 0.5 * 0.25)  # 0.25
    assert expected_calibration_error(probs, labels, n_bins=4) == pytest.approx(0.25)
    edge = calibration_bins(np.array([0.0, 1.0, 1.0]), np.array([False, True, False]), n_bins=3)
    assert edge.count.tolist() == [1, 0, 2] and edge.calibration_error == pytest.approx(1 / 3 * 0 + 2 / 3 * 0.5)
    empty = calibration_bins(np.array([]), np.array([]), n_bins=5)
    assert empty.count.tolist() == [0] * 5 and np.isnan(empty.calibration_error)
    assert expected_calibration_error(*_random_case()) == pytest.approx(classification_metrics(*_random_case())["ece"])


@pytest.mark.parametrize(
    "scores, outcomes, n_bins, message",
    [
        (np.array([0.5]), np.array([True]), 0, "n_bins must be a positive integer"),
        (np.array([0.5]), np.array([True]), 2.5, "n_bins must be a positive integer"),
        (np.array([1.2]), np.array([True]), 10, "scores must lie in"),
        (np.array([0.5, 0.4]), np.array([True]), 10, "must both be"),
    ],
)
def test_calibration_bins_bad_arguments(scores, outcomes, n_bins, message):
    with pytest.raises(ValueError, match=message):
        calibration_bins(scores, outcomes, n_bins)


def test_calibration_bins_match_sklearn_calibration_curve():
    """scikit-learn's uniform ``calibration_curve`` (non-empty bins only), including values on the edges k/15."""
    rng = np.random.default_rng(3)
    scores = np.concatenate([rng.random(300), np.arange(16) / 15])
    outcomes = rng.random(scores.size) < scores
    bins = calibration_bins(scores, outcomes, n_bins=15)
    prob_true, prob_pred = calibration_curve(outcomes, scores, n_bins=15, strategy="uniform")
    used = bins.count > 0
    np.testing.assert_allclose(bins.accuracy[used], prob_true)
    np.testing.assert_allclose(bins.confidence[used], prob_pred)
    # Top-label and one-vs-rest reliability data of a classifier are two binary cases of the same curve.
    probs, labels = _random_case(seed=4, n=120)
    top = reliability_bins(probs, labels)
    prob_true, prob_pred = calibration_curve(probs.argmax(1) == labels, probs.max(1), n_bins=15)
    np.testing.assert_allclose(top.accuracy[top.count > 0], prob_true)
    np.testing.assert_allclose(top.confidence[top.count > 0], prob_pred)
    for i in range(6):
        ovr = calibration_bins(probs[:, i], labels == i)
        prob_true, prob_pred = calibration_curve(labels == i, probs[:, i], n_bins=15)
        np.testing.assert_allclose(ovr.accuracy[ovr.count > 0], prob_true)


def test_ece_cross_check_with_monai():
    """MONAI's ``CalibrationErrorMetric`` is per channel (``(B, C, spatial)``, each channel binned on its own).

    - Top-label ECE (ours) = MONAI on one channel holding the confidence, with "correct" as ground truth.
    - MONAI on the K one-hot channels is the *classwise* ECE of each class probability, a different number;
      it matches our ``calibration_bins`` of each class against the rest.
    - Both put a value on a bin edge into the lower bin (MONAI's default ``right=False``), but MONAI's edges
      are float32 over ``[0, 1 + eps]``, so the numbers agree to about 1e-6.
    """
    probs, labels = _random_case(seed=5, n=240)
    confidence, correct = probs.max(1), (probs.argmax(1) == labels)
    metric = CalibrationErrorMetric(num_bins=15, calibration_reduction="expected", metric_reduction="none")
    metric(y_pred=torch.tensor(confidence)[None, None], y=torch.tensor(correct, dtype=torch.float32)[None, None])
    assert metric.aggregate().item() == pytest.approx(expected_calibration_error(probs, labels, 15), abs=1e-6)
    _, _, counts = calibration_binning(torch.tensor(confidence)[None, None], torch.tensor(correct, dtype=torch.float32)[None, None], num_bins=15)
    assert counts[0, 0].tolist() == reliability_bins(probs, labels).count.tolist()

    onehot = torch.nn.functional.one_hot(torch.tensor(labels), 6).T.contiguous()[None].float()
    classwise = CalibrationErrorMetric(num_bins=15, metric_reduction="none")
    classwise(y_pred=torch.tensor(np.ascontiguousarray(probs.T))[None], y=onehot)
    per_class = classwise.aggregate()[0]
    for i in range(6):
        assert per_class[i].item() == pytest.approx(calibration_bins(probs[:, i], labels == i).calibration_error, abs=1e-6)
    assert per_class.mean().item() != pytest.approx(expected_calibration_error(probs, labels), abs=1e-3)

    edges = torch.tensor([[[0.25, 0.5, 0.75, 1.0]]])
    _, _, counts = calibration_binning(edges, torch.ones_like(edges), num_bins=4)
    assert counts[0, 0].tolist() == calibration_bins(edges[0, 0].numpy(), np.ones(4, bool), 4).count.tolist() == [1, 1, 1, 1]


def _fold(f1_a, auc_a, ece, classes=("A", "B")):
    """A hand-made fold metric dict: class A varies, class B is fixed at 1."""
    per_class = {"A": {"accuracy": 0.5, "f1": f1_a, "auc": auc_a}, "B": {"accuracy": 1.0, "f1": 1.0, "auc": 1.0}}
    per_class["mean"] = {k: float(np.nanmean([per_class[c][k] for c in ("A", "B")])) for k in ("accuracy", "f1", "auc")}
    return {"class_names": list(classes), "ece_bins": 15, "accuracy": 0.75, "macro_f1": per_class["mean"]["f1"], "ece": ece,
            "multiclass": per_class, "ovr_threshold": per_class}


def test_aggregate_folds_mean_and_std_by_hand():
    folds = [_fold(0.5, 0.8, 0.1), _fold(0.7, float("nan"), 0.3), _fold(0.9, 0.6, 0.2)]
    summary = aggregate_folds(folds)
    assert summary["n_folds"] == 3 and summary["class_names"] == ["A", "B"]
    f1 = summary["multiclass"]["A"]["f1"]
    assert f1["mean"] == pytest.approx(0.7) and f1["std"] == pytest.approx(np.sqrt(0.08 / 3)) and f1["values"] == [0.5, 0.7, 0.9]
    assert aggregate_folds(folds, ddof=1)["multiclass"]["A"]["f1"]["std"] == pytest.approx(0.2)
    # ALL: each fold's mean over classes (0.75, 0.85, 0.95), then over folds.
    assert summary["ovr_threshold"]["mean"]["f1"]["mean"] == pytest.approx(0.85)
    auc = summary["multiclass"]["A"]["auc"]
    assert auc["n"] == 2 and auc["mean"] == pytest.approx(0.7) and auc["std"] == pytest.approx(0.1)
    assert summary["ece"]["mean"] == pytest.approx(0.2) and summary["accuracy"]["std"] == 0.0
    assert summary["multiclass"]["B"]["accuracy"] == {"mean": 1.0, "std": 0.0, "n": 3, "values": [1.0, 1.0, 1.0]}
    nan_only = aggregate_folds([_fold(0.5, float("nan"), 0.1)], ddof=1)["multiclass"]["A"]
    assert nan_only["auc"]["n"] == 0 and np.isnan(nan_only["auc"]["mean"]) and np.isnan(nan_only["f1"]["std"])


def test_aggregate_folds_of_real_metrics_and_bad_input():
    folds = [classification_metrics(*_random_case(seed=s)) for s in range(3)]
    summary = aggregate_folds(folds)
    assert summary["multiclass"]["T1"]["auc"]["mean"] == pytest.approx(np.mean([f["multiclass"]["T1"]["auc"] for f in folds]))
    assert summary["ovr_threshold"]["mean"]["accuracy"]["std"] == pytest.approx(np.std([f["ovr_threshold"]["mean"]["accuracy"] for f in folds]))
    with pytest.raises(ValueError, match="at least one fold"):
        aggregate_folds([])
    with pytest.raises(ValueError, match="disagree on class_names"):
        aggregate_folds([_fold(0.5, 0.5, 0.1), _fold(0.5, 0.5, 0.1, classes=("A", "C"))])
