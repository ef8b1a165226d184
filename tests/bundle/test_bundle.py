"""The bundle end to end through its real configs: train, resume, evaluate, infer, export, verify."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import onnxruntime as ort
import pytest
import torch
from monai.bundle import ConfigParser, ckpt_export, onnx_export, verify_metadata, verify_net_in_out
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sarf_bundle import SEQUENCES
from sarf_bundle.bundle import BUNDLE_ROOT, bundle_version, checkpoint_settings, load_inference_bundle, run_bundle
from sarf_bundle.data import volume_probabilities
from sarf_bundle.handlers import latest_checkpoint
from sarf_bundle.networks import SaliencyResNet

CONFIGS = BUNDLE_ROOT / "configs"
SMALL = dict(image_size=32, batch_size=4, num_workers=0)
ONNX_CONVERTER = {  # as in the README's onnx_export command
    "input_names": ["image"],
    "output_names": ["logits"],
    "dynamic_axes": {"image": {0: "batch"}, "logits": {0: "batch"}},
    "verify": True,
    "use_ort": True,
}


@pytest.fixture(scope="module")
def trained(simulated_dataset, tmp_path_factory):
    """A bundle root trained for 2 epochs through configs/train.json; a copy of each epoch's weights in ``epochs/<k>.pt``."""
    root = tmp_path_factory.mktemp("bundle")
    keep_epochs = tmp_path_factory.mktemp("overlay") / "keep_epochs.json"
    keep_epochs.write_text(json.dumps({"+initialize": [
        "$os.makedirs(@bundle_root + '/epochs', exist_ok=True)",
        (
            "$@train#trainer.add_event_handler(ignite.engine.Events.EPOCH_COMPLETED, "
            "lambda engine, net=@network, folder=@bundle_root: torch.save(net.state_dict(), f'{folder}/epochs/{engine.state.epoch}.pt'))"
        ),
    ]}))  # fmt: skip
    run_bundle("training", ["train.json", str(keep_epochs)], bundle_root=str(root), dataset_dir=str(simulated_dataset.parent), epochs=2, **SMALL)
    return root, simulated_dataset


def test_training_writes_best_and_latest_checkpoints(trained):
    root, _ = trained
    assert (root / "models" / "model.pt").is_file()
    assert (root / "models" / "latest_checkpoint_epoch=2.pt").is_file()
    state = torch.load(root / "models" / "model.pt", weights_only=True)
    net = SaliencyResNet()
    net.load_state_dict(state["model"])
    assert state["preprocessing"]["image_size"] == SMALL["image_size"] and state["preprocessing"]["class_names"] == list(SEQUENCES)
    assert checkpoint_settings(root / "models" / "model.pt")["image_size"] == SMALL["image_size"]
    assert (root / "eval" / "tensorboard").is_dir()


def validation_losses(log_dir: Path) -> dict[int, float]:
    """The ``val_loss`` that TensorBoard logged for each epoch."""
    losses = {}
    for events in sorted(log_dir.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events)).Reload()
        if "val_loss" in accumulator.Tags()["scalars"]:
            losses.update((e.step, e.value) for e in accumulator.Scalars("val_loss"))
    return losses


def test_the_kept_model_is_the_epoch_of_lowest_validation_loss(trained):
    root, _ = trained
    losses = validation_losses(root / "eval" / "tensorboard")
    assert sorted(losses) == [1, 2]
    best_epoch = min(losses, key=losses.get)
    best = torch.load(root / "models" / "latest_checkpoint_epoch=2.pt", weights_only=True)["best"]
    assert best["best_metric_epoch"] == best_epoch and best["best_metric"] == pytest.approx(losses[best_epoch], rel=1e-6)
    kept = torch.load(root / "models" / "model.pt", weights_only=True)["model"]
    epochs = {k: torch.load(root / "epochs" / f"{k}.pt", weights_only=True) for k in (1, 2)}
    assert any(not torch.equal(epochs[1][n], epochs[2][n]) for n in kept)  # the two epochs can be told apart
    assert list(kept) == list(epochs[best_epoch])
    for name, value in kept.items():
        assert torch.equal(value, epochs[best_epoch][name]), name


