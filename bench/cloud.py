"""The cloud profile on a real container engine: image size and ``compose up`` to healthy.

Usage: ``python bench/cloud.py [--rounds 3] [--keep] [--out FILE.json]``

No image registry is reachable here, so the base images are made locally (design.md
fact 12): ``debian:bookworm-slim`` is a ``debootstrap --variant=minbase bookworm`` root
imported with ``podman import``, and the Redis image is the same with Debian's
``redis-server`` included. PostgreSQL's image (Orthanc's index) is built with
``packaging/postgres/Dockerfile`` on a root with Debian's ``postgresql-15`` installed
into it (no default cluster, no service started). The roots are kept in
``/var/cache/neuronova-test/`` and the images in podman's store, so later runs reuse
them. Then the bundle is built (``packaging/build.py``), the appliance image from it with
``packaging/Dockerfile``, and ``compose.yaml`` is brought up ``--rounds`` times with
podman-compose on free 127.0.0.1 ports, timed until every container's health check passes
(podman runs health checks from systemd timers, which this machine lacks, so they are run
here with ``podman healthcheck run``). Each round ends with ``down -v``.

``tests/packaging/test_cloud_profile.py`` uses the same machinery (:class:`Profile`).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import REPO, free_port, machine, markdown_table, run_in_workdir
from bench.packaging import load_build

BASE_IMAGE = "debian:bookworm-slim"
REDIS_IMAGE = "localhost/neuronova-test/redis:bookworm"
ROOT_CACHE = Path("/var/cache/neuronova-test")
MIRROR = "http://deb.debian.org/debian"
REDIS_CMD = '["/usr/bin/redis-server"]'
POSTGRES_BASE_IMAGE = "localhost/neuronova-test/postgres-base:bookworm"
POSTGRES_IMAGE = "localhost/neuronova-test/postgres:bookworm"
POSTGRES_PACKAGE = "postgresql-15"
HEALTHY_TIMEOUT = 180.0
SERVICES = ("redis", "postgres", "orthanc", "app", "worker", "receiver", "nginx")
VOLUMES = ("home", "queue", "index", "dbsecret")


def podman(*args: str, timeout: float = 300, check: bool = True) -> str:
    """Run ``podman ARGS``; its stdout. Raises ``RuntimeError`` with its output on failure."""
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args)} failed: {result.stderr[-2000:]}")
    return result.stdout


def bookworm_root(name: str, include: Sequence[str] = ()) -> Path:
    """A cached ``debootstrap --variant=minbase bookworm`` root (with ``include``).

    Made under a lock: the package test and the cloud profile may ask for the same root
    at once (two test workers on a new machine), and each would otherwise remove the
    other's half-made copy.
    """
    root = ROOT_CACHE / f"bookworm-{name}"
    ROOT_CACHE.mkdir(parents=True, exist_ok=True)
    with open(ROOT_CACHE / f"bookworm-{name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "etc" / "debian_version").exists():
            _debootstrap(root, include)
    return root


def _debootstrap(root: Path, include: Sequence[str]) -> None:
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    extra = [f"--include={','.join(include)}"] if include else []
    made = subprocess.run(
        ["debootstrap", "--variant=minbase", *extra, "bookworm", str(partial), MIRROR],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if made.returncode != 0:
        raise RuntimeError(f"debootstrap failed: {made.stdout[-2000:]}{made.stderr[-2000:]}")
    partial.rename(root)


def import_root(root: Path, tag: str, changes: Sequence[str] = ()) -> None:
    """``tar -C root . | podman import - tag`` unless podman already has ``tag``."""
    if subprocess.run(["podman", "image", "exists", tag]).returncode == 0:
        return
    tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
    flags = [arg for change in changes for arg in ("--change", change)]
    imported = subprocess.run(
        ["podman", "import", *flags, "-", tag], stdin=tar.stdout, capture_output=True, timeout=600
    )
    tar.wait()
    if imported.returncode != 0:
        raise RuntimeError(f"podman import {tag} failed: {imported.stderr[-2000:]!r}")


def ensure_base_images() -> None:
    """The Debian base image, the Redis image and PostgreSQL's, made locally the first time."""
    import_root(bookworm_root("minbase"), BASE_IMAGE)
    import_root(bookworm_root("redis", ["redis-server"]), REDIS_IMAGE, [f"CMD {REDIS_CMD}"])
    import_root(postgres_root(), POSTGRES_BASE_IMAGE)
    if subprocess.run(["podman", "image", "exists", POSTGRES_IMAGE]).returncode != 0:
        podman("build", "-q", "--build-arg", f"BASE={POSTGRES_BASE_IMAGE}",
               "-t", POSTGRES_IMAGE, str(REPO / "packaging" / "postgres"))  # fmt: skip


