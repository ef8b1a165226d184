"""The ``explain`` and ``faithfulness`` commands, on simulated volumes through the real inference preprocessing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sarf_bundle.bundle import load_inference_bundle, save_checkpoint
from sarf_bundle.cli import main
from sarf_bundle.data import load_datalist
from sarf_bundle.explain import class_map_similarity, explain
from sarf_bundle.faithfulness import faithfulness, road_volume
from sarf_bundle.networks import SaliencyResNet

SIZE = 32  # slice size for speed; passed to the config as an override


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two checkpoints of differently initialised networks, laid out as ``<name>/models/model.pt``."""
    root = tmp_path_factory.mktemp("models")
    paths = []
    for seed, name in ((0, "baseline"), (1, "sarf")):
        torch.manual_seed(seed)
        path = root / name / "models" / "model.pt"
        path.parent.mkdir(parents=True)
        save_checkpoint(SaliencyResNet(), path, image_size=SIZE)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def volume(simulated_dataset):
    return load_datalist(simulated_dataset, "testing")[3]["image"]


def test_explain_writes_figure_and_conserving_maps(checkpoints, volume, tmp_path):
    paths = explain(volume, model=",".join(checkpoints), out=str(tmp_path), image_size=SIZE)
    assert paths["figure"].endswith("_relevance.png") and (tmp_path / paths["figure"].split("/")[-1]).stat().st_size > 10_000
    maps = np.load(paths["maps"])
    assert maps["relevance"].shape == (2, 7, 6, SIZE, SIZE)
    assert list(maps["models"]) == ["baseline", "sarf"] and list(maps["class_names"]) == ["DWI", "FLAIR", "SWI", "T1", "T1Gd", "T2"]
    np.testing.assert_allclose(maps["relevance"].sum(axis=(-1, -2)), 1.0, atol=1e-4)
    np.testing.assert_allclose(maps["probabilities"].sum(axis=1), 1.0, atol=1e-5)
    assert not np.allclose(maps["relevance"][0], maps["relevance"][1])  # two different networks
    bundle = load_inference_bundle(checkpoints[0], image_size=SIZE)
    np.testing.assert_array_equal(maps["image"], bundle.load(volume).numpy())


def test_explain_command_line(checkpoints, volume, tmp_path):
    main(["explain", volume, "--model", checkpoints[1], "--names", "SaRF", "--out", str(tmp_path), "--image_size", str(SIZE)])
    maps = np.load(next(tmp_path.glob("*_relevance.npz")))
    assert maps["relevance"].shape == (1, 7, 6, SIZE, SIZE) and list(maps["models"]) == ["SaRF"]


def test_explain_bad_inputs(checkpoints, volume, tmp_path):
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b truncated")
    with pytest.raises(ValueError, match="broken.nii.gz"):
        explain(str(broken), model=checkpoints[0], out=str(tmp_path), image_size=SIZE)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        explain(volume, model=str(tmp_path / "missing.pt"), out=str(tmp_path))
    wrong = tmp_path / "wrong.pt"
    torch.save({"weight": torch.zeros(3)}, wrong)
    with pytest.raises(ValueError, match="wrong.pt: the checkpoint does not say what preprocessing"):
        explain(volume, model=str(wrong), out=str(tmp_path))
    wrong_network = tmp_path / "wrong_network.pt"
    torch.save({"model": {"weight": torch.zeros(3)}, "preprocessing": torch.load(checkpoints[0], weights_only=True)["preprocessing"]}, wrong_network)
    with pytest.raises(ValueError, match="wrong_network.pt: not a checkpoint of this bundle's network"):
        explain(volume, model=str(wrong_network), out=str(tmp_path))
    with pytest.raises(ValueError, match="distinct name"):
        explain(volume, model=checkpoints, names=["a"], out=str(tmp_path))


