"""The MONAI Label app: ``monailabel start_server --app sarf_bundle/label_app --studies FOLDER --conf models NAME``.

It serves one model, this bundle, as a classification task (:class:`~sarf_bundle.label_app.task.SequenceInferTask`).
Settings (``--conf KEY VALUE``):

- ``models``: the name the model is served under (default ``sarf_sequence``); ``/infer/<name>`` runs it.
- ``bundle_root``: the bundle folder with ``configs/inference.json`` (default: this repository).
- ``model_path``: the checkpoint (default: ``<bundle_root>/models/model.pt``).

The app loads the bundle from disk and never downloads one, so it needs no ``zoo_source`` setting
(``--conf zoo_source local`` is accepted and changes nothing). It has no trainer.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferTask

from sarf_bundle.bundle import config_content
from sarf_bundle.label_app.task import ImageError, SequenceInferTask

__all__ = ["DEFAULT_MODEL_NAME", "SequenceLabelApp"]

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "sarf_sequence"
DEFAULT_BUNDLE_ROOT = Path(__file__).resolve().parents[2]


class SequenceLabelApp(MONAILabelApp):
    """MONAI Label app serving the bundle's sequence classifier.

    Args:
        app_dir: this folder (given by ``--app``).
        studies: the image folder (given by ``--studies``).
        conf: the ``--conf`` settings (see the module docstring).

    Raises:
        ValueError: when ``models`` names more than one model.
        FileNotFoundError: when the bundle's inference config or the checkpoint does not exist.
    """

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        names = [n.strip() for n in conf.get("models", DEFAULT_MODEL_NAME).split(",") if n.strip()]
        if len(names) != 1:
            raise ValueError(f"--conf models must name one model (the name this bundle is served under), got {conf.get('models')!r}.")
        self.model_name = names[0]
        self.bundle_root = Path(conf.get("bundle_root", DEFAULT_BUNDLE_ROOT)).expanduser().resolve()
        self.model_path = Path(conf.get("model_path", self.bundle_root / "models" / "model.pt")).expanduser().resolve()
        metadata_file = self.bundle_root / "configs" / "metadata.json"
        metadata = config_content(metadata_file) if metadata_file.is_file() else {}
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name=metadata.get("name", "sarf_bundle"),
            description=metadata.get("task", "Brain MRI sequence classification"),
            version=metadata.get("version", ""),
        )

    def init_infers(self) -> dict[str, InferTask]:
        """The one model: the bundle's inference config with its checkpoint."""
        task = SequenceInferTask(
            config_file=self.bundle_root / "configs" / "inference.json", model_path=self.model_path, bundle_root=self.bundle_root
        )
        logger.info(f"+++ Adding Inferer:: {self.model_name} => {self.model_path} (bundle {self.bundle_root})")
        return {self.model_name: task}

    def infer(self, request: dict[str, Any], datastore: Any = None) -> dict[str, Any]:
        """Run the model, answering clear HTTP errors where MONAI Label would answer 500 ``Internal Server Error``.

        Raises:
            HTTPException: 404 for an unknown model or image id; 422, its detail naming the file and the
                problem, when the image cannot be read or preprocessed.
        """
        image = request.get("image")
        store = datastore if datastore else self.datastore()
        if isinstance(image, str) and image and not os.path.exists(image) and not store.get_image_uri(image):
            raise HTTPException(status_code=404, detail=f"Image {image!r} is not in the datastore {self.studies}.")
        try:
            return super().infer(request, datastore)
        except MONAILabelException as error:
            if error.error != MONAILabelError.INVALID_INPUT:  # an unknown model or none given
                raise
            raise HTTPException(status_code=404, detail=error.msg) from error
        except ImageError as error:
            logger.error(str(error))
            raise HTTPException(status_code=422, detail=str(error)) from error
