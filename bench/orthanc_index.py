"""Orthanc alone, its index in SQLite vs PostgreSQL: store rate, QIDO latency, start-up.

Usage: ``python bench/orthanc_index.py [--sizes 2000,5000,10000] [--requests 30] [--keep]``

The same files (bench/scale.py's study mix: CT and MR series, CR/DX singles, several
patients a day) are written once and stored, in the same order, into two Orthancs
configured by the appliance (``[orthanc] index = "sqlite"`` and ``"postgresql"``, the
latter on a PostgreSQL 15 server of the bench's own, bench/pg.py). At each size:
the store rate of the step that reached it (REST ``POST /instances``, two clients), QIDO
study searches through Orthanc's DICOMweb plugin (name wildcard, patient ID, date range
and modality; p50/p95), the time from starting Orthanc to its first answered search,
and the index's size on disk. Ratios are PostgreSQL over SQLite in the same run.
Run it under ``flock /tmp/neuronova-bench.lock``; the machine's load is recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance.config import Settings, load_settings
from appliance.home import init_home
from appliance.store.orthanc import DICOMWEB_ROOT, orthanc_auth_header
from appliance.supervise.orthanc import orthanc_command, orthanc_environment, render_orthanc_conf
from bench.harness import REPO, free_port, machine, markdown_table, run_in_workdir
from bench.pg import DATABASE, PgServer, throwaway_pg_server
from bench.scale import plan_study, study_size
from bench.synthetic import write_small_study

INDEXES = ("sqlite", "postgresql")
CLIENTS = 2
START_TIMEOUT = 120.0


def write_files(folder: Path, total: int) -> list[Path]:
    """Whole studies of the scale mix until at least ``total`` instances; their files."""
    files: list[Path] = []
    index = 0
    while len(files) < total:
        study, series = plan_study(index)
        files += write_small_study(folder / str(index), study, series, seed=index)
        index += 1
    return files


class Orthanc:
    """Orthanc on ``settings``' home, started and stopped by the bench."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.base = f"http://127.0.0.1:{settings.internal.orthanc_port}"
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.headers["Authorization"] = orthanc_auth_header(settings)
        self.process: subprocess.Popen | None = None

    def start(self) -> float:
        """Start Orthanc; seconds until a study search answers."""
        render_orthanc_conf(self.settings)
        started = time.monotonic()
        log = open(self.settings.layout.home / "orthanc.out", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(orthanc_command(self.settings), stdout=log, stderr=log,
                                        env={**os.environ, **orthanc_environment()})  # fmt: skip
        while time.monotonic() - started < START_TIMEOUT:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited: see {log.name}")
            with contextlib.suppress(requests.RequestException):
                if self.qido("PatientID=none").status_code in (200, 204):
                    return time.monotonic() - started
            time.sleep(0.05)
        raise TimeoutError(f"Orthanc did not answer in {START_TIMEOUT:.0f} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)

    def qido(self, query: str) -> requests.Response:
        return self.session.get(f"{self.base}{DICOMWEB_ROOT}/studies?{query}", timeout=30)

    def store(self, files: list[Path]) -> float:
        """POST ``files`` with :data:`CLIENTS` clients; instances per second."""

        def post(path: Path) -> None:
            resp = self.session.post(f"{self.base}/instances", data=path.read_bytes(), timeout=60)
            resp.raise_for_status()

        started = time.monotonic()
        with ThreadPoolExecutor(CLIENTS) as pool:
            list(pool.map(post, files))
        return len(files) / (time.monotonic() - started)


def searches(size: int) -> dict[str, str]:
    """The QIDO study searches, on patients and dates the first ``size`` instances hold."""
    study, _ = plan_study(0)
    last, _ = plan_study(max(0, _studies_in(size) - 1))
    return {
        "name wildcard": f"PatientName={study.patient_name.split('^')[0][:3]}*",
        "patient ID": f"PatientID={study.patient_id}",
        "date range + modality": (f"StudyDate={last.study_date}-{study.study_date}"
                                  "&ModalitiesInStudy=CT"),
    }  # fmt: skip


def _studies_in(size: int) -> int:
    count = total = 0
    while total < size:
        total += study_size(count)
        count += 1
    return count


def latency(orthanc: Orthanc, query: str, requests_count: int) -> dict[str, float]:
    """p50 and p95 in ms of ``requests_count`` searches (after one warm-up)."""
    orthanc.qido(query).raise_for_status()
    times = []
    for _ in range(requests_count):
        started = time.perf_counter()
        orthanc.qido(query).raise_for_status()
        times.append((time.perf_counter() - started) * 1000)
    cuts = statistics.quantiles(times, n=20)
    return {"p50": round(statistics.median(times), 1), "p95": round(cuts[18], 1)}


def index_bytes(settings: Settings, cluster: PgServer | None) -> int:
    """The index on disk: SQLite's files, or the PostgreSQL database's size."""
    if cluster is None:
        folder = settings.layout.orthanc_dir / "index"
        return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return int(cluster.sql(f"SELECT pg_database_size('{DATABASE}')").strip())


@contextlib.contextmanager
def index_home(kind: str, workdir: Path) -> Iterator[tuple[Settings, PgServer | None]]:
    """A fresh home with Orthanc's index of ``kind`` (and its cluster)."""
    home = workdir / kind / "home"
    values: dict[str, object] = {"internal.orthanc_port": free_port()}
    with contextlib.ExitStack() as stack:
        cluster = stack.enter_context(throwaway_pg_server()) if kind == "postgresql" else None
        if cluster is not None:
            values |= cluster.settings()
        settings = load_settings(home, values, environ={})
        init_home(settings)
        if cluster is not None:
            cluster.create_owner(settings.orthanc_db_password_path.read_text().strip())
        yield settings, cluster


def measure_index(kind: str, files: list[Path], args: argparse.Namespace, workdir: Path):
    """The figures of one index at every size."""
    rows = []
    with index_home(kind, workdir) as (settings, cluster):
        orthanc = Orthanc(settings)
        orthanc.start()
        try:
            done = 0
            for size in args.sizes:
                rate = orthanc.store(files[done:size])
                done = size
                row: dict[str, Any] = {"size": size, "store_per_s": round(rate, 1)}
                for name, query in searches(size).items():
                    row[name] = latency(orthanc, query, args.requests)
                orthanc.stop()
                row["start_to_search_s"] = round(orthanc.start(), 2)
                row["index_mb"] = round(index_bytes(settings, cluster) / 1e6, 1)
                rows.append(row)
                print(kind, row, flush=True)
        finally:
            orthanc.stop()
    return rows


def bench(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Write the files once, then store them into each index and measure."""
    files = write_files(workdir / "files", max(args.sizes))
    load_before = os.getloadavg()
    results: dict[str, Any] = {"machine": machine(), "clients": CLIENTS,
                               "requests": args.requests}  # fmt: skip
    for kind in INDEXES:
        results[kind] = measure_index(kind, files, args, workdir)
    results["load_average"] = {"before": load_before, "after": os.getloadavg()}
    return results


def render(results: dict[str, Any]) -> str:
    """The markdown summary, with PostgreSQL / SQLite ratios."""
    rows = []
    names = list(searches(results["sqlite"][0]["size"]))
    for lite, pg in zip(results["sqlite"], results["postgresql"], strict=True):
        rows.append([f"{lite['size']:,}", "store/s", lite["store_per_s"], pg["store_per_s"],
                     _ratio(pg["store_per_s"], lite["store_per_s"])])  # fmt: skip
        for name in names:
            rows.append(["", f"QIDO {name} p50 / p95 ms",
                         f"{lite[name]['p50']} / {lite[name]['p95']}",
                         f"{pg[name]['p50']} / {pg[name]['p95']}",
                         _ratio(pg[name]["p95"], lite[name]["p95"])])  # fmt: skip
        rows.append(["", "start to first search, s", lite["start_to_search_s"],
                     pg["start_to_search_s"],
                     _ratio(pg["start_to_search_s"], lite["start_to_search_s"])])  # fmt: skip
        rows.append(["", "index on disk, MB", lite["index_mb"], pg["index_mb"],
                     _ratio(pg["index_mb"], lite["index_mb"])])  # fmt: skip
    m = results["machine"]
    load = results["load_average"]
    return "\n".join([
        "# Orthanc's index: SQLite vs PostgreSQL (bench/orthanc_index.py)",
        "",
        f"Orthanc 1.10.1 alone, configured by the appliance; PostgreSQL 15 with "
        "orthanc-postgresql 4.0 on a server of the bench's own on loopback (fsync on, "
        "defaults otherwise), same machine, same files in the same order. "
        f"{m['nproc']} cores, {m['cpu_model']}; load average before "
        f"{load['before'][0]:.1f}, after {load['after'][0]:.1f}. Store: REST POST with "
        f"{results['clients']} clients; QIDO: {results['requests']} requests each after a "
        "warm-up. Ratio: PostgreSQL / SQLite (store: above 1 is faster; the rest: below 1 "
        "is better).",
        "",
        markdown_table(("instances", "figure", "SQLite", "PostgreSQL", "ratio"), rows),
    ])  # fmt: skip


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "-"


def main(argv: list[str] | None = None) -> int:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="2000,5000,10000",
                        type=lambda text: sorted(int(n) for n in text.split(",")))  # fmt: skip
    parser.add_argument("--requests", type=int, default=30, help="per search figure")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--out", type=Path,
                        default=REPO / "bench" / "results" / "orthanc_index.json")  # fmt: skip
    return run_in_workdir("orthanc-index", parser.parse_args(argv), bench, render)


if __name__ == "__main__":
    sys.exit(main())
