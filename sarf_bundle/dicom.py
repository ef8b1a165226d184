"""DICOM input: find the series in a folder, reduce each to one volume, and read it with MONAI.

Finding (:func:`find_dicom_series`): files are recognised by their content (the ``DICM`` marker of a DICOM
Part 10 file at byte 128; the file name and extension do not matter) and grouped by SeriesInstanceUID, so one
folder may hold several series and one series may be spread over subfolders. Only headers are read
(:func:`sarf_bundle.headers.header_summary`). A series that repeats slice positions (several volumes) is reduced
by the 4D rule of :mod:`sarf_bundle.reduce_4d`; :attr:`DicomSeries.note` says what was done, e.g.
``"4D: kept b=1000 of b=0,1000"``.

A series whose files disagree on orientation, pixel spacing or matrix size, or that has no
ImagePositionPatient, is still returned (its ``note`` says what is wrong); :func:`read_series` then refuses it
with a ValueError. So do multi-frame (enhanced) DICOM files, whose geometry MONAI's PydicomReader does not read.

Reading (:func:`read_series`): MONAI's ``PydicomReader`` through ``LoadImage``. Pointed at a folder it reads
every file there (no subfolders), so a folder with two series mixes them, and it stacks slices by
InstanceNumber. :func:`read_series` therefore hands the reader the files of each volume of the series, in slice
order, and averages the volumes when the 4D rule keeps several (diffusion directions without a trace image).
"""

from __future__ import annotations

import math
import os
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from monai.data import MetaTensor, PydicomReader
from monai.utils import ensure_tuple
from pydicom.dataset import Dataset
from pydicom.misc import is_dicom

from .files import image_loader
from .headers import b_value, dicom_number, dicom_text, header_summary
from .reduce_4d import ImageTags, reduce_4d

__all__ = ["DicomSeries", "find_dicom_series", "read_series"]

_DICOMDIR = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage
_POSITION_TOLERANCE_MM = 0.01  # slices closer than this along the normal share a position


@dataclass
class DicomSeries:
    """One DICOM series, reduced to the files of one 3D volume (or of several, averaged).

    Attributes:
        uid: SeriesInstanceUID.
        folder: the deepest folder holding all of the series' files.
        volumes: the files of each 3D volume to read, each list sorted along the slice normal (ImagePositionPatient
            projected on the cross product of the ImageOrientationPatient cosines): one volume, or several at the
            same positions whose mean is the volume (the diffusion directions of step 4 of the 4D rule).
        name: a stable, unique id for reports: ``"<folder relative to the scanned folder>/<uid>"``, or the
            uid alone for a series directly in the scanned folder.
        header: :func:`sarf_bundle.headers.header_summary` of the first file, with ``b_values`` of the whole series.
        note: "" or what was done to, or is wrong with, the series ("4D: kept b=1000 of b=0,1000").
    """

    uid: str
    folder: str
    volumes: list[list[str]]
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
    tags: ImageTags
    order: tuple
    modality: str
    summary: dict
    depth: float = 0.0


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
        frames=int(dicom_number(dataset.get("NumberOfFrames")) or 1),
    )


def _image(path: Path, dataset: Dataset) -> _Image:
    """The parts of one header that :func:`find_dicom_series` needs; raises on values it cannot parse."""
    image_type = [str(v).upper() for v in ensure_tuple(dataset.get("ImageType") or ())]
    directionality = (dicom_text(dataset.get("DiffusionDirectionality")) or "").upper()
    echo_number = dicom_number(dataset.get("EchoNumbers"))

    def order(key: str) -> float:
        value = dicom_number(dataset.get(key))
        return math.inf if value is None else value

    return _Image(
        path=path,
        sop_uid=dicom_text(dataset.get("SOPInstanceUID")) or str(path),
        geometry=_geometry(dataset),
        tags=ImageTags(
            b=b_value(dataset),
            echo_time=dicom_number(dataset.get("EchoTime")),
            echo_number=None if echo_number is None else int(echo_number),
            trace=any(t in ("TRACEW", "TRACE") for t in image_type) or directionality == "ISOTROPIC",
            derived_map=any(t in ("ADC", "EADC", "FA", "EXP") for t in image_type),
            phase=any(t in ("P", "PHASE") for t in image_type),
            magnitude=any(t in ("M", "MAGNITUDE") for t in image_type),
        ),
        order=(order("AcquisitionNumber"), order("TemporalPositionIdentifier"), order("InstanceNumber"), str(path)),
        modality=dicom_text(dataset.get("Modality")) or "",
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
    SOPInstanceUID) count once. Only headers are read. A series that repeats slice positions is reduced by the
    4D rule (:mod:`sarf_bundle.reduce_4d`).

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
                uid = dicom_text(dataset.get("SeriesInstanceUID"))
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



