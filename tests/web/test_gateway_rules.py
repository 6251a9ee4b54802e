"""The gateway's request rules: path shapes, UIDs, query parameters, Accept headers."""

from __future__ import annotations

import pytest

from appliance.web.gateway import (
    BadRequest,
    accepts_json,
    accepts_stored_htj2k,
    check_raw_path,
    clean_query,
    frame_file_redirect,
    orthanc_accept,
    orthanc_redirect,
    parse_path,
    parse_single_frame,
    series_metadata_redirect,
)

ST, SE, SO = "1.2.840.1", "1.2.840.1.2", "1.2.840.1.2.3"
OCTETS = 'multipart/related; type="application/octet-stream"'


@pytest.mark.parametrize(
    ("tail", "resource", "action"),
    [
        ("studies", "studies", "search"),
        ("series", "series", "search"),
        ("instances", "instances", "search"),
        (f"studies/{ST}", "studies", "retrieve"),
        (f"studies/{ST}/metadata", "studies", "metadata"),
        (f"studies/{ST}/series", "series", "search"),
        (f"studies/{ST}/instances", "instances", "search"),
        (f"studies/{ST}/series/{SE}", "series", "retrieve"),
        (f"studies/{ST}/series/{SE}/metadata", "series", "metadata"),
        (f"studies/{ST}/series/{SE}/thumbnail", "series", "thumbnail"),
        (f"studies/{ST}/series/{SE}/instances", "instances", "search"),
        (f"studies/{ST}/series/{SE}/instances/{SO}", "instances", "retrieve"),
        (f"studies/{ST}/series/{SE}/instances/{SO}/rendered", "instances", "rendered"),
        (f"studies/{ST}/series/{SE}/instances/{SO}/frames/1,2", "instances", "frames"),
        (f"studies/{ST}/series/{SE}/instances/{SO}/frames/1/rendered", "instances", "frames"),
        (f"studies/{ST}/series/{SE}/instances/{SO}/bulk/7fe00010", "instances", "bulk"),
    ],
)
def test_known_paths_parse_and_rebuild(tail, resource, action):
    target = parse_path(tail)
    assert (target.resource, target.action) == (resource, action)
    assert target.path == tail


@pytest.mark.parametrize(
    "tail",
    [
        "",
        "studies/../../system",
        "studies/1.2.3abc",
        "studies/" + "1." * 40 + "1",  # longer than 64 characters
        f"studies/{ST}/series/{SE}/instances/{SO}/frames/0",
        f"studies/{ST}/series/{SE}/instances/{SO}/frames/1;2",
        f"studies/{ST}/series/{SE}/instances/{SO}/frames/1/raw",
        f"studies/{ST}/series/{SE}/instances/{SO}/file",
        "tools/find",
        "patients",
        f"studies/{ST}/series/{SE}/instances/{SO}/bulk/../../x",
    ],
)
def test_unknown_or_malformed_paths_are_refused(tail):
    with pytest.raises(BadRequest):
        parse_path(tail)


FRAME = f"studies/{ST}/series/{SE}/instances/{SO}/frames/"


@pytest.mark.parametrize(
    "tail",
    [
        FRAME + "1",
        FRAME + "999999",
        FRAME + "1000000",
        FRAME + "01",
        FRAME + "1,2",
        FRAME + "1/",
        "/" + FRAME + "1",
        FRAME + "1/rendered",
        FRAME.replace(SO, SO + ".") + "1",
        FRAME.replace(SO, SO + "..4") + "1",
        FRAME.replace(SO, "1." * 32 + "1") + "1",  # 65 characters
        FRAME.replace(SO, "1." * 31 + "12") + "1",  # 64 characters
        FRAME.replace("series", "Series") + "1",
        FRAME + "1\n",
        FRAME + "٣",  # a non-ASCII digit
    ],
)
def test_the_single_frame_fast_path_agrees_with_the_full_parser(tail):
    """Whatever the frame gate's one regular expression accepts, parse_path accepts alike."""
    fast = parse_single_frame(tail)
    try:
        full = parse_path(tail)
    except BadRequest:
        full = None
    assert fast is None or fast == full
    if full is not None and full.action == "frames" and tail == full.path:
        assert fast == full or len(full.frames) > 1 or full.frame_action
    if not tail.isascii() or "\n" in tail:
        assert fast is None


