"""How nginx delivers the viewer (issue 16, items 2 and 3), against the real nginx of a
running appliance: HTTP/2 on the HTTPS port, the precompressed .br / .gz siblings that
packaging/fetch_ohif.py writes, a year's caching for content-hashed files and ETags for
the others, and the session check made once per page (on the viewer's documents), not
once per static file, while the viewer stays closed to anyone without a session.
"""

from __future__ import annotations

import gzip
import http.client
import json
import re
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import brotli
import pytest

from appliance import metrics
from spa_dist import spa_root
from tests.support.running import Appliance, make_appliance, running_appliance
from tests.support.scripts import packaging_script
from tests.support.tools import require_tool

pytestmark = pytest.mark.slow

fetch_ohif = packaging_script("fetch_ohif")
VIEWER = spa_root() / "pacs-viewer"
UNVERIFIED = ssl._create_unverified_context()
IMMUTABLE = "public, max-age=31536000, immutable"
AUTH_CHECK = re.compile(
    r'^neuronova_http_requests_total\{route="/api/auth/check",status="204"\} ([0-9.e+]+)$', re.M
)


def main_bundle() -> str:
    """The name of OHIF's main bundle (content-hashed)."""
    [name] = [p.name for p in VIEWER.glob("app.bundle.*.js")]
    return name


def hashed_files() -> list[str]:
    """A few of the viewer's content-hashed files: the bundle, a chunk, the wasm codecs."""
    chunks = sorted(p.name for p in VIEWER.glob("[0-9]*.bundle.*.js"))[:3]
    wasm = sorted(p.name for p in VIEWER.glob("*.wasm"))[:2]
    return [main_bundle(), *chunks, *wasm]


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Appliance]:
    if not (VIEWER / "index.html").is_file():
        pytest.skip("the OHIF viewer is not installed (bash scripts/setup.sh fetches it)")
    with running_appliance(tmp_path_factory.mktemp("viewer-delivery")) as running:
        yield running


Response = tuple[int, http.client.HTTPMessage, bytes]


def https(
    appliance: Appliance,
    path: str,
    headers: dict[str, str] | None = None,
    method: str = "GET",
    body: str | None = None,
) -> Response:
    """One HTTP/1.1 request over TLS; the body as sent (no decoding)."""
    conn = http.client.HTTPSConnection(
        "127.0.0.1", appliance.settings.web.https_port, context=UNVERIFIED, timeout=30
    )
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def cookie(served) -> str:
    """The Cookie header of a logged-in admin."""
    body = json.dumps({"username": "admin", "password": served.admin_password})
    status, headers, _ = https(served, "/api/auth/login", {"Content-Type": "application/json"},
                               method="POST", body=body)  # fmt: skip
    assert status == 200
    return "; ".join(c.split(";")[0] for c in headers.get_all("Set-Cookie"))


def auth_checks(appliance: Appliance) -> float:
    """How many session checks (``/api/auth/check`` answered 204) the app has counted."""
    url = f"http://127.0.0.1:{appliance.settings.web.http_port}/api/metrics"
    conn = http.client.HTTPConnection("127.0.0.1", appliance.settings.web.http_port, timeout=10)
    conn.request("GET", url)
    text = conn.getresponse().read().decode()
    found = AUTH_CHECK.search(text)
    return float(found[1]) if found else 0.0


def settled_auth_checks(appliance: Appliance) -> float:
    """:func:`auth_checks` once every app process has added what it counted: each adds its
    counts every ``FLUSH_INTERVAL`` seconds, so two reads that far apart agree."""
    count = auth_checks(appliance)
    for _ in range(10):
        time.sleep(metrics.FLUSH_INTERVAL + 0.5)
        count, previous = auth_checks(appliance), count
        if count == previous:
            return count
    raise AssertionError(f"the session-check count kept moving: {count}")


# -- HTTP/2 ------------------------------------------------------------------------------


