"""Benchmark ingest: storescu into the appliance vs into Orthanc's own C-STORE server, and
the pipeline's per-frame HTJ2K cost vs bare encoders.

Usage: ``python bench/ingest.py [--slices 300] [--out bench/results/ingest.json]
[--codec-json bench/results/codec.json]``

Issue 16 item 6 adds two goals, measured in the same run: the last instance viewable
(stored as HTJ2K, frame files and series metadata prepared, listed through the gateway)
within 1 s of the last C-STORE Success, and the C-STORE phase at least 90% of the
throughput of reference (d), a bare pynetdicom storage SCP that writes and fsyncs each
object (``bench/bare_scp.py``).

Goal (issue, verbatim): "a 300-slice 512x512 16-bit CT series pushed with storescu (a)
into the appliance, timing both the C-STORE phase and the moment every instance is stored
as HTJ2K in Orthanc, (b) straight into Orthanc's own C-STORE server (the reference); and
the pipeline's per-frame HTJ2K cost vs bare imagecodecs.htj2k_encode, vs ojph_compress
(Debian openjph-tools) and vs J2K lossless, on the same pixels. Goals: C-STORE phase at
least 4x faster than Orthanc's own; everything viewable as HTJ2K in at most 0.5x the time
Orthanc's own server needs to store the raw series; per-frame pipeline cost within 2x of
the bare encode; size within 6% of J2K lossless. Report every figure and the compression
ratio."

Order, in each round: (b) (a bench-only Orthanc with its own configuration in a
temporary directory), (d) (the bare SCP, writing into a temporary directory), then (a)
(the real appliance, ``python -m appliance run``, in a fresh temporary home); after the
rounds the per-frame codec figures (``bench/codec.py``'s ``run`` on the same pixels: same
generator, same seed) with nothing else running. The same Part 10 files are sent to every
server by dcmtk's storescu, in one association each. Everything is on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import secrets
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance.store import series_metadata
from appliance.transcode.codestream import RPCL_SYNTAX
from appliance.web.gateway import HTJ2K_LOSSLESS
from bench import codec
from bench.harness import (
    ACCEPT,
    LOOPBACK,
    REPO,
    Appliance,
    OthersMeter,
    QuietGate,
    finish_storescu,
    free_port,
    http,
    machine,
    markdown_table,
    python_env,
    run_in_workdir,
    running,
    split_multipart,
    start_storescu,
    stop_process,
    storescu,
    verdict,
    wait_for,
)
from bench.synthetic import Series, make_slices, write_series

ORTHANC = Path("/usr/sbin/Orthanc")
ORTHANC_AET = "ORTHANC"
STORE_TIMEOUT = 600.0
POLL = 0.05
GOAL_CSTORE_SPEEDUP = 4.0
GOAL_VIEWABLE_RATIO = 0.5
GOAL_VIEWABLE_AFTER_CSTORE = 1.0  # seconds from storescu's end to the last instance viewable
GOAL_CSTORE_OVER_BARE = 0.9  # the appliance's C-STORE throughput over the bare SCP's
BARE_AET = "BARESCP"
QIDO_ACCEPT = "application/dicom+json"
NOISY_PERCENT = 25.0
NOISY_RETRIES = 2


class ReferenceOrthanc:
    """A bench-only Orthanc: its own DICOM server on a free port, storage in ``workdir``."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.user, self.password = "bench", secrets.token_urlsafe(18)
        self.process: subprocess.Popen | None = None

    def config(self) -> dict[str, Any]:
        """Debian's defaults except what a private, loopback-only instance needs."""
        return {
            "Name": "bench-reference",
            "StorageDirectory": str(self.dir / "storage"),
            "IndexDirectory": str(self.dir / "index"),
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {self.user: self.password},
            "DicomServerEnabled": True,
            "DicomAet": ORTHANC_AET,
            "DicomPort": self.dicom_port,
            "DicomModalities": {},
            "DicomCheckCalledAet": False,
            "UnknownSopClassAccepted": True,
            "Plugins": [],
            "Locale": "C.UTF-8",
        }

    @property
    def auth(self) -> dict[str, str]:
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def rest(self, path: str) -> Any:
        """GET a JSON resource of Orthanc's REST API."""
        status, _, body = http(f"http://{LOOPBACK}:{self.http_port}{path}", headers=self.auth)
        if status != 200:
            raise RuntimeError(f"Orthanc {path}: HTTP {status}")
        return json.loads(body)

    def start(self) -> ReferenceOrthanc:
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "orthanc.json"
        conf.write_text(json.dumps(self.config(), indent=2))
        conf.chmod(0o600)
        with open(self.dir / "orthanc.log", "ab") as log:
            self.process = subprocess.Popen([str(ORTHANC), str(conf)], stdout=log,
                                            stderr=subprocess.STDOUT)  # fmt: skip
        wait_for(self._ready, 60, "the reference Orthanc")
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"Orthanc exited; see {self.dir / 'orthanc.log'}")
        try:
            return bool(self.rest("/system"))
        except (OSError, RuntimeError):
            return False

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, timeout=20)


