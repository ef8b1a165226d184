"""DICOM input: writing series, finding and grouping them, the 4D rule, reading with MONAI, the header's sequence."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage, Orientation
from pydicom.dataset import Dataset

from sarf_bundle import SEQUENCES
from sarf_bundle.dicom import (
    BIDS_NAMES,
    DicomSeries,
    b_value,
    find_dicom_series,
    header_sequence,
    header_summary,
    read_series,
    write_dicom_series,
)

SHAPE = (24, 20, 12)


def rotation(x_deg: float, y_deg: float, z_deg: float) -> np.ndarray:
    """Rotation about x, then y, then z (degrees)."""
    x, y, z = np.radians([x_deg, y_deg, z_deg])
    rx = np.array([[1, 0, 0], [0, np.cos(x), -np.sin(x)], [0, np.sin(x), np.cos(x)]])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rz = np.array([[np.cos(z), -np.sin(z), 0], [np.sin(z), np.cos(z), 0], [0, 0, 1]])
    return rz @ ry @ rx


def make_affine(axes: np.ndarray | None = None, angles=(7.0, -4.0, 5.0), spacing=(1.1, 0.9, 3.0), origin=(-12.3, 20.1, -30.5)):
    """A voxel-to-RAS affine: ``axes`` (a signed permutation; identity = axial) rotated by a few degrees."""
    affine = np.eye(4)
    axes = np.eye(3) if axes is None else axes
    affine[:3, :3] = rotation(*angles) @ axes @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


# oblique axial; oblique sagittal slices with i running anterior-to-posterior and j inferior-to-superior
AXIAL = make_affine()
SAGITTAL = make_affine(np.array([[0, 0, 1], [-1, 0, 0], [0, 1, 0]]), angles=(3.0, 6.0, -8.0))


def volume(seed: int = 0, shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).normal(500.0, 150.0, shape)


def ras(image):
    return Orientation(axcodes="RAS")(image)


def close(actual, expected, scale) -> bool:
    """Values within 1e-3 of the value range."""
    return np.allclose(np.asarray(actual), np.asarray(expected), rtol=0, atol=1e-3 * scale)


def same_image(image: MetaTensor, data: np.ndarray, affine: np.ndarray) -> bool:
    """``image`` (1, X, Y, Z) shows ``data`` at ``affine``: equal voxels and affines (1e-3 mm) once both are in RAS.

    The slice order of a series read back may be reversed (files are sorted along the slice normal).
    """
    expected = ras(MetaTensor(torch.as_tensor(data[None], dtype=torch.float32), affine=torch.as_tensor(affine)))
    actual = ras(image)
    return actual.shape == expected.shape and close(actual.affine, expected.affine, 1.0) and close(actual, expected, np.ptp(data))


def shuffle_names(folder, seed: int = 0) -> dict[str, str]:
    """Rename the files of ``folder`` to random names (so their order says nothing); old path -> new path."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    order = np.random.default_rng(seed).permutation(len(files))
    renamed = {}
    for rank, path in zip(order, files):
        new = folder / f"x{rank:03d}_{abs(hash(path.name)) % 997:03d}"
        path.rename(new)
        renamed[str(path)] = str(new)
    return renamed


def edit(paths, **values) -> None:
    """Set header values of written files."""
    for path in paths:
        ds = pydicom.dcmread(path)
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        ds.save_as(path)


# --------------------------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("affine", [AXIAL, SAGITTAL], ids=["oblique-axial", "oblique-sagittal"])
def test_round_trip_through_monai_pydicom_reader_matches_nifti(tmp_path, affine):
    data = volume()
    write_dicom_series(data, affine, tmp_path / "series", {"SeriesDescription": "AX T1"})
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), tmp_path / "volume.nii.gz")

    dicom = ras(LoadImage(reader="PydicomReader", image_only=True, ensure_channel_first=True)(str(tmp_path / "series")))
    nifti = ras(LoadImage(image_only=True, ensure_channel_first=True)(str(tmp_path / "volume.nii.gz")))

    assert dicom.shape == nifti.shape == (1, *nifti.shape[1:])
    assert close(dicom.affine, nifti.affine, 1.0)  # mm
    assert close(dicom, nifti, np.ptp(data))


