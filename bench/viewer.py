"""Benchmark the viewer on emulated network links: OHIF in headless Chromium over HTTPS
(HTTP/2), the HTJ2K study vs the same pixels uncompressed, against the line-rate floor.

Usage: ``python bench/viewer.py [--link NAME ...] [--slices 300] [--runs 3]``
(every link by default: loopback, lan-1g, clinic-100m, remote-20m).

Goal (issue 16, item 1): per link and in the same run, the HTJ2K study, the same pixels
uncompressed through the gateway, and the line-rate floor; time to the first image (read
from the canvas, and OHIF's own mark), to all frames of a 300-slice CT, to a first pass of
every slice; bytes; cold cache and second visit; medians of alternating runs.

Set-up, all on 127.0.0.1 in a temporary directory: the real appliance (``python -m
appliance run``) on free ports. The HTJ2K study is the synthetic CT (bench/synthetic.py)
pushed with dcmtk's storescu through the pipeline and waited for until every instance is
``stored``. The uncompressed reference holds the same pixels under new Study/Series/SOP
UIDs (and another patient), POSTed straight into Orthanc (Explicit VR Little Endian), so
its frames come from Orthanc's DICOMweb plugin, uncompressed, through the same gateway.

The browser reaches the viewer as users do: ``https://`` to nginx's TLS port (HTTP/2),
through bench/linkproxy.py, a shaping proxy per link (rate and delay per direction, bounded
buffers); ``loopback`` is the same relay unshaped. Chromium runs in a network namespace of
its own (containers that other work starts on the machine change its interfaces, and
Chromium drops its connections when they change): the proxies listen on that namespace's
loopback and relay to nginx on the machine's. Chromium trusts the appliance's
self-signed certificate by its key (``--ignore-certificate-errors-spki-list``), so that
it caches as it does for a trusted site (with a certificate error it would cache nothing).
Each run opens the viewer in a new Chromium (a persistent profile in an empty folder: a
cold disk cache) holding a new session of the bench radiologist, waits for every frame,
closes the page and opens the viewer again in the same browser (the second visit: the
browser's cache as the first left it).
As a cross-check, the HTJ2K study is also loaded once per link (first round) through the
unshaped relay with Chrome's own emulation of the link (DevTools
``Network.emulateNetworkConditions``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pydicom
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from appliance.security.tls.files import cert_file
from appliance.store.orthanc import orthanc_auth_header, orthanc_url
from bench.browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    MIN_CORRELATION,
    best_match,
    canvas_picture,
    windowed_views,
)
from bench.harness import (
    BENCH_USER,
    LOOPBACK,
    REPO,
    Appliance,
    OthersMeter,
    QuietGate,
    http,
    machine,
    markdown_table,
    python_env,
    run_in_workdir,
    running,
    stop_process,
    tree_cpu_seconds,
    verdict,
)
from bench.linkproxy import LINKS, Link
from bench.synthetic import Series, make_slices, pixels_digest, write_series
from bench.viewer_load import NetworkChanged, PageLoad, ohif_timings

VIEWPORT = {"width": 1280, "height": 800}
NETWORK_RETRIES = 3
LINK_NAMES = ("loopback", *LINKS)
# Round trips a perfect client waits for before the last byte, each after the one before:
# TCP, TLS 1.3, the document, its scripts (app-config.js and the bundle, preloaded), the
# study's series (QIDO-RS), the series metadata, the frames (all asked for at once).
PERFECT_CLIENT_ROUND_TRIPS = 7


# --------------------------------------------------------------------------- set-up


def write_reference(directory: Path, slices: list[np.ndarray]) -> Series:
    """The same pixels as a new study (new UIDs, another patient), uncompressed files."""
    series = write_series(directory, slices)
    for path in series.files:
        ds = pydicom.dcmread(path)
        ds.PatientName, ds.PatientID = "BENCH^UNCOMPRESSED", "NNBENCH0002"
        ds.AccessionNumber = "NNB0002"
        ds.StudyDescription = "NeuroNova benchmark CT, uncompressed reference (synthetic)"
        ds.save_as(path, enforce_file_format=True)
    return series


def post_to_orthanc(appliance: Appliance, files: list[Path]) -> float:
    """Store ``files`` straight into Orthanc (``POST /instances``); wall seconds."""
    url = f"{orthanc_url(appliance.settings)}/instances"
    headers = {
        "Authorization": orthanc_auth_header(appliance.settings),
        "Content-Type": "application/dicom",
    }
    start = time.perf_counter()
    for path in files:
        status, _, body = http(url, path.read_bytes(), headers, timeout=60)
        if status != 200:
            raise RuntimeError(f"Orthanc refused {path.name}: HTTP {status} {body[:200]!r}")
    return time.perf_counter() - start


# --------------------------------------------------------------------------- the browser


def spki_pin(cert: Path) -> str:
    """base64 SHA-256 of the certificate's public key: Chromium's certificate pin."""
    key = x509.load_pem_x509_certificate(cert.read_bytes()).public_key()
    der = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def session_cookies(appliance: Appliance) -> list[dict[str, Any]]:
    """A new session of the bench radiologist (``POST /api/auth/login``) as browser cookies."""
    body = json.dumps({"username": BENCH_USER, "password": appliance.password}).encode()
    status, headers, answer = http(f"{appliance.url}/api/auth/login", body,
                                   {"Content-Type": "application/json"})  # fmt: skip
    if status != 200:
        raise RuntimeError(f"login failed: HTTP {status} {answer[:200]!r}")
    jar: SimpleCookie = SimpleCookie()
    for line in headers.get_all("Set-Cookie") or []:
        jar.load(line)
    return [
        {"name": name, "value": morsel.value, "domain": LOOPBACK, "path": morsel["path"] or "/",
         "httpOnly": bool(morsel["httponly"]), "secure": True, "sameSite": "Lax"}
        for name, morsel in jar.items()
    ]  # fmt: skip


def emulation(link: Link) -> dict[str, Any]:
    """Chrome's DevTools emulation of ``link`` (latency is its round-trip time)."""
    rate = link.rate_bps / 8
    return {
        "offline": False,
        "latency": link.rtt_s * 1e3,
        "downloadThroughput": rate,
        "uploadThroughput": rate,
    }


