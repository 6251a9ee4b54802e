"""Deploy a release of NeuroNova's cloud profile to a VM over SSH, and roll it back when
it does not come up.

Usage (docs/deploy-gcp.md; .github/workflows/deploy.yml runs the same)::

    python packaging/deploy.py --host VM --user deploy --key ~/.ssh/neuronova-deploy \\
        --known-hosts known_hosts --version 1.4.0 --image-archive neuronova-1.4.0.tar

What it does, each step named in its output and, when one fails, in its error:

1. ``ssh``: reach the VM with the given key and known_hosts (no password, no prompt).
2. ``upload``: ``compose.yaml``, ``.env.example`` and the build folder of the postgres
   service (packaging/postgres: compose builds its image on the VM unless
   ``POSTGRES_IMAGE`` names one it has) of this checkout into ``DIR/releases/VERSION/``.
3. ``settings``: ``DIR/.env`` against ``.env.example``: settings missing, and settings
   compose.yaml requires (``${NAME:?...}``) left empty, are named. Values never leave
   the VM.
4. ``image``: ``ENGINE load`` of the release's image archive (``podman save`` /
   ``docker save``) copied to the VM, or ``ENGINE pull`` from the registry.
5. ``switch``: the running version stops, the DICOM port last: nginx, the app, the
   workers and Orthanc, then the receiver (it finishes the associations it has open, so
   modalities lose nothing), then Redis with ``down`` (volumes kept); then
   ``compose up -d`` of the new release.
6. ``healthy``: every container's health check passes (bounded in time).
7. ``login page``, ``C-ECHO``, ``/api/health``: what a user and a modality do, from
   here: the login page over HTTPS (the certificate pinned to the one the appliance
   serves, read over SSH), a C-ECHO to the DICOM port, the public health check.
8. ``record``: ``DIR/current-version`` names the version that runs,
   ``DIR/deployed-versions`` the history; images and releases older than the last
   three deployed versions are removed.

If ``switch``, ``healthy`` or a check fails, the previous version is put back (its
compose file and image, the same volumes), checked the same way, and the command exits
non-zero naming the check that failed.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import re
import shlex
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click

REPO = Path(__file__).resolve().parent.parent
KEEP_VERSIONS = 3
IMAGE_SETTING = "NEURONOVA_IMAGE"  # the setting of compose.yaml the deploy sets itself
CURRENT_FILE, HISTORY_FILE = "current-version", "deployed-versions"
RECEIVER_SERVICE = "receiver"
# What compose.yaml needs beside it: its settings' names and the postgres image's build.
POSTGRES_BUILD = "packaging/postgres"
RELEASE_FILES = ("compose.yaml", ".env.example", f"{POSTGRES_BUILD}/Dockerfile",
                 f"{POSTGRES_BUILD}/entrypoint.sh")  # fmt: skip
KEPT_TO_THE_END = {RECEIVER_SERVICE, "redis"}  # while the receiver takes objects in
VERSION_PATTERN = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._+-]{0,63}$")
PROJECT_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
REQUIRED_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):\?")
SSH_TIMEOUT = 600.0  # seconds for one remote command (an image load is the longest)
GIVE_UP_RESTARTS = 3  # a container restarted this often will not become healthy
GIVE_UP_EXITED_POLLS = 10  # nor one seen exited this many polls in a row
CHECK_WINDOW = 30.0  # seconds a check from outside may take to pass once all is healthy


class DeployError(Exception):
    """A step of the deploy failed; ``step`` names it."""

    def __init__(self, step: str, detail: str) -> None:
        super().__init__(f"{step}: {detail}")
        self.step, self.detail = step, detail


@dataclasses.dataclass(frozen=True)
class Remote:
    """The VM, reached with the ``ssh``/``scp`` clients: key only, known hosts only."""

    host: str
    user: str
    port: int
    key: Path
    known_hosts: Path

    def _options(self) -> list[str]:
        return [
            "-i", str(self.key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", "PasswordAuthentication=no", "-o", "KbdInteractiveAuthentication=no",
            "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "ConnectTimeout=15", "-o", "ServerAliveInterval=15",
        ]  # fmt: skip

    def run(self, command: str, step: str, timeout: float = SSH_TIMEOUT) -> str:
        """Run a shell ``command`` on the VM; its stdout. Raises :class:`DeployError`
        naming ``step`` with the end of its output when it fails."""
        ssh = ["ssh", *self._options(), "-p", str(self.port), f"{self.user}@{self.host}"]
        try:
            done = subprocess.run([*ssh, command], capture_output=True, text=True,
                                  timeout=timeout)  # fmt: skip
        except subprocess.TimeoutExpired:
            raise DeployError(step, f"no answer from the VM within {timeout:.0f} s") from None
        except OSError as exc:
            raise DeployError(step, f"cannot run ssh: {exc} (install openssh-client)") from None
        if done.returncode != 0:
            said = (done.stderr.strip() or done.stdout.strip())[-1500:]
            raise DeployError(step, f"`{command[:120]}` failed ({done.returncode}): {said}")
        return done.stdout

    def exists(self, path: str, step: str) -> bool:
        """Whether ``path`` exists on the VM."""
        return self.run(f"test -e {shlex.quote(path)} && echo yes || echo no", step) == "yes\n"

    def put(self, local: Path, remote_path: str, step: str) -> None:
        """Copy one file to the VM with ``scp``."""
        scp = ["scp", "-q", *self._options(), "-P", str(self.port), str(local),
               f"{self.user}@{self.host}:{remote_path}"]  # fmt: skip
        done = subprocess.run(scp, capture_output=True, text=True, timeout=SSH_TIMEOUT)
        if done.returncode != 0:
            raise DeployError(step, f"copying {local.name} failed: {done.stderr.strip()[-1500:]}")


@dataclasses.dataclass(frozen=True)
class Target:
    """Where and how the appliance runs on the VM."""

    remote: Remote
    directory: str
    engine: str
    compose: list[str]
    project: str
    image: str  # repository, e.g. ghcr.io/org/neuronova; the tag is the version

    def release_dir(self, version: str) -> str:
        return f"{self.directory}/releases/{version}"

    def image_ref(self, version: str) -> str:
        return f"{self.image}:{version}"

    def compose_command(self, version: str, *args: str) -> str:
        """``cd`` into the release's folder (its .env applies) and run compose there."""
        command = [*self.compose, "-p", self.project, "-f", "compose.yaml", *args]
        return f"cd {shlex.quote(self.release_dir(version))} && {shlex.join(command)}"

    def ps(self, fields: str) -> str:
        """The engine's ``ps -a`` of the project's containers, printing ``fields``
        (a Go template such as ``{{.Names}}``)."""
        label = shlex.quote(f"label=com.docker.compose.project={self.project}")
        return f"{self.engine} ps -a --filter {label} --format {shlex.quote(fields)}"

    def containers_by_service(self, step: str = "switch") -> dict[str, list[str]]:
        """The project's containers by service, from their names (``P_service_1`` with
        podman-compose, ``P-service-1`` with docker compose)."""
        said = self.remote.run(self.ps("{{.Names}}"), step)
        pattern = re.compile(rf"^{re.escape(self.project)}[-_](.+)[-_][0-9]+$")
        found: dict[str, list[str]] = {}
        for name in said.split():
            match = pattern.match(name)
            if match:
                found.setdefault(match.group(1), []).append(name)
        return found

    def containers_script(self) -> str:
        """A shell line printing ``NAME STATUS RESTARTS HEALTHY`` for each container of the
        project."""
        engine = self.engine
        if engine == "podman":  # health checks run from systemd timers, if any: run them
            health = f'{engine} healthcheck run "$c" >/dev/null 2>&1 && h=yes || h=no'
        else:
            health = (f'[ "$({engine} inspect -f "{{{{.State.Health.Status}}}}" "$c")" = healthy ]'
                      " && h=yes || h=no")  # fmt: skip
        names = self.ps("{{.Names}}")
        state = f"{engine} inspect -f '{{{{.State.Status}}}} {{{{.RestartCount}}}}' \"$c\""
        return f'for c in $({names}); do s=$({state}); {health}; echo "$c $s $h"; done'


