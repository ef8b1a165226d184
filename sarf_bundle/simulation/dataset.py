"""A simulated dataset: subjects in six sequences, brain masks, and a MONAI datalist with folds.

Every subject gets one volume per sequence, written as ``<subject>_<sequence>.nii.gz`` with its
ground-truth brain mask ``<subject>_<sequence>_brainmask.nii.gz``. Subjects are split into a
``testing`` set and a ``training`` pool whose subjects carry a ``fold`` (0 to ``folds - 1``), so
folds and test set never share a subject. Each subject draws from its own seed
(``(seed, subject index)``), so the output does not depend on the number of workers, and a
finished subject (its record file written last, atomically) is skipped when the command is run again
with the same settings.
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .. import SEQUENCES
from ..files import atomic_write_text, write_nifti
from .acquisition import Volume, acquire, head_pose
from .anatomy import build_head
from .sequences import sample_protocol
from .tissues import jitter_properties

__all__ = ["simulate_subject", "split_subjects", "synthesize", "synthesize_unknown"]


def simulate_subject(seed: int, index: int, voxel_scale: float = 1.0, lesions: bool = True) -> dict[str, Volume]:
    """Simulate one subject in all six sequences.

    Args:
        seed: dataset seed.
        index: subject index; ``(seed, index)`` seeds everything about the subject.
        voxel_scale: factor on voxel sizes (see :func:`sample_protocol`).
        lesions: whether lesions may be drawn.

    Returns:
        The subject's volumes by sequence (one session: one field strength and head pose).
    """
    rng = np.random.default_rng([seed, index])
    field_t = 3.0 if rng.random() < 0.73 else 1.5
    head = build_head(rng, lesions=lesions)
    props = jitter_properties(rng)
    pose = head_pose(rng)
    t1_kind = sample_protocol("T1", field_t, rng).kind
    volumes = {}
    for sequence in SEQUENCES:
        kind = None
        if sequence == "T1" or (sequence == "T1Gd" and rng.random() < 0.7):
            kind = t1_kind
        protocol = sample_protocol(sequence, field_t, rng, t1_kind=kind, voxel_scale=voxel_scale)
        volumes[sequence] = acquire(head, props, protocol, rng, pose)
    return volumes


def split_subjects(n_subjects: int, seed: int, test_fraction: float, folds: int) -> list[int | None]:
    """Fold of each subject (None for the test set), from a seeded shuffle.

    Raises:
        ValueError: if the split leaves fewer training subjects than folds.
    """
    order = np.random.default_rng([seed, 2**31 - 1]).permutation(n_subjects)
    n_test = int(round(test_fraction * n_subjects))
    if n_subjects - n_test < folds:
        raise ValueError(
            f"{n_subjects} subjects with test_fraction={test_fraction} leave {n_subjects - n_test} for "
            f"training, fewer than folds={folds}; simulate more subjects."
        )
    assignment: list[int | None] = [None] * n_subjects
    for rank, subject in enumerate(order[n_test:]):
        assignment[subject] = rank % folds
    return assignment


def _subject_id(index: int) -> str:
    return f"sub-{index:04d}"


def _run_subject(out_dir: str, seed: int, index: int, voxel_scale: float, lesions: bool) -> list[dict]:
    out = Path(out_dir)
    record = out / f".{_subject_id(index)}.json"
    params = {"seed": seed, "voxel_scale": voxel_scale, "lesions": lesions}
    if record.exists():
        done = json.loads(record.read_text())
        if done["params"] == params:
            return done["entries"]
    volumes = simulate_subject(seed, index, voxel_scale, lesions)
    entries = []
    for sequence, volume in volumes.items():
        stem = f"{_subject_id(index)}_{sequence}"
        write_nifti(volume.image, volume.affine, out / f"{stem}.nii.gz", volume.protocol.storage)
        write_nifti(volume.brain_mask, volume.affine, out / f"{stem}_brainmask.nii.gz", "uint8")
        protocol = {k: v for k, v in asdict(volume.protocol).items() if k != "sequence"}
        entries.append(
            {
                "image": f"{stem}.nii.gz",
                "brain_mask": f"{stem}_brainmask.nii.gz",
                "label": SEQUENCES.index(sequence),
                "sequence": sequence,
                "subject": _subject_id(index),
                "acquisition": {k: (round(v, 3) if isinstance(v, float) else v) for k, v in protocol.items()},
            }
        )
    atomic_write_text(record, json.dumps({"params": params, "entries": entries}))
    return entries


def synthesize(
    out: str | Path,
    subjects: int = 30,
    seed: int = 0,
    workers: int = 1,
    test_fraction: float = 0.2,
    folds: int = 5,
    voxel_scale: float = 1.0,
    lesions: bool = True,
    progress: bool = True,
) -> Path:
    """Simulate a dataset and write its datalist.

    Args:
        out: output folder (created).
        subjects: number of subjects; each gets all six sequences.
        seed: dataset seed; the same seed gives the same files.
        workers: parallel processes.
        test_fraction: share of subjects in the ``testing`` split.
        folds: cross-validation folds over the ``training`` pool.
        voxel_scale: factor on voxel sizes (1 = clinical resolution).
        lesions: whether subjects may have lesions.
        progress: show a progress bar.

    Returns:
        Path of ``datalist.json`` (MONAI format: ``training`` with ``fold``, ``testing``, ``labels``).

    Raises:
        ValueError: for a non-positive number of subjects or workers, or a split without enough
            training subjects.
    """
    if subjects < 1 or workers < 1:
        raise ValueError(f"subjects and workers must be positive, got subjects={subjects}, workers={workers}.")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    assignment = split_subjects(subjects, seed, test_fraction, folds)
    results: dict[int, list[dict]] = {}
    bar = tqdm(total=subjects, desc="simulating subjects", unit="subject", disable=not progress)
    args = [(str(out), seed, i, voxel_scale, lesions) for i in range(subjects)]
    if workers == 1:
        for a in args:
            results[a[2]] = _run_subject(*a)
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(_run_subject, *a): a[2] for a in args}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                bar.update()
    bar.close()
    datalist: dict = {
        "name": "sarf_bundle simulated brain MRI",
        "seed": seed,
        "labels": {str(i): s for i, s in enumerate(SEQUENCES)},
        "training": [],
        "testing": [],
    }
    for index in range(subjects):
        fold = assignment[index]
        for entry in results[index]:
            if fold is None:
                datalist["testing"].append(entry)
            else:
                datalist["training"].append({**entry, "fold": fold})
    path = out / "datalist.json"
    atomic_write_text(path, json.dumps(datalist, indent=1))
    return path


def synthesize_unknown(out: str | Path, subjects: int = 6, seed: int = 1000, voxel_scale: float = 1.0) -> list[Path]:
    """Simulate volumes of a sequence outside the six classes: proton-density weighted turbo spin echo.

    Each subject is a new head (seeded by ``(seed, index)``) scanned with a T2-like TSE protocol whose TR
    (2500-4000 ms) and TE (10-20 ms) make it proton-density weighted: a contrast the classifier never saw,
    to measure how it treats inputs from no known class. No brain masks, no datalist.

    Returns:
        The written files, ``<out>/unknown-<index>_PD.nii.gz``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(subjects):
        rng = np.random.default_rng([seed, index])
        field_t = 3.0 if rng.random() < 0.73 else 1.5
        head, props, pose = build_head(rng, lesions=True), jitter_properties(rng), head_pose(rng)
        t2 = sample_protocol("T2", field_t, rng, voxel_scale=voxel_scale)
        protocol = replace(t2, sequence="PD", tr=float(rng.uniform(2500, 4000)), te=float(rng.uniform(10, 20)))
        volume = acquire(head, props, protocol, rng, pose)
        path = out / f"unknown-{index:02d}_PD.nii.gz"
        write_nifti(volume.image, volume.affine, path, protocol.storage)
        paths.append(path)
    return paths
