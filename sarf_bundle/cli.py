"""Command line of sarf_bundle: ``python -m sarf_bundle <command> --help``."""

from __future__ import annotations

from pathlib import Path

__all__ = ["synth", "montage", "main"]


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


def montage(datalist: str, out: str, subjects: int = 2, split: str = "testing", fraction: float = 0.55) -> str:
    """Save a PNG of an axial slice per subject (rows) and sequence (columns) of a datalist.

    Args:
        datalist: datalist JSON written by ``synth``.
        out: PNG file.
        subjects: number of subjects shown.
        split: ``training`` or ``testing``.
        fraction: cranio-caudal position of the slice (0 bottom, 1 top of each volume).

    Returns:
        Path of the PNG.
    """
    from .visualize import datalist_montage

    return str(datalist_montage(datalist, out, subjects, split, fraction))


def main() -> None:
    import fire

    fire.Fire({"synth": synth, "montage": montage}, name="python -m sarf_bundle")


if __name__ == "__main__":
    main()