class Routes:
    """How the browser reaches nginx's TLS port on each link.

    Chromium runs in a network namespace of its own (only its loopback): in the machine's
    namespace, interfaces that other work adds and removes (containers) make it drop every
    connection (``net::ERR_NETWORK_CHANGED``). Each link is a proxy listening on that
    namespace's loopback and relaying to nginx; ``loopback`` is the relay unshaped."""

    def __init__(self, https_port: int, workdir: Path) -> None:
        self.https_port = https_port
        self.netns = f"nn-viewer-bench-{os.getpid()}"
        self.chromium = workdir / "chromium-in-netns"
        self.proxies: dict[str, subprocess.Popen] = {}
        self.ports: dict[str, int] = {}

    def start(self, names: list[str]) -> Routes:
        subprocess.run(["ip", "netns", "add", self.netns], check=True, timeout=20)
        subprocess.run(["ip", "-n", self.netns, "link", "set", "lo", "up"], check=True,
                       timeout=20)  # fmt: skip
        self.chromium.write_text(f'#!/bin/sh\nexec ip netns exec {self.netns} {CHROMIUM} "$@"\n')
        self.chromium.chmod(0o755)
        for name in dict.fromkeys(["loopback", *names]):
            command = [sys.executable, "-m", "bench.linkproxy", "--link", name, "--netns",
                       self.netns, "--to", f"{LOOPBACK}:{self.https_port}"]  # fmt: skip
            proxy = subprocess.Popen(command, stdout=subprocess.PIPE, text=True,
                                     env=python_env(), cwd=REPO)  # fmt: skip
            self.proxies[name] = proxy
            line = proxy.stdout.readline() if proxy.stdout else ""
            if not line.startswith("listening on "):
                raise RuntimeError(f"the {name} link proxy did not start: {line!r}")
            self.ports[name] = int(line.split()[2].rsplit(":", 1)[1])
        return self

    def base(self, name: str) -> str:
        """The viewer's origin on link ``name``, as the browser reaches it."""
        return f"https://{LOOPBACK}:{self.ports[name]}"

    def pids(self) -> list[int]:
        return [proxy.pid for proxy in self.proxies.values()]

    def stop(self) -> None:
        for proxy in self.proxies.values():
            stop_process(proxy, timeout=10)
        subprocess.run(["ip", "netns", "delete", self.netns], timeout=20)


