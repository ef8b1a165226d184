"""DICOM input: finding and grouping series, the 4D rule on DICOM series, reading with MONAI."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage, Orientation

from sarf_bundle.dicom import DicomSeries, find_dicom_series, read_series
from sarf_bundle.headers import header_sequence
from sarf_bundle.simulation.dicom_writer import write_dicom_series

SHAPE = (24, 20, 12)
MR = {"RepetitionTime": 500.0, "EchoTime": 10.0, "FlipAngle": 90.0, "PixelBandwidth": 150.0}


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


def write(data, affine, folder, header=None, series_number=1, **kwargs):
    """write_dicom_series with a complete acquisition header (MR) under ``header``."""
    return write_dicom_series(data, affine, folder, {**MR, **(header or {})}, series_number=series_number, **kwargs)


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
    write(data, affine, tmp_path / "series", {"SeriesDescription": "AX T1"})
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), tmp_path / "volume.nii.gz")

    dicom = ras(LoadImage(reader="PydicomReader", image_only=True, ensure_channel_first=True)(str(tmp_path / "series")))
    nifti = ras(LoadImage(image_only=True, ensure_channel_first=True)(str(tmp_path / "volume.nii.gz")))

    assert dicom.shape == nifti.shape == (1, *nifti.shape[1:])
    assert close(dicom.affine, nifti.affine, 1.0)  # mm
    assert close(dicom, nifti, np.ptp(data))


def test_read_series_gives_the_written_volume_and_affine(tmp_path):
    data = volume(1)
    write(data, SAGITTAL, tmp_path, {})
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
    write(data, SAGITTAL, tmp_path, {})
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path)))
    image = reader.Execute()
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)  # ITK gives [k, j, i]
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    assert same_image(MetaTensor(torch.as_tensor(array[None], dtype=torch.float32), affine=torch.as_tensor(affine)), data, SAGITTAL)



# -------------------------------------------------------------------------------------------------- finding


def test_find_dicom_series_in_a_mixed_folder(tmp_path):
    a = write(volume(10), AXIAL, tmp_path, {"SeriesDescription": "A"}, series_uid="1.2.3.1")
    b = write(volume(11), SAGITTAL, tmp_path, {"SeriesDescription": "B"}, series_number=2, series_uid="1.2.3.2",
                           instance_offset=100)
    renamed = shuffle_names(tmp_path)  # the two series interleaved under meaningless names
    c = write(volume(12), AXIAL, tmp_path / "sub" / "part1", {"SeriesDescription": "C"}, series_number=3, series_uid="1.2.3.3")
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
    assert sorted(series[0].volumes[0]) == sorted(renamed[str(p)] for p in a)
    assert sorted(series[1].volumes[0]) == sorted(renamed[str(p)] for p in b)
    assert sorted(series[2].volumes[0]) == sorted(str(tmp_path / "sub" / ("part2" if i % 2 == 0 else "part1") / p.name)
                                             for i, p in enumerate(c))
    assert series[2].folder == str(tmp_path / "sub")
    assert [s.note for s in series] == ["", "", ""]
    assert [path for path, _ in unreadable] == [str(broken)]
    assert "unreadable" in unreadable[0][1]
    for s, data, affine in zip(series, (volume(10), volume(11), volume(12)), (AXIAL, SAGITTAL, AXIAL)):
        assert same_image(read_series(s), data, affine)


def test_files_are_sorted_by_position_not_by_instance_number(tmp_path):
    data = volume(4)
    paths = write(data, AXIAL, tmp_path, {})
    for path, number in zip(paths, np.random.default_rng(1).permutation(len(paths)) + 1):
        edit([path], InstanceNumber=int(number))
    (series,), _ = find_dicom_series(tmp_path)
    assert series.volumes == [[str(p) for p in paths]]  # written along k, which is the slice normal here
    assert same_image(read_series(series), data, AXIAL)


def test_a_dicom_file_without_series_uid_is_unreadable_and_empty_folders_are_empty(tmp_path):
    assert find_dicom_series(tmp_path) == ([], [])
    paths = write(volume(), AXIAL, tmp_path, {})
    ds = pydicom.dcmread(paths[0])
    del ds.SeriesInstanceUID
    ds.save_as(paths[0])
    series, unreadable = find_dicom_series(tmp_path)
    assert len(series[0].volumes[0]) == SHAPE[2] - 1
    assert unreadable == [(str(paths[0]), unreadable[0][1])] and "SeriesInstanceUID" in unreadable[0][1]


def test_duplicate_copies_count_once(tmp_path):
    write(volume(), AXIAL, tmp_path / "a", {}, series_uid="1.2.3.9")
    shutil.copytree(tmp_path / "a", tmp_path / "copy")
    (series,), _ = find_dicom_series(tmp_path)
    assert len(series.volumes[0]) == SHAPE[2] and all("/a/" in f for f in series.volumes[0])
    assert f"{SHAPE[2]} duplicate" in series.note
    assert series.name == "a/1.2.3.9"


def test_inconsistent_geometry_is_returned_with_a_note_and_refused_by_read_series(tmp_path):
    write(volume(), AXIAL, tmp_path, {}, series_uid="1.2.3.5")
    write(volume(), SAGITTAL, tmp_path, {}, series_uid="1.2.3.5", instance_offset=SHAPE[2])
    (series,), _ = find_dicom_series(tmp_path)
    assert "inconsistent geometry" in series.note and "ImageOrientationPatient" in series.note
    assert series.volumes == [[str(p) for p in sorted(tmp_path.iterdir())]]  # in acquisition order
    with pytest.raises(ValueError, match="ImageOrientationPatient"):
        read_series(series)


def test_missing_slices_are_noted_and_refused(tmp_path):
    paths = write(volume(), AXIAL, tmp_path, {})
    paths[5].unlink()
    (series,), _ = find_dicom_series(tmp_path)
    assert "non-uniform slice spacing" in series.note
    with pytest.raises(ValueError, match="non-uniform slice spacing"):
        read_series(series)


def test_non_mr_modality_is_noted(tmp_path):
    write(volume(), AXIAL, tmp_path, {"Modality": "CT"})
    (series,), _ = find_dicom_series(tmp_path)
    assert series.note == "Modality CT, not MR"


# ------------------------------------------------------------------------------------------------- 4D rule


def write_4d(folder, headers, base=None, seed=20):
    """One series of len(headers) volumes (different values each); returns the volumes and files per volume."""
    volumes = [volume(seed + t) for t in range(len(headers))]
    paths = write(volumes, AXIAL, folder, base or {}, volume_headers=headers)
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
    assert series.volumes == [[str(p) for p in files[1]]]
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
    assert series.volumes == [[str(p) for p in files[4]]]
    assert series.note == "4D: kept b=1000 of b=0,1000; kept the trace-weighted image"


def test_adc_maps_among_dwi_images_are_dropped(tmp_path):
    headers = [{"DiffusionBValue": 1000, "ImageType": ["ORIGINAL", "PRIMARY", "DIFFUSION", "NONE"]},
               {"DiffusionBValue": 1000, "ImageType": ["DERIVED", "PRIMARY", "DIFFUSION", "ADC"]}]
    _, files = write_4d(tmp_path, headers)
    (series,), _ = find_dicom_series(tmp_path)
    assert series.volumes == [[str(p) for p in files[0]]]
    assert series.note == "4D: dropped the ADC/FA maps"


def test_dwi_directions_without_trace_are_averaged(tmp_path):
    headers = [{"DiffusionBValue": 0}] + [{"DiffusionBValue": 1000}] * 3
    volumes, files = write_4d(tmp_path, headers)
    (series,), _ = find_dicom_series(tmp_path)
    assert series.volumes == [[str(p) for p in files[t]] for t in (1, 2, 3)]
    assert series.note == "4D: kept b=1000 of b=0,1000; mean of the 3 diffusion images per position at b=1000"
    assert same_image(read_series(series), np.mean(volumes[1:], axis=0), AXIAL)


def test_dwi_directions_with_a_missing_slice_keep_the_last(tmp_path):
    volumes, files = write_4d(tmp_path, [{"DiffusionBValue": 1000}] * 3)
    files[2][4].unlink()
    (series,), _ = find_dicom_series(tmp_path)
    assert series.note == "4D: kept the last of 3 images per position (not as many at every position)"
    assert series.volumes == [[str(p) if p.exists() else str(files[1][4]) for p in files[2]]]


def test_dwi_images_without_a_b_value_count_as_b0(tmp_path):
    _, files = write_4d(tmp_path, [{}, {"DiffusionBValue": 1000}])
    (series,), _ = find_dicom_series(tmp_path)
    assert series.volumes == [[str(p) for p in files[1]]]
    assert series.note == "4D: kept b=1000 of b=0,1000"
    assert series.header["b_values"] == [1000.0]


def test_multi_echo_keeps_the_last_echo(tmp_path):
    headers = [{"EchoTime": te, "EchoNumbers": n} for n, te in enumerate((10, 20, 30), start=1)]
    volumes, files = write_4d(tmp_path, headers[::-1])  # echoes stored last first: order does not matter
    (series,), _ = find_dicom_series(tmp_path)
    assert series.volumes == [[str(p) for p in files[0]]]
    assert series.note == "4D: kept the last echo TE=30 ms of TE=10,20,30 ms"
    assert series.header["EchoTime"] == 30.0
    assert same_image(read_series(series), volumes[0], AXIAL)


def test_echo_numbers_alone_decide_too(tmp_path):
    _, files = write_4d(tmp_path, [{"EchoNumbers": 1}, {"EchoNumbers": 2}])
    (series,), _ = find_dicom_series(tmp_path)
    assert series.volumes == [[str(p) for p in files[1]]]
    assert series.note == "4D: kept the last echo (EchoNumbers 2 of 2)"


def test_magnitude_is_kept_over_phase(tmp_path):
    _, files = write_4d(tmp_path, [{"ImageType": ["ORIGINAL", "PRIMARY", "P", "ND"]}, {"ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"]}])
    (series,), _ = find_dicom_series(tmp_path)
    assert series.volumes == [[str(p) for p in files[1]]]
    assert series.note == "4D: kept the magnitude images"


def test_time_series_keeps_the_last_volume(tmp_path):
    volumes, files = write_4d(tmp_path, [{}, {}, {}])
    (series,), _ = find_dicom_series(tmp_path)
    assert series.volumes == [[str(p) for p in files[2]]]
    assert series.note == "4D: kept the last of 3 images per position"
    assert same_image(read_series(series), volumes[2], AXIAL)


def test_read_series_refuses_repeated_positions(tmp_path):
    _, files = write_4d(tmp_path, [{}, {}])
    series = DicomSeries(uid="1.2", folder=str(tmp_path), volumes=[[str(p) for p in files[0] + files[1]]], name="x")
    with pytest.raises(ValueError, match="repeated slice positions"):
        read_series(series)


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
        read_series(DicomSeries(uid="1.2", folder=str(tmp_path), volumes=[], name="empty"))
    with pytest.raises(FileNotFoundError, match="gone"):
        read_series(DicomSeries(uid="1.2", folder=str(tmp_path), volumes=[[str(tmp_path / "gone")]], name="x"))