@dataclasses.dataclass
class Checks:
    """What a user and a modality do, from outside the VM."""

    host: str
    https_port: int
    dicom_port: int
    ae_title: str
    calling_ae_title: str
    certificate_der: bytes

    def all(self) -> Iterator[tuple[str, Callable[[], str | None]]]:
        """(name, check) pairs; a check returns ``None`` when it passes, else why not."""
        yield "login page", self.login_page
        yield "C-ECHO", self.c_echo
        yield "/api/health", self.health

    def _https_get(self, path: str) -> tuple[int, bytes]:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # pinned below: the certificate read over SSH
        connection = http.client.HTTPSConnection(self.host, self.https_port, timeout=10,
                                                 context=context)  # fmt: skip
        try:
            connection.request("GET", path, headers={"Accept": "text/html,application/json"})
            response = connection.getresponse()
            body = response.read(1024 * 1024)
            served = connection.sock.getpeercert(binary_form=True) if connection.sock else None
        finally:
            connection.close()
        if served != self.certificate_der:
            raise ssl.SSLError("the server's certificate is not the one the appliance holds")
        return response.status, body

    def login_page(self) -> str | None:
        status, body = self._https_get("/login")
        if status != 200 or b"<title>NeuroNova</title>" not in body:
            return f"https://{self.host}:{self.https_port}/login answered {status}"
        return None

    def health(self) -> str | None:
        status, body = self._https_get("/api/health")
        if status != 200 or json.loads(body or b"{}").get("status") != "ok":
            return f"/api/health answered {status} {body[:200].decode(errors='replace')}"
        return None

    def c_echo(self) -> str | None:
        from pynetdicom import AE
        from pynetdicom.sop_class import Verification

        ae = AE(ae_title=self.calling_ae_title)
        ae.add_requested_context(Verification)
        ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 10
        assoc = ae.associate(self.host, self.dicom_port, ae_title=self.ae_title)
        if not assoc.is_established:
            return (f"no association with {self.ae_title} at {self.host}:{self.dicom_port} "
                    f"as {self.calling_ae_title}")  # fmt: skip
        try:
            status = assoc.send_c_echo()
        finally:
            assoc.release()
        if not status or status.Status != 0x0000:
            return "the C-ECHO was not answered with Success"
        return None


