"""Operations figures: an online backup while a series arrives, an incremental one, restore.

Usage: ``python bench/operations.py [--slices 300] [--keep] [--out FILE.json]``

1. Starts the appliance, pushes one series of ``--slices`` slices with storescu and waits
   until every instance is stored.
2. Starts storescu sending a second series of ``--slices`` slices and, at once,
   ``neuronova backup DEST``; times the backup, then ``neuronova backup verify DEST``
   (inconsistencies = the problems verify reports: every object decrypted and re-hashed,
   every Orthanc instance of the manifest with its file).
3. Waits until the second series is stored and its JPEGs written (the queue writes them
   after storing), backs up again (it catches up), pushes 10 new instances, waits the same
   way and backs up once more: the bytes that last backup copied, by part of the home
   (Orthanc files, frame files and JPEGs, databases), against the whole repository.
4. Times ``neuronova restore DEST --home NEW`` into an empty home, starts the restored
   appliance on ports of its own and compares every instance's stored file (Orthanc REST)
   and every frame file with the original's, byte for byte.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance.backup.repository import Repository
from appliance.config import load_settings
from appliance.store.orthanc import OrthancStore
from appliance.supervise.nginx_user import let_workers_reach, worker_user
from appliance.supervise.ports import PORT_SETTINGS
from bench.harness import (
    LOOPBACK,
    REPO,
    Appliance,
    finish_storescu,
    free_port,
    machine,
    markdown_table,
    run_in_workdir,
    running,
    start_storescu,
    storescu,
    wait_for,
)
from bench.synthetic import make_slices, write_series

NEW_INSTANCES = 10


def neuronova(appliance_env: dict[str, str], *args: str) -> float:
    """Run ``python -m appliance ARGS``; its wall seconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "appliance", *args], env=appliance_env, check=True,
                   capture_output=True, text=True, timeout=1800)  # fmt: skip
    return time.perf_counter() - start


def backup(appliance: Appliance, dest: Path) -> dict[str, Any]:
    """``neuronova backup DEST`` on the appliance's home; its status record plus wall time."""
    seconds = neuronova(appliance.env, "backup", str(dest), "--home", str(appliance.home))
    record = json.loads(appliance.layout.backup_status_file.read_text())
    return record | {"wall_seconds": round(seconds, 2)}


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def wait_stored(appliance: Appliance, count: int) -> None:
    wait_for(lambda: appliance.journal_states().get("stored", 0) >= count, 900,
             f"{count} instances to be stored", 0.25)  # fmt: skip


def wait_prepared(appliance: Appliance, count: int) -> None:
    """Until ``count`` instances are stored with their JPEGs written (nothing left queued)."""

    def prepared() -> int:
        rows = appliance.journal_rows("state, images_at")
        return sum(1 for state, images_at in rows if state == "stored" and images_at)

    wait_for(lambda: prepared() >= count, 900, f"{count} instances stored with their JPEGs",
             0.25)  # fmt: skip


def new_bytes_by_part(dest: Path, key: bytes) -> dict[str, int]:
    """Bytes of the objects the newest snapshot added, by part of the home."""
    repo = Repository(dest, key)
    older, newest = (repo.manifest(name) for name in repo.snapshot_names()[-2:])
    held = {e["sha256"] for part in ("files", "databases", "orthanc") for e in older[part].values()}
    parts = {"orthanc": newest["orthanc"].items(), "databases": newest["databases"].items(),
             "frames": ((k, e) for k, e in newest["files"].items() if k.startswith("frames/")),
             "other files": ((k, e) for k, e in newest["files"].items()
                             if not k.startswith("frames/"))}  # fmt: skip
    return {part: sum(e["size"] for _k, e in items if e["sha256"] not in held)
            for part, items in parts.items()}  # fmt: skip


def restored_appliance(home: Path) -> Appliance:
    """The restored home on free ports of its own (its settings file keeps the old ones)."""
    ports = PORT_SETTINGS
    values: dict[str, object] = {"network.bind": LOOPBACK, "web.redirect_to_https": False}
    settings = load_settings(home, values | {p: free_port() for p in ports}, environ={})
    let_workers_reach(worker_user(settings), Path(tempfile.gettempdir()), [home])
    return Appliance(settings)


def compare(original: Appliance, restored: Appliance, sop_uids: list[str]) -> dict[str, int]:
    """How many stored files and frame files are byte-identical after the restore."""
    before, after = OrthancStore(original.settings), OrthancStore(restored.settings)
    same_files = sum(before.fetch(sop) == after.fetch(sop) for sop in sop_uids)
    old, new = original.layout.frames_dir, restored.layout.frames_dir
    frames = [p.relative_to(old) for p in old.rglob("*") if p.is_file()]
    same_frames = sum((new / rel).is_file() and (new / rel).read_bytes() == (old / rel).read_bytes()
                      for rel in frames)  # fmt: skip
    return {"instances": len(sop_uids), "identical_files": same_files,
            "frame_files": len(frames), "identical_frame_files": same_frames}  # fmt: skip


