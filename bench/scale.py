"""An archive of years: what each operation costs as the archive grows (issue 20).

Usage: ``python bench/scale.py [--sizes 10000,50000,250000] [--index sqlite|postgresql]
[--cache DIR] [--fill-only] [--no-backups]``

Orthanc's index is SQLite in the home (the default) or, with ``--index postgresql``, a
PostgreSQL 15 server the bench makes (``bench/pg.py``) and keeps beside each cached home;
each index has its own cached homes (the same recipe, so the same instances) and its
section of the results, and the markdown compares them at the sizes both measured.
``bench/reindex.py`` makes the PostgreSQL home of a size from the SQLite home of that size
(Orthanc's index rebuilt from its stored files) faster than a second fill would.

Fill. A home is filled through the real receiver and pipeline: dcmtk's storescu sends
small synthetic images (``bench/synthetic.py``) to a running appliance in ``--streams``
associations at once, in batches, and the next batch is written while the queue works on
the last. The mix follows a fixed recipe (:func:`plan_study`): about four studies a day,
going back in time, of patients of whom some come back; CT studies of one series of
100-300 slices, MR studies of 3-5 series of 20-40 slices, CR and DX studies of 1-3
images. The filled home is kept in ``--cache`` (outside the repository) under
``r<recipe>-<size>``; a later run reuses it, and a larger size grows from the largest
smaller one. A fill ends once every instance is stored with its previews; then the home
is backed up beside it (``backup/``: the smaller home's backup grown by one backup, or a
first full one), so that measuring needs no full backup.

Measure, at each size, on a copy of the cached home (the cache stays as filled):
start-up to healthy; ``neuronova doctor``; QIDO study searches (name wildcard, patient
ID, date range + modality) and the worklist's first page through nginx with a real login
(p50/p95 over ``--requests`` requests each); FHIR ImagingStudy search; the retention dry
run (``[retention] years = 1``); a ``--probe-slices`` 512x512 CT in one association,
``--probes`` times under new UIDs on an idle appliance (C-STORE throughput, then last
Success to every instance stored, and first C-STORE to every instance stored: the
medians); once ingest is done (previews may still be pending behind it: their count is
recorded) the searches and the probe's series metadata; ``--new-instances`` new
instances, the incremental backup after them into a
copy of the cached backup (time, bytes, what the backup's own status counts), then a
backup with nothing new through a counting proxy in front of Orthanc (REST calls, from
outside the backup); disk per instance by part of the home. Results, with each figure's
growth per 10x instances between sizes, go to ``bench/results/scale.json`` and ``.md``.
``--no-backups`` skips the cached backup and the backup figures (a first full backup of
a large home takes about as long as its fill; ``bench/backup_scale.py`` measures the
incremental backup on a cached home by itself).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import json
import math
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance.config import DECLARED, load_settings
from appliance.supervise.nginx_user import let_workers_reach, worker_user
from appliance.supervise.ports import PORT_SETTINGS
from bench.counting_proxy import CountingProxy
from bench.harness import (
    LOOPBACK,
    REPO,
    Appliance,
    OthersMeter,
    background_percent,
    finish_storescu,
    free_port,
    http,
    machine,
    markdown_table,
    start_storescu,
    storescu,
    wait_for,
    write_results,
)
from bench.pg import PgServer, pg_server
from bench.synthetic import SeriesSpec, StudySpec, make_slices, write_series, write_small_study

RECIPE = 1  # bump when plan_study or the images change: cached homes are keyed by it
DEFAULT_CACHE = Path("/var/tmp/neuronova-scale")
DEFAULT_SIZES = "10000,50000,250000"
BATCH = 2000  # instances written and sent per round of the fill
STUDIES_PER_DAY = 4
LAST_DAY = dt.date(2026, 11, 30)
RETENTION_YEARS = 1
FILL_TIMEOUT = 4 * 3600.0
FILLING = "filling.json"  # in a .partial folder: the record of a fill under way
SURNAMES = (
    "SMITH",
    "JONES",
    "GARCIA",
    "MUELLER",
    "ROSSI",
    "NOVAK",
    "KOWALSKI",
    "DUBOIS",
    "SILVA",
    "TANAKA",
    "KIM",
    "NGUYEN",
    "OKAFOR",
    "HANSEN",
    "IVANOV",
    "MURPHY",
    "BERG",
    "COHEN",
    "LOPEZ",
    "SCHMIDT",
    "WAGNER",
    "MARTIN",
    "PETROV",
    "SATO",
)
GIVEN = (
    "ANNA",
    "BEN",
    "CARLA",
    "DAVID",
    "EVA",
    "FRANK",
    "GINA",
    "HUGO",
    "IRIS",
    "JONAS",
    "KARIN",
    "LEO",
    "MIA",
    "NOAH",
    "OLGA",
    "PAUL",
    "RITA",
    "SAM",
    "TINA",
    "UWE",
)
RETENTION_ENV = next(d.env_var for d in DECLARED if d.path == "retention.years")
MEASURE_TIMEOUT = 1800.0
INDEXES = ("sqlite", "postgresql")  # where Orthanc keeps its index ([orthanc] index)


# ----------------------------------------------------------------------------- recipe


def _patient(number: int) -> tuple[str, str, str, str]:
    """(name, ID, birth date, sex) of patient ``number``; the same for the same number."""
    rng = random.Random(f"patient:{number}")
    name = f"{rng.choice(SURNAMES)}^{rng.choice(GIVEN)}"
    born = dt.date(1930, 1, 1) + dt.timedelta(days=rng.randrange(80 * 365))
    return name, f"NNS{number:07d}", born.strftime("%Y%m%d"), rng.choice("FM")


def _series_of(modality: str, rng: random.Random, study_uid: str) -> list[SeriesSpec]:
    if modality == "CT":
        shapes = [(rng.randint(100, 300), 64, "Axial (synthetic)")]
    elif modality == "MR":
        shapes = [
            (rng.randint(20, 40), 64, f"Sequence {n} (synthetic)") for n in range(rng.randint(3, 5))
        ]
    else:
        shapes = [(1, 128, f"View {n} (synthetic)") for n in range(rng.randint(1, 3))]
    return [
        SeriesSpec(f"{study_uid}.{number}", modality, number, description, count, size, size)
        for number, (count, size, description) in enumerate(shapes, start=1)
    ]


def plan_study(index: int) -> tuple[StudySpec, list[SeriesSpec]]:
    """Study ``index`` of the recipe: its patient, date, modality and series."""
    rng = random.Random(f"recipe{RECIPE}:study:{index}")
    returning = index > 0 and rng.random() < 0.2
    name, patient_id, born, sex = _patient(rng.randrange(index) if returning else index)
    day = LAST_DAY - dt.timedelta(days=index // STUDIES_PER_DAY)
    roll = rng.random()
    modality = "CT" if roll < 0.35 else "MR" if roll < 0.6 else "CR" if roll < 0.8 else "DX"
    study_uid = f"2.25.{RECIPE}{index:09d}{rng.randrange(10**12):012d}"
    study = StudySpec(
        patient_name=name,
        patient_id=patient_id,
        birth_date=born,
        sex=sex,
        study_uid=study_uid,
        study_date=day.strftime("%Y%m%d"),
        study_time=f"{8 + rng.randrange(10):02d}{rng.randrange(60):02d}00",
        accession=f"NNA{index:08d}",
        description=f"{modality} study (synthetic, scale bench)",
    )
    return study, _series_of(modality, rng, study_uid)


def study_size(index: int) -> int:
    """Instances in study ``index``."""
    return sum(series.count for series in plan_study(index)[1])


# ----------------------------------------------------------------------------- appliance


def ours(path: Path) -> Path:
    """The bench's own folder above ``path`` that may be opened to nginx's workers: the
    temporary directory when ``path`` is inside it (tests), else ``path``'s parent."""
    temp = Path(tempfile.gettempdir())
    return temp if temp in path.parents else path.parent