@dataclasses.dataclass
class Report:
    """What happened, for the output and ``--report``."""

    version: str
    previous: str | None = None
    deployed: bool = False
    failed_check: str | None = None
    failure: str | None = None
    rolled_back: bool = False
    rollback_failure: str | None = None
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)


def say(message: str) -> None:
    click.echo(message, err=True)


@contextmanager
def timed(report: Report, name: str) -> Iterator[None]:
    """Record how long the block took as ``report.seconds[name]``."""
    started = time.monotonic()
    try:
        yield
    finally:
        report.seconds[name] = round(time.monotonic() - started, 1)


def env_names(remote: Remote, path: str) -> tuple[set[str], set[str]]:
    """(settings named, settings with a value) of an env file on the VM; values stay there."""
    script = ("awk 'match($0, /^[A-Za-z_][A-Za-z0-9_]*=/) { n = substr($0, 1, RLENGTH - 1); "
              "v = substr($0, RLENGTH + 1); print n, (v != \"\" && v != \"\\\"\\\"\" "
              "&& v != \"'\"''\"'\") }' " + shlex.quote(path))  # fmt: skip
    named, valued = set(), set()
    for line in remote.run(script, "settings").splitlines():
        name, has_value = line.split()
        named.add(name)
        if has_value == "1":
            valued.add(name)
    return named, valued


def check_settings(target: Target, version: str) -> None:
    """The VM's .env holds every setting of .env.example and a value for each one
    compose.yaml requires; raises :class:`DeployError` naming the missing ones."""
    env = f"{target.directory}/.env"
    if not target.remote.exists(env, "settings"):
        raise DeployError("settings", f"{env} is missing on the VM: copy .env.example there "
                                      "as .env and fill in its settings (mode 0600)")  # fmt: skip
    expected, _ = env_names(target.remote, f"{target.release_dir(version)}/.env.example")
    named, valued = env_names(target.remote, env)
    required = set(REQUIRED_PATTERN.findall((REPO / "compose.yaml").read_text()))
    missing = sorted(expected - named - {IMAGE_SETTING})
    empty = sorted(required - valued - {IMAGE_SETTING})
    problems = []
    if missing:
        problems.append(f"missing from {env}: {', '.join(missing)} (see .env.example)")
    if empty:
        problems.append(f"empty in {env} but required: {', '.join(empty)}")
    if problems:
        raise DeployError("settings", "; ".join(problems))


