"""What the bundle says about one volume: the one owner of the decision that every interface reports.

A volume's probabilities become a :class:`Prediction` in :func:`decide` only: the most probable sequence and its
probability (``confidence``), the BIDS suffix it suggests, what a DICOM header suggests and whether it agrees, and
the status with its reasons. The CSV of folder inference (:class:`sarf_bundle.handlers.PredictionWriter`), the
MONAI Label task (:class:`sarf_bundle.label_app.task.SequenceInferTask`) and the Python API
(:meth:`sarf_bundle.bundle.InferenceBundle.classify`) all call it, so the three give the same answer for the same
volume, threshold and temperature.

The status is one of :data:`STATUSES`:

- ``error``: the input could not be read or checked; ``message`` says why, and there is no sequence;
- ``uncertain``: there is a sequence, but the confidence is below the threshold, the input does not look like a
  head (the preprocessing's ``warning``), or the DICOM header suggests another sequence; ``message`` lists each
  reason after the preprocessing's ``note`` (how a 4D input was reduced, say);
- ``ok``: none of these.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import SEQUENCES
from .headers import BIDS_NAMES, header_sequence

__all__ = ["STATUSES", "Prediction", "csv_columns", "decide", "failed"]

STATUSES = ("ok", "uncertain", "error")
"""The statuses of a prediction, in the order summaries count them."""


def csv_columns(class_names: Sequence[str] = SEQUENCES) -> list[str]:
    """The columns of the predictions CSV, one ``p_<class>`` per class."""
    return ["file", "sequence", *[f"p_{c}" for c in class_names], "confidence", "status", "message", "bids_name", "header_sequence", "header_agrees"]


@dataclass(frozen=True)
class Prediction:
    """The bundle's answer for one input.

    Attributes:
        file: the input, as the interface names it (a path, a DICOM series folder, an image id).
        status: one of :data:`STATUSES`.
        message: the reasons for the status and the preprocessing's note, ``"; "``-separated.
        probabilities: the probability of each class by name, in class order (empty for an error).
        header_sequence: the sequence a DICOM header suggests (:func:`sarf_bundle.headers.header_sequence`), or "".
        header_agrees: ``"yes"``/``"no"`` when the header suggests a sequence, else "".
    """

    file: str
    status: str
    message: str = ""
    probabilities: dict[str, float] = field(default_factory=dict)
    header_sequence: str = ""
    header_agrees: str = ""

    @property
    def sequence(self) -> str:
        """The most probable class ("" for an error)."""
        return max(self.probabilities, key=self.probabilities.__getitem__) if self.probabilities else ""

    @property
    def confidence(self) -> float | None:
        """The probability of :attr:`sequence` (``None`` for an error)."""
        return self.probabilities[self.sequence] if self.probabilities else None

    @property
    def bids_name(self) -> str:
        """The BIDS suffix of :attr:`sequence` ("" for an error)."""
        return BIDS_NAMES.get(self.sequence, "")

    def as_row(self) -> dict[str, str]:
        """The prediction as a row of the predictions CSV (:func:`csv_columns`); an error row has no numbers."""
        row = {"file": self.file, "status": self.status, "message": self.message}
        if self.status == "error":
            return row
        row.update({f"p_{c}": f"{p:.6f}" for c, p in self.probabilities.items()})
        row.update(
            sequence=self.sequence, confidence=f"{self.confidence:.6f}", bids_name=self.bids_name,
            header_sequence=self.header_sequence, header_agrees=self.header_agrees,
        )  # fmt: skip
        return row

    def as_dict(self) -> dict[str, Any]:
        """The prediction as JSON-ready values (what MONAI Label returns beside its own fields)."""
        return {
            "file": self.file, "sequence": self.sequence, "confidence": self.confidence, "probabilities": dict(self.probabilities),
            "status": self.status, "message": self.message, "bids_name": self.bids_name,
            "header_sequence": self.header_sequence, "header_agrees": self.header_agrees,
        }  # fmt: skip


def failed(file: str, message: str) -> Prediction:
    """The prediction of an input that could not be read or checked."""
    return Prediction(file=file, status="error", message=message)


def decide(
    file: str,
    probabilities: Sequence[float],
    class_names: Sequence[str] = SEQUENCES,
    confidence_threshold: float = 0.0,
    note: str = "",
    warning: str = "",
    header: Mapping[str, Any] | str | None = None,
) -> Prediction:
    """Decide what to report for a volume from its (temperature-scaled) probabilities.

    Args:
        file: the input's name in the report.
        probabilities: one probability per class, in class order.
        class_names: the classes.
        confidence_threshold: below this top probability the status is ``uncertain``.
        note: what the preprocessing did that the user should know (e.g. a 4D reduction); leads the message.
        warning: why the input may not be a head (from the preprocessing's checks), or "".
        header: the DICOM header summary of a series (:func:`sarf_bundle.headers.header_summary`), as a mapping or
            its JSON text; ``None`` or "" for a file without one.

    Raises:
        ValueError: when the number of probabilities is not the number of classes.
    """
    if len(probabilities) != len(class_names):
        raise ValueError(f"{file}: {len(probabilities)} probabilities for {len(class_names)} classes ({', '.join(class_names)}).")
    prediction = Prediction(file=file, status="ok", probabilities={c: float(p) for c, p in zip(class_names, probabilities)})
    reasons = [warning] if warning else []
    if prediction.confidence < confidence_threshold:
        reasons.append(f"confidence {prediction.confidence:.2f} is below the threshold {confidence_threshold:g}")
    suggested, agrees = "", ""
    if header:
        suggested, why = header_sequence(json.loads(header) if isinstance(header, str) else header)
        if suggested is None:
            suggested = ""
        else:
            agrees = "yes" if suggested == prediction.sequence else "no"
            if agrees == "no":
                reasons.append(f"the DICOM header suggests {suggested} ({why})")
    return Prediction(
        file=file, status="uncertain" if reasons else "ok", message="; ".join(m for m in [note, *reasons] if m),
        probabilities=prediction.probabilities, header_sequence=suggested, header_agrees=agrees,
    )  # fmt: skip
