"""The paper's experiments as commands: cross-validation of a method (the sweep, :mod:`sarf_bundle.sweep`, runs it per grid point).

You, Wiest, Reyes, "SaRF: Saliency regularized feature learning improves MRI sequence
classification", CMPB 2023, sections 3.2-3.4.

- :func:`crossval` trains one method on every fold of a datalist through the bundle's own configs
  (``configs/train.json``, validation on fold ``k``, the checkpoint of lowest validation loss kept),
  then tests each fold's model on the held-out ``testing`` split (``configs/evaluate.json``). A fold
  is one bundle root ``RUN_DIR/<method>/fold<k>/``; a finished fold is never trained again.
- :func:`sarf_bundle.sweep.sweep` runs that cross-validation for every (alpha, beta) pair of a grid, in
  shards, and draws the heat maps of the paper's Figs. 5c and 6.

A method is a set of config overrides (:data:`METHODS`); any other key of ``train.json`` (``epochs``,
``learning_rate``, ``image_size``, ``batch_size``, ``num_workers``, ...) can be overridden on top.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .bundle import bundle_version, config_content, read_config, run_bundle
from .data import load_datalist
from .files import atomic_write_text
from .metrics import aggregate_folds, summary_value

__all__ = ["FOLD_EVALUATIONS", "HEATMAP_METRICS", "METHODS", "crossval", "fold_ids", "run_crossval"]

METHODS: dict[str, dict[str, Any]] = {
    "baseline": {"alpha": 0.0, "beta": 0.0, "base_loss": "ce", "saliency": "dtd"},
    "focal": {"alpha": 0.0, "beta": 0.0, "base_loss": "focal", "saliency": "dtd"},
    "sarf": {"alpha": 5.0, "beta": 0.5, "base_loss": "ce", "saliency": "dtd"},
    "sarf-gradcam": {"alpha": 5.0, "beta": 0.5, "base_loss": "ce", "saliency": "gradcam"},
    "sarf-focal": {"alpha": 5.0, "beta": 0.5, "base_loss": "focal", "saliency": "dtd"},
    "alpha-only": {"alpha": 5.0, "beta": 0.0, "base_loss": "ce", "saliency": "dtd"},
    "beta-only": {"alpha": 0.0, "beta": 0.5, "base_loss": "ce", "saliency": "dtd"},
}
"""The methods of the paper (section 3.4) as overrides of ``configs/train.json``: the loss weights,
the base loss (cross-entropy or focal) and the saliency (DTD or GradCAM); reports list them in this order."""

HEATMAP_METRICS: dict[str, tuple[tuple[str, ...], str]] = {
    "mean_f1": (("multiclass", "mean", "f1"), "mean F1 over classes, argmax decision"),
    "mean_class_accuracy": (("multiclass", "mean", "accuracy"), "mean accuracy over classes, argmax decision"),
    "mean_auc": (("multiclass", "mean", "auc"), "mean ROC AUC over classes"),
    "ovr_threshold_mean_f1": (("ovr_threshold", "mean", "f1"), "mean F1 over classes, one-vs-rest at 0.5"),
    "ovr_threshold_mean_accuracy": (("ovr_threshold", "mean", "accuracy"), "mean accuracy over classes, one-vs-rest at 0.5"),
}
"""Metrics that crossval prints and the sweep draws as heat maps (:mod:`sarf_bundle.sweep`): a path into :func:`sarf_bundle.metrics.aggregate_folds`'s
result, and a title. F1 is the paper's Fig. 5c, accuracy and AUC its Fig. 6."""

HEADLINE: dict[str, tuple[str, ...]] = {
    "accuracy": ("accuracy",),
    **{name: path for name, (path, _) in HEATMAP_METRICS.items()},
    "ece": ("ece",),
}
"""The numbers :func:`crossval` prints and puts first in ``crossval.json``."""