def upload(target: Target, version: str) -> None:
    """compose.yaml, .env.example and the postgres service's build folder into the
    release's folder on the VM."""
    folder = target.release_dir(version)
    postgres = f"{folder}/{POSTGRES_BUILD}"
    target.remote.run(f"umask 077 && mkdir -p {shlex.quote(postgres)}", "upload")
    for name in RELEASE_FILES:
        target.remote.put(REPO / name, f"{folder}/{name}", "upload")


def put_image(target: Target, version: str, archive: Path | None) -> None:
    """The release's image on the VM: loaded from ``archive``, else pulled."""
    ref, engine = target.image_ref(version), target.engine
    if archive is None:
        target.remote.run(f"{engine} pull {shlex.quote(ref)}", "image")
    else:
        remote_archive = f"{target.release_dir(version)}/image.tar"
        target.remote.put(archive, remote_archive, "image")
        target.remote.run(f"{engine} load -q -i {shlex.quote(remote_archive)} >/dev/null && "
                          f"rm -f {shlex.quote(remote_archive)}", "image")  # fmt: skip
    try:
        target.remote.run(f"{engine} image inspect {shlex.quote(ref)} >/dev/null", "image")
    except DeployError:
        raise DeployError("image", f"{ref} is not on the VM after the "
                                   f"{'load' if archive else 'pull'}: is the archive "
                                   f"the image of version {version}?") from None  # fmt: skip


def write_release_env(target: Target, version: str) -> None:
    """The release's .env (mode 0600): the VM's .env with the release's image. A rollback
    brings a version back with the settings it last ran with."""
    ref, release_env = target.image_ref(version), f"{target.release_dir(version)}/.env"
    target.remote.run(
        f"umask 077 && grep -v '^{IMAGE_SETTING}=' {shlex.quote(target.directory)}/.env "
        f"> {shlex.quote(release_env)}.new; echo {IMAGE_SETTING}={shlex.quote(ref)} >> "
        f"{shlex.quote(release_env)}.new && mv {shlex.quote(release_env)}.new "
        f"{shlex.quote(release_env)}", "settings",
    )  # fmt: skip


def stop(target: Target, version: str, grace: float) -> None:
    """Stop ``version`` keeping the DICOM port open as long as it can: first the services
    a modality does not need, then the receiver (it finishes its open associations within
    ``grace``), then the rest with ``down`` (Redis, which the receiver queues to); the
    volumes stay."""
    engine = target.engine
    by_service = target.containers_by_service()
    first = [name for service, names in by_service.items() if service not in KEPT_TO_THE_END
             for name in names]  # fmt: skip
    if first:
        target.remote.run(f"{engine} stop -t 10 {shlex.join(first)}", "switch")
    receivers = by_service.get(RECEIVER_SERVICE, [])
    if receivers:
        target.remote.run(f"{engine} stop -t {int(grace)} {shlex.join(receivers)}", "switch")
    target.remote.run(target.compose_command(version, "down", "-t", "10"), "switch")
    remove_leftovers(target)


def remove_leftovers(target: Target) -> None:
    """Remove what ``down`` left of the project (podman-compose 1.0.3 leaves a container
    that was restarting in a loop, and its ``up`` would then start that old container
    instead of creating the new one)."""
    left = [name for names in target.containers_by_service().values() for name in names]
    if left:
        target.remote.run(f"{target.engine} rm -f {shlex.join(left)} >/dev/null", "switch")
    still = [name for names in target.containers_by_service().values() for name in names]
    if still:
        raise DeployError("switch", f"could not remove {', '.join(still)}")


def start(target: Target, version: str) -> None:
    """``up -d`` of ``version``; every appliance container runs its image."""
    target.remote.run(target.compose_command(version, "up", "-d"), "switch")
    said = target.remote.run(target.ps("{{.Names}} {{.Image}}"), "switch")
    expected = target.image_ref(version)
    stale = [f"{name} ({image})" for name, image in (line.split() for line in said.splitlines())
             if image.startswith(f"{target.image}:") and image != expected]  # fmt: skip
    if stale:
        raise DeployError("switch", f"not running {expected}: {', '.join(stale)}")


