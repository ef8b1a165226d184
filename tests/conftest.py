"""Shared fixtures: a small simulated dataset, generated once per test session; zennit and Quantus; Colin27."""

from __future__ import annotations

import importlib
import os
import sys
import types
from pathlib import Path
from types import ModuleType

import pytest
from torch import nn

from sarf_bundle.simulation.dataset import synthesize


@pytest.fixture(scope="session")
def simulated_dataset(tmp_path_factory):
    """Five subjects at coarse resolution: 3 in the training pool (folds 0, 1), 2 in the test split."""
    out = tmp_path_factory.mktemp("simulated")
    return synthesize(out, subjects=5, seed=7, workers=2, test_fraction=0.4, folds=2, voxel_scale=3.0, progress=False)


def _import_past_torchvision(name: str) -> ModuleType:
    """Import ``zennit`` or ``quantus`` (which imports zennit), even where torchvision cannot load.

    zennit's package ``__init__`` imports its torchvision canonizers, which import
    ``torchvision.models.resnet``. PyPI has no CPU build of torchvision for torch 2.13, and the CUDA
    build installed as a dependency of the skull strippers fails to load its operators on a machine
    without CUDA. Only there, a stand-in ``torchvision.models.resnet`` with the two class names that
    zennit's import needs takes its place; zennit's torchvision canonizers are not used by the tests, and the stand-in is gone again
    from ``sys.modules`` once the import is done.
    """
    try:
        import torchvision  # noqa: F401
    except (ImportError, OSError, RuntimeError):
        for module in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[module]
        package, models, resnet = (types.ModuleType(n) for n in ("torchvision", "torchvision.models", "torchvision.models.resnet"))
        resnet.BasicBlock = type("BasicBlock", (nn.Module,), {})
        resnet.Bottleneck = type("Bottleneck", (nn.Module,), {})
        package.models, models.resnet = models, resnet
        stand_in = {"torchvision": package, "torchvision.models": models, "torchvision.models.resnet": resnet}
        sys.modules.update(stand_in)
        try:
            return importlib.import_module(name)
        finally:  # later imports of torchvision see the real package again
            for module in stand_in:
                del sys.modules[module]
    return importlib.import_module(name)


@pytest.fixture(scope="session")
def zennit() -> ModuleType:
    """The zennit package (an independent LRP implementation)."""
    return _import_past_torchvision("zennit")


@pytest.fixture(scope="session")
def quantus() -> ModuleType:
    """The Quantus package (reference ROAD implementation)."""
    return _import_past_torchvision("quantus")


REQUIRE_MRICRON = "SARF_REQUIRE_MRICRON"
"""Set to ``1`` (as ``.ci/run`` does) to make the tests that need Debian's ``mricron-data`` fail without it, not skip."""
COLIN27_FILES = ("ch2.nii.gz", "ch2bet.nii.gz", "ch2better.nii.gz")


@pytest.fixture(scope="session")
def mricron_installed() -> bool:
    """Whether Debian's ``mricron-data`` has put Colin27 (:data:`COLIN27_FILES`) where the bundle looks for it.

    Where ``SARF_REQUIRE_MRICRON=1``, a missing file fails every test that uses this fixture (or
    :func:`mricron_templates`) instead of letting it skip or run without Colin27.
    """
    from sarf_bundle.demo import COLIN27

    missing = [str(COLIN27 / name) for name in COLIN27_FILES if not (COLIN27 / name).is_file()]
    if missing and os.environ.get(REQUIRE_MRICRON) == "1":
        absent = f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} absent"
        pytest.fail(f"{REQUIRE_MRICRON}=1, but {absent}: install Debian's mricron-data (apt-get install mricron-data)", pytrace=False)
    return not missing


@pytest.fixture(scope="session")
def mricron_templates(mricron_installed) -> Path:
    """The folder of Colin27 (``ch2``, ``ch2bet``, ``ch2better``); the test skips without it (fails with ``SARF_REQUIRE_MRICRON=1``)."""
    from sarf_bundle.demo import COLIN27

    if not mricron_installed:
        pytest.skip(
            f"Colin27 ({', '.join(COLIN27_FILES)}) is absent from {COLIN27}: install Debian's mricron-data "
            f"(apt-get install mricron-data); set {REQUIRE_MRICRON}=1 to make this a failure"
        )
    return COLIN27