def postgres_root() -> Path:
    """The minbase root with ``postgresql-15`` installed by apt in a chroot, cached.

    Not ``debootstrap --include``: its maintainer scripts would make a default cluster
    and may start it; here a ``policy-rc.d`` forbids starting services and
    ``createcluster.d`` turns the default cluster off, as packaging/postgres/Dockerfile does.
    """
    root = ROOT_CACHE / "bookworm-postgres"
    with open(ROOT_CACHE / "bookworm-postgres.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "usr" / "lib" / "postgresql" / "15" / "bin" / "postgres").exists():
            _install_into_copy(bookworm_root("minbase"), root, POSTGRES_PACKAGE)
    return root


def _install_into_copy(base: Path, root: Path, package: str) -> None:
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    subprocess.run(["cp", "-a", str(base), str(partial)], check=True, timeout=600)
    policy = partial / "usr" / "sbin" / "policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    conf = partial / "etc" / "postgresql-common" / "createcluster.d"
    conf.mkdir(parents=True)
    (conf / "neuronova.conf").write_text("create_main_cluster = false\n")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", "--no-install-recommends", package],
                    ["apt-get", "clean"]):  # fmt: skip
        done = subprocess.run(["chroot", str(partial), *command], env=env, capture_output=True,
                              text=True, timeout=900)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} in a chroot failed: {done.stderr[-2000:]}")
    policy.unlink()
    for listing in (partial / "var" / "lib" / "apt" / "lists").glob("*_*"):
        listing.unlink()
    partial.rename(root)


def check_engine(workdir: Path) -> None:
    """Build and run one tiny container on a network of its own, as the profile will.

    Raises ``RuntimeError`` naming what to install or configure: a container engine that
    cannot do this fails every container of the profile, deep inside ``compose up``.
    """
    name = f"nn-engine-check-{os.getpid()}"
    (workdir / "Containerfile").write_text(f"FROM {BASE_IMAGE}\nRUN true\n")
    try:
        podman("build", "-q", "-t", f"localhost/{name}", str(workdir), timeout=300)
        podman("network", "create", "--internal", name)
        podman("run", "--rm", "--network", name, f"localhost/{name}", "true", timeout=120)
    except RuntimeError as exc:
        raise RuntimeError(
            f"the container engine cannot run a container on a network: {exc}\n"
            "Run `bash scripts/setup.sh --test`: podman needs runc, netavark, aardvark-dns and "
            "iptables (netavark runs it), and /etc/containers/containers.conf from that script"
        ) from None
    finally:
        podman("network", "rm", "-f", name, check=False)
        podman("rmi", "-f", f"localhost/{name}", check=False)


def build_bundle(out: Path) -> Path:
    """The PyInstaller bundle of this checkout (``packaging/build.py``), in ``out``."""
    return load_build().build_bundle(out / "bundle")


def build_image(bundle: Path, tag: str) -> float:
    """Build the appliance image from ``bundle`` with packaging/Dockerfile; seconds taken."""
    started = time.monotonic()
    podman(
        "build", "-q", "-f", str(REPO / "packaging" / "Dockerfile"),
        "--build-arg", f"BASE={BASE_IMAGE}", "--build-arg", f"BUNDLE={bundle.name}",
        "-t", tag, str(bundle.parent), timeout=600,
    )  # fmt: skip
    return time.monotonic() - started


def image_bytes(tag: str) -> int:
    """The size podman reports for an image (its layers, base included)."""
    return int(podman("image", "inspect", "--format", "{{.Size}}", tag).strip())


