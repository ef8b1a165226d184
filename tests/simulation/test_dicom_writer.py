"""Simulated volumes as DICOM series: valid MR files, exact integers, realistic headers, bad arguments."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pydicom
import pytest

from sarf_bundle import SEQUENCES
from sarf_bundle.dicom import find_dicom_series, read_series
from sarf_bundle.headers import header_sequence, header_summary
from sarf_bundle.simulation.dicom_writer import protocol_header, write_dicom_series
from sarf_bundle.simulation.sequences import sample_protocol

SHAPE = (24, 20, 12)
AFFINE = np.array([[1.1, 0, 0, -12.3], [0, 0.9, 0, 20.1], [0, 0, 3.0, -30.5], [0, 0, 0, 1]])
MR = {"RepetitionTime": 500.0, "EchoTime": 10.0, "FlipAngle": 90.0, "PixelBandwidth": 150.0}


def volume(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(500.0, 150.0, SHAPE)


@pytest.mark.parametrize("dtype", [np.uint16, np.int16])
def test_integer_volumes_are_stored_exactly(tmp_path, dtype):
    data = np.random.default_rng(3).integers(-1000 if dtype == np.int16 else 0, 3000, SHAPE).astype(dtype)
    paths = write_dicom_series(data, AFFINE, tmp_path, MR, series_number=1)
    first = pydicom.dcmread(paths[0])
    assert (float(first.RescaleSlope), float(first.RescaleIntercept)) == (1.0, 0.0)
    assert first.PixelRepresentation == (1 if dtype == np.int16 else 0)
    (series,), _ = find_dicom_series(tmp_path)
    assert np.array_equal(read_series(series)[0].numpy(), data)


def test_written_files_are_valid_mr_images(tmp_path):
    header = {**MR, "SeriesDescription": "AX T1 POST", "RepetitionTime": 600, "EchoTime": 12.5, "ContrastBolusAgent": "Gadovist",
              "DiffusionBValue": 0, "ImageType": ["ORIGINAL", "PRIMARY", "M"]}
    paths = write_dicom_series(volume(), AFFINE, tmp_path, header, series_number=7, series_uid="1.2.3.4", instance_offset=40)
    assert [p.name for p in paths] == [f"IM{n:05d}" for n in range(41, 41 + SHAPE[2])]
    ds = pydicom.dcmread(paths[0])
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.SOPClassUID == pydicom.uid.MRImageStorage and ds.Modality == "MR"
    assert ds.SeriesInstanceUID == "1.2.3.4" and ds.InstanceNumber == 41
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
    for uid in (ds.SOPInstanceUID, ds.StudyInstanceUID, ds.FrameOfReferenceUID):
        assert pydicom.uid.UID(uid).is_valid
    assert (float(ds.RepetitionTime), float(ds.EchoTime), ds.ContrastBolusAgent, ds.SeriesNumber) == (600.0, 12.5, "Gadovist", 7)
    assert (float(ds.FlipAngle), float(ds.PixelBandwidth)) == (90.0, 150.0)
    assert len({pydicom.dcmread(p).SOPInstanceUID for p in paths}) == len(paths)
    assert float(ds.SliceThickness) == pytest.approx(3.0) and [float(v) for v in ds.PixelSpacing] == pytest.approx([0.9, 1.1])


def test_two_series_in_one_folder_are_two_series_with_their_own_series_number(tmp_path):
    study = {"StudyInstanceUID": pydicom.uid.generate_uid()}
    write_dicom_series(volume(1), AFFINE, tmp_path, {**MR, **study, "SeriesDescription": "A"}, series_number=3)
    write_dicom_series(volume(2), AFFINE, tmp_path, {**MR, **study, "SeriesDescription": "B"}, series_number=4,
                       instance_offset=SHAPE[2])
    series, unreadable = find_dicom_series(tmp_path)
    assert unreadable == [] and len(series) == 2 and all(s.note == "" for s in series)
    numbers = {s.header["SeriesDescription"]: {pydicom.dcmread(f).SeriesNumber for f in s.volumes[0]} for s in series}
    assert numbers == {"A": {3}, "B": {4}}
    assert len({pydicom.dcmread(s.volumes[0][0]).StudyInstanceUID for s in series}) == 1


@pytest.mark.parametrize("seed", [0, 1, 2])  # T1 and T1Gd as SPGR, spin echo and MPRAGE; 2D and 3D FLAIR; 1.5 and 3 T
@pytest.mark.parametrize("sequence", SEQUENCES)
def test_a_simulated_protocol_gives_a_complete_header_and_its_sequence(tmp_path, sequence, seed):
    protocol = sample_protocol(sequence, 3.0 if seed % 2 else 1.5, np.random.default_rng([seed, SEQUENCES.index(sequence)]))
    (path, *_) = write_dicom_series(volume(), AFFINE, tmp_path, protocol_header(asdict(protocol)), series_number=1)
    ds = pydicom.dcmread(path)
    assert float(ds.RepetitionTime) == pytest.approx(protocol.tr) and float(ds.EchoTime) == pytest.approx(protocol.te)
    assert float(ds.FlipAngle) == pytest.approx(protocol.flip) and float(ds.PixelBandwidth) > 0
    assert ("InversionTime" in ds) == (protocol.ti > 0)
    if protocol.ti > 0:
        assert float(ds.InversionTime) == pytest.approx(protocol.ti)
    assert ds.MRAcquisitionType == ("3D" if protocol.three_d else "2D")
    assert header_sequence(header_summary(ds))[0] == sequence  # no SeriesDescription: b-value, agent and timing decide


def test_protocol_header_refuses_an_unknown_kind():
    protocol = asdict(sample_protocol("T2", 1.5, np.random.default_rng(0)))
    with pytest.raises(ValueError, match="'fse'"):
        protocol_header({**protocol, "kind": "fse"})


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"volume": np.zeros((4, 4))}, ValueError, "3D"),
        ({"volume": np.zeros((4, 4, 3, 2, 2))}, ValueError, "3D"),
        ({"volume": np.full((4, 4, 3), np.nan)}, ValueError, "NaN"),
        ({"volume": [np.zeros((4, 4, 3)), np.zeros((4, 5, 3))]}, ValueError, "same shape"),
        ({"affine": np.eye(3)}, ValueError, "4x4"),
        ({"affine": np.diag([1.0, 1.0, 0.0, 1.0])}, ValueError, "zero-length"),
        ({"affine": np.array([[1.0, 0.5, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])}, ValueError, "orthogonal"),
        ({"header": {**MR, "EchoTme": 10}}, ValueError, "EchoTme"),
        ({"header": {**MR, "ImagePositionPatient": [0, 0, 0]}}, ValueError, "ImagePositionPatient"),
        ({"header": {**MR, "SeriesNumber": 2}}, ValueError, "SeriesNumber"),
        ({"header": {**MR, "b_values": [0, 1000]}}, ValueError, "volume_headers"),
        ({"header": {"EchoTime": 10.0, "FlipAngle": 90.0}}, ValueError, "lacks RepetitionTime, PixelBandwidth"),
        ({"volume_headers": [{}, {}]}, ValueError, "volume_headers"),
    ],
)
def test_write_dicom_series_bad_input(tmp_path, kwargs, error, match):
    arguments = {"volume": np.zeros((4, 4, 3)), "affine": np.eye(4), "out_dir": tmp_path, "header": MR, "series_number": 1, **kwargs}
    with pytest.raises(error, match=match):
        write_dicom_series(**arguments)
    assert list(tmp_path.iterdir()) == []


def test_write_dicom_series_never_overwrites(tmp_path):
    write_dicom_series(np.zeros((4, 4, 3)), np.eye(4), tmp_path, MR, series_number=1)
    with pytest.raises(FileExistsError, match="IM00001"):
        write_dicom_series(np.zeros((4, 4, 3)), np.eye(4), tmp_path, MR, series_number=2)
