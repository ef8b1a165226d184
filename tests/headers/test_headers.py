"""What a header says: the summary of a DICOM header, the b-value, the sequence it suggests, the BIDS names."""

from __future__ import annotations

import json

import pytest
from pydicom.dataset import Dataset

from sarf_bundle import SEQUENCES
from sarf_bundle.headers import BIDS_NAMES, b_value, header_sequence, header_summary


def test_header_summary_is_plain_json():
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


def test_header_functions_bad_input():
    with pytest.raises(TypeError, match="Dataset"):
        header_summary({"EchoTime": 10})
    with pytest.raises(TypeError, match="Dataset"):
        b_value({"DiffusionBValue": 10})
    with pytest.raises(TypeError, match="dict"):
        header_sequence("AX T1")

