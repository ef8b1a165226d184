"""The MONAI Label app end to end: its environment, the real server, ``GET /info/`` and ``POST /infer`` over HTTP.

The label environment (``.venv-label`` in the repository) is made by ``python -m sarf_bundle.label_app.environment``
when it is missing or out of date (minutes), and reused otherwise.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from sarf_bundle import SEQUENCES
from sarf_bundle.bundle import BUNDLE_ROOT, load_inference_bundle, run_bundle, save_checkpoint
from sarf_bundle.data import load_datalist, volume_probabilities
from sarf_bundle.label_app.environment import environment_python
from sarf_bundle.networks import SaliencyResNet

LABEL_VENV = BUNDLE_ROOT / ".venv-label"
APP_DIR = BUNDLE_ROOT / "sarf_bundle" / "label_app"
MODEL = "sarf_test"
STARTUP_TIMEOUT_S = 120
ENVIRONMENT_TIMEOUT_S = 1800


def _tail(path: Path, lines: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.is_file() else "(no log)"


@pytest.fixture(scope="session")
def label_venv() -> Path:
    """The label environment, made by its own command when missing or out of date."""
    command = [sys.executable, "-m", "sarf_bundle.label_app.environment", "--venv", str(LABEL_VENV)]
    start = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=ENVIRONMENT_TIMEOUT_S, check=False)
    if result.returncode != 0:
        pytest.fail(f"`{' '.join(command)}` failed ({result.returncode}):\n{result.stdout[-5000:]}\n{result.stderr[-5000:]}")
    print(f"label environment ready in {time.monotonic() - start:.1f} s: {result.stdout.strip()}")
    return LABEL_VENV


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _classifiable_volume(datalist: Path, checkpoint: Path) -> Path:
    """The first volume of the datalist that the bundle's own preprocessing accepts (it rejects implausible headers)."""
    bundle = load_inference_bundle(checkpoint)
    problems = []
    for entry in load_datalist(datalist, "testing") + load_datalist(datalist, "training"):
        try:
            bundle.load(entry["image"])
        except ValueError as error:
            problems.append(str(error))
        else:
            return Path(entry["image"])
    pytest.fail("No simulated volume passes the bundle's preprocessing:\n" + "\n".join(problems))


def _request(url: str, method: str = "GET", timeout: float = 120) -> tuple[int, dict]:
    """Status and JSON body of an HTTP request; an HTTP error status is returned, not raised."""
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        body = error.read().decode(errors="replace")
        try:
            return error.code, json.loads(body)
        except json.JSONDecodeError:
            return error.code, {"body": body}


