"""The model that ships with the bundle: ``python -m sarf_bundle pretrain`` makes ``models/model.pt`` again.

One command, from nothing: it simulates the training data (80 subjects, seed 2026, clinical resolution), trains
SaRF with ``configs/train.json`` as it stands (validation on fold 0, whole head), fits the temperature on the
same validation volumes (``configs/calibrate.json``), evaluates on the data's held-out test subjects (whole
head, ``configs/evaluate.json``), and exports the weights in half precision with the preprocessing they were
trained with. Rerun with the same torch thread count on the same CPU type, it gives the same weights.
Every step resumes: existing data is reused, an interrupted training continues from its last epoch.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch

from .bundle import BUNDLE_ROOT, PreprocessingSettings, config_value, run_bundle
from .files import atomic_torch_save, atomic_write_bytes, atomic_write_text
from .simulation.dataset import synthesize

__all__ = ["DATA", "export_model", "pretrain"]

DATA = {"subjects": 80, "seed": 2026, "test_fraction": 0.25, "voxel_scale": 1.0}
"""The simulated data of the shipped model (``synth`` arguments)."""


def export_model(checkpoint: str | Path, out: str | Path) -> str:
    """Write a training checkpoint's model and preprocessing record to ``out``, convolution kernels in half precision.

    The convolution kernels are all but 0.1 % of ResNet18's weights: in half precision the file takes 22 MB instead
    of 45 MB. Batch-norm parameters and statistics and the final linear layer, tiny and the most sensitive, stay
    float32. The network computes in float32 as before, from the rounded kernels. The file holds plain tensors,
    numbers and strings only (``weights_only=True`` loads it).

    Args:
        checkpoint: a ``model.pt`` written by ``configs/train.json`` (``{"model": ..., "preprocessing": ...}``).
        out: the file to write (atomically).

    Returns:
        The SHA-256 of the written file.

    Raises:
        ValueError: when ``checkpoint`` does not hold a model and its preprocessing record.
    """
    stored = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if not isinstance(stored, dict) or not {"model", "preprocessing"} <= set(stored):
        raise ValueError(f"{checkpoint}: expected a checkpoint with 'model' and 'preprocessing' entries, as configs/train.json writes.")
    model = {k: v.half() if v.is_floating_point() and v.ndim == 4 else v for k, v in stored["model"].items()}
    return hashlib.sha256(atomic_torch_save({"model": model, "preprocessing": stored["preprocessing"]}, out)).hexdigest()


def pretrain(out: str | Path = "runs/pretrain", workers: int = 2, export: bool = True) -> str:
    """Simulate, train, calibrate, evaluate and export the bundle's shipped model; return the path of its summary.

    Args:
        out: work folder: ``data/`` (the simulated volumes), ``models/`` (training checkpoints, calibration),
            ``eval/`` (logs, TensorBoard, test metrics), ``pretrain.json`` (the summary).
        workers: parallel processes for simulation and data loading.
        export: copy the model (:func:`export_model`) and its calibration to the bundle's ``models/`` folder.
    """
    out = Path(out).resolve()
    data = out / "data"
    timings: dict[str, float] = {}
    tick = time.time()
    datalist = data / "datalist.json"
    if datalist.is_file() and json.loads(datalist.read_text()).get("seed") == DATA["seed"]:
        print(f"Reusing the simulated data in {data}")
    else:
        datalist = synthesize(data, workers=workers, **DATA)
    timings["simulate"] = time.time() - tick
    common = {"bundle_root": str(out), "dataset_dir": str(data), "num_workers": workers}
    tick = time.time()
    run_bundle("training", ["train.json"], resume=True, **common)
    timings["train"] = time.time() - tick
    tick = time.time()
    run_bundle("run", ["train.json", "calibrate.json"], **common)
    run_bundle("run", ["train.json", "evaluate.json"], **common)
    timings["calibrate_evaluate"] = time.time() - tick
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    summary = {
        "data": {**DATA, "datalist": str(datalist)},
        "epochs": config_value("train.json", "epochs"),
        "preprocessing": PreprocessingSettings.read(out / "models" / "model.pt"),
        "torch_threads": torch.get_num_threads(),
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "test_whole_head": {"accuracy": metrics["accuracy"], "ece": metrics["ece"]},
    }
    if export:
        models = BUNDLE_ROOT / "models"
        summary["sha256"] = export_model(out / "models" / "model.pt", models / "model.pt")
        atomic_write_bytes(models / "calibration.json", (out / "models" / "calibration.json").read_bytes())
        run_bundle("run", ["train.json", "evaluate.json"], ckpt_dir=str(models), output_dir=str(out / "eval_exported"), **common)
        exported = json.loads((out / "eval_exported" / "metrics.json").read_text())
        summary["test_whole_head_exported"] = {"accuracy": exported["accuracy"], "ece": exported["ece"]}
        summary["exported"] = [str(models / "model.pt"), str(models / "calibration.json")]
    atomic_write_text(out / "pretrain.json", json.dumps(summary, indent=1))
    print(f"\nTest split of {datalist} (whole head): accuracy {metrics['accuracy']:.4f}, ECE {metrics['ece']:.4f}")
    if export:
        e = summary["test_whole_head_exported"]
        print(f"Exported (half-precision kernels): accuracy {e['accuracy']:.4f}, ECE {e['ece']:.4f}; SHA-256 {summary['sha256']}")
        for path in summary["exported"]:
            print(f"Written: {path}")
    print(f"Summary: {out / 'pretrain.json'}")
    return str(out / "pretrain.json")