UNCOMPARED_KEYS = frozenset({"num_workers", "skull_strip_cache"})
"""Settings that do not change a fold's result, so a finished fold is kept when only they differ."""

RESERVED_KEYS = frozenset({"bundle_root", "dataset_dir", "datalist", "fold"})
"""Config keys that the cross-validation sets for each fold."""

NOT_SET = "<not set>"
"""How a setting that a run did not override and ``train.json`` cannot tell shows in messages."""

VALIDATION_DATA = "$sarf_bundle.data.load_datalist(@datalist, 'training', folds=[@fold])"
"""The datalist entries of the fold's own validation fold, as a config expression."""

FOLD_EVALUATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "test": ("eval", {}),
    "validation_stripped": ("eval/validation_stripped", {"skull_strip": True, "val_skull_strip": True, "validate#dataset#data": VALIDATION_DATA}),
    "validation_whole_head": ("eval/validation_whole_head", {"validate#dataset#data": VALIDATION_DATA}),
}
"""What each fold's model is evaluated on with ``configs/evaluate.json``, and the folder of the results: the held-out
test split, whole head (the benchmark's result), and the fold's own validation volumes skull-stripped (in domain for
the paper's protocol: has the model converged?) and whole head (how much of the gap is the domain shift?)."""

FOLD_FILE = "fold.json"
MODEL_FILE = "models/model.pt"  # configs/train.json's best checkpoint: a fold with it and its fold.json is trained
SUMMARY_FILE = "crossval.json"

Runner = Callable[..., None]


def crossval(
    datalist: str | os.PathLike,
    method: str = "sarf",
    out: str | os.PathLike = "runs",
    folds: int | Sequence[int] | None = None,
    **overrides: Any,
) -> str:
    """Cross-validate one of the paper's methods: train every fold, test each on the held-out split.

    Each fold ``k`` is the bundle root ``<out>/<method>/fold<k>/``, trained with ``configs/train.json``
    (validation on fold ``k``, training on the other folds, ``models/model.pt`` = lowest validation loss)
    and tested with ``configs/evaluate.json`` on the datalist's ``testing`` split, which writes
    ``eval/metrics.json``, ``eval/predictions.csv`` and ``eval/confusion_matrix.csv``. The model is also
    evaluated on its own validation fold, skull-stripped (``eval/validation_stripped/``) and whole head
    (``eval/validation_whole_head/``), see :data:`FOLD_EVALUATIONS`. ``fold.json`` (settings, datalist
    hash, seconds, training slices per second) is written as soon as training ends, and completed with the
    three accuracies when the evaluations have run. A fold whose ``fold.json`` matches the requested
    settings and whose model (or every evaluation) exists is not trained again, and only its missing
    evaluations run; any other fold is trained from scratch, so an interrupted run resumes at the fold, or the
    evaluation, it was on.
    ``<out>/<method>/crossval.json`` holds the mean ± std over folds (:func:`sarf_bundle.metrics.aggregate_folds`,
    ``ddof=0``) of every metric of the three evaluations.

    Args:
        datalist: the datalist JSON (``training`` entries with a ``fold``, and a ``testing`` split).
        method: one of :data:`METHODS`.
        out: the folder of all runs.
        folds: ``None`` for every fold of the datalist, a number ``n`` for its first ``n`` folds, or a
            list of fold ids.
        **overrides: other keys of ``configs/train.json`` for every fold, e.g. ``epochs=20``.
            ``skull_strip_cache`` defaults to ``cache/skullstrip`` of the current folder, the default of
            ``python -m sarf_bundle skullstrip``, so that all folds share the computed brain masks.

    Returns:
        The path of ``crossval.json``.

    Raises:
        ValueError: for an unknown method, an override of a key the method sets, an override that is
            no config key, or folds the datalist does not have.
        FileNotFoundError: when the datalist does not exist.

    Example:
        ``python -m sarf_bundle crossval --datalist data/sim/datalist.json --method sarf --epochs 50``
    """
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; options are {', '.join(METHODS)}.")
    fixed = sorted(set(overrides) & set(METHODS[method]))
    if fixed:
        raise ValueError(
            f"--{fixed[0]} is set by --method {method} ({fixed[0]}={METHODS[method][fixed[0]]!r}); choose another "
            "method, or run other loss weights with `python -m sarf_bundle sweep --alphas ... --betas ...`."
        )
    settings = {**METHODS[method], **with_default_cache(overrides)}
    return str(run_crossval(datalist, Path(out) / method, settings, folds, name=method))


