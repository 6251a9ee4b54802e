"""What the benchmarks share: free ports, the real appliance in a temporary home, dcmtk's
storescu, the ingest journal, multipart frame answers, machine facts, and writing results
(JSON + markdown).

Everything listens on and talks to 127.0.0.1 only. Every wait is bounded in time.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance import loopback
from appliance.config import Settings, load_settings, settings_environment
from appliance.home import init_home
from appliance.layout import HomeLayout
from appliance.supervise.nginx_user import let_workers_reach, worker_user
from appliance.supervise.ports import PORT_SETTINGS
from tests.support.ports import reserve_port

LOOPBACK = "127.0.0.1"
DCMTK_STORESCU = Path("/usr/bin/storescu")  # the venv's `storescu` is pynetdicom's
START_TIMEOUT = 90.0
BENCH_USER = "bench"
# What a viewer asks for a frame with: the stored transfer syntax, as one multipart part.
ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
REPO = Path(__file__).resolve().parent.parent
# The appliance's own self-signed certificate on loopback: encrypted, not verified.
_UNVERIFIED_TLS = ssl.create_default_context()
_UNVERIFIED_TLS.check_hostname = False
_UNVERIFIED_TLS.verify_mode = ssl.CERT_NONE
_TLS_OPENER = urllib.request.build_opener(
    urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=_UNVERIFIED_TLS)
)


def free_port() -> int:
    """A port for a service the bench starts, reserved like the tests' (tests/support/ports.py)."""
    return reserve_port()


def wait_for(
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    every: float = 0.1,
    sleep: Callable[[float], object] = time.sleep,
) -> None:
    """Poll ``condition`` until true; :class:`TimeoutError` naming ``what`` otherwise.

    ``sleep(every)`` runs between polls (playwright's ``page.wait_for_timeout`` lets the
    browser deliver events meanwhile).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def http(
    url: str,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, Any, bytes]:
    """GET (or POST ``data``) ``url`` on loopback; (status, headers, body), also for 4xx/5xx.

    ``https://`` URLs are for the appliance's own (self-signed) certificate: not verified."""
    if not url.startswith((f"http://{LOOPBACK}:", f"https://{LOOPBACK}:")):
        raise ValueError(f"benchmarks only talk to {LOOPBACK}: {url}")
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        if url.startswith("https://"):
            opened = _TLS_OPENER.open(request, timeout=timeout)
        else:
            opened = loopback.urlopen(request, timeout=timeout)
        with opened as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def answers(url: str) -> bool:
    """Whether ``url`` answers 200 right now."""
    try:
        return http(url, timeout=2.0)[0] == 200
    except OSError:
        return False


def split_multipart(content_type: str, body: bytes) -> tuple[str, bytes]:
    """(the part's Content-Type, the part's bytes) of a one-part multipart body."""
    boundary = content_type.split("boundary=")[1].split(";")[0].strip().strip('"')
    delimiter = b"--" + boundary.encode()
    if not body.startswith(delimiter + b"\r\n"):
        raise AssertionError("the body does not start with the multipart delimiter")
    head, _, rest = body[len(delimiter) + 2 :].partition(b"\r\n\r\n")
    part_type = ""
    for line in head.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-type":
            part_type = value.strip()
    tail = b"\r\n" + delimiter + b"--\r\n"
    if not rest.endswith(tail):
        raise AssertionError("the body does not end with the closing delimiter")
    return part_type, rest[: -len(tail)]