def bench_orthanc(series: Series, workdir: Path) -> dict[str, Any]:
    """(b): push the series into Orthanc's own C-STORE server; time it; count what it has."""
    orthanc = ReferenceOrthanc(workdir).start()
    assert orthanc.process is not None
    try:
        others = OthersMeter([orthanc.process.pid]).start()
        seconds = storescu(series.files, orthanc.dicom_port, ORTHANC_AET)
        others_percent = others.percent()
        stats = orthanc.rest("/statistics")
        if stats["CountInstances"] != len(series.files):
            raise RuntimeError(f"Orthanc holds {stats['CountInstances']} instances")
        version = orthanc.rest("/system")["Version"]
    finally:
        orthanc.stop()
    return {
        "cstore_s": round(seconds, 3),
        "instances": stats["CountInstances"],
        "disk_size_bytes": int(stats["TotalDiskSize"]),
        "other_processes_cpu_percent": others_percent,
        "orthanc_version": version,
        "config": {k: v for k, v in orthanc.config().items() if k != "RegisteredUsers"},
    }


def bench_bare(series: Series, workdir: Path) -> dict[str, Any]:
    """(d): push the series into the bare pynetdicom SCP (``bench/bare_scp.py``); time it."""
    port = free_port()
    command = [sys.executable, "-m", "bench.bare_scp", "--port", str(port),
               "--ae-title", BARE_AET, "--out", str(workdir)]  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO, env=python_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != "listening":
            raise RuntimeError("the bare SCP did not start")
        others = OthersMeter([process.pid]).start()
        seconds = storescu(series.files, port, BARE_AET)
        others_percent = others.percent()
        written = len(list(workdir.glob("*.dcm")))
        if written != len(series.files):
            raise RuntimeError(f"the bare SCP wrote {written} files")
    finally:
        stop_process(process)
    return {"cstore_s": round(seconds, 3), "other_processes_cpu_percent": others_percent}


class Clock:
    """Seconds since the push started, and the first moment each event was seen."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.events: dict[str, float] = {}

    def now(self) -> float:
        return time.perf_counter() - self.start

    def mark(self, name: str) -> None:
        self.events.setdefault(name, round(self.now(), 3))


def qido_count(appliance: Appliance, series: Series, token: str) -> int:
    """How many instances of the series the appliance's DICOMweb (Orthanc behind) lists."""
    url = (f"{appliance.url}/api/pacs/dicom-web/studies/{series.study_uid}/series/"
           f"{series.series_uid}/instances")  # fmt: skip
    status, _, body = http(url, headers={"Authorization": f"Bearer {token}",
                                         "Accept": QIDO_ACCEPT})  # fmt: skip
    if status == 204:
        return 0
    if status != 200:
        raise RuntimeError(f"QIDO-RS answered HTTP {status}: {body[:200]!r}")
    return len(json.loads(body)) if body.strip() else 0


