"""Command line of sarf_bundle: ``python -m sarf_bundle <command> --help``."""

from __future__ import annotations

from pathlib import Path

__all__ = ["synth", "main"]


def synth(
    out: str,
    subjects: int = 30,
    seed: int = 0,
    workers: int = 1,
    test_fraction: float = 0.2,
    folds: int = 5,
    voxel_scale: float = 1.0,
    lesions: bool = True,
) -> str:
    """Simulate whole-head brain MRI of N subjects in six sequences, with brain masks and a datalist.

    Args:
        out: output folder.
        subjects: number of subjects (each gets DWI, FLAIR, SWI, T1, T1Gd and T2).
        seed: dataset seed; the same seed writes the same files.
        workers: parallel processes.
        test_fraction: share of subjects in the subject-disjoint ``testing`` split.
        folds: cross-validation folds over the ``training`` split.
        voxel_scale: factor on voxel sizes; 1 is clinical resolution, 2 gives 8x smaller volumes.
        lesions: whether subjects may have lesions.

    Returns:
        Path of the written ``datalist.json``.
    """
    from .simulation.dataset import synthesize

    return str(synthesize(out, subjects, seed, workers, test_fraction, folds, voxel_scale, lesions))


def main() -> None:
    import fire

    fire.Fire({"synth": synth}, name="python -m sarf_bundle")


if __name__ == "__main__":
    main()
