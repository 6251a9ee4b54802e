"""``init``, ``run``, ``status`` and ``version``."""

from __future__ import annotations

import json
import logging
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import click

from appliance import loopback
from appliance.backup.status import backup_summary
from appliance.cli.backup_cmd import KEY_ADVICE
from appliance.cli.options import (
    home_option,
    network_options,
    network_overrides,
    settings_from,
)
from appliance.config import Settings
from appliance.health.report import STATUS_KEY_HEADER, status_key
from appliance.home import InitResult, init_home, require_initialized
from appliance.supervise.logs import configure_logging
from appliance.supervise.runner import log_limits, run_appliance
from appliance.version import current as app_version


def _report_init(settings: Settings, result: InitResult) -> None:
    if result.created:
        click.echo(f"Created the NeuroNova home in {settings.home}")
    for migration in result.migrations:
        click.echo(f"Migrated the home for NeuroNova {app_version()}: {migration}")
    if result.admin_password:
        click.echo("")
        click.secho("  First administrator account (shown only once):", bold=True)
        click.echo("    user:     admin")
        click.echo(f"    password: {result.admin_password}")
        click.echo("  Change it with `neuronova user passwd admin`.")
        click.echo("")
    if result.backup_key:
        click.secho("  Backup key (`neuronova backup key` shows it again):", bold=True)
        click.echo(f"    {result.backup_key}")
        click.echo(textwrap.indent(KEY_ADVICE, "  "))
        click.echo("")


@click.command()
@home_option
@network_options
def init(home: Path | None, **network: object) -> None:
    """Create the data home: settings, secrets (mode 0600), database, first admin.

    Running it again on an existing home runs the migrations a newer version needs (it
    says which), and otherwise changes nothing. The admin password is printed once;
    store it safely.
    """
    settings = settings_from(home, network_overrides(network))
    result = init_home(settings)
    _report_init(settings, result)
    if not result.created and not result.migrations:
        click.echo(f"{settings.home} is already set up; nothing to do.")


@click.command()
@home_option
@network_options
@click.option("-v", "--verbose", is_flag=True, help="Log debug details.")
def run(home: Path | None, verbose: bool, **network: object) -> None:
    """Set up the home if needed, then start and supervise every service.

    Starts Orthanc, the task queue, the web app, the DICOM receiver and nginx, restarts
    any that crash, and stops them all on Ctrl-C or SIGTERM. Logs go to the terminal and
    to HOME/logs/.
    """
    settings = settings_from(home, network_overrides(network))
    _report_init(settings, init_home(settings))
    limits = log_limits(settings)
    configure_logging(
        logging.DEBUG if verbose else logging.INFO,
        settings.home / "logs" / "neuronova.log",
        max_bytes=limits.max_bytes,
        keep=limits.keep,
        component="supervisor",
    )
    click.echo(
        f"Web:   http://{settings.network.probe_host}:{settings.web.http_port}/  and  "
        f"https://{settings.network.probe_host}:{settings.web.https_port}/"
    )
    click.echo(f"DICOM: AE title {settings.dicom.ae_title}, port {settings.dicom.port}")
    run_appliance(settings)


def fetch_health(settings: Settings, timeout: float = 10.0) -> tuple[int, dict] | None:
    """GET /api/health through nginx, with the status key; ``None`` when nothing answers."""
    url = f"http://{settings.network.probe_host}:{settings.web.http_port}/api/health"
    request = urllib.request.Request(url, headers={STATUS_KEY_HEADER: status_key(settings)})
    try:
        with loopback.urlopen(request, timeout=timeout) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.load(exc)
        except ValueError:
            return exc.code, {"status": "error", "error": f"HTTP {exc.code} from {url}"}
    except (urllib.error.URLError, OSError):
        return None


@click.command()
@home_option
@click.option("--json", "as_json", is_flag=True, help="Print the raw health JSON.")
def status(home: Path | None, as_json: bool) -> None:
    """Show whether the appliance is running and the health of each component.

    Exits 0 when everything is healthy, 1 otherwise.
    """
    settings = settings_from(home)
    require_initialized(settings)
    answer = fetch_health(settings)
    if answer is None:
        raise click.ClickException(
            f"NeuroNova is not answering on port {settings.web.http_port} for {settings.home}. "
            "Start it with `neuronova run`."
        )
    code, report = answer
    backups = backup_summary(settings)
    report["last_backup"], report["daily_backup"] = backups["last"], backups["daily"]
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        _print_health(report)
        _print_backup(report["last_backup"])
        _print_schedule(report["daily_backup"])
    sys.exit(0 if code == 200 else 1)


def _print_backup(record: dict | None) -> None:
    if record is None:
        click.secho("  last backup: none yet (`neuronova backup DEST`)", fg="yellow")
        return
    age = f"{(time.time() - float(record['finished_unix'])) / 3600:.1f} h ago"
    if record.get("ok"):
        click.echo(f"  last backup: ok, {age}, into {record['dest']}")
    else:
        click.secho(f"  last backup: FAILED {age}: {record['error']}", fg="red")


def _print_schedule(daily: dict | None) -> None:
    if daily is None:
        click.echo("  daily backup: off (set [backup] destination)")
        return
    offsite = f", then to {daily['remote']}" if daily["remote"] else ""
    click.echo(f"  daily backup: {daily['time_utc']} UTC into {daily['destination']}{offsite}; "
               f"next {daily['next'].replace('T', ' ')}")  # fmt: skip


def _print_health(report: dict) -> None:
    overall = report.get("status", "error")
    click.secho(
        f"NeuroNova: {overall.upper()}", fg="green" if overall == "ok" else "red", bold=True
    )
    for name, component in report.get("components", {}).items():
        ok = component.get("status") == "ok"
        details = ", ".join(f"{k}={v}" for k, v in component.items() if k != "status")
        mark = click.style("ok   " if ok else "ERROR", fg="green" if ok else "red")
        click.echo(f"  {mark} {name:<9} {details}")
    for warning in report.get("warnings", []):
        click.secho(f"  warning: {warning}", fg="yellow")


@click.command()
def version() -> None:
    """Print the version of NeuroNova."""
    click.echo(f"neuronova {app_version()}")