def wait_healthy(target: Target, services: int, timeout: float) -> None:
    """Until every container of the project is running and healthy; raises
    :class:`DeployError` ("healthy") naming those that are not after ``timeout``."""
    deadline = time.monotonic() + timeout
    exited: dict[str, int] = {}  # container -> polls in a row it was seen exited
    while True:
        said = target.remote.run(target.containers_script(), "healthy").splitlines()
        rows = [row for row in map(str.split, said) if len(row) == 4]
        sick = [f"{name} ({state})" for name, state, _, healthy in rows if healthy != "yes"]
        if len(rows) >= services and not sick:
            return
        for name, state, restarts, _ in rows:
            exited[name] = exited.get(name, 0) + 1 if state in ("exited", "dead") else 0
            if int(restarts) >= GIVE_UP_RESTARTS or exited[name] >= GIVE_UP_EXITED_POLLS:
                raise DeployError("healthy", f"{name} keeps exiting ({state}, restarted "
                                             f"{restarts} times)")  # fmt: skip
        if time.monotonic() > deadline:
            what = ", ".join(sick) or f"{len(rows)} of {services} services have a container"
            raise DeployError("healthy", f"not healthy after {timeout:.0f} s: {what}")
        time.sleep(1.0)


def run_checks(checks: Checks) -> None:
    """Each check from outside passes within :data:`CHECK_WINDOW`; raises
    :class:`DeployError` named after the first one that does not."""
    for name, check in checks.all():
        deadline = time.monotonic() + CHECK_WINDOW
        while True:
            try:
                problem = check()
            except (OSError, ssl.SSLError, ValueError, http.client.HTTPException) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if problem is None:
                break
            if time.monotonic() > deadline:
                raise DeployError(name, problem)
            time.sleep(1.0)
        say(f"  check passed: {name}")


def read_checks(target: Target, args: dict) -> Checks:
    """The checks, with the ports of the VM's .env and the certificate nginx serves."""
    names = {"HTTPS_PORT": "443", "DICOM_PORT": "11112", "AE_TITLE": "NEURONOVA"}
    script = "; ".join(
        f"v=$(sed -n 's/^{name}=//p' {shlex.quote(target.directory)}/.env | tail -1); "
        f"echo \"${{v:-{default}}}\"" for name, default in names.items()
    )  # fmt: skip
    https_port, dicom_port, ae_title = target.remote.run(script, "settings").split()
    return Checks(args["check_host"] or target.remote.host, int(https_port), int(dicom_port),
                  ae_title, args["calling_aet"], certificate(target))  # fmt: skip


