"""The CPU demo: simulate data, train baseline and SaRF through the bundle configs, evaluate, infer, explain, report.

Everything runs through the same code and configs a user runs on a GPU, with small settings
(few subjects, coarser voxels, few epochs, small slices) so that it finishes on a laptop CPU.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from sklearn.metrics import roc_auc_score

from . import SEQUENCES
from .bundle import BUNDLE_ROOT, run_bundle
from .data import load_datalist
from .experiments import METHODS as EXPERIMENT_METHODS
from .explain import explain
from .faithfulness import faithfulness
from .handlers import read_prediction_csv
from .simulation.dataset import synthesize, synthesize_unknown

__all__ = ["METHODS", "confidence_report", "print_summary", "run_demo"]

METHODS = {name: EXPERIMENT_METHODS[name] for name in ("baseline", "sarf")}
"""The two methods the demo compares (paper, section 3.4)."""


def run_demo(
    out: str | Path = "demo",
    subjects: int = 24,
    epochs: int = 8,
    image_size: int = 96,
    voxel_scale: float = 2.0,
    learning_rate: float = 1e-3,
    workers: int = 2,
    seed: int = 0,
    road_volumes: int = 18,
    unknown_volumes: int = 2,
) -> str:
    """Run the whole demo, print its report and return the path of ``<out>/summary.json``.

    Args:
        out: output folder.
        subjects: simulated subjects (each with six sequences); a quarter form the test split.
        epochs: training epochs per method.
        image_size: slice size in pixels.
        voxel_scale: simulator voxel-size factor (2 gives coarser, 8x smaller volumes).
        learning_rate: peak learning rate of the AdamW recipe of configs/train.json.
        workers: parallel processes for simulation and data loading.
        seed: simulation and training seed.
        road_volumes: test volumes of the ROAD faithfulness test (the first ones of the split: 18 are 3 subjects).
        unknown_volumes: proton-density volumes (a sequence outside the six) added to the inference folder.
    """
    out = Path(out).resolve()
    start = time.time()
    timings: dict[str, float] = {}
    datalist = synthesize(out / "data", subjects=subjects, seed=seed, workers=workers, test_fraction=0.25, voxel_scale=voxel_scale)
    timings["simulate"] = time.time() - start
    common = dict(dataset_dir=str(out / "data"), epochs=epochs, image_size=image_size, learning_rate=learning_rate, num_workers=workers, seed=seed)
    results = {}
    for method, weights in METHODS.items():
        root = out / method
        tick = time.time()
        run_bundle("training", ["train.json"], bundle_root=str(root), **common, **weights)
        timings[f"train_{method}"] = time.time() - tick
        tick = time.time()
        run_bundle("run", ["train.json", "calibrate.json"], bundle_root=str(root), **common, **weights)
        timings[f"calibrate_{method}"] = time.time() - tick
        tick = time.time()
        run_bundle("run", ["train.json", "evaluate.json"], bundle_root=str(root), **common, **weights)
        timings[f"evaluate_{method}"] = time.time() - tick
        results[method] = json.loads((root / "eval" / "metrics.json").read_text())
    inputs = out / "inference_input"
    inputs.mkdir(exist_ok=True)
    for entry in json.loads(Path(datalist).read_text())["testing"]:
        shutil.copy(out / "data" / entry["image"], inputs / Path(entry["image"]).name)
    (inputs / "corrupt.nii.gz").write_bytes(b"not a NIfTI file")
    tick = time.time()
    synthesize_unknown(inputs, subjects=unknown_volumes, seed=seed + 1000, voxel_scale=voxel_scale)
    timings["simulate_unknown"] = time.time() - tick
    (out / "sarf" / "eval" / "sequence_predictions.csv").unlink(missing_ok=True)
    tick = time.time()
    run_bundle(
        "run", ["inference.json"], bundle_root=str(out / "sarf"), dataset_dir=str(inputs),
        output_csv=str(out / "sarf" / "eval" / "sequence_predictions.csv"), image_size=image_size, num_workers=workers,
    )
    timings["inference"] = time.time() - tick
    confidence = confidence_report(read_prediction_csv(out / "sarf" / "eval" / "sequence_predictions.csv"))
    models, names = [str(out / m / "models" / "model.pt") for m in METHODS], list(METHODS)
    tick = time.time()
    example = next(e for e in load_datalist(datalist, "testing") if e["sequence"] == "T1Gd")["image"]
    explained = explain(example, model=models, names=names, out=str(out / "explanations"), image_size=image_size)
    timings["explain"] = time.time() - tick
    tick = time.time()
    road = json.loads(Path(faithfulness(str(datalist), model=models, names=names, out=str(out / "faithfulness"), limit=road_volumes, image_size=image_size)).read_text())
    timings["faithfulness"] = time.time() - tick
    timings["total"] = time.time() - start
    summary = {
        "settings": {"subjects": subjects, "epochs": epochs, "image_size": image_size, "voxel_scale": voxel_scale, "learning_rate": learning_rate, "seed": seed},
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "test": {
            method: {
                "accuracy": r["accuracy"],
                "mean_auc": r["multiclass"]["mean"]["auc"],
                "mean_f1": r["multiclass"]["mean"]["f1"],
                "ovr_threshold_mean_accuracy": r["ovr_threshold"]["mean"]["accuracy"],
                "ovr_threshold_mean_f1": r["ovr_threshold"]["mean"]["f1"],
                "ece": r["ece"],
            }
            for method, r in results.items()
        },
        "confidence": confidence,
        "road_f1_decrease": {
            "levels": road["levels"],
            "volumes": road["models"][names[0]]["n_volumes"],
            **{method: [round(v, 3) for v in road["models"][method]["f1_decrease"][1:]] for method in METHODS},
        },
        "outputs": {
            "datalist": str(datalist),
            **{f"{m}_model": str(out / m / "models" / "model.pt") for m in METHODS},
            **{f"{m}_metrics": str(out / m / "eval" / "metrics.json") for m in METHODS},
            "inference_csv": str(out / "sarf" / "eval" / "sequence_predictions.csv"),
            "relevance_maps": explained["figure"],
            "road_curves": str(out / "faithfulness" / "road.png"),
            "tensorboard": str(out / "sarf" / "eval" / "tensorboard"),
        },
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print_summary(summary)
    return str(out / "summary.json")


def confidence_report(rows: list[dict[str, str]], threshold: float | None = None) -> dict:
    """How the inference CSV's confidence and status treat right, wrong and unknown-sequence volumes.

    The truth comes from the simulator's file names (``sub-XXXX_<sequence>.nii.gz``; ``unknown-XX_PD`` is a
    sequence outside the six classes). ``threshold`` defaults to the one the statuses were made with.
    """
    scored = [r for r in rows if r["status"] != "error"]
    truth = [Path(r["file"]).name.removesuffix(".nii.gz").split("_")[-1] for r in scored]
    known = [(r, t) for r, t in zip(scored, truth) if t in SEQUENCES]
    right = [float(r["confidence"]) for r, t in known if r["sequence"] == t]
    wrong = [float(r["confidence"]) for r, t in known if r["sequence"] != t]
    unknown = [r for r, t in zip(scored, truth) if t not in SEQUENCES]
    uncertain = lambda group: sum(r["status"] == "uncertain" for r in group)  # noqa: E731
    auroc = roc_auc_score([1] * len(right) + [0] * len(wrong), right + wrong) if right and wrong else float("nan")
    return {
        "threshold": threshold if threshold is not None else load_inference_threshold(),
        "auroc_right_vs_wrong": float(auroc),
        "n_right": len(right),
        "n_wrong": len(wrong),
        "n_unknown": len(unknown),
        "n_error": len(rows) - len(scored),
        "uncertain_right": uncertain([r for r, t in known if r["sequence"] == t]),
        "uncertain_wrong": uncertain([r for r, t in known if r["sequence"] != t]),
        "uncertain_unknown": uncertain(unknown),
        "mean_confidence": {"right": _mean(right), "wrong": _mean(wrong), "unknown": _mean([float(r["confidence"]) for r in unknown])},
    }


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


def load_inference_threshold() -> float:
    """The ``confidence_threshold`` of ``configs/inference.json``."""
    return float(json.loads((BUNDLE_ROOT / "configs" / "inference.json").read_text())["confidence_threshold"])


def print_summary(summary: dict) -> None:
    """Print the demo's test metrics, timings and output paths."""
    print("\nTest set (whole-head volumes, never skull-stripped), volume level:")
    print(f"{'method':10s} {'accuracy':>9s} {'mean AUC':>9s} {'mean F1':>8s} {'OvR@0.5 acc':>12s} {'OvR@0.5 F1':>11s} {'ECE':>6s}")
    for method, m in summary["test"].items():
        print(
            f"{method:10s} {m['accuracy']:9.3f} {m['mean_auc']:9.3f} {m['mean_f1']:8.3f} "
            f"{m['ovr_threshold_mean_accuracy']:12.3f} {m['ovr_threshold_mean_f1']:11.3f} {m['ece']:6.3f}"
        )
    c = summary["confidence"]
    print(
        f"\nInference (SaRF, temperature-scaled, threshold {c['threshold']:g}): confidence separates right from wrong test "
        f"volumes with AUROC {c['auroc_right_vs_wrong']:.3f}; uncertain: {c['uncertain_right']} of {c['n_right']} right, "
        f"{c['uncertain_wrong']} of {c['n_wrong']} wrong, {c['uncertain_unknown']} of {c['n_unknown']} unknown-sequence (PD) volumes; "
        f"{c['n_error']} error row(s)."
    )
    road = summary["road_f1_decrease"]
    print(f"\nROAD faithfulness, F1 decrease (higher is better) on {road['volumes']} test volumes, at % most relevant pixels removed:")
    print(f"{'method':10s} " + " ".join(f"{level:>6g}" for level in road["levels"]))
    for method in summary["test"]:
        print(f"{method:10s} " + " ".join(f"{v:6.3f}" for v in road[method]))
    print("\nSeconds:", ", ".join(f"{k} {v}" for k, v in summary["seconds"].items()))
    print("\nWritten:")
    for name, path in summary["outputs"].items():
        print(f"  {name:18s} {path}")
