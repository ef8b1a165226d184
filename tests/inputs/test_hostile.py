"""Hostile inputs and a shared output through the real inference config: each gets its row and message.

Broken links, Analyze pairs, lying headers, singular orientations, odd file names, a CSV cut short by a crash,
an output folder that cannot be written, and two runs started at once on one folder.
"""

from __future__ import annotations

import csv
import gzip
import os
import re
import shutil
import subprocess
import time

import nibabel as nib
import numpy as np
import pytest

from sarf_bundle.bundle import run_bundle
from sarf_bundle.handlers import claims_folder, read_prediction_csv

SIZE = 32  # the slice size of conftest's bundle_root
ODD_NAMES = ["with space.nii.gz", "ünïcödé_日本.nii.gz", "comma,name.nii.gz", 'quote"d\'.nii.gz', "new\nline.nii.gz"]


@pytest.fixture(scope="module")
def good_volume(simulated_dataset):
    return next(p for p in sorted(simulated_dataset.parent.glob("*_T1.nii.gz")))


def infer(bundle_root, folder, output_csv, **overrides) -> list[dict[str, str]]:
    run_bundle("run", ["inference.json"], bundle_root=str(bundle_root), dataset_dir=str(folder), output_csv=str(output_csv),
               image_size=SIZE, num_workers=0, **{"confidence_threshold": 0.0, **overrides})  # fmt: skip
    return read_prediction_csv(output_csv)


@pytest.fixture(scope="module")
def hostile_folder(good_volume, tmp_path_factory):
    """Hostile files beside good ones stored in other ways; the expected status and message fragment per file."""
    folder = tmp_path_factory.mktemp("hostile")
    image = nib.load(good_volume)
    data, affine = np.asarray(image.dataobj, dtype=np.float32), image.affine
    shutil.copy(good_volume, folder / "good.nii.gz")
    os.symlink(folder / "gone.nii.gz", folder / "dangling.nii.gz")
    nib.save(nib.AnalyzeImage(data.astype(np.int16), affine), str(folder / "analyze.hdr"))  # analyze.hdr + analyze.img
    nib.save(nib.Nifti1Pair(data, affine), str(folder / "pair.hdr"))  # NIfTI pair: pair.hdr + pair.img
    (folder / "orphan.img").write_bytes(np.zeros(1000, np.int16).tobytes())
    huge = nib.Nifti1Header()
    huge.set_data_shape((30000, 30000, 30000))
    huge.set_data_dtype(np.float32)
    (folder / "huge.nii.gz").write_bytes(gzip.compress(huge.binaryblock + b"\0" * 4 + b"\0" * 1000))
    singular = nib.Nifti1Image(data, affine)
    flat = affine.copy()
    flat[:3, 2] = flat[:3, 1]  # the third voxel axis along the second: no volume, no orientation
    singular.set_sform(flat, code=2)
    singular.set_qform(None, code=0)
    nib.save(singular, str(folder / "singular.nii.gz"))
    for name in ODD_NAMES:
        shutil.copy(good_volume, folder / name)
    expected = {
        "good.nii.gz": ("ok", ""),
        "dangling.nii.gz": ("error", f"broken symbolic link: its target {folder / 'gone.nii.gz'} does not exist"),
        "analyze.hdr": ("ok", ""),
        "pair.hdr": ("ok", ""),
        "orphan.img": ("error", "Analyze image without its header orphan.hdr"),
        "huge.nii.gz": ("error", "the header declares 30000 x 30000 x 30000 voxels of float32 (108.0 TB), but huge.nii.gz holds"),
        "singular.nii.gz": ("error", "the voxel axes of the affine"),
        **{name: ("ok", "") for name in ODD_NAMES},
    }
    return folder, expected