def stop_process(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    """Stop one process we started: ``sig``, then SIGKILL after ``timeout`` seconds."""
    if process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def python_env() -> dict[str, str]:
    """The environment for Python children: the repository importable, output unbuffered."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")]))
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


def interrupt_on_sigterm() -> None:
    """Make SIGTERM raise KeyboardInterrupt in this process, as Ctrl-C does, unless it
    already has a handler (or this is not the main thread, where none can be set).

    Python's default for SIGTERM ends the process at once: no ``finally`` runs, so a bench
    stopped that way left its appliance (and its nginx, Orthanc, queue workers) running.
    """
    if threading.current_thread() is threading.main_thread() and (
        signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    ):
        signal.signal(signal.SIGTERM, signal.default_int_handler)


@dataclass
class Appliance:
    """``python -m appliance run`` on a temporary home, free loopback ports, 127.0.0.1 bind."""

    settings: Settings
    password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    process: subprocess.Popen | None = None

    @classmethod
    def create(
        cls, home: Path, ours: Path | None = None, extra: dict[str, object] | None = None
    ) -> Appliance:
        """Initialize ``home`` (settings, secrets, database) and a radiologist to log in as.

        ``ours`` is the bench's own folder above ``home`` (the temporary directory unless
        given) whose folders may be opened to nginx's workers; ``extra``: more settings.
        """
        ports = PORT_SETTINGS
        values: dict[str, object] = {"network.bind": LOOPBACK, "web.redirect_to_https": False}
        values.update({p: free_port() for p in ports} | (extra or {}))
        settings = load_settings(home, values, environ={})
        init_home(settings)
        # mkdtemp's folders are 0700; nginx's workers run as [internal] nginx_user as root.
        let_workers_reach(worker_user(settings), ours or Path(tempfile.gettempdir()), [home])
        appliance = cls(settings)
        appliance.cli("user", "add", BENCH_USER, "--role", "radiologist", "--password-stdin",
                      stdin=appliance.password + "\n")  # fmt: skip
        return appliance

    @property
    def home(self) -> Path:
        return self.settings.home

    @property
    def layout(self) -> HomeLayout:
        return self.settings.layout

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.settings.web.http_port}"

    @property
    def env(self) -> dict[str, str]:
        return {**python_env(), **settings_environment(self.settings)}

    def cli(self, *args: str, stdin: str | None = None) -> str:
        """Run ``python -m appliance ARGS --home HOME``; its output."""
        command = [sys.executable, "-m", "appliance", *args, "--home", str(self.home)]
        done = subprocess.run(command, input=stdin, env=self.env, capture_output=True,
                              text=True, timeout=60, check=True)  # fmt: skip
        return done.stdout

    def start(self) -> Appliance:
        """Start every service and wait until ``/api/health`` answers 200 through nginx.

        From then on a SIGTERM to this bench stops it as Ctrl-C does
        (:func:`interrupt_on_sigterm`), so that its ``finally`` blocks stop the appliance.
        """
        interrupt_on_sigterm()
        command = [sys.executable, "-m", "appliance", "run", "--home", str(self.home)]
        with open(self.home / "run.out", "ab") as out:
            self.process = subprocess.Popen(command, env=self.env, stdout=out,
                                            stderr=subprocess.STDOUT)  # fmt: skip
        wait_for(self._healthy, START_TIMEOUT, f"the appliance to be healthy ({self.home})", 0.25)
        return self

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            tail = (self.home / "run.out").read_text()[-3000:]
            raise RuntimeError(f"the appliance exited early:\n{tail}")
        return answers(f"{self.url}/api/health")

    def stop(self) -> None:
        """SIGTERM to ``run`` (it stops its children in reverse order)."""
        if self.process is not None:
            stop_process(self.process, timeout=30)

    def login(self) -> str:
        """A bearer token for the bench radiologist (``POST /api/auth/login``)."""
        body = json.dumps({"username": BENCH_USER, "password": self.password}).encode()
        status, _, answer = http(f"{self.url}/api/auth/login", body,
                                 {"Content-Type": "application/json"})  # fmt: skip
        if status != 200:
            raise RuntimeError(f"login failed: HTTP {status} {answer[:200]!r}")
        return json.loads(answer)["access_token"]

    def _journal(self, sql: str) -> list[tuple]:
        """``sql`` on a read-only connection to the app database."""
        uri = f"file:{self.layout.database_file}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5)) as db:
            return db.execute(sql).fetchall()

    def journal_states(self) -> dict[str, int]:
        """Count of journal rows per state."""
        return dict(self._journal("SELECT state, count(*) FROM instances GROUP BY state"))

    def journal_rows(self, columns: str) -> list[tuple]:
        """Selected columns of every journal row."""
        return self._journal(f"SELECT {columns} FROM instances")

    def push(
        self, files: Sequence[Path], timeout: float = 600.0, every: float = 0.2
    ) -> tuple[float, float]:
        """Send ``files`` with storescu, wait until the journal says every one is stored.

        Returns (storescu's wall seconds, seconds from its start to all stored). A failed
        instance fails at once.
        """
        start = time.perf_counter()
        pushed = storescu(files, self.settings.dicom.port, self.settings.dicom.ae_title)

        def all_stored() -> bool:
            states = self.journal_states()
            if states.get("failed"):
                raise RuntimeError(f"ingest failed for some instances: {states}")
            return states.get("stored", 0) == len(files)

        wait_for(all_stored, timeout, f"{len(files)} instances to be stored", every)
        return pushed, time.perf_counter() - start


@contextlib.contextmanager
def running(appliance: Appliance) -> Iterator[Appliance]:
    """Start ``appliance`` and always stop it."""
    try:
        yield appliance.start()
    finally:
        appliance.stop()


def start_storescu(files: Sequence[Path], port: int, called_ae: str) -> subprocess.Popen:
    """Start dcmtk's storescu sending ``files`` in one association."""
    command = [str(DCMTK_STORESCU), "-aet", "BENCHSCU", "-aec", called_ae, "-to", "60",
               LOOPBACK, str(port), *map(str, files)]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_storescu(process: subprocess.Popen, timeout: float = 600.0) -> None:
    """Wait for storescu and fail loudly if it reported an error."""
    _, err = process.communicate(timeout=timeout)
    if process.returncode != 0 or "E:" in err:
        raise RuntimeError(f"storescu failed ({process.returncode}): {err[-2000:]}")


def storescu(files: Sequence[Path], port: int, called_ae: str) -> float:
    """Send ``files`` with dcmtk's storescu in one association; wall seconds."""
    start = time.perf_counter()
    finish_storescu(start_storescu(files, port, called_ae))
    return time.perf_counter() - start


def tool_version(command: Sequence[str]) -> str:
    """The first line a program prints about its version, or 'unknown'."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except OSError:
        return "unknown"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0].strip().strip("$").strip() if lines else "unknown"


def machine() -> dict[str, Any]:
    """The machine the numbers were measured on."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "nginx": tool_version(["/usr/sbin/nginx", "-v"]),
        "orthanc": tool_version(["/usr/sbin/Orthanc", "--version"]),
        "storescu": tool_version([str(DCMTK_STORESCU), "--version"]),
    }


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, user + system CPU seconds) for every process right now."""
    tick = os.sysconf("SC_CLK_TCK")
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        table[int(stat.parent.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    return table


def tree_cpu_seconds(roots: Sequence[int]) -> float:
    """CPU seconds used so far by ``roots`` and all their living descendants."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    total, todo, seen = 0.0, list(roots), set()
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in table:
            continue
        seen.add(pid)
        total += table[pid][1]
        todo.extend(children.get(pid, []))
    return total


