"""The package's one way to read a config, :func:`sarf_bundle.bundle.read_config`, reads what MONAI's ``ConfigParser`` reads."""

from __future__ import annotations

import json
import shutil

import pytest
from monai.bundle import ConfigParser

from sarf_bundle.bundle import BUNDLE_ROOT, bundle_version, config_content, config_value, read_config

CONFIGS = BUNDLE_ROOT / "configs"


def _monai(*names: str, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / n) for n in names])
    parser.update(overrides)
    return parser


@pytest.mark.parametrize("names", [("train.json",), ("inference.json",), ("train.json", "evaluate.json"), ("train.json", "calibrate.json"), ("metadata.json",)])
def test_read_config_reads_the_bundle_configs_as_monai_does(names):
    assert read_config(*names).get() == _monai(*names).get()


def test_overrides_and_paths_give_monais_values():
    overrides = {"epochs": 3, "image_size": 64, "train#dataloader#batch_size": 2}
    ours, theirs = read_config("train.json", "evaluate.json", **overrides), _monai("train.json", "evaluate.json", **overrides)
    assert ours.get() == theirs.get()
    assert ours["epochs"] == 3 and ours["train#dataloader#batch_size"] == 2
    assert ours.get_parsed_content("image_size") == theirs.get_parsed_content("image_size") == 64
    assert read_config(CONFIGS / "inference.json", image_size=64).get() == _monai("inference.json", image_size=64).get()
    assert read_config(str(CONFIGS / "inference.json")).get() == _monai("inference.json").get()


def test_config_content_is_one_files_own_keys():
    for name in ("train.json", "evaluate.json", "inference.json", "metadata.json"):
        assert config_content(name) == ConfigParser.load_config_file(CONFIGS / name) == json.loads((CONFIGS / name).read_text())
    assert "validate#dataset#data" in config_content("evaluate.json")  # an override file: its ids are not expanded


def test_config_value_and_bundle_version_are_the_files_values():
    for name in ("train.json", "inference.json", "metadata.json"):
        content = json.loads((CONFIGS / name).read_text())
        for key in ("epochs", "learning_rate", "confidence_threshold", "version", "task"):
            if key in content:
                assert config_value(name, key) == content[key]
    assert bundle_version() == json.loads((CONFIGS / "metadata.json").read_text())["version"]


def test_a_config_of_another_folder_and_missing_files(tmp_path):
    other = tmp_path / "configs"
    other.mkdir()
    shutil.copy(CONFIGS / "metadata.json", other / "metadata.json")
    (other / "metadata.json").write_text(json.dumps({**json.loads((CONFIGS / "metadata.json").read_text()), "task": "elsewhere"}))
    assert read_config(other / "metadata.json")["task"] == "elsewhere"
    assert config_value(other / "metadata.json", "task") == config_content(str(other / "metadata.json"))["task"] == "elsewhere"
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        read_config(tmp_path / "nothing.json")
    with pytest.raises(FileNotFoundError, match=r"configs/nothing.json does not exist.*pip install -e \."):
        read_config("nothing.json")