def test_training_resumes_from_latest_checkpoint(trained, tmp_path):
    root, datalist = trained
    resumed = tmp_path / "resumed"
    shutil.copytree(root / "models", resumed / "models")
    before = (resumed / "models" / "latest_checkpoint_epoch=2.pt").stat().st_mtime_ns
    best_before = torch.load(resumed / "models" / "latest_checkpoint_epoch=2.pt", weights_only=True)["best"]
    model_written = (resumed / "models" / "model.pt").stat().st_mtime_ns
    run_bundle("training", ["train.json"], bundle_root=str(resumed), dataset_dir=str(datalist.parent), epochs=3, resume=True, **SMALL)
    latest = latest_checkpoint(resumed / "models")
    assert latest.endswith("latest_checkpoint_epoch=3.pt")
    trainer = torch.load(latest, weights_only=True)["trainer"]
    assert trainer["iteration"] == 3 * trainer["epoch_length"]
    # Epochs 1 and 2 were not run again: their checkpoint was never rewritten.
    assert (resumed / "models" / "latest_checkpoint_epoch=2.pt").stat().st_mtime_ns == before
    # The best model's bookkeeping came along: epoch 3 replaces model.pt only if its validation loss is lower.
    best_after = torch.load(latest, weights_only=True)["best"]
    assert 1 <= best_before["best_metric_epoch"] <= 2 and best_after["best_metric"] <= best_before["best_metric"]
    if best_after["best_metric_epoch"] == best_before["best_metric_epoch"]:
        assert (resumed / "models" / "model.pt").stat().st_mtime_ns == model_written
    else:
        assert best_after["best_metric_epoch"] == 3 and (resumed / "models" / "model.pt").stat().st_mtime_ns > model_written