def own_cpu_seconds() -> float:
    """CPU seconds of this process and of its children that have been waited for (wrk)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def system_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all CPUs), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


def background_percent(seconds: float = 1.0) -> float:
    """Percent of one core used by processes other than this one, over ``seconds``."""
    busy, own, start = system_busy_seconds(), own_cpu_seconds(), time.perf_counter()
    time.sleep(seconds)
    elapsed = time.perf_counter() - start
    other = system_busy_seconds() - busy - (own_cpu_seconds() - own)
    return round(100 * max(other, 0.0) / elapsed, 1)


class OthersMeter:
    """CPU used by processes the benchmark did not start, between start() and percent()."""

    def __init__(self, roots: Sequence[int]) -> None:
        self.roots = list(roots)
        self.before = (0.0, 0.0, 0.0, 0.0)

    def _sample(self) -> tuple[float, float, float, float]:
        return (system_busy_seconds(), tree_cpu_seconds(self.roots), own_cpu_seconds(),
                time.perf_counter())  # fmt: skip

    def start(self) -> OthersMeter:
        self.before = self._sample()
        return self

    def percent(self) -> float:
        """Percent of one core, since :meth:`start`."""
        after = self._sample()
        busy, ours, own, wall = (a - b for a, b in zip(after, self.before, strict=True))
        return round(100 * max(busy - ours - own, 0.0) / wall, 1)


def wait_for_quiet(limit: float = 30.0, max_wait: float = 120.0) -> dict[str, Any]:
    """Wait (bounded) until other processes use less than ``limit`` % of one core.

    Other work on the machine (a test suite, a browser) changes every figure; the wait
    and what was seen are recorded with the results.
    """
    start, seen = time.monotonic(), []
    while True:
        seen.append(background_percent(2.0))
        if seen[-1] < limit or time.monotonic() - start > max_wait:
            break
        print(f"waiting for a quieter machine: others use {seen[-1]:.0f}% of a core", flush=True)
    return {"background_cpu_percent": seen[-1], "waited_s": round(time.monotonic() - start, 1),
            "quiet": seen[-1] < limit}  # fmt: skip


class QuietGate:
    """Waits for a quiet machine within one time budget for a whole benchmark run.

    Once the budget is spent the benchmark neither waits nor repeats disturbed runs, so
    its total time stays bounded; what the other processes used is recorded anyway.
    """

    def __init__(self, budget: float) -> None:
        self.remaining = max(budget, 0.0)

    @property
    def exhausted(self) -> bool:
        return self.remaining <= 0

    def wait(self) -> dict[str, Any]:
        """:func:`wait_for_quiet` for at most the remaining budget."""
        start = time.monotonic()
        seen = wait_for_quiet(max_wait=self.remaining)
        self.remaining -= time.monotonic() - start
        return seen


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(met: bool) -> str:
    """How a goal reads in a table."""
    return "met" if met else "**MISSED**"


def write_results(
    out: Path, results: dict[str, Any], render: Callable[[dict[str, Any]], str]
) -> None:
    """Write ``out`` (JSON), then the markdown ``render`` makes of it beside it (``.md``),
    and print the markdown. The JSON is written first: a run's figures are kept even if
    rendering them fails."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    markdown = render(results)
    out.with_suffix(".md").write_text(markdown + "\n")
    print(markdown)
    print(f"\nwritten to {out} and {out.with_suffix('.md')}")


def run_in_workdir(
    name: str,
    args: Any,
    bench: Callable[[Any, Path], dict[str, Any]],
    render: Callable[[dict[str, Any]], str],
) -> int:
    """Run ``bench(args, workdir)`` in a fresh temporary folder, then write its results.

    The folder is removed afterwards unless ``args.keep``; results go to ``args.out``.
    """
    workdir = Path(tempfile.mkdtemp(prefix=f"nn-bench-{name}-"))
    try:
        results = bench(args, workdir)
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    write_results(args.out, results, render)
    return 0
