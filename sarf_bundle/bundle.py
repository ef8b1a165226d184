"""Running the bundle's own configs from Python, as ``python -m monai.bundle run`` does, or taking their parts."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ignite.handlers import Checkpoint
from monai.bundle import ConfigParser, run

from .files import atomic_torch_save
from .prediction import Prediction, decide, failed

__all__ = [
    "BUNDLE_ROOT",
    "InferenceBundle",
    "PreprocessingSettings",
    "bundle_version",
    "checkpoint_settings",
    "config_content",
    "config_file",
    "config_value",
    "load_inference_bundle",
    "read_config",
    "run_bundle",
    "save_checkpoint",
]

BUNDLE_ROOT = Path(__file__).resolve().parents[1]
"""The bundle folder (``configs/``, ``models/``, ``docs/``) this package belongs to."""


def config_file(name: str) -> Path:
    """The path of one of the bundle's ``configs/`` files.

    The package is used from its bundle folder (a clone, installed with ``pip install -e .``): the configs and the
    shipped model are files of that folder, not of the Python package.

    Raises:
        FileNotFoundError: when the file is not there, e.g. after a non-editable ``pip install .``.
    """
    path = BUNDLE_ROOT / "configs" / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist. sarf_bundle runs from its bundle folder: clone it and install it with "
            "`pip install -e .` (a non-editable `pip install .` leaves the configs and the model behind)."
        )
    return path


def read_config(*configs: str | os.PathLike, **overrides: Any) -> ConfigParser:
    """Config files read by MONAI's ``ConfigParser`` (as ``python -m monai.bundle run`` reads them), keys overridden.

    The one way the package reads a config: parsed content (``parser.get_parsed_content("network")``) and raw
    values (``parser["epochs"]``) alike.

    Args:
        *configs: merged in order, later files overriding earlier ones: a bare file name (``"train.json"``) is a
            file of the bundle's ``configs/`` (:func:`config_file`); a path (a ``Path``, or a name with a folder)
            is read as it is, e.g. the ``configs/inference.json`` of another bundle folder.
        **overrides: config ids to set after reading, e.g. ``epochs=5``; nested ids as ``**{"train#trainer": ...}``.

    Raises:
        FileNotFoundError: when a file is not there.

    Example:
        >>> read_config("train.json", "evaluate.json", epochs=5)["epochs"]
        5
    """
    parser = ConfigParser()
    parser.read_config([str(_config_path(c)) for c in configs])
    parser.update(overrides)
    return parser


def config_content(config: str | os.PathLike) -> dict[str, Any]:
    """The raw content of one config file as MONAI loads it (``ConfigParser.load_config_file``): its own top-level
    keys, ``#`` ids not expanded, nothing resolved. For a file that only makes sense merged with another (such as
    ``evaluate.json``, which overrides ``train.json``) this is how to see which keys it sets; ``config`` as in
    :func:`read_config`."""
    return dict(ConfigParser.load_config_file(str(_config_path(config))))


def config_value(config: str | os.PathLike, key: str) -> Any:
    """One raw value of a config file (:func:`config_content`), e.g. ``config_value("train.json", "epochs")``."""
    return config_content(config)[key]


def _config_path(config: str | os.PathLike) -> Path:
    """A bare file name as a file of the bundle's ``configs/`` (:func:`config_file`), a path as it is.

    Raises:
        FileNotFoundError: when the file is not there.
    """
    if not isinstance(config, os.PathLike) and Path(config).name == config:
        return config_file(config)
    path = Path(config)
    if not path.is_file():
        raise FileNotFoundError(f"Config file {path} does not exist.")
    return path


def bundle_version() -> str:
    """The bundle's version, from ``configs/metadata.json``."""
    return str(config_value("metadata.json", "version"))