def test_read_series_gives_the_written_volume_and_affine(tmp_path):
    data = volume(1)
    write_dicom_series(data, SAGITTAL, tmp_path, {})
    (series,), unreadable = find_dicom_series(tmp_path)
    image = read_series(series)
    assert unreadable == []
    assert isinstance(image, MetaTensor) and image.dtype == torch.float32
    assert tuple(image.shape) == (1, *SHAPE)
    assert same_image(image, data, SAGITTAL)


def test_round_trip_matches_simpleitk(tmp_path):
    """An independent reader (ITK/GDCM) sees the same voxels and geometry."""
    sitk = pytest.importorskip("SimpleITK")
    data = volume(2)
    write_dicom_series(data, SAGITTAL, tmp_path, {})
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path)))
    image = reader.Execute()
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)  # ITK gives [k, j, i]
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    assert same_image(MetaTensor(torch.as_tensor(array[None], dtype=torch.float32), affine=torch.as_tensor(affine)), data, SAGITTAL)


@pytest.mark.parametrize("dtype", [np.uint16, np.int16])
def test_integer_volumes_are_stored_exactly(tmp_path, dtype):
    data = np.random.default_rng(3).integers(-1000 if dtype == np.int16 else 0, 3000, SHAPE).astype(dtype)
    paths = write_dicom_series(data, AXIAL, tmp_path, {})
    first = pydicom.dcmread(paths[0])
    assert (float(first.RescaleSlope), float(first.RescaleIntercept)) == (1.0, 0.0)
    assert first.PixelRepresentation == (1 if dtype == np.int16 else 0)
    (series,), _ = find_dicom_series(tmp_path)
    assert np.array_equal(read_series(series)[0].numpy(), data)


def test_written_files_are_valid_mr_images(tmp_path):
    header = {"SeriesDescription": "AX T1 POST", "RepetitionTime": 600, "EchoTime": 12.5, "ContrastBolusAgent": "Gadovist",
              "DiffusionBValue": 0, "ImageType": ["ORIGINAL", "PRIMARY", "M"], "SeriesNumber": 7}
    paths = write_dicom_series(volume(), AXIAL, tmp_path, header, series_uid="1.2.3.4", instance_offset=40)
    assert [p.name for p in paths] == [f"IM{n:05d}" for n in range(41, 41 + SHAPE[2])]
    ds = pydicom.dcmread(paths[0])
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.SOPClassUID == pydicom.uid.MRImageStorage and ds.Modality == "MR"
    assert ds.SeriesInstanceUID == "1.2.3.4" and ds.InstanceNumber == 41
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
    for uid in (ds.SOPInstanceUID, ds.StudyInstanceUID, ds.FrameOfReferenceUID):
        assert pydicom.uid.UID(uid).is_valid
    assert (float(ds.RepetitionTime), float(ds.EchoTime), ds.ContrastBolusAgent, ds.SeriesNumber) == (600.0, 12.5, "Gadovist", 7)
    assert len({pydicom.dcmread(p).SOPInstanceUID for p in paths}) == len(paths)
    assert float(ds.SliceThickness) == pytest.approx(3.0) and [float(v) for v in ds.PixelSpacing] == pytest.approx([0.9, 1.1])


# -------------------------------------------------------------------------------------------------- finding