def test_each_hostile_input_gets_its_row_and_message(bundle_root, hostile_folder, tmp_path):
    folder, expected = hostile_folder
    rows = {os.path.basename(r["file"]): r for r in infer(bundle_root, folder, tmp_path / "hostile.csv")}
    assert sorted(rows) == sorted(expected)  # one row each; nothing for the .img beside its .hdr
    for name, (status, words) in expected.items():
        assert rows[name]["status"] == status, (name, rows[name])
        if words:
            assert words in rows[name]["message"], (name, rows[name]["message"])
        else:
            assert rows[name]["message"] == "", (name, rows[name]["message"])
    assert "truncated or its header is wrong" in rows["huge.nii.gz"]["message"]
    assert "no valid orientation" in rows["singular.nii.gz"]["message"]
    # The same brain stored three ways gets the same answer.
    probabilities = lambda name: np.array([float(rows[name][f"p_{c}"]) for c in ("DWI", "FLAIR", "SWI", "T1", "T1Gd", "T2")])  # noqa: E731
    np.testing.assert_allclose(probabilities("pair.hdr"), probabilities("good.nii.gz"), atol=1e-4)
    np.testing.assert_allclose(probabilities("analyze.hdr"), probabilities("good.nii.gz"), atol=0.02)  # int16-rounded


def test_odd_file_names_round_trip_through_the_csv_and_resume(bundle_root, hostile_folder, tmp_path):
    folder, _ = hostile_folder
    output_csv = tmp_path / "odd.csv"
    first = infer(bundle_root, folder, output_csv)
    names = {os.path.basename(r["file"]) for r in first}
    assert set(ODD_NAMES) <= names  # quoted by the csv module: spaces, unicode, commas, quotes and newlines survive
    with output_csv.open(newline="", encoding="utf-8") as f:
        assert sum(1 for _ in csv.DictReader(f)) == len(first)
    before = output_csv.read_bytes()
    again = infer(bundle_root, folder, output_csv)
    assert again == first and output_csv.read_bytes() == before  # every name recognised as done: nothing redone


def test_a_csv_cut_short_by_a_crash_is_mended_on_resume(bundle_root, hostile_folder, tmp_path, caplog):
    folder, expected = hostile_folder
    output_csv = tmp_path / "cut.csv"
    full = infer(bundle_root, folder, output_csv)
    text = output_csv.read_bytes()
    last = full[-1]["file"]
    output_csv.write_bytes(text[:-30])  # the last row ends midway, as after a crash in a write
    assert len(read_prediction_csv(output_csv)) == len(full) - 1  # the cut row does not count as done
    rows = infer(bundle_root, folder, output_csv)
    assert sorted(r["file"] for r in rows) == sorted(r["file"] for r in full)  # each input once, the cut one again
    assert {r["file"]: r for r in rows}[last]["status"] == expected[os.path.basename(last)][0]


def test_an_output_folder_that_cannot_be_written_stops_before_classifying(bundle_root, hostile_folder, tmp_path):
    folder, _ = hostile_folder
    if os.geteuid() == 0:  # root writes through permission bits: use a file system that refuses new folders
        output_csv, reason = "/sys/sarf_bundle_test/predictions.csv", "Operation not permitted"
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        output_csv, reason = locked / "predictions.csv", "Permission denied"
    with pytest.raises(Exception) as raised:  # monai.bundle wraps the error of a config expression
        infer(bundle_root, folder, output_csv)
    chain, error = [], raised.value
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    message = f"Cannot write the predictions to {output_csv}: {reason}. Choose a folder you can write to (--output_dir)."
    assert any(isinstance(e, OSError) and str(e) == message for e in chain), [str(e) for e in chain]


def test_two_runs_at_once_share_the_work_and_write_each_file_once(linked_folder, inference_command, tmp_path):
    folder = linked_folder(24)
    output_csv = tmp_path / "out" / "predictions.csv"
    logs = [tmp_path / f"run{i}.log" for i in range(2)]
    command = inference_command(folder, output_csv, "--confidence_threshold", "0")
    processes = [subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT) for log in logs]
    deadline = time.time() + 300
    for process in processes:
        assert process.wait(timeout=max(1, deadline - time.time())) == 0
    rows = read_prediction_csv(output_csv)
    assert sorted(r["file"] for r in rows) == sorted(str(p) for p in folder.iterdir())  # each file exactly once
    assert all(r["status"] == "ok" for r in rows)
    summaries = [re.search(r"\d+ inputs \((\d+) classified now", log.read_text()) for log in logs]
    assert all(summaries), [log.read_text()[-2000:] for log in logs]
    now = [int(s.group(1)) for s in summaries]
    assert sum(now) == 24 and min(now) > 0, now  # the work was shared: no file classified twice
    assert not claims_folder(output_csv).exists()  # the last run to finish leaves no claims behind
