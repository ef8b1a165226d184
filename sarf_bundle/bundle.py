"""Running the bundle's own configs from Python, as ``python -m monai.bundle run`` does, or taking their parts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from ignite.handlers import Checkpoint
from monai.bundle import ConfigParser, run

__all__ = ["BUNDLE_ROOT", "InferenceBundle", "load_inference_bundle", "run_bundle"]

BUNDLE_ROOT = Path(__file__).resolve().parents[1]
"""The bundle folder (``configs/``, ``models/``, ``docs/``) this package belongs to."""


def run_bundle(run_id: str, configs: list[str], **overrides) -> None:
    """Run a section of the bundle's configs in-process.

    Args:
        run_id: the config section to run (``training`` or ``run``).
        configs: config files of ``configs/``, merged in order (e.g. ``["train.json", "evaluate.json"]``).
        **overrides: config keys to override, e.g. ``bundle_root="runs/x", epochs=5``.
    """
    config_dir = BUNDLE_ROOT / "configs"
    files = [str(config_dir / c) for c in configs]
    run(
        run_id=run_id,
        meta_file=str(config_dir / "metadata.json"),
        config_file=files if len(files) > 1 else files[0],
        logging_file=str(config_dir / "logging.conf"),
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
    """

    network: torch.nn.Module
    preprocessing: Callable[[dict], dict]
    class_names: list[str]
    percentiles: list[float]
    device: torch.device

    def load(self, path: str | Path) -> torch.Tensor:
        """Preprocess one volume to its slice stack ``(S, H, W)`` (float32, on CPU).

        Raises:
            ValueError: naming the file and the problem, when it cannot be read or preprocessed.
        """
        from .data import InferenceDataset

        item = InferenceDataset([{"image": str(path)}], self.preprocessing, placeholder_shape=(0,))[0]
        if item["status"] != "ok":
            raise ValueError(f"{path}: {item['message']}")
        return item["image"]


def load_inference_bundle(checkpoint: str | Path, **overrides) -> InferenceBundle:
    """Build the network and preprocessing of ``configs/inference.json`` and load a checkpoint into the network.

    Args:
        checkpoint: a ``model.pt`` written by training (the network's state dict, or a dict with a ``model`` entry).
        **overrides: config keys to override, e.g. ``image_size=96`` for a model trained on 96-pixel slices.

    Raises:
        FileNotFoundError: when the checkpoint does not exist.
        ValueError: when it cannot be loaded into the network, naming the file.
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"Checkpoint {checkpoint} does not exist; train one with `python -m monai.bundle run training ...`.")
    parser = ConfigParser()
    parser.read_config(str(BUNDLE_ROOT / "configs" / "inference.json"))
    parser.update(overrides)
    network, device = parser.get_parsed_content("network"), parser.get_parsed_content("device")
    try:
        Checkpoint.load_objects({"model": network}, torch.load(checkpoint, map_location=device, weights_only=True))
    except Exception as error:
        raise ValueError(f"{checkpoint}: not a checkpoint of this bundle's network ({type(error).__name__}: {error}).") from error
    return InferenceBundle(
        network=network.eval(),
        preprocessing=parser.get_parsed_content("preprocessing"),
        class_names=list(parser.get_parsed_content("class_names")),
        percentiles=list(parser.get_parsed_content("percentiles")),
        device=device,
    )