def test_road_volume_without_removal_is_the_prediction(checkpoints, volume):
    bundle = load_inference_bundle(checkpoints[0], image_size=SIZE)
    slices = bundle.load(volume)
    probabilities = road_volume(bundle, slices, levels=[0, 50, 90], noise=0.5, rng=0)
    assert probabilities.shape == (4, 6)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probabilities[1], probabilities[0], atol=1e-6)  # 0 % removed: the image is untouched
    assert not np.allclose(probabilities[3], probabilities[0], atol=1e-4)
    np.testing.assert_array_equal(probabilities, road_volume(bundle, slices, levels=[0, 50, 90], noise=0.5, rng=0))


def test_faithfulness_report_resume_and_bad_volume(checkpoints, simulated_dataset, tmp_path):
    datalist = json.loads(Path(simulated_dataset).read_text())
    datalist["testing"] = datalist["testing"][:3] + [{**datalist["testing"][0], "image": "broken.nii.gz"}]
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for entry in datalist["testing"][:3]:
        (data_dir / entry["image"]).symlink_to(simulated_dataset.parent / entry["image"])
    (data_dir / "broken.nii.gz").write_bytes(b"\x1f\x8b truncated")
    (data_dir / "datalist.json").write_text(json.dumps(datalist))
    out = tmp_path / "road"
    args = dict(model=checkpoints, names=["base", "sarf"], out=str(out), levels=[30, 90], image_size=SIZE)

    report = json.loads(Path(faithfulness(str(data_dir / "datalist.json"), **args)).read_text())
    assert report["levels"] == [30.0, 90.0] and set(report["models"]) == {"base", "sarf"}
    for result in report["models"].values():
        assert result["n_volumes"] == 3 and len(result["f1"]) == 3 and result["f1_decrease"][0] == 0.0
        assert result["f1_decrease"] == pytest.approx([result["f1"][0] - v for v in result["f1"]])
        assert result["seconds_per_volume"] > 0
    assert list(report["errors"]) == [str(data_dir / "broken.nii.gz")] and "broken.nii.gz" in report["errors"][str(data_dir / "broken.nii.gz")]
    assert (out / "road.png").stat().st_size > 5_000
    assert len((out / "road.csv").read_text().splitlines()) == 1 + 2 * 3

    cached = sorted((out / "volumes").rglob("*.json"))
    assert len(cached) == 6
    stamps = [p.stat().st_mtime_ns for p in cached]
    again = json.loads(Path(faithfulness(str(data_dir / "datalist.json"), **args)).read_text())
    assert [p.stat().st_mtime_ns for p in cached] == stamps  # resumed: nothing recomputed
    assert again["models"]["base"]["f1"] == report["models"]["base"]["f1"] and again["models"]["base"]["seconds_per_volume"] is None

    changed = json.loads(Path(faithfulness(str(data_dir / "datalist.json"), **{**args, "noise": 0.2})).read_text())
    assert [p.stat().st_mtime_ns for p in cached] != stamps  # other settings: recomputed
    assert changed["noise"] == 0.2


def test_faithfulness_bad_arguments(checkpoints, simulated_dataset, tmp_path):
    with pytest.raises(ValueError, match="target"):
        faithfulness(str(simulated_dataset), model=checkpoints[0], target="random", out=str(tmp_path))
    with pytest.raises(ValueError, match="family"):
        faithfulness(str(simulated_dataset), model=checkpoints[0], family="micro", out=str(tmp_path))
    with pytest.raises(ValueError, match="distinct name"):
        faithfulness(str(simulated_dataset), model=checkpoints, names="same,same", out=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="missing.json"):
        faithfulness(str(tmp_path / "missing.json"), model=checkpoints[0], out=str(tmp_path))


def test_class_map_similarity():
    same = np.broadcast_to(np.random.default_rng(0).random((3, 1, 8, 8)), (3, 6, 8, 8))
    assert class_map_similarity(same) == pytest.approx(1.0)
    disjoint = np.zeros((2, 6, 8, 8))
    for k in range(6):
        disjoint[:, k, k] = 1.0  # each class lights its own row
    assert class_map_similarity(disjoint) == pytest.approx(0.0)
    assert class_map_similarity(np.concatenate([same[:2], disjoint], axis=0)) == pytest.approx(0.5)
