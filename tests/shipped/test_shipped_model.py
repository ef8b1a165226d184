"""The model that ships with the bundle (``models/model.pt``): its file, its answers on new data, and the demo."""

from __future__ import annotations

import hashlib
import json
import re
import shutil

import pytest
import torch

from sarf_bundle import SEQUENCES
from sarf_bundle.bundle import BUNDLE_ROOT, PreprocessingSettings, load_inference_bundle, save_checkpoint
from sarf_bundle.demo import run_demo, true_sequence
from sarf_bundle.handlers import read_prediction_csv
from sarf_bundle.networks import SaliencyResNet
from sarf_bundle.pretrain import export_model
from sarf_bundle.simulation.dataset import synthesize

MODEL = BUNDLE_ROOT / "models" / "model.pt"
CARD = BUNDLE_ROOT / "docs" / "README.md"


@pytest.fixture(scope="module")
def shipped():
    return load_inference_bundle(MODEL)


def test_the_file_is_small_safe_and_named_in_the_model_card():
    assert MODEL.stat().st_size <= 25 * 2**20
    assert load_inference_bundle(MODEL).temperature == json.loads((BUNDLE_ROOT / "models" / "calibration.json").read_text())["temperature"]
    stored = torch.load(MODEL, weights_only=True)
    assert set(stored) == {"model", "preprocessing"}
    assert {t.dtype for t in stored["model"].values() if t.ndim == 4} == {torch.float16}  # the convolution kernels
    settings = stored["preprocessing"]
    assert settings["class_names"] == list(SEQUENCES) and set(PreprocessingSettings.COMPARED) <= set(settings)
    digest = hashlib.sha256(MODEL.read_bytes()).hexdigest()
    assert digest in CARD.read_text(), "the model card must give the SHA-256 of the shipped models/model.pt"
    assert re.search(rf'"sha256": "{digest}"', (BUNDLE_ROOT / "configs" / "metadata.json").read_text())


def test_new_simulated_subjects_are_classified(shipped, tmp_path):
    """Two subjects the model never saw (another seed than its training data), whole head, 12 volumes."""
    datalist = synthesize(tmp_path, subjects=2, seed=31, workers=2, test_fraction=0.5, folds=1, voxel_scale=1.5, progress=False)
    entries = [e for split in ("training", "testing") for e in json.loads(datalist.read_text())[split]]
    answers = {e["image"]: shipped.classify(tmp_path / e["image"]).sequence for e in entries}
    right = sum(answers[e["image"]] == e["sequence"] for e in entries)
    assert right >= 11, f"{right} of 12 right: {answers}"


@pytest.mark.parametrize("name", ["ch2", "ch2bet", "ch2better"])
def test_colin27_is_t1_with_and_without_its_skull(shipped, mricron_templates, name):
    p = shipped.classify(mricron_templates / f"{name}.nii.gz")  # the Python API: the CSV's and MONAI Label's decision
    assert p.sequence == "T1" and p.confidence >= 0.5, f"{name}: {p.sequence} ({p.confidence}; {p.status}: {p.message})"


def test_the_demo_classifies_a_mixed_folder_with_the_shipped_model(tmp_path, capsys, mricron_installed):
    summary = json.loads(open(run_demo(out=tmp_path / "demo", subjects=1, voxel_scale=2.0, unknown_volumes=1)).read())
    rows = {r["file"]: r for r in read_prediction_csv(summary["outputs"]["predictions_csv"])}
    truths = [true_sequence(f) for f in rows]
    assert sorted(t for t in truths if t in SEQUENCES) == sorted(list(SEQUENCES) + (["T1"] * 3 if mricron_installed else []))
    assert sum("dicom/" in f for f in rows) == 2 and all(rows[f]["status"] != "error" for f in rows if "dicom/" in f)
    corrupt = next(r for f, r in rows.items() if f.endswith("corrupt.nii.gz"))
    assert corrupt["status"] == "error" and "gzip" in corrupt["message"]
    assert summary["accuracy"] >= 0.75 and summary["statuses"]["error"] == 1
    printed = capsys.readouterr().out
    assert "Accuracy on the" in printed and summary["outputs"]["relevance_maps"] in printed
    assert (tmp_path / "demo" / "explanations").is_dir()
    assert list((tmp_path / "demo" / ".partial").iterdir()) == []  # each DICOM series was filled there, then moved whole
    shutil.rmtree(tmp_path / "demo" / "inputs" / "dicom")  # a second run classifies only what is new
    run_demo(out=tmp_path / "demo", subjects=1, voxel_scale=2.0, unknown_volumes=1)
    assert len(read_prediction_csv(summary["outputs"]["predictions_csv"])) == len(rows)


def test_export_stores_half_precision_kernels_with_the_record(tmp_path):
    torch.manual_seed(0)
    network = SaliencyResNet()
    save_checkpoint(network, tmp_path / "trained.pt", image_size=64)
    digest = export_model(tmp_path / "trained.pt", tmp_path / "exported.pt")
    assert digest == hashlib.sha256((tmp_path / "exported.pt").read_bytes()).hexdigest()
    exported = torch.load(tmp_path / "exported.pt", weights_only=True)
    assert exported["preprocessing"]["image_size"] == 64
    for name, value in network.state_dict().items():
        stored = exported["model"][name]
        assert stored.dtype == (torch.float16 if value.ndim == 4 else value.dtype)
        if value.ndim == 4:
            torch.testing.assert_close(stored.float(), value, rtol=1e-3, atol=1e-4)
        else:
            assert torch.equal(stored, value)  # batch norm and the final layer are kept exactly
    assert (tmp_path / "exported.pt").stat().st_size < 0.55 * (tmp_path / "trained.pt").stat().st_size
    torch.save({"model": network.state_dict()}, tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="bare.pt: expected a checkpoint with 'model' and 'preprocessing'"):
        export_model(tmp_path / "bare.pt", tmp_path / "never.pt")
    assert not (tmp_path / "never.pt").exists()