@dataclass
class Profile:
    """compose.yaml brought up with podman-compose as project ``name`` on free ports.

    The compose file is copied into ``workdir`` so no ``.env`` of the checkout applies;
    settings come from ``env`` (podman-compose reads variables from its environment).
    """

    name: str
    workdir: Path
    image: str
    extra_env: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "compose.yaml", self.workdir / "compose.yaml")
        self.ports = {
            "HTTP_PORT": free_port(),
            "HTTPS_PORT": free_port(),
            "DICOM_PORT": free_port(),
        }
        self.env = {
            **os.environ,
            "NEURONOVA_IMAGE": self.image,
            "REDIS_IMAGE": REDIS_IMAGE,
            "POSTGRES_IMAGE": POSTGRES_IMAGE,
            "REDIS_PASSWORD": secrets.token_hex(16),
            "BIND": "127.0.0.1",
            **{key: str(port) for key, port in self.ports.items()},
            **self.extra_env,
        }

    def compose(self, *args: str, timeout: float = 300) -> str:
        """Run ``podman-compose -p NAME ARGS`` in the work folder; its output."""
        result = subprocess.run(
            ["podman-compose", "-p", self.name, *args],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(f"podman-compose {' '.join(args)} failed: {result.stderr[-3000:]}")
        return result.stdout + result.stderr

    def containers(self, service: str | None = None) -> list[str]:
        """Names of the project's containers (of one service), running or not."""
        label = f"label=io.podman.compose.project={self.name}"
        names = podman("ps", "-a", "--filter", label, "--format", "{{.Names}}").split()
        if service is None:
            return sorted(names)
        return sorted(n for n in names if n.startswith(f"{self.name}_{service}_"))

    def healthy(self, container: str) -> bool:
        """Whether the container's health check passes now."""
        check = ["podman", "healthcheck", "run", container]
        return subprocess.run(check, capture_output=True, timeout=30).returncode == 0

    def up(self) -> float:
        """``up -d`` and wait until every container is healthy; seconds taken."""
        started = time.monotonic()
        self.compose("up", "-d")
        self.wait_healthy(started)
        return time.monotonic() - started

    def wait_healthy(self, started: float) -> None:
        """Poll every container's health check until all pass (bounded in time)."""
        while time.monotonic() - started < HEALTHY_TIMEOUT:
            containers = self.containers()
            if len(containers) >= len(SERVICES) and all(self.healthy(c) for c in containers):
                return
            time.sleep(0.5)
        logs = {c: self.logs(c, 20) for c in self.containers()}
        raise TimeoutError(f"not healthy in {HEALTHY_TIMEOUT:.0f} s: {json.dumps(logs)[-4000:]}")

    def logs(self, container: str, lines: int = 50) -> str:
        """The last ``lines`` lines a container wrote (stdout and stderr)."""
        command = ["podman", "logs", "--tail", str(lines), container]
        result = subprocess.run(command, capture_output=True, text=True, timeout=30)
        return result.stdout + result.stderr

    def down(self, volumes: bool = False) -> None:
        """``down`` (``-v``: and remove the volumes and the project's networks)."""
        self.compose("down", *(["-v"] if volumes else []))
        if volumes:
            for network in ("internal", "public"):
                podman("network", "rm", "-f", f"{self.name}_{network}", check=False)
            for volume in VOLUMES:
                podman("volume", "rm", "-f", f"{self.name}_{volume}", check=False)

    def volume_path(self, volume: str = "home") -> Path:
        """Where a named volume of the project lives on this machine."""
        mount = podman("volume", "inspect", "--format", "{{.Mountpoint}}", f"{self.name}_{volume}")
        return Path(mount.strip())


def bench(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Build the images once, then time ``--rounds`` fresh bring-ups of the profile."""
    ensure_base_images()
    started = time.monotonic()
    bundle = build_bundle(workdir)
    bundle_seconds = time.monotonic() - started
    tag = f"localhost/neuronova-bench:{os.getpid()}"
    build_seconds = build_image(bundle, tag)
    results: dict[str, Any] = {
        "machine": machine(),
        "bundle_build_s": round(bundle_seconds, 1),
        "image_build_s": round(build_seconds, 1),
        "image_mb": round(image_bytes(tag) / 1e6, 1),
        "base_image_mb": round(image_bytes(BASE_IMAGE) / 1e6, 1),
        "up_to_healthy_s": [],
    }
    try:
        for n in range(args.rounds):
            profile = Profile(f"nnbench{os.getpid()}r{n}", workdir / f"round{n}", tag)
            try:
                results["up_to_healthy_s"].append(round(profile.up(), 1))
            finally:
                profile.down(volumes=True)
    finally:
        podman("rmi", "-f", tag, check=False)
    return results


def render(results: dict[str, Any]) -> str:
    """The markdown summary."""
    ups = results["up_to_healthy_s"]
    rows = [
        ("appliance image (bundle on the Debian base)", f"{results['image_mb']} MB"),
        ("of which the base image (debootstrap minbase)", f"{results['base_image_mb']} MB"),
        ("bundle build (PyInstaller)", f"{results['bundle_build_s']} s"),
        ("image build from the bundle", f"{results['image_build_s']} s"),
        ("`compose up -d` to every container healthy, median", f"{statistics.median(ups)} s"),
        ("rounds", ", ".join(f"{s} s" for s in ups)),
    ]
    machine_line = f"{results['machine']['nproc']} cores, {results['machine']['cpu_model']}"
    return "\n".join([
        "# Cloud profile on podman (bench/cloud.py)",
        "",
        f"Debian's podman 4.3 (runc, netavark) and podman-compose 1.0.3; {machine_line}.",
        "Fresh volumes each round; health checks run with `podman healthcheck run`.",
        "",
        markdown_table(("figure", "value"), rows),
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "cloud.json")
    return run_in_workdir("cloud", parser.parse_args(argv), bench, render)


if __name__ == "__main__":
    sys.exit(main())
