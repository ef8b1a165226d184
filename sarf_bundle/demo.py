"""The demo: classify a folder of brain MRI with the model that ships with the bundle, or train one.

``python -m sarf_bundle demo`` simulates a small whole-head folder (the six sequences of a few new subjects, two
of them as DICOM series, a sequence outside the six, a corrupt file, and Colin27 where Debian's ``mricron-data`` is
installed), classifies it with ``models/model.pt`` through ``configs/inference.json``, explains one volume, and
prints the results. ``--train`` runs the training demo instead: simulate data, train baseline and SaRF through the
bundle configs with small settings (few subjects, coarser voxels, few epochs), evaluate, infer, explain and run
the ROAD test.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from sklearn.metrics import roc_auc_score

from . import SEQUENCES
from .bundle import BUNDLE_ROOT, checkpoint_settings, config_value, run_bundle
from .data import load_datalist
from .experiments import METHODS as EXPERIMENT_METHODS
from .explain import explain
from .files import atomic_copy, atomic_folder, atomic_write_bytes, atomic_write_text
from .faithfulness import faithfulness
from .handlers import read_prediction_csv
from .simulation.dataset import synthesize, synthesize_unknown

__all__ = ["COLIN27", "METHODS", "classify_demo", "confidence_report", "print_summary", "run_demo", "true_sequence"]

METHODS = {name: EXPERIMENT_METHODS[name] for name in ("baseline", "sarf")}
"""The two methods the training demo compares (paper, section 3.4)."""

COLIN27 = Path("/usr/share/mricron/templates")
"""Where Debian's ``mricron-data`` puts Colin27: ``ch2`` (whole-head T1), ``ch2bet`` and ``ch2better`` (brain only)."""

DICOM_SERIES = {"T2": "t2_tse_tra", "DWI": "ep2d_diff_b1000_tra"}
"""The sequences of the first subject that the demo writes as DICOM series, with their SeriesDescription."""


def run_demo(
    out: str | Path = "demo",
    train: bool = False,
    subjects: int | None = None,
    epochs: int = 8,
    image_size: int = 96,
    voxel_scale: float | None = None,
    learning_rate: float = 1e-3,
    workers: int = 2,
    seed: int = 0,
    road_volumes: int = 18,
    unknown_volumes: int = 2,
) -> str:
    """Run the demo, print its report and return the path of ``<out>/summary.json``.

    Args:
        out: output folder.
        train: run the training demo (baseline and SaRF trained here) instead of classifying with the shipped model.
        subjects: simulated subjects, each with the six sequences (default 2; 24 with ``--train``, a quarter of them
            the test split).
        epochs: training epochs per method (``--train``).
        image_size: slice size in pixels (``--train``; the shipped model brings its own).
        voxel_scale: simulator voxel-size factor (default 1, clinical resolution; 2 with ``--train``: coarser,
            8x smaller volumes).
        learning_rate: peak learning rate of the AdamW recipe of configs/train.json (``--train``).
        workers: parallel processes for simulation and data loading.
        seed: simulation (and training) seed.
        road_volumes: test volumes of the ROAD faithfulness test (``--train``; 18 are 3 subjects).
        unknown_volumes: proton-density volumes (a sequence outside the six) added to the inference folder.
    """
    if not train:
        return classify_demo(out, subjects=subjects or 2, voxel_scale=voxel_scale or 1.0, workers=workers, seed=seed, unknown_volumes=unknown_volumes)
    subjects, voxel_scale = subjects or 24, voxel_scale or 2.0
    out = Path(out).resolve()
    start = time.time()
    timings: dict[str, float] = {}
    with _timed(timings, "simulate"):
        datalist = synthesize(out / "data", subjects=subjects, seed=seed, workers=workers, test_fraction=0.25, voxel_scale=voxel_scale)
    common = dict(dataset_dir=str(out / "data"), epochs=epochs, image_size=image_size, learning_rate=learning_rate, num_workers=workers, seed=seed)
    results = _train_methods(out, timings, **common)
    confidence = _classify_test_folder(out, datalist, timings, image_size, workers, seed, voxel_scale, unknown_volumes)
    explained, road = _explain_and_road(out, datalist, timings, image_size, road_volumes)
    timings["total"] = time.time() - start
    settings = {"subjects": subjects, "epochs": epochs, "image_size": image_size, "voxel_scale": voxel_scale, "learning_rate": learning_rate, "seed": seed}
    summary = _training_summary(out, datalist, settings, timings, results, confidence, explained, road)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    print_summary(summary)
    return str(out / "summary.json")