@contextlib.contextmanager
def routes(https_port: int, names: list[str], workdir: Path) -> Iterator[Routes]:
    """:class:`Routes` started for ``names``, always stopped."""
    started = Routes(https_port, workdir)
    try:
        yield started.start(names)
    finally:
        started.stop()


def browser_processes() -> list[int]:
    """This process's children: playwright's driver (Chromium below it), the proxies."""
    pids: list[int] = []
    for children in Path(f"/proc/{os.getpid()}/task").glob("*/children"):
        try:
            pids += [int(pid) for pid in children.read_text().split()]
        except OSError:
            continue
    return pids


# --------------------------------------------------------------------------- one run


class Loader:
    """Measures viewer loads of one appliance, each in a browser of its own.

    ``launch(profile)`` starts Chromium with a persistent context in the empty folder
    ``profile``: a cold cache, and a disk cache as a user's browser has (an in-memory
    context's cache holds about as much as the 300 frames, which pushed the viewer's own
    files out of it before the second visit)."""

    def __init__(self, launch: Callable[[Path], Any], appliance: Appliance, links: Routes,
                 views: list[np.ndarray], shots: Path, gate: QuietGate) -> None:  # fmt: skip
        self.launch, self.appliance, self.links = launch, appliance, links
        self.views, self.shots, self.gate = views, shots, gate

    def cpu(self) -> dict[str, float]:
        proxies = set(self.links.pids())
        browser = [pid for pid in browser_processes() if pid not in proxies]
        appliance = [self.appliance.process.pid] if self.appliance.process else []
        return {"browser": tree_cpu_seconds(browser), "appliance": tree_cpu_seconds(appliance),
                "link_proxy": tree_cpu_seconds(list(proxies))}  # fmt: skip

    def run(self, link: str, label: str, series: Series, emulate: Link | None = None,
            second_visit: bool = True) -> dict[str, Any]:  # fmt: skip
        """:meth:`measure`, again (at most ``NETWORK_RETRIES`` times) when the machine's
        network changed under Chromium (other work starting containers)."""
        for attempt in range(NETWORK_RETRIES + 1):
            try:
                return {**self.measure(link, label, series, emulate, second_visit),
                        "network_changed_retries": attempt}  # fmt: skip
            except NetworkChanged:
                if attempt == NETWORK_RETRIES:
                    raise
                print(f"{link} {label}: the network changed under Chromium; again", flush=True)
        raise AssertionError("unreachable")

    def measure(self, link: str, label: str, series: Series, emulate: Link | None = None,
                second_visit: bool = True) -> dict[str, Any]:  # fmt: skip
        """A cold load of ``series`` on ``link`` (and a second visit); the measured facts.

        ``emulate``: straight to nginx with Chrome's emulation of that link instead."""
        quiet = self.gate.wait()
        profile = Path(tempfile.mkdtemp(prefix="nn-viewer-profile-"))
        context = self.launch(profile)
        others = OthersMeter([p for p in [self.appliance.process.pid if self.appliance.process
                                          else 0] if p] + browser_processes()).start()  # fmt: skip
        cpu_before = self.cpu()
        base = self.links.base("loopback" if emulate else link)
        conditions = emulation(emulate) if emulate else None
        url = f"{base}/pacs-viewer/viewer?StudyInstanceUIDs={series.study_uid}"
        try:
            context.add_cookies(session_cookies(self.appliance))
            cold = PageLoad.open(context, url, conditions)
            cold.wait_first_image(label)
            seen = cold.wait_all_frames(label, len(series.sop_uids))
            result = self.describe(cold, link, label, series, seen)
            cold.page.close()
            cpu_after = self.cpu()
            result["cpu_seconds"] = {k: cpu_after[k] - cpu_before[k] for k in cpu_after}
            if second_visit:
                again = PageLoad.open(context, url, conditions)
                again.wait_first_image(label)
                result["second_visit"] = visit_facts(again)
                again.page.close()
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)
        result.update(before_run=quiet, others_cpu_percent_during_run=others.percent(),
                      emulated_by="devtools" if emulate else "proxy" if link in LINKS
                      else "none")  # fmt: skip
        return result

    def describe(self, load: PageLoad, link: str, label: str, series: Series,
                 seen: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
        canvas = load.page.locator("canvas.cornerstone-canvas").first.screenshot()
        load.page.screenshot(path=self.shots / f"{link}-{label}.png")
        index, score = best_match(canvas_picture(canvas), self.views)
        by_kind = load.network.bytes_by_kind()
        frames = by_kind.get("frames", 0)
        return {
            "link": link,
            "study": label,
            **visit_facts(load),
            **load.timeline(),
            "frames_prefetched_without_scrolling": seen["prefetched"],
            "scrolled": seen["scrolled"],
            "frame_part_content_type": seen["part_content_type"],
            "frame_requests": sum(1 for r in load.network.requests.values() if r.kind == "frames"),
            "bytes": by_kind,
            "frame_bytes": frames,
            "other_bytes": sum(v for k, v in by_kind.items() if k != "frames"),
            "shown_slice": index,
            "shown_correlation": round(score, 4),
            "study_uid": series.study_uid,
        }


def visit_facts(load: PageLoad) -> dict[str, Any]:
    """First image, OHIF's timers, bytes, protocols and cache hits of a page load."""
    marks = load.marks()
    return {
        "first_image_canvas_s": marks["canvas"],
        "first_image_ohif_s": marks["studyToFirstImage"],
        "ohif_timings_ms": ohif_timings(load.console),
        "total_bytes": sum(load.network.bytes_by_kind().values()),
        "served_from_cache": load.network.from_cache(),
        "requests": len(load.network.requests),
        "protocols": load.network.protocols(),
        "errors": load.network.errors()[:20],
    }


# --------------------------------------------------------------------------- figures

METRICS: list[tuple[str, str, str]] = [
    # (key, label, unit)
    ("first_image_canvas_s", "first image on the canvas", "s"),
    ("first_image_ohif_s", "first image, OHIF's mark (studyToFirstImage)", "s"),
    ("nav_to_first_frame_s", "first frame complete", "s"),
    ("nav_to_first_pass_all_s", "a first pass of every slice", "s"),
    ("nav_to_all_frames_s", "all frames complete", "s"),
    ("first_to_all_frames_s", "first -> all frames", "s"),
    ("second_first_image_canvas_s", "second visit: first image on the canvas", "s"),
    ("second_first_image_ohif_s", "second visit: OHIF's mark", "s"),
    ("scriptToView_s", "OHIF scriptToView", "s"),
    ("frame_bytes", "bytes, frames", "MB"),
    ("other_bytes", "bytes, everything else", "MB"),
    ("total_bytes", "bytes, total", "MB"),
    ("second_total_bytes", "second visit: bytes on the wire", "MB"),
    ("browser_cpu_s", "CPU time, Chromium", "s"),
    ("appliance_cpu_s", "CPU time, appliance", "s"),
    ("link_proxy_cpu_s", "CPU time, link proxy", "s"),
]


def flat(run: dict[str, Any]) -> dict[str, float]:
    """The figures of one run under METRICS' keys."""
    second = run.get("second_visit", {})
    nan = float("nan")
    return {
        **{key: run[key] for key, _, _ in METRICS if key in run},
        "second_first_image_canvas_s": second.get("first_image_canvas_s", nan),
        "second_first_image_ohif_s": second.get("first_image_ohif_s", nan),
        "second_total_bytes": second.get("total_bytes", nan),
        "scriptToView_s": run["ohif_timings_ms"].get("scriptToView", nan) / 1000,
        "browser_cpu_s": run["cpu_seconds"]["browser"],
        "appliance_cpu_s": run["cpu_seconds"]["appliance"],
        "link_proxy_cpu_s": run["cpu_seconds"]["link_proxy"],
    }


def medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    rows = [flat(run) for run in runs]
    return {key: statistics.median(row[key] for row in rows) for key, _, _ in METRICS if rows}


def floors(link: Link, htj2k: dict[str, float], reference: dict[str, float]) -> dict[str, float]:
    """What a perfect client needs on ``link``: bytes at line rate plus its round trips."""
    rate = link.rate_bps / 8
    return {
        "frames_s": htj2k["frame_bytes"] / rate + link.rtt_s,
        "load_s": htj2k["total_bytes"] / rate + PERFECT_CLIENT_ROUND_TRIPS * link.rtt_s,
        "uncompressed_frames_s": reference["frame_bytes"] / rate + link.rtt_s,
        "uncompressed_load_s": reference["total_bytes"] / rate
        + PERFECT_CLIENT_ROUND_TRIPS * link.rtt_s,
    }


def summarize(runs: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for name in names:
        mine = [r for r in runs if r["link"] == name and r["emulated_by"] != "devtools"]
        devtools = [r for r in runs if r["link"] == name and r["emulated_by"] == "devtools"]
        h = medians([r for r in mine if r["study"] == "htj2k"])
        u = medians([r for r in mine if r["study"] == "uncompressed"])
        entry: dict[str, Any] = {
            "htj2k": h,
            "uncompressed": u,
            "runs": len(mine) // 2,
            "ratio": {k: h[k] / u[k] if u[k] else float("nan") for k in h},
        }
        if devtools:
            entry["devtools_htj2k"] = medians(devtools)
        if name in LINKS:
            entry["link"] = {"rate_bps": LINKS[name].rate_bps, "rtt_s": LINKS[name].rtt_s,
                             "queue_bytes": LINKS[name].queue_bytes}  # fmt: skip
            entry["floor"] = floors(LINKS[name], h, u)
        summary[name] = entry
    return summary


def goals(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 16's goals for the viewer, each with its figure and limit."""
    found: list[dict[str, Any]] = []

    def goal(link: str, text: str, value: float, limit: float) -> None:
        found.append({"link": link, "goal": text, "value": round(value, 3),
                      "limit": round(limit, 3), "met": value <= limit})  # fmt: skip

    if "clinic-100m" in summary:
        c = summary["clinic-100m"]
        h, u = c["htj2k"], c["uncompressed"]
        goal("clinic-100m", "first -> all frames within 1.5x the line-rate floor (s)",
             h["first_to_all_frames_s"], 1.5 * c["floor"]["frames_s"])  # fmt: skip
        goal("clinic-100m", "first -> all frames at most 0.5x the uncompressed study's (s)",
             h["first_to_all_frames_s"], 0.5 * u["first_to_all_frames_s"])  # fmt: skip
    if "remote-20m" in summary:
        h = summary["remote-20m"]["htj2k"]
        if "loopback" in summary:
            goal("remote-20m", "first image (canvas) at most 1.15x loopback's (s)",
                 h["first_image_canvas_s"],
                 1.15 * summary["loopback"]["htj2k"]["first_image_canvas_s"])  # fmt: skip
        goal("remote-20m", "second visit's first image at most 0.7x the cold load's (s)",
             h["second_first_image_canvas_s"], 0.7 * h["first_image_canvas_s"])  # fmt: skip
        goal("remote-20m", "a first pass of every slice in at most half the time of all "
             "frames (s)", h["nav_to_first_pass_all_s"],
             0.5 * h["nav_to_all_frames_s"])  # fmt: skip
    for name in ("lan-1g", "loopback"):
        if name not in summary:
            continue
        h, u = summary[name]["htj2k"], summary[name]["uncompressed"]
        for key in (
            "first_image_canvas_s",
            "first_image_ohif_s",
            "nav_to_all_frames_s",
            "first_to_all_frames_s",
            "second_first_image_canvas_s",
            "total_bytes",
        ):
            label = next(text for k, text, _ in METRICS if k == key)
            goal(name, f"HTJ2K no worse than uncompressed: {label}", h[key], u[key])
    return found


# --------------------------------------------------------------------------- report


def figure(value: float, unit: str) -> str:
    if value != value:  # NaN
        return "-"
    return f"{value / 1e6:.1f} MB" if unit == "MB" else f"{value:.2f} s"


def link_table(name: str, entry: dict[str, Any], slices: int) -> str:
    h, u, r = entry["htj2k"], entry["uncompressed"], entry["ratio"]
    devtools = entry.get("devtools_htj2k")
    floor = entry.get("floor", {})
    floor_of = {"nav_to_all_frames_s": floor.get("load_s"), "first_to_all_frames_s":
                floor.get("frames_s"), "total_bytes": None}  # fmt: skip
    header = ["median of runs", "HTJ2K", "uncompressed", "HTJ2K / uncompressed"]
    if devtools:
        header.append("HTJ2K, Chrome's emulation")
    if floor:
        header.append("line-rate floor (HTJ2K / uncompressed)")
    rows = []
    for key, label, unit in METRICS:
        if name == "loopback" and key == "link_proxy_cpu_s":
            continue
        row = [label.replace("all frames", f"all {slices} frames"), figure(h[key], unit),
               figure(u[key], unit), f"{r[key]:.2f}" if r[key] == r[key] else "-"]  # fmt: skip
        if devtools:
            row.append(figure(devtools[key], unit))
        if floor:
            mine = floor_of.get(key)
            other = {
                "nav_to_all_frames_s": floor.get("uncompressed_load_s"),
                "first_to_all_frames_s": floor.get("uncompressed_frames_s"),
            }.get(key)
            row.append(f"{mine:.2f} s / {other:.2f} s" if mine and other else "")
        rows.append(row)
    return markdown_table(header, rows)


def render_markdown(results: dict[str, Any]) -> str:
    s, m, setup = results["summary"], results["machine"], results["setup"]
    n = setup["slices"]
    lines = [
        f"# Viewer on emulated links ({n} x 512x512 CT, OHIF {setup['ohif']}, headless Chromium)",
        "",
        f"Machine: {m['nproc']} CPUs, {m['cpu_model']}; {setup['chromium']}; {m['nginx']}; "
        f"{m['orthanc']}; load average before the run {setup['loadavg_before']}. "
        f"{setup['runs']} runs per link and study, alternating HTJ2K and uncompressed.",
        "",
        "How: the real appliance on loopback; the browser opens "
        "`https://.../pacs-viewer/viewer?StudyInstanceUIDs=...` over HTTPS (HTTP/2: "
        f"protocols seen {setup['protocols_seen']}), through `bench/linkproxy.py` (a TCP "
        "proxy per link: rate and delay per direction shared by all connections, a bounded "
        "queue, a round trip per new connection); `loopback` is the same relay unshaped; "
        "Chromium runs in a network namespace of its own, the proxies relay from its "
        "loopback to nginx (other work's containers change the machine's interfaces, which "
        "makes Chromium drop its connections). Chromium "
        "trusts the appliance's self-signed certificate by its key "
        "(`--ignore-certificate-errors-spki-list`), so it caches as for a trusted site. "
        "Each run: a new Chromium with a persistent profile in an empty folder (a cold "
        "disk cache, as a user's browser has) and a new session; the first "
        "image is when a probe on every animation frame first sees the image on "
        "Cornerstone's canvas, and OHIF's own `studyToFirstImage` mark (page clock, 0 = "
        "navigation start); frames are complete at a 200 or the 206 of their last byte "
        "range; a first pass of a slice is its first response (a progressive frame's first "
        "byte range, or the whole frame); then the page is closed and the viewer opened "
        "again in the same browser (second visit). Bytes: encoded lengths on the wire "
        "(headers included, 10^6 per MB). Floor: bytes at the link's rate plus the round "
        f"trips a perfect client needs ({PERFECT_CLIENT_ROUND_TRIPS} for the whole load: "
        "TCP, TLS, document, scripts, series search, metadata, frames; 1 for the frames "
        "alone, which the first -> all row is compared with). The Chrome's-emulation column "
        "is the HTJ2K study loaded through the unshaped relay with DevTools' "
        "`Network.emulateNetworkConditions` (a cross-check: it delays each response, it "
        "does not shape TCP).",
        "",
        f"HTJ2K study: pushed with storescu ({setup['storescu_s']:.1f} s), stored by the "
        f"pipeline ({setup['ingest_s']:.1f} s); the uncompressed reference (same pixels, "
        f"sha256 {setup['pixels_sha256'][:12]}...) POSTed to Orthanc "
        f"({setup['orthanc_post_s']:.1f} s).",
        "",
        "## Goals",
        "",
        markdown_table(
            ["link", "goal", "figure", "limit", "verdict"],
            [
                [
                    g["link"],
                    g["goal"],
                    f"{g['value']:.2f}" if g["value"] < 1e5 else f"{g['value'] / 1e6:.1f} MB",
                    f"{g['limit']:.2f}" if g["limit"] < 1e5 else f"{g['limit'] / 1e6:.1f} MB",
                    verdict(g["met"]),
                ]
                for g in results["goals"]
            ],
        ),
        "",
    ]
    for name in setup["links"]:
        describe = LINKS[name].describe() if name in LINKS else "the relay, unshaped"
        lines += [f"## {name} ({describe})", "", link_table(name, s[name], n), ""]
    if setup.get("note"):
        lines += [f"Note: {setup['note']}", ""]
    lines += ["## Per run", "", per_run_table(results["runs"])]
    return "\n".join(lines)


def per_run_table(runs: list[dict[str, Any]]) -> str:
    return markdown_table(
        ["round", "link", "study", "via", "first image canvas / OHIF", "first pass all",
         "all frames", "second visit first image", "frame MB", "second visit MB (cached)",
         "part Content-Type", "slice shown (corr)", "CPU s browser / appliance / proxy",
         "others' CPU %"],
        [[run["round"], run["link"], run["study"], run["emulated_by"],
          f"{run['first_image_canvas_s']:.2f} / {run['first_image_ohif_s']:.2f} s",
          f"{run['nav_to_first_pass_all_s']:.2f} s", f"{run['nav_to_all_frames_s']:.2f} s",
          f"{run['second_visit']['first_image_canvas_s']:.2f} s" if "second_visit" in run
          else "-", f"{run['frame_bytes'] / 1e6:.1f}",
          f"{run['second_visit']['total_bytes'] / 1e6:.2f} "
          f"({run['second_visit']['served_from_cache']})" if "second_visit" in run else "-",
          f"`{run['frame_part_content_type']}`",
          f"{run['shown_slice'] + 1} ({run['shown_correlation']:.3f})",
          f"{run['cpu_seconds']['browser']:.1f} / {run['cpu_seconds']['appliance']:.1f} / "
          f"{run['cpu_seconds']['link_proxy']:.1f}",
          f"{run['others_cpu_percent_during_run']:.0f}"] for run in runs],
    )  # fmt: skip


# --------------------------------------------------------------------------- the bench


def bench(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    names = args.link or list(LINK_NAMES)
    loadavg = os.getloadavg()
    slices = make_slices(args.slices)
    views = windowed_views(slices)
    appliance = Appliance.create(workdir / "home")
    args.screenshots.mkdir(parents=True, exist_ok=True)
    gate = QuietGate(args.quiet_wait)
    with running(appliance), routes(appliance.settings.web.https_port, names, workdir) as links:
        htj2k = write_series(workdir / "htj2k", slices)
        reference = write_reference(workdir / "uncompressed", slices)
        print(f"pushing {args.slices} slices with storescu ...", flush=True)
        storescu_s, ingest_s = appliance.push(htj2k.files, every=0.25)
        print("posting the uncompressed reference to Orthanc ...", flush=True)
        orthanc_post_s = post_to_orthanc(appliance, reference.files)
        studies = {"htj2k": htj2k, "uncompressed": reference}
        pin = spki_pin(cert_file(appliance.layout))
        runs: list[dict[str, Any]] = []
        options = {
            "executable_path": str(links.chromium),
            "args": [*CHROMIUM_ARGS, f"--ignore-certificate-errors-spki-list={pin}"],
        }
        with sync_playwright() as pw:
            browser = pw.chromium.launch(**options)
            chromium = f"Chromium {browser.version}"
            browser.close()

            def launch(profile: Path) -> Any:
                return pw.chromium.launch_persistent_context(
                    str(profile), viewport=VIEWPORT, device_scale_factor=1, **options
                )

            loader = Loader(launch, appliance, links, views, args.screenshots, gate)
            # One untimed load of each first: warms nginx, Orthanc and the page cache.
            for label, series in studies.items():
                loader.run("loopback", label, series, second_visit=False)
            for number in range(args.runs):
                order = list(studies) if number % 2 == 0 else list(reversed(studies))
                for name in names:
                    for label in order:
                        run = loader.run(name, label, studies[label])
                        runs.append({**run, "round": number + 1})
                        print(f"round {number + 1} {name} {label}: first image "
                              f"{run['first_image_canvas_s']:.2f} s, all frames "
                              f"{run['nav_to_all_frames_s']:.2f} s, second visit "
                              f"{run['second_visit']['first_image_canvas_s']:.2f} s",
                              flush=True)  # fmt: skip
                    if name in LINKS and number == 0:  # the cross-check: once per link
                        run = loader.run(name, "htj2k", htj2k, emulate=LINKS[name],
                                         second_visit=False)  # fmt: skip
                        runs.append({**run, "round": number + 1})

    for run in runs:
        if run["shown_correlation"] < MIN_CORRELATION:
            raise RuntimeError(f"the viewer did not show the phantom: {run}")
    summary = summarize(runs, names)
    protocols: dict[str, int] = {}
    for run in runs:
        for name, count in run["protocols"].items():
            protocols[name] = protocols.get(name, 0) + count
    return {
        "benchmark": "viewer",
        "goal": "issue 16 item 1 and its goals: the viewer on emulated links, HTJ2K vs "
        "uncompressed vs the line-rate floor",
        "machine": machine(),
        "setup": {
            "slices": args.slices,
            "runs": args.runs,
            "links": names,
            "note": args.note,
            "ohif": "3.13.2",
            "chromium": chromium,
            "certificate_trust": "--ignore-certificate-errors-spki-list (the appliance's key)",
            "viewport": VIEWPORT,
            "loadavg_before": [round(v, 2) for v in loadavg],
            "protocols_seen": protocols,
            "pixels_sha256": pixels_digest(slices),
            "storescu_s": storescu_s,
            "ingest_s": ingest_s,
            "orthanc_post_s": orthanc_post_s,
            "uncompressed_file_bytes": reference.total_bytes,
            "quiet_budget_left_s": round(gate.remaining, 1),
        },
        "runs": runs,
        "summary": summary,
        "goals": goals(summary),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Run it under the bench lock: flock /tmp/neuronova-bench.lock python "
        "bench/viewer.py. A quick look: --slices 20 --runs 1 --link loopback --link remote-20m",
    )
    parser.add_argument("--link", action="append", choices=LINK_NAMES,
                        help="a link to measure (repeatable; default: all)")  # fmt: skip
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3, help="timed runs per link and study")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "viewer.json")
    parser.add_argument("--screenshots", type=Path,
                        default=REPO / "test-artifacts" / "bench-viewer")  # fmt: skip
    parser.add_argument("--quiet-wait", type=float, default=300.0,
                        help="seconds in all to wait for other processes to quieten")  # fmt: skip
    parser.add_argument("--note", default="", help="a remark printed with the results")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    return run_in_workdir("viewer", args, bench, render_markdown)


if __name__ == "__main__":
    sys.exit(main())