def appliance_at(home: Path, password: str, extra: dict[str, object] | None = None) -> Appliance:
    """The appliance of an existing home on free loopback ports of its own (``extra``:
    more settings by ``section.key``, e.g. where Orthanc's index is)."""
    values: dict[str, object] = {"network.bind": LOOPBACK, "web.redirect_to_https": False}
    values |= {p: free_port() for p in PORT_SETTINGS} | (extra or {})
    settings = load_settings(home, values, environ={})
    let_workers_reach(worker_user(settings), ours(home), [home])
    return Appliance(settings, password)


def count_rows(database_file: Path, where: str, args: tuple = (), table: str = "instances") -> int:
    """``count(*)`` of an app database's ``table`` rows matching ``where`` (read-only)."""
    uri = f"file:{database_file}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=10)) as db:
        return db.execute(f"SELECT count(*) FROM {table} WHERE {where}", args).fetchone()[0]


def journal_count(
    appliance: Appliance, where: str, args: tuple = (), table: str = "instances"
) -> int:
    """``count(*)`` of the running appliance's journal rows matching ``where``."""
    return count_rows(appliance.layout.database_file, where, args, table)


def backlog(appliance: Appliance) -> int:
    """Instances received but not stored yet; failures fail the bench at once."""
    failed = journal_count(appliance, "state = 'failed'")
    if failed:
        raise RuntimeError(f"{failed} instances failed to ingest (see {appliance.home}/logs)")
    return journal_count(appliance, "state IN ('received', 'processing')")


def previews_pending(appliance: Appliance) -> int:
    """Stored instances whose previews are not written yet (they wait behind ingest)."""
    return journal_count(appliance, "state = 'stored' AND images_at IS NULL AND frames > 0")


def details_missing(appliance: Appliance) -> int:
    """Studies whose QIDO details (migration 4) the worker has not filled in yet: searches
    finding them are Orthanc's (appliance.lifecycle.study_details)."""
    return journal_count(appliance, "dicom_study_id IS NULL", table="studies")


def wait_settled(appliance: Appliance, stored: int, timeout: float = FILL_TIMEOUT) -> None:
    """Until ``stored`` instances are stored and no preview is left to write."""

    def settled() -> bool:
        return (
            backlog(appliance) == 0
            and journal_count(appliance, "state = 'stored'") >= stored
            and previews_pending(appliance) == 0
        )

    wait_for(settled, timeout, f"{stored} instances stored with their previews", 0.5)


def send_parallel(appliance: Appliance, groups: list[list[Path]]) -> None:
    """One storescu association per non-empty group, all at once."""
    port, ae = appliance.settings.dicom.port, appliance.settings.dicom.ae_title
    running = [start_storescu(files, port, ae) for files in groups if files]
    for process in running:
        finish_storescu(process, timeout=FILL_TIMEOUT)


# ----------------------------------------------------------------------------- fill


@dataclass
class Entry:
    """A cached filled home: ``<cache>/r<recipe>-[<index>-]<size>/{home, backup, pg,
    scale.json}`` (``pg``: the PostgreSQL server of Orthanc's index, if it is there)."""

    path: Path

    @property
    def home(self) -> Path:
        return self.path / "home"

    @property
    def index(self) -> str:
        return "postgresql" if self.path.name.startswith(f"r{RECIPE}-postgresql-") else "sqlite"

    @property
    def backup(self) -> Path:
        return self.path / "backup"

    @property
    def meta(self) -> dict[str, Any]:
        return json.loads((self.path / "scale.json").read_text())

    def save(self, meta: dict[str, Any]) -> None:
        (self.path / "scale.json").write_text(json.dumps(meta, indent=2) + "\n")