def test_find_dicom_series_in_a_mixed_folder(tmp_path):
    a = write_dicom_series(volume(10), AXIAL, tmp_path, {"SeriesDescription": "A"}, series_uid="1.2.3.1")
    b = write_dicom_series(volume(11), SAGITTAL, tmp_path, {"SeriesDescription": "B"}, series_uid="1.2.3.2",
                           instance_offset=100)
    renamed = shuffle_names(tmp_path)  # the two series interleaved under meaningless names
    c = write_dicom_series(volume(12), AXIAL, tmp_path / "sub" / "part1", {"SeriesDescription": "C"}, series_uid="1.2.3.3")
    (tmp_path / "sub" / "part2").mkdir()
    for path in c[::2]:  # one series spread over two subfolders
        path.rename(tmp_path / "sub" / "part2" / path.name)
    nib.save(nib.Nifti1Image(volume(13).astype(np.float32), AXIAL), tmp_path / "sub" / "t1.nii.gz")
    (tmp_path / "notes.dcm").write_text("not DICOM, whatever the extension says\n")
    broken = tmp_path / "broken"
    broken.write_bytes(b"\0" * 128 + b"DICM" + np.random.default_rng(0).bytes(300))

    series, unreadable = find_dicom_series(tmp_path)

    assert [s.name for s in series] == ["1.2.3.1", "1.2.3.2", "sub/1.2.3.3"]
    assert [s.uid for s in series] == ["1.2.3.1", "1.2.3.2", "1.2.3.3"]
    assert [s.header["SeriesDescription"] for s in series] == ["A", "B", "C"]
    assert sorted(series[0].files) == sorted(renamed[str(p)] for p in a)
    assert sorted(series[1].files) == sorted(renamed[str(p)] for p in b)
    assert sorted(series[2].files) == sorted(str(tmp_path / "sub" / ("part2" if i % 2 == 0 else "part1") / p.name)
                                             for i, p in enumerate(c))
    assert series[2].folder == str(tmp_path / "sub")
    assert [s.note for s in series] == ["", "", ""]
    assert [path for path, _ in unreadable] == [str(broken)]
    assert "unreadable" in unreadable[0][1]
    for s, data, affine in zip(series, (volume(10), volume(11), volume(12)), (AXIAL, SAGITTAL, AXIAL)):
        assert same_image(read_series(s), data, affine)


def test_files_are_sorted_by_position_not_by_instance_number(tmp_path):
    data = volume(4)
    paths = write_dicom_series(data, AXIAL, tmp_path, {})
    for path, number in zip(paths, np.random.default_rng(1).permutation(len(paths)) + 1):
        edit([path], InstanceNumber=int(number))
    (series,), _ = find_dicom_series(tmp_path)
    assert series.files == [str(p) for p in paths]  # written along k, which is the slice normal here
    assert same_image(read_series(series), data, AXIAL)


def test_a_dicom_file_without_series_uid_is_unreadable_and_empty_folders_are_empty(tmp_path):
    assert find_dicom_series(tmp_path) == ([], [])
    paths = write_dicom_series(volume(), AXIAL, tmp_path, {})
    ds = pydicom.dcmread(paths[0])
    del ds.SeriesInstanceUID
    ds.save_as(paths[0])
    series, unreadable = find_dicom_series(tmp_path)
    assert len(series[0].files) == SHAPE[2] - 1
    assert unreadable == [(str(paths[0]), unreadable[0][1])] and "SeriesInstanceUID" in unreadable[0][1]


def test_duplicate_copies_count_once(tmp_path):
    write_dicom_series(volume(), AXIAL, tmp_path / "a", {}, series_uid="1.2.3.9")
    shutil.copytree(tmp_path / "a", tmp_path / "copy")
    (series,), _ = find_dicom_series(tmp_path)
    assert len(series.files) == SHAPE[2] and all("/a/" in f for f in series.files)
    assert f"{SHAPE[2]} duplicate" in series.note
    assert series.name == "a/1.2.3.9"


def test_inconsistent_geometry_is_returned_with_a_note_and_refused_by_read_series(tmp_path):
    write_dicom_series(volume(), AXIAL, tmp_path, {}, series_uid="1.2.3.5")
    write_dicom_series(volume(), SAGITTAL, tmp_path, {}, series_uid="1.2.3.5", instance_offset=SHAPE[2])
    (series,), _ = find_dicom_series(tmp_path)
    assert "inconsistent geometry" in series.note and "ImageOrientationPatient" in series.note
    assert len(series.files) == 2 * SHAPE[2]
    with pytest.raises(ValueError, match="ImageOrientationPatient"):
        read_series(series)


