"""What a header says about the sequence: the DICOM values that tell sequences apart, the sequence they suggest,
and the BIDS name of each sequence.

Values (:func:`header_summary`, :func:`b_value`): read from a pydicom ``Dataset`` into plain JSON values. The b-value
of a file comes from the first of: the standard DiffusionBValue (0018,9087); Siemens (0019,100C) (private creator
SIEMENS MR HEADER); GE (0043,1039), first value, less the 10^9 that some GE software adds; Philips (2001,1003)
(private creator Philips Imaging DD 001); ``b1000`` / ``b=1000`` in SequenceName (Siemens ``*ep_b1000t``).

The sequence (:func:`header_sequence`): b-values, then words of SeriesDescription/ProtocolName, then SequenceName,
then timing (TR/TE/TI); T1 becomes T1Gd when a description or ContrastBolusAgent says so.

Names (:data:`BIDS_NAMES`): the BIDS file-name ending each predicted sequence suggests.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import pydicom
from monai.utils import ensure_tuple
from pydicom.dataset import Dataset

__all__ = ["BIDS_NAMES", "b_value", "dicom_number", "dicom_text", "header_sequence", "header_summary"]

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

_NO_AGENT = {"", "none", "no", "n/a", "na", "-", "0", "nil", "not used", "unknown"}


def dicom_text(value: Any) -> str | None:
    """A DICOM string value as a stripped ``str`` (multiple values joined by ``\\``), None when empty."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        value = "\\".join(str(v).strip() for v in value)
    text = str(value).replace("\x00", "").strip()
    return text or None


def dicom_number(value: Any) -> float | None:
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
        return dicom_number(value[0])
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
    b = dicom_number(dataset.get("DiffusionBValue"))
    if b is None:
        b = dicom_number(_private(dataset, 0x0019, "SIEMENS MR HEADER", 0x0C))
    if b is None:
        b = dicom_number(_private(dataset, 0x0043, "GEMS_PARM_01", 0x39))
        if b is not None and b >= 1e9:
            b %= 1e9
    if b is None:
        b = dicom_number(_private(dataset, 0x2001, "Philips Imaging DD 001", 0x03))
    if b is None:
        name = dicom_text(dataset.get("SequenceName"))
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
    :func:`b_value`; :func:`sarf_bundle.dicom.find_dicom_series` puts those of the whole series there). Missing or empty
    values are None (b_values: ``[]``).
    """
    if not isinstance(dataset, Dataset):
        raise TypeError(f"header_summary needs a pydicom Dataset, got {type(dataset).__name__}")
    summary: dict[str, Any] = {key: dicom_text(dataset.get(key)) for key in _SUMMARY_STRINGS}
    image_type = dataset.get("ImageType")
    if image_type is None or image_type == "":
        summary["ImageType"] = None
    else:
        values = [image_type] if isinstance(image_type, str) else list(image_type)
        summary["ImageType"] = [str(v).strip() for v in values]
    summary.update({key: dicom_number(dataset.get(key)) for key in _SUMMARY_NUMBERS})
    for key in ("ContrastBolusAgent", "Modality", "BodyPartExamined", "Manufacturer"):
        summary[key] = dicom_text(dataset.get(key))
    b = b_value(dataset)
    summary["b_values"] = [] if b is None else [b]
    return summary



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
        text = (dicom_text(header.get(key)) or "").lower()
        match = _NO_CONTRAST.search(text)
        if match:
            return False, f"'{match.group(0)}' in {key}"
    for key in ("SeriesDescription", "ProtocolName"):
        text = (dicom_text(header.get(key)) or "").lower()
        match = _CONTRAST.search(text)
        if match:
            return True, f"'{match.group(0).strip()}' in {key}"
    agent = dicom_text(header.get("ContrastBolusAgent"))
    if agent is not None and agent.lower() not in _NO_AGENT:
        return True, f"contrast agent '{agent}'"
    return None, ""


def _t1_or_t1gd(header: Mapping[str, Any], reason: str) -> tuple[str, str]:
    given, why = _contrast(header)
    if given:
        return "T1Gd", f"{reason}, {why}"
    return "T1", f"{reason}, {why}" if given is False else reason


def header_sequence(header: Mapping[str, Any]) -> tuple[str | None, str]:
    """The sequence that a :func:`header_summary` suggests, one of :data:`sarf_bundle.SEQUENCES` or None, and the reason.

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
    b_values = [b for b in (dicom_number(v) for v in header.get("b_values") or []) if b is not None]
    if any(b > 0 for b in b_values):
        return "DWI", "b-value " + ",".join(f"{b:g}" for b in sorted(b_values))
    image_type = [str(v).upper() for v in ensure_tuple(header.get("ImageType") or ())]
    for marker in ("DIFFUSION", "TRACEW", "TRACE", "ADC", "EADC"):
        if marker in image_type:
            return "DWI", f"ImageType {marker}"
    for key in ("SeriesDescription", "ProtocolName"):
        text = dicom_text(header.get(key))
        if text is None:
            continue
        hit = _keyword_class(text.lower())
        if hit is not None:
            cls, why = hit
            reason = f"{key} '{text}' ({why})"
            if cls == "T1":
                return _t1_or_t1gd(header, reason)
            return cls, reason
    sequence_name = (dicom_text(header.get("SequenceName")) or "").lower().lstrip("*")
    if sequence_name.startswith("tfl3d"):
        return _t1_or_t1gd(header, f"SequenceName '{header.get('SequenceName')}' (MPRAGE)")
    if sequence_name.startswith("swi"):
        return "SWI", f"SequenceName '{header.get('SequenceName')}'"
    return _timing_sequence(header)


def _timing_sequence(header: Mapping[str, Any]) -> tuple[str | None, str]:
    tr, te, ti = (dicom_number(header.get(k)) for k in ("RepetitionTime", "EchoTime", "InversionTime"))
    scanning = {s.strip().upper() for s in (dicom_text(header.get("ScanningSequence")) or "").split("\\")}
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