def entry_prefix(index: str) -> str:
    """Cached homes' names: ``r1-10000`` (SQLite index, as ever), ``r1-postgresql-10000``."""
    return f"r{RECIPE}-" if index == "sqlite" else f"r{RECIPE}-{index}-"


def entry_path(cache: Path, size: int, index: str = "sqlite") -> Path:
    return cache / f"{entry_prefix(index)}{size}"


def largest_below(cache: Path, size: int, index: str = "sqlite") -> Entry | None:
    """The cached home of the largest size up to ``size`` (same recipe and index), if any."""
    found = []
    for path in cache.glob(f"{entry_prefix(index)}*"):
        number = path.name.removeprefix(entry_prefix(index))
        if number.isdigit() and int(number) <= size and (path / "scale.json").is_file():
            found.append((int(number), path))
    return Entry(max(found)[1]) if found else None


@contextlib.contextmanager
def orthanc_index(folder: Path, index: str, create: bool = False) -> Iterator[PgServer | None]:
    """Orthanc's index for the home in ``folder``: SQLite, in the home (``None``), or the
    PostgreSQL server in ``folder/pg``, started (``create``: made) for the block."""
    if index == "sqlite":
        yield None
        return
    with pg_server(folder / "pg", create=create) as server:
        yield server


def settings_of(server: PgServer | None) -> dict[str, object]:
    return {} if server is None else server.settings()


def write_batch(
    directory: Path, first: int, room: int, streams: int
) -> tuple[list[list[Path]], int]:
    """Write whole studies from ``first`` until at least ``room`` (at most BATCH) instances;
    their files in ``streams`` groups of about equal size, and the next study's index."""
    groups: list[list[Path]] = [[] for _ in range(streams)]
    index, written = first, 0
    while written < min(room, BATCH):
        study, series = plan_study(index)
        files = write_small_study(directory / str(index), study, series, seed=index)
        min(groups, key=len).extend(files)
        written += len(files)
        index += 1
    return groups, index


def fill(
    appliance: Appliance,
    meta: dict[str, Any],
    size: int,
    workdir: Path,
    streams: int,
    resumed: bool = False,
) -> dict[str, Any]:
    """Send recipe studies from ``meta['studies']`` on until the home holds ``size``
    instances, all stored with previews; the step's record (instances, seconds: of this
    run only when it went on with an interrupted fill)."""
    start, studies, instances = time.perf_counter(), meta["studies"], meta["instances"]
    load_before = os.getloadavg()[0]
    while instances < size:
        batch_dir = workdir / f"batch-{studies}"
        groups, next_study = write_batch(batch_dir, studies, size - instances, streams)
        wait_for(lambda: backlog(appliance) < BATCH, FILL_TIMEOUT, "the queue to catch up", 0.5)
        send_parallel(appliance, groups)
        shutil.rmtree(batch_dir)
        instances += sum(map(len, groups))
        studies = next_study
        elapsed = time.perf_counter() - start
        print(f"fill: {instances} instances sent ({studies} studies), {elapsed:.0f} s", flush=True)
    wait_settled(appliance, instances)
    seconds = time.perf_counter() - start
    step = {
        "from": meta["instances"],
        "to": instances,
        "seconds": round(seconds, 1),
        "streams": streams,
        "path": "receiver",  # storescu -> receiver -> queue -> Orthanc, like a modality
        "load_average_before_after": [round(load, 1) for load in (load_before, os.getloadavg()[0])],
    }
    if resumed:
        step["note"] = "went on with a fill a stop interrupted: seconds of this run only"
    meta.update(studies=studies, instances=instances)
    meta["fill"].append(step)
    return step


def filled(
    cache: Path, size: int, streams: int, index: str = "sqlite", backups: bool = True
) -> Entry:
    """The cached home of ``size`` instances, filling (or growing a smaller one, or going on
    with a fill a stop interrupted) if needed; with its backup unless not ``backups``."""
    target = Entry(entry_path(cache, size, index))
    if (target.path / "scale.json").is_file():
        if backups and not target.backup.is_dir():  # filled without its backup
            add_backup(target, largest_below(cache, size - 1, index))
        return target
    base = largest_below(cache, size, index)
    partial = target.path.with_name(target.path.name + ".partial")
    resumed = (partial / FILLING).is_file()
    if not resumed:
        _start_partial(partial, base, index)
    with (
        orthanc_index(partial, index, create=base is None and not resumed) as server,
        tempfile.TemporaryDirectory(dir=cache) as workdir,
    ):
        appliance, meta = _filling(partial, base, server)
        with running_quietly(appliance):
            if resumed:
                meta = _resume_point(appliance, meta)
            step = fill(appliance, meta, size, Path(workdir), streams, resumed)
            if backups:
                meta["backup"] = cache_backup(appliance, meta, partial / "backup", base)
    Entry(partial).save(meta | {"size": size, "index": index})
    (partial / FILLING).unlink()
    partial.rename(target.path)
    added = step["to"] - step["from"]
    rate = f" ({step['seconds'] / added * 1000:.1f} s per 1000 instances)" if added else ""
    print(f"filled {target.path}: {step}{rate}", flush=True)
    return target


def _start_partial(partial: Path, base: Entry | None, index: str) -> None:
    """A new ``.partial`` folder: a copy of ``base``'s home (and index), if any."""
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    if base is not None:
        for part in ("home", "pg") if index != "sqlite" else ("home",):
            subprocess.run(["cp", "-a", str(base.path / part), str(partial / part)], check=True)