def metadata_count(appliance: Appliance, series: Series) -> int:
    """How many instances the series metadata file prepared at ingest holds (0: none yet)."""
    path = Path(appliance.layout.frames_dir, series.study_uid, series.series_uid,
                series_metadata.FILE_NAME)  # fmt: skip
    try:
        return len(json.loads(gzip.decompress(path.read_bytes())))
    except FileNotFoundError:
        return 0


def _watch_exit(process: subprocess.Popen, clock: Clock) -> threading.Thread:
    """Mark ``cstore_done`` the moment storescu exits (not at the next poll)."""

    def wait() -> None:
        process.wait()
        clock.mark("cstore_done")

    thread = threading.Thread(target=wait, daemon=True, name="storescu-wait")
    thread.start()
    return thread


def push_and_watch(appliance: Appliance, series: Series, token: str) -> dict[str, Any]:
    """Push with storescu while polling the journal; then confirm through QIDO-RS."""
    count, clock = len(series.files), Clock()
    assert appliance.process is not None
    others = OthersMeter([appliance.process.pid]).start()
    settings = appliance.settings
    process = start_storescu(series.files, settings.dicom.port, settings.dicom.ae_title)
    waiter = _watch_exit(process, clock)
    backlog = None
    deadline = time.monotonic() + STORE_TIMEOUT
    while time.monotonic() < deadline:
        pushed = not waiter.is_alive()
        states = appliance.journal_states()
        if states.get("failed"):
            raise RuntimeError(f"ingest failed for some instances: {states}")
        if pushed and backlog is None:
            finish_storescu(process)
            backlog = count - states.get("stored", 0)
        if states.get("stored", 0) == count:
            clock.mark("journal_all_stored")
            if pushed:
                others_percent = others.percent()
                break
        time.sleep(POLL)
    else:
        raise TimeoutError(f"not every instance was stored within {STORE_TIMEOUT:.0f} s")
    wait_for(lambda: metadata_count(appliance, series) == count, 60, "the series metadata", POLL)
    clock.mark("metadata_all_prepared")
    wait_for(lambda: qido_count(appliance, series, token) == count, 60, "QIDO-RS to list all", POLL)
    clock.mark("qido_all_listed")
    return {**clock.events, "not_yet_stored_when_cstore_done": backlog,
            "other_processes_cpu_percent": others_percent}  # fmt: skip


def _worker_complaints(appliance: Appliance, limit: int = 20) -> list[str]:
    """The worker log's warnings and errors (why an instance was kept as received)."""
    log = appliance.layout.log_dir / "worker.log"
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    marks = ("WARNING", "ERROR", "Traceback", "keeping")
    return [line[:500] for line in lines if any(m in line for m in marks)][-limit:]


def check_journal(appliance: Appliance, count: int) -> dict[str, Any]:
    """Which instances are stored as HTJ2K lossless (ts_out, transcoded); sizes in and out.

    An instance the pipeline kept as received is listed with the journal's reason and the
    worker's log lines, and fails the "viewable as HTJ2K" goal.
    """
    rows = appliance.journal_rows("sop_uid, state, ts_out, action, reason, size_in, size_out")
    if len(rows) != count or any(r[1] != "stored" for r in rows):
        raise RuntimeError(f"{len(rows)} journal rows, not all stored")
    others = [
        {"sop_uid": r[0], "ts_out": r[2], "action": r[3], "reason": r[4]}
        for r in rows
        if r[2] != HTJ2K_LOSSLESS or r[3] != "transcoded"
    ]
    if others:
        print(f"WARNING: {len(others)} instance(s) not stored as HTJ2K: {others[:3]}", flush=True)
    size_in, size_out = sum(r[5] for r in rows), sum(r[6] for r in rows)
    return {
        "instances_stored_htj2k": count - len(others),
        "ts_out": HTJ2K_LOSSLESS,
        "not_htj2k": others,
        "worker_log_complaints": _worker_complaints(appliance) if others else [],
        "size_in_bytes": size_in,
        "size_out_bytes": size_out,
        "file_ratio_in_over_out": round(size_in / size_out, 3),
    }