def test_the_https_port_negotiates_http2(served):
    context = ssl._create_unverified_context()
    context.set_alpn_protocols(["h2", "http/1.1"])
    with (
        socket.create_connection(("127.0.0.1", served.settings.web.https_port)) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.selected_alpn_protocol() == "h2"


def test_curl_speaks_http2_to_the_viewer_and_the_api(served, cookie):
    curl = require_tool("curl", "curl")
    base = f"https://127.0.0.1:{served.settings.web.https_port}"
    for path, extra in ((f"/pacs-viewer/{main_bundle()}", []),
                        ("/pacs-viewer/", ["-H", f"Cookie: {cookie}"]),
                        ("/api/health", [])):  # fmt: skip
        out = subprocess.run(
            [curl, "--http2", "-k", "-s", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
             *extra, base + path],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        assert out.stdout == "2 200", (path, out.stdout)


# -- precompressed files -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["main bundle", "app-config.js", "app.bundle.css", "codec"])
def test_precompressed_siblings_are_sent_for_br_and_gzip(served, name):
    if name == "main bundle":
        name = main_bundle()
    elif name == "codec":
        [name] = [p.name for p in VIEWER.glob("*.wasm") if b"HTJ2KDecoder" in p.read_bytes()]
    original = (VIEWER / name).read_bytes()
    path = f"/pacs-viewer/{name}"
    for encoding, decode in (("br", brotli.decompress), ("gzip", gzip.decompress)):
        status, headers, body = https(served, path, {"Accept-Encoding": f"{encoding}"})
        assert status == 200 and headers["Content-Encoding"] == encoding, (name, encoding)
        assert "Accept-Encoding" in headers["Vary"]
        assert decode(body) == original
        # The sibling itself, not compressed again at nginx's level 5.
        sibling = ".br" if encoding == "br" else ".gz"
        assert body == (VIEWER / (name + sibling)).read_bytes()
    status, headers, body = https(served, path)  # no Accept-Encoding: the file as it is
    assert status == 200 and "Content-Encoding" not in headers and body == original


def test_a_browser_accepting_both_gets_brotli_the_smaller(served):
    status, headers, body = https(served, f"/pacs-viewer/{main_bundle()}",
                                  {"Accept-Encoding": "gzip, deflate, br, zstd"})  # fmt: skip
    assert status == 200 and headers["Content-Encoding"] == "br"
    assert len(body) < len((VIEWER / f"{main_bundle()}.gz").read_bytes())


def test_siblings_cannot_be_asked_for_by_name(served):
    for path in ("/pacs-viewer/index.html.gz", "/pacs-viewer/index.html.br",
                 f"/pacs-viewer/{main_bundle()}.br"):  # fmt: skip
        assert https(served, path)[0] == 404, path


# -- caching -----------------------------------------------------------------------------


def test_content_hashed_files_are_immutable_for_a_year(served):
    for name in hashed_files():
        status, headers, _ = https(served, f"/pacs-viewer/{name}", {"Accept-Encoding": "br"})
        assert status == 200, name
        assert headers.get_all("Cache-Control") == [IMMUTABLE], name


def test_the_main_apps_assets_carry_one_cache_control(served):
    [asset] = [p.name for p in (spa_root() / "main" / "assets").glob("index-*.js")]
    status, headers, _ = https(served, f"/assets/{asset}")
    assert status == 200
    assert headers.get_all("Cache-Control") == [IMMUTABLE]
    assert "Expires" not in headers


@pytest.mark.parametrize("name", ["app-config.js", "app.bundle.css", "1602.css"])
def test_unhashed_files_are_revalidated_with_their_etag(served, name):
    status, headers, _ = https(served, f"/pacs-viewer/{name}", {"Accept-Encoding": "br"})
    assert status == 200 and headers.get_all("Cache-Control") == ["no-cache"]
    etag = headers["ETag"]
    again = https(served, f"/pacs-viewer/{name}",
                  {"Accept-Encoding": "br", "If-None-Match": etag})  # fmt: skip
    assert again[0] == 304


def test_index_html_is_revalidated_and_preloads_the_bundle_and_codec(served, cookie):
    status, headers, body = https(served, "/pacs-viewer/", {"Cookie": cookie})
    assert status == 200 and headers.get_all("Cache-Control") == ["no-cache"]
    assert "Expires" not in headers
    page = body.decode()
    assert f'<link rel="preload" href="/pacs-viewer/{main_bundle()}" as="script">' in page
    assert re.search(r'<link rel="preload" href="/pacs-viewer/[0-9a-f]{16}\.wasm" as="fetch" '
                     r'type="application/wasm" crossorigin>', page)  # fmt: skip
    etag = headers["ETag"]
    assert https(served, "/pacs-viewer/", {"Cookie": cookie, "If-None-Match": etag})[0] == 304
    # A route of the single-page app is the same document, revalidated the same way.
    route = "/pacs-viewer/viewer?StudyInstanceUIDs=1.2.3"
    assert https(served, route, {"Cookie": cookie, "If-None-Match": etag})[0] == 304


def test_the_installed_viewer_registers_one_mode_and_serves_every_preload(served, cookie):
    # What packaging/fetch_ohif.py left in the real dist: the bundle's plugin list holds
    # only the kept modes and extensions, and each file index.html preloads is served.
    bundle = (VIEWER / main_bundle()).read_text(encoding="utf-8", errors="surrogateescape")
    assert fetch_ohif.trim_plugins(bundle)[1] == []
    page = https(served, "/pacs-viewer/", {"Cookie": cookie})[2].decode()
    preloads = re.findall(r'<link rel="preload" href="(/pacs-viewer/[^"]+)"', page)
    chunks = [href for href in preloads if re.search(r"/\d+\.(?:bundle\.[0-9a-f]+\.js|css)$", href)]
    assert len(chunks) > len(fetch_ohif.VIEWER_MODE_EXTENSIONS)
    for href in preloads:
        assert https(served, href, {"Accept-Encoding": "br"})[0] == 200, href


# -- the session check -------------------------------------------------------------------


def test_static_files_are_served_without_a_session_check(served, cookie):
    """One check per page load, not one per file: with the old configuration every file
    waited for an ``auth_request`` to the app (and came back 302 without a session)."""
    for name in hashed_files():
        status, _, body = https(served, f"/pacs-viewer/{name}")  # no cookie at all
        assert status == 200 and body == (VIEWER / name).read_bytes(), name
    before = settled_auth_checks(served)  # earlier tests' checks may still be on their way
    assert https(served, "/pacs-viewer/", {"Cookie": cookie})[0] == 200
    for name in [*hashed_files(), "app-config.js", "app.bundle.css"]:
        assert https(served, f"/pacs-viewer/{name}", {"Cookie": cookie})[0] == 200
    assert settled_auth_checks(served) == before + 1


@pytest.mark.parametrize(
    "path",
    [
        "/pacs-viewer/",
        "/pacs-viewer/index.html",
        "/pacs-viewer/viewer?StudyInstanceUIDs=1.2.3",
        "/pacs-viewer/viewer/",
        "/pacs-viewer/silent-refresh.html",
        "/pacs-viewer/customizations/index.html",
        "/pacs-viewer/%69ndex.html",
        "/pacs-viewer/./index.html",
        "/pacs-viewer/assets/../index.html",
        "/pacs-viewer//index.html",
        "/pacs-viewer/index.html/",
        "/pacs-viewer/INDEX.HTML",
        "/pacs-viewer/assets/",
        "/pacs-viewer/no-such-file.js",
        "/pacs-viewer/app.bundle.0000000000000000.js",
    ],
)
def test_without_a_session_every_document_goes_to_login(served, path):
    """The attack: reach the viewer's page (or anything but its public static files)
    without a session. Each way of naming a document ends at the login page."""
    status, headers, body = https(served, path)
    assert status == 302, (path, status, body[:200])
    location = urlsplit(headers["Location"])
    assert location.path == "/login"
    assert unquote(parse_qs(location.query)["next"][0]).startswith("/pacs-viewer/")
    assert b"app-config.js" not in body and b"<html" not in body.lower()


@pytest.mark.parametrize(
    "path",
    [
        "/pacs-viewer/../../frames/",
        "/pacs-viewer/..%2f..%2fmain/index.html",
        "/pacs-viewer/%2e%2e/%2e%2e/etc/passwd",
        "/pacs-viewer/../internal-frames/x",
        "/pacs-viewer/%2e%2e/api/pacs/dicom-web/studies",
    ],
)
def test_the_open_static_files_lead_nowhere_else(served, path):
    """What is served without a session is the viewer's own folder and nothing above it."""
    status, _, body = https(served, path)
    assert status in (302, 400, 401, 403, 404), (path, status)
    assert b"root:" not in body and b"00100010" not in body


def test_patient_data_still_needs_a_session(served):
    for path in ("/api/pacs/dicom-web/studies", "/api/studies", "/api/auth/me"):
        assert https(served, path)[0] == 401, path


def test_plain_http_still_serves_the_viewer_files_precompressed(served):
    """The plain port (HTTP/1.1, for sites that keep [web] redirect_to_https off)."""
    conn = http.client.HTTPConnection("127.0.0.1", served.settings.web.http_port, timeout=30)
    conn.request("GET", f"/pacs-viewer/{main_bundle()}", headers={"Accept-Encoding": "br"})
    resp = conn.getresponse()
    body = resp.read()
    assert resp.status == 200 and resp.headers["Content-Encoding"] == "br"
    assert brotli.decompress(body) == (VIEWER / main_bundle()).read_bytes()


def test_the_module_is_loaded_only_when_present(tmp_path, monkeypatch):
    """Without Debian's brotli module the configuration still loads, with gzip_static."""
    from appliance.supervise import nginx as nginx_conf

    settings = make_appliance(tmp_path).settings
    monkeypatch.setattr(nginx_conf, "brotli_static_module", lambda: None)
    text = nginx_conf.render_nginx_conf(settings).read_text()
    assert "load_module" not in text and "brotli_static on;" not in text
    assert "gzip_static on;" in text
    nginx = require_tool("nginx", "nginx-light")
    conf = Path(settings.home) / "run" / "nginx" / "nginx.conf"
    check = subprocess.run([nginx, "-t", "-p", f"{conf.parent}/", "-c", str(conf), "-e",
                            "/dev/stderr"], capture_output=True, text=True, timeout=30)  # fmt: skip
    assert check.returncode == 0, check.stderr