@pytest.mark.parametrize(
    "raw",
    [
        "/api/pacs/dicom-web/studies/%2e%2e/system",
        "/api/pacs/dicom-web/studies/1.2%0d%0aX-Accel-Redirect:%20/internal-orthanc/",
        "/api/pacs/dicom-web//studies",
        "/api/pacs/dicom-web/studies/1.2/../../../instances",
        "/api/pacs/dicom-web/studies\\1.2",
    ],
)
def test_encoding_tricks_are_refused(raw):
    with pytest.raises(BadRequest):
        check_raw_path(raw)


def test_percent_encoding_in_the_query_is_fine():
    check_raw_path("/api/pacs/dicom-web/studies?includefield=00081030%2C00080060&limit=25")


def test_query_is_validated_and_reencoded():
    query = clean_query(
        [
            ("PatientName", "DOE^J*"),
            ("includefield", "00081030"),
            ("limit", "10"),
            ("00100020", "ID 1"),
        ]
    )
    assert query == "PatientName=DOE^J*&includefield=00081030&limit=10&00100020=ID%201"


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        ([("Patient Name", "x")], "unknown query parameter"),
        ([("PatientName", "a\r\nX-Accel-Redirect: /internal-orthanc/")], "control characters"),
        ([("limit", "-1")], "non-negative integer"),
        ([("PatientName", "x" * 2000)], "too long"),
    ],
)
def test_bad_query_parameters_are_refused(pairs, message):
    with pytest.raises(BadRequest, match=message):
        clean_query(pairs)


def test_share_scope_replaces_any_study_filter():
    query = clean_query([("StudyInstanceUID", "9.9.9"), ("0020000D", "8.8")], study_only=ST)
    assert query == f"StudyInstanceUID={ST}"


def test_redirects_stay_inside_internal_locations():
    target = parse_path(f"studies/{ST}/series/{SE}/instances/{SO}/frames/3")
    assert frame_file_redirect(target) == f"/internal-frames/{ST}/{SE}/{SO}/frames/3"
    assert orthanc_redirect(parse_path("studies"), "limit=1") == (
        "/internal-orthanc/api/pacs/dicom-web/studies?limit=1"
    )
    metadata = parse_path(f"studies/{ST}/series/{SE}/metadata")
    assert series_metadata_redirect(metadata) == f"/internal-metadata/{ST}/{SE}/metadata.json"


@pytest.mark.parametrize(
    ("accept", "json"),
    [("", True), ("*/*", True), ("application/dicom+json", True), ("application/json", True),
     ('multipart/related; type="application/dicom+xml"', False)],
)  # fmt: skip
def test_prepared_metadata_is_sent_only_as_json(accept: str, json: bool):
    assert accepts_json(accept) is json


@pytest.mark.parametrize(
    ("accept", "stored"),
    [
        ("", True),
        ("*/*", True),
        ('multipart/related; type="application/octet-stream"; transfer-syntax=*', True),
        (f"{OCTETS}; transfer-syntax=1.2.840.10008.1.2.4.201", True),
        (f"{OCTETS}; transfer-syntax=1.2.840.10008.1.2.1", False),
        ('multipart/related; type="image/jpeg"; transfer-syntax=1.2.840.10008.1.2.4.50', False),
    ],
)
def test_which_accept_headers_prepared_frames_satisfy(accept, stored):
    assert accepts_stored_htj2k(accept) is stored


def test_generic_frame_accept_is_made_explicit_for_orthanc():
    frames = parse_path(f"studies/{ST}/series/{SE}/instances/{SO}/frames/1")
    explicit = orthanc_accept(frames, 'multipart/related; type="*/*"')
    assert explicit.endswith("transfer-syntax=*")
    assert orthanc_accept(parse_path("studies"), "application/dicom+json") == (
        "application/dicom+json"
    )
