"""The cross-validation report: read fold predictions, recompute metrics, render tables and every figure."""

from __future__ import annotations

import csv
import json
import re
import sys

import numpy as np
import pytest
from sklearn.metrics import f1_score

from sarf_bundle import SEQUENCES
from sarf_bundle.crossval_results import find_method_dirs, load_method, read_predictions
from sarf_bundle.metrics import aggregate_folds, classification_metrics
from sarf_bundle.report import report, write_report

PNG = b"\x89PNG\r\n\x1a\n"


def write_fold(method_dir, fold, skill, seed, subjects=6, drop=0, folder="eval"):
    """A fake but realistic ``fold<k>/<folder>/predictions.csv``, in the format of ``ClassificationReport``."""
    rng = np.random.default_rng(seed)
    labels = np.tile(np.arange(len(SEQUENCES)), subjects)
    logits = rng.normal(size=(len(labels), len(SEQUENCES))) + 2 * skill * np.eye(len(SEQUENCES))[labels] * rng.random((len(labels), 1))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    path = method_dir / f"fold{fold}" / folder / "predictions.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "label", "predicted", *[f"p_{c}" for c in SEQUENCES]])
        for i in range(len(labels) - drop):
            writer.writerow([f"/data/sub-{i // 6:04d}_{SEQUENCES[labels[i]]}.nii.gz", SEQUENCES[labels[i]], SEQUENCES[probs[i].argmax()], *[f"{p:.6f}" for p in probs[i]]])
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``runs/{sarf, baseline, focal, ablation_a5_b0}``: 5, 5, 3 and 2 folds; sarf has a partial fold and an unevaluated one."""
    root = tmp_path_factory.mktemp("runs")
    for k in range(5):
        write_fold(root / "baseline", k, skill=1.0, seed=k)
        write_fold(root / "baseline", k, skill=3.0, seed=40 + k, subjects=2, folder="eval/validation_stripped")
        write_fold(root / "baseline", k, skill=0.5, seed=50 + k, subjects=2, folder="eval/validation_whole_head")
        record = {"seconds": {"train": 600.0 + 60 * k}, "training": {"volumes": 24, "epochs": 50, "slices_per_second": 14.0 + k}}
        (root / "baseline" / f"fold{k}" / "fold.json").write_text(json.dumps(record))
    for k in range(4):
        write_fold(root / "sarf", k, skill=2.5, seed=10 + k, drop=4 if k == 3 else 0)
    (root / "sarf" / "fold4").mkdir()
    for k in (0, 1, 2):
        write_fold(root / "focal", k, skill=1.2, seed=20 + k)
    (root / "focal" / "crossval.json").write_text(json.dumps({"folds": [0, 1, 2, 3]}))
    for k in (0, 1):
        write_fold(root / "ablation_a5_b0", k, skill=2.0, seed=30 + k)
    (root / "notes").mkdir()
    return root


@pytest.fixture(scope="module")
def written(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return write_report(runs, out), runs


def test_report_renders_every_table_and_figure(written):
    path, runs = written
    out = path.parent
    methods = ["baseline", "focal", "sarf", "ablation_a5_b0"]
    figures = [*(f"confusion_{m}.png" for m in methods), "f1_violin.png", "reliability.png"]
    for name in figures:
        assert (out / name).read_bytes()[:8] == PNG and (out / name).stat().st_size > 5000, name
    md, page = path.read_text(), (out / "report.html").read_text()
    for name in figures:
        assert f"]({name})" in md
    assert page.count('src="data:image/png;base64,') == len(figures)
    assert f"python -m sarf_bundle report {runs} --out {out}" in md
    for table in ("Table 2a", "Table 2b", "Table 3a", "Table 3b", "Table 4a", "Table 4b", "Table 5"):
        assert table in md and table in page
    assert "**multiclass (argmax)**" in md and "**one-vs-rest at 0.5**" in md and "<strong>one-vs-rest at 0.5</strong>" in page
    assert "15 equal-width" in md
    # Stable method order: baseline, focal, sarf, then the others alphabetically; the Table 3 header says so.
    assert "| Sequence | baseline | focal | sarf | ablation_a5_b0 |" in md
    table3 = md[md.index("Table 3a") : md.index("Table 3b")]
    for row in [*SEQUENCES, "ALL"]:
        assert re.search(rf"^\| {row} \| \d\.\d{{3}} ± \d\.\d{{3}} \|", table3, re.M), row
    table2 = md[md.index("Table 2a") : md.index("Table 2b")]
    assert len(re.findall(r"^\| (DWI|FLAIR|SWI|T1|T1Gd|T2|ALL) \| baseline \|", table2, re.M)) == 7
    assert len(re.findall(r"^\|  \| ablation_a5_b0 \|", table2, re.M)) == 7


def test_report_flags_missing_and_partial_folds(written):
    path, _ = written
    md = path.read_text()
    assert "`sarf` fold4: no `eval/predictions.csv`" in md
    assert "`sarf` fold3: partial, 32 test volumes, lacks 4" in md
    assert "`focal` fold3: missing" in md  # crossval.json announced 4 folds
    assert "| sarf | " in md and "| 4 (0, 1, 2, 3) | 36, 36, 36, 32 |" in md
    assert "`baseline` fold" not in md and "notes" not in md


def test_report_numbers_are_recomputed_from_the_predictions(written):
    path, runs = written
    data = json.loads((path.parent / "report.json").read_text())
    files, labels, probs, names = read_predictions(runs / "baseline" / "fold2" / "eval" / "predictions.csv")
    assert names == list(SEQUENCES) and len(files) == 36
    fold = data["methods"]["baseline"]["folds"]["fold2"]
    for i, name in enumerate(SEQUENCES):
        assert fold["multiclass"][name]["f1"] == pytest.approx(f1_score(labels == i, probs.argmax(1) == i))
        assert fold["ovr_threshold"][name]["f1"] == pytest.approx(f1_score(labels == i, probs[:, i] > 0.5, zero_division=0.0))
    folds = []
    for k in range(4):
        _, labels, probs, _ = read_predictions(runs / "sarf" / f"fold{k}" / "eval" / "predictions.csv")
        folds.append(classification_metrics(probs, labels))
    expected = aggregate_folds(folds)["ovr_threshold"]["mean"]["f1"]
    summary = data["methods"]["sarf"]["summary"]
    assert summary["ovr_threshold"]["mean"]["f1"]["mean"] == pytest.approx(expected["mean"])
    assert f"{expected['mean']:.3f} ± {expected['std']:.3f}" in path.read_text()
    assert sum(data["methods"]["sarf"]["reliability_pooled"]["count"]) == 36 * 3 + 32


def test_method_dirs_in_stable_order(runs, tmp_path):
    for name in ("zeta", "alpha-only", "sarf-gradcam", "baseline", "sarf-focal", "aaa"):
        (tmp_path / name / "fold0").mkdir(parents=True)
    expected = ["baseline", "sarf-gradcam", "sarf-focal", "alpha-only", "aaa", "zeta"]
    assert [p.name for p in find_method_dirs(tmp_path)] == expected
    given = [runs / "sarf", runs / "ablation_a5_b0", runs / "baseline"]
    assert [p.name for p in find_method_dirs(given)] == ["baseline", "sarf", "ablation_a5_b0"]
    assert [p.name for p in find_method_dirs(runs)] == ["baseline", "focal", "sarf", "ablation_a5_b0"]
    assert [p.name for p in find_method_dirs([runs, runs / "sarf"])] == ["baseline", "focal", "sarf", "ablation_a5_b0"]


def test_single_fold_method_and_cli_entry(tmp_path, monkeypatch):
    write_fold(tmp_path / "runs" / "sarf", 0, skill=3.0, seed=1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["__main__.py", "report", "runs/sarf", "--out", "rep", "--n_bins", "10"])
    path = report("runs/sarf", out="rep", n_bins=10)
    md = (tmp_path / path).read_text()
    assert "python -m sarf_bundle report runs/sarf --out rep --n_bins 10" in md
    assert "only one fold" in md and "10 equal-width" in md
    assert (tmp_path / "rep" / "f1_violin.png").stat().st_size > 5000


def test_bad_run_dirs(tmp_path, runs):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_report(tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty has no fold<k>/ folders"):
        write_report(tmp_path / "empty", tmp_path / "out")
    (tmp_path / "unevaluated" / "fold0" / "eval").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"unevaluated: none of its fold folders \(fold0\) has a non-empty eval/predictions.csv"):
        write_report(tmp_path / "unevaluated", tmp_path / "out")
    with pytest.raises(ValueError, match="Two methods are named 'sarf'"):
        write_fold(tmp_path / "other" / "sarf", 0, skill=1.0, seed=0)
        find_method_dirs([runs, tmp_path / "other"])


def test_malformed_predictions(tmp_path):
    path = write_fold(tmp_path / "bad", 0, skill=1.0, seed=0)
    path.write_text(path.read_text().replace(",T1Gd,", ",T3,", 1))
    with pytest.raises(ValueError, match=r"predictions.csv line \d+: label 'T3' is not one of the classes"):
        load_method(tmp_path / "bad")
    path.write_text(path.read_text().replace(",T3,", ",T1Gd,").replace(",0.", ",1.", 1))
    with pytest.raises(ValueError, match=r"predictions.csv line 2: probabilities must lie in \[0, 1\]"):
        load_method(tmp_path / "bad")
    path.write_text("file,label\na.nii.gz,T1\n")
    with pytest.raises(ValueError, match="must have the columns file, label and p_<class>"):
        load_method(tmp_path / "bad")


def test_report_shows_validation_accuracy_and_training_time_per_method(written):
    path, runs = written
    md = path.read_text()
    stripped, whole = (
        [np.mean(probs.argmax(1) == labels) for _, labels, probs, _ in (read_predictions(runs / "baseline" / f"fold{k}" / "eval" / folder / "predictions.csv") for k in range(5))]
        for folder in ("validation_stripped", "validation_whole_head")
    )
    assert np.mean(stripped) > np.mean(whole)  # the fixture's stripped validation is the easier one
    summary = md[md.index("## Summary") :]
    assert f"| baseline | {np.mean(stripped):.3f} ± {np.std(stripped):.3f} | {np.mean(whole):.3f} ± {np.std(whole):.3f} |" in summary
    assert "| focal | n/a | n/a |" in summary
    assert "| 12.0 ± 1.4 | 16.0 ± 1.4 |" in md  # training minutes and slices per second of the baseline's 5 folds
    data = json.loads((path.parent / "report.json").read_text())
    assert data["methods"]["baseline"]["folds"]["fold1"]["training"]["seconds"] == 660.0
    assert data["methods"]["baseline"]["folds"]["fold1"]["validation_accuracy"]["validation_stripped"] == pytest.approx(stripped[1])
