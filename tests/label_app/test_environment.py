"""The label environment's checks, without installing anything."""

from __future__ import annotations

import json

import pytest

from sarf_bundle.label_app import environment
from sarf_bundle.label_app.environment import (
    LabelEnvironmentError,
    check_environment,
    create_environment,
)


def _fake_venv(path, specification):
    """A folder that looks like a finished label environment, with the given recorded specification.

    Its ``python`` fails as an interpreter without MONAI Label would.
    """
    python = environment.environment_python(path)
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'monailabel'\" >&2\nexit 1\n")
    python.chmod(0o755)
    (path / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (path / environment.MARKER).write_text(json.dumps({"specification": specification}))
    return path


def test_missing_environment_is_reported(tmp_path):
    with pytest.raises(LabelEnvironmentError, match="is not a virtual environment"):
        check_environment(tmp_path / "nothing")


def test_unfinished_environment_is_reported(tmp_path):
    venv = _fake_venv(tmp_path / "venv", {})
    (venv / environment.MARKER).unlink()
    with pytest.raises(LabelEnvironmentError, match="its making did not finish"):
        check_environment(venv)


def test_environment_made_for_other_requirements_is_reported(tmp_path):
    specification = environment._specification("2.13.0")
    venv = _fake_venv(tmp_path / "venv", {**specification, "torch": "torch==2.0.0"})
    with pytest.raises(LabelEnvironmentError, match=r"other requirements \(changed: torch\)"):
        check_environment(venv, "2.13.0")


def test_unreadable_record_is_reported(tmp_path):
    venv = _fake_venv(tmp_path / "venv", {})
    (venv / environment.MARKER).write_text("{truncated")
    with pytest.raises(LabelEnvironmentError, match="is not a record of this command"):
        check_environment(venv)


def test_current_environment_whose_modules_fail_is_reported_not_rebuilt(tmp_path, monkeypatch):
    venv = _fake_venv(tmp_path / "venv", environment._specification("2.13.0"))

    def create(*args, **kwargs):
        raise AssertionError("a current environment was made again")

    monkeypatch.setattr(environment, "create_environment", create)
    with pytest.raises(LabelEnvironmentError, match="do not load there") as raised:
        environment.ensure_environment(venv, "2.13.0", log=lambda message: None)
    assert "No module named 'monailabel'" in str(raised.value)
    assert not isinstance(raised.value, environment.OutdatedEnvironmentError)


def test_outdated_environment_is_made_again(tmp_path, monkeypatch):
    venv = _fake_venv(tmp_path / "venv", {})
    made = []
    monkeypatch.setattr(environment, "create_environment", lambda venv, torch_version, log: made.append(venv) or {"torch": torch_version})
    assert environment.ensure_environment(venv, "2.13.0", log=lambda message: None) == {"torch": "2.13.0"}
    assert made == [venv]


def test_a_folder_that_is_not_a_venv_is_never_cleared(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(LabelEnvironmentError, match="is not a virtual environment; remove it"):
        create_environment(tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_check_command_fails_on_a_missing_environment(tmp_path, capsys):
    assert environment.main(["--check", "--venv", str(tmp_path / "nothing")]) == 1
    assert "is not a virtual environment" in capsys.readouterr().err
