"""A MONAI Label app that serves this bundle as a classification task (DWI, FLAIR, SWI, T1, T1Gd, T2).

MONAI Label 0.8.5 needs numpy < 2 and pydicom < 3, so the server runs in its own virtual environment;
:mod:`sarf_bundle.label_app.environment` creates it. The app itself (``main.py``, loaded by
``monailabel start_server --app sarf_bundle/label_app``) and its task (:mod:`sarf_bundle.label_app.task`)
import MONAI Label and so only import in that environment; this package's ``__init__`` imports nothing.
"""

from __future__ import annotations
