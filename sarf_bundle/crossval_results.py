"""Finished cross-validation runs read back: each method's folds, their test predictions and metrics.

A method is a folder ``RUN_DIR/<method>/`` (the folder's name is the method's name) with ``fold<k>/`` folders
as :func:`sarf_bundle.experiments.crossval` writes them: ``eval/predictions.csv`` (the test split, written by
:class:`~sarf_bundle.handlers.ClassificationReport`), the validation evaluations of
:data:`~sarf_bundle.experiments.FOLD_EVALUATIONS`, ``fold.json`` (the training record), and optionally the
method's ``crossval.json``. Every metric is recomputed from the CSV files' labels and probabilities with
:func:`~sarf_bundle.metrics.classification_metrics`, so that all methods are measured by the same code.
:mod:`sarf_bundle.report` turns these into tables and figures.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .experiments import FOLD_EVALUATIONS, METHODS
from .metrics import aggregate_folds, classification_metrics

__all__ = ["FoldRun", "MethodRun", "find_method_dirs", "load_method", "read_predictions"]

_FOLD = re.compile(r"fold(\d+)")


@dataclass
class FoldRun:
    """The test predictions of one cross-validation fold and the metrics recomputed from them.

    ``validation`` holds the accuracy on the fold's validation volumes per evaluation of
    :data:`~sarf_bundle.experiments.FOLD_EVALUATIONS` that was run (stripped, whole head), and ``training`` the
    ``training`` record of its ``fold.json`` (volumes, epochs, slices per second) with the training seconds.
    """

    fold: int
    path: Path
    files: list[str]
    labels: np.ndarray
    probs: np.ndarray
    metrics: dict
    validation: dict[str, float] = field(default_factory=dict)
    training: dict = field(default_factory=dict)


@dataclass
class MethodRun:
    """All folds of one method, their mean ± std over folds, and what was missing."""

    name: str
    root: Path
    class_names: list[str]
    folds: list[FoldRun]
    summary: dict
    flags: list[str] = field(default_factory=list)

    @property
    def labels(self) -> np.ndarray:
        """True labels of all folds, concatenated."""
        return np.concatenate([f.labels for f in self.folds])

    @property
    def probs(self) -> np.ndarray:
        """Probabilities of all folds, concatenated."""
        return np.concatenate([f.probs for f in self.folds])


def read_predictions(path: str | Path) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """Read a ``predictions.csv`` of an evaluation.

    Args:
        path: CSV with the columns ``file, label`` (a class name) and ``p_<class>`` per class.

    Returns:
        ``(files, labels, probs, class_names)``: labels as class indices, ``probs`` ``(N, K)``, and the
        class names in the order of the ``p_`` columns.

    Raises:
        ValueError: if a column is missing, a label is not a class name, or a probability is not a number in [0, 1].
    """
    path = Path(path)
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        class_names = [c[2:] for c in columns if c.startswith("p_")]
        if "file" not in columns or "label" not in columns or not class_names:
            raise ValueError(f"{path} must have the columns file, label and p_<class> per class; it has {columns}.")
        files, labels, probs = [], [], []
        for line, row in enumerate(reader, start=2):
            if row["label"] not in class_names:
                raise ValueError(f"{path} line {line}: label {row['label']!r} is not one of the classes {class_names}.")
            try:
                probs.append([float(row[f"p_{c}"]) for c in class_names])
            except (TypeError, ValueError) as e:
                raise ValueError(f"{path} line {line}: a probability is not a number ({e}).") from None
            if not all(0 <= p <= 1 for p in probs[-1]):
                raise ValueError(f"{path} line {line}: probabilities must lie in [0, 1], got {probs[-1]}.")
            files.append(row["file"])
            labels.append(class_names.index(row["label"]))
    return files, np.array(labels, int), np.array(probs, float).reshape(-1, len(class_names)), class_names


def _is_method_dir(path: Path) -> bool:
    return path.is_dir() and any(_FOLD.fullmatch(p.name) and p.is_dir() for p in path.iterdir())


def find_method_dirs(run_dirs: str | Path | Sequence[str | Path]) -> list[Path]:
    """The method folders among ``run_dirs``: each is a method folder (it has ``fold<k>/``) or a parent of some.

    Args:
        run_dirs: one or more folders.

    Returns:
        The method folders, in the order of :data:`sarf_bundle.experiments.METHODS`, then others by name.

    Raises:
        FileNotFoundError: if a folder does not exist or holds no method folder.
        ValueError: if two method folders have the same name.
    """
    run_dirs = [run_dirs] if isinstance(run_dirs, (str, Path)) else list(run_dirs)
    if not run_dirs:
        raise FileNotFoundError("No run directory given: name RUN_DIR/<method> folders, or RUN_DIR itself.")
    found: dict[str, Path] = {}
    for run_dir in map(Path, run_dirs):
        if not run_dir.is_dir():
            raise FileNotFoundError(f"Run directory {run_dir} does not exist.")
        methods = [run_dir] if _is_method_dir(run_dir) else sorted(p for p in run_dir.iterdir() if _is_method_dir(p))
        if not methods:
            raise FileNotFoundError(
                f"{run_dir} has no fold<k>/ folders, nor subfolders with them: a report reads "
                "RUN_DIR/<method>/fold<k>/eval/predictions.csv, written by the cross-validation."
            )
        for method in methods:
            if method.name in found and found[method.name].resolve() != method.resolve():
                raise ValueError(f"Two methods are named {method.name!r}: {found[method.name]} and {method}. Rename one folder.")
            found[method.name] = method
    return [found[name] for name in _ordered(found)]


def _ordered(names: Sequence[str]) -> list[str]:
    known = [m for m in METHODS if m in names]
    return known + sorted(n for n in names if n not in METHODS)


def _expected_folds(root: Path, flags: list[str]) -> set[int]:
    """Folds that ``crossval.json`` announces (its ``folds`` list, as :func:`sarf_bundle.experiments.crossval` writes it), else none."""
    path = root / "crossval.json"
    if not path.is_file():
        return set()
    try:
        info = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        flags.append(f"`crossval.json` could not be read ({e}).")
        return set()
    folds = info.get("folds") if isinstance(info, dict) else None
    if isinstance(folds, list) and all(isinstance(k, int) for k in folds):
        return set(folds)
    return set()


def load_method(root: str | Path, n_bins: int = 15) -> MethodRun:
    """Read every fold of one method and recompute its metrics.

    A fold folder without ``eval/predictions.csv``, an empty one, a fold missing from the numbering
    (or from ``crossval.json``), and a fold tested on fewer volumes than the others are flagged, not fatal.

    Args:
        root: the method folder ``RUN_DIR/<method>``.
        n_bins: bins of the expected calibration error.

    Returns:
        The method's folds, summary (:func:`~sarf_bundle.metrics.aggregate_folds`) and flags.

    Raises:
        FileNotFoundError: if no fold has predictions.
        ValueError: if a CSV is malformed or the folds disagree on the classes.
    """
    root = Path(root)
    flags: list[str] = []
    fold_dirs = sorted((int(_FOLD.fullmatch(p.name).group(1)), p) for p in root.iterdir() if _FOLD.fullmatch(p.name) and p.is_dir())
    folds: list[FoldRun] = []
    class_names: list[str] | None = None
    for k, fold_dir in fold_dirs:
        path = fold_dir / "eval" / "predictions.csv"
        if not path.is_file():
            flags.append(f"fold{k}: no `eval/predictions.csv` (not evaluated, or still running).")
            continue
        files, labels, probs, names = read_predictions(path)
        if class_names is not None and names != class_names:
            raise ValueError(f"{path} has the classes {names}, other folds of {root} have {class_names}.")
        class_names = names
        if not files:
            flags.append(f"fold{k}: `eval/predictions.csv` has no rows.")
            continue
        metrics = classification_metrics(probs, labels, names, n_bins)
        folds.append(FoldRun(k, path, files, labels, probs, metrics, _validation_accuracy(fold_dir), _training(fold_dir)))
    if not folds:
        seen = ", ".join(p.name for _, p in fold_dirs)
        raise FileNotFoundError(
            f"{root}: none of its fold folders ({seen}) has a non-empty eval/predictions.csv; evaluate the folds first."
        )
    present = {f.fold for f in folds} | {k for k, _ in fold_dirs}
    expected = _expected_folds(root, flags) or set(range(max(present) + 1))
    flags += [f"fold{k}: missing (no `fold{k}/` folder)." for k in sorted(expected - present)]
    every_file = set().union(*(f.files for f in folds))
    for f in folds:
        lacking = every_file - set(f.files)
        if lacking:
            example = sorted(lacking)[0]
            flags.append(f"fold{f.fold}: partial, {len(f.files)} test volumes, lacks {len(lacking)} that other folds have (e.g. `{example}`).")
    if len(folds) == 1:
        flags.append("only one fold: the ± std is 0 by definition.")
    return MethodRun(root.name, root, class_names, folds, aggregate_folds([f.metrics for f in folds]), flags)


def _validation_accuracy(fold_dir: Path) -> dict[str, float]:
    """Accuracy (argmax) on the fold's validation volumes, per validation evaluation that has predictions."""
    accuracy = {}
    for name, (folder, _) in FOLD_EVALUATIONS.items():
        path = fold_dir / folder / "predictions.csv"
        if name != "test" and path.is_file():
            _, labels, probs, _ = read_predictions(path)
            if len(labels):
                accuracy[name] = float(np.mean(probs.argmax(axis=1) == labels))
    return accuracy


def _training(fold_dir: Path) -> dict:
    """The fold's training record from ``fold.json`` with ``seconds`` (empty when there is none)."""
    path = fold_dir / "fold.json"
    if not path.is_file():
        return {}
    record = json.loads(path.read_text())
    return {**(record.get("training") or {}), "seconds": record.get("seconds", {}).get("train")}
