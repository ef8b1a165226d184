"""The bundle as a MONAI Label classification task: one volume in, its sequence and six probabilities out.

MONAI Label's stock ``BundleInferTask`` does not fit this bundle: it feeds the preprocessed ``(7, H, W)``
slice stack to the network as one 7-channel image, while the network classifies each slice on its own and
the volume's probabilities are the mean of the slices' softmax; and its restore step, meant for
segmentation masks, fails on a class vector. :class:`SequenceInferTask` is a ``BasicInferTask`` that takes
the network, the preprocessing, the inferer, the class names and (when the config has one) the temperature
from ``configs/inference.json`` (through :func:`~sarf_bundle.bundle.read_config`, MONAI's ``ConfigParser`` as
``python -m monai.bundle run`` uses it),
turns the stack into slices with :class:`~sarf_bundle.data.SliceBatch` and averages their softmax with
:func:`~sarf_bundle.data.volume_probabilities`, as the bundle's evaluation and inference do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.transforms import Compose
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from sarf_bundle.bundle import checkpoint_settings, config_content, read_config
from sarf_bundle.data import SliceBatch, error_message, volume_probabilities
from sarf_bundle.prediction import decide

__all__ = ["ImageError", "SequenceInferTask"]


class ImageError(ValueError):
    """An image that cannot be read or preprocessed; the message names the file and the problem."""


class SequenceInferTask(BasicInferTask):
    """Classify a brain MRI volume into the bundle's sequences with the bundle's inference config.

    The result (the JSON that ``POST /infer/<model>`` returns) is MONAI Label's classification result,
    ``prediction``: ``[{"idx": 0, "label": "DWI", "score": p}, ...]``, with the bundle's decision about the volume
    added (:meth:`writer`): the same sequence, confidence, status and message as the volume's row in the CSV of
    folder inference. MONAI Label adds ``label_names`` and ``latencies``. The config's ``ckpt_dir`` is the checkpoint's folder, so that files kept
    beside the checkpoint (``calibration.json``) follow ``model_path``.

    Args:
        config_file: the bundle's ``configs/inference.json``.
        model_path: the checkpoint (``models/model.pt``: ``{"model": state dict, "preprocessing": settings}``); the
            preprocessing runs with the settings it was trained with.
        bundle_root: the value of the config's ``bundle_root``.
        description: shown by ``GET /info/``; by default the one of the config's ``metadata.json`` when there is one.

    Raises:
        FileNotFoundError: when the config file or the checkpoint does not exist.
        ValueError: when the checkpoint does not record the preprocessing it was trained with.
    """

    def __init__(self, config_file: str | Path, model_path: str | Path, bundle_root: str | Path, description: str | None = None) -> None:
        config_file, model_path = Path(config_file), Path(model_path)
        if not config_file.is_file():
            raise FileNotFoundError(f"Inference config {config_file} does not exist.")
        if not model_path.is_file():
            raise FileNotFoundError(
                f"Checkpoint {model_path} does not exist; train one (`python -m monai.bundle run training ...`) "
                "or name one with `--conf model_path PATH`."
            )
        self.parser = read_config(
            config_file,
            bundle_root=str(bundle_root),
            ckpt_dir=str(model_path.parent),  # files kept beside the checkpoint follow it
            **checkpoint_settings(model_path),  # the preprocessing the model was trained with
        )
        if description is None:
            description = self._metadata_description(config_file.parent / "metadata.json")
        self.class_names = [str(c) for c in self.parser.get_parsed_content("class_names")]
        self.n_slices = int(self.parser.get_parsed_content("n_slices"))
        super().__init__(
            path=str(model_path),
            network=self.parser.get_parsed_content("network_def"),
            type=InferType.CLASSIFICATION,
            labels={name: index for index, name in enumerate(self.class_names)},
            dimension=3,
            description=description,
            load_strict=True,
        )

    @staticmethod
    def _metadata_description(metadata: Path) -> str:
        """The ``task`` of the bundle's ``metadata.json``, or a fixed text where there is none."""
        task = config_content(metadata).get("task") if metadata.is_file() else None
        return str(task) if task else "Brain MRI sequence classification"

    def pre_transforms(self, data: dict | None = None) -> Sequence[Callable]:
        """The transforms of the config's ``preprocessing`` (file path to a ``(S, H, W)`` slice stack)."""
        preprocessing = self.parser.get_parsed_content("preprocessing")
        return list(preprocessing.transforms) if isinstance(preprocessing, Compose) else list(preprocessing)

    def post_transforms(self, data: dict | None = None) -> Sequence[Callable]:
        """None: the inferer already leaves the volume's probabilities (no restore step for a class vector)."""
        return []

    def inferer(self, data: dict | None = None) -> Inferer:
        """The config's ``inferer``."""
        return self.parser.get_parsed_content("inferer")

    def run_pre_transforms(self, data: dict[str, Any], transforms: Sequence[Callable]) -> dict[str, Any]:
        """Run the preprocessing; a failure becomes an :class:`ImageError` naming the file and the problem.

        Raises:
            ImageError: when the image cannot be read or preprocessed.
        """
        try:
            return super().run_pre_transforms(data, transforms)
        except Exception as error:
            problem = error_message(error)
            raise ImageError(f"{data.get('image_path', data.get(self.input_key))}: cannot be classified ({problem})") from error

    def run_inferer(self, data: dict[str, Any], convert_to_batch: bool = True, device: str = "cuda") -> dict[str, Any]:
        """Classify the slices of the stack and average their softmax into the volume's probabilities.

        Args:
            data: the preprocessed request; ``data["image"]`` is the ``(S, H, W)`` slice stack.
            convert_to_batch: unused (the stack is always one volume).
            device: where the network runs.

        Returns:
            ``data`` with ``data["pred"]``: the ``(K,)`` probabilities of the volume.

        Raises:
            ImageError: when the stack does not have the config's number of slices.
        """
        stack = torch.as_tensor(data[self.input_key]).as_subclass(torch.Tensor).float()
        if stack.ndim != 3 or stack.shape[0] != self.n_slices:
            raise ImageError(f"{data.get('image_path')}: preprocessing gave shape {tuple(stack.shape)}, not ({self.n_slices}, H, W).")
        network = self._get_network(device, data)
        slices, _ = SliceBatch()({"image": stack[None]}, device=torch.device(device))
        with torch.no_grad():
            logits = self.inferer(data)(slices, network)
        probabilities = volume_probabilities(logits, self.n_slices, self.temperature())[0].cpu()
        data[self.output_label_key] = MetaTensor(probabilities)  # MONAI Label's ClassificationWriter expects a MetaTensor
        return data

    def temperature(self) -> float:
        """The config's ``temperature`` (read again for every request), or 1.0 where the config has none."""
        return self._config_number("temperature", 1.0)

    def confidence_threshold(self) -> float:
        """The config's ``confidence_threshold``, or 0.0 (never ``uncertain`` for confidence) where it has none."""
        return self._config_number("confidence_threshold", 0.0)

    def _config_number(self, key: str, default: float) -> float:
        """A number of the config, parsed again on every call (so a new ``calibration.json`` counts), or ``default``."""
        if self.parser.get(key) is None:
            return default
        return float(self.parser.get_parsed_content(key, lazy=False))

    def writer(self, data: dict[str, Any], extension: str | None = None, dtype: str | None = None) -> tuple[None, dict[str, Any]]:
        """MONAI Label's classification result, with the bundle's decision about the volume added.

        The decision is :func:`sarf_bundle.prediction.decide`'s, as in folder inference's CSV: ``sequence``,
        ``confidence``, ``probabilities`` (by name), ``status``, ``message`` (the preprocessing's note and the reasons
        for ``uncertain``), ``bids_name``, ``header_sequence`` and ``header_agrees``.
        """
        _, result = super().writer(data, extension, dtype)
        prediction = decide(
            str(data.get("image_path", data.get(self.input_key))), [float(p) for p in data[self.output_label_key]],
            self.class_names, self.confidence_threshold(), note=str(data.get("note") or ""),
            warning=str(data.get("warning") or ""), header=data.get("header"),
        )  # fmt: skip
        result.update(prediction.as_dict())
        return None, result