class PreprocessingSettings:
    """The preprocessing a model was trained with: written into its checkpoint, checked wherever it is loaded.

    The configs put this object in the ``save_dict`` of their ``CheckpointSaver`` and the ``load_dict`` of their
    ``CheckpointLoader`` under the key ``preprocessing``, next to ``model``. Saving stores :meth:`state_dict` (plain
    numbers, strings and lists, so the checkpoint still loads with ``weights_only=True``); loading hands the stored
    entry to :meth:`load_state_dict`, which raises when the config about to run the model preprocesses the volumes
    differently, so that a model trained on 96-pixel slices never runs silently on 128-pixel ones.
    ``version``, the bundle version that trained the model, is recorded and not compared.

    Args:
        class_names: the class of each network output.
        percentiles: the cranio-caudal level of each slice.
        image_size: slice side in pixels.
        fov_mm: in-plane field of view of a slice.
        crop_mm: cranio-caudal extent below the top of the head that the levels span.
        norm_radius_mm: radius of the central disc of the intensity statistics.
        norm_statistics: ``robust`` or ``moments``.
        norm_slices: the slices that give the intensity statistics.
        version: the bundle version (default: :func:`bundle_version`).

    Example:
        >>> trained = PreprocessingSettings(["T1", "T2"], [20, 80], 96, 240.0, 140.0, 40.0, "robust", [0, 1])
        >>> PreprocessingSettings(["T1", "T2"], [20, 80], 128, 240.0, 140.0, 40.0, "robust", [0, 1]).load_state_dict(
        ...     trained.state_dict())
        Traceback (most recent call last):
        ...
        ValueError: the model was trained with other preprocessing than this config's: image_size 96 (config: 128). Run it with the model's settings, e.g. `--image_size 96`.
    """

    COMPARED = ("class_names", "percentiles", "image_size", "fov_mm", "crop_mm", "norm_radius_mm", "norm_statistics", "norm_slices")
    """The settings that must agree between the checkpoint and the config."""

    def __init__(
        self,
        class_names: Sequence[str],
        percentiles: Sequence[float],
        image_size: int,
        fov_mm: float,
        crop_mm: float,
        norm_radius_mm: float,
        norm_statistics: str,
        norm_slices: Sequence[int] | None,
        version: str | None = None,
    ) -> None:
        self.settings: dict[str, Any] = {
            "class_names": [str(c) for c in class_names],
            "percentiles": [float(p) for p in percentiles],
            "image_size": int(image_size),
            "fov_mm": float(fov_mm),
            "crop_mm": float(crop_mm),
            "norm_radius_mm": float(norm_radius_mm),
            "norm_statistics": str(norm_statistics),
            "norm_slices": None if norm_slices is None else [int(i) for i in norm_slices],
            "version": bundle_version() if version is None else str(version),
        }

    def state_dict(self) -> dict[str, Any]:
        """The settings, as stored in the checkpoint."""
        return dict(self.settings)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Check a checkpoint's stored settings against this config's.

        Raises:
            ValueError: naming each setting that differs, with the overrides that would run the model as trained.
        """
        if not isinstance(state, dict):
            raise ValueError(f"the checkpoint's preprocessing entry is a {type(state).__name__}, not a dict of settings.")
        differ = [k for k in self.COMPARED if k in state and _plain(state[k]) != _plain(self.settings[k])]
        if differ:
            found = ", ".join(f"{k} {_plain(state[k])} (config: {_plain(self.settings[k])})" for k in differ)
            overrides = " ".join(f"--{k} {json.dumps(_plain(state[k])).replace(' ', '')}" for k in differ)
            raise ValueError(
                f"the model was trained with other preprocessing than this config's: {found}. "
                f"Run it with the model's settings, e.g. `{overrides}`."
            )

    @staticmethod
    def read(checkpoint: str | Path) -> dict[str, Any] | None:
        """The settings stored in a checkpoint file; None for a checkpoint without them (a bare state dict).

        Raises:
            FileNotFoundError: when the checkpoint does not exist.
            ValueError: naming the file when it cannot be read as a checkpoint.
        """
        stored = _read_checkpoint(Path(checkpoint))
        return stored.get("preprocessing") if isinstance(stored, dict) else None


def _read_checkpoint(checkpoint: Path) -> Any:
    """A checkpoint's content, loaded on the CPU with ``weights_only=True``.

    Raises:
        FileNotFoundError: when the checkpoint does not exist.
        ValueError: naming the file when it cannot be read that way.
    """
    if not checkpoint.is_file():
        raise FileNotFoundError(f"Checkpoint {checkpoint} does not exist; train one with `python -m monai.bundle run training ...`.")
    try:
        return torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{checkpoint}: not a checkpoint that loads with weights_only=True ({type(error).__name__}: {error}).") from error


def _recorded_settings(stored: Any, checkpoint: Path) -> dict[str, Any]:
    """The preprocessing record of a loaded checkpoint, as config overrides; ValueError naming the file without one."""
    settings = stored.get("preprocessing") if isinstance(stored, dict) else None
    if not isinstance(settings, dict):
        raise ValueError(
            f"{checkpoint}: the checkpoint does not say what preprocessing the model was trained with (no 'preprocessing' "
            "entry next to 'model'); train it with this bundle's configs/train.json, which records it."
        )
    return {k: settings[k] for k in PreprocessingSettings.COMPARED if k in settings}


def _plain(value: Any) -> Any:
    """Numbers as floats and integer-valued floats as ints, so that 96 and 96.0 compare and print alike."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def run_bundle(run_id: str, configs: list[str], **overrides) -> None:
    """Run a section of the bundle's configs in-process.

    Args:
        run_id: the config section to run (``training`` or ``run``).
        configs: config files of ``configs/``, merged in order (e.g. ``["train.json", "evaluate.json"]``).
        **overrides: config keys to override, e.g. ``bundle_root="runs/x", epochs=5``.
    """
    files = [str(config_file(c)) for c in configs]
    with warnings.catch_warnings():
        # MONAI warns that a config runs code of its choosing; these are the bundle's own configs
        warnings.filterwarnings("ignore", message="parsing config_file", category=UserWarning)
        run(
            run_id=run_id,
            meta_file=str(config_file("metadata.json")),
            config_file=files if len(files) > 1 else files[0],
            logging_file=str(config_file("logging.conf")),
            **overrides,
        )


