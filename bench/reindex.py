"""The PostgreSQL twin of a cached scale home: Orthanc's index rebuilt in PostgreSQL.

Usage: ``python bench/reindex.py --size 250000 [--cache DIR] [--early]``

``bench/scale.py`` keeps one cached home per size and index, filled by the same recipe,
so the SQLite home and the PostgreSQL home of a size hold the same instances: the same
HTJ2K files in Orthanc's storage, the same app database, frames and previews. Only
Orthanc's index differs. Filling a PostgreSQL home through the receiver costs about
45 s per 1,000 instances on this machine (the transcode is the same work again), so
this makes the PostgreSQL home of a size from the finished SQLite home of that size:

1. a new PostgreSQL server beside the home (``bench/pg.py``), Orthanc's role and
   database made as ``docs/install-clinic.md`` makes them;
2. Orthanc alone, configured by the appliance for that index, and every file of the
   SQLite home's Orthanc storage POSTed to it (``/instances``), so Orthanc indexes each
   as it indexes what the pipeline stores;
3. the rest of the home (app database, frames, previews, secrets, settings) copied;
4. a check that Orthanc's count of instances equals the journal's stored instances.

The home is then ``r<recipe>-postgresql-<size>`` in the cache, as if filled, with one
fill step named ``reindexed`` holding the seconds this took. With ``--early`` it posts
what the SQLite home being filled (its ``.partial`` folder) has stored so far and stops;
the posted files are listed in ``posted.txt``, so any later run, early or final, posts
only the rest (a run a stop interrupted goes on the same way).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance.config import CONFIG_FILENAME, Settings, load_settings
from appliance.home import init_home
from appliance.store.orthanc_index import ensure_password
from bench.harness import free_port
from bench.orthanc_index import Orthanc
from bench.pg import PgServer, pg_server
from bench.scale import DEFAULT_CACHE, FILLING, Entry, count_rows, entry_path

POSTED = "posted.txt"  # in the .partial folder: storage files Orthanc on PostgreSQL holds
SECONDS = "reindex-seconds.txt"  # in the .partial folder: posting time over all runs
CLIENTS = 3
SETTLE_S = 120.0  # a fill under way: files written this recently may still be written
CHUNK = 2000
DICOM_MAGIC_AT, DICOM_MAGIC = 128, b"DICM"


def storage_files(home: Path, settled_before: float) -> Iterator[Path]:
    """The DICOM files in ``home``'s Orthanc storage (``xx/yy/<uuid>``) last written
    before the time ``settled_before`` (one Orthanc may still be writing is left for the
    next run), in name order."""
    for path in sorted((home / "orthanc" / "storage").glob("*/*/*")):
        if path.stat().st_mtime >= settled_before:
            continue
        with path.open("rb") as f:
            f.seek(DICOM_MAGIC_AT)
            if f.read(4) == DICOM_MAGIC:
                yield path


def settings_for(home: Path, server: PgServer) -> Settings:
    """The home's settings with Orthanc's index in ``server``, on a free internal port."""
    values = server.settings() | {"internal.orthanc_port": free_port()}
    return load_settings(home, values, environ={})


def post_all(orthanc: Orthanc, files: list[Path], record: Path) -> float:
    """POST ``files`` with :data:`CLIENTS` clients, ``CHUNK`` at a time, appending each
    chunk's names to ``record`` once Orthanc accepted them; seconds taken."""
    started = time.monotonic()

    def post(path: Path) -> None:
        response = orthanc.session.post(
            f"{orthanc.base}/instances", data=path.read_bytes(), timeout=120
        )
        response.raise_for_status()

    with ThreadPoolExecutor(CLIENTS) as pool:
        for first in range(0, len(files), CHUNK):
            chunk = files[first : first + CHUNK]
            list(pool.map(post, chunk))
            with record.open("a") as f:
                f.writelines(f"{p.name}\n" for p in chunk)
            rate = (first + len(chunk)) / (time.monotonic() - started)
            print(f"reindex: {first + len(chunk)}/{len(files)} posted, {rate:.0f}/s", flush=True)
    return time.monotonic() - started


def _posted(partial: Path) -> set[str]:
    record = partial / POSTED
    return set(record.read_text().split()) if record.is_file() else set()


def _add_seconds(partial: Path, seconds: float) -> float:
    path = partial / SECONDS
    total = (float(path.read_text()) if path.is_file() else 0.0) + seconds
    path.write_text(f"{total:.1f}\n")
    return total