@contextlib.contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    """Record the wall time of the block, in seconds, as ``timings[name]``."""
    tick = time.time()
    yield
    timings[name] = time.time() - tick


def _train_methods(out: Path, timings: dict[str, float], **common) -> dict[str, dict]:
    """Train, calibrate and evaluate each of :data:`METHODS` in ``<out>/<method>``; the test metrics per method."""
    steps = {"train": ("training", ["train.json"]), "calibrate": ("run", ["train.json", "calibrate.json"]), "evaluate": ("run", ["train.json", "evaluate.json"])}
    results = {}
    for method, weights in METHODS.items():
        root = out / method
        for step, (run_id, configs) in steps.items():
            with _timed(timings, f"{step}_{method}"):
                run_bundle(run_id, configs, bundle_root=str(root), **common, **weights)
        results[method] = json.loads((root / "eval" / "metrics.json").read_text())
    return results


def _add_corrupt_file(inputs: Path) -> None:
    """The demo's unreadable input, ``corrupt.nii.gz``."""
    atomic_write_bytes(inputs / "corrupt.nii.gz", b"not a NIfTI file")


def _classify_test_folder(
    out: Path, datalist: Path, timings: dict[str, float], image_size: int, workers: int, seed: int, voxel_scale: float, unknown_volumes: int
) -> dict:
    """Classify the test volumes, a corrupt file and proton-density volumes (``<out>/inference_input``) with the
    trained SaRF model through ``configs/inference.json``; the :func:`confidence_report` of its CSV."""
    inputs = out / "inference_input"
    inputs.mkdir(exist_ok=True)
    for entry in load_datalist(datalist, "testing"):
        atomic_copy(entry["image"], inputs / Path(entry["image"]).name)
    _add_corrupt_file(inputs)
    with _timed(timings, "simulate_unknown"):
        synthesize_unknown(inputs, subjects=unknown_volumes, seed=seed + 1000, voxel_scale=voxel_scale)
    output_csv = out / "sarf" / "eval" / "sequence_predictions.csv"
    output_csv.unlink(missing_ok=True)
    with _timed(timings, "inference"):
        run_bundle(
            "run", ["inference.json"], bundle_root=str(out / "sarf"), dataset_dir=str(inputs),
            output_csv=str(output_csv), image_size=image_size, num_workers=workers,
        )  # fmt: skip
    return confidence_report(read_prediction_csv(output_csv))


def _explain_and_road(out: Path, datalist: Path, timings: dict[str, float], image_size: int, road_volumes: int) -> tuple[dict[str, str], dict]:
    """Relevance maps of a test T1Gd volume and the ROAD test, for every trained method; the paths of the maps and
    the content of ``road.json``."""
    models, names = [str(out / m / "models" / "model.pt") for m in METHODS], list(METHODS)
    with _timed(timings, "explain"):
        example = next(e for e in load_datalist(datalist, "testing") if e["sequence"] == "T1Gd")["image"]
        explained = explain(example, model=models, names=names, out=str(out / "explanations"), image_size=image_size)
    with _timed(timings, "faithfulness"):
        road_file = faithfulness(str(datalist), model=models, names=names, out=str(out / "faithfulness"), limit=road_volumes, image_size=image_size)
        road = json.loads(Path(road_file).read_text())
    return explained, road