def run_crossval(
    datalist: str | os.PathLike,
    run_dir: str | os.PathLike,
    settings: dict[str, Any],
    folds: int | Sequence[int] | None = None,
    name: str | None = None,
    runner: Runner | None = None,
) -> Path:
    """Cross-validate the bundle with given config overrides in ``run_dir``; see :func:`crossval`.

    Args:
        datalist: the datalist JSON.
        run_dir: the folder of this run: ``fold<k>/`` per fold and ``crossval.json``.
        settings: overrides of ``configs/train.json`` (and ``evaluate.json``) for every fold.
        folds: as in :func:`crossval`.
        name: the run's name in messages and in ``crossval.json`` (default: the folder's name).
        runner: runs a bundle section like :func:`sarf_bundle.bundle.run_bundle` (the default).

    Returns:
        The path of ``crossval.json``.

    Raises:
        ValueError: for a setting that is no config key, or folds the datalist does not have.
        FileNotFoundError: when the datalist does not exist.
    """
    datalist, run_dir = Path(datalist).resolve(), Path(run_dir).resolve()
    name = name or run_dir.name
    check_config_keys(settings)
    selected = fold_ids(datalist, folds)
    digest = hashlib.sha256(datalist.read_bytes()).hexdigest()
    records = {}
    for position, k in enumerate(selected, start=1):
        print(f"[{name}] fold {k} ({position} of {len(selected)})", flush=True)
        records[k] = _run_fold(run_dir / f"fold{k}", datalist, digest, k, settings, name, runner or run_bundle)
    summaries = {
        evaluation: aggregate_folds([json.loads((run_dir / f"fold{k}" / folder / "metrics.json").read_text()) for k in selected])
        for evaluation, (folder, _) in FOLD_EVALUATIONS.items()
    }
    summary = summaries.pop("test")
    result = {
        "name": name,
        "settings": settings,
        "datalist": str(datalist),
        "datalist_sha256": digest,
        "folds": selected,
        "headline": {key: summary_value(summary, path) for key, path in HEADLINE.items()},
        "validation_accuracy": {evaluation: validation["accuracy"] for evaluation, validation in summaries.items()},
        "metrics": summary,
        "validation_metrics": summaries,
        "per_fold": {
            str(k): {"dir": f"fold{k}", "seconds": records[k]["seconds"], "training": records[k].get("training")} for k in selected
        },
    }
    path = run_dir / SUMMARY_FILE
    atomic_write_text(path, json.dumps(result, indent=1))
    _print_headline(name, result, len(selected))
    return path