def certificate(target: Target) -> bytes:
    """The DER certificate the appliance serves (its home volume), read over SSH."""
    nginx = target.containers_by_service("login page").get("nginx")
    if not nginx:
        raise DeployError("login page", "no nginx container")
    pem = target.remote.run(f"{target.engine} exec {shlex.quote(nginx[0])} cat "
                            "/var/lib/neuronova/tls/server.crt", "login page")  # fmt: skip
    match = re.search(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", pem, re.S)
    if match is None:
        raise DeployError("login page", "no certificate in the appliance's home volume")
    return ssl.PEM_cert_to_DER_cert(match.group(0))


def bring_up(target: Target, version: str, args: dict, report: Report, label: str) -> None:
    """``up -d`` of ``version``, then healthy and every check; timed as ``label``."""
    with timed(report, f"{label}_to_healthy"):
        start(target, version)
        wait_healthy(target, args["containers"], args["healthy_timeout"])
    say(f"  every container of {version} is healthy ({report.seconds[f'{label}_to_healthy']} s)")
    with timed(report, f"{label}_checks"):
        run_checks(read_checks(target, args))


def record(target: Target, version: str) -> list[str]:
    """Name ``version`` as the one running and add it to the history; returns the
    versions dropped from the last :data:`KEEP_VERSIONS`."""
    folder = shlex.quote(target.directory)
    history = target.remote.run(f"cat {folder}/{HISTORY_FILE} 2>/dev/null || true", "record")
    versions = [v for v in history.split() if v != version] + [version]
    kept, dropped = versions[-KEEP_VERSIONS:], versions[:-KEEP_VERSIONS]
    target.remote.run(
        f"printf '%s\\n' {shlex.join(kept)} > {folder}/{HISTORY_FILE}.new && "
        f"mv {folder}/{HISTORY_FILE}.new {folder}/{HISTORY_FILE} && "
        f"echo {shlex.quote(version)} > {folder}/{CURRENT_FILE}.new && "
        f"mv {folder}/{CURRENT_FILE}.new {folder}/{CURRENT_FILE}", "record",
    )  # fmt: skip
    for old in dropped:
        target.remote.run(
            f"{target.engine} rmi {shlex.quote(target.image_ref(old))} >/dev/null 2>&1; "
            f"rm -rf {shlex.quote(target.release_dir(old))}", "record",
        )  # fmt: skip
    return dropped


def running_version(target: Target) -> str | None:
    """The version ``current-version`` names, if its release folder is there."""
    folder = shlex.quote(target.directory)
    found = target.remote.run(f"cat {folder}/{CURRENT_FILE} 2>/dev/null || true", "ssh").strip()
    if found and target.remote.exists(target.release_dir(found), "ssh"):
        return found
    return None


def deploy(target: Target, version: str, archive: Path | None, args: dict, report: Report) -> None:
    """Deploy ``version``; on a failure after the switch began, put the previous one back.

    ``report.deployed`` says whether it runs now. Raises :class:`DeployError` for a
    failure before the switch (the running version untouched).
    """
    target.remote.run(f"{target.engine} --version && {shlex.join(target.compose)} --version",
                      "ssh")  # fmt: skip
    report.previous = running_version(target)
    say(f"deploying {version} to {target.remote.host} (running: {report.previous or 'nothing'})")
    upload(target, version)
    check_settings(target, version)
    say("  settings complete")
    with timed(report, "image"):
        put_image(target, version, archive)
    say(f"  image {target.image_ref(version)} on the VM ({report.seconds['image']} s)")
    write_release_env(target, version)
    try:
        with timed(report, "stop_previous"):  # with none recorded: whatever the project runs
            stop(target, report.previous or version, args["stop_grace"])
        bring_up(target, version, args, report, "deploy")
    except DeployError as failed:
        report.failed_check, report.failure = failed.step, failed.detail
        say(f"  FAILED: {failed}")
        if report.previous:
            roll_back(target, report, args)
        return
    dropped = record(target, version)
    report.deployed = True
    say(f"{version} runs on {target.remote.host}" +
        (f"; removed the images of {', '.join(dropped)}" if dropped else ""))  # fmt: skip


def roll_back(target: Target, report: Report, args: dict) -> None:
    """Stop the failed version and bring the previous one back up, checked the same way."""
    previous = report.previous
    assert previous is not None
    say(f"rolling back to {previous}")
    try:
        with timed(report, "stop_failed"):
            stop(target, report.version, args["stop_grace"])
        bring_up(target, previous, args, report, "rollback")
    except DeployError as failed:
        report.rollback_failure = str(failed)
        say(f"  ROLLBACK FAILED: {failed}")
        return
    report.rolled_back = True


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--host", required=True, help="The VM's address (SSH, and the checks).")
@click.option("--user", default="root", help="SSH user on the VM (it runs the engine).")
@click.option("--port", "ssh_port", type=int, default=22, help="SSH port.")
@click.option(
    "--key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="SSH private key file (no passphrase) [default: the key itself from "
    "the environment variable DEPLOY_SSH_KEY].",
)
@click.option(
    "--known-hosts",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="known_hosts file holding the VM's host key [default: the lines of DEPLOY_KNOWN_HOSTS].",
)
@click.option(
    "--version",
    "version",
    required=True,
    help="The release to deploy (1.4.0 or its tag v1.4.0); the image's tag.",
)
@click.option("--image", default="neuronova", help="Image repository (the tag is the version).")
@click.option(
    "--image-archive",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The release's image archive (podman/docker save); without it the VM "
    "pulls the image from its registry.",
)
@click.option(
    "--dir",
    "directory",
    default="/srv/neuronova",
    help="Folder on the VM: .env, releases/, current-version.",
)
@click.option(
    "--engine",
    type=click.Choice(["podman", "docker"]),
    default="docker",
    help="Container engine on the VM.",
)
@click.option(
    "--compose",
    "compose",
    default=None,
    help="Compose command on the VM [default: `docker compose`, or `podman-compose`].",
)
@click.option("--project", default="neuronova", help="Compose project name (volume prefix).")
@click.option(
    "--containers",
    type=int,
    default=6,
    help="Containers the profile runs (6, more with WORKER_REPLICAS).",
)
@click.option(
    "--healthy-timeout",
    type=float,
    default=300.0,
    help="Seconds for every container to become healthy.",
)
@click.option(
    "--stop-grace",
    type=float,
    default=30.0,
    help="Seconds the old receiver gets to finish its open associations.",
)
@click.option("--check-host", default=None, help="Address for the checks [default: --host].")
@click.option(
    "--calling-aet",
    default="NEURONOVA-DEPLOY",
    help="Calling AE title of the C-ECHO (must be allowed if the appliance "
    "keeps a modality allow-list).",
)
@click.option(
    "--report",
    "report_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write what happened (steps, seconds) as JSON here.",
)
def main(**args) -> None:
    """Deploy a NeuroNova release to a VM over SSH; roll back if it does not come up.

    Exit status 0: the version runs and passed every check. 1: it did not deploy; the
    message names the step or check that failed and whether the previous version was
    put back (then that one runs, checked). See docs/deploy-gcp.md.
    """
    version = args["version"].removeprefix("v")
    if not VERSION_PATTERN.match(version):
        raise click.BadParameter("letters, digits and . _ + - only", param_hint="--version")
    if not PROJECT_PATTERN.match(args["project"]):
        raise click.BadParameter("lower-case letters, digits, _ and - only",
                                 param_hint="--project")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="neuronova-deploy-") as scratch:
        key = args["key"] or secret_file(Path(scratch), "DEPLOY_SSH_KEY", "--key")
        known = args["known_hosts"] or secret_file(Path(scratch), "DEPLOY_KNOWN_HOSTS",
                                                   "--known-hosts")  # fmt: skip
        remote = Remote(args["host"], args["user"], args["ssh_port"], key, known)
        run_deploy(remote, version, args)


def secret_file(folder: Path, variable: str, option: str) -> Path:
    """A 0600 file holding an environment variable's text (a key from CI's secrets)."""
    text = os.environ.get(variable, "").strip()
    if not text:
        raise click.UsageError(f"give {option} FILE, or the file's text in ${variable}")
    path = folder / variable.lower()
    path.touch(mode=0o600)
    path.write_text(text + "\n")
    return path


def run_deploy(remote: Remote, version: str, args: dict) -> None:
    """Deploy with the options given; raises :class:`click.ClickException` on a failure."""
    default_compose = "podman-compose" if args["engine"] == "podman" else "docker compose"
    target = Target(remote, args["directory"].rstrip("/"), args["engine"],
                    shlex.split(args["compose"] or default_compose), args["project"],
                    args["image"])  # fmt: skip
    report = Report(version)
    try:
        deploy(target, version, args["image_archive"], args, report)
    except DeployError as failed:  # before the switch, or recording after it
        report.failed_check, report.failure = failed.step, failed.detail
        write_report(args["report_file"], report)
        if failed.step == "record":
            raise click.ClickException(
                f"{version} runs, but recording it failed: {failed}; "
                f"write {version} into {CURRENT_FILE} by hand"
            ) from None
        raise click.ClickException(f"{version} was not deployed: {failed} (the running "
                                   "version was not touched)") from None  # fmt: skip
    write_report(args["report_file"], report)
    if not report.deployed:
        raise click.ClickException(outcome(report))


def outcome(report: Report) -> str:
    """The one-line reason a deploy failed, and where the VM stands."""
    failed = f"{report.version} failed the check '{report.failed_check}': {report.failure}"
    if report.rolled_back:
        return f"{failed}; rolled back to {report.previous}, which runs and passes every check"
    if report.previous is None:
        return f"{failed}; there was no previous version to roll back to"
    return (
        f"{failed}; the rollback to {report.previous} failed as well "
        f"({report.rollback_failure}): see `compose ps` and `compose logs` on the VM"
    )


def write_report(path: Path | None, report: Report) -> None:
    if path is not None:
        path.write_text(json.dumps(dataclasses.asdict(report), indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