@dataclass
class InferenceBundle:
    """The parts of ``configs/inference.json`` that classify one volume, with a trained network.

    Attributes:
        network: the network with the checkpoint's weights, in evaluation mode, on the config's device.
        preprocessing: the inference preprocessing (``{"image": path}`` to a ``(S, H, W)`` slice stack).
        class_names: the class of each output.
        percentiles: the cranio-caudal percentile of each slice.
        device: where the network runs.
        temperature: divides the logits before the softmax, as in inference (``calibration.json`` beside the
            checkpoint; 1.0 without one).
        confidence_threshold: below this confidence a prediction is ``uncertain`` (the config's).
    """

    network: torch.nn.Module
    preprocessing: Callable[[dict], dict]
    class_names: list[str]
    percentiles: list[float]
    device: torch.device
    temperature: float = 1.0
    confidence_threshold: float = 0.0

    def _read(self, source: str | Path | Any) -> dict:
        from .data import InferenceDataset

        return InferenceDataset([{"image": source}], self.preprocessing, placeholder_shape=(0,))[0]

    def load(self, path: str | Path) -> torch.Tensor:
        """Preprocess one volume to its slice stack ``(S, H, W)`` (float32, on CPU).

        Raises:
            ValueError: naming the file and the problem, when it cannot be read or preprocessed.
        """
        item = self._read(path)
        if item["status"] != "ok":
            raise ValueError(f"{path}: {item['message']}")
        return item["image"]

    def classify(self, source: str | Path | Any) -> Prediction:
        """Classify one volume (a NIfTI file or a :class:`~sarf_bundle.dicom.DicomSeries`) as folder inference does.

        The answer is :func:`sarf_bundle.prediction.decide`'s, from the temperature-scaled probabilities and the
        config's threshold: the same sequence, confidence, status and message as the volume's row in the CSV of
        ``configs/inference.json`` and MONAI Label's answer. An input that cannot be read is not raised but
        returned with status ``error`` and the reason.
        """
        from .data import volume_probabilities

        item = self._read(source)
        if item["status"] != "ok":
            return failed(item["filename"], item["message"])
        stack = item["image"]
        with torch.no_grad():
            logits = self.network(stack[:, None].to(self.device))
        probabilities = volume_probabilities(logits, stack.shape[0], self.temperature)[0].tolist()
        return decide(
            item["filename"], probabilities, self.class_names, self.confidence_threshold,
            note=item["message"], warning=item["warning"], header=item["header"],
        )  # fmt: skip


