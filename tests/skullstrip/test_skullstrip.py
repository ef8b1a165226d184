"""Skull stripping: the real HD-BET and deepbet code, the disk cache, the command, and the bundle's configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.metrics import compute_dice
from monai.transforms import LoadImage

import sarf_bundle.skullstrip_backends as skullstrip_backends
from sarf_bundle.bundle import BUNDLE_ROOT
from sarf_bundle.skullstrip import SkullStripper, mask_note_path, strip_datalist
from sarf_bundle.skullstrip_backends import HD_BET_WEIGHT_FILES, HD_BET_WEIGHTS_ENV, hd_bet_weights_folder
from sarf_bundle.transforms import BrainMask, BrainMaskd, SkullStripd

CONFIGS = BUNDLE_ROOT / "configs"


@pytest.fixture
def count_backend_calls(monkeypatch):
    """Wrap the real backend functions so that every call is counted by backend name."""
    calls = {name: 0 for name in skullstrip_backends.BACKENDS}

    def counting(name, backend):
        def call(*args, **kwargs):
            calls[name] += 1
            return backend(*args, **kwargs)

        return call

    for name, backend in list(skullstrip_backends.BACKENDS.items()):
        monkeypatch.setitem(skullstrip_backends.BACKENDS, name, counting(name, backend))
    return calls


def write_datalist(path: Path, training: list[Path], testing: list[Path] = ()) -> Path:
    content = {
        "training": [{"image": str(p), "label": 3, "fold": 0} for p in training],
        "testing": [{"image": str(p), "label": 3} for p in testing],
    }
    path.write_text(json.dumps(content))
    return path


def test_hd_bet_runs_end_to_end_and_leaves_no_side_effects(tmp_path, tiny_hd_bet_weights, head_file, monkeypatch, capfd):
    """HD-BET's real inference code on a tiny random nnU-Net: the plumbing, not the (meaningless) mask."""
    image = head_file("head.nii.gz")
    decoys = [tmp_path / name for name in ("dataset.json", "plans.json", "predict_from_raw_data_args.json")]
    for decoy in decoys:
        decoy.write_text("{}")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.delitem(sys.modules, "HD_BET.hd_bet_prediction", raising=False)  # its import replaces sys.stdout
    monkeypatch.delenv("nnUNet_compile", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # HD-BET sets all cores on CPU
    stdout = sys.stdout
    try:
        stripper = SkullStripper("hd-bet-v2", tmp_path / "cache", hd_bet_weights=tiny_hd_bet_weights, device="cpu")
        mask_file = stripper(image)
        assert sys.stdout is stdout
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert "Predicting" not in capfd.readouterr().out, "HD-BET printed to stdout"
    assert "nnUNet_compile" not in os.environ
    assert all(d.read_text() == "{}" for d in decoys), "HD-BET deleted files beside its output"
    assert list((tmp_path / "tmp").iterdir()) == [], "HD-BET's temporary folder was left behind"

    source, mask = nib.load(image), nib.load(mask_file)
    assert mask_file.parent == tmp_path / "cache" / "hd-bet-v2"
    assert mask.shape == source.shape and mask.get_data_dtype() == np.uint8
    np.testing.assert_allclose(mask.affine, source.affine, atol=1e-5)
    assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}
    loaded_image, loaded_mask = LoadImage(image_only=True)(str(image)), LoadImage(image_only=True)(str(mask_file))
    torch.testing.assert_close(loaded_mask.affine, loaded_image.affine)
    note = json.loads(mask_note_path(mask_file).read_text())
    assert note["backend"] == "hd-bet-v2" and note["tta"] is False and note["image"] == str(image)
    tta = SkullStripper("hd-bet-v2", tmp_path / "cache", hd_bet_weights=tiny_hd_bet_weights, hd_bet_tta=True)
    assert tta.cache_path(image) != mask_file, "test-time augmentation changes the mask, so it must change the key"


