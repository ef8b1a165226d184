"""Ignite handlers of the bundle: SaRF loss terms in the logs, evaluation reports, the inference CSV.

All files are written atomically (a temporary file in the same folder, then renamed), so an
interrupted run never leaves a half-written report or CSV.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from tqdm import tqdm

from . import SEQUENCES
from .data import VolumeOutput, volume_probabilities
from .files import atomic_write_text, finish_claims, locked, shared_run
from .metrics import classification_metrics
from .prediction import STATUSES, Prediction, csv_columns, decide, failed

__all__ = [
    "BestModelState",
    "ClassificationReport",
    "LossTermsLogger",
    "PredictionWriter",
    "latest_checkpoint",
    "claims_folder",
    "merge_shards",
    "predicted_files",
    "read_prediction_csv",
    "shard_csv",
]

logger = logging.getLogger(__name__)


class BestModelState:
    """The best-model bookkeeping of a training, as one object that checkpoints can save and load.

    After ``--resume true``, the evaluator's best metric and the best-model ``CheckpointSaver``'s
    ranking would start empty, so the first validation after resuming would overwrite ``model.pt``
    whatever its score. Saved in the latest checkpoint beside model, optimizer and trainer, this
    object carries both across the restart, and ``model.pt`` holds only the network and its preprocessing record.

    Args:
        saver: the ``CheckpointSaver`` that keeps the best model (``save_key_metric=True``).
        evaluator: the validation evaluator whose ``state.best_metric`` and ``best_metric_epoch`` it restores.
    """

    def __init__(self, saver, evaluator: Engine) -> None:
        self.saver = saver
        self.evaluator = evaluator

    def state_dict(self) -> dict:
        checkpoint = self.saver._key_metric_checkpoint
        return {
            "saved": checkpoint.state_dict() if checkpoint is not None else {"saved": []},
            "best_metric": self.evaluator.state.best_metric,
            "best_metric_epoch": self.evaluator.state.best_metric_epoch,
        }

    def load_state_dict(self, state: dict) -> None:
        self.saver.load_state_dict(state["saved"])
        self.evaluator.state.best_metric = state["best_metric"]
        self.evaluator.state.best_metric_epoch = state["best_metric_epoch"]


def latest_checkpoint(folder: str | Path, prefix: str = "latest") -> str | None:
    """The newest ``<prefix>_checkpoint_epoch=N.pt`` in a folder (the trainer's resumable state), or None."""
    found = sorted(Path(folder).glob(f"{prefix}_checkpoint_epoch=*.pt"), key=lambda p: int(p.stem.split("=")[-1]))
    return str(found[-1]) if found else None


def _filenames(batch: dict, n: int) -> list[str]:
    """Source file of each volume of a batch: its ``filename`` key, else the image's metadata."""
    names = batch.get("filename")
    if names is None:
        names = (getattr(batch.get("image"), "meta", None) or {}).get("filename_or_obj", [""] * n)
    return [str(x) for x in (names if isinstance(names, (list, tuple)) else [names])]


class LossTermsLogger:
    """Put the epoch means of the separate SaRF loss terms into ``engine.state.metrics``.

    Attach it before ``StatsHandler`` / ``TensorBoardStatsHandler`` so they log ``train_base``
    (cross-entropy or focal), ``train_sd`` (L_sd), ``train_sf`` (L_sf) and ``train_total``.

    Args:
        loss: the loss module; after each call it exposes ``last_terms`` (see ``SaRFLoss``).
        prefix: prefix of the metric names.
    """

    def __init__(self, loss: torch.nn.Module, prefix: str = "train_") -> None:
        self.loss = loss
        self.prefix = prefix
        self._sums: dict[str, float] = defaultdict(float)
        self._count = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._publish)

    def _reset(self, engine: Engine) -> None:
        self._sums.clear()
        self._count = 0

    def _accumulate(self, engine: Engine) -> None:
        for name, value in getattr(self.loss, "last_terms", {}).items():
            self._sums[name] += value
        self._count += 1

    def _publish(self, engine: Engine) -> None:
        for name, total in self._sums.items():
            engine.state.metrics[f"{self.prefix}{name}"] = total / max(self._count, 1)