def bench(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Run the three measurements; the results as a dict."""
    first = write_series(workdir / "first", make_slices(args.slices))
    second = write_series(workdir / "second", make_slices(args.slices, seed=11))
    extra = write_series(workdir / "extra", make_slices(NEW_INSTANCES, seed=12))
    dest = workdir / "backup"
    original = Appliance.create(workdir / "home")
    with running(original):
        original.push(first.files)
        sending = start_storescu(second.files, original.settings.dicom.port, "NEURONOVA")
        during = backup(original, dest)
        still_sending = sending.poll() is None
        finish_storescu(sending)
        key = original.settings.layout.backup_key_file
        verify_seconds = neuronova(original.env, "backup", "verify", str(dest),
                                   "--key-file", str(key))  # fmt: skip
        wait_prepared(original, 2 * args.slices)
        catch_up = backup(original, dest)
        storescu(extra.files, original.settings.dicom.port, "NEURONOVA")
        wait_prepared(original, 2 * args.slices + NEW_INSTANCES)
        incremental = backup(original, dest)
        incremental_parts = new_bytes_by_part(dest, key.read_bytes().strip())
        new_bytes = extra.total_bytes
        restore_seconds = neuronova(original.env, "restore", str(dest), "--home",
                                    str(workdir / "restored"), "--key-file", str(key))  # fmt: skip
        restored = restored_appliance(workdir / "restored")
        with running(restored):
            same = compare(original, restored, [*first.sop_uids, *second.sop_uids,
                                                *extra.sop_uids])  # fmt: skip
    return {
        "slices": args.slices,
        "machine": machine(),
        "during": during
        | {
            "storescu_still_sending_after": still_sending,
            "verify_seconds": round(verify_seconds, 2),
            "inconsistencies": 0,
        },  # verify ran with check=True: exit 0
        "catch_up": catch_up,
        "incremental": incremental
        | {
            "new_instances": NEW_INSTANCES,
            "new_part10_bytes": new_bytes,
            "repository_bytes": tree_bytes(dest),
            "new_bytes_by_part": incremental_parts,
        },
        "restore": {"seconds": round(restore_seconds, 2), **same},
    }


def render_markdown(r: dict[str, Any]) -> str:
    """The tables of bench/results/operations.md."""
    m, d, c, i, rs = r["machine"], r["during"], r["catch_up"], r["incremental"], r["restore"]
    mb = lambda n: f"{n / 1e6:.2f} MB"  # noqa: E731
    parts = ", ".join(f"{part} {mb(n)}" for part, n in i["new_bytes_by_part"].items())
    rows = [
        ["backup while a second series arrives", f"{d['wall_seconds']} s",
         f"{d['instances']} instances, {d['files']} files, {mb(d['bytes_copied'])} copied; "
         f"storescu still sending when it ended: {d['storescu_still_sending_after']}"],
        ["verify of that backup", f"{d['verify_seconds']} s",
         f"inconsistencies: {d['inconsistencies']} (every checksum, every instance's file)"],
        ["backup catching up (second series stored)", f"{c['wall_seconds']} s",
         f"{c['instances']} instances, {mb(c['bytes_copied'])} copied"],
        [f"incremental after {i['new_instances']} new instances", f"{i['wall_seconds']} s",
         f"{mb(i['bytes_copied'])} copied ({parts}; the {i['new_instances']} objects as sent: "
         f"{mb(i['new_part10_bytes'])}; repository: {mb(i['repository_bytes'])})"],
        ["restore into an empty home", f"{rs['seconds']} s",
         f"{rs['identical_files']}/{rs['instances']} stored files and "
         f"{rs['identical_frame_files']}/{rs['frame_files']} frame files byte-identical"],
    ]  # fmt: skip
    return "\n".join([
        f"# Operations: backup and restore ({r['slices']}-slice series)",
        "",
        f"Measured on {m['nproc']} cores ({m['cpu_model']}), kernel {m['kernel']}, by "
        "`python bench/operations.py` (see bench/README.md). Each backup is "
        "`neuronova backup DEST` in a process of its own, into one repository, encrypted "
        "(AES-256-GCM, docs/operations.md). Every "
        "backup copies the app and queue databases whole (SQLite's online backup); files "
        "and Orthanc instances it already holds are not copied again. The catch-up and the "
        "incremental backups start once every instance is stored with its JPEGs (written "
        "by the queue after storing; before, the next backup copied them).",
        "",
        markdown_table(["step", "time", "what"], rows),
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, write the JSON and markdown files and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "operations.json")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if not 2 <= args.slices <= 2000:
        parser.error("--slices must be between 2 and 2000")
    return run_in_workdir("operations", args, bench, render_markdown)


if __name__ == "__main__":
    sys.exit(main())