def fold_ids(datalist: str | os.PathLike, folds: int | Sequence[int] | None = None) -> list[int]:
    """The folds of a datalist's ``training`` split to run, sorted.

    Args:
        datalist: the datalist JSON.
        folds: ``None`` for all, ``n`` for the first ``n``, or a list of fold ids.

    Raises:
        FileNotFoundError: when the datalist does not exist.
        ValueError: when it has no ``training`` entries with a ``fold``, or ``folds`` asks for folds it lacks.
    """
    datalist = Path(datalist)
    if datalist.is_dir():
        raise FileNotFoundError(f"Datalist {datalist} is a folder: name the datalist JSON in it, e.g. {datalist / 'datalist.json'}.")
    try:
        entries = load_datalist(datalist, "training")
    except (KeyError, ValueError):  # no split, or an empty one; a missing file raises FileNotFoundError as it is
        entries = []
    if not entries:
        raise ValueError(f"Datalist {datalist} has no 'training' entries to cross-validate.")
    unfolded = [os.path.relpath(e["image"], datalist.parent) for e in entries if "fold" not in e]
    if unfolded:
        raise ValueError(f"Datalist {datalist}: every 'training' entry needs a 'fold' for cross-validation; {len(unfolded)} have none, e.g. {unfolded[:3]}.")
    available = sorted({int(e["fold"]) for e in entries})
    if folds is None:
        return available
    if isinstance(folds, (int, np.integer)) and not isinstance(folds, bool):
        if not 1 <= folds <= len(available):
            raise ValueError(f"folds={folds}: datalist {datalist} has {len(available)} folds {available}; ask for 1 to {len(available)}.")
        return available[: int(folds)]
    missing = sorted(set(folds) - set(available))
    if missing or not folds:
        raise ValueError(f"folds={list(folds)}: datalist {datalist} has the folds {available}, not {missing or 'an empty list'}.")
    return sorted({int(k) for k in folds})