def test_evaluation_on_test_split(trained):
    root, datalist = trained
    run_bundle("run", ["train.json", "evaluate.json"], bundle_root=str(root), dataset_dir=str(datalist.parent), **SMALL)
    metrics = json.loads((root / "eval" / "metrics.json").read_text())
    n_test = len(json.loads(datalist.read_text())["testing"])
    assert metrics["n_volumes"] == n_test
    assert sum(map(sum, metrics["confusion_matrix"])) == n_test
    assert set(metrics["multiclass"]) == {*SEQUENCES, "mean"}
    with open(root / "eval" / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n_test and all(r["label"] in SEQUENCES for r in rows)


def test_the_csv_and_the_python_api_give_the_same_answer(trained, tmp_path):
    """One decision (sarf_bundle.prediction.decide) behind both: same sequence, probabilities, status and message.

    A threshold of 0.99 makes most volumes ``uncertain``, so the reasons are compared too.
    """
    root, datalist = trained
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for entry in json.loads(datalist.read_text())["testing"][:4]:
        shutil.copy(datalist.parent / entry["image"], inputs)
    (inputs / "broken.nii.gz").write_bytes(b"\x1f\x8b truncated")
    out_csv = tmp_path / "predictions.csv"
    run_bundle("run", ["inference.json"], bundle_root=str(root), dataset_dir=str(inputs), output_csv=str(out_csv), image_size=32, num_workers=0, confidence_threshold=0.99)
    rows = {Path(r["file"]).name: r for r in csv.DictReader(out_csv.open())}
    api = load_inference_bundle(root / "models" / "model.pt", confidence_threshold=0.99)
    statuses = set()
    for path in sorted(inputs.iterdir()):
        expected = api.classify(path).as_row()
        row = rows[path.name]
        statuses.add(row["status"])
        assert {k: row[k] for k in ("file", "sequence", "status", "message", "bids_name")} == {
            k: expected.get(k, "") for k in ("file", "sequence", "status", "message", "bids_name")
        }, path.name
        for c in SEQUENCES:
            assert float(row[f"p_{c}"] or 0) == pytest.approx(float(expected.get(f"p_{c}", 0)), abs=1e-5)
    assert "error" in statuses and statuses & {"ok", "uncertain"}


def test_folder_inference_gives_one_row_per_file_and_resumes(trained, tmp_path, capsys):
    root, datalist = trained
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    entries = json.loads(datalist.read_text())["testing"][:5]
    for entry in entries:
        shutil.copy(datalist.parent / entry["image"], inputs)
    (inputs / "broken.nii.gz").write_bytes(b"\x1f\x8b truncated")
    (inputs / "notes.txt").write_text("not an image")
    out_csv = tmp_path / "predictions.csv"
    overrides = dict(bundle_root=str(root), dataset_dir=str(inputs), output_csv=str(out_csv), image_size=32, num_workers=0, batch_size=2)
    run_bundle("run", ["inference.json"], **overrides)
    printed = capsys.readouterr()
    assert re.search(r"classifying: 100%.*\b6/6 ", printed.err)  # one bar over the 6 inputs, not the 3 batches
    summary = rf"6 inputs \(6 classified now\): (\d ok, )?(\d uncertain, )?1 error\. Predictions: {re.escape(str(out_csv))}"
    assert re.search(summary, printed.out), printed.out[-3000:]
    assert "unable to load" not in printed.out + printed.err and "NvImgCodec" not in printed.out + printed.err
    with open(out_csv) as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == [
        "file", "sequence", *[f"p_{c}" for c in SEQUENCES], "confidence", "status", "message", "bids_name", "header_sequence", "header_agrees"
    ]  # fmt: skip
    by_name = {r["file"].split("/")[-1]: r for r in rows}
    assert sorted(by_name) == sorted([e["image"] for e in entries] + ["broken.nii.gz"]) and len(rows) == 6
    broken = by_name.pop("broken.nii.gz")
    assert broken["status"] == "error" and broken["sequence"] == "" and not any(broken[f"p_{c}"] for c in SEQUENCES)
    assert broken["message"].startswith("ImageFileError: Cannot work out file type of") and "broken.nii.gz" in broken["message"]
    for name, row in by_name.items():  # every real volume is classified
        assert row["status"] in ("ok", "uncertain"), (name, row)
        probs = [float(row[f"p_{c}"]) for c in SEQUENCES]
        assert abs(sum(probs) - 1) < 1e-4 and row["sequence"] == SEQUENCES[probs.index(max(probs))], row
        assert float(row["confidence"]) == pytest.approx(max(probs), abs=1e-6)
        assert row["message"] == ("" if row["status"] == "ok" else f"confidence {max(probs):.2f} is below the threshold 0.5"), row

    # A rerun over the complete CSV classifies nothing and leaves it byte for byte.
    first = out_csv.read_bytes()
    run_bundle("run", ["inference.json"], **overrides)
    assert out_csv.read_bytes() == first
    # Without one row (an interrupted run), the rerun classifies that input alone and keeps the other rows as they were.
    lines = first.decode().splitlines(keepends=True)
    dropped_name = min(by_name)
    dropped = next(line for line in lines if line.startswith(str(inputs / dropped_name) + ","))
    kept = [line for line in lines if line is not dropped]
    out_csv.write_text("".join(kept))
    run_bundle("run", ["inference.json"], **overrides)
    assert re.search(r"6 inputs \(1 classified now, 5 from an earlier run\)", capsys.readouterr().out)
    rerun = out_csv.read_bytes().decode().splitlines(keepends=True)
    assert rerun[: len(kept)] == kept and len(rerun) == len(lines)
    (again,) = csv.DictReader([lines[0], rerun[-1]])
    assert again["file"] == str(inputs / dropped_name) and again["status"] == by_name[dropped_name]["status"]
    for c in SEQUENCES:
        assert float(again[f"p_{c}"]) == pytest.approx(float(by_name[dropped_name][f"p_{c}"]), abs=1e-5)


def test_a_config_that_preprocesses_otherwise_than_training_is_refused(trained, tmp_path):
    """The checkpoint records the slice size; inference at another one stops with the setting and the fix."""
    root, datalist = trained
    overrides = dict(bundle_root=str(root), dataset_dir=str(datalist.parent), output_csv=str(tmp_path / "p.csv"), num_workers=0)
    with pytest.raises(RuntimeError) as refused:  # the config's CheckpointLoader: MONAI wraps the handler's error
        run_bundle("run", ["inference.json"], **{**overrides, "image_size": 48})
    assert re.search(r"image_size 32 \(config: 48\).*`--image_size 32`", str(refused.value.__cause__))
    with pytest.raises(RuntimeError) as refused:
        run_bundle("run", ["train.json", "evaluate.json"], **{**overrides, "image_size": 32, "norm_statistics": "moments"})
    assert "norm_statistics robust (config: moments)" in str(refused.value.__cause__)
    with pytest.raises(ValueError, match=r"model.pt: the model was trained with other preprocessing.*image_size 32 \(config: 48\)"):
        load_inference_bundle(root / "models" / "model.pt", image_size=48)
    assert not (tmp_path / "p.csv").exists()


def test_a_checkpoint_without_its_preprocessing_is_refused(trained, tmp_path):
    root, _ = trained
    bare = tmp_path / "model.pt"
    torch.save(torch.load(root / "models" / "model.pt", weights_only=True)["model"], bare)
    with pytest.raises(ValueError, match=r"model.pt: the checkpoint does not say what preprocessing"):
        load_inference_bundle(bare)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_inference_bundle(tmp_path / "missing.pt")


def test_export_and_network_verification(trained, tmp_path):
    root, _ = trained
    meta, config = str(CONFIGS / "metadata.json"), str(CONFIGS / "inference.json")
    verify_net_in_out(net_id="network_def", meta_file=meta, config_file=config)
    ts = tmp_path / "model.ts"
    ckpt_export(net_id="network_def", filepath=str(ts), ckpt_file=str(root / "models" / "model.pt"), key_in_ckpt="model", meta_file=meta, config_file=config)
    exported = torch.jit.load(str(ts))
    net = SaliencyResNet()
    net.load_state_dict(torch.load(root / "models" / "model.pt", weights_only=True)["model"])
    net.eval()
    x = torch.randn(3, 1, 64, 64)
    torch.testing.assert_close(exported(x), net(x))


def test_onnx_export_with_dynamic_batch_agrees_with_eager(trained, tmp_path):
    root, _ = trained
    onnx_file = tmp_path / "model.onnx"
    onnx_export(
        net_id="network_def",
        filepath=str(onnx_file),
        ckpt_file=str(root / "models" / "model.pt"),
        key_in_ckpt="model",
        meta_file=str(CONFIGS / "metadata.json"),
        config_file=str(CONFIGS / "inference.json"),
        input_shape=[1, 1, 32, 32],
        use_trace=True,
        converter_kwargs=ONNX_CONVERTER,
    )
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    assert list(session.get_inputs()[0].shape) == ["batch", 1, 32, 32]
    net = SaliencyResNet()
    net.load_state_dict(torch.load(root / "models" / "model.pt", weights_only=True)["model"])
    net.eval()
    for batch in (1, 7):  # one slice, and a whole volume's slices
        x = torch.randn(batch, 1, 32, 32)
        (logits,) = session.run(None, {"image": x.numpy()})
        torch.testing.assert_close(torch.from_numpy(logits), net(x).detach(), atol=1e-4, rtol=1e-4)


def test_calibration_then_inference_uses_the_temperature(trained, tmp_path):
    root, datalist = trained
    run_bundle("run", ["train.json", "calibrate.json"], bundle_root=str(root), dataset_dir=str(datalist.parent), **SMALL)
    calibration = json.loads((root / "models" / "calibration.json").read_text())
    assert calibration["temperature"] > 0 and calibration["n_volumes"] > 0
    assert calibration["after"]["nll"] <= calibration["before"]["nll"] + 1e-9
    assert calibration["after"]["accuracy"] == calibration["before"]["accuracy"]
    output_csv = tmp_path / "calibrated.csv"
    run_bundle("run", ["inference.json"], bundle_root=str(root), dataset_dir=str(datalist.parent), output_csv=str(output_csv), **SMALL)
    row = next(r for r in csv.DictReader(output_csv.open()) if r["status"] != "error")
    net = SaliencyResNet()
    net.load_state_dict(torch.load(root / "models" / "model.pt", weights_only=True)["model"])
    bundle = load_inference_bundle(root / "models" / "model.pt")  # the slice size comes from the checkpoint
    with torch.no_grad():
        logits = net.eval()(bundle.load(row["file"])[:, None])
    expected = volume_probabilities(logits, logits.shape[0], calibration["temperature"])[0]
    assert [float(row[f"p_{c}"]) for c in SEQUENCES] == pytest.approx(expected.tolist(), abs=1e-5)
    (root / "models" / "calibration.json").unlink()


def test_metadata_verifies_offline():
    verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=str(CONFIGS / "metadata_schema.json"))


