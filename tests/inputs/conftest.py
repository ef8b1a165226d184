"""Fixtures of the input tests: a random-weight bundle, folders of links to simulated volumes, the inference command."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from sarf_bundle.bundle import BUNDLE_ROOT, save_checkpoint
from sarf_bundle.networks import SaliencyResNet

SIZE = 32
"""Slice size of the random-weight bundle; the test modules pass the same ``image_size``."""


@pytest.fixture(scope="module")
def bundle_root(tmp_path_factory) -> Path:
    """A bundle folder whose ``models/model.pt`` is a seeded random-weight network for ``SIZE`` px slices."""
    root = tmp_path_factory.mktemp("bundle")
    (root / "models").mkdir()
    torch.manual_seed(0)
    save_checkpoint(SaliencyResNet(), root / "models" / "model.pt", image_size=SIZE)
    return root


@pytest.fixture
def linked_folder(simulated_dataset, tmp_path) -> Callable[[int], Path]:
    """``make(n)``: a folder of ``n`` symbolic links, under distinct names, to the simulated volumes in turn."""

    def make(n: int) -> Path:
        folder = tmp_path / f"links{n}"
        folder.mkdir()
        sources = sorted(p for p in simulated_dataset.parent.glob("*.nii.gz") if "_brainmask" not in p.name)
        for i in range(n):
            os.symlink(sources[i % len(sources)], folder / f"v{i:02d}.nii.gz")
        return folder

    return make


@pytest.fixture
def inference_command(bundle_root) -> Callable[..., list[str]]:
    """``command(folder, output_csv, *extra)``: folder inference as a user starts it, one input per batch, no workers."""

    def command(folder: Path, output_csv: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(BUNDLE_ROOT / "configs" / "inference.json"),
                "--bundle_root", str(bundle_root), "--dataset_dir", str(folder), "--output_csv", str(output_csv),
                "--image_size", str(SIZE), "--batch_size", "1", "--num_workers", "0", *extra]  # fmt: skip

    return command