def _run_fold(fold_dir: Path, datalist: Path, digest: str, fold: int, settings: dict[str, Any], name: str, runner: Runner) -> dict:
    """Train one fold unless it is finished with these settings, run its missing evaluations, return its ``fold.json`` record."""
    record = _finished_fold(fold_dir, digest, fold, settings, name)
    bundle = {"bundle_root": str(fold_dir), "dataset_dir": str(datalist.parent), "datalist": str(datalist), "fold": fold, **settings}
    if record is None:
        (fold_dir / FOLD_FILE).unlink(missing_ok=True)
        for stale in ("models", "eval"):
            shutil.rmtree(fold_dir / stale, ignore_errors=True)
        tick = time.time()
        runner("training", ["train.json"], **bundle)
        seconds = round(time.time() - tick, 1)
        record = {
            "fold": fold,
            "datalist": str(datalist),
            "datalist_sha256": digest,
            "settings": settings,
            "seconds": {"train": seconds},
            "training": _throughput(datalist, fold, settings, seconds),
            "bundle_version": bundle_version(),
        }
        # recorded at once, so that an evaluation that fails does not cost the training on the next run
        atomic_write_text(fold_dir / FOLD_FILE, json.dumps(record, indent=1))
    missing = _missing_evaluations(fold_dir)
    for evaluation, (folder, overrides) in missing.items():
        tick = time.time()
        # the evaluation's own keys win: the whole-head control (skull_strip False) still strips its stripped validation
        runner("run", ["train.json", "evaluate.json"], **{**bundle, "output_dir": str(fold_dir / folder), **overrides})
        record["seconds"][evaluation] = round(time.time() - tick, 1)
    if missing or "accuracy" not in record or "training" not in record:
        record.setdefault("training", _throughput(datalist, fold, settings, record["seconds"]["train"]))
        record["accuracy"] = {name: json.loads((fold_dir / folder / "metrics.json").read_text())["accuracy"] for name, (folder, _) in FOLD_EVALUATIONS.items()}
        record["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        atomic_write_text(fold_dir / FOLD_FILE, json.dumps(record, indent=1))
    return record


def _missing_evaluations(fold_dir: Path) -> dict[str, tuple[str, dict[str, Any]]]:
    """The entries of :data:`FOLD_EVALUATIONS` whose ``metrics.json`` the fold does not have yet."""
    return {name: job for name, job in FOLD_EVALUATIONS.items() if not (fold_dir / job[0] / "metrics.json").is_file()}


def _finished_fold(fold_dir: Path, digest: str, fold: int, settings: dict[str, Any], name: str) -> dict | None:
    """The ``fold.json`` record of a fold trained with these settings on this datalist, else ``None``.

    A fold of another bundle version is trained again: a version bump is how a change of the recipe in
    ``configs/train.json`` (which the settings, being overrides of it, do not show) is recorded.
    """
    record_file = fold_dir / FOLD_FILE
    # without its model a fold still counts when nothing is left to evaluate (the results committed to docs/)
    if not (record_file.is_file() and ((fold_dir / MODEL_FILE).is_file() or not _missing_evaluations(fold_dir))):
        return None
    previous = json.loads(record_file.read_text())
    changes = _changes(previous.get("settings", {}), settings)
    if previous.get("datalist_sha256") != digest:
        print(f"[{name}] fold {fold} was run on another version of the datalist: training it again.", flush=True)
    elif previous.get("bundle_version") != bundle_version():
        print(
            f"[{name}] fold {fold} was run by bundle {previous.get('bundle_version')}, whose recipe may differ from "
            f"{bundle_version()}'s: training it again.",
            flush=True,
        )
    elif changes:
        described = ", ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in changes.items())
        print(f"[{name}] fold {fold} was run with other settings ({described}): training it again.", flush=True)
    else:
        print(f"[{name}] fold {fold} is trained, kept ({record_file}).", flush=True)
        return previous
    return None


def _throughput(datalist: Path, fold: int, settings: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Training volumes, epochs and slices per second of wall time (caching and validation included)."""
    train = read_config("train.json")
    volumes = len(load_datalist(datalist, "training", exclude_folds=[fold]))
    epochs = int(settings.get("epochs", train["epochs"]))
    slices = volumes * epochs * len(settings.get("percentiles", train["percentiles"]))
    return {"volumes": volumes, "epochs": epochs, "slices_per_second": round(slices / max(seconds, 1e-9), 1)}


def _changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The settings that differ between two runs and change a result, as ``{key: (old, new)}``.

    Values are compared as JSON (1 and 1.0, tuples and lists agree). A key set in one run only is
    compared with its value in ``train.json``, unless ``evaluate.json`` sets it too (then the override
    changes the evaluation as well, and counts as a change).
    """
    old, new = json.loads(json.dumps(old)), json.loads(json.dumps(new))
    train, evaluated = read_config("train.json"), config_content("evaluate.json")
    changes = {}
    for key in sorted((set(old) | set(new)) - UNCOMPARED_KEYS):
        default = train[key] if key in train and key not in evaluated else NOT_SET
        before, after = old.get(key, default), new.get(key, default)
        if before != after:
            changes[key] = (before, after)
    return changes


def with_default_cache(overrides: dict[str, Any]) -> dict[str, Any]:
    """The overrides with the skull-strip cache in ``./cache/skullstrip`` unless they name one."""
    return {"skull_strip_cache": str(Path("cache/skullstrip").resolve()), **overrides}


def check_config_keys(settings: dict[str, Any]) -> None:
    """Raise ``ValueError`` for a setting that the runs set themselves, or that is no config key (a typo would be ignored)."""
    reserved = sorted(set(settings) & RESERVED_KEYS)
    if reserved:
        raise ValueError(f"--{reserved[0]} is set by the cross-validation for each fold and cannot be overridden; {sorted(RESERVED_KEYS)} are.")
    parser = read_config("train.json", "evaluate.json")
    unknown = sorted(k for k in settings if k not in parser)
    if unknown:
        raise ValueError(f"--{unknown[0]} is not a key of configs/train.json or configs/evaluate.json; unknown: {unknown}.")


def _print_headline(name: str, result: dict, n_folds: int) -> None:
    print(f"[{name}] test set, mean ± std over {n_folds} fold(s):", flush=True)
    for key, stats in result["headline"].items():
        print(f"  {key:30s} {stats['mean']:.4f} ± {stats['std']:.4f}", flush=True)
    print(f"[{name}] validation folds, accuracy:", flush=True)
    for key, stats in result["validation_accuracy"].items():
        print(f"  {key:30s} {stats['mean']:.4f} ± {stats['std']:.4f}", flush=True)
