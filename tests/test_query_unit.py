"""Fast tests of Query/Retrieve identifier validation and matching (PS3.4 C.2.2.2, C.4.1.2)."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from appliance.dicom.query import (
    IDENTIFIER_MISMATCH,
    UNSUPPORTED_KEY,
    AnyOf,
    Level,
    QueryError,
    Range,
    Single,
    Wildcard,
    answer,
    key_matcher,
    matches,
    parse_identifier,
)

from .conftest import identifier


@pytest.mark.parametrize(
    ("vr", "value", "stored", "expected"),
    [
        ("LO", "P1", "P1", True),
        ("LO", "P1", "p1", False),  # case-sensitive outside PN
        ("LO", "P*", "P123", True),
        ("LO", "P?3", "P13", True),
        ("LO", "P?3", "P123", False),
        ("LO", "P%1", "P%1", True),  # SQL wildcards are literal
        ("LO", "P%", "P1", False),
        ("LO", "P_2", "PX2", False),
        ("LO", "P_2", "P_2", True),
        ("LO", "a.b", "axb", False),  # regex characters are literal
        ("UI", "1.2*", "1.2.3", False),  # no wildcards on UI
        ("UI", "1.2*", "1.2*", True),
        ("DA", "20260101-20260131", "20260115", True),
        ("DA", "20260101-20260131", "20260201", False),
        ("DA", "-20251231", "20250101", True),
        ("DA", "20260101-", "20270101", True),
        ("DA", "20260101-", "", False),
        ("TM", "1000-1200", "1130", True),
        ("TM", "1000-1200", "120030", True),  # "12" reaches 12:59:59
        ("TM", "1000-1200", "1300", False),
        ("TM", "-0930", "093000.5", True),
        ("DT", "20260101120000-20260102", "20260102235959", True),
        ("DT", "20260101120000-20260102", "20260101110000", False),
        ("CS", "CT", "CT\\MR", True),  # any value of a multi-valued attribute
        ("CS", "PT", "CT\\MR", False),
    ],
)
def test_value_matching(vr: str, value: str, stored: str, expected: bool) -> None:
    matcher = key_matcher(vr, value.split("\\"), fold=False)
    assert matcher is not None
    assert matches(matcher, stored) is expected


def test_universal_matching() -> None:
    assert key_matcher("PN", [""], fold=True) is None
    assert key_matcher("PN", ["*"], fold=True) is None
    assert key_matcher("LO", [], fold=False) is None


def test_person_names_fold_case_and_unicode() -> None:
    single = key_matcher("PN", ["müller^hans"], fold=True)
    assert isinstance(single, Single) and matches(single, "MÜLLER^HANS")
    wild = key_matcher("PN", ["MÜL*"], fold=True)
    assert isinstance(wild, Wildcard) and matches(wild, "Müller^Hans")
    assert not matches(key_matcher("PN", ["müller^hans"], fold=False), "MÜLLER^HANS")  # type: ignore[arg-type]


def test_list_matching() -> None:
    matcher = key_matcher("UI", ["1.2.3", "1.2.4"], fold=False)
    assert isinstance(matcher, AnyOf)
    assert matches(matcher, "1.2.4") and not matches(matcher, "1.2.5")
    mixed = key_matcher("LO", ["A*", "B"], fold=False)
    assert matches(mixed, "Axx") and matches(mixed, "B") and not matches(mixed, "Bx")  # type: ignore[arg-type]


def test_wildcard_prefix() -> None:
    assert Wildcard("AB*C?").prefix == "AB"
    assert Wildcard("*AB").prefix == ""


def test_study_root_study_level() -> None:
    query = parse_identifier(identifier("STUDY", PatientName="Doe*", StudyDate=""), "study")
    assert query.level is Level.STUDY
    assert [k.keyword for k in query.constraints] == ["PatientName"]
    assert query.key("StudyDate") is not None


@pytest.mark.parametrize(
    ("root", "level", "keys", "message"),
    [
        ("study", "SERIES", {}, "StudyInstanceUID is required"),
        ("study", "IMAGE", {"StudyInstanceUID": "1.2"}, "SeriesInstanceUID is required"),
        ("patient", "STUDY", {}, "PatientID is required"),
        ("patient", "STUDY", {"PatientID": "P*"}, "must not be a wildcard"),
        ("study", "PATIENT", {}, "not in the Study Root"),
        ("study", "BOGUS", {}, "invalid QueryRetrieveLevel"),
        ("study", "STUDY", {"Modality": "CT"}, "Modality is below the STUDY level"),
        ("patient", "PATIENT", {"StudyInstanceUID": ""}, "below the PATIENT level"),
    ],
)
def test_hierarchical_validation(root: str, level: str, keys: dict[str, str],
                                 message: str) -> None:
    with pytest.raises(QueryError) as err:
        parse_identifier(identifier(level, **keys), root)  # type: ignore[arg-type]
    assert err.value.status == IDENTIFIER_MISMATCH
    assert message in err.value.comment


def test_missing_level() -> None:
    ds = Dataset()
    ds.PatientName = "*"
    with pytest.raises(QueryError, match="QueryRetrieveLevel"):
        parse_identifier(ds, "study")


def test_retrieve_needs_the_unique_key_of_its_level() -> None:
    with pytest.raises(QueryError, match="StudyInstanceUID is required"):
        parse_identifier(identifier("STUDY", StudyInstanceUID=""), "study", retrieve=True)
    query = parse_identifier(identifier("STUDY", StudyInstanceUID=["1.2", "1.3"]), "study",
                             retrieve=True)
    assert isinstance(query.constraints[0].matcher, AnyOf)


def test_sequence_matching_is_refused() -> None:
    item = Dataset()
    item.CodeValue = "X"
    ds = identifier("STUDY")
    ds.ProcedureCodeSequence = [item]
    with pytest.raises(QueryError) as err:
        parse_identifier(ds, "study")
    assert err.value.status == UNSUPPORTED_KEY


def test_combined_date_time_range() -> None:
    query = parse_identifier(
        identifier("STUDY", StudyDate="20260315-20260316", StudyTime="140000-100000"), "study"
    )
    assert query.constraints == []  # both keys folded into one DT range
    (combined,) = query.combined
    assert combined.matches("20260315" + "143000")
    assert combined.matches("20260316" + "090000")
    assert not combined.matches("20260315" + "130000")
    assert not combined.matches("20260316" + "110000")


def test_date_range_alone_stays_a_range() -> None:
    query = parse_identifier(identifier("STUDY", StudyDate="20260101-"), "study")
    assert isinstance(query.constraints[0].matcher, Range)


def test_answer_fills_every_key() -> None:
    query = parse_identifier(
        identifier("STUDY", PatientName="", PatientWeight="", StudyInstanceUID="",
                   NumberOfStudyRelatedInstances=""), "study")
    values = {"PatientName": "Müller^Hans", "StudyInstanceUID": "1.2.3",
              "NumberOfStudyRelatedInstances": "3"}
    ds = answer(query, lambda key: values.get(key.keyword), "APPLIANCE")
    assert ds.QueryRetrieveLevel == "STUDY"
    assert ds.RetrieveAETitle == "APPLIANCE"
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert str(ds.PatientName) == "Müller^Hans"
    assert "PatientWeight" in ds and ds.PatientWeight in (None, "")
    assert ds.NumberOfStudyRelatedInstances == 3


def test_answer_ascii_has_no_charset() -> None:
    query = parse_identifier(identifier("STUDY", PatientName=""), "study")
    ds = answer(query, lambda key: "Doe^John", "APPLIANCE")
    assert "SpecificCharacterSet" not in ds
