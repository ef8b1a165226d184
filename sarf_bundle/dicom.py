"""DICOM input: find the series in a folder, reduce 4D series to one volume, read them with MONAI, and guess
the sequence from the header. Also writes volumes as DICOM series (for tests, demos and exports).

Finding (:func:`find_dicom_series`): files are recognised by their content (the ``DICM`` marker of a DICOM
Part 10 file at byte 128; the file name and extension do not matter) and grouped by SeriesInstanceUID, so one
folder may hold several series and one series may be spread over subfolders. Only headers are read.

The 4D rule, when a series repeats slice positions (several volumes), applied in this order until one image
per position is left:

1. several b-values (a DWI with b=0 and b=1000, say): keep the images of the highest b-value.
2. several echoes (EchoTime, else EchoNumbers): keep the last echo (longest TE, the most T2*-weighted).
3. images of one b-value in several diffusion directions: keep the trace-weighted (isotropic) image when the
   series holds one (ImageType TRACE or TRACEW, or DiffusionDirectionality ISOTROPIC) and no ADC/FA map;
   magnitude and phase images: keep the magnitude (ImageType M or MAGNITUDE).
4. anything else still repeated (diffusion directions without a trace image, temporal positions, repeated
   acquisitions): keep the first image at each position, in the order AcquisitionNumber,
   TemporalPositionIdentifier, InstanceNumber.

:attr:`DicomSeries.note` says what was done, e.g. ``"4D: kept b=1000 of b=0,1000"``. The b-value of a file
(:func:`b_value`) comes from the first of: the standard DiffusionBValue (0018,9087); Siemens (0019,100C)
(private creator SIEMENS MR HEADER); GE (0043,1039), first value, less the 10^9 that some GE software adds;
Philips (2001,1003) (private creator Philips Imaging DD 001); ``b1000`` / ``b=1000`` in SequenceName (Siemens
``*ep_b1000t``).

A series whose files disagree on orientation, pixel spacing or matrix size, or that has no
ImagePositionPatient, is still returned (its ``note`` says what is wrong); :func:`read_series` then refuses it
with a ValueError. So do multi-frame (enhanced) DICOM files, whose geometry MONAI's PydicomReader does not read.

Reading (:func:`read_series`): MONAI's ``PydicomReader`` through ``LoadImage``. Pointed at a folder it reads
every file there (no subfolders), so a folder with two series mixes them, and it stacks slices by
InstanceNumber. :func:`read_series` therefore hands the reader the series' own files, in slice order.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from monai.data import MetaTensor, PydicomReader
from monai.utils import ensure_tuple
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.misc import is_dicom
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pydicom.valuerep import DSfloat

from .files import image_loader

__all__ = [
    "BIDS_NAMES",
    "DicomSeries",
    "b_value",
    "find_dicom_series",
    "header_sequence",
    "header_summary",
    "read_series",
    "write_dicom_series",
]

BIDS_NAMES: dict[str, str] = {
    "DWI": "dwi",
    "FLAIR": "FLAIR",
    "SWI": "swi",
    "T1": "T1w",
    "T1Gd": "ce-gadolinium_T1w",
    "T2": "T2w",
}
"""A suggested BIDS file-name ending (``[entities_]suffix``) for each class, e.g. ``sub-01_ce-gadolinium_T1w.nii.gz``.