def test_missing_slices_are_noted_and_refused(tmp_path):
    paths = write_dicom_series(volume(), AXIAL, tmp_path, {})
    paths[5].unlink()
    (series,), _ = find_dicom_series(tmp_path)
    assert "non-uniform slice spacing" in series.note
    with pytest.raises(ValueError, match="non-uniform slice spacing"):
        read_series(series)


def test_non_mr_modality_is_noted(tmp_path):
    write_dicom_series(volume(), AXIAL, tmp_path, {"Modality": "CT"})
    (series,), _ = find_dicom_series(tmp_path)
    assert series.note == "Modality CT, not MR"


# ------------------------------------------------------------------------------------------------- 4D rule


def write_4d(folder, headers, base=None, seed=20):
    """One series of len(headers) volumes (different values each); returns the volumes and files per volume."""
    volumes = [volume(seed + t) for t in range(len(headers))]
    paths = write_dicom_series(volumes, AXIAL, folder, base or {}, volume_headers=headers)
    n = SHAPE[2]
    return volumes, [paths[t * n:(t + 1) * n] for t in range(len(headers))]


def add_private(paths, kind: str, b: float) -> None:
    """Put a b-value where one vendor keeps it."""
    for path in paths:
        ds = pydicom.dcmread(path)
        if kind == "siemens":
            ds.private_block(0x0019, "SIEMENS MR HEADER", create=True).add_new(0x0C, "IS", int(b))
        elif kind == "ge":  # GE adds 10^9 in some software versions
            ds.private_block(0x0043, "GEMS_PARM_01", create=True).add_new(0x39, "IS", [int(b) + 1_000_000_000, 8, 0, 0])
        elif kind == "philips":
            ds.private_block(0x2001, "Philips Imaging DD 001", create=True).add_new(0x03, "FL", float(b))
        ds.save_as(path)


@pytest.mark.parametrize("source", ["DiffusionBValue", "siemens", "ge", "philips", "SequenceName"])
def test_dwi_keeps_the_highest_b_value(tmp_path, source):
    headers = [{}, {}]
    if source == "DiffusionBValue":
        headers = [{"DiffusionBValue": 0}, {"DiffusionBValue": 1000}]
    elif source == "SequenceName":
        headers = [{"SequenceName": "*ep_b0"}, {"SequenceName": "*ep_b1000t"}]
    volumes, files = write_4d(tmp_path, headers, {"SeriesDescription": "ep2d_diff"})
    if source in ("siemens", "ge", "philips"):
        add_private(files[0], source, 0)
        add_private(files[1], source, 1000)

    (series,), unreadable = find_dicom_series(tmp_path)

    assert unreadable == []
    assert series.files == [str(p) for p in files[1]]
    assert series.note == "4D: kept b=1000 of b=0,1000"
    assert series.header["b_values"] == [0.0, 1000.0]
    assert header_sequence(series.header) == ("DWI", "b-value 0,1000")
    assert same_image(read_series(series), volumes[1], AXIAL)


def test_dwi_directions_prefer_the_trace_image(tmp_path):
    original = ["ORIGINAL", "PRIMARY", "DIFFUSION", "NONE"]
    headers = [{"DiffusionBValue": 0, "ImageType": original}] + [{"DiffusionBValue": 1000, "ImageType": original}] * 3
    headers.append({"DiffusionBValue": 1000, "ImageType": ["DERIVED", "PRIMARY", "DIFFUSION", "TRACEW"]})
    _, files = write_4d(tmp_path, headers)
    (series,), _ = find_dicom_series(tmp_path)
    assert series.files == [str(p) for p in files[4]]
    assert series.note == "4D: kept b=1000 of b=0,1000; kept the trace-weighted image"


def test_dwi_directions_without_trace_keep_the_first(tmp_path):
    headers = [{"DiffusionBValue": 0}] + [{"DiffusionBValue": 1000}] * 3
    _, files = write_4d(tmp_path, headers)
    (series,), _ = find_dicom_series(tmp_path)
    assert series.files == [str(p) for p in files[1]]
    assert series.note == "4D: kept b=1000 of b=0,1000; kept the first of 3 diffusion directions per position"


