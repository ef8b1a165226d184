"""Shared fixtures: a small simulated dataset, generated once per test session."""

from __future__ import annotations

import pytest

from sarf_bundle.simulation.dataset import synthesize


@pytest.fixture(scope="session")
def simulated_dataset(tmp_path_factory):
    """Five subjects at coarse resolution: 3 in the training pool (folds 0, 1), 2 in the test split."""
    out = tmp_path_factory.mktemp("simulated")
    return synthesize(out, subjects=5, seed=7, workers=2, test_fraction=0.4, folds=2, voxel_scale=3.0, progress=False)
