"""The request edge is bounded: body sizes, decompression, uploads, patterns, the frame gate.

Unit tests go through aiohttp's test client; the slow ones send their bodies through the
real nginx (and straight to the app's loopback port) of a real appliance and measure the
app processes' resident memory from ``/proc``.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import logging
import math
import time
import zlib
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from aiohttp import web
from aiohttp.test_utils import TestServer
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import generate_uid

import bundled_nginx
from appliance import internal_locations
from appliance.config import load_settings
from appliance.home import init_home
from appliance.ingest.modalities import ModalityError, validate_ae_title
from appliance.security import audit
from appliance.supervise.nginx import render_nginx_conf
from appliance.uids import is_valid_uid
from appliance.web.app import create_app
from appliance.web.errors import MALFORMED_REQUEST_LOG
from appliance.web.frame_gate import HANDED_TO_APP, GateProtocol, session_cookie
from appliance.web.gateway import (
    BadRequest,
    accepts_stored_htj2k,
    clean_query,
    parse_path,
    parse_single_frame,
)
from appliance.web.inputs import SERVER_OPTIONS
from tests.support.clients import api_token
from tests.support.ports import reserve_port
from tests.support.running import make_appliance, wait_stored
from tests.support.samples import native_dataset

MiB = 1024**2
JSON = {"Content-Type": "application/json"}
GZIP_JSON = {**JSON, "Content-Encoding": "gzip"}
BOUNDARY = "edge-boundary"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def gzip_bomb(inflated: int) -> bytes:
    """A gzip body of a JSON login whose username inflates to ``inflated`` bytes."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunks = [packer.compress(b'{"username": "')]
    block = b"a" * MiB
    chunks += [packer.compress(block) for _ in range(inflated // MiB)]
    chunks += [packer.compress(b'", "password": "x"}'), packer.flush()]
    return b"".join(chunks)


# --------------------------------------------------------------- patterns: linear time

GROWTH = 8  # the adversarial inputs are measured at n and at 8n repetitions
MAX_COST_GROWTH = 16  # linear time costs 8x (plus noise); quadratic would cost 64x
MEASURE_SECONDS = 0.01  # each timing loops the call until the small input takes this
ADVERSARIAL: list[tuple[str, Callable[[str], object], Callable[[int], str], int]] = [
    ("bulk data path", parse_path,
     lambda n: "studies/1/series/2/instances/3/bulk/7FE00010" + ".11111111" * n + "x", 4),
    ("bulk data path, long", parse_path,
     lambda n: "studies/1/series/2/instances/3/bulk/7FE00010" + ".1.ABCDEF01" * n + ".x", 125),
    ("frame list", parse_path,
     lambda n: "studies/1/series/2/instances/3/frames/" + "1," * n + "x", 625),
    ("single frame", parse_single_frame,
     lambda n: "studies/" + "1." * n + "/series/2/instances/3/frames/1x", 500),
    ("single frame, long UIDs", parse_single_frame,
     lambda n: "studies/1/series/2/instances/" + "1" * n + ".x/frames/1", 1000),
    ("UID", is_valid_uid, lambda n: "1." * n + "x", 625),
    ("query key", lambda key: clean_query([(key, "1")]),
     lambda n: "ABCDEF01." * 3 + "A" * 64 + "." + "a" * n + "!", 625),
    ("query key, ambiguous", lambda key: clean_query([(key, "1")]),
     lambda n: "ABCDEF01." * n + "!", 250),
    ("AE title", validate_ae_title, lambda n: "A" + " " * n + "\\", 625),
    ("Accept", accepts_stored_htj2k,
     lambda n: "multipart/related; " * n + "transfer-syntax", 250),
    ("session cookie", lambda v: session_cookie(v.encode()),
     lambda n: "nn_session=a; " * n + "=" * 3, 375),
    ("audit since", audit.since_iso, lambda n: "1" * n + "x", 500),
    ("audit escape", audit.escape, lambda n: "\\\u200b" * n, 625),
]  # fmt: skip


@pytest.mark.parametrize(("what", "check", "make", "n"), ADVERSARIAL,
                         ids=[a[0] for a in ADVERSARIAL])  # fmt: skip
def test_every_request_pattern_runs_in_linear_time(what, check, make, n):
    """An input 8x as long costs at most 16x: measured against the same check's own cost
    on the shorter input, in the same run. A burst of other work on this shared machine
    can inflate one measurement, so it is taken again (up to 3 times) before failing;
    quadratic code costs 64x every time."""
    small, large = make(n), make(n * GROWTH)
    calls = calls_to_fill(check, small)
    growths = []
    for _ in range(3):
        growths.append(cost_growth(check, small, large, calls))
        if growths[-1] <= MAX_COST_GROWTH:
            return
    raise AssertionError(f"{what}: {GROWTH}x the input cost {growths} x the time: quadratic?")


def cost_growth(check: Callable[[str], object], small: str, large: str, calls: int) -> float:
    """How much longer ``large`` takes than ``small``: the best of 7 interleaved timings."""
    timings: dict[str, list[float]] = {small: [], large: []}
    for _ in range(7):
        for value in (small, large):
            timings[value].append(timed(check, value, calls))
    return min(timings[large]) / min(timings[small])


def test_the_growth_measure_tells_quadratic_from_linear():
    def pairs(value: str) -> int:  # quadratic: every pair of characters
        return sum(1 for i in range(len(value)) for _ in range(i))

    small, large = "x" * 100, "x" * 100 * GROWTH
    assert cost_growth(pairs, small, large, calls_to_fill(pairs, small)) > 2 * MAX_COST_GROWTH


def calls_to_fill(check: Callable[[str], object], value: str) -> int:
    """How many calls on ``value`` take about :data:`MEASURE_SECONDS`."""
    one = min(timed(check, value, 1) for _ in range(3))
    return max(1, math.ceil(MEASURE_SECONDS / max(one, 1e-7)))


def timed(check: Callable[[str], object], value: str, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        with contextlib.suppress(BadRequest, ModalityError, ValueError):
            check(value)
    return time.perf_counter() - started


def test_bulk_data_paths_keep_their_meaning():
    base = "studies/1/series/2/instances/3/bulk/"
    for good in ("7FE00010", "00081140.1.00081150", "00081140.11111111",
                 "00081140.1.ABCDEF01.2.00081150", "00081140.1.11111111.2"):  # fmt: skip
        assert parse_path(base + good).bulk == good
    for bad in ("7FE0001", "7FE00010.", "7FE00010.ABCDEF01", "00081140.1.ABCDEF01.ABCDEF02",
                "7FE00010.1.x", ""):  # fmt: skip
        with pytest.raises(BadRequest):
            parse_path(base + bad)


def test_an_accept_header_with_a_bare_transfer_syntax_does_not_raise():
    assert accepts_stored_htj2k("multipart/related; transfer-syntax") is False


# ------------------------------------------------------------------- the frame gate


class BrokenGate:
    """A gate whose check fails as no real one can any more (the fault is injected)."""

    def answer(self, method: bytes, url: bytes, headers: dict[bytes, bytes]) -> bytes:
        raise IndexError("list index out of range")


class Transport:
    def __init__(self) -> None:
        self.written = b""

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


def test_an_exception_in_the_gate_is_logged_and_the_request_goes_to_the_app(caplog):
    protocol = GateProtocol(BrokenGate())  # type: ignore[arg-type]
    protocol.transport = Transport()  # type: ignore[assignment]
    with caplog.at_level(logging.ERROR, logger="neuronova.web"):
        protocol.data_received(b"GET /api/pacs/dicom-web/x HTTP/1.1\r\nHost: g\r\n\r\n")
    assert protocol.transport.written == HANDED_TO_APP  # type: ignore[union-attr]
    assert "frame gate" in caplog.text and "IndexError" in caplog.text


class CleanGate:
    def answer(self, method: bytes, url: bytes, headers: dict[bytes, bytes]) -> bytes:
        return HANDED_TO_APP


def test_an_upgrade_request_is_answered_then_the_connection_closed():
    """httptools raises HttpParserUpgrade (not an HttpParserError) after the message: it
    escaped data_received and asyncio logged a fatal error (the fuzz run: ~1,000 times)."""
    protocol = GateProtocol(CleanGate())  # type: ignore[arg-type]
    transport = Transport()
    closed: list[bool] = []
    transport.close = lambda: closed.append(True)  # type: ignore[method-assign]
    protocol.transport = transport  # type: ignore[assignment]
    protocol.data_received(
        b"GET /x HTTP/1.1\r\nHost: g\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    assert transport.written == HANDED_TO_APP and closed == [True]


# ------------------------------------------------------------- the app: body limits


@pytest.fixture
def home(tmp_path):
    """Settings (uploads capped at 1 MB) and the first admin's password."""
    values = {"web.max_upload_mb": 1, "internal.gate_port": reserve_port()}
    settings = load_settings(tmp_path / "home", values, environ={})
    return settings, init_home(settings).admin_password


@pytest.fixture
async def client(aiohttp_client, home):
    server = TestServer(create_app(home[0]))
    await server.start_server(**SERVER_OPTIONS)  # as serve() runs it
    return await aiohttp_client(server)


async def test_a_gzip_bomb_to_a_json_route_is_refused_while_inflating(client):
    """Refused in less time than inflating the bomb whole takes, here, in the same run."""
    bomb = gzip_bomb(200 * MiB)
    started = time.perf_counter()
    inflated = len(zlib.decompress(bomb, wbits=31))
    inflating = time.perf_counter() - started
    started = time.perf_counter()
    resp = await client.post("/api/auth/login", data=bomb, headers=GZIP_JSON)
    assert resp.status == 413
    assert (await resp.json())["error"] == "body_too_large"
    refusing = time.perf_counter() - started
    assert inflated > 200 * MiB and refusing < inflating / 2, (refusing, inflating)


async def test_a_json_body_over_64_kb_is_refused(client):
    body = json.dumps({"username": "a" * 70_000, "password": "x"})
    resp = await client.post("/api/auth/login", data=body, headers=JSON)
    assert resp.status == 413 and (await resp.json())["error"] == "body_too_large"


async def test_a_compressed_json_body_within_the_limit_is_read(client):
    body = zlib.compress(json.dumps({"username": "nobody", "password": "x"}).encode())
    resp = await client.post("/api/auth/login", data=body,
                             headers={**JSON, "Content-Encoding": "deflate"})  # fmt: skip
    assert resp.status == 401


async def test_a_body_that_is_not_gzip_is_a_400(client):
    resp = await client.post("/api/auth/login", data=b"\x1f\x8bnot gzip at all", headers=GZIP_JSON)
    assert resp.status == 400 and (await resp.json())["error"] == "invalid_body"


async def test_an_upload_over_the_setting_is_refused_with_413(client, home):
    settings, password = home
    login = await client.post("/api/auth/login", json={"username": "admin", "password": password})
    token = (await login.json())["access_token"]
    part = b"\0" * (2 * MiB)
    resp = await client.post("/api/pacs/dicom-web/studies", data=stow_body(part),
                             headers={"Authorization": f"Bearer {token}",
                                      "Content-Type": STOW_TYPE})  # fmt: skip
    assert resp.status == 413 and (await resp.json())["error"] == "upload_too_large"
    assert not list((settings.layout.spool_dir / "incoming").iterdir())


async def test_a_compressed_upload_is_refused_with_415(client, home):
    login = await client.post("/api/auth/login", json={"username": "admin", "password": home[1]})
    token = (await login.json())["access_token"]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": STOW_TYPE,
               "Content-Encoding": "gzip"}  # fmt: skip
    resp = await client.post("/api/pacs/dicom-web/studies", data=gzip_bomb(10 * MiB),
                             headers=headers)  # fmt: skip
    assert resp.status == 415 and (await resp.json())["error"] == "unsupported_encoding"


async def test_a_part_with_a_huge_file_meta_element_is_refused_unread(client, home):
    login = await client.post("/api/auth/login", json={"username": "admin", "password": home[1]})
    token = (await login.json())["access_token"]
    ds = native_dataset(np.zeros((4, 4), np.uint8))
    ds.file_meta.PrivateInformationCreatorUID = "1.2.3"
    ds.file_meta.PrivateInformation = bytes(512 * 1024)
    resp = await client.post("/api/pacs/dicom-web/studies", data=stow_body(_part10(ds)),
                             headers={"Authorization": f"Bearer {token}",
                                      "Content-Type": STOW_TYPE})  # fmt: skip
    assert resp.status == 409
    reason = (await resp.json())["00091001"]["Value"][0]
    assert "File Meta Information does not end within 64 KB" in reason


@pytest.mark.parametrize("cut", ["no closing boundary", "wrong boundary", "empty"])
async def test_a_malformed_multipart_upload_is_a_400(client, home, cut):
    login = await client.post("/api/auth/login", json={"username": "admin", "password": home[1]})
    token = (await login.json())["access_token"]
    body = {"no closing boundary": stow_body(b"x" * 100)[:-20],
            "wrong boundary": stow_body(b"x" * 100).replace(BOUNDARY.encode(), b"other"),
            "empty": b""}[cut]  # fmt: skip
    resp = await client.post("/api/pacs/dicom-web/studies", data=body,
                             headers={"Authorization": f"Bearer {token}",
                                      "Content-Type": STOW_TYPE})  # fmt: skip
    assert resp.status == 400 and (await resp.json())["error"] == "bad_multipart"


async def test_a_part_with_an_unknown_value_representation_fails_alone(client, home):
    login = await client.post("/api/auth/login", json={"username": "admin", "password": home[1]})
    token = (await login.json())["access_token"]
    bad = bytearray(_part10(native_dataset(np.zeros((4, 4), np.uint8), StudyDescription="CT")))
    at = bad.index(b"LO\x02\x00CT")
    bad[at : at + 2] = b"YN"  # found by bench/fuzz.py: the journal could not decode it
    good = _part10(native_dataset(np.zeros((4, 4), np.uint8)))
    resp = await client.post("/api/pacs/dicom-web/studies", data=stow_body(bytes(bad), good),
                             headers={"Authorization": f"Bearer {token}",
                                      "Content-Type": STOW_TYPE})  # fmt: skip
    assert resp.status == 202
    assert "(0008,1030) has an unknown VR 'YN'" in (await resp.json())["00091001"]["Value"][0]


def stow_body(*parts: bytes) -> bytes:
    body = b"".join(
        b"--%s\r\nContent-Type: application/dicom\r\n\r\n%s\r\n" % (BOUNDARY.encode(), part)
        for part in parts
    )
    return body + b"--%s--\r\n" % BOUNDARY.encode()


def test_nginx_takes_large_bodies_only_on_the_stow_location(tmp_path):
    settings = make_appliance(tmp_path, {"web.max_upload_mb": 300}).settings
    conf = render_nginx_conf(settings).read_text()
    sizes = [line.split()[1] for line in conf.splitlines() if "client_max_body_size" in line]
    assert sizes[0] == "64k;" and set(sizes[1:]) == {"300m;"}
    stow = conf.split('location ~ "^/api/pacs/dicom-web/studies(/[^/]+)?$"')[1:]
    assert stow and all("client_max_body_size 300m;" in after.split("}")[0] for after in stow)


def test_nginx_internal_locations_come_from_the_python_constants(tmp_path):
    template = (Path(bundled_nginx.__file__).parent / "server.conf.template").read_text()
    assert "/internal-" not in template  # named once, in appliance/internal_locations.py
    conf = render_nginx_conf(make_appliance(tmp_path).settings).read_text()
    for location in internal_locations.ALL:
        blocks = conf.split(f"location {location}/ {{")[1:]
        assert len(blocks) == 2  # the HTTPS server and the plain one (redirect off in tests)
        assert all(block.split("\n")[1].strip() == "internal;" for block in blocks)


# ------------------------------------------------- the real appliance: memory and STOW


def rss(pid: int, field: str = "VmRSS") -> int:
    """A memory figure of a process in bytes, from ``/proc/PID/status``."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for process {pid}")


def app_pids(appliance) -> list[int]:
    children = appliance.state()["children"]
    return [child["pid"] for name, child in children.items() if name.startswith("app")]


def peak_growth(appliance, action: Callable[[], object]) -> tuple[object, int]:
    """``action()``'s result and the largest rise of any app process's peak RSS during it.

    Each process's peak (VmHWM) is reset first by writing 5 to ``/proc/PID/clear_refs``.
    """
    pids = app_pids(appliance)
    before = {}
    for pid in pids:
        with open(f"/proc/{pid}/clear_refs", "w") as clear:
            clear.write("5")
        before[pid] = rss(pid)
    result = action()
    return result, max(rss(pid, "VmHWM") - before[pid] for pid in pids)


def post_streamed(port: int, path: str, headers: dict[str, str], chunks: Iterator[bytes],
                  length: int, timeout: float = 120) -> tuple[int, bytes]:  # fmt: skip
    """POST a body of ``length`` bytes from ``chunks`` without holding it in memory."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest("POST", path)
        for name, value in {**headers, "Content-Length": str(length)}.items():
            conn.putheader(name, value)
        conn.endheaders()
        try:
            for chunk in chunks:
                conn.send(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused early: the answer is waiting
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def admin_token(appliance) -> str:
    return api_token(appliance, "admin", appliance.admin_password)


@pytest.mark.slow
@pytest.mark.parametrize("to", ["nginx", "app"])
def test_a_1_gb_gzip_bomb_leaves_the_app_small_and_alive(appliance, to):
    port = (
        appliance.settings.web.http_port if to == "nginx" else appliance.settings.internal.app_port
    )
    bomb = gzip_bomb(1024 * MiB)
    pids = app_pids(appliance)
    started = time.monotonic()
    (status, body), growth = peak_growth(appliance, lambda: post_streamed(
        port, "/api/auth/login", GZIP_JSON, iter([bomb]), len(bomb)))  # fmt: skip
    elapsed = time.monotonic() - started
    print(f"gzip bomb via {to}: {status} in {elapsed * 1000:.0f} ms, RSS +{growth / MiB:.1f} MB")
    assert status == 413 and json.loads(body)["error"] == "body_too_large"
    assert growth < 50 * MiB
    assert app_pids(appliance) == pids


@pytest.mark.slow
def test_a_json_body_over_64_kb_is_refused_by_nginx_with_a_json_reason(appliance):
    body = json.dumps({"username": "a" * 100_000, "password": "x"})
    resp = requests.post(f"{appliance.url}/api/auth/login", data=body, headers=JSON, timeout=10)
    assert resp.status_code == 413 and resp.json()["error"] == "body_too_large"


def big_part(study: str, pixel_bytes: int) -> tuple[bytes, int]:
    """The head of a Part 10 object whose Pixel Data (sent after it) is ``pixel_bytes`` long."""
    rows = pixel_bytes // (2 * 16384)
    ds = native_dataset(np.zeros((1, 1), np.uint16), Rows=rows, Columns=16384,
                        StudyInstanceUID=study)  # fmt: skip
    del ds.PixelData
    head = _part10(ds) + b"\xe0\x7f\x10\x00OW\x00\x00" + pixel_bytes.to_bytes(4, "little")
    return head, pixel_bytes


def _part10(ds: pydicom.Dataset) -> bytes:
    out = BytesIO()
    pydicom.dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.slow
def test_a_1_gb_stow_streams_to_the_spool(appliance, admin_token):
    head, size = big_part("1.2.3.4.5", 1024 * MiB)
    opening = b"--%s\r\nContent-Type: application/dicom\r\n\r\n" % BOUNDARY.encode()
    closing = b"\r\n--%s--\r\n" % BOUNDARY.encode()
    block = bytes(MiB)

    def chunks() -> Iterator[bytes]:
        yield opening + head
        for _ in range(size // MiB):
            yield block
        yield closing

    length = len(opening) + len(head) + size + len(closing)
    headers = {"Authorization": f"Bearer {admin_token}", "Content-Type": STOW_TYPE}
    other_study = "/api/pacs/dicom-web/studies/1.2.3.4.6"
    started = time.monotonic()
    (status, body), growth = peak_growth(appliance, lambda: post_streamed(
        appliance.settings.web.http_port, other_study, headers, chunks(), length))  # fmt: skip
    elapsed = time.monotonic() - started
    print(f"1 GB STOW: {status} in {elapsed:.1f} s, app RSS +{growth / MiB:.1f} MB")
    assert status == 409, body[:300]
    assert "another study" in json.loads(body)["00091001"]["Value"][0]
    assert growth < 100 * MiB
    spool = appliance.settings.layout.spool_dir
    assert not list((spool / "incoming").iterdir())


@pytest.mark.slow
def test_dicomweb_client_stores_a_data_set_built_in_memory(appliance, admin_token):
    ds = native_dataset(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    assert not hasattr(ds, "preamble")
    client = DICOMwebClient(f"{appliance.url}/api/pacs/dicom-web",
                            headers={"Authorization": f"Bearer {admin_token}"})  # fmt: skip
    result = client.store_instances([ds])
    assert result.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID
    wait_stored(appliance, [ds.SOPInstanceUID])
    back = client.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert np.array_equal(back.pixel_array, ds.pixel_array)
    frame = (f"{appliance.url}/api/pacs/dicom-web/studies/{ds.StudyInstanceUID}/series/"
             f"{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/frames/1")  # fmt: skip
    bare = requests.get(frame, timeout=30, headers={
        "Authorization": f"Bearer {admin_token}",
        "Accept": "multipart/related; transfer-syntax"})  # fmt: skip
    assert bare.status_code == 406 and bare.json()["error"] == "not_acceptable"


@pytest.mark.slow
def test_stow_of_a_part_that_is_no_part_10_object_still_fails(appliance, admin_token):
    ds = native_dataset(np.zeros((4, 4), np.uint8), StudyInstanceUID=generate_uid())
    del ds.file_meta
    raw = BytesIO()
    pydicom.dcmwrite(raw, ds, implicit_vr=False, little_endian=True)  # no file meta at all
    body_only = raw.getvalue()
    resp = requests.post(f"{appliance.url}/api/pacs/dicom-web/studies", data=stow_body(body_only),
                         timeout=30, headers={"Authorization": f"Bearer {admin_token}",
                                              "Content-Type": STOW_TYPE})  # fmt: skip
    assert resp.status_code == 409
    assert "not a DICOM Part 10 object" in resp.json()["00091001"]["Value"][0]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["POST", "PATCH", "DELETE"])
def test_other_methods_on_the_viewer_are_a_405(appliance, method):
    """Passed to the session check by auth_request, they got nginx's 500 (the fuzz run)."""
    resp = requests.request(method, f"{appliance.url}/pacs-viewer/", data=b"x", timeout=10)
    assert resp.status_code == 405


async def test_a_malformed_request_is_one_warning_line_not_a_traceback(caplog):
    """aiohttp answered 400 and logged the parser's traceback at ERROR (~840 in the fuzz
    run); with the filter serve() attaches, one WARNING line."""
    server = TestServer(web.Application())
    await server.start_server()
    logging.getLogger("aiohttp.server").addFilter(MALFORMED_REQUEST_LOG)
    try:
        with caplog.at_level(logging.DEBUG, logger="aiohttp.server"):
            reader, writer = await asyncio.open_connection(server.host, server.port)
            writer.write(b"GET /\xff\xfe HTTP/1.1\r\nHost: a\r\n\r\n")
            status = await reader.readline()
            writer.close()
            await asyncio.sleep(0.05)
    finally:
        logging.getLogger("aiohttp.server").removeFilter(MALFORMED_REQUEST_LOG)
        await server.close()
    assert status.split()[1] == b"400"
    records = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert records and all(r.levelno == logging.WARNING and not r.exc_info for r in records)
    assert "refused a malformed request with 400" in caplog.text
    assert "Traceback" not in caplog.text
