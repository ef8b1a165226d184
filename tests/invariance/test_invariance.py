"""The same brain gives the same numbers through the training (stripped) and inference (whole-head) preprocessing.

Each case simulates whole-head volumes of all six sequences with their true brain masks, or takes Colin27 with
the brain of ``ch2bet``, and fits ``inference = a * training + b`` on the brain pixels of the 7 slices
(:func:`sarf_bundle.invariance.strip_invariance`, the configs as shipped). The issue's bounds: ``a`` in
[0.9, 1.1], ``|b| <= 0.15``, ``r >= 0.95``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from sarf_bundle import SEQUENCES
from sarf_bundle.files import write_nifti
from sarf_bundle.invariance import strip_invariance
from sarf_bundle.simulation.acquisition import acquire, head_pose
from sarf_bundle.simulation.anatomy import build_head
from sarf_bundle.simulation.sequences import sample_protocol
from sarf_bundle.simulation.tissues import jitter_properties


def assert_invariant(image, mask) -> None:
    fit = strip_invariance(image, mask)
    assert fit.pixels > 1000, f"{image}: only {fit.pixels} brain pixels in the slices"
    assert 0.9 <= fit.slope <= 1.1 and abs(fit.intercept) <= 0.15 and fit.r >= 0.95, f"{Path(image).name}: {fit}"


@pytest.mark.parametrize("field_t", [1.5, 3.0])
@pytest.mark.parametrize("orientation", ["axial", "sagittal", "coronal"])
def test_simulated_brain_is_the_same_with_and_without_skull(tmp_path, field_t, orientation):
    rng = np.random.default_rng([11, int(field_t * 10), len(orientation)])
    head, props, pose = build_head(rng), jitter_properties(rng), head_pose(rng)
    for sequence in SEQUENCES:
        protocol = replace(sample_protocol(sequence, field_t, rng, voxel_scale=2.0), orientation=orientation)
        volume = acquire(head, props, protocol, rng, pose)
        image, mask = tmp_path / f"{sequence}.nii.gz", tmp_path / f"{sequence}_brainmask.nii.gz"
        write_nifti(volume.image, volume.affine, image, protocol.storage)
        write_nifti(volume.brain_mask, volume.affine, mask, "uint8")
        assert_invariant(image, mask)


def test_colin27_brain_is_the_same_with_and_without_skull(mricron_templates):
    assert_invariant(mricron_templates / "ch2.nii.gz", mricron_templates / "ch2bet.nii.gz")


def test_a_mask_outside_the_slices_is_refused(tmp_path):
    rng = np.random.default_rng(3)
    volume = acquire(build_head(rng), jitter_properties(rng), sample_protocol("T1", 3.0, rng, voxel_scale=2.5), rng)
    image, mask = tmp_path / "t1.nii.gz", tmp_path / "empty_brainmask.nii.gz"
    write_nifti(volume.image, volume.affine, image, "float32")
    write_nifti(np.zeros_like(volume.brain_mask), volume.affine, mask, "uint8")
    with pytest.raises(ValueError, match="empty_brainmask.nii.gz: marks no pixel"):
        strip_invariance(image, mask)


def test_command_prints_the_fit_of_each_volume(tmp_path, capsys):
    from sarf_bundle.cli import main
    from sarf_bundle.simulation.dataset import synthesize

    datalist = synthesize(tmp_path / "sim", subjects=2, seed=4, test_fraction=0.5, folds=1, voxel_scale=3.0, progress=False)
    main(["invariance", "--datalist", str(datalist), "--limit", "3"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["file", "sequence", "field", "orientation", "a", "b", "r"]
    assert len(lines) == 1 + 3 + 3 and lines[-1].startswith("r: min") and "over 3 volumes" in lines[-1]
    for line in lines[1:4]:
        slope, intercept, r = map(float, line.split()[-3:])
        assert 0.9 <= slope <= 1.1 and abs(intercept) <= 0.15 and r >= 0.95, line
    with pytest.raises(ValueError, match="give an IMAGE and its BRAIN_MASK, or --datalist"):
        main(["invariance", str(tmp_path / "x.nii.gz")])
