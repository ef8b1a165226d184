"""Command line of sarf_bundle: ``python -m sarf_bundle <command> --help``."""

from __future__ import annotations

from pathlib import Path

__all__ = ["demo", "synth", "montage", "main"]


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


def demo(
    out: str = "demo",
    subjects: int = 24,
    epochs: int = 8,
    image_size: int = 96,
    voxel_scale: float = 2.0,
    learning_rate: float = 1e-4,
    workers: int = 2,
    seed: int = 0,
) -> None:
    """Simulate data, train baseline and SaRF, evaluate both on whole-head test volumes, infer a folder.

    Args:
        out: output folder.
        subjects: simulated subjects (six sequences each); a quarter are the test split.
        epochs: training epochs per method.
        image_size: slice size in pixels.
        voxel_scale: simulator voxel-size factor (2 = coarser voxels, smaller volumes).
        learning_rate: RMSprop learning rate.
        workers: parallel processes.
        seed: seed of simulation and training.
    """
    from .demo import run_demo

    summary = run_demo(out, subjects, epochs, image_size, voxel_scale, learning_rate, workers, seed)
    print("\nTest set (whole-head volumes, never skull-stripped), volume level:")
    print(f"{'method':10s} {'accuracy':>9s} {'mean AUC':>9s} {'mean F1':>8s} {'OvR@0.5 acc':>12s} {'OvR@0.5 F1':>11s} {'ECE':>6s}")
    for method, m in summary["test"].items():
        print(
            f"{method:10s} {m['accuracy']:9.3f} {m['mean_auc']:9.3f} {m['mean_f1']:8.3f} "
            f"{m['ovr_threshold_mean_accuracy']:12.3f} {m['ovr_threshold_mean_f1']:11.3f} {m['ece']:6.3f}"
        )
    print("\nSeconds:", ", ".join(f"{k} {v}" for k, v in summary["seconds"].items()))
    print("\nWritten:")
    for name, path in summary["outputs"].items():
        print(f"  {name:18s} {path}")
    print(f"  {'summary':18s} {Path(out).resolve() / 'summary.json'}")


def main() -> None:
    import fire

    fire.Fire({"demo": demo, "synth": synth, "montage": montage}, name="python -m sarf_bundle")


if __name__ == "__main__":
    main()