def save_checkpoint(network: torch.nn.Module, path: str | Path, **overrides) -> None:
    """Save a network as the bundle's configs do: ``{"model": state dict, "preprocessing": settings}``.

    For a network trained outside ``configs/train.json``: the settings are those of ``configs/inference.json`` with
    ``overrides`` (e.g. ``image_size=64``), so say how the network was trained.
    """
    settings = read_config("inference.json", **overrides).get_parsed_content("preprocessing_settings").state_dict()
    atomic_torch_save({"model": network.state_dict(), "preprocessing": settings}, path)


def checkpoint_settings(checkpoint: str | Path) -> dict[str, Any]:
    """The preprocessing a checkpoint was trained with, as config overrides (``{"image_size": 96, ...}``).

    Raises:
        FileNotFoundError: when the checkpoint does not exist.
        ValueError: naming the file when it cannot be read or holds no preprocessing record (a bare state dict).
    """
    checkpoint = Path(checkpoint)
    return _recorded_settings(_read_checkpoint(checkpoint), checkpoint)


def load_inference_bundle(checkpoint: str | Path, **overrides) -> InferenceBundle:
    """Build the network and preprocessing of ``configs/inference.json`` and load a checkpoint into the network.

    The preprocessing is the one the checkpoint was trained with (:func:`checkpoint_settings`); an override that
    contradicts it is refused. The temperature is that of the ``calibration.json`` beside the checkpoint.

    Args:
        checkpoint: a ``model.pt`` written by training: ``{"model": state dict, "preprocessing": settings}``.
        **overrides: other config keys to override, e.g. ``device``.

    Raises:
        FileNotFoundError: when the checkpoint does not exist.
        ValueError: when it cannot be loaded into the network or was trained with other preprocessing than
            ``overrides`` ask for, naming the file.
    """
    checkpoint = Path(checkpoint)
    stored = _read_checkpoint(checkpoint)  # read once: the record sets the preprocessing, the weights fill the network
    settings = _recorded_settings(stored, checkpoint)
    parser = read_config("inference.json", **{"ckpt_dir": str(checkpoint.parent), **settings, **overrides})
    network, device = parser.get_parsed_content("network"), parser.get_parsed_content("device")
    try:
        parser.get_parsed_content("preprocessing_settings").load_state_dict(stored["preprocessing"])
    except ValueError as error:
        raise ValueError(f"{checkpoint}: {error}") from error
    try:
        Checkpoint.load_objects({"model": network}, stored)
    except Exception as error:
        raise ValueError(f"{checkpoint}: not a checkpoint of this bundle's network ({type(error).__name__}: {error}).") from error
    return InferenceBundle(
        network=network.eval(),
        preprocessing=parser.get_parsed_content("preprocessing"),
        class_names=list(parser.get_parsed_content("class_names")),
        percentiles=list(parser.get_parsed_content("percentiles")),
        device=device,
        temperature=float(parser.get_parsed_content("temperature")),
        confidence_threshold=float(parser.get_parsed_content("confidence_threshold")),
    )
