"""The incremental backup on a large home: what a day's new instances cost (issue 20).

Usage: ``flock /tmp/neuronova-bench.lock nice -n 5 python bench/backup_scale.py
[--size 10000] [--new-instances 1000] [--label after]``

On a copy (made under ``--workdir``, never inside the cache) of the home ``bench/scale.py``
filled and cached (``--cache``/r1-<size>; the cache is only read), with the appliance
running: a first backup (full: the reference of the same run), ``--new-instances`` new
recipe instances through storescu, the receiver and the pipeline, the incremental backup
after them, then a backup with nothing new.
Every backup is ``neuronova backup`` through ``bench/counting_proxy.py`` in front of
Orthanc, so its REST calls are counted from outside the code measured (the proxy's time
is in every figure, alike for whatever code runs). Files examined and instances asked
about come from the backup's own status record (absent before incremental backups).
Run it once on the code before a change (``--label before``, from a checkout of it) and
once after: the markdown shows every label's results found beside the JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.counting_proxy import CountingProxy
from bench.harness import (
    REPO,
    OthersMeter,
    background_percent,
    machine,
    markdown_table,
    write_results,
)
from bench.scale import (
    DEFAULT_CACHE,
    Entry,
    add_instances,
    appliance_at,
    backup,
    entry_path,
    orthanc_port_seen_as,
    running_quietly,
)

RESULTS = REPO / "bench" / "results"
ROWS = ("wall_seconds", "bytes_copied", "manifest_bytes", "manifest_read", "orthanc_rest_calls",
        "files_examined", "folders_checked", "orthanc_asked", "files", "instances")  # fmt: skip


def counted_backup(appliance, dest: Path) -> dict[str, Any]:
    """``neuronova backup DEST`` through the counting proxy: its figures and REST calls."""
    with (
        CountingProxy(appliance.settings.internal.orthanc_port) as proxy,
        orthanc_port_seen_as(appliance, proxy.port),
    ):
        figures = backup(appliance, dest)
        calls = proxy.summary()
    return figures | {"orthanc_rest_calls": calls["total"], "calls_by_path": calls["by_path"]}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """The three backups on a copy of the cached home."""
    entry = Entry(entry_path(args.cache, args.size))
    meta = entry.meta
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="backup-scale-") as tmp:
        workdir = Path(tmp)
        subprocess.run(["cp", "-a", str(entry.home), str(workdir / "home")], check=True)
        appliance = appliance_at(workdir / "home", meta["password"])
        before = background_percent(2.0)
        with running_quietly(appliance):
            assert appliance.process is not None
            meter = OthersMeter([appliance.process.pid]).start()
            dest = workdir / "backup"
            full = counted_backup(appliance, dest)
            added = add_instances(appliance, meta, args.new_instances, workdir, args.streams)
            incremental = counted_backup(appliance, dest) | {"new_instances": added}
            unchanged = counted_backup(appliance, dest)
            during = meter.percent()
    return {
        "label": args.label,
        "instances": meta["instances"],
        "full": full,
        "incremental": incremental,
        "unchanged": unchanged,
        "incremental_over_full_seconds": round(
            incremental["wall_seconds"] / max(full["wall_seconds"], 0.01), 3
        ),
        "load": {"others_cpu_percent_before": before, "others_cpu_percent_during": during},
    }


def render(results: dict[str, Any]) -> str:
    """One table per label (``results["runs"]``): the three backups' figures."""
    parts = ["# The incremental backup on a large home (issue 20)", "",
             "`python bench/backup_scale.py` (see its docstring): every backup through the "
             "counting proxy in front of Orthanc; `-` where the code measured did not "
             "report the figure (before incremental backups).", ""]  # fmt: skip
    for r in results["runs"]:
        rows = [[name, *(r[kind].get(name, "-") for kind in ("full", "incremental", "unchanged"))]
                for name in ROWS]  # fmt: skip
        parts += [f"## {r['label']}: {r['instances']:,} instances, "
                  f"{r['incremental']['new_instances']} new; others' CPU % before "
                  f"{r['load']['others_cpu_percent_before']}, during "
                  f"{r['load']['others_cpu_percent_during']}", "",
                  markdown_table(["figure", "full (first)", "incremental", "nothing new"], rows),
                  ""]  # fmt: skip
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=10000, help="the cached home's size")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("/var/tmp"),
        help="where the home's copy and its backup are made (removed after)",
    )
    parser.add_argument("--new-instances", type=int, default=1000)
    parser.add_argument("--streams", type=int, default=2, help="storescu associations at once")
    parser.add_argument("--label", default="after", help="name of the code measured")
    args = parser.parse_args(argv)
    if not (1 <= args.new_instances <= 20000 and 1 <= args.streams <= 8):
        parser.error("--new-instances 1-20000, --streams 1-8")
    if not (entry_path(args.cache, args.size) / "scale.json").is_file():
        parser.error(f"no cached home of {args.size}: fill it with bench/scale.py --fill-only")
    if not args.label.isidentifier():
        parser.error("--label: letters, digits and _ only")
    result = measure(args) | {"machine": machine()}
    out = RESULTS / f"backup_scale-{args.label}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    found = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("backup_scale-*.json"))]
    write_results(RESULTS / "backup_scale.json", {"runs": found}, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