@pytest.fixture(scope="module")
def server(label_venv, simulated_dataset, tmp_path_factory):
    """``monailabel start_server`` on a free port, serving this repository's bundle with a random-weight checkpoint
    (``--conf model_path``) over one volume and a corrupt file."""
    work = tmp_path_factory.mktemp("label_server")
    torch.manual_seed(0)
    checkpoint = work / "model.pt"
    save_checkpoint(SaliencyResNet(), checkpoint, image_size=48)  # not the config's 96: the app must read it from the checkpoint

    studies = work / "studies"
    studies.mkdir()
    volume = _classifiable_volume(simulated_dataset, checkpoint)
    shutil.copy(volume, studies / volume.name)
    (studies / "corrupt.nii.gz").write_bytes(volume.read_bytes()[:2000])  # a truncated download

    port = _free_port()
    log = work / "server.log"
    bin_dir = environment_python(label_venv).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "VIRTUAL_ENV": str(label_venv)}
    command = [
        str(bin_dir / "monailabel"), "start_server", "--app", str(APP_DIR), "--studies", str(studies),
        "--conf", "models", MODEL, "--conf", "model_path", str(checkpoint), "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=work)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"The server exited with status {process.returncode}; its log:\n{_tail(log)}")
            try:
                if _request(f"{url}/info/", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"The server did not answer {url}/info/ within {STARTUP_TIMEOUT_S} s; its log:\n{_tail(log)}")
            time.sleep(0.5)
        yield {"url": url, "checkpoint": checkpoint, "volume": studies / volume.name, "log": log}
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_info_lists_the_bundle_as_a_classification_with_the_six_sequences(server):
    status, info = _request(f"{server['url']}/info/")
    assert status == 200
    model = info["models"][MODEL]
    assert model["type"] == "classification"
    assert model["labels"] == {name: index for index, name in enumerate(SEQUENCES)}
    assert info["labels"] == list(SEQUENCES)
    assert info["datastore"]["total"] == 2


def test_infer_gives_the_sequence_and_the_probabilities_of_the_bundle(server):
    image_id = server["volume"].name.removesuffix(".nii.gz")
    status, result = _request(f"{server['url']}/infer/{MODEL}?image={image_id}&output=json", method="POST")
    assert status == 200, f"{result}\n{_tail(server['log'])}"

    probabilities = result["probabilities"]
    assert list(probabilities) == list(SEQUENCES)
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert result["sequence"] == max(probabilities, key=probabilities.get)
    assert result["confidence"] == probabilities[result["sequence"]]
    assert result["prediction"] == [{"idx": i, "label": name, "score": probabilities[name]} for i, name in enumerate(SEQUENCES)]

    bundle = load_inference_bundle(server["checkpoint"])
    stack = bundle.load(server["volume"])
    with torch.no_grad():
        expected = volume_probabilities(bundle.network(stack[:, None].to(bundle.device)), stack.shape[0])[0]
    assert list(probabilities.values()) == pytest.approx(expected.tolist(), abs=1e-4)


def test_the_server_the_csv_and_the_python_api_agree(server, tmp_path):
    """The three interfaces report one decision (sarf_bundle.prediction.decide) for the same volume and model."""
    image_id = server["volume"].name.removesuffix(".nii.gz")
    status, answer = _request(f"{server['url']}/infer/{MODEL}?image={image_id}&output=json", method="POST")
    assert status == 200, answer
    out_csv = tmp_path / "predictions.csv"
    run_bundle(
        "run", ["inference.json"], ckpt_dir=str(server["checkpoint"].parent), dataset_dir=str(server["volume"].parent),
        output_csv=str(out_csv), image_size=48, num_workers=0,
    )  # fmt: skip
    rows = {Path(r["file"]).name: r for r in csv.DictReader(out_csv.open())}
    row = rows[server["volume"].name]
    api = load_inference_bundle(server["checkpoint"]).classify(server["volume"]).as_dict()
    keys = ("sequence", "status", "message", "bids_name", "header_sequence", "header_agrees")
    assert {k: answer[k] for k in keys} == {k: row[k] for k in keys} == {k: api[k] for k in keys}
    assert answer["confidence"] == pytest.approx(float(row["confidence"]), abs=1e-5) == pytest.approx(api["confidence"], abs=1e-5)
    assert answer["status"] == "uncertain" and "below the threshold 0.5" in answer["message"]  # random weights: not confident

    status, body = _request(f"{server['url']}/infer/{MODEL}?image=corrupt&output=json", method="POST")
    error = rows["corrupt.nii.gz"]
    assert status == 422 and error["status"] == "error" and error["message"] in body["detail"]
    assert load_inference_bundle(server["checkpoint"]).classify(server["volume"].parent / "corrupt.nii.gz").message == error["message"]


def test_unreadable_image_is_a_clear_error_and_the_server_keeps_serving(server):
    status, body = _request(f"{server['url']}/infer/{MODEL}?image=corrupt&output=json", method="POST")
    assert status == 422
    assert "corrupt.nii.gz: cannot be classified" in body["detail"]

    status, body = _request(f"{server['url']}/infer/{MODEL}?image=no_such_image&output=json", method="POST")
    assert status == 404
    assert "'no_such_image' is not in the datastore" in body["detail"]

    status, body = _request(f"{server['url']}/infer/no_such_model?image=corrupt&output=json", method="POST")
    assert status == 404
    assert "no_such_model" in body["detail"]

    image_id = server["volume"].name.removesuffix(".nii.gz")
    status, result = _request(f"{server['url']}/infer/{MODEL}?image={image_id}&output=json", method="POST")
    assert status == 200
    assert result["sequence"] in SEQUENCES
