"""Calibrated confidence: temperature scaling of the slice logits, fitted on validation volumes.

Guo et al., "On calibration of modern neural networks", ICML 2017. One scalar ``T`` divides every
logit before the softmax; a volume's probabilities are then the mean of its slices' softmax, as
everywhere in the bundle (:func:`sarf_bundle.data.volume_probabilities`). ``T`` minimises the negative
log-likelihood of the validation volumes' true classes; it changes no prediction (the argmax of each
slice, and in practice of each volume, stays), only how confident they are. The fitted value is stored
beside the checkpoint as ``calibration.json`` and read by inference and evaluation.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from scipy.optimize import minimize_scalar

from . import SEQUENCES
from .data import volume_probabilities
from .files import atomic_write_text
from .metrics import expected_calibration_error

__all__ = ["TemperatureScaling", "fit_temperature", "load_temperature", "volume_nll"]

logger = logging.getLogger(__name__)


def volume_nll(logits: torch.Tensor, labels: torch.Tensor, n_slices: int, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the volumes' true classes, slice logits ``(B*S, K)``, labels ``(B,)``."""
    probs = volume_probabilities(logits, n_slices, temperature)
    return float(-torch.log(probs[torch.arange(len(labels)), labels].clamp(min=1e-12)).mean())


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, n_slices: int, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature that minimises :func:`volume_nll`, searched on a log scale within ``bounds``.

    Raises:
        ValueError: when the shapes do not fit or there are no volumes.
    """
    logits, labels = torch.as_tensor(logits).float(), torch.as_tensor(labels).long().reshape(-1)
    if logits.ndim != 2 or len(labels) == 0 or logits.shape[0] != len(labels) * n_slices:
        raise ValueError(f"Need slice logits (B*{n_slices}, K) for B >= 1 volumes and labels (B,), got {tuple(logits.shape)} and {tuple(labels.shape)}.")
    result = minimize_scalar(
        lambda log_t: volume_nll(logits, labels, n_slices, float(np.exp(log_t))),
        bounds=(float(np.log(bounds[0])), float(np.log(bounds[1]))),
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(np.exp(result.x))


def load_temperature(path: str | Path) -> float:
    """The temperature stored in a ``calibration.json``; 1.0 (no scaling) when the file does not exist.

    Raises:
        ValueError: when the file exists but holds no positive ``temperature``.
    """
    path = Path(path)
    if not path.is_file():
        logger.info("No calibration file %s: probabilities are not temperature-scaled.", path)
        return 1.0
    try:
        temperature = float(json.loads(path.read_text())["temperature"])
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a calibration file with a temperature ({type(error).__name__}: {error}).") from error
    if not temperature > 0:
        raise ValueError(f"{path}: the temperature must be positive, got {temperature}.")
    return temperature


class TemperatureScaling:
    """Ignite handler: collect an evaluator's slice logits and labels, fit the temperature, write ``calibration.json``.

    The file holds ``temperature``, the number of volumes, and the negative log-likelihood, expected
    calibration error and accuracy of those volumes before and after scaling.

    Args:
        output_file: where to write the calibration (beside the checkpoint).
        n_slices: slices per volume.
        class_names: class names in index order.
        description: what the data were, for the record (e.g. ``"fold 0 validation"``).
    """

    def __init__(self, output_file: str | Path, n_slices: int = 7, class_names: Sequence[str] = SEQUENCES, description: str = "") -> None:
        self.output_file = Path(output_file)
        self.n_slices = n_slices
        self.class_names = list(class_names)
        self.description = description
        self._logits: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: (self._logits.clear(), self._labels.clear()))
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._fit)

    def _collect(self, engine: Engine) -> None:
        output = engine.state.output
        self._logits.append(output["pred"].detach().float().cpu())
        self._labels.append(output["label"].detach().reshape(-1, self.n_slices)[:, 0].cpu())

    def _fit(self, engine: Engine) -> None:
        logits, labels = torch.cat(self._logits), torch.cat(self._labels).long()
        temperature = fit_temperature(logits, labels, self.n_slices)
        summary = {"temperature": temperature, "n_volumes": len(labels), "data": self.description}
        for name, t in (("before", 1.0), ("after", temperature)):
            probs = volume_probabilities(logits, self.n_slices, t).numpy()
            summary[name] = {
                "nll": volume_nll(logits, labels, self.n_slices, t),
                "ece": expected_calibration_error(probs, labels.numpy()),
                "accuracy": float((probs.argmax(1) == labels.numpy()).mean()),
            }
        atomic_write_text(self.output_file, json.dumps(summary, indent=1))
        logger.info("Temperature %.3f fitted on %d volumes (NLL %.3f -> %.3f); written to %s", temperature, len(labels), summary["before"]["nll"], summary["after"]["nll"], self.output_file)
        engine.state.metrics.update({"temperature": temperature})
