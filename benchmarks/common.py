"""Shared helpers of the benchmarks: the bundle's configs, interleaved timing, medians and verdicts.

Every benchmark compares two things measured side by side in one run: it alternates them (A B, B A,
A B, ...) so that load from other jobs on the machine hits both alike, and reports a ratio of the two.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from ignite.handlers import Checkpoint
from monai.bundle import ConfigParser

from sarf_bundle.bundle import read_config

BUNDLE_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = BUNDLE_ROOT / "configs"
DATA_DIR = BUNDLE_ROOT / "data" / "benchmarks"
"""Where the benchmarks simulate their data when no folder is given (``data/`` is not in git)."""


def bundle_parser(config: str = "train.json", **overrides) -> ConfigParser:
    """The parsed-on-demand config of ``configs/<config>`` with keys overridden, as ``monai.bundle run`` builds it.

    Args:
        config: a config file of ``configs/`` by name, or the path of another config file
            (:func:`sarf_bundle.bundle.read_config`).
        **overrides: config keys to override, e.g. ``alpha=0`` or ``dataset_dir="/tmp/sim"``.
    """
    return read_config(config, **overrides)


def simulated(folder: str | Path | None, name: str, subjects: int, voxel_scale: float = 1.0, **split) -> Path:
    """A simulated dataset: ``folder`` if given, else ``data/benchmarks/<name>``, simulated there first if it has no datalist.

    Args:
        folder: an existing dataset folder (with ``datalist.json`` for training benchmarks), or None.
        name: the folder's name under ``data/benchmarks`` when ``folder`` is None.
        subjects: subjects to simulate (6 volumes each), as ``python -m sarf_bundle synth --subjects``.
        voxel_scale: 1 for clinical resolution, 2 for a quick low-resolution set.
        **split: ``folds`` and ``test_fraction`` of ``synth``.
    """
    if folder is not None:
        return Path(folder)
    from sarf_bundle.simulation.dataset import synthesize

    folder = DATA_DIR / name
    if not (folder / "datalist.json").is_file():
        print(f"simulating {subjects} subjects into {folder} (once) ...", flush=True)
        synthesize(folder, subjects=subjects, seed=0, workers=os.cpu_count() or 1, voxel_scale=voxel_scale, progress=False, **split)
    return folder


def volume_files(folder: str | Path) -> list[Path]:
    """The NIfTI volumes of a folder (not its brain masks), sorted."""
    return sorted(p for p in Path(folder).iterdir() if p.name.endswith((".nii", ".nii.gz")) and "_brainmask.nii" not in p.name)


def inference_parts(config: str, model: str | None, **overrides) -> tuple[ConfigParser, torch.nn.Module, Callable]:
    """The network (checkpoint loaded, evaluation mode) and preprocessing of an inference config, as the bundle builds them.

    Args:
        config: ``inference.json`` or the path of another inference config.
        model: a ``model.pt``; None for ``models/model.pt`` if it exists, else the untrained network
            (the speed does not depend on the weights).
        **overrides: config keys to override.
    """
    parser = bundle_parser(config, **overrides)
    network = parser.get_parsed_content("network")
    model = model or (str(BUNDLE_ROOT / "models" / "model.pt") if (BUNDLE_ROOT / "models" / "model.pt").is_file() else None)
    if model is not None:
        Checkpoint.load_objects({"model": network}, torch.load(model, map_location=parser.get_parsed_content("device"), weights_only=True))
    return parser, network.eval(), parser.get_parsed_content("preprocessing")


def interleave(functions: Mapping[str, Callable[[], object]], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Time each function ``rounds`` times, alternating them and reversing the order every round.

    Args:
        functions: name to a function without arguments; one call is one timed sample.
        rounds: timed calls of each function.
        warmup: untimed calls of each function first.

    Returns:
        Name to the list of seconds per call.
    """
    names = list(functions)
    for _ in range(warmup):
        for name in names:
            functions[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            tick = time.perf_counter()
            functions[name]()
            times[name].append(time.perf_counter() - tick)
    return times


def median(values: list[float]) -> float:
    """The median of ``values``."""
    return statistics.median(values)


def verdict(ratio: float, goal: float, at_most: bool = True) -> str:
    """``PASS`` when ``ratio`` meets the goal (``<= goal`` with ``at_most``, else ``>= goal``), else ``FAIL``."""
    return "PASS" if (ratio <= goal if at_most else ratio >= goal) else "FAIL"


def machine() -> str:
    """One line on where the benchmark runs: CPU cores, torch threads, device, load average."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    return (
        f"{platform.machine()} with {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"device {device}, load average {load}"
    )