@pytest.mark.parametrize("source", ["argument", "environment"])
def test_missing_hd_bet_weights_say_where_and_how(tmp_path, monkeypatch, source):
    folder = tmp_path / "no_weights"
    monkeypatch.setenv(HD_BET_WEIGHTS_ENV, str(folder))
    with pytest.raises(FileNotFoundError) as error:
        SkullStripper("hd-bet-v2", hd_bet_weights=folder if source == "argument" else None)
    message = str(error.value)
    assert str(folder) in message
    assert "the hd_bet_weights setting" in message if source == "argument" else HD_BET_WEIGHTS_ENV in message
    for name in HD_BET_WEIGHT_FILES:
        assert str(folder / name) in message
    assert "https://zenodo.org/records/14445620/files/release_v1.5.0.zip" in message
    assert "hd-bet -i" in message and "--hd_bet_weights" in message and "'deepbet' needs no download" in message


def test_hd_bet_weights_from_environment(tiny_hd_bet_weights, monkeypatch):
    monkeypatch.setenv(HD_BET_WEIGHTS_ENV, str(tiny_hd_bet_weights))
    assert hd_bet_weights_folder() == tiny_hd_bet_weights
    assert SkullStripper("hd-bet-v2").options["weights"] == str(tiny_hd_bet_weights)


def test_deepbet_strips_colin27_like_its_reference(colin27, colin27_deepbet):
    head, brain = colin27
    _, mask_file = colin27_deepbet
    dice = float(compute_dice(*[torch.as_tensor(np.asarray(nib.load(f).dataobj) > 0)[None, None] for f in (mask_file, brain)], include_background=True))
    assert dice >= 0.9, f"Dice {dice:.3f} of deepbet's mask against ch2bet"
    np.testing.assert_allclose(nib.load(mask_file).affine, nib.load(head).affine)


def test_training_config_reads_the_cached_mask(colin27, colin27_deepbet, count_backend_calls):
    """train.json with skull_strip_backend deepbet: the mask comes from the cache and zeroes the image outside it."""
    head, _ = colin27
    cache, mask_file = colin27_deepbet
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update({"skull_strip_backend": "deepbet", "skull_strip_cache": str(cache), "device": "cpu", "val_skull_strip": True})
    transforms = parser.get_parsed_content("validate#preprocessing").transforms
    names = [type(t).__name__ for t in transforms]
    data = {"image": str(head), "label": 3}
    for transform in transforms[: names.index("SkullStripd") + 1]:
        data = transform(data)
        if type(transform).__name__ == "BrainMaskd":
            assert data["brain_mask"].meta["filename_or_obj"] == str(mask_file)
            assert np.array_equal(data["brain_mask"][0].numpy(), np.asarray(nib.load(mask_file).dataobj, np.float32))
    assert not any(count_backend_calls.values()), count_backend_calls
    image, mask = data["image"], data["brain_mask"]
    assert image.shape == mask.shape and bool((mask > 0).any())
    assert not bool(image[mask == 0].any()) and bool(image[mask > 0].any())