def _assemble(uid: str, images: list[_Image], root: Path) -> DicomSeries:
    notes: list[str] = []
    unique: dict[str, _Image] = {}
    for im in sorted(images, key=lambda im: str(im.path)):
        unique.setdefault(im.sop_uid, im)
    if len(unique) < len(images):
        notes.append(f"{len(images) - len(unique)} duplicate file(s) (same SOPInstanceUID) ignored")
    images = list(unique.values())
    b_values = sorted({im.tags.b for im in images if im.tags.b is not None})
    problem = _geometry_problem([im.geometry for im in images])
    if problem:
        notes.append(problem)
        volumes = [sorted(images, key=lambda im: im.order)]
    else:
        normal = _normal(images[0].geometry.orientation)
        for im in images:
            im.depth = float(np.dot(im.geometry.position, normal))
        groups = _positions(images)
        if max(len(g) for g in groups) > 1:
            groups, steps = reduce_4d(images, lambda im: im.tags, _positions, "images per position")
            notes.append("4D: " + "; ".join(steps))
        volumes = [[g[v] for g in groups] for v in range(len(groups[0]))]
        gaps = np.diff([g[0].depth for g in groups])
        if len(gaps) > 1 and (gaps.max() - gaps.min()) > 0.1 * gaps.mean():
            notes.append(f"non-uniform slice spacing ({gaps.min():.3g}-{gaps.max():.3g} mm): missing slices?")
    modalities = sorted({im.modality for im in images})
    if modalities != ["MR"]:
        notes.append(f"Modality {'/'.join(m or 'missing' for m in modalities)}, not MR")
    folder = Path(os.path.commonpath([str(im.path.parent) for volume in volumes for im in volume]))
    relative = folder.relative_to(root).as_posix() if folder.is_relative_to(root) else folder.as_posix()
    header = dict(volumes[0][0].summary)
    header["b_values"] = b_values
    return DicomSeries(
        uid=uid,
        folder=str(folder),
        volumes=[[str(im.path) for im in volume] for volume in volumes],
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
        _check_regular_slices(slices, filenames)
        for rank, dataset in enumerate(slices, start=1):
            dataset.InstanceNumber = rank
        self.has_series = len(slices) > 1
        if not self.has_series:
            self.filenames = filenames
            return slices[0]
        self.filenames = [filenames]
        return slices


def _check_regular_slices(slices: Sequence[Dataset], filenames: Sequence[str]) -> None:
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
        raise ValueError(f"{where}: repeated slice positions, a 4D series? (read the volumes of find_dicom_series)")
    if not ((gaps > 0).all() or (gaps < 0).all()):
        raise ValueError(f"{where}: not in slice order (use the files of find_dicom_series)")
    size = np.abs(gaps)
    if size.max() - size.min() > 0.1 * size.mean():
        raise ValueError(f"{where}: non-uniform slice spacing ({size.min():.3g}-{size.max():.3g} mm), missing slices?")


def read_series(series: DicomSeries) -> MetaTensor:
    """Read one series with MONAI's ``PydicomReader`` (through ``LoadImage``): its volume, or the mean of its volumes.

    Returns:
        A float32 MetaTensor ``(1, X, Y, Z)`` (channel first; X along the rows of a slice, i.e. the DICOM
        columns, Y down the columns, Z along each of ``series.volumes``) with the RAS affine of the volume, as
        ``LoadImage(reader="PydicomReader", ensure_channel_first=True)`` gives for a folder holding only
        this volume, RescaleSlope/RescaleIntercept applied.

    Raises:
        TypeError: ``series`` is not a DicomSeries.
        FileNotFoundError: a file of the series is gone.
        ValueError: no files, or they are not one regular volume (inconsistent orientation, pixel spacing or
            matrix size, repeated or missing slices, multi-frame files).
    """
    if not isinstance(series, DicomSeries):
        raise TypeError(f"read_series needs a DicomSeries (from find_dicom_series), got {type(series).__name__}")
    if not series.volumes or not all(series.volumes):
        raise ValueError(f"series {series.name}: no files")
    for volume in series.volumes:
        for name in volume:
            if not Path(name).is_file():
                raise FileNotFoundError(f"series {series.name}: file not found: {name}")
    reader = _SeriesReader()
    loader = image_loader(image_only=True, ensure_channel_first=True, dtype=np.float32)
    image = loader(series.volumes[0], reader=reader)
    for files in series.volumes[1:]:
        image += loader(files, reader=reader)
    return image / len(series.volumes) if len(series.volumes) > 1 else image
