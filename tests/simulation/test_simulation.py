"""The simulator: tissue contrasts measured in generated volumes, geometry, determinism, splits."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd

from sarf_bundle import SEQUENCES
from sarf_bundle.simulation.acquisition import acquire, tissue_labels
from sarf_bundle.simulation.anatomy import build_head
from sarf_bundle.simulation.dataset import simulate_subject, split_subjects, synthesize
from sarf_bundle.simulation.sequences import sample_protocol
from sarf_bundle.simulation.tissues import PROPERTIES, Tissue

SEED = 11


@pytest.fixture(scope="module")
def head():
    """One head with an infarct (restricted diffusion) painted in deep white matter."""
    model = build_head(np.random.default_rng(SEED))
    mni = model.canvas.mni
    frac = np.clip((9.0 - np.sqrt((mni[0] - 28) ** 2 + (mni[1] + 10) ** 2 + (mni[2] - 25) ** 2)) / 1.5 + 0.5, 0, 1)
    full = tuple(slice(0, n) for n in model.canvas.shape)
    model.tissues.paint(full, {Tissue.INFARCT: frac.astype(np.float32)})
    return model, tissue_labels(model)


def _medians(head_and_labels, protocol, seed=0):
    model, labels = head_and_labels
    rng = np.random.default_rng(seed)
    volume = acquire(model, PROPERTIES, replace(protocol, bias=0.0, ghost=0.0, ringing=0.0), rng, labels=labels)
    return {t: float(np.median(volume.image[volume.labels == t])) for t in Tissue if (volume.labels == t).sum() > 20}


def _protocol(sequence, kind=None, field_t=3.0, seed=0):
    return sample_protocol(sequence, field_t, np.random.default_rng(seed), t1_kind=kind, voxel_scale=1.5)


@pytest.mark.parametrize("kind", ["mprage", "spgr", "se"])
def test_t1_contrast(head, kind):
    m = _medians(head, _protocol("T1", kind))
    assert m[Tissue.WM] > m[Tissue.GM] > m[Tissue.CSF]
    assert m[Tissue.FAT] > m[Tissue.WM]


@pytest.mark.parametrize("kind", ["mprage", "spgr", "se"])
def test_t1gd_differs_from_t1_only_where_contrast_reaches(head, kind):
    protocol = _protocol("T1", kind)
    pre = _medians(head, protocol)
    post = _medians(head, replace(protocol, contrast=True, sequence="T1Gd"))
    ratio = {t: (post[t] / post[Tissue.WM]) / (pre[t] / pre[Tissue.WM]) for t in pre}
    for enhancing in (Tissue.VEIN, Tissue.DURA, Tissue.MUSCLE, Tissue.EXTRAOCULAR_MUSCLE):
        assert ratio[enhancing] > 1.15, (enhancing, ratio[enhancing])
    for parenchyma in (Tissue.GM, Tissue.INFARCT):
        assert abs(ratio[parenchyma] - 1.0) < 0.05, (parenchyma, ratio[parenchyma])


def test_t2_contrast(head):
    m = _medians(head, _protocol("T2"))
    assert m[Tissue.CSF] > m[Tissue.GM] > m[Tissue.WM]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_flair_contrast(head, seed):
    protocol = _protocol("FLAIR", seed=seed)
    m = _medians(head, protocol)
    assert m[Tissue.CSF] < min(m[Tissue.GM], m[Tissue.WM])
    assert m[Tissue.GM] > m[Tissue.WM]


def test_dwi_contrast(head):
    m = _medians(head, _protocol("DWI"))
    assert m[Tissue.CSF] < 0.5 * m[Tissue.WM]
    assert m[Tissue.INFARCT] > 1.3 * max(m[Tissue.GM], m[Tissue.WM])


def test_swi_veins_dark(head):
    m = _medians(head, _protocol("SWI"))
    assert m[Tissue.VEIN] < 0.7 * m[Tissue.WM]


def test_affines_round_trip_to_ras(tmp_path):
    """Six volumes of one session, stored in different axis orders, put the brain at one place."""
    volumes = simulate_subject(SEED, 0, voxel_scale=2.0)
    orders = {nib.aff2axcodes(v.affine) for v in volumes.values()}
    assert len(orders) > 1, "the stored axis orders should vary"
    load = Compose([LoadImaged(["image", "mask"]), EnsureChannelFirstd(["image", "mask"]), Orientationd(["image", "mask"], "RAS")])
    centres = []
    for sequence, volume in volumes.items():
        for name, array in (("image", volume.image), ("mask", volume.brain_mask)):
            nib.save(nib.Nifti1Image(array, volume.affine), tmp_path / f"{sequence}_{name}.nii.gz")
        data = load({"image": str(tmp_path / f"{sequence}_image.nii.gz"), "mask": str(tmp_path / f"{sequence}_mask.nii.gz")})
        affine = data["mask"].affine.numpy()
        assert np.all(np.diag(affine)[:3] > 0), f"{sequence} not RAS after Orientation: {affine}"
        voxels = torch.nonzero(data["mask"][0] > 0).double().mean(0).numpy()
        centre = affine[:3, :3] @ voxels + affine[:3, 3]
        raw = np.argwhere(volume.brain_mask > 0).mean(0)
        np.testing.assert_allclose(centre, volume.affine[:3, :3] @ raw + volume.affine[:3, 3], atol=1e-3)
        centres.append(centre)
        superior = affine[:3, :3] @ (torch.nonzero(data["mask"][0] > 0).double().numpy().T)
        assert np.ptp(superior[2]) > 90, f"{sequence}: brain spans under 90 mm cranio-caudally"
    spread = np.ptp(np.array(centres), axis=0)
    assert np.all(spread < 12.0), f"brain centres disagree between sequences: {spread}"


def test_deterministic_for_a_seed():
    a = simulate_subject(SEED, 3, voxel_scale=3.0)
    b = simulate_subject(SEED, 3, voxel_scale=3.0)
    c = simulate_subject(SEED + 1, 3, voxel_scale=3.0)
    for sequence in SEQUENCES:
        np.testing.assert_array_equal(a[sequence].image, b[sequence].image)
        np.testing.assert_array_equal(a[sequence].affine, b[sequence].affine)
    assert any(a[s].image.shape != c[s].image.shape or not np.array_equal(a[s].image, c[s].image) for s in SEQUENCES)


def test_split_is_subject_disjoint():
    assignment = split_subjects(50, 3, 0.2, 5)
    assert assignment.count(None) == 10
    assert sorted({f for f in assignment if f is not None}) == [0, 1, 2, 3, 4]
    assert all(assignment[i] is None or 0 <= assignment[i] < 5 for i in range(50))


def test_cli_writes_dataset_and_resumes(tmp_path):
    out = tmp_path / "sim"
    cmd = [sys.executable, "-m", "sarf_bundle", "synth", "--out", str(out), "--subjects", "3", "--seed", "5",
           "--workers", "2", "--folds", "2", "--test_fraction", "0.34", "--voxel_scale", "3"]
    subprocess.run(cmd, check=True, capture_output=True)
    datalist = json.loads((out / "datalist.json").read_text())
    assert datalist["labels"] == {str(i): s for i, s in enumerate(SEQUENCES)}
    train_subjects = {e["subject"] for e in datalist["training"]}
    test_subjects = {e["subject"] for e in datalist["testing"]}
    assert train_subjects and test_subjects and not train_subjects & test_subjects
    for entry in datalist["training"] + datalist["testing"]:
        assert SEQUENCES[entry["label"]] == entry["sequence"]
        image = nib.load(out / entry["image"])
        mask = np.asarray(nib.load(out / entry["brain_mask"]).dataobj)
        assert image.shape == mask.shape and mask.any()
        np.testing.assert_allclose(image.affine, nib.load(out / entry["brain_mask"]).affine)
    for subject in train_subjects:
        assert len({e["fold"] for e in datalist["training"] if e["subject"] == subject}) == 1
        assert sorted(e["sequence"] for e in datalist["training"] if e["subject"] == subject) == sorted(SEQUENCES)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")}
    synthesize(out, subjects=3, seed=5, workers=1, test_fraction=0.34, folds=2, voxel_scale=3, progress=False)
    assert stamps == {p.name: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")}, "a finished subject was simulated again"
    # The same seed through one worker in-process gives the same files as two worker processes.
    again = tmp_path / "again"
    synthesize(again, subjects=3, seed=5, workers=1, test_fraction=0.34, folds=2, voxel_scale=3, progress=False)
    for entry in datalist["testing"]:
        np.testing.assert_array_equal(np.asarray(nib.load(out / entry["image"]).dataobj), np.asarray(nib.load(again / entry["image"]).dataobj))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"subjects": 0}, "subjects and workers must be positive"),
        ({"subjects": 3, "workers": 0}, "subjects and workers must be positive"),
        ({"subjects": 3, "test_fraction": 1.0}, "test_fraction must be in"),
        ({"subjects": 4, "folds": 5}, "fewer than folds=5"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        synthesize(tmp_path, progress=False, **kwargs)


def test_unknown_sequence():
    with pytest.raises(ValueError, match="Unknown sequence 'PD'"):
        sample_protocol("PD", 3.0, np.random.default_rng(0))