def test_second_pass_over_a_datalist_calls_no_backend(tmp_path, tiny_hd_bet_weights, head_file, count_backend_calls):
    images = [head_file(f"head{i}.nii.gz", seed=i) for i in range(2)]
    datalist = write_datalist(tmp_path / "datalist.json", images)
    options = dict(backend="hd-bet-v2", cache_dir=tmp_path / "cache", hd_bet_weights=tiny_hd_bet_weights, device="cpu", progress=False)
    first = strip_datalist(datalist, **options)
    assert count_backend_calls["hd-bet-v2"] == 2 and first["stripped"] == 2 and first["cached"] == 0
    masks = {p: (tmp_path / "cache" / "hd-bet-v2" / p).read_bytes() for p in os.listdir(tmp_path / "cache" / "hd-bet-v2")}
    second = strip_datalist(datalist, **options)
    assert count_backend_calls["hd-bet-v2"] == 2, "the second pass ran the backend"
    assert second["stripped"] == 0 and second["cached"] == 2
    assert {p: (tmp_path / "cache" / "hd-bet-v2" / p).read_bytes() for p in os.listdir(tmp_path / "cache" / "hd-bet-v2")} == masks

    # The key is the content, not the name: a renamed copy is found in the cache.
    copy = tmp_path / "renamed.nii.gz"
    copy.write_bytes(images[0].read_bytes())
    transform = BrainMaskd("image", stripper=SkullStripper("hd-bet-v2", tmp_path / "cache", hd_bet_weights=tiny_hd_bet_weights))
    of_copy, of_original = (transform({"image": str(f)})["brain_mask"] for f in (copy, images[0]))
    assert of_copy.meta["filename_or_obj"] == of_original.meta["filename_or_obj"] and torch.equal(of_copy, of_original)
    assert count_backend_calls["hd-bet-v2"] == 2


