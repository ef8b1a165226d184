"""The 4D rule: each step on tagged images, and on its NIfTI form (volumes with an FSL .bval sidecar).

The DICOM form of each step is tested in tests/dicom/test_dicom.py (section "4D rule"); a sidecar that does not
match its NIfTI in tests/inputs/test_inputs.py.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from sarf_bundle.inputs import LoadVolume
from sarf_bundle.reduce_4d import ImageTags, reduce_4d

DWI = ImageTags(b=1000.0)
TRACE = ImageTags(b=1000.0, trace=True)


def rule(tags: list[ImageTags]) -> tuple[list[list[int]], list[str]]:
    """The rule on images 0..n-1 at one position."""
    return reduce_4d(range(len(tags)), tags.__getitem__, lambda kept: [list(kept)], "images")


@pytest.mark.parametrize(
    ("tags", "groups", "steps"),
    [
        ([ImageTags(b=0.0), DWI], [[1]], ["kept b=1000 of b=0,1000"]),
        ([ImageTags(), DWI], [[1]], ["kept b=1000 of b=0,1000"]),  # no b-value among b-values: b=0
        ([ImageTags(echo_time=30.0), ImageTags(echo_time=10.0)], [[0]], ["kept the last echo TE=30 ms of TE=10,30 ms"]),
        ([ImageTags(echo_number=2), ImageTags(echo_number=1)], [[0]], ["kept the last echo (EchoNumbers 2 of 2)"]),
        ([ImageTags(b=0.0), DWI, TRACE, DWI], [[2]], ["kept b=1000 of b=0,1000", "kept the trace-weighted image"]),
        ([DWI, ImageTags(b=1000.0, trace=True, derived_map=True)], [[0]], ["dropped the ADC/FA maps"]),
        ([ImageTags(phase=True), ImageTags(magnitude=True)], [[1]], ["kept the magnitude images"]),
        ([ImageTags(b=0.0), DWI, DWI, DWI], [[1, 2, 3]], ["kept b=1000 of b=0,1000", "mean of the 3 diffusion images at b=1000"]),
        ([ImageTags(b=0.0)] * 2, [[0, 1]], ["mean of the 2 diffusion images at b=0"]),
        ([ImageTags()] * 3, [[2]], ["kept the last of 3 images"]),
    ],
    ids=["highest-b", "missing-b-is-b0", "last-echo-time", "last-echo-number", "trace", "adc-map-dropped", "magnitude",
         "mean-of-directions", "mean-of-b0-repeats", "last"],
)
def test_each_step_of_the_rule(tags, groups, steps):
    assert rule(tags) == (groups, steps)


def test_the_mean_needs_as_many_images_at_every_position():
    images = [(0, "a"), (0, "b"), (1, "a")]  # (position, direction): direction b misses position 1
    groups, steps = reduce_4d(images, lambda im: DWI, lambda kept: [[im for im in kept if im[0] == p] for p in (0, 1)], "images")
    assert groups == [[(0, "b")], [(1, "a")]]
    assert steps == ["kept the last of 2 images (not as many at every position)"]


# ------------------------------------------------------------------------------------------------- NIfTI form


def nifti_4d(folder, n: int, bvals: str | None = None) -> tuple[str, np.ndarray]:
    """A 4D NIfTI of ``n`` volumes (volume t holds t + 1 plus noise), with ``bvals`` as its sidecar."""
    data = np.random.default_rng(0).random((8, 9, 10, n), dtype=np.float32) + np.arange(1, n + 1, dtype=np.float32)
    path = folder / "dwi.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), str(path))
    if bvals is not None:
        (folder / "dwi.bval").write_text(bvals)
    return str(path), data


@pytest.mark.parametrize(
    ("bvals", "kept", "note"),
    [
        ("0 1000 1000", [1, 2], "4D: kept b=1000 of b=0,1000; mean of the 2 diffusion volumes at b=1000"),
        ("0 1000 0", [1], "4D: kept b=1000 of b=0,1000"),
        ("1000 1000 1000", [0, 1, 2], "4D: mean of the 3 diffusion volumes at b=1000"),
        ("0 0 0", [0, 1, 2], "4D: mean of the 3 diffusion volumes at b=0"),
        (None, [2], "4D: kept the last of 3 volumes"),
    ],
    ids=["highest-b-mean", "highest-b", "mean-of-directions", "mean-of-b0-repeats", "last"],
)
def test_nifti_volumes_follow_the_rule(tmp_path, bvals, kept, note):
    path, data = nifti_4d(tmp_path, 3, bvals)
    image = LoadVolume()(path)
    assert image.shape == (1, 8, 9, 10) and image.meta["sarf_note"] == note
    np.testing.assert_allclose(image[0].numpy(), data[..., kept].mean(axis=-1), rtol=1e-6)

