"""Atomic writes of :mod:`sarf_bundle.files`: figures and copies."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from sarf_bundle.files import atomic_copy, atomic_folder, save_figure  # noqa: E402


def _figure() -> plt.Figure:
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    return fig


def test_save_figure_writes_what_savefig_writes_and_closes_the_figure(tmp_path):
    fig = _figure()
    fig.savefig(tmp_path / "direct.png", dpi=50, bbox_inches="tight")
    path = save_figure(fig, tmp_path / "sub" / "figure.png", dpi=50, bbox_inches="tight")
    assert path == tmp_path / "sub" / "figure.png"
    assert path.read_bytes() == (tmp_path / "direct.png").read_bytes()
    assert not plt.fignum_exists(fig.number)
    assert sorted(p.name for p in path.parent.iterdir()) == ["figure.png"]  # no temporary file left


def test_a_failing_render_leaves_an_existing_file_intact_and_no_partial_one(tmp_path):
    path = tmp_path / "figure.png"
    path.write_bytes(b"the previous figure")
    fig = _figure()
    fig.axes[0].set_title(r"$\frac{1}$")  # bad mathtext: raises while rendering
    with pytest.raises(ValueError):
        save_figure(fig, path, dpi=50)
    assert path.read_bytes() == b"the previous figure"
    assert not plt.fignum_exists(fig.number)
    with pytest.raises(ValueError):
        save_figure(_figure().axes[0].set_title(r"$\frac{1}$").figure, tmp_path / "new.png", dpi=50)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figure.png"]


def test_an_interrupted_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "figure.png"
    path.write_bytes(b"the previous figure")

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_figure(_figure(), path, dpi=50)
    with pytest.raises(KeyboardInterrupt):
        atomic_copy(path, tmp_path / "copy.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figure.png"]
    assert path.read_bytes() == b"the previous figure"


def test_atomic_copy_copies(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"\x00data")
    atomic_copy(tmp_path / "a.bin", tmp_path / "folder" / "b.bin")
    assert (tmp_path / "folder" / "b.bin").read_bytes() == b"\x00data"
    assert sorted(p.name for p in (tmp_path / "folder").iterdir()) == ["b.bin"]


def test_atomic_folder_puts_a_whole_dicom_series_in_place_or_nothing(tmp_path):
    import numpy as np

    from sarf_bundle.dicom import find_dicom_series
    from sarf_bundle.simulation.dicom_writer import write_dicom_series

    inputs, staging = tmp_path / "inputs", tmp_path / "partial"
    volume = np.random.default_rng(0).uniform(0, 100, (8, 8, 5)).astype(np.float32)
    header = {"SeriesDescription": "t2_tse", "RepetitionTime": 4000, "EchoTime": 90, "FlipAngle": 90, "PixelBandwidth": 200}

    with pytest.raises(RuntimeError, match="killed"), atomic_folder(inputs / "T2", staging=staging) as folder:
        write_dicom_series(volume, np.eye(4), folder, header, series_number=1)
        raise RuntimeError("killed after the last slice, before the rename")
    assert not (inputs / "T2").exists() and list(staging.iterdir()) == []

    with atomic_folder(inputs / "T2", staging=staging) as folder:
        written = write_dicom_series(volume, np.eye(4), folder, header, series_number=1)
        assert not (inputs / "T2").exists() and len(written) == 5
    series, unreadable = find_dicom_series(inputs)
    assert [[len(v) for v in s.volumes] for s in series] == [[5]] and unreadable == []
    assert list(staging.iterdir()) == []


def test_atomic_folder_never_replaces_or_merges_into_an_existing_folder(tmp_path):
    (tmp_path / "series").mkdir()
    (tmp_path / "series" / "IM00001").write_bytes(b"kept")
    with pytest.raises(FileExistsError, match="series exists already"), atomic_folder(tmp_path / "series"):
        pass
    with pytest.raises(FileExistsError, match="could not be put in place"), atomic_folder(tmp_path / "late") as folder:
        (folder / "IM00001").write_bytes(b"new")
        (tmp_path / "late").mkdir()
        (tmp_path / "late" / "IM00009").write_bytes(b"another writer's")
    assert [p.name for p in (tmp_path / "late").iterdir()] == ["IM00009"]
    assert (tmp_path / "series" / "IM00001").read_bytes() == b"kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["late", "series"]
