"""Simulated volumes as DICOM series, with the headers a scanner would write.

The simulator writes NIfTI (:func:`sarf_bundle.files.write_nifti`); the demo, the tests and the benchmarks also need
DICOM series, with headers complete enough that header-based tools (dcm2niix, dcm-classifier,
:func:`sarf_bundle.headers.header_sequence`) see distinct, complete series: each series has its own SeriesNumber,
and every file carries RepetitionTime, EchoTime, FlipAngle and PixelBandwidth (and InversionTime where given).
:func:`protocol_header` gives these from a simulated :class:`~sarf_bundle.simulation.sequences.Protocol`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pydicom.valuerep import DSfloat

from .sequences import GAMMA_MHZ_PER_T

__all__ = ["ACQUISITION_KEYWORDS", "protocol_header", "write_dicom_series"]

ACQUISITION_KEYWORDS = ("RepetitionTime", "EchoTime", "FlipAngle", "PixelBandwidth")
"""The header keywords every written file must have (in ``header`` or its volume's ``volume_headers``)."""

# set by write_dicom_series from its arguments, the volume and the affine; a header may not set them
_WRITER_OWNED = {
    "Rows", "Columns", "PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient", "SliceThickness",
    "SpacingBetweenSlices", "SliceLocation", "PixelData", "BitsAllocated", "BitsStored", "HighBit",
    "PixelRepresentation", "SamplesPerPixel", "PhotometricInterpretation", "RescaleSlope", "RescaleIntercept",
    "SOPInstanceUID", "SOPClassUID", "InstanceNumber", "SeriesNumber",
}

# per pulse-sequence kind: ScanningSequence, SequenceVariant and a typical readout bandwidth (Hz/pixel), which the
# simulator does not model (its pe_bandwidth_hz is the phase-encode bandwidth of EPI)
_KINDS: dict[str, tuple[list[str], list[str], float]] = {
    "mprage": (["GR", "IR"], ["SP", "MP"], 200.0),
    "spgr": (["GR"], ["SP"], 200.0),
    "se": (["SE"], ["SP"], 150.0),
    "tse": (["SE"], ["SK", "SP"], 200.0),
    "flair": (["SE", "IR"], ["SK", "SP", "MP"], 250.0),
    "epi": (["EP"], ["SK", "SP"], 1500.0),
    "swi": (["GR"], ["SP"], 120.0),
}


def protocol_header(acquisition: Mapping[str, Any]) -> dict[str, Any]:
    """The DICOM header of a simulated acquisition.

    Args:
        acquisition: the fields of a :class:`~sarf_bundle.simulation.sequences.Protocol` (``dataclasses.asdict``, or
            the ``acquisition`` of a simulated datalist entry): ``kind``, ``field_t``, ``tr``, ``te``, ``ti``,
            ``flip``, ``b_value``, ``contrast``, ``three_d``.

    Returns:
        RepetitionTime, EchoTime, FlipAngle, PixelBandwidth (typical of the kind), ScanningSequence,
        SequenceVariant, MRAcquisitionType, MagneticFieldStrength, ImagingFrequency, and InversionTime,
        DiffusionBValue and ContrastBolusAgent where the protocol has them.

    Raises:
        ValueError: an unknown ``kind``.
    """
    kind = acquisition["kind"]
    if kind not in _KINDS:
        raise ValueError(f"unknown pulse-sequence kind {kind!r}; expected one of {', '.join(_KINDS)}")
    scanning, variant, bandwidth = _KINDS[kind]
    header = {
        "RepetitionTime": acquisition["tr"],
        "EchoTime": acquisition["te"],
        "FlipAngle": acquisition["flip"],
        "PixelBandwidth": bandwidth,
        "ScanningSequence": scanning,
        "SequenceVariant": variant,
        "MRAcquisitionType": "3D" if acquisition["three_d"] else "2D",
        "MagneticFieldStrength": acquisition["field_t"],
        "ImagingFrequency": GAMMA_MHZ_PER_T * acquisition["field_t"],
    }
    if acquisition["ti"] > 0:
        header["InversionTime"] = acquisition["ti"]
    if acquisition["b_value"] > 0:
        header["DiffusionBValue"] = acquisition["b_value"]
    if acquisition["contrast"]:
        header["ContrastBolusAgent"] = "gadolinium"
    return header


def write_dicom_series(
    volume: np.ndarray | Sequence[np.ndarray],
    affine: np.ndarray,
    out_dir: str | os.PathLike,
    header: Mapping[str, Any],
    *,
    series_number: int,
    series_uid: str | None = None,
    instance_offset: int = 0,
    volume_headers: Sequence[Mapping[str, Any]] | None = None,
) -> list[Path]:
    """Write a volume as a DICOM series of single-frame MR Image Storage files, one slice per k.

    The files are ``out_dir/IM<InstanceNumber:05d>`` (no extension), explicit VR little endian, with
    uint16 pixels and RescaleSlope/RescaleIntercept that reproduce the values to within 1/131070 of their
    range (integer volumes that fit are stored as they are, uint16 or int16, slope 1).

    Args:
        volume: ``[i, j, k]`` array; or ``[i, j, k, t]`` (or a list of ``[i, j, k]`` arrays) for a 4D series,
            one volume per t, all with the same SeriesInstanceUID and slice positions.
        affine: 4x4 voxel-to-RAS affine (as nibabel gives); the i and j columns must be orthogonal (DICOM
            row and column cosines). Slice k of volume t has InstanceNumber
            ``instance_offset + t * K + k + 1``; pixel (row r, column c) of a slice is voxel ``(i=c, j=r)``.
        out_dir: created if needed; existing files are never overwritten.
        header: DICOM keywords and values for every file: at least :data:`ACQUISITION_KEYWORDS` (here or in
            ``volume_headers``; :func:`protocol_header` gives them for a simulated volume), and e.g.
            SeriesDescription, InversionTime, ContrastBolusAgent, DiffusionBValue, StudyInstanceUID, PatientID.
            ``b_values`` with one value sets DiffusionBValue; None values are skipped. Geometry, pixel, instance
            attributes and SeriesNumber are the writer's.
        series_number: SeriesNumber; give each series of a study its own.
        series_uid: SeriesInstanceUID; generated when None (and not in ``header``).
        instance_offset: added to every InstanceNumber (and file name), to put several series in one folder.
        volume_headers: one mapping per volume of a 4D series, applied over ``header`` (e.g.
            ``{"DiffusionBValue": 1000}``, ``{"EchoTime": 30, "EchoNumbers": 3}``).

    Returns:
        The written files, in InstanceNumber order.

    Raises:
        ValueError: a volume that is not 3D/4D, empty or not finite; an affine that is not a finite 4x4 with
            orthogonal, non-zero i and j columns; an unknown or writer-owned header keyword, or a missing one of
            :data:`ACQUISITION_KEYWORDS`; volume_headers of the wrong length.
        FileExistsError: a file to write exists already.
    """
    volumes = _volumes(volume)
    headers = _volume_headers(header, volume_headers, len(volumes))
    geometry = _slice_geometry(affine)
    stored, scaling = _pixels(volumes)
    n_k = volumes[0].shape[2]
    numbers = [instance_offset + t * n_k + k + 1 for t in range(len(volumes)) for k in range(n_k)]
    paths = _new_paths(Path(out_dir), numbers)
    shared = dict(header)
    uids = {
        "SeriesInstanceUID": series_uid or shared.get("SeriesInstanceUID") or generate_uid(),
        "StudyInstanceUID": shared.get("StudyInstanceUID") or generate_uid(),
        "FrameOfReferenceUID": shared.get("FrameOfReferenceUID") or generate_uid(),
    }
    for t, (pixels, volume_header) in enumerate(zip(stored, headers)):
        items = {**volume_header, **uids, "SeriesNumber": series_number}
        if len(volumes) > 1:
            items = {"AcquisitionNumber": t + 1, "TemporalPositionIdentifier": t + 1, **items}
        for k in range(n_k):
            ds = _base_dataset(paths[t * n_k + k])
            for keyword, value in items.items():
                setattr(ds, keyword, _dicom_value(keyword, value))
            ds.InstanceNumber = numbers[t * n_k + k]
            _set_slice(ds, geometry, k, pixels[:, :, k], scaling)
            _save(ds, paths[t * n_k + k])
    return paths


@dataclass(frozen=True)
class _SliceGeometry:
    """Where the slices of a volume lie, in DICOM's patient coordinates (LPS)."""

    lps: np.ndarray  # voxel-to-LPS affine
    orientation: list[float]  # row cosine (along i), then column cosine (along j)
    pixel_spacing: list[float]  # row spacing (along j), column spacing (along i)
    normal: np.ndarray
    thickness: float


@dataclass(frozen=True)
class _Scaling:
    """How stored pixel values map to the volume's values."""

    slope: float
    intercept: float
    signed: bool
    low: float
    high: float


def _volumes(volume: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    if isinstance(volume, np.ndarray) and volume.ndim == 4:
        volumes = [volume[..., t] for t in range(volume.shape[-1])]
    elif isinstance(volume, np.ndarray):
        volumes = [volume]
    elif isinstance(volume, Sequence) and not isinstance(volume, (str, bytes)):
        volumes = [np.asarray(v) for v in volume]
    else:
        raise ValueError(f"volume must be a 3D or 4D array or a list of 3D arrays, got {type(volume).__name__}")
    if not volumes:
        raise ValueError("no volume to write")
    volumes = [np.asarray(v, dtype=np.float64) for v in volumes]
    shapes = {v.shape for v in volumes}
    if len(shapes) != 1 or volumes[0].ndim != 3 or min(volumes[0].shape) < 1:
        raise ValueError(f"every volume must be 3D [i, j, k] with the same shape, got {sorted(shapes)}")
    if not all(np.isfinite(v).all() for v in volumes):
        raise ValueError("the volume has NaN or infinite values")
    return volumes


def _volume_headers(
    header: Mapping[str, Any], volume_headers: Sequence[Mapping[str, Any]] | None, n_volumes: int
) -> list[dict[str, Any]]:
    """The checked header items of each volume (``header`` under its volume's), without the UIDs and None values."""
    if volume_headers is None:
        volume_headers = [{}] * n_volumes
    if len(volume_headers) != n_volumes:
        raise ValueError(f"volume_headers has {len(volume_headers)} entries for {n_volumes} volumes")
    merged = [{**header, **extra} for extra in volume_headers]
    for items in merged:
        for keyword, value in items.items():
            if keyword == "b_values":
                if value is not None and len(value) > 1:
                    raise ValueError("b_values with several values: give one b-value per volume in volume_headers")
            elif keyword in _WRITER_OWNED:
                raise ValueError(f"header keyword {keyword} is set by write_dicom_series from its arguments, the volume and affine")
            elif tag_for_keyword(keyword) is None:
                raise ValueError(f"header key {keyword!r} is not a DICOM keyword")
        missing = [k for k in ACQUISITION_KEYWORDS if items.get(k) is None]
        if missing:
            raise ValueError(
                f"header lacks {', '.join(missing)}: header-based tools need them (protocol_header gives them for a "
                "simulated volume)"
            )
    return [_header_items(items) for items in merged]


def _header_items(header: Mapping[str, Any]) -> dict[str, Any]:
    items = {}
    for keyword, value in header.items():
        if value is None or keyword in ("SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID"):
            continue
        if keyword == "b_values":
            if len(value) == 1 and header.get("DiffusionBValue") is None:
                items["DiffusionBValue"] = value[0]
            continue
        items[keyword] = value
    return items


def _slice_geometry(affine: np.ndarray) -> _SliceGeometry:
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise ValueError(f"affine must be a finite 4x4 matrix, got shape {affine.shape}")
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    axis_i, axis_j, axis_k = lps[:3, 0], lps[:3, 1], lps[:3, 2]
    size_i, size_j = np.linalg.norm(axis_i), np.linalg.norm(axis_j)
    if min(size_i, size_j, np.linalg.norm(axis_k)) < 1e-6:
        raise ValueError("affine has a zero-length axis")
    row_cosine, column_cosine = axis_i / size_i, axis_j / size_j
    if abs(float(np.dot(row_cosine, column_cosine))) > 1e-4:
        raise ValueError("the affine's i and j axes are not orthogonal: DICOM slices need orthogonal rows and columns")
    normal = np.cross(row_cosine, column_cosine)
    if abs(float(np.dot(axis_k, normal))) < 1e-6:
        raise ValueError("the affine's k axis lies in the slice plane")
    return _SliceGeometry(
        lps=lps,
        orientation=[*row_cosine, *column_cosine],
        pixel_spacing=[size_j, size_i],
        normal=normal,
        thickness=abs(float(np.dot(axis_k, normal))),
    )


def _new_paths(out: Path, numbers: Sequence[int]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"IM{n:05d}" for n in numbers]
    existing = [p for p in paths if p.exists()]
    if existing:
        raise FileExistsError(f"{existing[0]} exists: write into another folder or use another instance_offset")
    return paths


def _ds(value: float) -> DSfloat:
    return DSfloat(float(value), auto_format=True)


def _dicom_value(keyword: str, value: Any) -> Any:
    """``value`` in the form pydicom writes for ``keyword``'s VR (DS values fitted to 16 characters)."""
    vr = dictionary_VR(tag_for_keyword(keyword))
    many = isinstance(value, (list, tuple, np.ndarray))
    values = list(value) if many else [value]
    if vr == "DS":
        values = [_ds(v) for v in values]
    elif vr in ("IS", "SS", "US", "SL", "UL"):
        values = [int(v) for v in values]
    elif vr in ("FD", "FL"):
        values = [float(v) for v in values]
    return values if many else values[0]


def _pixels(volumes: Sequence[np.ndarray]) -> tuple[list[np.ndarray], _Scaling]:
    """Stored values (uint16 or int16) and how they map back."""
    low = min(float(v.min()) for v in volumes)
    high = max(float(v.max()) for v in volumes)
    integral = all(np.array_equal(v, np.round(v)) for v in volumes)
    if integral and low >= 0 and high <= 65535:
        return [v.astype(np.uint16) for v in volumes], _Scaling(1.0, 0.0, False, low, high)
    if integral and low >= -32768 and high <= 32767:
        return [v.astype(np.int16) for v in volumes], _Scaling(1.0, 0.0, True, low, high)
    slope = float(_ds((high - low) / 65535)) if high > low else 1.0
    intercept = float(_ds(low))
    stored = [np.clip(np.round((v - intercept) / slope), 0, 65535).astype(np.uint16) for v in volumes]
    return stored, _Scaling(slope, intercept, False, low, high)


def _base_dataset(path: Path) -> FileDataset:
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.PositionReferenceIndicator = ""
    ds.Modality = "MR"
    ds.PatientName = "Anonymous"
    ds.PatientID = "anonymous"
    ds.PatientBirthDate = ds.PatientSex = ""
    ds.StudyDate = ds.StudyTime = ds.ReferringPhysicianName = ds.StudyID = ds.AccessionNumber = ""
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.ScanningSequence = "RM"  # research mode: unknown
    ds.SequenceVariant = "NONE"
    ds.ScanOptions = ds.MRAcquisitionType = ds.EchoTrainLength = ""
    return ds


def _set_slice(ds: FileDataset, geometry: _SliceGeometry, k: int, pixels: np.ndarray, scaling: _Scaling) -> None:
    """Slice ``k``'s position, orientation and pixels (``[i, j]``)."""
    position = geometry.lps @ np.array([0.0, 0.0, k, 1.0])
    ds.ImagePositionPatient = [_ds(v) for v in position[:3]]
    ds.ImageOrientationPatient = [_ds(v) for v in geometry.orientation]
    ds.PixelSpacing = [_ds(v) for v in geometry.pixel_spacing]
    ds.SliceThickness = ds.SpacingBetweenSlices = _ds(geometry.thickness)
    ds.SliceLocation = _ds(float(np.dot(position[:3], geometry.normal)))
    ds.Rows, ds.Columns = pixels.shape[1], pixels.shape[0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if scaling.signed else 0
    ds.RescaleSlope, ds.RescaleIntercept = _ds(scaling.slope), _ds(scaling.intercept)
    ds.RescaleType = "US"
    ds.WindowCenter, ds.WindowWidth = _ds((scaling.low + scaling.high) / 2), _ds(max(scaling.high - scaling.low, 1.0))
    ds.PixelData = np.ascontiguousarray(pixels.T).astype("<i2" if scaling.signed else "<u2").tobytes()


def _save(ds: FileDataset, path: Path) -> None:
    if int(pydicom.__version__.split(".")[0]) >= 3:
        ds.save_as(path, enforce_file_format=True)
    else:  # pydicom 2.4
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(path, write_like_original=False)