def test_dwi_images_without_a_b_value_count_as_b0(tmp_path):
    _, files = write_4d(tmp_path, [{}, {"DiffusionBValue": 1000}])
    (series,), _ = find_dicom_series(tmp_path)
    assert series.files == [str(p) for p in files[1]]
    assert series.note == "4D: kept b=1000 of b=0,1000"
    assert series.header["b_values"] == [1000.0]


def test_multi_echo_keeps_the_last_echo(tmp_path):
    headers = [{"EchoTime": te, "EchoNumbers": n} for n, te in enumerate((10, 20, 30), start=1)]
    volumes, files = write_4d(tmp_path, headers[::-1])  # echoes stored last first: order does not matter
    (series,), _ = find_dicom_series(tmp_path)
    assert series.files == [str(p) for p in files[0]]
    assert series.note == "4D: kept the last echo TE=30 ms of TE=10,20,30 ms"
    assert series.header["EchoTime"] == 30.0
    assert same_image(read_series(series), volumes[0], AXIAL)


def test_echo_numbers_alone_decide_too(tmp_path):
    _, files = write_4d(tmp_path, [{"EchoNumbers": 1}, {"EchoNumbers": 2}])
    (series,), _ = find_dicom_series(tmp_path)
    assert series.files == [str(p) for p in files[1]]
    assert series.note == "4D: kept the last echo (EchoNumbers 2 of 2)"


def test_magnitude_is_kept_over_phase(tmp_path):
    _, files = write_4d(tmp_path, [{"ImageType": ["ORIGINAL", "PRIMARY", "P", "ND"]}, {"ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"]}])
    (series,), _ = find_dicom_series(tmp_path)
    assert series.files == [str(p) for p in files[1]]
    assert series.note == "4D: kept the magnitude images"


def test_time_series_keeps_the_first_volume(tmp_path):
    _, files = write_4d(tmp_path, [{}, {}, {}])
    (series,), _ = find_dicom_series(tmp_path)
    assert series.files == [str(p) for p in files[0]]
    assert series.note == "4D: kept the first of 3 images per position"


def test_read_series_refuses_repeated_positions(tmp_path):
    _, files = write_4d(tmp_path, [{}, {}])
    series = DicomSeries(uid="1.2", folder=str(tmp_path), files=[str(p) for p in files[0] + files[1]], name="x")
    with pytest.raises(ValueError, match="repeated slice positions"):
        read_series(series)


# ----------------------------------------------------------------------------------------------- header


def test_header_summary_is_plain_json(tmp_path):
    ds = Dataset()
    ds.SeriesDescription = "AX FLAIR "
    ds.ScanningSequence = ["SE", "IR"]
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M"]
    ds.RepetitionTime, ds.EchoTime, ds.InversionTime = "9000", "120.5", "2500"
    ds.ContrastBolusAgent = ""
    ds.DiffusionBValue = 0.0
    summary = header_summary(ds)
    assert json.loads(json.dumps(summary)) == summary
    assert summary["SeriesDescription"] == "AX FLAIR" and summary["ScanningSequence"] == "SE\\IR"
    assert summary["ImageType"] == ["ORIGINAL", "PRIMARY", "M"]
    assert (summary["RepetitionTime"], summary["EchoTime"], summary["InversionTime"]) == (9000.0, 120.5, 2500.0)
    assert type(summary["RepetitionTime"]) is float and type(summary["SeriesDescription"]) is str
    assert summary["ContrastBolusAgent"] is None and summary["FlipAngle"] is None and summary["ProtocolName"] is None
    assert summary["b_values"] == [0.0]
    assert set(summary) >= {"SequenceName", "SequenceVariant", "MRAcquisitionType", "MagneticFieldStrength",
                            "Modality", "BodyPartExamined"}
    assert header_sequence(summary) == ("FLAIR", "SeriesDescription 'AX FLAIR' ('flair')")


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ({}, None),
        ({"DiffusionBValue": 800.0}, 800.0),
        ({"SequenceName": "*ep_b1500t"}, 1500.0),
        ({"SequenceName": "b=500 dwi"}, 500.0),
        ({"SequenceName": "*tfl3d1_16ns"}, None),
    ],
)
def test_b_value_sources(tags, expected):
    ds = Dataset()
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    assert b_value(ds) == expected