class ClassificationReport:
    """Collect volume predictions during an evaluation and write its metrics and predictions.

    Writes, into ``output_dir``: ``metrics.json`` (see :func:`classification_metrics`),
    ``predictions.csv`` (one row per volume: file, label, prediction, probabilities) and
    ``confusion_matrix.csv``. The headline numbers also go to ``engine.state.metrics``.

    Args:
        output_dir: folder for the files.
        n_slices: slices per volume.
        class_names: class names in index order.
        n_bins: bins of the expected calibration error.
        temperature: divides the slice logits before the softmax (:mod:`sarf_bundle.calibration`).
    """

    def __init__(
        self, output_dir: str | Path, n_slices: int = 7, class_names: Sequence[str] = SEQUENCES, n_bins: int = 15, temperature: float = 1.0
    ) -> None:
        self.output_dir = Path(output_dir)
        self.volume_output = VolumeOutput(n_slices, temperature=temperature)
        self.class_names = list(class_names)
        self.n_bins = n_bins
        self._rows: list[tuple[str, int, np.ndarray]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: self._rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _collect(self, engine: Engine) -> None:
        probs, labels = self.volume_output(engine.state.output)
        names = _filenames(engine.state.batch, len(labels))
        self._rows.extend(zip(names, labels.tolist(), probs.detach().cpu().numpy()))

    def _write(self, engine: Engine) -> None:
        probs = np.stack([r[2] for r in self._rows])
        labels = np.array([r[1] for r in self._rows])
        report = classification_metrics(probs, labels, self.class_names, self.n_bins)
        atomic_write_text(self.output_dir / "metrics.json", json.dumps(report, indent=1))
        table = io.StringIO()
        writer = csv.writer(table)
        writer.writerow(["file", "label", "predicted", *[f"p_{c}" for c in self.class_names]])
        for name, label, p in self._rows:
            writer.writerow([name, self.class_names[label], self.class_names[int(p.argmax())], *[f"{v:.6f}" for v in p]])
        atomic_write_text(self.output_dir / "predictions.csv", table.getvalue())
        matrix = io.StringIO()
        writer = csv.writer(matrix)
        writer.writerow(["true \\ predicted", *self.class_names])
        for name, row in zip(self.class_names, report["confusion_matrix"]):
            writer.writerow([name, *row])
        atomic_write_text(self.output_dir / "confusion_matrix.csv", matrix.getvalue())
        engine.state.metrics.update(
            {
                "test_accuracy": report["accuracy"],
                "test_mean_auc": report["multiclass"]["mean"]["auc"],
                "test_mean_f1": report["multiclass"]["mean"]["f1"],
                "test_ece": report["ece"],
            }
        )


def read_prediction_csv(path: str | Path) -> list[dict[str, str]]:
    """The complete rows of an inference CSV (empty when the file does not exist).

    A row cut short (a CSV truncated by a crash or a full disk: fewer fields than the header, or a status that is
    not one of :data:`STATUSES`) is left out, so that its input counts as not done and is classified again.
    """
    return _read_rows(path)[1]


def _read_rows(path: str | Path) -> tuple[list[str], list[dict[str, str]], int]:
    """The columns of an inference CSV, its complete rows and the number of incomplete ones."""
    path = Path(path)
    if not path.is_file():
        return [], [], 0
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    complete = [r for r in rows if None not in r and None not in r.values() and r.get("status") in STATUSES]
    return list(reader.fieldnames or []), complete, len(rows) - len(complete)


def claims_folder(output_csv: str | Path) -> Path:
    """The folder of the claims that concurrent runs writing ``output_csv`` share (:func:`sarf_bundle.files.claim`)."""
    output_csv = Path(output_csv)
    return output_csv.with_name(f".{output_csv.name}.claims")


def shard_csv(output_csv: str | Path, rank: int) -> Path:
    """The part of an inference CSV that rank ``rank`` of a sharded run writes: ``<name>.rank<k>.csv`` beside it."""
    output_csv = Path(output_csv)
    return output_csv.with_name(f"{output_csv.stem}.rank{rank}{output_csv.suffix}")


def _shards(output_csv: Path) -> list[Path]:
    return sorted(output_csv.parent.glob(f"{output_csv.stem}.rank*{output_csv.suffix}"))


def predicted_files(output_csv: str | Path) -> list[str]:
    """Files that already have a row in an inference CSV or in the parts of an interrupted sharded run."""
    output_csv = Path(output_csv)
    return [row["file"] for path in [output_csv, *_shards(output_csv)] for row in read_prediction_csv(path)]


def merge_shards(output_csv: str | Path) -> Path:
    """Merge the parts of a sharded inference run into the one CSV, sorted by file, then remove the parts.

    The rows of the CSV from earlier runs are kept; a file with rows in several places keeps the
    last one read (parts are read after the CSV, in rank order). The CSV is written atomically
    before any part is removed, so an interruption loses nothing.

    Returns:
        The path of the merged CSV.
    """
    output_csv = Path(output_csv)
    with locked(output_csv.parent):
        parts = _shards(output_csv)
        columns: list[str] = []
        rows: dict[str, dict[str, str]] = {}
        for path in [output_csv, *parts]:
            fields, complete, _ = _read_rows(path)
            columns = columns or fields
            rows.update((row["file"], row) for row in complete)
        if columns:
            _write_csv(output_csv, columns, [rows[name] for name in sorted(rows)])
        for path in parts:
            path.unlink()
    return output_csv


def _write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict[str, str]]) -> None:
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=list(columns), restval="")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, table.getvalue())


