"""Packaging figures: bundle and tarball size, build time, first start from the bundle.

Usage: ``python bench/packaging.py [--rounds 3] [--test] [--keep] [--out FILE.json]``

1. Builds from this checkout with ``packaging/build.py`` (PyInstaller bundle, tarball,
   .deb, lintian) into the temporary folder, and records each step's time and each
   output's size. Goal (issue): tarball 150 MB or less.
2. Unpacks the tarball, then ``--rounds`` times starts ``neuronova run`` from it on a
   fresh data home (so the first start makes the secrets, the TLS certificate, the
   database and the first admin) with an empty environment (``env -i``, no PATH to a
   Python, nginx or Orthanc of the host: the bundle's own are used), on free 127.0.0.1
   ports, and times it until ``/api/health`` answers 200; then once more on the same home
   (a restart). Goal (issue): first start to healthy in 10 s or less.
3. With ``--test``, runs ``tests/packaging/test_packaging.py`` (the bare-system proof: debootstrap
   root, dpkg install, use, upgrade, purge) and records its duration, since CI runs it.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance.config import DECLARED
from appliance.supervise.ports import PORT_SETTINGS
from bench.harness import (
    LOOPBACK,
    REPO,
    answers,
    free_port,
    machine,
    markdown_table,
    run_in_workdir,
    stop_process,
    verdict,
    wait_for,
)

TARBALL_GOAL_MB = 150
FIRST_START_GOAL_S = 10.0
START_TIMEOUT = 120.0


def load_build() -> Any:
    """``packaging/build.py`` as a module (``packaging/`` is not a package)."""
    spec = importlib.util.spec_from_file_location("nn_build", REPO / "packaging" / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def settings_env(home: Path) -> dict[str, str]:
    """An empty environment but the data home and loopback settings on free ports."""
    env_var = {declared.path: declared.env_var for declared in DECLARED}
    values: dict[str, object] = {"network.bind": LOOPBACK, "web.redirect_to_https": "false"}
    for path in PORT_SETTINGS:
        values[path] = free_port()
    env = {env_var[path]: str(value) for path, value in values.items()}
    return {"NEURONOVA_HOME": str(home), **env}


def time_start(executable: Path, home: Path, log: Path) -> float:
    """Start ``neuronova run`` with ``env -i``; seconds until /api/health answers 200."""
    env = settings_env(home)
    url = f"http://{LOOPBACK}:{env['NEURONOVA_WEB_HTTP_PORT']}/api/health"
    started = time.monotonic()
    with open(log, "ab") as out:
        process = subprocess.Popen(
            ["env", "-i", *(f"{k}={v}" for k, v in env.items()), str(executable), "run"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for(lambda: process.poll() is None and answers(url), START_TIMEOUT, "health")
        return time.monotonic() - started
    finally:
        stop_process(process)


def unpack(tarball: Path, into: Path) -> tuple[Path, float]:
    """Extract the tarball; (the bundle's ``neuronova`` executable, seconds taken)."""
    started = time.monotonic()
    with tarfile.open(tarball) as tar:
        tar.extractall(into, filter="tar")
        top = tar.getnames()[0].split("/")[0]
    return into / top / "neuronova", time.monotonic() - started


def run_test() -> dict[str, Any]:
    """Run the bare-system test as CI does; its duration and outcome."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/packaging/test_packaging.py"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    last = (done.stdout.strip().splitlines() or [""])[-1]
    return {"seconds": time.monotonic() - started, "passed": done.returncode == 0, "summary": last}


def bench(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Build, unpack, time the starts (and the test); every figure."""
    # nginx's workers run as `nobody` when this runs as root: let them into the folder.
    os.chmod(workdir, 0o711)
    build = load_build()
    version = build.source_version()
    report = build.build(version, workdir / "dist")
    executable, unpack_s = unpack(Path(report.tarball), workdir / "unpacked")
    first = []
    for index in range(args.rounds):
        home = workdir / f"home{index}"
        first.append(time_start(executable, home, workdir / "run.log"))
    restart = time_start(executable, workdir / "home0", workdir / "run.log")
    results: dict[str, Any] = {
        "version": version,
        "sizes_bytes": report.sizes,
        "build_seconds": report.seconds,
        "lintian_errors": report.lintian,
        "unpack_seconds": unpack_s,
        "first_start_seconds": first,
        "first_start_median": statistics.median(first),
        "restart_seconds": restart,
        "machine": machine(),
    }
    if args.test:
        results["test"] = run_test()
    results["goals"] = {
        "tarball_at_most_150_mb": report.sizes["tarball"] <= TARBALL_GOAL_MB * 1e6,
        "first_start_at_most_10_s": results["first_start_median"] <= FIRST_START_GOAL_S,
    }
    return results


def render_markdown(results: dict[str, Any]) -> str:
    """The tables of ``bench/results/packaging.md``."""
    sizes, seconds, goals = results["sizes_bytes"], results["build_seconds"], results["goals"]
    mb = {name: f"{value / 1e6:.1f} MB" for name, value in sizes.items()}
    rows = [
        ("bundle (unpacked folder)", mb["bundle"], ""),
        ("tarball (.tar.gz)", mb["tarball"],
         f"<= {TARBALL_GOAL_MB} MB: {verdict(goals['tarball_at_most_150_mb'])}"),
        (".deb (gzip)", mb["deb"], ""),
    ]  # fmt: skip
    steps = [(name, f"{value:.1f} s") for name, value in seconds.items()]
    first = ", ".join(f"{s:.2f}" for s in results["first_start_seconds"])
    starts = [
        ("first start to healthy (fresh home), median", f"{results['first_start_median']:.2f} s",
         f"<= {FIRST_START_GOAL_S:.0f} s: {verdict(goals['first_start_at_most_10_s'])}"),
        ("first start, each round", f"{first} s", ""),
        ("restart on the same home", f"{results['restart_seconds']:.2f} s", ""),
        ("unpacking the tarball", f"{results['unpack_seconds']:.1f} s", ""),
    ]  # fmt: skip
    if "test" in results:
        test = results["test"]
        outcome = "passed" if test["passed"] else f"**FAILED** ({test['summary']})"
        label = "tests/packaging/test_packaging.py (CI)"
        starts.append((label, f"{test['seconds']:.0f} s", outcome))
    node = results["machine"]
    return "\n\n".join([
        f"# Packaging (neuronova {results['version']})",
        f"Measured on {node['nproc']} cores ({node['cpu_model']}), kernel {node['kernel']}, "
        "by `python bench/packaging.py` (see bench/README.md).",
        markdown_table(("output", "size", "goal"), rows),
        "Build steps (`bash packaging/build.sh`; lintian errors: "
        f"{len(results['lintian_errors'])}). The bundle step is PyInstaller with its per-user "
        "cache (`~/.cache/pyinstaller`) as this machine had it; the first build on a machine "
        "takes longer:",
        markdown_table(("step", "time"), steps),
        "Starting the unpacked tarball with `env -i` (no PATH: no Python, nginx or Orthanc "
        "of the host is found; tests/packaging/test_packaging.py proves it on a bare root):",
        markdown_table(("what", "time", "goal / outcome"), starts),
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run in a temporary folder, write the JSON and markdown results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/packaging.json"))
    parser.add_argument("--rounds", type=int, default=3, help="first starts to time")
    parser.add_argument("--test", action="store_true",
                        help="also time tests/packaging/test_packaging.py")  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return run_in_workdir("packaging", args, bench, render_markdown)


if __name__ == "__main__":
    sys.exit(main())
