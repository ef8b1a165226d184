"""Cross-validation of a method through the bundle's real configs, fold by fold and resumable."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import sarf_bundle.experiments as experiments
from sarf_bundle import SEQUENCES
from sarf_bundle.bundle import config_value, read_config, run_bundle
from sarf_bundle.cli import main
from sarf_bundle.data import load_datalist
from sarf_bundle.experiments import FOLD_EVALUATIONS, METHODS, crossval, fold_ids, run_crossval
from sarf_bundle.metrics import classification_metrics

TINY = dict(epochs=1, image_size=32, batch_size=4, num_workers=0)
FOLD_FILES = ("fold.json", "eval/metrics.json", "eval/predictions.csv", "eval/confusion_matrix.csv", "models/model.pt")


class Recorder:
    """A bundle runner that records its calls, then runs the real bundle (or, with ``fake``, writes random metrics)."""

    def __init__(self, fake: bool = False) -> None:
        self.calls: list[tuple[str, int, dict]] = []
        self.fake = fake

    def __call__(self, run_id: str, configs: list[str], **overrides) -> None:
        self.calls.append((run_id, overrides["fold"], overrides))
        if not self.fake:
            run_bundle(run_id, configs, **overrides)
        elif run_id == "training":
            model = Path(overrides["bundle_root"]) / experiments.MODEL_FILE
            model.parent.mkdir(parents=True, exist_ok=True)
            model.write_bytes(b"")
        elif run_id == "run":
            rng = np.random.default_rng(overrides["fold"])
            probs = rng.dirichlet(np.ones(6), size=12)
            metrics = classification_metrics(probs, np.arange(12) % 6)
            eval_dir = Path(overrides["output_dir"])
            eval_dir.mkdir(parents=True, exist_ok=True)
            (eval_dir / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture(scope="module")
def crossvalidated(simulated_dataset, tmp_path_factory):
    """A 2-fold, 1-epoch cross-validation of SaRF with GradCAM saliency through configs/train.json and evaluate.json."""
    out = tmp_path_factory.mktemp("runs")
    recorder = Recorder()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(experiments, "run_bundle", recorder)
        summary = crossval(simulated_dataset, method="sarf-gradcam", out=out, folds=2, **TINY)
    return out / "sarf-gradcam", summary, recorder.calls


def test_every_fold_trained_validated_on_itself_and_tested(crossvalidated, simulated_dataset):
    run_dir, summary, calls = crossvalidated
    assert [(run_id, fold) for run_id, fold, _ in calls] == [("training", 0), *[("run", 0)] * 3, ("training", 1), *[("run", 1)] * 3]
    for _, fold, overrides in calls:
        assert overrides["bundle_root"] == str(run_dir / f"fold{fold}")
        assert overrides["datalist"] == str(simulated_dataset.resolve())
        assert {k: overrides[k] for k in ("alpha", "beta", "base_loss", "saliency")} == METHODS["sarf-gradcam"]
    evaluations = [overrides["output_dir"] for run_id, fold, overrides in calls if run_id == "run" and fold == 0]
    assert evaluations == [str(run_dir / "fold0" / folder) for folder in ("eval", "eval/validation_stripped", "eval/validation_whole_head")]
    datalist = json.loads(simulated_dataset.read_text())
    for k in (0, 1):
        fold_dir = run_dir / f"fold{k}"
        for name in FOLD_FILES:
            assert (fold_dir / name).is_file(), name
        assert json.loads((fold_dir / "eval" / "metrics.json").read_text())["n_volumes"] == len(datalist["testing"])
        own = sorted(Path(e["image"]).name for e in datalist["training"] if e["fold"] == k)
        stripped, whole = (_predictions(fold_dir / "eval" / f"validation_{kind}") for kind in ("stripped", "whole_head"))
        assert sorted(stripped) == sorted(whole) == own  # the fold's own validation volumes, each once
        assert any(stripped[f] != whole[f] for f in own)  # stripping changed what the network saw
        record = json.loads((fold_dir / "fold.json").read_text())
        assert record["fold"] == k and record["settings"]["saliency"] == "gradcam" and record["settings"]["epochs"] == 1
        assert set(record["seconds"]) == {"train", *FOLD_EVALUATIONS} and set(record["accuracy"]) == set(FOLD_EVALUATIONS)
        assert record["accuracy"]["validation_stripped"] == json.loads((fold_dir / "eval/validation_stripped/metrics.json").read_text())["accuracy"]
        n_train = sum(e["fold"] != k for e in datalist["training"])
        assert record["training"]["volumes"] == n_train and record["training"]["epochs"] == 1
        assert record["training"]["slices_per_second"] == pytest.approx(n_train * 7 / record["seconds"]["train"], rel=0.02)


def _predictions(folder: Path) -> dict[str, tuple[float, ...]]:
    """File name -> probabilities of a ``predictions.csv``."""
    with open(folder / "predictions.csv") as f:
        return {Path(row["file"]).name: tuple(float(row[f"p_{c}"]) for c in SEQUENCES) for row in csv.DictReader(f)}


def test_crossval_json_has_mean_and_std_over_folds(crossvalidated):
    run_dir, summary, _ = crossvalidated
    assert summary == str(run_dir / "crossval.json")
    result = json.loads((run_dir / "crossval.json").read_text())
    assert result["folds"] == [0, 1] and result["name"] == "sarf-gradcam"
    folds = [json.loads((run_dir / f"fold{k}" / "eval" / "metrics.json").read_text()) for k in (0, 1)]
    f1 = [m["multiclass"]["mean"]["f1"] for m in folds]
    assert result["headline"]["mean_f1"]["mean"] == pytest.approx(np.mean(f1))
    assert result["headline"]["mean_f1"]["std"] == pytest.approx(np.std(f1))
    assert result["metrics"]["n_folds"] == 2
    assert set(result["metrics"]["ovr_threshold"]) == {*SEQUENCES, "mean"}
    stripped = [json.loads((run_dir / f"fold{k}" / "eval/validation_stripped/metrics.json").read_text())["accuracy"] for k in (0, 1)]
    assert result["validation_accuracy"]["validation_stripped"]["mean"] == pytest.approx(np.mean(stripped))
    assert set(result["validation_metrics"]) == {"validation_stripped", "validation_whole_head"}


def test_rerun_skips_finished_folds(crossvalidated, simulated_dataset, monkeypatch):
    run_dir, _, _ = crossvalidated
    files = [run_dir / f"fold{k}" / name for k in (0, 1) for name in FOLD_FILES]
    before = [f.stat().st_mtime_ns for f in files]
    recorder = Recorder()
    monkeypatch.setattr(experiments, "run_bundle", recorder)
    # num_workers does not change a result, so folds run with another value still count as finished
    crossval(simulated_dataset, method="sarf-gradcam", out=run_dir.parent, folds=2, **{**TINY, "num_workers": 1})
    assert recorder.calls == []
    assert [f.stat().st_mtime_ns for f in files] == before


def test_gradcam_method_reaches_the_loss_through_the_config():
    parser = read_config("train.json")
    assert parser["saliency"] == "dtd"
    parser.update(METHODS["sarf-gradcam"])
    loss = parser.get_parsed_content("loss")
    assert (loss.saliency_method, loss.alpha, loss.beta, loss.base) == ("gradcam", 5.0, 0.5, "ce")


def test_changed_settings_interrupted_folds_and_changed_datalist_retrain(simulated_dataset, tmp_path):
    datalist = tmp_path / "datalist.json"
    datalist.write_text(simulated_dataset.read_text())
    settings = {**METHODS["sarf"], **TINY}
    run = lambda recorder, **changes: run_crossval(datalist, tmp_path / "sarf", {**settings, **changes}, runner=recorder)  # noqa: E731
    first = Recorder(fake=True)
    run(first)
    assert [fold for _, fold, _ in first.calls] == [0] * 4 + [1] * 4
    unchanged = Recorder(fake=True)
    default_rate = config_value("train.json", "learning_rate")
    run(unchanged, learning_rate=default_rate, num_workers=3)  # train.json's learning rate; num_workers does not count
    assert unchanged.calls == []
    changed = Recorder(fake=True)
    run(changed, epochs=2)
    assert [fold for _, fold, _ in changed.calls] == [0] * 4 + [1] * 4
    assert json.loads((tmp_path / "sarf" / "fold1" / "fold.json").read_text())["settings"]["epochs"] == 2
    # an interrupted fold (no fold.json) restarts from scratch: its old checkpoints are gone
    (tmp_path / "sarf" / "fold1" / "fold.json").unlink()
    stale = tmp_path / "sarf" / "fold1" / "models" / "latest_checkpoint_epoch=7.pt"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"")
    interrupted = Recorder(fake=True)
    run(interrupted, epochs=2)
    assert [fold for _, fold, _ in interrupted.calls] == [1] * 4 and not stale.exists()
    # a trained and tested fold that lacks an evaluation runs only that evaluation
    shutil.rmtree(tmp_path / "sarf" / "fold0" / "eval" / "validation_whole_head")
    evaluated = Recorder(fake=True)
    run(evaluated, epochs=2)
    assert [(run_id, fold, overrides["output_dir"]) for run_id, fold, overrides in evaluated.calls] == [
        ("run", 0, str(tmp_path / "sarf" / "fold0" / "eval" / "validation_whole_head"))
    ]
    assert "validation_whole_head" in json.loads((tmp_path / "sarf" / "fold0" / "fold.json").read_text())["accuracy"]
    datalist.write_text(datalist.read_text().replace('"seed"', '"seed_"'))
    relabelled = Recorder(fake=True)
    run(relabelled, epochs=2)
    assert [fold for _, fold, _ in relabelled.calls] == [0] * 4 + [1] * 4
    # a fold run by another bundle version (whose train.json may differ) is trained again
    record_file = tmp_path / "sarf" / "fold1" / "fold.json"
    record_file.write_text(json.dumps({**json.loads(record_file.read_text()), "bundle_version": "0.0.1"}))
    older = Recorder(fake=True)
    run(older, epochs=2)
    assert [fold for _, fold, _ in older.calls] == [1] * 4


class FailingEvaluation(Recorder):
    """A fake runner whose evaluation of the stripped validation fold fails."""

    def __call__(self, run_id: str, configs: list[str], **overrides) -> None:
        if Path(overrides.get("output_dir", "")).name == "validation_stripped":
            raise RuntimeError("out of memory in the stripped validation")
        super().__call__(run_id, configs, **overrides)


def test_a_fold_whose_evaluation_failed_keeps_its_training(simulated_dataset, tmp_path):
    """The record is written when training ends: the next run only runs the evaluations still missing."""
    settings = {**METHODS["sarf"], **TINY}
    with pytest.raises(RuntimeError, match="stripped validation"):
        run_crossval(simulated_dataset, tmp_path / "sarf", settings, folds=[0], runner=FailingEvaluation(fake=True))
    record = json.loads((tmp_path / "sarf" / "fold0" / "fold.json").read_text())
    assert "train" in record["seconds"] and "accuracy" not in record and "finished" not in record
    resumed = Recorder(fake=True)
    run_crossval(simulated_dataset, tmp_path / "sarf", settings, folds=[0], runner=resumed)
    assert [Path(o["output_dir"]).name for _, _, o in resumed.calls] == ["validation_stripped", "validation_whole_head"]
    record = json.loads((tmp_path / "sarf" / "fold0" / "fold.json").read_text())
    assert set(record["accuracy"]) == set(FOLD_EVALUATIONS) and "finished" in record
    # a finished fold without its model (as committed to docs/results) is kept: nothing is left to evaluate
    (tmp_path / "sarf" / "fold0" / experiments.MODEL_FILE).unlink()
    kept = Recorder(fake=True)
    run_crossval(simulated_dataset, tmp_path / "sarf", settings, folds=[0], runner=kept)
    assert kept.calls == []
    # but with an evaluation missing and no model to run it with, the fold is trained again
    shutil.rmtree(tmp_path / "sarf" / "fold0" / "eval" / "validation_whole_head")
    retrained = Recorder(fake=True)
    run_crossval(simulated_dataset, tmp_path / "sarf", settings, folds=[0], runner=retrained)
    assert [run_id for run_id, _, _ in retrained.calls][0] == "training"


def test_whole_head_control_still_strips_its_stripped_validation(simulated_dataset, tmp_path):
    """``--skull_strip False`` (the whole-head control) trains on whole heads; the evaluation keys override it."""
    recorder = Recorder(fake=True)
    run_crossval(simulated_dataset, tmp_path / "control", {**METHODS["sarf"], **TINY, "skull_strip": False}, folds=[0], runner=recorder)
    strip = {Path(o["output_dir"]).name if run_id == "run" else run_id: o["skull_strip"] for run_id, _, o in recorder.calls}
    assert strip == {"training": False, "eval": False, "validation_stripped": True, "validation_whole_head": False}


@pytest.mark.parametrize("fold", [0, 1])
def test_a_folds_validation_subjects_are_left_out_of_its_training(simulated_dataset, fold):
    """configs/train.json trains on the other folds and validates on fold ``fold``: no subject in both, none left out."""
    parser = read_config("train.json", dataset_dir=str(simulated_dataset.parent), fold=fold)
    train, validation = parser.get_parsed_content("train#dataset#data"), parser.get_parsed_content("validate#dataset#data")
    entries = json.loads(simulated_dataset.read_text())
    pool = {str(simulated_dataset.parent / e["image"]): e for e in entries["training"]}
    train_files, validation_files = [e["image"] for e in train], [e["image"] for e in validation]
    assert validation_files and train_files
    assert len(set(train_files)) == len(train_files) and len(set(validation_files)) == len(validation_files)
    assert {pool[f]["fold"] for f in validation_files} == {fold} and fold not in {pool[f]["fold"] for f in train_files}
    assert not {e["subject"] for e in train} & {e["subject"] for e in validation}  # no subject on both sides
    assert not set(train_files) & set(validation_files)
    assert set(train_files) | set(validation_files) == set(pool)  # together they cover every training fold
    assert not {str(simulated_dataset.parent / e["image"]) for e in entries["testing"]} & set(pool)
    assert [e["image"] for e in load_datalist(simulated_dataset, "training", folds=[fold])] == validation_files
    assert [e["image"] for e in load_datalist(simulated_dataset, "training", exclude_folds=[fold])] == train_files


def test_fold_selection(simulated_dataset):
    assert fold_ids(simulated_dataset) == [0, 1]
    assert fold_ids(simulated_dataset, 1) == [0]
    assert fold_ids(simulated_dataset, [1]) == [1]


ERRORS = [  # command line, message
    (["--method", "srf"], r"Unknown method 'srf'; options are baseline, focal, sarf, sarf-gradcam, sarf-focal, alpha-only, beta-only"),
    (["--method", "baseline", "--beta", "0.5"], r"--beta is set by --method baseline \(beta=0.0\)"),
    (["--epoch", "5"], r"--epoch is not a key of configs/train.json or configs/evaluate.json"),
    (["--fold", "1"], r"--fold is set by the cross-validation for each fold"),
    (["--folds", "3"], r"folds=3: datalist .* has 2 folds \[0, 1\]; ask for 1 to 2"),
    (["--folds", "[1, 4]"], r"has the folds \[0, 1\], not \[4\]"),
]


@pytest.mark.parametrize("arguments, message", ERRORS)
def test_command_line_errors_name_the_bad_value(simulated_dataset, tmp_path, arguments, message, monkeypatch):
    monkeypatch.setattr(experiments, "run_bundle", Recorder(fake=True))
    with pytest.raises(ValueError, match=message):
        main(["crossval", "--datalist", str(simulated_dataset), "--out", str(tmp_path), *arguments])


def test_missing_or_unfolded_datalist_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; create one with"):
        crossval(tmp_path / "nothing.json")
    unfolded = tmp_path / "datalist.json"
    unfolded.write_text(json.dumps({"training": [{"image": "a.nii.gz", "label": 0}]}))
    with pytest.raises(ValueError, match=r"every 'training' entry needs a 'fold' for cross-validation; 1 have none, e.g. \['a.nii.gz'\]"):
        crossval(unfolded)


def test_help_shows_the_command_instead_of_becoming_an_override(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["crossval", "--help"])
    assert exit_info.value.code == 0
    captured = capsys.readouterr()
    assert "Cross-validate one of the paper's methods" in captured.out + captured.err
