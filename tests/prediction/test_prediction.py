"""The one decision about a volume (:func:`sarf_bundle.prediction.decide`): status, reasons, header agreement, rows."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sarf_bundle import SEQUENCES
from sarf_bundle.prediction import STATUSES, csv_columns, decide, failed

T1 = [0.02, 0.03, 0.05, 0.80, 0.08, 0.02]  # T1 with confidence 0.80


def test_a_confident_prediction_is_ok_with_its_bids_name_and_row():
    p = decide("a.nii.gz", T1, confidence_threshold=0.5)
    assert (p.status, p.sequence, p.confidence, p.message, p.bids_name) == ("ok", "T1", 0.80, "", "T1w")
    assert list(p.probabilities) == list(SEQUENCES)
    row = p.as_row()
    assert set(row) == set(csv_columns()) and row["confidence"] == "0.800000" and row["header_agrees"] == ""
    assert all(isinstance(v, str) for v in row.values())
    assert json.loads(json.dumps(p.as_dict()))["sequence"] == "T1"


@pytest.mark.parametrize(
    "kwargs, status, message",
    [
        ({"confidence_threshold": 0.9}, "uncertain", "confidence 0.80 is below the threshold 0.9"),
        ({"warning": "60 mm across: not a head?"}, "uncertain", "60 mm across: not a head?"),
        ({"note": "4D: last of 3 volumes"}, "ok", "4D: last of 3 volumes"),
        (
            {"note": "4D: last of 3 volumes", "warning": "not a head?", "confidence_threshold": 0.9},
            "uncertain",
            "4D: last of 3 volumes; not a head?; confidence 0.80 is below the threshold 0.9",
        ),
    ],
)
def test_each_reason_is_listed_after_the_note(kwargs, status, message):
    p = decide("a.nii.gz", T1, **kwargs)
    assert (p.status, p.message, p.sequence) == (status, message, "T1")


def test_the_dicom_header_agrees_disagrees_or_cannot_tell():
    agrees = decide("s", T1, header={"RepetitionTime": 600.0, "EchoTime": 12.0, "ContrastBolusAgent": ""})
    assert (agrees.status, agrees.header_sequence, agrees.header_agrees) == ("ok", "T1", "yes")
    header = {"SeriesDescription": "AX FLAIR"}
    disagrees = decide("s", T1, header=header)
    assert (disagrees.status, disagrees.header_sequence, disagrees.header_agrees) == ("uncertain", "FLAIR", "no")
    assert disagrees.message.startswith("the DICOM header suggests FLAIR (SeriesDescription 'AX FLAIR'")
    assert decide("s", T1, header=json.dumps(header)) == disagrees  # the CSV handler passes the header as JSON text
    silent = decide("s", T1, header={"SeriesDescription": "localizer 3"})
    assert (silent.header_sequence, silent.header_agrees) == ("", "")


def test_ties_go_to_the_first_class_as_argmax_does():
    p = decide("a", [0.25, 0.25, 0.25, 0.25, 0.0, 0.0])
    assert p.sequence == SEQUENCES[int(np.argmax([0.25, 0.25, 0.25, 0.25, 0.0, 0.0]))] == "DWI"


def test_an_error_has_no_sequence_and_no_numbers():
    p = failed("broken.nii.gz", "ImageFileError: cannot read")
    assert (p.status, p.sequence, p.confidence, p.bids_name) == ("error", "", None, "")
    assert p.as_row() == {"file": "broken.nii.gz", "status": "error", "message": "ImageFileError: cannot read"}
    assert set(STATUSES) == {"ok", "uncertain", "error"}


def test_probabilities_that_do_not_match_the_classes_are_refused():
    with pytest.raises(ValueError, match=r"x\.nii\.gz: 5 probabilities for 6 classes"):
        decide("x.nii.gz", T1[:5])