def check_frames(
    appliance: Appliance, series: Series, slices: list[np.ndarray], token: str, skip: set[str]
) -> dict[str, Any]:
    """Frames of the first, middle and last HTJ2K instance decode to exactly the pixels sent."""
    htj2k = [i for i, sop in enumerate(series.sop_uids) if sop not in skip]
    checked = []
    for index in sorted({htj2k[0], htj2k[len(htj2k) // 2], htj2k[-1]}):
        url = (f"{appliance.url}/api/pacs/dicom-web/studies/{series.study_uid}/series/"
               f"{series.series_uid}/instances/{series.sop_uids[index]}/frames/1")  # fmt: skip
        status, headers, body = http(url, headers={"Authorization": f"Bearer {token}",
                                                   "Accept": ACCEPT})  # fmt: skip
        part_type, frame = split_multipart(headers.get("Content-Type", ""), body)
        ok = status == 200 and RPCL_SYNTAX in part_type
        if not ok or not np.array_equal(imagecodecs.htj2k_decode(frame), slices[index]):
            raise RuntimeError(f"frame of instance {index} is not the pixels sent ({status})")
        checked.append(index)
    return {"instances_checked": checked, "pixels_identical": True}


def bench_appliance(series: Series, slices: list[np.ndarray], home: Path) -> dict[str, Any]:
    """(a): push the series into the appliance and time C-STORE and stored-as-HTJ2K."""
    appliance = Appliance.create(home)
    with running(appliance):
        token = appliance.login()
        times = push_and_watch(appliance, series, token)
        journal = check_journal(appliance, len(series.files))
        skip = {row["sop_uid"] for row in journal["not_htj2k"]}
        frames = check_frames(appliance, series, slices, token, skip)
    viewable = max(times["journal_all_stored"], times["metadata_all_prepared"],
                   times["qido_all_listed"])  # fmt: skip
    return {
        "cstore_s": times["cstore_done"],
        "all_stored_htj2k_s": times["journal_all_stored"],
        "metadata_all_prepared_s": times["metadata_all_prepared"],
        "all_listed_by_qido_s": times["qido_all_listed"],
        "viewable_s": viewable,
        "viewable_after_cstore_s": round(viewable - times["cstore_done"], 3),
        "not_yet_stored_when_cstore_done": times["not_yet_stored_when_cstore_done"],
        "other_processes_cpu_percent": times["other_processes_cpu_percent"],
        "workers": appliance.settings.queue.workers,
        "journal": journal,
        "frames": frames,
    }


def codec_figures(count: int, reuse: Path | None) -> dict[str, Any]:
    """bench/codec.py's figures on the same pixels: run now, or reuse a result file.

    ``codec.run(count)`` makes its slices with :func:`~bench.synthetic.make_slices`, as
    here: the pixels sent here.
    """
    if reuse is not None and reuse.exists():
        data = json.loads(reuse.read_text())
        if data["setup"]["slices"] == count:
            data["source"] = f"reused {reuse}"
            return data
        print(f"{reuse} is for {data['setup']['slices']} slices; measuring again")
    data = codec.run(count)
    data["source"] = "measured by bench/ingest.py with bench/codec.py's run()"
    return data


def goals(orthanc: dict, bare: dict, appliance: dict, codec_data: dict) -> dict[str, Any]:
    """The goals, with their figures."""
    speedup = orthanc["cstore_s"] / appliance["cstore_s"]
    viewable = appliance["viewable_s"]
    after = appliance["viewable_after_cstore_s"]
    over_bare = bare["cstore_s"] / appliance["cstore_s"]
    all_htj2k = not any(appliance["instances_not_htj2k_each_round"])
    ratios = codec_data["ratios"]
    return {
        "every_instance_htj2k_every_round": all_htj2k,
        "cstore_speedup_vs_orthanc": round(speedup, 2),
        "cstore_at_least_4x_faster": speedup >= GOAL_CSTORE_SPEEDUP,
        "viewable_over_orthanc_store": round(viewable / orthanc["cstore_s"], 3),
        "viewable_within_half_of_orthanc": all_htj2k
        and viewable <= GOAL_VIEWABLE_RATIO * orthanc["cstore_s"],
        "viewable_after_cstore_s": after,
        "viewable_within_1s_of_cstore": all_htj2k and after <= GOAL_VIEWABLE_AFTER_CSTORE,
        "cstore_throughput_over_bare_scp": round(over_bare, 3),
        "cstore_at_least_90pct_of_bare_scp": over_bare >= GOAL_CSTORE_OVER_BARE,
        "pipeline_over_bare_encode": ratios["pipeline_over_bare_encode"],
        "pipeline_within_2x_bare_encode": codec_data["goals"]["pipeline_within_2x_bare_encode"],
        "size_htj2k_over_j2k": ratios["size_htj2k_over_j2k"],
        "size_within_6pct_of_j2k": codec_data["goals"]["htj2k_size_within_6pct_of_j2k"],
    }


def _codec_rows(codec_data: dict) -> list[list[object]]:
    per_frame = codec_data["per_frame"]
    ojph, ojph_raw = per_frame["c_ojph_compress"], per_frame["c_ojph_compress_signed_raw"]
    rows = [
        ("pipeline transcode_to_htj2k (decode+encode+verify+dataset)", per_frame["a_pipeline"]),
        ("pipeline, multi-frame dataset", per_frame["a_pipeline_multiframe"]),
        ("bare imagecodecs.htj2k_encode", per_frame["b_htj2k_encode_bare"]),
        ("ojph_compress (PGM), time it reports", ojph["reported_by_tool"]),
        ("ojph_compress (PGM), wall minus start-up", ojph["wall_minus_startup"]),
        ("ojph_compress (signed raw), time it reports", ojph_raw["reported_by_tool"]),
        ("J2K lossless, OpenJPEG 1 thread", per_frame["d_j2k_lossless_openjpeg"]),
    ]
    return [[name, f"{r['median_ms']:.2f}", f"{r['p95_ms']:.2f}"] for name, r in rows]


def _size_rows(codec_data: dict, slices: int) -> list[list[object]]:
    sizes = codec_data["size_bytes"]
    names = {"htj2k": "HTJ2K (pipeline)", "ojph_compress": "ojph_compress (PGM)",
             "ojph_compress_signed_raw": "ojph_compress (signed raw)",
             "j2k_lossless": "J2K lossless (OpenJPEG)"}  # fmt: skip
    rows = [["raw", f"{sizes['raw'] / slices:.0f}", "1.000"]]
    for key, name in names.items():
        rows.append([name, f"{sizes[key] / slices:.0f}", f"{sizes['raw'] / sizes[key]:.3f}"])
    return rows


def _push_rows(o: dict, d: dict, a: dict, n: int) -> list[list[object]]:
    rows = [
        ("(b) storescu -> Orthanc's own C-STORE (raw, stored)", o, "cstore_s"),
        ("(d) storescu -> bare pynetdicom SCP (write + fsync each)", d, "cstore_s"),
        ("(a) storescu -> appliance, C-STORE phase", a, "cstore_s"),
        ("(a) every instance stored as HTJ2K in Orthanc (journal)", a, "all_stored_htj2k_s"),
        ("(a) the series metadata prepared with every instance", a, "metadata_all_prepared_s"),
        ("(a) every instance listed by QIDO-RS through the gateway", a, "all_listed_by_qido_s"),
        ("(a) last instance viewable, after storescu's end", a, "viewable_after_cstore_s"),
    ]
    return [[name, f"{side[key]:.2f}", f"{1e3 * side[key] / n:.1f}",
             ", ".join(f"{v:.2f}" for v in side[f"{key}_each_round"])]
            for name, side, key in rows]  # fmt: skip


def _goal_rows(g: dict) -> list[list[object]]:
    return [
        ["C-STORE >= 4x faster than Orthanc's", f"{g['cstore_speedup_vs_orthanc']:.2f}x",
         verdict(g["cstore_at_least_4x_faster"])],
        ["every instance stored as HTJ2K, every round", "",
         verdict(g["every_instance_htj2k_every_round"])],
        ["viewable as HTJ2K <= 0.5x Orthanc's store time",
         f"{g['viewable_over_orthanc_store']:.3f}x", verdict(g["viewable_within_half_of_orthanc"])],
        ["last instance viewable <= 1 s after the last C-STORE Success",
         f"{g['viewable_after_cstore_s']:.2f} s", verdict(g["viewable_within_1s_of_cstore"])],
        ["C-STORE throughput >= 90% of the bare SCP's (d)",
         f"{100 * g['cstore_throughput_over_bare_scp']:.1f}%",
         verdict(g["cstore_at_least_90pct_of_bare_scp"])],
        ["per-frame pipeline <= 2x bare encode", f"{g['pipeline_over_bare_encode']:.3f}x",
         verdict(g["pipeline_within_2x_bare_encode"])],
        ["size <= 1.06x J2K lossless", f"{g['size_htj2k_over_j2k']:.4f}x",
         verdict(g["size_within_6pct_of_j2k"])],
    ]  # fmt: skip


def render_markdown(results: dict[str, Any]) -> str:
    """The readable tables."""
    o, a, g, c = results["orthanc"], results["appliance"], results["goals"], results["codec"]
    d = results["bare_scp"]
    m, setup = results["machine"], results["setup"]
    n, journal = setup["slices"], a["journal"]
    others = [r["other_processes_cpu_percent"] for side in (o, d, a) for r in side["rounds"]]
    note = [f"Note: {setup['note']}", ""] if setup.get("note") else []
    return "\n".join([
        f"# Ingest benchmark ({n} x 512x512 int16 CT slices, "
        f"{setup['series_bytes'] / 1e6:.0f} MB of Part 10 files)", "",
        f"Machine: {m['nproc']} CPUs, {m['cpu_model']}; Orthanc {o['orthanc_version']}; "
        f"{m['storescu']}. Order: {setup['order']}; medians of {setup['rounds']} rounds. "
        f"Appliance queue workers: {a['workers']}; instances not yet stored when storescu "
        f"finished: {a['not_yet_stored_when_cstore_done_each_round']}. CPU used by processes "
        f"the benchmark did not start, per push: {others} % of one core.", "", *note,
        markdown_table(["", "median s", "per instance ms", "each round s"],
                       _push_rows(o, d, a, n)), "",
        f"Journal (last round): {journal['instances_stored_htj2k']} instances stored with ts_out "
        f"{journal['ts_out']}; Part 10 files {journal['size_in_bytes'] / 1e6:.1f} MB in, "
        f"{journal['size_out_bytes'] / 1e6:.1f} MB stored (x{journal['file_ratio_in_over_out']}). "
        f"Frames of instances {a['frames']['instances_checked']} fetched through the gateway "
        "decode to exactly the pixels sent (every round). Instances kept as received "
        f"(not HTJ2K), per round: {a['instances_not_htj2k_each_round']}.", "",
        f"Per frame ({c['source']}):", "",
        markdown_table(["", "median ms", "p95 ms"], _codec_rows(c)), "",
        markdown_table(["size", "bytes/frame", "compression ratio"], _size_rows(c, n)), "",
        markdown_table(["goal", "figure", "verdict"], _goal_rows(g)),
    ])  # fmt: skip


def _summary(rounds: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, Any]:
    """Median of each figure over the rounds, every round's value, the last round's rest."""
    out = {k: v for k, v in rounds[-1].items() if k not in keys}
    for key in keys:
        values = [r[key] for r in rounds]
        out[key] = round(statistics.median(values), 3)
        out[f"{key}_each_round"] = values
    out["rounds"] = [{k: r[k] for k in (*keys, "other_processes_cpu_percent")} for r in rounds]
    return out


def one_round(series: Series, slices: list[np.ndarray], workdir: Path) -> tuple[dict, dict, dict]:
    """(b), (d), then (a), each on fresh servers in ``workdir`` (removed afterwards)."""
    try:
        orthanc = bench_orthanc(series, workdir / "orthanc")
        bare = bench_bare(series, workdir / "bare")
        appliance = bench_appliance(series, slices, workdir / "home")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return orthanc, bare, appliance


def run_rounds(args: argparse.Namespace, workdir: Path, series: Series, slices: list[np.ndarray],
               gate: QuietGate):  # fmt: skip
    """(b), (d) then (a), ``args.rounds`` times, each on fresh servers; their summaries."""
    orthanc_runs, bare_runs, appliance_runs, quiet = [], [], [], []
    for number in range(args.rounds):
        for attempt in range(1, NOISY_RETRIES + 2):
            quiet.append(gate.wait())
            trio = one_round(series, slices, workdir / f"round-{number}-{attempt}")
            others = max(side["other_processes_cpu_percent"] for side in trio)
            if others <= NOISY_PERCENT or attempt > NOISY_RETRIES or gate.exhausted:
                break
            print(f"others used {others:.0f}% of a core during a push: repeating the round")
        orthanc_runs.append(trio[0])
        bare_runs.append(trio[1])
        appliance_runs.append(trio[2])
        print(f"round {number + 1}: (b) Orthanc's own C-STORE {trio[0]['cstore_s']:.2f} s; "
              f"(d) bare SCP {trio[1]['cstore_s']:.2f} s; (a) appliance C-STORE "
              f"{trio[2]['cstore_s']:.2f} s, last viewable {trio[2]['viewable_after_cstore_s']:.2f}"
              " s later", flush=True)  # fmt: skip
    for run in appliance_runs:
        run["instances_not_htj2k"] = len(run["journal"]["not_htj2k"])
    appliance_keys = ("cstore_s", "all_stored_htj2k_s", "metadata_all_prepared_s",
                      "all_listed_by_qido_s", "viewable_s", "viewable_after_cstore_s",
                      "not_yet_stored_when_cstore_done", "instances_not_htj2k")  # fmt: skip
    summaries = (_summary(runs, ("cstore_s",)) for runs in (orthanc_runs, bare_runs))
    return *summaries, _summary(appliance_runs, appliance_keys), quiet


def bench(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Rounds of (b) then (a), then the codec figures; return every figure."""
    slices = make_slices(args.slices)
    series = write_series(workdir / "series", slices)
    print(f"wrote {args.slices} files, {series.total_bytes / 1e6:.0f} MB", flush=True)
    gate = QuietGate(args.quiet_wait)
    orthanc, bare, appliance, quiet = run_rounds(args, workdir, series, slices, gate)
    if args.codec_json is None or not args.codec_json.exists():
        quiet.append(gate.wait())
    codec_data = codec_figures(args.slices, args.codec_json)
    return {
        "setup": {
            "slices": args.slices,
            "series_bytes": series.total_bytes,
            "pixels_sha256": series.pixels_sha256,
            "transfer_syntax_sent": "1.2.840.10008.1.2.1 (Explicit VR Little Endian)",
            "rounds": args.rounds,
            "order": "alternating, (b) Orthanc, (d) the bare SCP, then (a) the appliance in "
            "each round, fresh servers every time; the codec figures last, with none of the "
            "servers running",
            "machine_load_before_each_round_then_codec": quiet,
            "note": args.note,
        },
        "machine": machine(),
        "orthanc": orthanc,
        "bare_scp": bare,
        "appliance": appliance,
        "codec": codec_data,
        "goals": goals(orthanc, bare, appliance, codec_data),
    }


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, write the JSON and markdown files and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "ingest.json")
    parser.add_argument(
        "--codec-json", type=Path, help="reuse bench/codec.py's result file if it has --slices"
    )
    parser.add_argument("--rounds", type=int, default=3, help="(b)-then-(a) rounds (median)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--note", default="", help="a remark printed with the results")
    parser.add_argument(
        "--quiet-wait", type=float, default=240.0, help="seconds in all to wait for quiet"
    )
    args = parser.parse_args(argv)
    if not 2 <= args.slices <= 2000 or not 1 <= args.rounds <= 10:
        parser.error("--slices must be between 2 and 2000, --rounds between 1 and 10")
    return run_in_workdir("ingest", args, bench, render_markdown)


if __name__ == "__main__":
    sys.exit(main())