def _training_summary(
    out: Path, datalist: Path, settings: dict, timings: dict[str, float], results: dict[str, dict], confidence: dict, explained: dict[str, str], road: dict
) -> dict:
    """The training demo's ``summary.json``: settings, seconds, test metrics, confidence, ROAD and output paths."""
    names = list(METHODS)
    return {
        "settings": settings,
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


def true_sequence(file: str) -> str | None:
    """The sequence a demo input's name gives: ``sub-0001_T2.nii.gz``, ``dicom/sub-0001_DWI/<uid>`` or
    ``colin27-ch2_T1.nii.gz`` (the last ``_`` word of the file or of a folder), ``PD`` for ``unknown-00_PD``; None
    for a name without one (``corrupt.nii.gz``)."""
    for part in reversed(Path(file).parts):
        word = part.removesuffix(".gz").removesuffix(".nii").split("_")[-1]
        if word in SEQUENCES or word == "PD":
            return word
    return None


def classify_demo(out: str | Path = "demo", subjects: int = 2, voxel_scale: float = 1.0, workers: int = 2, seed: int = 0, unknown_volumes: int = 2) -> str:
    """Simulate a whole-head folder, classify it with the shipped model, explain one volume; return the summary's path.

    The folder (``<out>/inputs``): the six sequences of ``subjects`` new subjects (NIfTI, the first subject's T2 and
    DWI as DICOM series instead), ``unknown_volumes`` proton-density volumes (outside the six classes), a corrupt
    file, and Colin27's ``ch2``, ``ch2bet`` and ``ch2better`` (T1) where ``mricron-data`` is installed. Nothing is
    skull-stripped. A run in an existing folder classifies only what the CSV does not hold yet.
    """
    model = BUNDLE_ROOT / "models" / "model.pt"
    if not model.is_file():
        raise FileNotFoundError(f"{model} does not exist: make it with `python -m sarf_bundle pretrain`, or run `demo --train`.")
    out = Path(out).resolve()
    inputs = out / "inputs"
    timings: dict[str, float] = {}
    start = time.time()
    with _timed(timings, "simulate"):
        _write_demo_inputs(out, inputs, subjects, voxel_scale, workers, seed, unknown_volumes)
    output_csv = out / "sequence_predictions.csv"
    with _timed(timings, "classify"):
        run_bundle(
            "run", ["inference.json"], bundle_root=str(out), ckpt_dir=str(model.parent), dataset_dir=str(inputs), output_csv=str(output_csv),
            num_workers=workers, **checkpoint_settings(model),
        )
    rows = read_prediction_csv(output_csv)
    example = sorted(inputs.glob("*_T1.nii.gz"))[0]
    with _timed(timings, "explain"):
        explained = explain(str(example), model=str(model), names=["SaRF"], out=str(out / "explanations"))
    timings["total"] = time.time() - start
    known = [r for r in rows if r["status"] != "error" and true_sequence(r["file"]) in SEQUENCES]
    summary = {
        "model": str(model),
        "inputs": str(inputs),
        "n_inputs": len(rows),
        "accuracy": sum(r["sequence"] == true_sequence(r["file"]) for r in known) / max(len(known), 1),
        "n_classified_known": len(known),
        "statuses": dict(Counter(r["status"] for r in rows)),
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "outputs": {"predictions_csv": str(output_csv), "relevance_maps": explained["figure"]},
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    _print_classified(rows, inputs, summary)
    print(f"Predictions: {output_csv}\nRelevance maps of {example.name}: {explained['figure']}\nSummary: {out / 'summary.json'}")
    return str(out / "summary.json")


def _write_demo_inputs(out: Path, inputs: Path, subjects: int, voxel_scale: float, workers: int, seed: int, unknown_volumes: int) -> None:
    """Fill the demo's input folder (see :func:`classify_demo`); what is there already is kept."""
    import nibabel as nib
    from pydicom.uid import generate_uid

    from .simulation.dicom_writer import protocol_header, write_dicom_series

    if not (out / "data" / "datalist.json").is_file():
        synthesize(out / "data", subjects=subjects, seed=seed, workers=workers, test_fraction=0.5, folds=1, voxel_scale=voxel_scale)
    inputs.mkdir(parents=True, exist_ok=True)
    datalist = json.loads((out / "data" / "datalist.json").read_text())
    first = min(e["image"] for e in datalist["training"] + datalist["testing"]).split("_")[0]
    for entry in datalist["training"] + datalist["testing"]:
        source = out / "data" / entry["image"]
        as_dicom = entry["image"].startswith(first) and entry["sequence"] in DICOM_SERIES
        target = inputs / "dicom" / entry["image"].removesuffix(".nii.gz") if as_dicom else inputs / entry["image"]
        if target.exists():
            continue
        if not as_dicom:
            atomic_copy(source, target)
            continue
        image = nib.load(source)
        header = {
            **protocol_header(entry["acquisition"]),
            "SeriesDescription": DICOM_SERIES[entry["sequence"]],
            "PatientID": first,
            "StudyInstanceUID": generate_uid(entropy_srcs=[str(seed), first]),  # one study, as the series share a subject
        }
        uid = generate_uid(entropy_srcs=[str(seed), entry["image"]])  # the same series again when the demo reruns
        number = list(DICOM_SERIES).index(entry["sequence"]) + 1
        with atomic_folder(target, staging=out / ".partial") as folder:  # a series appears whole, or not at all
            write_dicom_series(np.asarray(image.dataobj, dtype=np.float32), image.affine, folder, header, series_number=number, series_uid=uid)
    if not list(inputs.glob("unknown-*_PD.nii.gz")):
        synthesize_unknown(inputs, subjects=unknown_volumes, seed=seed + 1000, voxel_scale=voxel_scale)
    _add_corrupt_file(inputs)
    for name in ("ch2", "ch2bet", "ch2better"):
        if (COLIN27 / f"{name}.nii.gz").is_file() and not (inputs / f"colin27-{name}_T1.nii.gz").exists():
            atomic_copy(COLIN27 / f"{name}.nii.gz", inputs / f"colin27-{name}_T1.nii.gz")


def _print_classified(rows: list[dict[str, str]], inputs: Path, summary: dict) -> None:
    """The demo's table: each input with its true and predicted sequence, confidence and status; then the accuracy."""
    print(f"\n{'input':52s} {'truth':6s} {'predicted':9s} {'conf.':>5s}  status")
    for r in rows:
        truth = true_sequence(r["file"]) or "-"
        mark = "" if truth not in SEQUENCES or r["status"] == "error" else (" ok" if r["sequence"] == truth else " WRONG")
        name = str(Path(r["file"]).relative_to(inputs)) if Path(r["file"]).is_relative_to(inputs) else r["file"]
        name = name if len(name) <= 52 else name[:49] + "..."  # a DICOM series: its folder and the start of its uid
        detail = r["status"] + (f" ({r['message']})" if r["status"] == "error" else "")
        print(f"{name:52s} {truth:6s} {r['sequence'] or '-':9s} {r['confidence'][:5] or '-':>5s}  {detail}{mark}")
    print(
        f"\nAccuracy on the {summary['n_classified_known']} inputs of the six sequences: {summary['accuracy']:.3f}. Statuses: "
        + ", ".join(f"{n} {k}" for k, n in sorted(summary["statuses"].items()))
        + f". {len(rows)} inputs in {summary['seconds']['classify']:.0f} s."
    )


def confidence_report(rows: list[dict[str, str]], threshold: float | None = None) -> dict:
    """How the inference CSV's confidence and status treat right, wrong and unknown-sequence volumes.

    The truth comes from the file names (:func:`true_sequence`; ``unknown-XX_PD`` is a
    sequence outside the six classes). ``threshold`` defaults to the one the statuses were made with.
    """
    scored = [r for r in rows if r["status"] != "error"]
    truth = [true_sequence(r["file"]) for r in scored]
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
    return float(config_value("inference.json", "confidence_threshold"))


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