From the BIDS specification (https://bids-specification.readthedocs.io, "Magnetic Resonance Imaging"):
``T1w``, ``T2w`` and ``FLAIR`` are suffixes of the ``anat`` datatype; ``dwi`` is the suffix of the ``dwi``
datatype; a contrast agent is named by the ``ce-<label>`` entity, so a T1 after gadolinium is
``ce-gadolinium_T1w``. SWI has no suffix in the core specification (BIDS extension proposal BEP004,
susceptibility weighted imaging, uses ``swi``), so ``swi`` is a suggestion, not a validated BIDS name.
"""

_SUMMARY_STRINGS = (
    "SeriesDescription",
    "ProtocolName",
    "SequenceName",
    "ScanningSequence",
    "SequenceVariant",
    "MRAcquisitionType",
)
_SUMMARY_NUMBERS = ("RepetitionTime", "EchoTime", "InversionTime", "FlipAngle", "MagneticFieldStrength")
_DICOMDIR = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage
_POSITION_TOLERANCE_MM = 0.01  # slices closer than this along the normal share a position
_NO_AGENT = {"", "none", "no", "n/a", "na", "-", "0", "nil", "not used", "unknown"}


@dataclass
class DicomSeries:
    """One DICOM series, reduced to the files of one 3D volume.

    Attributes:
        uid: SeriesInstanceUID.
        folder: the deepest folder holding all of the series' files.
        files: the files to read as one 3D volume, sorted along the slice normal (ImagePositionPatient
            projected on the cross product of the ImageOrientationPatient cosines).
        name: a stable, unique id for reports: ``"<folder relative to the scanned folder>/<uid>"``, or the
            uid alone for a series directly in the scanned folder.
        header: :func:`header_summary` of the first of ``files``, with ``b_values`` of the whole series.
        note: "" or what was done to, or is wrong with, the series ("4D: kept b=1000 of b=0,1000").
    """

    uid: str
    folder: str
    files: list[str]
    name: str
    header: dict = field(default_factory=dict)
    note: str = ""


@dataclass
class _Geometry:
    """Where one file's slice lies."""

    orientation: tuple[float, ...] | None
    position: tuple[float, ...] | None
    spacing: tuple[float, ...] | None
    shape: tuple[int, int]
    frames: int


@dataclass
class _Image:
    """What :func:`find_dicom_series` keeps of one file's header."""

    path: Path
    sop_uid: str
    geometry: _Geometry
    b: float | None
    echo_time: float | None
    echo_number: int | None
    trace: bool
    derived_map: bool
    phase: bool
    magnitude: bool
    order: tuple
    modality: str
    summary: dict
    depth: float = 0.0


# ----------------------------------------------------------------------------------------------- header values


def _text(value: Any) -> str | None:
    """A DICOM string value as a stripped ``str`` (multiple values joined by ``\\``), None when empty."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        value = "\\".join(str(v).strip() for v in value)
    text = str(value).replace("\x00", "").strip()
    return text or None


def _number(value: Any) -> float | None:
    """The first number of a DICOM value (DS, IS, FD, text or raw bytes of a private tag), None if none."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if isinstance(value, str):
        value = value.replace("\x00", "").split("\\")[0].strip()
        if not value:
            return None
    elif isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        if len(value) == 0:
            return None
        return _number(value[0])
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _private(dataset: Dataset, group: int, creator: str, offset: int) -> Any:
    """The value of private element ``offset`` in ``creator``'s block of ``group``, or None.

    Falls back to the usual block (``group,10xx``) when the file has no private creator at all (some
    anonymisers drop them); a block reserved by another creator is not read.
    """
    try:
        return dataset.private_block(group, creator)[offset].value
    except (KeyError, ValueError):
        pass
    tag = (group << 16) | 0x1000 | offset
    if tag in dataset and (group << 16) | 0x0010 not in dataset:
        return dataset[tag].value
    return None


_SEQUENCE_NAME_B = re.compile(r"(?:^|[^a-z0-9])b\s*=?\s*(\d{1,5})(?!\d)", re.IGNORECASE)


def b_value(dataset: Dataset) -> float | None:
    """The diffusion b-value (s/mm²) of one DICOM image, or None when the header names none.

    Sources, first found wins: DiffusionBValue (0018,9087); Siemens (0019,100C); GE (0043,1039), first value,
    less 10^9 when GE added it; Philips (2001,1003); ``b1000`` or ``b=1000`` in SequenceName.
    """
    if not isinstance(dataset, Dataset):
        raise TypeError(f"b_value needs a pydicom Dataset, got {type(dataset).__name__}")
    b = _number(dataset.get("DiffusionBValue"))
    if b is None:
        b = _number(_private(dataset, 0x0019, "SIEMENS MR HEADER", 0x0C))
    if b is None:
        b = _number(_private(dataset, 0x0043, "GEMS_PARM_01", 0x39))
        if b is not None and b >= 1e9:
            b %= 1e9
    if b is None:
        b = _number(_private(dataset, 0x2001, "Philips Imaging DD 001", 0x03))
    if b is None:
        name = _text(dataset.get("SequenceName"))
        match = _SEQUENCE_NAME_B.search(name or "")
        if match:
            b = float(match.group(1))
    return b


def header_summary(dataset: Dataset) -> dict:
    """A JSON-serialisable summary of the header fields that tell the sequence apart.

    Keys: SeriesDescription, ProtocolName, SequenceName, ScanningSequence, SequenceVariant, MRAcquisitionType
    (strings, multiple values joined by ``\\``), ImageType (list of strings), RepetitionTime, EchoTime,
    InversionTime (ms), FlipAngle (degrees), MagneticFieldStrength (T) (floats), ContrastBolusAgent, Modality,
    BodyPartExamined, Manufacturer (strings) and b_values (sorted floats: this image's b-value, see
    :func:`b_value`; :func:`find_dicom_series` puts those of the whole series there). Missing or empty
    values are None (b_values: ``[]``).
    """
    if not isinstance(dataset, Dataset):
        raise TypeError(f"header_summary needs a pydicom Dataset, got {type(dataset).__name__}")
    summary: dict[str, Any] = {key: _text(dataset.get(key)) for key in _SUMMARY_STRINGS}
    image_type = dataset.get("ImageType")
    if image_type is None or image_type == "":
        summary["ImageType"] = None
    else:
        values = [image_type] if isinstance(image_type, str) else list(image_type)
        summary["ImageType"] = [str(v).strip() for v in values]
    summary.update({key: _number(dataset.get(key)) for key in _SUMMARY_NUMBERS})
    for key in ("ContrastBolusAgent", "Modality", "BodyPartExamined", "Manufacturer"):
        summary[key] = _text(dataset.get(key))
    b = b_value(dataset)
    summary["b_values"] = [] if b is None else [b]
    return summary


# ------------------------------------------------------------------------------------------------- finding


def _floats(value: Any, count: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    values = tuple(float(v) for v in value)
    if len(values) != count or not all(math.isfinite(v) for v in values):
        raise ValueError(f"expected {count} finite numbers, got {value!r}")
    return values


def _geometry(dataset: Dataset) -> _Geometry:
    """The slice geometry of one header; raises on values it cannot parse."""
    return _Geometry(
        orientation=_floats(dataset.get("ImageOrientationPatient"), 6),
        position=_floats(dataset.get("ImagePositionPatient"), 3),
        spacing=_floats(dataset.get("PixelSpacing"), 2),
        shape=(int(dataset.Rows), int(dataset.Columns)),
        frames=int(_number(dataset.get("NumberOfFrames")) or 1),
    )


def _image(path: Path, dataset: Dataset) -> _Image:
    """The parts of one header that :func:`find_dicom_series` needs; raises on values it cannot parse."""
    image_type = [str(v).upper() for v in ensure_tuple(dataset.get("ImageType") or ())]
    directionality = (_text(dataset.get("DiffusionDirectionality")) or "").upper()
    echo_number = _number(dataset.get("EchoNumbers"))

    def order(key: str) -> float:
        value = _number(dataset.get(key))
        return math.inf if value is None else value

    return _Image(
        path=path,
        sop_uid=_text(dataset.get("SOPInstanceUID")) or str(path),
        geometry=_geometry(dataset),
        b=b_value(dataset),
        echo_time=_number(dataset.get("EchoTime")),
        echo_number=None if echo_number is None else int(echo_number),
        trace=any(t in ("TRACEW", "TRACE") for t in image_type) or directionality == "ISOTROPIC",
        derived_map=any(t in ("ADC", "EADC", "FA", "EXP") for t in image_type),
        phase=any(t in ("P", "PHASE") for t in image_type),
        magnitude=any(t in ("M", "MAGNITUDE") for t in image_type),
        order=(order("AcquisitionNumber"), order("TemporalPositionIdentifier"), order("InstanceNumber"), str(path)),
        modality=_text(dataset.get("Modality")) or "",
        summary=header_summary(dataset),
    )


def _read_header(path: Path) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about what it repairs; a failure raises
        return pydicom.dcmread(path, stop_before_pixels=True)


def find_dicom_series(folder: str | os.PathLike) -> tuple[list[DicomSeries], list[tuple[str, str]]]:
    """The DICOM series under ``folder`` (searched recursively), each reduced to one 3D volume.

    Files are DICOM by content (Part 10 files, ``DICM`` at byte 128), whatever their name; other files
    (NIfTI, text, ...) are ignored, and so are DICOM objects that are not images (DICOMDIR, structured
    reports, presentation states). Files are grouped by SeriesInstanceUID; copies of one file (same
    SOPInstanceUID) count once. Only headers are read. The 4D rule and the notes: see the module
    documentation.

    Returns:
        ``(series, unreadable)``: the series sorted by name, and ``(path, message)`` for each file that
        starts like a DICOM file but whose header cannot be read or has no SeriesInstanceUID (and for each
        folder that cannot be listed).

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        NotADirectoryError: ``folder`` is a file.
    """
    root = Path(folder)
    if not root.exists():
        raise FileNotFoundError(f"DICOM folder not found: {folder}")
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {folder}")
    groups: dict[str, list[_Image]] = defaultdict(list)
    unreadable: list[tuple[str, str]] = []

    def walk_error(error: OSError) -> None:
        unreadable.append((str(error.filename), f"cannot list the folder: {error.strerror or error}"))

    for directory, subdirectories, names in os.walk(root, onerror=walk_error):
        subdirectories.sort()
        for name in sorted(names):
            path = Path(directory) / name
            if not path.is_file():
                continue
            try:
                if not is_dicom(path):
                    continue
            except OSError as error:
                unreadable.append((str(path), f"cannot open the file: {error}"))
                continue
            try:
                dataset = _read_header(path)
                file_meta = getattr(dataset, "file_meta", None)
                if file_meta is not None and str(file_meta.get("MediaStorageSOPClassUID", "")) == _DICOMDIR:
                    continue
                uid = _text(dataset.get("SeriesInstanceUID"))
                if uid is None:
                    raise ValueError("no SeriesInstanceUID (0020,000E) in the header")
                if "Rows" not in dataset or "Columns" not in dataset:
                    continue  # not an image
                groups[uid].append(_image(path, dataset))
            except Exception as error:  # noqa: BLE001 - any failure to parse makes the file unreadable
                message = str(error) or type(error).__name__
                unreadable.append((str(path), f"unreadable DICOM header: {message}"))
    series = [_assemble(uid, images, root) for uid, images in groups.items()]
    return sorted(series, key=lambda s: s.name), unreadable


def _geometry_problem(geometries: Sequence[_Geometry]) -> str:
    """Why the slices cannot make one volume, or ""."""
    if any(g.frames > 1 for g in geometries):
        return "multi-frame (enhanced) DICOM, not supported: convert it (e.g. with dcm2niix)"
    missing = [key for key, attr in (("ImageOrientationPatient", "orientation"), ("ImagePositionPatient", "position"))
               if any(getattr(g, attr) is None for g in geometries)]
    if missing:
        return f"no {' or '.join(missing)} in some files: the slice geometry is unknown"
    problems = []
    orientations = {tuple(round(v, 4) for v in g.orientation) for g in geometries}
    if len(orientations) > 1:
        problems.append(f"{len(orientations)} different ImageOrientationPatient")
    spacings = {None if g.spacing is None else tuple(round(v, 4) for v in g.spacing) for g in geometries}
    if len(spacings) > 1:
        problems.append(f"{len(spacings)} different PixelSpacing")
    shapes = {g.shape for g in geometries}
    if len(shapes) > 1:
        problems.append(f"{len(shapes)} different matrix sizes")
    if problems:
        return f"inconsistent geometry ({', '.join(problems)}): not one volume"
    if _normal(geometries[0].orientation) is None:
        return f"ImageOrientationPatient {geometries[0].orientation} has parallel row and column cosines"
    return ""


def _normal(orientation: Sequence[float]) -> np.ndarray | None:
    """The unit slice normal (row cosine x column cosine), None when the cosines are parallel."""
    normal = np.cross(np.asarray(orientation[:3]), np.asarray(orientation[3:]))
    length = float(np.linalg.norm(normal))
    return None if length < 1e-6 else normal / length


def _positions(images: Sequence[_Image]) -> list[list[_Image]]:
    """The images grouped by slice position (sorted along the normal), each group in acquisition order."""
    ordered = sorted(images, key=lambda im: (im.depth, im.order))
    groups: list[list[_Image]] = []
    for im in ordered:
        if groups and im.depth - groups[-1][0].depth <= _POSITION_TOLERANCE_MM:
            groups[-1].append(im)
        else:
            groups.append([im])
    return [sorted(g, key=lambda im: im.order) for g in groups]


def _fmt(values: Sequence[float]) -> str:
    return ",".join(f"{v:g}" for v in values)


def _reduce_4d(images: list[_Image]) -> tuple[list[_Image], list[str]]:
    """Apply the 4D rule (module documentation): one image per position, and what was done."""
    steps: list[str] = []
    kept = images
    if any(im.b is not None for im in kept):  # then an image without a b-value is taken as b=0

        def b_of(im: _Image) -> float:
            return 0.0 if im.b is None else im.b

        b_values = sorted({b_of(im) for im in kept})
        if len(b_values) > 1:
            kept = [im for im in kept if b_of(im) == b_values[-1]]
            steps.append(f"kept b={b_values[-1]:g} of b={_fmt(b_values)}")
    if max(len(g) for g in _positions(kept)) > 1:
        echo_times = sorted({im.echo_time for im in kept if im.echo_time is not None})
        echo_numbers = sorted({im.echo_number for im in kept if im.echo_number is not None})
        if len(echo_times) > 1:
            kept = [im for im in kept if im.echo_time == echo_times[-1]]
            steps.append(f"kept the last echo TE={echo_times[-1]:g} ms of TE={_fmt(echo_times)} ms")
        elif len(echo_numbers) > 1:
            kept = [im for im in kept if im.echo_number == echo_numbers[-1]]
            steps.append(f"kept the last echo (EchoNumbers {echo_numbers[-1]} of {len(echo_numbers)})")
    if max(len(g) for g in _positions(kept)) > 1:
        trace = [im for im in kept if im.trace and not im.derived_map]
        magnitude = [im for im in kept if im.magnitude and not im.phase]
        if trace and len(trace) < len(kept):
            kept = trace
            steps.append("kept the trace-weighted image")
        elif magnitude and len(magnitude) < len(kept):
            kept = magnitude
            steps.append("kept the magnitude images")
    groups = _positions(kept)
    repeats = max(len(g) for g in groups)
    if repeats > 1:
        kept = [g[0] for g in groups]
        what = "diffusion directions" if any(im.b for im in kept) else "images"
        steps.append(f"kept the first of {repeats} {what} per position")
    return kept, steps


def _assemble(uid: str, images: list[_Image], root: Path) -> DicomSeries:
    notes: list[str] = []
    unique: dict[str, _Image] = {}
    for im in sorted(images, key=lambda im: str(im.path)):
        unique.setdefault(im.sop_uid, im)
    if len(unique) < len(images):
        notes.append(f"{len(images) - len(unique)} duplicate file(s) (same SOPInstanceUID) ignored")
    images = list(unique.values())
    b_values = sorted({im.b for im in images if im.b is not None})
    problem = _geometry_problem([im.geometry for im in images])
    if problem:
        notes.append(problem)
        kept = sorted(images, key=lambda im: im.order)
    else:
        normal = _normal(images[0].geometry.orientation)
        for im in images:
            im.depth = float(np.dot(im.geometry.position, normal))
        kept = images
        if len(images) > 1 and max(len(g) for g in _positions(images)) > 1:
            kept, steps = _reduce_4d(images)
            notes.append("4D: " + "; ".join(steps))
        kept = sorted(kept, key=lambda im: (im.depth, im.order))
        gaps = np.diff([im.depth for im in kept])
        if len(gaps) > 1 and (gaps.max() - gaps.min()) > 0.1 * gaps.mean():
            notes.append(f"non-uniform slice spacing ({gaps.min():.3g}-{gaps.max():.3g} mm): missing slices?")
    modalities = sorted({im.modality for im in images})
    if modalities != ["MR"]:
        notes.append(f"Modality {'/'.join(m or 'missing' for m in modalities)}, not MR")
    paths = [im.path for im in kept]
    folder = Path(os.path.commonpath([str(p.parent) for p in paths]))
    relative = folder.relative_to(root).as_posix() if folder.is_relative_to(root) else folder.as_posix()
    header = dict(kept[0].summary)
    header["b_values"] = b_values
    return DicomSeries(
        uid=uid,
        folder=str(folder),
        files=[str(p) for p in paths],
        name=uid if relative in ("", ".") else f"{relative}/{uid}",
        header=header,
        note="; ".join(notes),
    )


# ------------------------------------------------------------------------------------------------- reading


class _SeriesReader(PydicomReader):
    """MONAI's PydicomReader, given the files of one series in slice order instead of a folder.

    PydicomReader stacks the slices of a folder by InstanceNumber; here each dataset's InstanceNumber is set
    (in memory) to its rank in the given order, after checking that the files make one regular volume.
    """

    def read(self, data, **kwargs):
        filenames = [str(f) for f in ensure_tuple(data)]
        options = {**self.kwargs, **kwargs}
        slices = [pydicom.dcmread(name, **options) for name in filenames]
        _check_volume(slices, filenames)
        for rank, dataset in enumerate(slices, start=1):
            dataset.InstanceNumber = rank
        self.has_series = len(slices) > 1
        if not self.has_series:
            self.filenames = filenames
            return slices[0]
        self.filenames = [filenames]
        return slices


def _check_volume(slices: Sequence[Dataset], filenames: Sequence[str]) -> None:
    """Raise a ValueError when the slices are not one volume with regular slice spacing."""
    where = f"the {len(slices)} files from {filenames[0]} on"
    problem = _geometry_problem([_geometry(ds) for ds in slices])
    if problem:
        raise ValueError(f"{where}: {problem}")
    if len(slices) < 2:
        return
    normal = _normal(_geometry(slices[0]).orientation)
    depth = [float(np.dot(_geometry(ds).position, normal)) for ds in slices]
    gaps = np.diff(depth)
    if np.diff(sorted(depth)).min() <= _POSITION_TOLERANCE_MM:
        raise ValueError(f"{where}: repeated slice positions, a 4D series? (find_dicom_series keeps one volume)")
    if not ((gaps > 0).all() or (gaps < 0).all()):
        raise ValueError(f"{where}: not in slice order (use the files of find_dicom_series)")
    size = np.abs(gaps)
    if size.max() - size.min() > 0.1 * size.mean():
        raise ValueError(f"{where}: non-uniform slice spacing ({size.min():.3g}-{size.max():.3g} mm), missing slices?")


def read_series(series: DicomSeries) -> MetaTensor:
    """Read one series with MONAI's ``PydicomReader`` (through ``LoadImage``).

    Returns:
        A float32 MetaTensor ``(1, X, Y, Z)`` (channel first; X along the rows of a slice, i.e. the DICOM
        columns, Y down the columns, Z along ``series.files``) with the RAS affine of the volume, as
        ``LoadImage(reader="PydicomReader", ensure_channel_first=True)`` gives for a folder holding only
        this series, RescaleSlope/RescaleIntercept applied.

    Raises:
        TypeError: ``series`` is not a DicomSeries.
        FileNotFoundError: a file of the series is gone.
        ValueError: no files, or they are not one regular volume (inconsistent orientation, pixel spacing or
            matrix size, repeated or missing slices, multi-frame files).
    """
    if not isinstance(series, DicomSeries):
        raise TypeError(f"read_series needs a DicomSeries (from find_dicom_series), got {type(series).__name__}")
    if not series.files:
        raise ValueError(f"series {series.name}: no files")
    for name in series.files:
        if not Path(name).is_file():
            raise FileNotFoundError(f"series {series.name}: file not found: {name}")
    reader = _SeriesReader()
    loader = image_loader(image_only=True, ensure_channel_first=True, dtype=np.float32)
    return loader(series.files, reader=reader)


# -------------------------------------------------------------------------------------------- the sequence

_B = r"(?<![a-z0-9])"  # word-ish boundaries: letters and digits only, so "t1_mprage" has the word "t1"
_E = r"(?![a-z0-9])"


def _words(*alternatives: str) -> str:
    return _B + "(?:" + "|".join(alternatives) + ")" + _E


_OUT_OF_SCOPE = re.compile(
    _words("localizer", "localiser", "scout", "survey", "3[\\s_-]?plane", "tof", "angio", "mra", "perfusion", "perf",
           "dsc", "dce", "asl", "pcasl", "spectro", "spectroscopy", "svs", "csi", "fmri", "ep2d[\\s_-]?bold",
           "resting[\\s_-]?state", "field[\\s_-]?map", "fieldmap")
)
_DWI = re.compile(
    _words("dwi", "dw", "dti", "adc", "eadc", "trace", "tracew", "resolve", "ivim", "b=?\\d{3,4}")
    + "|" + _B + "diff|diffusion"
)
_T2_STAR = re.compile(_B + r"(?:gre[\s_-]*)?t2\s*(?:\*|star)")
_SWI = re.compile(
    _words("swi", "swip", "swan", "venbold", "ven[\\s_-]bold", "minip", "hemo") + r"|susceptib|\(sw\)"
)
_T1_FLAIR = re.compile(_B + r"(?:3d)?t1w?[\s_-]*flair|flair[\s_-]*t1" + _E)
_FLAIR = re.compile(r"flair|dark[\s_-]?fluid|fluid[\s_-]?attenuat")
_T1 = re.compile(
    _words("s?(?:3d)?t1(?:w|wi|c|ce|gd|post|wce)?", "mp[\\s_-]?rage", "mp2rage", "f?spgr", "ir[\\s_-]?f?spgr", "bravo",
           "tfe", "vibe", "lava", "thrive", "tfl")
)
_T2 = re.compile(_words("s?(?:3d)?t2(?:w|wi)?") + r"(?!\s*\*)(?!\s*star)" + "|" + _words("haste", "ssfse"))
_T1_WEAK = re.compile(_words("mpr"))
_CONTRAST = re.compile(
    _words("post", "postcontrast", "post[\\s_-]?(?:contrast|gad|gd|gado|km)", "gd", "gad", "gado", "gadolinium",
           "contrast", "ce", "km", "mdc", "enhanced", "t1c", "t1ce", "t1gd", "t1post", "t1wce", "t1w[\\s_-]?ce")
    + r"|(?<![a-z0-9])c\+|\+\s*(?:c|gd|gad|contrast|km)" + _E
)
_NO_CONTRAST = re.compile(
    _words("pre", "precontrast", "pre[\\s_-]?(?:contrast|gad|gd|km)", "native", "nativ", "non[\\s_-]?contrast",
           "without", "no[\\s_-]?contrast", "unenhanced") + r"|w/o"
)


def _keyword_class(text: str) -> tuple[str | None, str] | None:
    """The class that the words of a description suggest (T1 stands for T1 and T1Gd), and why; None if none."""
    for pattern, cls, why in (
        (_OUT_OF_SCOPE, None, "names a sequence outside the 6 classes"),
        (_DWI, "DWI", ""),
        (_T2_STAR, "SWI", "T2* (susceptibility-weighted GRE, mapped to SWI)"),
        (_SWI, "SWI", ""),
        (_T1_FLAIR, "T1", "T1-FLAIR is T1-weighted"),
        (_FLAIR, "FLAIR", ""),
        (_T1, "T1", ""),
        (_T2, "T2", ""),
        (_T1_WEAK, "T1", "MPR taken as MPRAGE"),
    ):
        match = pattern.search(text)
        if match:
            return cls, f"'{match.group(0).strip()}'" + (f": {why}" if why else "")
    return None


def _contrast(header: Mapping[str, Any]) -> tuple[bool | None, str]:
    """Whether the header says a contrast agent was given (None: it does not say), and why."""
    for key in ("SeriesDescription", "ProtocolName"):
        text = (_text(header.get(key)) or "").lower()
        match = _NO_CONTRAST.search(text)
        if match:
            return False, f"'{match.group(0)}' in {key}"
    for key in ("SeriesDescription", "ProtocolName"):
        text = (_text(header.get(key)) or "").lower()
        match = _CONTRAST.search(text)
        if match:
            return True, f"'{match.group(0).strip()}' in {key}"
    agent = _text(header.get("ContrastBolusAgent"))
    if agent is not None and agent.lower() not in _NO_AGENT:
        return True, f"contrast agent '{agent}'"
    return None, ""


def _t1_or_t1gd(header: Mapping[str, Any], reason: str) -> tuple[str, str]:
    given, why = _contrast(header)
    if given:
        return "T1Gd", f"{reason}, {why}"
    return "T1", f"{reason}, {why}" if given is False else reason


def header_sequence(header: Mapping[str, Any]) -> tuple[str | None, str]:
    """The sequence that a :func:`header_summary` suggests, one of ``SEQUENCES`` or None, and the reason.

    In order of priority:

    1. DWI: a b-value > 0, or ImageType DIFFUSION, TRACEW, TRACE, ADC or EADC.
    2. Words (case-insensitive; a word is bounded by anything but a letter or digit, so ``t1_mprage`` holds
       ``t1``) in SeriesDescription, then ProtocolName: localizer, TOF, perfusion, ASL, spectroscopy, fMRI,
       field maps give None (not one of the 6); DWI/DTI/ADC/TRACE/diffusion/b1000 → DWI; T2* (``T2*``,
       ``T2 star``, ``GRE T2*``) → SWI, the closest of the 6 (susceptibility-weighted); SWI/SWIp/SWAN/VenBOLD/
       minIP/susceptibility → SWI; T1-FLAIR → T1 (it is T1-weighted); FLAIR/dark-fluid (also T2-FLAIR) →
       FLAIR; T1/T1w/MPRAGE/MP2RAGE/SPGR/FSPGR/BRAVO/TFE/VIBE/LAVA/THRIVE → T1; T2/T2w/HASTE/SSFSE → T2;
       MPR alone → T1. TSE/FSE alone (T1, T2 and PD use them) leave the choice to the timing.
    3. SequenceName: Siemens ``*tfl3d`` (MPRAGE) → T1, ``*swi`` → SWI.
    4. Timing (ms): gradient echo (ScanningSequence GR) with TE > 15 and TR < 100 → SWI; TI > 1500 with
       TR > 4000 → FLAIR; TR < 1000 with TE < 20, or TI 700-1200 with TE < 30 (MPRAGE, T1-FLAIR) → T1;
       TR > 2000 with TE > 70 → T2.

    A T1 becomes T1Gd when SeriesDescription or ProtocolName says so (post, +C, Gd, gad, CE, contrast, KM,
    T1c, ...) or ContrastBolusAgent names an agent, unless a description says pre/native/without contrast.

    Raises:
        TypeError: ``header`` is not a mapping.
    """
    if not isinstance(header, Mapping):
        raise TypeError(f"header_sequence needs a dict (header_summary), got {type(header).__name__}")
    b_values = [b for b in (_number(v) for v in header.get("b_values") or []) if b is not None]
    if any(b > 0 for b in b_values):
        return "DWI", f"b-value {_fmt(sorted(b_values))}"
    image_type = [str(v).upper() for v in ensure_tuple(header.get("ImageType") or ())]
    for marker in ("DIFFUSION", "TRACEW", "TRACE", "ADC", "EADC"):
        if marker in image_type:
            return "DWI", f"ImageType {marker}"
    for key in ("SeriesDescription", "ProtocolName"):
        text = _text(header.get(key))
        if text is None:
            continue
        hit = _keyword_class(text.lower())
        if hit is not None:
            cls, why = hit
            reason = f"{key} '{text}' ({why})"
            if cls == "T1":
                return _t1_or_t1gd(header, reason)
            return cls, reason
    sequence_name = (_text(header.get("SequenceName")) or "").lower().lstrip("*")
    if sequence_name.startswith("tfl3d"):
        return _t1_or_t1gd(header, f"SequenceName '{header.get('SequenceName')}' (MPRAGE)")
    if sequence_name.startswith("swi"):
        return "SWI", f"SequenceName '{header.get('SequenceName')}'"
    return _timing_sequence(header)


def _timing_sequence(header: Mapping[str, Any]) -> tuple[str | None, str]:
    tr, te, ti = (_number(header.get(k)) for k in ("RepetitionTime", "EchoTime", "InversionTime"))
    scanning = {s.strip().upper() for s in (_text(header.get("ScanningSequence")) or "").split("\\")}
    parts = [f"{name} {value:g} ms" for name, value in (("TR", tr), ("TE", te), ("TI", ti)) if value is not None]
    timing = ", ".join(parts)
    if tr is not None and te is not None and "GR" in scanning and te > 15 and tr < 100:
        return "SWI", f"gradient echo, {timing}"
    if ti is not None and tr is not None and ti > 1500 and tr > 4000:
        return "FLAIR", timing
    if tr is not None and te is not None and tr < 1000 and te < 20:
        return _t1_or_t1gd(header, timing)
    if ti is not None and te is not None and 700 <= ti <= 1200 and te < 30:
        return _t1_or_t1gd(header, f"{timing} (inversion-prepared T1)")
    if tr is not None and te is not None and tr > 2000 and te > 70:
        return "T2", timing
    if not parts:
        return None, "no b-value, known keyword or timing parameters in the header"
    return None, f"no known keyword, and {timing} is not typical of the 6 sequences"


# ------------------------------------------------------------------------------------------------- writing

# set by write_dicom_series from the volume and the affine; a header may not set them
_WRITER_OWNED = {
    "Rows", "Columns", "PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient", "SliceThickness",
    "SpacingBetweenSlices", "SliceLocation", "PixelData", "BitsAllocated", "BitsStored", "HighBit",
    "PixelRepresentation", "SamplesPerPixel", "PhotometricInterpretation", "RescaleSlope", "RescaleIntercept",
    "SOPInstanceUID", "SOPClassUID", "InstanceNumber",
}


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


def _pixels(volumes: Sequence[np.ndarray]) -> tuple[list[np.ndarray], float, float, bool]:
    """Stored values (uint16 or int16), RescaleSlope, RescaleIntercept and whether int16 is used."""
    low = min(float(v.min()) for v in volumes)
    high = max(float(v.max()) for v in volumes)
    integral = all(np.array_equal(v, np.round(v)) for v in volumes)
    if integral and low >= 0 and high <= 65535:
        return [v.astype(np.uint16) for v in volumes], 1.0, 0.0, False
    if integral and low >= -32768 and high <= 32767:
        return [v.astype(np.int16) for v in volumes], 1.0, 0.0, True
    slope = float(_ds((high - low) / 65535)) if high > low else 1.0
    intercept = float(_ds(low))
    stored = [np.clip(np.round((v - intercept) / slope), 0, 65535).astype(np.uint16) for v in volumes]
    return stored, slope, intercept, False


def write_dicom_series(
    volume: np.ndarray | Sequence[np.ndarray],
    affine: np.ndarray,
    out_dir: str | os.PathLike,
    header: Mapping[str, Any] | None = None,
    series_uid: str | None = None,
    instance_offset: int = 0,
    *,
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
        header: DICOM keywords and values for every file, e.g. the keys of :func:`header_summary`
            (SeriesDescription, RepetitionTime, EchoTime, ContrastBolusAgent, ...), DiffusionBValue,
            StudyInstanceUID, SeriesNumber, PatientID. ``b_values`` with one value sets DiffusionBValue;
            None values are skipped. Geometry, pixel and instance attributes are the writer's.
        series_uid: SeriesInstanceUID; generated when None (and not in ``header``).
        instance_offset: added to every InstanceNumber (and file name), to put several series in one folder.
        volume_headers: one mapping per volume of a 4D series, applied over ``header`` (e.g.
            ``{"DiffusionBValue": 1000}``, ``{"EchoTime": 30, "EchoNumbers": 3}``).

    Returns:
        The written files, in InstanceNumber order.

    Raises:
        ValueError: a volume that is not 3D/4D, empty or not finite; an affine that is not a finite 4x4 with
            orthogonal, non-zero i and j columns; an unknown or writer-owned header keyword; volume_headers of
            the wrong length.
        FileExistsError: a file to write exists already.
    """
    volumes = _volumes(volume)
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise ValueError(f"affine must be a finite 4x4 matrix, got shape {affine.shape}")
    if volume_headers is None:
        volume_headers = [{}] * len(volumes)
    if len(volume_headers) != len(volumes):
        raise ValueError(f"volume_headers has {len(volume_headers)} entries for {len(volumes)} volumes")
    header = dict(header or {})
    for extra in volume_headers:
        _check_header({**header, **extra})

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
    thickness = abs(float(np.dot(axis_k, normal)))

    stored, slope, intercept, signed = _pixels(volumes)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_i, n_j, n_k = volumes[0].shape
    paths = [out / f"IM{instance_offset + t * n_k + k + 1:05d}" for t in range(len(volumes)) for k in range(n_k)]
    existing = [p for p in paths if p.exists()]
    if existing:
        raise FileExistsError(f"{existing[0]} exists: write into another folder or use another instance_offset")

    series_uid = series_uid or header.pop("SeriesInstanceUID", None) or generate_uid()
    header.pop("SeriesInstanceUID", None)
    study_uid = header.pop("StudyInstanceUID", None) or generate_uid()
    frame_uid = header.pop("FrameOfReferenceUID", None) or generate_uid()
    low, high = min(float(v.min()) for v in volumes), max(float(v.max()) for v in volumes)
    written = []
    for t, (pixels, extra) in enumerate(zip(stored, volume_headers)):
        for k in range(n_k):
            path = paths[t * n_k + k]
            position = lps @ np.array([0.0, 0.0, k, 1.0])
            ds = _base_dataset(path, study_uid, series_uid, frame_uid)
            for keyword, value in _header_items({**header, **extra}):
                setattr(ds, keyword, _dicom_value(keyword, value))
            ds.InstanceNumber = instance_offset + t * n_k + k + 1
            if len(volumes) > 1 and "AcquisitionNumber" not in {**header, **extra}:
                ds.AcquisitionNumber = t + 1
            if len(volumes) > 1 and "TemporalPositionIdentifier" not in {**header, **extra}:
                ds.TemporalPositionIdentifier = t + 1
            ds.ImagePositionPatient = [_ds(v) for v in position[:3]]
            ds.ImageOrientationPatient = [_ds(v) for v in (*row_cosine, *column_cosine)]
            ds.PixelSpacing = [_ds(size_j), _ds(size_i)]  # row spacing (along j), column spacing (along i)
            ds.SliceThickness = _ds(thickness)
            ds.SpacingBetweenSlices = _ds(thickness)
            ds.SliceLocation = _ds(float(np.dot(position[:3], normal)))
            ds.Rows, ds.Columns = n_j, n_i
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.BitsAllocated = ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = 1 if signed else 0
            ds.RescaleSlope, ds.RescaleIntercept = _ds(slope), _ds(intercept)
            ds.RescaleType = "US"
            ds.WindowCenter, ds.WindowWidth = _ds((low + high) / 2), _ds(max(high - low, 1.0))
            ds.PixelData = np.ascontiguousarray(pixels[:, :, k].T).astype("<i2" if signed else "<u2").tobytes()
            _save(ds, path)
            written.append(path)
    return written


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


def _header_items(header: Mapping[str, Any]) -> list[tuple[str, Any]]:
    items = []
    for keyword, value in header.items():
        if value is None:
            continue
        if keyword == "b_values":
            if len(value) == 1 and header.get("DiffusionBValue") is None:
                items.append(("DiffusionBValue", value[0]))
            continue
        items.append((keyword, value))
    return items


def _check_header(header: Mapping[str, Any]) -> None:
    for keyword, value in header.items():
        if keyword == "b_values":
            if value is not None and len(value) > 1:
                raise ValueError("b_values with several values: give one b-value per volume in volume_headers")
            continue
        if keyword in _WRITER_OWNED:
            raise ValueError(f"header keyword {keyword} is set by write_dicom_series from the volume and affine")
        if tag_for_keyword(keyword) is None:
            raise ValueError(f"header key {keyword!r} is not a DICOM keyword")


def _base_dataset(path: Path, study_uid: str, series_uid: str, frame_uid: str) -> FileDataset:
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.Modality = "MR"
    ds.PatientName = "Anonymous"
    ds.PatientID = "anonymous"
    ds.PatientBirthDate = ds.PatientSex = ""
    ds.StudyDate = ds.StudyTime = ds.ReferringPhysicianName = ds.StudyID = ds.AccessionNumber = ""
    ds.SeriesNumber = 1
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.ScanningSequence = "RM"  # research mode: unknown
    ds.SequenceVariant = "NONE"
    ds.ScanOptions = ds.MRAcquisitionType = ds.EchoTime = ds.EchoTrainLength = ds.RepetitionTime = ""
    return ds


def _save(ds: FileDataset, path: Path) -> None:
    if int(pydicom.__version__.split(".")[0]) >= 3:
        ds.save_as(path, enforce_file_format=True)
    else:  # pydicom 2.4
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(path, write_like_original=False)

