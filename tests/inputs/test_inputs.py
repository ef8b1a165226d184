"""Real-world inputs through the real inference config: each bad kind gets its row and message; fuzzing; kill and resume."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import time

import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sarf_bundle import SEQUENCES
from sarf_bundle.bundle import load_inference_bundle, run_bundle
from sarf_bundle.data import InferenceDataset, list_volumes
from sarf_bundle.handlers import read_prediction_csv
from sarf_bundle.inputs import CheckInputVolume, CheckInputVolumed, LoadVolume, VolumeError
from sarf_bundle.transforms import CropCranioCaudal, CropCranioCaudald, OrientationInPlace

SIZE = 32  # the slice size of conftest's bundle_root
EXPECTED_BIDS_NAMES = {  # BIDS "Magnetic Resonance Imaging": anat suffixes, the dwi suffix, the ce-<label> entity
    "DWI": "dwi",
    "FLAIR": "FLAIR",
    "SWI": "swi",
    "T1": "T1w",
    "T1Gd": "ce-gadolinium_T1w",
    "T2": "T2w",
}


def save(array: np.ndarray, path, spacing=(1.5, 1.5, 1.5)) -> str:
    affine = np.diag([*spacing[: min(3, array.ndim)], 1.0]) if array.ndim >= 3 else np.diag([*spacing[:2], 1.0, 1.0])
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return str(path)


def head(shape=(96, 112, 80), radius=(45, 55, 40)) -> np.ndarray:
    """A bright ellipsoid with a darker core: a crude head, about 135 x 165 mm at 1.5 mm voxels."""
    grid = np.stack(np.meshgrid(*[np.arange(n) - n / 2 for n in shape], indexing="ij"))
    r = np.sqrt(sum((g / rr) ** 2 for g, rr in zip(grid, radius)))
    return np.where(r < 1, 200.0 - 80.0 * (r < 0.8), 0.0).astype(np.float32) + np.random.default_rng(0).random(shape, dtype=np.float32)


@pytest.fixture(scope="module")
def messy_folder(simulated_dataset, tmp_path_factory):
    """One good volume and one of every bad kind; the expected status and a word of the message per file."""
    folder = tmp_path_factory.mktemp("messy")
    good = next(p for p in sorted(simulated_dataset.parent.glob("*_T2.nii.gz")))
    shutil.copy(good, folder / "good.nii.gz")
    data = gzip.decompress(good.read_bytes())
    (folder / "truncated.nii.gz").write_bytes(gzip.compress(data)[: len(gzip.compress(data)) // 2])
    (folder / "random.nii").write_bytes(np.random.default_rng(1).bytes(5000))
    (folder / "empty.nii.gz").write_bytes(b"")
    save(np.zeros((40, 40, 30), np.float32), folder / "zeros.nii.gz")
    nan = head()
    nan[10:20, 10:20, 10:20] = np.nan
    save(nan, folder / "nan.nii.gz")
    save(head()[:, :, 40], folder / "flat.nii.gz")
    save(np.stack([head() * f for f in (1.0, 0.5, 0.25)], axis=-1), folder / "echoes.nii.gz")
    save(np.stack([head(), head() * 0.3, head() * 0.3], axis=-1), folder / "dwi.nii.gz")
    (folder / "dwi.bval").write_text("0 1000 1000\n")
    save(head()[:, :, 38:41], folder / "three.nii.gz")
    save(head(), folder / "huge.nii.gz", spacing=(50.0, 50.0, 50.0))
    save(head(shape=(200, 150, 60), radius=(95, 70, 40)), folder / "body.nii.gz", spacing=(2.0, 2.0, 4.0))  # 380 x 280 mm
    (folder / "notes.txt").write_text("not an input")
    expected = {
        "good.nii.gz": ("ok", None),  # no message at all
        "truncated.nii.gz": ("error", "EOFError: Compressed file ended before the end-of-stream marker"),
        "random.nii": ("error", "ImageFileError: Cannot work out file type of"),
        "empty.nii.gz": ("error", "ImageFileError: Empty file"),
        "zeros.nii.gz": ("error", "every voxel is 0: the image is empty"),
        "nan.nii.gz": ("error", "1000 of 860160 voxels are NaN or infinite"),
        "flat.nii.gz": ("error", "2D image of shape (96, 112)"),
        "echoes.nii.gz": ("ok", "4D: kept the last of 3 volumes"),
        "dwi.nii.gz": ("ok", "4D: kept b=1000 of b=0,1000; mean of the 2 diffusion volumes at b=1000"),
        "three.nii.gz": ("error", "only 3 slices"),
        "huge.nii.gz": ("error", "voxel spacing (50.0, 50.0, 50.0) mm"),
        "body.nii.gz": ("uncertain", "more than a head"),
    }
    return folder, expected


def test_every_bad_input_gets_its_row_and_message(bundle_root, messy_folder):
    folder, expected = messy_folder
    output_csv = bundle_root / "messy.csv"
    run_bundle("run", ["inference.json"], bundle_root=str(bundle_root), dataset_dir=str(folder), output_csv=str(output_csv),
               image_size=SIZE, num_workers=0, confidence_threshold=0.0)  # fmt: skip
    rows = {os.path.basename(r["file"]): r for r in read_prediction_csv(output_csv)}
    assert sorted(rows) == sorted(expected)  # one row per input, none for notes.txt or dwi.bval
    for name, (status, words) in expected.items():
        row = rows[name]
        assert row["status"] == status, (name, row)
        if words is None:
            assert row["message"] == "", (name, row["message"])
        else:
            assert words in row["message"], (name, row["message"])
        if status == "error":
            assert not row["sequence"] and not row["bids_name"] and not any(row[f"p_{c}"] for c in SEQUENCES), (name, row)
        else:
            assert row["sequence"] and row["bids_name"] and abs(sum(float(row[f"p_{c}"]) for c in SEQUENCES) - 1) < 1e-4


def test_confidence_threshold_marks_uncertain(bundle_root, messy_folder):
    folder, _ = messy_folder
    output_csv = bundle_root / "strict.csv"
    run_bundle("run", ["inference.json"], bundle_root=str(bundle_root), dataset_dir=str(folder), output_csv=str(output_csv),
               image_size=SIZE, num_workers=0, confidence_threshold=0.99)  # fmt: skip
    good = next(r for r in read_prediction_csv(output_csv) if r["file"].endswith("good.nii.gz"))
    assert good["status"] == "uncertain" and "below the threshold 0.99" in good["message"]


def test_check_input_volume_passes_a_head_and_names_each_problem():
    from monai.data import MetaTensor

    image = MetaTensor(torch.from_numpy(head())[None], affine=torch.diag(torch.tensor([1.5, 1.5, 1.5, 1.0])))
    checked = CheckInputVolume()(image)
    assert checked is image and checked.meta["sarf_warning"] == ""
    with pytest.raises(VolumeError, match="at least 20"):
        CheckInputVolume(min_slices=20)(MetaTensor(image[..., :15], affine=image.affine))
    with pytest.raises(VolumeError, match=r"outside 0.1-25"):
        CheckInputVolume()(MetaTensor(image, affine=torch.diag(torch.tensor([1.5, 0.01, 1.5, 1.0]))))


def test_check_input_volume_chains_and_carries_its_warning():
    """The checked volume goes straight into the next transforms; the warning rides in its metadata to the end."""
    from monai.data import MetaTensor
    from monai.transforms import Compose

    wide = MetaTensor(torch.from_numpy(head())[None], affine=torch.diag(torch.tensor([3.0, 3.0, 1.5, 1.0])))  # 270 x 330 mm
    chain = Compose([CheckInputVolume(), OrientationInPlace(axcodes="RAS"), CropCranioCaudal(extent_mm=60.0)])
    cropped = chain(wide)
    assert isinstance(cropped, MetaTensor) and cropped.shape == (1, 96, 112, 40)
    assert cropped.meta["sarf_warning"] == CheckInputVolume()(wide.clone()).meta["sarf_warning"]
    assert "more than a head (260 mm): is this a brain scan?" in cropped.meta["sarf_warning"]
    data = Compose([CheckInputVolumed("image", warning_key="warning"), CropCranioCaudald("image", source_key="image", extent_mm=60.0)])(
        {"image": wide.clone()}
    )
    assert data["warning"] == cropped.meta["sarf_warning"] and torch.equal(data["image"], cropped)
    plain = CheckInputVolume()(torch.from_numpy(head())[None])
    assert isinstance(plain, MetaTensor) and plain.meta["sarf_warning"] == ""


@pytest.fixture(scope="module")
def preprocessing(bundle_root):
    return load_inference_bundle(bundle_root / "models" / "model.pt", image_size=SIZE).preprocessing


@st.composite
def corrupt_files(draw):
    """Bytes of a file that may or may not be a readable NIfTI: random bytes, a truncated or bit-flipped volume, odd arrays."""
    kind = draw(st.sampled_from(["random", "truncated", "flipped", "array"]))
    if kind == "random":
        return draw(st.binary(min_size=0, max_size=2000)), ".nii"
    shape = draw(st.lists(st.integers(1, 24), min_size=2, max_size=4))
    dtype = draw(st.sampled_from([np.uint8, np.int16, np.float32, np.float64]))
    values = np.random.default_rng(draw(st.integers(0, 2**16))).normal(100, 50, size=shape)
    if draw(st.booleans()):
        values.flat[draw(st.integers(0, values.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf, 0.0]))
    image = nib.Nifti1Image(values.astype(dtype), np.eye(4))
    if draw(st.booleans()):  # a header whose geometry comes from pixdim alone, possibly 0 or absurd
        image.header.set_qform(None, code=0)
        image.header.set_sform(None, code=0)
        image.header["pixdim"][1:4] = draw(st.lists(st.floats(0.0, 80.0), min_size=3, max_size=3))
    data = gzip.compress(image.to_bytes())
    if kind == "truncated":
        data = data[: draw(st.integers(0, len(data)))]
    elif kind == "flipped":
        position = draw(st.integers(0, len(data) - 1))
        data = data[:position] + bytes([data[position] ^ 0xFF]) + data[position + 1 :]
    return data, ".nii.gz"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(files=st.lists(corrupt_files(), min_size=1, max_size=4))
def test_fuzzed_files_never_crash_and_never_lose_a_row(preprocessing, tmp_path_factory, files):
    folder = tmp_path_factory.mktemp("fuzz")
    for i, (data, suffix) in enumerate(files):
        (folder / f"f{i}{suffix}").write_bytes(data)
    items = list_volumes(folder)
    assert len(items) == len(files)
    dataset = InferenceDataset(items, preprocessing, placeholder_shape=(7, SIZE, SIZE))
    for i in range(len(dataset)):
        item = dataset[i]
        assert item["status"] in ("ok", "error") and item["image"].shape == (7, SIZE, SIZE)
        assert item["status"] == "ok" or item["message"]
        assert torch.isfinite(item["image"]).all()


def test_inference_killed_midway_resumes_with_each_file_once(linked_folder, inference_command, tmp_path):
    folder = linked_folder(24)
    output_csv = tmp_path / "out.csv"
    command = inference_command(folder, output_csv)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while len(read_prediction_csv(output_csv)) < 3 and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    partial = read_prediction_csv(output_csv)
    assert 3 <= len(partial) < 24, "the run must be killed midway"
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    rows = read_prediction_csv(output_csv)
    assert sorted(r["file"] for r in rows) == sorted(str(p) for p in folder.iterdir())  # each file exactly once
    assert rows[: len(partial)] == partial  # nothing computed before the kill was lost or redone


def test_load_volume_reads_nifti_as_one_channel(tmp_path):
    path = save(head(), tmp_path / "h.nii.gz")
    image = LoadVolume()(path)
    assert image.shape == (1, 96, 112, 80) and image.meta["sarf_note"] == ""
    with pytest.raises(VolumeError, match="5D"):
        LoadVolume()(save(np.ones((4, 4, 4, 2, 2), np.float32), tmp_path / "five.nii.gz"))
    save(np.stack([head()] * 2, axis=-1), tmp_path / "pair.nii.gz")
    (tmp_path / "pair.bval").write_text("0 1000 1000")
    with pytest.raises(VolumeError, match="3 b-values for 2 volumes"):
        LoadVolume()(str(tmp_path / "pair.nii.gz"))


def test_dicom_series_gives_the_nifti_result_and_header_columns(bundle_root, simulated_dataset, tmp_path):
    from sarf_bundle.simulation.dicom_writer import protocol_header, write_dicom_series

    entry = next(e for e in json.loads(simulated_dataset.read_text())["testing"] if e["sequence"] == "T2")
    nifti = nib.load(simulated_dataset.parent / entry["image"])
    volume, acquisition = np.asarray(nifti.dataobj, dtype=np.float32), entry["acquisition"]
    (tmp_path / "nifti").mkdir()
    shutil.copy(simulated_dataset.parent / entry["image"], tmp_path / "nifti" / "t2.nii.gz")
    header = protocol_header(acquisition)
    dicom = tmp_path / "dicom"
    write_dicom_series(volume, nifti.affine, dicom / "study" / "a", {**header, "SeriesDescription": "AX T2 TSE"}, series_number=1)
    write_dicom_series(volume, nifti.affine, dicom / "study" / "b", {**header, "SeriesDescription": "T1 MPRAGE"}, series_number=2)
    (dicom / "study" / "a" / "IM99999").write_bytes(b"\0" * 128 + b"DICM" + b"garbage")  # a broken DICOM file

    rows = {}
    for name in ("nifti", "dicom"):
        output_csv = tmp_path / f"{name}.csv"
        run_bundle("run", ["inference.json"], bundle_root=str(bundle_root), dataset_dir=str(tmp_path / name), output_csv=str(output_csv),
                   image_size=SIZE, num_workers=0, confidence_threshold=0.0)  # fmt: skip
        rows[name] = read_prediction_csv(output_csv)
    (from_nifti,) = rows["nifti"]
    assert len(rows["dicom"]) == 3  # two series and the broken file, each once
    broken = next(r for r in rows["dicom"] if r["file"].endswith("IM99999"))
    assert broken["status"] == "error" and broken["message"]
    series = {r["file"].split("/")[-2]: r for r in rows["dicom"] if r is not broken}
    assert set(series) == {"a", "b"}
    for row in series.values():  # the same image, read from DICOM: the same probabilities
        assert row["sequence"] == from_nifti["sequence"]
        for c in ("DWI", "FLAIR", "SWI", "T1", "T1Gd", "T2"):
            assert float(row[f"p_{c}"]) == pytest.approx(float(from_nifti[f"p_{c}"]), abs=2e-3)
    assert series["a"]["header_sequence"] == "T2" and series["b"]["header_sequence"] == "T1"
    for row in series.values():
        agrees = row["header_sequence"] == row["sequence"]
        assert row["header_agrees"] == ("yes" if agrees else "no")
        assert (row["status"] == "uncertain") == (not agrees)
        assert agrees or f"the DICOM header suggests {row['header_sequence']}" in row["message"]
    assert from_nifti["header_sequence"] == ""
    for row in [from_nifti, *series.values()]:
        assert row["bids_name"] == EXPECTED_BIDS_NAMES[row["sequence"]], row


def test_each_predicted_sequence_gets_its_bids_name(tmp_path):
    """Every class, forced by its logits through the real PredictionWriter, gets the BIDS name of the specification."""
    from ignite.engine import Engine

    from sarf_bundle.handlers import PredictionWriter

    output_csv = tmp_path / "bids.csv"
    logits = 20.0 * torch.eye(len(SEQUENCES))  # volume i (one slice) predicts class i
    batch = {"pred": logits, "filename": [f"{c}.nii.gz" for c in SEQUENCES]}
    engine = Engine(lambda engine, batch: {"pred": batch["pred"]})
    PredictionWriter(output_csv, n_slices=1, progress=False).attach(engine)
    engine.run([batch], max_epochs=1)
    rows = {r["file"]: r for r in read_prediction_csv(output_csv)}
    assert sorted(EXPECTED_BIDS_NAMES) == sorted(SEQUENCES)
    for c in SEQUENCES:
        assert rows[f"{c}.nii.gz"]["sequence"] == c and rows[f"{c}.nii.gz"]["bids_name"] == EXPECTED_BIDS_NAMES[c]


class _Payload:
    """Pickled, it asks the loader to create a file: what a malicious checkpoint would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_malicious_checkpoint_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "executed"
    checkpoint = tmp_path / "models" / "model.pt"
    checkpoint.parent.mkdir()
    torch.save({"model": _Payload(str(marker))}, checkpoint)
    with pytest.raises(ValueError, match="not a checkpoint"):
        load_inference_bundle(checkpoint)
    save(head(), tmp_path / "head.nii.gz")
    with pytest.raises(RuntimeError) as refused:  # the bundle's CheckpointLoader refuses it too
        run_bundle("run", ["inference.json"], bundle_root=str(tmp_path), dataset_dir=str(tmp_path), image_size=SIZE, num_workers=0)
    assert "Weights only load failed" in str(refused.value.__cause__)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("dtype", "slope", "inter", "suffix"),
    [(np.float32, 1.0, 0.0, ".nii"), (np.int16, 0.05, 3.0, ".nii.gz"), (">i2", 2.0, 0.0, ".nii"), (np.uint8, 1.0, -10.0, ".hdr"), (np.float64, 1.0, 0.0, ".nii.gz")],
)
def test_read_float32_equals_nibabel_in_one_c_ordered_copy(tmp_path, dtype, slope, inter, suffix):
    """The plane-by-plane reader gives nibabel's scaled voxels as one C-ordered float32 array, 3D and 4D."""
    from sarf_bundle.inputs import read_float32

    rng = np.random.default_rng(0)
    for shape in [(9, 7, 5), (6, 5, 4, 3)]:
        stored = (rng.random(shape) * 200).astype(dtype)
        image = nib.Nifti1Pair(stored, np.diag([1.0, 1.2, 2.0, 1.0])) if suffix == ".hdr" else nib.Nifti1Image(stored, np.eye(4))
        image.header.set_slope_inter(slope, inter)
        path = tmp_path / f"v{len(shape)}{suffix}"
        nib.save(image, str(path))
        loaded = nib.load(str(path))
        result = read_float32(loaded)
        assert result.dtype == np.float32 and result.flags.c_contiguous and result.shape == shape
        np.testing.assert_allclose(result, loaded.get_fdata(), rtol=1e-6, atol=1e-4)


def test_read_float32_names_a_file_shorter_than_its_header(tmp_path):
    from sarf_bundle.inputs import read_float32

    path = tmp_path / "short.nii"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)), str(path))
    path.write_bytes(path.read_bytes()[:-700])  # 3 of the 8 planes of 256 bytes are lost
    with pytest.raises(VolumeError, match="the file ends after 5 of the 8 planes its header declares"):
        read_float32(nib.load(str(path)))