def _filling(
    partial: Path, base: Entry | None, server: PgServer | None
) -> tuple[Appliance, dict[str, Any]]:
    """The appliance filling ``partial``'s home and its record, kept in ``FILLING`` so
    that a fill a stop interrupted goes on where it was (:func:`_resume_point`)."""
    home, record = partial / "home", partial / FILLING
    if record.is_file():
        meta = json.loads(record.read_text())
        return appliance_at(home, meta["password"], settings_of(server)), meta
    if base is not None:
        appliance, meta = appliance_at(home, base.meta["password"], settings_of(server)), base.meta
    else:
        appliance = Appliance.create(home, ours=ours(home), extra=settings_of(server))
        if server is not None:
            server.create_owner(appliance.settings.orthanc_db_password_path.read_text().strip())
        meta = {"recipe": RECIPE, "password": appliance.password, "studies": 0, "instances": 0}
        meta["fill"] = []
    record.write_text(json.dumps(meta, indent=2) + "\n")
    return appliance, meta


def _resume_point(appliance: Appliance, meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` moved on to what the interrupted fill sent: from the first study the
    journal lacks instances of (a batch cut short), counting what it holds."""
    studies = meta["studies"]
    while journal_count(appliance, "study_uid = ?", (plan_study(studies)[0].study_uid,)):
        studies += 1
    while studies > meta["studies"] and journal_count(
        appliance, "study_uid = ?", (plan_study(studies - 1)[0].study_uid,)
    ) < study_size(studies - 1):
        studies -= 1  # sent in part: sent again whole (the same instances replace theirs)
    instances = journal_count(appliance, "1 = 1")
    print(f"fill: going on from study {studies} ({instances} instances held)", flush=True)
    return meta | {"studies": studies, "instances": instances}


def cache_backup(
    appliance: Appliance, meta: dict[str, Any], dest: Path, base: Entry | None
) -> dict[str, Any]:
    """Back the filled home up into ``dest``: the smaller home's backup copied and grown by
    one backup (incremental), or a first full one. Measuring then needs no full backup."""
    grown_from = 0
    if base is not None and base.backup.is_dir():
        subprocess.run(["cp", "-a", str(base.backup), str(dest)], check=True)
        grown_from = base.meta["instances"]
    record = backup(appliance, dest)
    print(f"backup of the filled home: {record}", flush=True)
    return record | {"grown_from": grown_from, "instances_added": meta["instances"] - grown_from}


def add_backup(entry: Entry, base: Entry | None) -> None:
    """Give a cached home that has none its backup (see :func:`cache_backup`)."""
    meta, partial = entry.meta, entry.path / "backup.partial"
    shutil.rmtree(partial, ignore_errors=True)
    with (
        orthanc_index(entry.path, entry.index) as server,
        running_quietly(appliance_at(entry.home, meta["password"], settings_of(server))) as app,
    ):
        meta["backup"] = cache_backup(app, meta, partial, base)
    partial.rename(entry.backup)
    entry.save(meta)


@contextlib.contextmanager
def running_quietly(appliance: Appliance) -> Iterator[Appliance]:
    """Start ``appliance`` and always stop it."""
    try:
        yield appliance.start()
    finally:
        appliance.stop()


# ----------------------------------------------------------------------------- measure


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50 and p95 (nearest rank) and max, in milliseconds."""
    ordered = sorted(samples)

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]

    return {
        "p50_ms": round(rank(0.5) * 1000, 2),
        "p95_ms": round(rank(0.95) * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
        "requests": len(ordered),
    }


def timed_get(
    url: str, headers: dict[str, str], count: int, matches: Callable[[bytes], int]
) -> dict[str, Any]:
    """GET ``url`` ``count`` times (after one warm-up); latency percentiles and matches."""
    status, _, body = http(url, headers=headers, timeout=60)
    if status != 200:
        raise RuntimeError(f"GET {url}: HTTP {status} {body[:300]!r}")
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        status, _, body = http(url, headers=headers, timeout=60)
        samples.append(time.perf_counter() - start)
        if status != 200:
            raise RuntimeError(f"GET {url}: HTTP {status} {body[:300]!r}")
    return percentiles(samples) | {"matches": matches(body)}


def search_figures(
    appliance: Appliance, token: str, meta: dict[str, Any], count: int, probe: tuple[str, str]
) -> dict[str, Any]:
    """QIDO, worklist, series metadata and FHIR searches through nginx with the token."""
    study, _ = plan_study(meta["studies"] // 2)
    surname = study.patient_name.split("^")[0]
    day = dt.datetime.strptime(study.study_date, "%Y%m%d").date()
    span = f"{day - dt.timedelta(days=15):%Y%m%d}-{day + dt.timedelta(days=15):%Y%m%d}"
    qido = f"{appliance.url}/api/pacs/dicom-web"
    auth = {"Authorization": f"Bearer {token}"}
    dicom_json = auth | {"Accept": "application/dicom+json"}
    fhir_json = auth | {"Accept": "application/fhir+json"}
    listed = lambda body: len(json.loads(body))  # noqa: E731
    items = lambda body: len(json.loads(body)["items"])  # noqa: E731
    entries = lambda body: len(json.loads(body).get("entry", []))  # noqa: E731
    qido_queries = {
        "qido_name_wildcard": (
            f"{qido}/studies?PatientName={surname[:3]}*&limit=100",
            dicom_json,
            listed,
        ),
        "qido_patient_id": (f"{qido}/studies?PatientID={study.patient_id}", dicom_json, listed),
        "qido_date_modality": (
            f"{qido}/studies?StudyDate={span}&ModalitiesInStudy=CT",
            dicom_json,
            listed,
        ),
    }
    # The same searches answered by Orthanc, as before the app answered study searches: an
    # empty StudyTime key (universal matching: it is returned anyway) is one the app leaves
    # to Orthanc (appliance.store.study_search).
    orthanc_queries = {
        f"{name}_orthanc": (f"{url}&StudyTime=", headers, matches)
        for name, (url, headers, matches) in qido_queries.items()
    }
    queries = {
        **qido_queries,
        **orthanc_queries,
        "worklist_page": (f"{appliance.url}/api/studies?limit=50", auth, items),
        "series_metadata": (
            f"{qido}/studies/{probe[0]}/series/{probe[1]}/metadata",
            dicom_json,
            listed,
        ),
        "fhir_by_patient": (
            f"{appliance.url}/api/fhir/ImagingStudy?patient.identifier={study.patient_id}",
            fhir_json,
            entries,
        ),
        "fhir_modality_started": (
            f"{appliance.url}/api/fhir/ImagingStudy?modality=CT&started="
            f"ge{day - dt.timedelta(days=15)}&started="
            f"le{day + dt.timedelta(days=15)}",
            fhir_json,
            entries,
        ),
    }
    return {
        name: timed_get(url, headers, count, matches)
        for name, (url, headers, matches) in queries.items()
    }


def run_cli(
    appliance: Appliance, *args: str, env: dict[str, str] | None = None, ok: tuple[int, ...] = (0,)
) -> tuple[float, subprocess.CompletedProcess]:
    """``python -m appliance ARGS --home HOME`` timed; fails unless its exit code is in ``ok``."""
    command = [sys.executable, "-m", "appliance", *args, "--home", str(appliance.home)]
    start = time.perf_counter()
    done = subprocess.run(
        command,
        env={**appliance.env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=MEASURE_TIMEOUT,
    )
    seconds = time.perf_counter() - start
    if done.returncode not in ok:
        raise RuntimeError(
            f"neuronova {' '.join(args)} exited {done.returncode}: "
            f"{(done.stdout + done.stderr)[-2000:]}"
        )
    return seconds, done


def doctor_figures(appliance: Appliance) -> dict[str, Any]:
    """``neuronova doctor --json``: time, overall status and each check's status."""
    seconds, done = run_cli(appliance, "doctor", "--json", ok=(0, 1, 2))
    report = json.loads(done.stdout)
    checks = {c["name"]: c["status"] for c in report.get("checks", [])}
    return {
        "seconds": round(seconds, 2),
        "checks_ms": report.get("took_ms"),
        "exit": done.returncode,
        "checks": checks,
        "each_check_ms": {c["name"]: c.get("took_ms") for c in report.get("checks", [])},
    }


def retention_figures(appliance: Appliance) -> dict[str, Any]:
    """``neuronova retention --dry-run`` with ``[retention] years = 1``."""
    seconds, done = run_cli(
        appliance, "retention", "--dry-run", env={RETENTION_ENV: str(RETENTION_YEARS)}
    )
    listed = int(done.stdout.split(" ", 1)[0])
    return {"seconds": round(seconds, 2), "expired_studies": listed, "years": RETENTION_YEARS}


def probe_figures(appliance: Appliance, probes: list[Probe]) -> dict[str, Any]:
    """Each probe CT in one association, one after the other on an idle appliance: its
    C-STORE rate, last Success to all stored, first C-STORE to all stored; the medians."""
    runs = []
    for probe in probes:
        wait_for(lambda: backlog(appliance) == 0 and previews_pending(appliance) == 0,
                 MEASURE_TIMEOUT, "the appliance to be idle before a probe", 0.2)  # fmt: skip
        runs.append(one_probe(appliance, probe))
    medians = {
        name: round(statistics.median(run[name] for run in runs), 2)
        for name in ("cstore_instances_per_s", "success_to_viewable_s", "first_to_viewable_s")
    }
    return {"instances": len(probes[0].files), "runs": runs} | medians


def one_probe(appliance: Appliance, probe: Probe) -> dict[str, float]:
    """One probe CT in one association: C-STORE rate, then last Success to all stored."""
    sent = storescu(probe.files, appliance.settings.dicom.port, appliance.settings.dicom.ae_title)
    after = time.perf_counter()
    wait_for(
        lambda: (
            journal_count(appliance, "study_uid = ? AND state = 'stored'", (probe.study_uid,))
            >= len(probe.files)
        ),
        MEASURE_TIMEOUT,
        "the probe CT to be stored",
        0.05,
    )
    viewable = time.perf_counter() - after
    return {
        "cstore_seconds": round(sent, 2),
        "cstore_instances_per_s": round(len(probe.files) / sent, 1),
        "success_to_viewable_s": round(viewable, 2),
        "first_to_viewable_s": round(sent + viewable, 2),
    }


def backup(appliance: Appliance, dest: Path) -> dict[str, Any]:
    """``neuronova backup DEST``: wall time and the backup's own status record."""
    seconds, _ = run_cli(appliance, "backup", str(dest))
    record = json.loads(appliance.layout.backup_status_file.read_text())
    keep = ("files", "instances", "bytes_copied", "seconds", "snapshot", "files_examined",
            "folders_checked", "full_walk", "orthanc_asked", "orthanc_listing",
            "manifest_bytes", "manifest_read")  # fmt: skip
    return {"wall_seconds": round(seconds, 2)} | {k: record.get(k) for k in keep}


def add_instances(
    appliance: Appliance, meta: dict[str, Any], count: int, workdir: Path, streams: int
) -> int:
    """Send recipe studies after the filled ones until ``count`` new instances (the last
    study cut short); wait until stored with previews. How many were sent."""
    directory, files, index = workdir / "new", [], meta["studies"]
    while len(files) < count:
        study, series = plan_study(index)
        files += write_small_study(directory / str(index), study, series, seed=index)
        index += 1
    files = files[:count]
    stored = journal_count(appliance, "state = 'stored'")
    send_parallel(appliance, [files[i::streams] for i in range(streams)])
    wait_settled(appliance, stored + len(files), MEASURE_TIMEOUT)
    shutil.rmtree(directory)
    return len(files)


@contextlib.contextmanager
def orthanc_port_seen_as(appliance: Appliance, port: int) -> Iterator[None]:
    """CLI commands run meanwhile reach Orthanc at ``port``: while the appliance runs they
    take its internal ports from ``run/ports.json`` (not the environment), so it names
    ``port`` for that long (the running services keep theirs)."""
    path = appliance.layout.ports_file
    saved = path.read_bytes()
    path.write_text(json.dumps(json.loads(saved) | {"orthanc_port": port}))
    try:
        yield
    finally:
        path.write_bytes(saved)


def backup_figures(
    appliance: Appliance, meta: dict[str, Any], workdir: Path, new: int, streams: int
) -> dict[str, Any]:
    """``new`` instances, the incremental backup after them (into a copy of the cached
    home's backup), then a backup with nothing new through the counting proxy."""
    dest = workdir / "backup"
    added = add_instances(appliance, meta, new, workdir, streams)
    incremental = backup(appliance, dest) | {"new_instances": added}
    with (
        CountingProxy(appliance.settings.internal.orthanc_port) as proxy,
        orthanc_port_seen_as(appliance, proxy.port),
    ):
        unchanged = backup(appliance, dest)
        calls = proxy.summary()
    return {
        "at_fill": meta["backup"],
        "incremental": incremental,
        "unchanged_via_proxy": unchanged | {"orthanc_rest_calls": calls},
    }


def disk_figures(home: Path, instances: int, server: PgServer | None = None) -> dict[str, Any]:
    """Bytes on disk (allocated blocks) per instance, by part of the home (Orthanc's index
    in PostgreSQL: the server's data folder)."""
    parts = {
        "orthanc_storage": 0,
        "orthanc_index": 0,
        "frames": 0,
        "previews": 0,
        "series_metadata": 0,
        "app_databases": 0,
        "other": 0,
    }
    files = 0
    for root, _dirs, names in os.walk(home):
        rel = Path(root).relative_to(home)
        for name in names:
            size = os.lstat(os.path.join(root, name)).st_blocks * 512
            parts[_part_of(rel, name)] += size
            files += 1
    if server is not None:
        parts["orthanc_index"] += server.size_bytes()
    per = {k: round(v / max(instances, 1)) for k, v in parts.items()}
    return {
        "bytes_per_instance": per,
        "total_bytes": sum(parts.values()),
        "files": files,
        "files_per_instance": round(files / max(instances, 1), 2),
    }


def _part_of(rel: Path, name: str) -> str:
    top = rel.parts[0] if rel.parts else ""
    if top == "orthanc":
        return "orthanc_index" if "index" in rel.parts else "orthanc_storage"
    if top == "frames":
        if name.endswith(".jpg"):
            return "previews"
        return "frames" if name.isdigit() else "series_metadata"
    return "app_databases" if top == "db" else "other"


def measure(entry: Entry, args: argparse.Namespace, probes: list[Probe]) -> dict[str, Any]:
    """Every figure at the size of ``entry``, on a copy of its home."""
    meta = entry.meta
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=args.cache)))
        workdir.chmod(0o711)  # PostgreSQL runs as nobody under root: it passes through
        parts = ("home", "pg") if entry.index != "sqlite" else ("home",)
        for part in (*parts, "backup") if args.backups else parts:
            subprocess.run(["cp", "-a", str(entry.path / part), str(workdir / part)], check=True)
        server = stack.enter_context(orthanc_index(workdir, entry.index))
        disk = disk_figures(workdir / "home", meta["instances"], server)
        appliance = appliance_at(workdir / "home", meta["password"], settings_of(server))
        before = background_percent(2.0)
        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        appliance.start()
        startup = time.perf_counter() - start
        assert appliance.process is not None
        meter = OthersMeter([appliance.process.pid]).start()
        try:
            figures = {
                "instances": meta["instances"],
                "studies": meta["studies"],
                "fill": meta["fill"],
                "startup_to_healthy_s": round(startup, 2),
                "disk": disk,
                "doctor": doctor_figures(appliance),
                "retention_dry_run": retention_figures(appliance),
                "probe": probe_figures(appliance, probes),
            }
            wait_for(lambda: backlog(appliance) == 0, MEASURE_TIMEOUT, "ingest to finish", 0.5)
            figures["previews_pending_at_searches"] = previews_pending(appliance)
            wait_for(lambda: details_missing(appliance) == 0, MEASURE_TIMEOUT,
                     "the worker to fill in older studies' search details", 0.5)  # fmt: skip
            token = appliance.login()
            ids = (probes[0].study_uid, probes[0].series_uid)
            figures["searches"] = search_figures(appliance, token, meta, args.requests, ids)
            if args.backups:
                figures["backup"] = backup_figures(
                    appliance, meta, workdir, args.new_instances, args.streams
                )
        finally:
            appliance.stop()
        figures["load"] = {
            "others_cpu_percent_before": before,
            "others_cpu_percent_during": meter.percent(),
            "load_average_before_after": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        }
        figures["index"] = entry.index
    return figures


# ----------------------------------------------------------------------------- report


def headline(size: dict[str, Any]) -> dict[str, float]:
    """The figures whose growth is tracked, by name."""
    out = {
        "startup_to_healthy_s": size["startup_to_healthy_s"],
        "doctor_s": size["doctor"]["seconds"],
        "doctor_checks_ms": size["doctor"]["checks_ms"],
        "retention_dry_run_s": size["retention_dry_run"]["seconds"],
        "cstore_instances_per_s": size["probe"]["cstore_instances_per_s"],
        "success_to_viewable_s": size["probe"]["success_to_viewable_s"],
    }
    if "first_to_viewable_s" in size["probe"]:  # not in results from before --probes
        out["first_cstore_to_viewable_s"] = size["probe"]["first_to_viewable_s"]
    for name, figure in size["searches"].items():
        out[f"{name}_p50_ms"], out[f"{name}_p95_ms"] = figure["p50_ms"], figure["p95_ms"]
    b = size.get("backup")
    out |= (
        {}
        if b is None
        else {
            "backup_at_fill_s_per_1000_added": round(
                b["at_fill"]["wall_seconds"] / max(b["at_fill"]["instances_added"], 1) * 1000, 2
            ),
            "backup_incremental_s": b["incremental"]["wall_seconds"],
            "backup_incremental_bytes": b["incremental"]["bytes_copied"],
            "backup_incremental_files": b["incremental"]["files"],
            "backup_unchanged_s_via_proxy": b["unchanged_via_proxy"]["wall_seconds"],
            "backup_unchanged_rest_calls": b["unchanged_via_proxy"]["orthanc_rest_calls"]["total"],
        }
    )
    for part, value in size["disk"]["bytes_per_instance"].items():
        out[f"disk_{part}_bytes_per_instance"] = value
    return out


def growth(sizes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each headline figure's growth per 10x instances between consecutive sizes."""
    steps = []
    for small, large in itertools.pairwise(sizes):
        decades = math.log10(large["instances"] / small["instances"])
        a, b = headline(small), headline(large)
        ratios = {
            name: round((b[name] / a[name]) ** (1 / decades), 2)
            for name in a
            if a[name] and b.get(name) and decades > 0
        }
        steps.append({"from": small["instances"], "to": large["instances"], "per_10x": ratios})
    return steps


def fill_steps(sizes: list[dict[str, Any]]) -> list[list[Any]]:
    """One row per fill step of the largest home (a larger home holds the smaller's steps)."""
    rows = []
    for step in sizes[-1]["fill"] if sizes else []:
        added = step["to"] - step["from"]
        per = round(step["seconds"] / added * 1000, 1) if added else "-"  # previews only
        load = step.get("load_average_before_after", "-")
        rows.append([f"{step['from']:,}->{step['to']:,}", step.get("path", "receiver"),
                     step["streams"], step["seconds"], per, load,
                     step.get("note", "")])  # fmt: skip
    return rows


PROBES_HEADING = "### Each probe CT (the figures above are their medians)"
PROBE_COLUMNS = ["instances", "probe", "C-STORE/s", "last Success to viewable s",
                 "first C-STORE to viewable s"]  # fmt: skip


def index_section(index: str, run: dict[str, Any]) -> list[str]:
    """The figures, growth and fill of one Orthanc index's run."""
    sizes = run["sizes"]
    header = [
        "figure",
        *(f"{s['instances']:,}" for s in sizes),
        *(f"x per 10x ({g['from']:,}->{g['to']:,})" for g in run["growth"]),
    ]
    names = list(headline(sizes[0])) if sizes else []
    rows = [
        [
            name,
            *(headline(s).get(name, "-") for s in sizes),
            *(g["per_10x"].get(name, "-") for g in run["growth"]),
        ]
        for name in names
    ]
    load = [
        [f"{s['instances']:,}", s["studies"], s["load"]["others_cpu_percent_before"],
         s["load"]["others_cpu_percent_during"], s["load"].get("load_average_before_after", "-")]
        for s in sizes
    ]  # fmt: skip
    probes = [
        [f"{s['instances']:,}", number + 1, p["cstore_instances_per_s"],
         p["success_to_viewable_s"], p["first_to_viewable_s"]]
        for s in sizes
        for number, p in enumerate(s["probe"].get("runs", []))
    ]  # fmt: skip
    probe_lines = [PROBES_HEADING, "", markdown_table(PROBE_COLUMNS, probes), ""] if probes else []
    return [
        f"## Orthanc's index: {index} (`--index {index} --sizes {run['args']['sizes']}`)",
        "",
        markdown_table(header, rows),
        "",
        *probe_lines,
        "### Machine load while measuring",
        "",
        markdown_table(
            ["instances", "studies", "others' CPU % before", "during", "load average before/after"],
            load,
        ),
        "",
        "### Fill steps of the largest home",
        "",
        markdown_table(
            ["instances", "path", "streams", "seconds", "s per 1000", "load average", "note"],
            fill_steps(sizes),
        ),
        "",
    ]


def comparison(indexes: dict[str, Any]) -> list[str]:
    """PostgreSQL's figures over SQLite's at the sizes both measured (same recipe: the
    homes hold the same instances)."""
    if not {"sqlite", "postgresql"} <= set(indexes):
        return []
    lite = {s["instances"]: headline(s) for s in indexes["sqlite"]["sizes"]}
    pg = {s["instances"]: headline(s) for s in indexes["postgresql"]["sizes"]}
    common = sorted(set(lite) & set(pg))
    if not common:
        return []
    names = [name for name in lite[common[0]] if name in pg[common[0]]]
    rows = [
        [name, *(round(pg[n][name] / lite[n][name], 2) if lite[n][name] else "-" for n in common)]
        for name in names
    ]
    return [
        "## PostgreSQL over SQLite (same homes; below 1 = PostgreSQL better for times)",
        "",
        markdown_table(["figure", *(f"{n:,}" for n in common)], rows),
        "",
    ]


def render_markdown(r: dict[str, Any]) -> str:
    """bench/results/scale.md: each index's figures and growth, then their comparison."""
    m = r["machine"]
    intro = [
        "# Scale: an archive of years (issue 20)",
        "",
        f"Measured on {m['nproc']} cores ({m['cpu_model']}), {m['memory_gib']} GiB, by "
        f"`python bench/scale.py` (recipe {RECIPE}; see the module docstring). Each size is "
        "measured on a copy of a home filled through the real receiver and pipeline. Growth "
        "is (figure at the larger size / at the smaller) ^ (1 / decades of instances): 1.0 = "
        "flat, 10 = linear in the archive. Latencies are p50/p95 over the run's requests "
        "after one warm-up, through nginx with a real login. The backup with nothing new runs "
        "through a counting proxy in front of Orthanc (its time includes the proxy); `files` "
        "is the backup's own count. The backup at fill is the one taken when the home was "
        "filled (a full one for the first size, else the smaller size's backup grown by one "
        "backup), per 1000 instances it added.",
        "",
    ]
    sections = [line for index, run in r["indexes"].items() for line in index_section(index, run)]
    return "\n".join(intro + sections + comparison(r["indexes"]))


def merged(out: Path, index: str, run: dict[str, Any]) -> dict[str, Any]:
    """The results file with this run as ``index``'s, other indexes' runs kept (the same
    recipe only: another recipe's homes are not comparable)."""
    results = {"machine": machine(), "recipe": RECIPE, "indexes": {}}
    if out.is_file():
        earlier = json.loads(out.read_text())
        if earlier.get("recipe") == RECIPE:
            results["indexes"] = earlier.get("indexes", {})
    results["indexes"][index] = run
    return results


# ----------------------------------------------------------------------------- main


@dataclass(frozen=True)
class Probe:
    files: list[Path]
    study_uid: str
    series_uid: str


def probe_series(cache: Path, slices: int) -> Probe:
    """The 512x512 phantom CT of ``slices`` slices, written once into the cache."""
    directory = cache / f"probe-{slices}"
    index = directory / "probe.json"
    if not index.is_file():
        shutil.rmtree(directory, ignore_errors=True)
        series = write_series(directory, make_slices(slices))
        index.write_text(json.dumps({"study": series.study_uid, "series": series.series_uid}))
    uids = json.loads(index.read_text())
    return Probe(sorted(directory.glob("*.dcm")), uids["study"], uids["series"])


def relabelled(probe: Probe, count: int, workdir: Path) -> list[Probe]:
    """``probe`` and ``count - 1`` copies of it under new study, series and SOP Instance
    UIDs (written in ``workdir``), so that each is a new series to the appliance."""
    copies = [probe]
    for number in range(1, count):
        directory = workdir / f"probe-{number}"
        directory.mkdir()
        study_uid, series_uid, files = generate_uid(), generate_uid(), []
        for path in probe.files:
            ds = pydicom.dcmread(path)
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            files.append(directory / path.name)
            ds.save_as(files[-1], enforce_file_format=True)
        copies.append(Probe(files, study_uid, series_uid))
    return copies


def parse_sizes(text: str) -> list[int]:
    sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    if not sizes or sizes[0] < 100 or sizes[-1] > 2_000_000:
        raise argparse.ArgumentTypeError("sizes must be between 100 and 2,000,000 instances")
    return sizes


def main(argv: list[str] | None = None) -> int:
    """Fill (or reuse) each size, measure it, write the JSON and markdown, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        type=parse_sizes,
        default=parse_sizes(DEFAULT_SIZES),
        help=f"instances, comma-separated (default {DEFAULT_SIZES})",
    )
    parser.add_argument(
        "--cache", type=Path, default=DEFAULT_CACHE, help="where filled homes are kept between runs"
    )
    parser.add_argument("--streams", type=int, default=2, help="storescu associations at once")
    parser.add_argument("--probe-slices", type=int, default=300)
    parser.add_argument(
        "--probes", type=int, default=3, help="probe CTs per size, one after the other (medians)"
    )
    parser.add_argument("--new-instances", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=40, help="per search figure")
    parser.add_argument("--fill-only", action="store_true", help="fill the cache, measure nothing")
    parser.add_argument(
        "--no-backups",
        dest="backups",
        action="store_false",
        help="neither back a filled home up nor measure backups (a full backup of a large "
        "home takes long; bench/backup_scale.py measures the incremental one on its own)",
    )
    parser.add_argument(
        "--index",
        choices=INDEXES,
        default="sqlite",
        help="Orthanc's index: sqlite (in the home) or postgresql (a PostgreSQL 15 server the "
        "bench makes and keeps with each cached home; apt-get install postgresql-15 "
        "orthanc-postgresql). Each index has its own homes and its section of the results",
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "scale.json")
    args = parser.parse_args(argv)
    if not (
        1 <= args.streams <= 8
        and 2 <= args.probe_slices <= 2000
        and 1 <= args.probes <= 10
        and 1 <= args.new_instances <= 20000
        and 1 <= args.requests <= 1000
    ):
        parser.error(
            "--streams 1-8, --probe-slices 2-2000, --probes 1-10, --new-instances 1-20000, "
            "--requests 1-1000"
        )
    args.cache.mkdir(parents=True, exist_ok=True)
    entries = [
        filled(args.cache, size, args.streams, args.index, args.backups) for size in args.sizes
    ]
    if args.fill_only:
        for entry in entries:
            print(f"{entry.path}: {entry.meta['instances']} instances, fill {entry.meta['fill']}")
        return 0
    with tempfile.TemporaryDirectory(dir=args.cache, prefix="probes-") as copies:
        probe = probe_series(args.cache, args.probe_slices)
        probes = relabelled(probe, args.probes, Path(copies))  # the same at every size
        sizes = [measure(entry, args, probes) for entry in entries]
    run = {
        "args": {
            "sizes": ",".join(map(str, args.sizes)),
            "streams": args.streams,
            "probe_slices": args.probe_slices,
            "probes": args.probes,
            "new_instances": args.new_instances,
            "requests": args.requests,
            "backups": args.backups,
        },
        "sizes": sizes,
        "growth": growth(sizes),
    }
    results = merged(args.out, args.index, run)
    write_results(args.out, results, render_markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