def test_b_value_private_tags_of_another_creator_are_not_read():
    ds = Dataset()
    ds.private_block(0x0019, "SOME OTHER VENDOR", create=True).add_new(0x0C, "IS", 1000)
    assert b_value(ds) is None
    bare = Dataset()
    bare.add_new(0x0019100C, "IS", 700)  # no private creator at all (anonymised): the usual block is read
    assert b_value(bare) == 700.0


# (header, expected class); the descriptions are as vendors and sites write them
CASES = [
    ({}, None),
    ({"b_values": [0.0, 1000.0]}, "DWI"),
    ({"b_values": [1000.0], "SeriesDescription": "AX T2 FSE"}, "DWI"),  # b-value beats the description
    ({"ImageType": ["DERIVED", "PRIMARY", "DIFFUSION", "ADC"]}, "DWI"),
    ({"SeriesDescription": "ep2d_diff_3scan_trace_p2"}, "DWI"),
    ({"SeriesDescription": "AX FLAIR"}, "FLAIR"),
    ({"SeriesDescription": "t2_tirm_tra_dark-fluid"}, "FLAIR"),
    ({"SeriesDescription": "Sag CUBE T2 FLAIR"}, "FLAIR"),
    ({"SeriesDescription": "AX FLAIR", "RepetitionTime": 500.0, "EchoTime": 10.0}, "FLAIR"),  # keyword beats timing
    ({"SeriesDescription": "AX T1 FLAIR"}, "T1"),
    ({"SeriesDescription": "AX T1 FLAIR +C"}, "T1Gd"),
    ({"SeriesDescription": "t1_mprage_sag_p2_iso"}, "T1"),
    ({"SeriesDescription": "Ax 3D BRAVO"}, "T1"),
    ({"SeriesDescription": "WIP sT1W_3D_TFE"}, "T1"),
    ({"SeriesDescription": "T1 MPRAGE POST GAD"}, "T1Gd"),
    ({"SeriesDescription": "T1+C"}, "T1Gd"),
    ({"SeriesDescription": "t1_se_tra_KM"}, "T1Gd"),
    ({"SeriesDescription": "AX T1 SE", "ContrastBolusAgent": "Gadovist"}, "T1Gd"),
    ({"SeriesDescription": "AX T1 PRE", "ContrastBolusAgent": "Gadovist"}, "T1"),
    ({"SeriesDescription": "Series 5", "ProtocolName": "t1_mprage_sag"}, "T1"),
    ({"SeriesDescription": "AX T2 FSE"}, "T2"),
    ({"SeriesDescription": "t2_tse_tra_512"}, "T2"),
    ({"SeriesDescription": "AX SWAN"}, "SWI"),
    ({"SeriesDescription": "SWIp"}, "SWI"),
    ({"SeriesDescription": "t2_swi_tra_p2"}, "SWI"),
    ({"SeriesDescription": "mIP_Images(SW)"}, "SWI"),
    ({"SeriesDescription": "Ax GRE T2*"}, "SWI"),
    ({"SeriesDescription": "AAHead_Scout_64ch-head-coil"}, None),
    ({"SeriesDescription": "3D TOF"}, None),
    ({"SequenceName": "*tfl3d1_16ns"}, "T1"),
    ({"RepetitionTime": 9000.0, "EchoTime": 120.0, "InversionTime": 2500.0}, "FLAIR"),
    ({"RepetitionTime": 600.0, "EchoTime": 12.0}, "T1"),
    ({"RepetitionTime": 600.0, "EchoTime": 12.0, "ContrastBolusAgent": "Gadovist"}, "T1Gd"),
    ({"RepetitionTime": 600.0, "EchoTime": 12.0, "ContrastBolusAgent": "NONE"}, "T1"),
    ({"RepetitionTime": 2300.0, "EchoTime": 2.98, "InversionTime": 900.0}, "T1"),
    ({"RepetitionTime": 4000.0, "EchoTime": 100.0}, "T2"),
    ({"SeriesDescription": "AX TSE", "RepetitionTime": 4500.0, "EchoTime": 90.0}, "T2"),  # TSE alone: timing decides
    ({"ScanningSequence": "GR", "RepetitionTime": 28.0, "EchoTime": 20.0}, "SWI"),
    ({"RepetitionTime": 3000.0, "EchoTime": 30.0}, None),  # proton density: none of the 6
]