def test_inference_preprocessing_is_training_preprocessing_without_stripping():
    train = ConfigParser.load_config_file(CONFIGS / "train.json")
    validation = train["train"]["deterministic_transforms"] + train["train"]["finishing_transforms"]
    infer = ConfigParser.load_config_file(CONFIGS / "inference.json")["preprocessing"]["transforms"]
    dropped = {"sarf_bundle.transforms.BrainMaskd", "DeleteItemsd"}
    strip = lambda t: {k: v for k, v in t.items() if k not in ("keys", "allow_missing_keys", "mode")}  # noqa: E731
    assert [strip(t) for t in validation if t["_target_"] not in dropped] == [strip(t) for t in infer]
    assert [t["_target_"] for t in train["validate"]["strip_transforms"]] == ["sarf_bundle.transforms.SkullStripd"]
    shared = ("percentiles", "image_size", "fov_mm", "crop_mm", "norm_radius_mm", "norm_statistics", "norm_slices", "class_names",
              "preprocessing_settings")
    assert {k: train[k] for k in shared} == {k: ConfigParser.load_config_file(CONFIGS / "inference.json")[k] for k in shared}


def test_without_the_bundle_folder_commands_say_how_to_install(monkeypatch, tmp_path):
    """A non-editable ``pip install .`` leaves configs/ and models/ behind: the error says so."""
    monkeypatch.setattr("sarf_bundle.bundle.BUNDLE_ROOT", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"configs/train.json does not exist.*pip install -e \."):
        run_bundle("training", ["train.json"])
    with pytest.raises(FileNotFoundError, match=r"configs/metadata.json does not exist"):
        bundle_version()