@contextlib.contextmanager
def orthanc_on_postgresql(partial: Path) -> Iterator[tuple[Orthanc, Settings]]:
    """Orthanc of ``partial``'s home on the PostgreSQL server beside it, both made on the
    first run (a home of its own: the app's files come at the end, :func:`copy_app_parts`)."""
    created = not (partial / "pg").is_dir()
    partial.mkdir(parents=True, exist_ok=True)
    with pg_server(partial / "pg", create=created) as server:
        settings = settings_for(partial / "home", server)
        if created:
            init_home(settings)
            ensure_password(settings)
            server.create_owner(settings.orthanc_db_password_path.read_text().strip())
        orthanc = Orthanc(settings)
        orthanc.start()
        try:
            yield orthanc, settings
        finally:
            orthanc.stop()


def copy_app_parts(source: Path, home: Path, keep: Path) -> None:
    """``home`` made the ``source`` home but for Orthanc's folder and the settings file
    (``home``'s name the PostgreSQL index) and the file ``keep`` (the PostgreSQL
    password, which the SQLite home lacks): everything else of ``home`` goes first, so
    that nothing of the throwaway home (e.g. its migration record) outlives the copy."""
    saved, spared = keep.read_bytes(), ("orthanc", CONFIG_FILENAME)
    for part in home.iterdir():
        if part.name not in spared:
            shutil.rmtree(part) if part.is_dir() and not part.is_symlink() else part.unlink()
    for part in source.iterdir():
        if part.name not in spared:
            subprocess.run(["cp", "-a", str(part), str(home / part.name)], check=True)
    keep.parent.mkdir(parents=True, exist_ok=True)
    keep.write_bytes(saved)
    keep.chmod(0o600)


def instances_in(orthanc: Orthanc) -> int:
    response = orthanc.session.get(f"{orthanc.base}/statistics", timeout=60)
    response.raise_for_status()
    return int(response.json()["CountInstances"])


def reindex(cache: Path, size: int, early: bool) -> Entry | None:
    """Post what the SQLite home of ``size`` holds (``early``: so far) into the PostgreSQL
    home of ``size``; unless ``early``, finish that home. The finished entry, if any."""
    target = entry_path(cache, size, "postgresql")
    if (target / "scale.json").is_file():
        print(f"reindex: {target} is already there", flush=True)
        return Entry(target)
    source = Entry(entry_path(cache, size))
    if not early and not (source.path / "scale.json").is_file():
        raise SystemExit(f"{source.path} is not filled yet: fill it with bench/scale.py first "
                         "(or use --early to post what it has so far)")  # fmt: skip
    if early and not (source.path / "scale.json").is_file():
        source = Entry(source.path.with_name(source.path.name + ".partial"))
        if not (source.path / FILLING).is_file():
            raise SystemExit(f"neither {source.path.with_suffix('')} nor its fill under way")
    partial = target.with_name(target.name + ".partial")
    with orthanc_on_postgresql(partial) as (orthanc, settings):
        done = _posted(partial)
        under_way = source.path.name.endswith(".partial")  # Orthanc may still be writing
        settled = time.time() - (SETTLE_S if under_way else 0.0)
        files = [p for p in storage_files(source.home, settled) if p.name not in done]
        print(f"reindex: {len(done)} posted before, {len(files)} to post", flush=True)
        seconds = _add_seconds(partial, post_all(orthanc, files, partial / POSTED))
        if early:
            return None
        copy_app_parts(source.home, partial / "home", settings.orthanc_db_password_path)
        stored = count_rows(settings.layout.database_file, "state = 'stored'")
        meta = finished_meta(source, instances_in(orthanc), stored, seconds)
    (partial / "scale.json").write_text(json.dumps(meta, indent=2) + "\n")
    for name in (POSTED, SECONDS):
        (partial / name).unlink()
    partial.rename(target)  # with its PostgreSQL server stopped
    print(f"reindexed {target}: {meta['fill'][-1]}", flush=True)
    return Entry(target)


def finished_meta(source: Entry, held: int, stored: int, seconds: float) -> dict[str, Any]:
    """The SQLite home's record with the reindex as its last fill step, once Orthanc on
    PostgreSQL holds (``held``) every instance the journal has ``stored``."""
    if held != stored:
        raise RuntimeError(f"Orthanc on PostgreSQL holds {held} instances, the journal {stored}")
    meta: dict[str, Any] = source.meta
    step = {
        "from": 0,
        "to": meta["instances"],
        "seconds": round(seconds, 1),
        "streams": CLIENTS,
        "path": "reindexed",
        "note": f"Orthanc's index rebuilt from {source.path.name}: its {held} stored files "
        f"POSTed to Orthanc on PostgreSQL ({CLIENTS} clients), the app's data copied "
        "(bench/reindex.py)",
    }
    return meta | {"index": "postgresql", "fill": [*meta["fill"], step]}


def main(argv: list[str] | None = None) -> int:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, required=True, help="the cached size, e.g. 250000")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument(
        "--early", action="store_true", help="post what the SQLite home holds so far, then stop"
    )
    args = parser.parse_args(argv)
    reindex(args.cache, args.size, args.early)
    return 0


if __name__ == "__main__":
    sys.exit(main())