class PredictionWriter:
    """Write one CSV row per input during inference, atomically after every batch.

    Columns (:func:`sarf_bundle.prediction.csv_columns`): ``file, sequence, p_<class>..., confidence, status,
    message, bids_name, header_sequence, header_agrees``, as :func:`sarf_bundle.prediction.decide` decides them
    (the status ``ok``, ``uncertain`` or ``error`` and its reasons; the same decision as MONAI Label's and the
    Python API's). Rows already in the CSV (from an interrupted run) are kept, so a restarted run only adds the
    missing inputs; rows that a crash cut short are dropped, and their inputs classified again.

    Several runs may write one CSV at once: each reads, merges and writes it under a lock on its folder
    (:func:`sarf_bundle.files.locked`), so no run overwrites the rows of another. With ``claims`` (the folder the
    dataset claims its inputs in, :class:`sarf_bundle.data.InferenceDataset`), inputs that another run claimed
    (``status`` ``skipped``) get no row from this run, and the claims of written rows are marked done
    (:func:`sarf_bundle.files.shared_run` removes the folder when the last run finishes).
    A folder the CSV cannot be written to stops the run before any input is classified.

    Args:
        output_csv: the CSV file.
        n_slices: slices per volume.
        class_names: class names in index order.
        confidence_threshold: below this top probability the status is ``uncertain``.
        temperature: divides the slice logits before the softmax (:mod:`sarf_bundle.calibration`).
        progress: show a progress bar over the inputs; at the end, one line logs the count of each status and the
            CSV's path either way.
        claims: the claims folder shared with the dataset (:func:`claims_folder`), or ``None``.

    Raises:
        OSError: at the start, when the CSV cannot be written (e.g. a read-only folder), naming the file and why.
    """

    def __init__(
        self,
        output_csv: str | Path,
        n_slices: int = 7,
        class_names: Sequence[str] = SEQUENCES,
        confidence_threshold: float = 0.0,
        temperature: float = 1.0,
        progress: bool = True,
        claims: str | Path | None = None,
    ) -> None:
        self.output_csv = Path(output_csv)
        self.claims = None if claims is None else Path(claims)
        self.n_slices = n_slices
        self.class_names = list(class_names)
        self.confidence_threshold = confidence_threshold
        self.temperature = temperature
        self.columns = csv_columns(self.class_names)
        self.progress = progress
        self._resumed = 0
        self._written = 0
        self._skipped = 0
        self._bar: tqdm | None = None
        self._run = contextlib.ExitStack()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._load)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._append)
        engine.add_event_handler(Events.COMPLETED, self._summarize)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._failed)

    def _load(self, engine: Engine) -> None:
        """Check that the CSV can be written (rewriting it without rows cut short) before anything is classified."""
        try:
            self.output_csv.parent.mkdir(parents=True, exist_ok=True)
            with locked(self.output_csv.parent):
                _, rows, incomplete = _read_rows(self.output_csv)
                _write_csv(self.output_csv, self.columns, rows)
        except OSError as error:
            raise type(error)(
                f"Cannot write the predictions to {self.output_csv}: {error.strerror or error}. Choose a folder you can "
                "write to (--output_dir)."
            ) from error
        if incomplete:
            logger.warning(f"{self.output_csv}: {incomplete} row(s) cut short (an interrupted write?) were dropped; their inputs are classified again.")
        self._resumed, self._written, self._skipped = len(rows), 0, 0
        if self.claims is not None:
            self._run.enter_context(shared_run(self.claims))
        dataset = getattr(engine.state.dataloader, "dataset", None)
        total = len(dataset) if dataset is not None and hasattr(dataset, "__len__") else None
        self._bar = tqdm(total=total, desc="classifying", unit="input", disable=not self.progress)

    def _failed(self, engine: Engine, error: BaseException) -> None:
        """Close the bar and raise the error again: with a handler for it, ignite would swallow it."""
        self._close_bar()
        raise error

    def _close_bar(self) -> None:
        self._run.close()
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _summarize(self, engine: Engine) -> None:
        self._close_bar()
        rows = read_prediction_csv(self.output_csv)
        counts = Counter(r["status"] for r in rows)
        sources = [f"{self._written} classified now", f"{self._resumed} from an earlier run" if self._resumed else ""]
        others = len(rows) - self._written - self._resumed
        sources += [f"{others} by another run" if others else "", f"{self._skipped} left to another run" if self._skipped else ""]
        statuses = ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts[s])
        logger.info(f"{len(rows)} inputs ({', '.join(x for x in sources if x)}): {statuses or 'none'}. Predictions: {self.output_csv}")

    def _append(self, engine: Engine) -> None:
        probs = volume_probabilities(engine.state.output["pred"], self.n_slices, self.temperature).cpu().numpy()
        batch = engine.state.batch
        names = _filenames(batch, len(probs))
        column = lambda key, default="": batch.get(key, [default] * len(probs))  # noqa: E731
        rows = [
            self._prediction(name, p, status, message, warning, header).as_row()
            for name, p, status, message, warning, header in zip(
                names, probs, column("status", "ok"), column("message"), column("warning"), column("header")
            )
            if status != "skipped"
        ]
        self._skipped += len(probs) - len(rows)
        with locked(self.output_csv.parent):
            merged = {r["file"]: r for r in read_prediction_csv(self.output_csv)}
            merged.update((r["file"], r) for r in rows)
            _write_csv(self.output_csv, self.columns, list(merged.values()))
        self._written += len(rows)
        if self.claims is not None:
            finish_claims(self.claims, [r["file"] for r in rows])
        if self._bar is not None:
            self._bar.update(len(probs))

    def _prediction(self, name: str, p: np.ndarray, status: str, message: str, warning: str, header: str) -> Prediction:
        if status == "error":
            return failed(name, message)
        return decide(name, p, self.class_names, self.confidence_threshold, note=message, warning=warning, header=header)
