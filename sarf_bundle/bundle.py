"""Running the bundle's own configs from Python, as ``python -m monai.bundle run`` does."""

from __future__ import annotations

from pathlib import Path

from monai.bundle import run

__all__ = ["BUNDLE_ROOT", "run_bundle"]

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