@pytest.mark.parametrize(("header", "expected"), CASES, ids=[str(i) for i in range(len(CASES))])
def test_header_sequence(header, expected):
    cls, reason = header_sequence(header)
    assert cls == expected, reason
    assert cls is None or cls in SEQUENCES
    assert isinstance(reason, str) and reason


def test_header_sequence_reasons():
    assert header_sequence({"RepetitionTime": 600.0, "EchoTime": 12.0, "ContrastBolusAgent": "Gadovist"}) == (
        "T1Gd", "TR 600 ms, TE 12 ms, contrast agent 'Gadovist'")
    assert header_sequence({"b_values": [0.0, 1000.0]}) == ("DWI", "b-value 0,1000")
    assert header_sequence({"SeriesDescription": "AX T1 FLAIR"})[1] == (
        "SeriesDescription 'AX T1 FLAIR' ('t1 flair': T1-FLAIR is T1-weighted)")
    assert "mapped to SWI" in header_sequence({"SeriesDescription": "GRE T2 star"})[1]
    assert header_sequence({}) == (None, "no b-value, known keyword or timing parameters in the header")


def test_bids_names_cover_the_classes():
    assert set(BIDS_NAMES) == set(SEQUENCES)
    assert BIDS_NAMES["T1Gd"] == "ce-gadolinium_T1w"


# ------------------------------------------------------------------------------------------------ bad input


def test_find_dicom_series_bad_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        find_dicom_series(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="file"):
        find_dicom_series(tmp_path / "file")


def test_read_series_bad_input(tmp_path):
    with pytest.raises(TypeError, match="DicomSeries"):
        read_series(str(tmp_path))
    with pytest.raises(ValueError, match="no files"):
        read_series(DicomSeries(uid="1.2", folder=str(tmp_path), files=[], name="empty"))
    with pytest.raises(FileNotFoundError, match="gone"):
        read_series(DicomSeries(uid="1.2", folder=str(tmp_path), files=[str(tmp_path / "gone")], name="x"))


def test_header_functions_bad_input():
    with pytest.raises(TypeError, match="Dataset"):
        header_summary({"EchoTime": 10})
    with pytest.raises(TypeError, match="Dataset"):
        b_value({"DiffusionBValue": 10})
    with pytest.raises(TypeError, match="dict"):
        header_sequence("AX T1")


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
        ({"header": {"EchoTme": 10}}, ValueError, "EchoTme"),
        ({"header": {"ImagePositionPatient": [0, 0, 0]}}, ValueError, "ImagePositionPatient"),
        ({"header": {"b_values": [0, 1000]}}, ValueError, "volume_headers"),
        ({"volume_headers": [{}, {}]}, ValueError, "volume_headers"),
    ],
)
def test_write_dicom_series_bad_input(tmp_path, kwargs, error, match):
    arguments = {"volume": np.zeros((4, 4, 3)), "affine": np.eye(4), "out_dir": tmp_path, "header": {}, **kwargs}
    with pytest.raises(error, match=match):
        write_dicom_series(**arguments)
    assert list(tmp_path.iterdir()) == []


def test_write_dicom_series_never_overwrites(tmp_path):
    write_dicom_series(np.zeros((4, 4, 3)), np.eye(4), tmp_path, {})
    with pytest.raises(FileExistsError, match="IM00001"):
        write_dicom_series(np.zeros((4, 4, 3)), np.eye(4), tmp_path, {})