def test_skullstrip_command_strips_training_split_in_parallel_and_names_bad_files(tmp_path, tiny_hd_bet_weights, head_file):
    good, test_only = head_file("good.nii.gz"), head_file("test.nii.gz", seed=5)
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b not a volume")
    datalist = write_datalist(tmp_path / "datalist.json", [good, broken], testing=[test_only])
    cache = tmp_path / "cache"
    command = [
        sys.executable, "-m", "sarf_bundle", "skullstrip", "--datalist", str(datalist), "--backend", "hd-bet-v2",
        "--hd_bet_weights", str(tiny_hd_bet_weights), "--cache_dir", str(cache), "--device", "cpu", "--workers", "2",
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert run.returncode != 0
    assert f"{broken}: ValueError: Image {broken} cannot be read as NIfTI" in run.stderr
    assert "failed for 1 of 2 volumes" in run.stderr
    assert len(list((cache / "hd-bet-v2").glob("*.nii.gz"))) == 1, "the good volume was not stripped, or the test one was"
    assert SkullStripper("hd-bet-v2", cache, hd_bet_weights=tiny_hd_bet_weights).cache_path(good).is_file()


def test_evaluation_and_inference_never_strip():
    """Even with a backend chosen, evaluate.json (test split) and inference.json have no stripping step."""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")])
    parser.update({"skull_strip_backend": "hd-bet-v2", "hd_bet_weights": "/nowhere"})
    names = [type(t).__name__ for t in parser.get_parsed_content("validate#preprocessing").transforms]
    assert "BrainMaskd" not in names and "SkullStripd" not in names and "LoadVolumed" in names
    inference = ConfigParser.load_config_file(CONFIGS / "inference.json")
    targets = [t["_target_"] for t in inference["preprocessing"]["transforms"]]
    assert not any("BrainMask" in t or "SkullStrip" in t or "MaskIntensity" in t for t in targets)
    train = ConfigParser()
    train.read_config(str(CONFIGS / "train.json"))
    names = [type(t).__name__ for t in train.get_parsed_content("validate#preprocessing").transforms]
    assert "SkullStripd" not in names  # validation is whole-head by default, as the volumes the model will meet
    train.update({"val_skull_strip": True})  # the paper's protocol validates on stripped volumes
    names = [type(t).__name__ for t in train.get_parsed_content("validate#preprocessing").transforms]
    assert names.index("BrainMaskd") < names.index("LoadVolumed") < names.index("SkullStripd")


def test_mask_backend_needs_the_datalist_mask(tmp_path):
    mask_file = tmp_path / "a_mask.nii.gz"
    mask = np.zeros((6, 7, 8), np.uint8)
    mask[2:4, 2:5, 3:6] = 1
    nib.save(nib.Nifti1Image(mask, np.diag([1.0, 1.2, 2.0, 1.0])), mask_file)
    loaded = BrainMaskd("image")({"image": "a.nii.gz", "brain_mask": str(mask_file)})["brain_mask"]
    assert isinstance(loaded, MetaTensor) and loaded.shape == (1, 6, 7, 8) and loaded.meta["filename_or_obj"] == str(mask_file)
    assert np.array_equal(loaded[0].numpy(), mask.astype(np.float32))
    with pytest.raises(ValueError, match=r"a.nii.gz has no 'brain_mask' file: skull-strip backend 'mask' needs"):
        BrainMaskd("image")({"image": "a.nii.gz"})


def test_bad_images_are_named(tmp_path):
    stripper = SkullStripper("deepbet", tmp_path / "cache")
    four_d = tmp_path / "dwi.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.float32), np.eye(4)), four_d)
    text = tmp_path / "notes.txt"
    text.write_text("no image")
    with pytest.raises(FileNotFoundError, match=f"Image {tmp_path / 'missing.nii.gz'} does not exist"):
        stripper(tmp_path / "missing.nii.gz")
    with pytest.raises(ValueError, match=rf"needs a 3D volume; {four_d} has shape \(4, 4, 4, 2\)"):
        stripper(four_d)
    with pytest.raises(ValueError, match=rf"reads NIfTI files \(.nii, .nii.gz\); got {text}"):
        stripper(text)
    with pytest.raises(TypeError, match=r"BrainMask needs the image file path, got MetaTensor: put it before LoadImage"):
        BrainMask(stripper)(MetaTensor(torch.zeros(1, 4, 4, 4)))


def test_dictionary_and_array_brain_masks_are_the_cached_mask(colin27, colin27_deepbet, count_backend_calls):
    """BrainMask and BrainMaskd, sharing one SkullStripper, give the same mask: the content of the cached file."""
    head, _ = colin27
    cache, mask_file = colin27_deepbet
    stripper = SkullStripper("deepbet", cache, device="cpu")
    array = BrainMask(stripper)(head)
    dictionary = BrainMaskd("image", mask_key="brain_mask", stripper=stripper)({"image": str(head)})["brain_mask"]
    assert not any(count_backend_calls.values()), count_backend_calls
    assert isinstance(array, MetaTensor) and torch.equal(array, dictionary)
    assert array.meta["filename_or_obj"] == dictionary.meta["filename_or_obj"] == str(mask_file)
    assert np.array_equal(array[0].numpy(), np.asarray(nib.load(mask_file).dataobj, np.float32))
    np.testing.assert_allclose(array.affine.numpy(), nib.load(head).affine, atol=1e-4)


BAD_ARGUMENTS = [
    (SkullStripper, {"backend": "mask"}, ValueError, "backend 'mask' computes nothing"),
    (SkullStripper, {"backend": "bet2"}, ValueError, r"backend must be one of \('mask', 'hd-bet-v1', 'hd-bet-v2', 'deepbet'\), got 'bet2'"),
    (BrainMaskd, {"keys": ["image", "t2"]}, ValueError, r"BrainMaskd takes one image key, got \('image', 't2'\)"),
    (strip_datalist, {"datalist": "d.json", "workers": 0}, ValueError, "workers must be a positive int, got 0"),
]


@pytest.mark.parametrize(("function", "kwargs", "error", "match"), BAD_ARGUMENTS)
def test_bad_argument(function, kwargs, error, match):
    with pytest.raises(error, match=match):
        function(**kwargs)


def test_missing_backend_package_says_what_to_install():
    with pytest.raises(ImportError, match=r"backend 'no-such-bet' needs the package no-such-bet, .*\[skullstrip\]"):
        skullstrip_backends.require_package("no_such_bet", "no-such-bet")


def test_skull_strip_applies_the_mask_it_is_given():
    image = MetaTensor(torch.arange(8.0).reshape(1, 2, 2, 2))
    mask = MetaTensor((torch.arange(8) % 2).reshape(1, 2, 2, 2).float())
    stripped = SkullStripd("image")({"image": image, "brain_mask": mask})["image"]
    assert torch.equal(stripped, image * mask)
