"""The command line, through click's CliRunner on real temporary homes."""

from __future__ import annotations

import logging
import stat
import subprocess
import sys

import pytest

from appliance.cli import cli
from appliance.cli.services import prepare_home
from appliance.config import load_settings
from appliance.db import open_database
from appliance.security.users import get_user, verify_password


def test_init_creates_secrets_database_and_prints_admin_password_once(tmp_path, runner):
    home = tmp_path / "h"
    first = runner.invoke(cli, ["init", "--home", str(home)])
    assert first.exit_code == 0
    assert "password:" in first.output
    password = first.output.split("password:")[1].split()[0]
    db = open_database(home / "db" / "appliance.db")
    admin = get_user(db, "admin")
    assert admin["role"] == "admin" and verify_password(password, admin["password_hash"])
    for name in ("jwt-signing.key", "orthanc-password"):
        assert stat.S_IMODE((home / "secrets" / name).stat().st_mode) == 0o600
    second = runner.invoke(cli, ["init", "--home", str(home)])
    assert second.exit_code == 0 and "password:" not in second.output
    assert "already set up" in second.output


def test_home_from_environment(tmp_path, runner, monkeypatch):
    monkeypatch.setenv("NEURONOVA_HOME", str(tmp_path / "envhome"))
    assert runner.invoke(cli, ["init"]).exit_code == 0
    assert (tmp_path / "envhome" / "neuronova.toml").exists()


def test_config_show_applies_file_then_environment(home, runner, monkeypatch):
    toml = home / "neuronova.toml"
    toml.write_text(toml.read_text().replace("http_port = 8080", "http_port = 9000"))
    shown = runner.invoke(cli, ["config", "show", "--home", str(home)])
    assert "http_port = 9000" in shown.output
    monkeypatch.setenv("NEURONOVA_WEB_HTTP_PORT", "9100")
    shown = runner.invoke(cli, ["config", "show", "--home", str(home)])
    assert "http_port = 9100" in shown.output
    assert "secret" not in shown.output.lower() or "never" in shown.output.lower()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[web]\nhttp_port = 'x'\n", "http_port must be of type int"),
        ("[web]\nhttp_port = 70000\n", "http_port must be a port between 1 and 65535"),
        ("[web]\nnope = 1\n", "unknown setting [web] nope"),
        ("[web\n", "is not valid TOML"),
    ],
)
def test_bad_settings_file_names_what_to_fix(home, runner, content, message):
    (home / "neuronova.toml").write_text(content)
    result = runner.invoke(cli, ["config", "show", "--home", str(home)])
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output


def test_bad_environment_override_is_reported(home, monkeypatch):
    monkeypatch.setenv("NEURONOVA_DICOM_PORT", "eleven")
    with pytest.raises(Exception, match="NEURONOVA_DICOM_PORT: port must be of type int"):
        load_settings(home)


def test_user_lifecycle(home, runner):
    h = ["--home", str(home)]
    added = runner.invoke(
        cli,
        ["user", "add", "dr.house", "--role", "radiologist", "--password-stdin", *h],
        input="correct horse battery\n",
    )
    assert added.exit_code == 0, added.output
    listed = runner.invoke(cli, ["user", "list", *h])
    assert "dr.house" in listed.output and "radiologist" in listed.output
    assert runner.invoke(cli, ["user", "disable", "dr.house", *h]).exit_code == 0
    assert "disabled" in runner.invoke(cli, ["user", "list", *h]).output
    changed = runner.invoke(
        cli, ["user", "passwd", "dr.house", "--password-stdin", *h], input="another long password\n"
    )
    assert changed.exit_code == 0
    user = get_user(open_database(home / "db" / "appliance.db"), "dr.house")
    assert user["disabled"] == 1
    assert verify_password("another long password", user["password_hash"])


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (
            ["user", "add", "x", "--role", "radiologist", "--password-stdin"],
            "short\n",
            "Error: password too short: use at least 10 characters",
        ),
        (
            ["user", "add", "admin", "--role", "admin", "--password-stdin"],
            "long enough pw\n",
            "Error: user 'admin' already exists",
        ),
        (
            ["user", "add", "bad name", "--role", "admin", "--password-stdin"],
            "long enough pw\n",
            "Error: invalid user name 'bad name'",
        ),
        (["user", "add", "x", "--role", "janitor"], "", "Invalid value for '--role'"),
        (
            ["user", "passwd", "ghost", "--password-stdin"],
            "long enough pw\n",
            "Error: no user named 'ghost'",
        ),
        (["user", "disable", "admin"], "", "Error: admin is the last active admin"),
    ],
)
def test_user_errors_say_what_to_fix(home, runner, args, stdin, message):
    result = runner.invoke(cli, [*args, "--home", str(home)], input=stdin)
    assert result.exit_code != 0
    assert message in result.output


def test_commands_on_a_missing_home_say_run_init(tmp_path, runner):
    result = runner.invoke(cli, ["user", "list", "--home", str(tmp_path / "nowhere")])
    assert result.exit_code == 1
    assert "is not a NeuroNova home yet. Run `neuronova init" in result.output


def test_status_when_not_running(home, runner):
    result = runner.invoke(cli, ["status", "--home", str(home)])
    assert result.exit_code == 1
    assert "is not answering" in result.output and "neuronova run" in result.output


def test_version(runner):
    assert runner.invoke(cli, ["version"]).output.startswith("neuronova 0.")


def test_disabling_a_user_ends_their_sessions(home, runner):
    from appliance.security.sessions import SessionStore
    from appliance.security.tokens import TokenService
    from appliance.security.users import create_user

    db = open_database(home / "db" / "appliance.db")
    create_user(db, "dr.gone", "radiologist", "long enough pw")
    store = SessionStore(db, TokenService("k" * 32))
    session = store.start("dr.gone", "radiologist", "127.0.0.1", "test")
    assert store.active(session.session_id)
    result = runner.invoke(cli, ["user", "disable", "dr.gone", "--home", str(home)])
    assert result.exit_code == 0 and "open sessions have ended" in result.output
    assert store.active(session.session_id) is None


# ------------------------------------------------------------------ the backup key


def test_init_shows_the_new_backup_key_once(tmp_path, runner):
    home = tmp_path / "h"
    first = runner.invoke(cli, ["init", "--home", str(home)])
    assert first.exit_code == 0, first.output
    key_file = home / "secrets" / "backup-key"
    key = key_file.read_text().strip()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert f"Backup key (`neuronova backup key` shows it again):\n    {key}\n" in first.output
    assert "--key-file FILE" in first.output and "away from this machine" in first.output
    second = runner.invoke(cli, ["init", "--home", str(home)])
    assert second.exit_code == 0 and key not in second.output and "Backup key" not in second.output


def test_backup_key_prints_the_key_alone_on_stdout(home, runner):
    key = (home / "secrets" / "backup-key").read_text().strip()
    shown = runner.invoke(cli, ["backup", "key", "--home", str(home)])
    assert shown.exit_code == 0, shown.output
    assert shown.stdout == key + "\n"
    assert "away from this machine" in shown.stderr and "--key-file" in shown.stderr


def test_backup_key_output_writes_a_0600_file_and_never_overwrites(home, tmp_path, runner):
    key = (home / "secrets" / "backup-key").read_text().strip()
    target = tmp_path / "copy-of-key"
    written = runner.invoke(cli, ["backup", "key", "--output", str(target), "--home", str(home)])
    assert written.exit_code == 0, written.output
    assert key not in written.output and f"Wrote the backup key to {target}" in written.stderr
    assert target.read_text() == key + "\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    target.write_text("something else\n")
    again = runner.invoke(cli, ["backup", "key", "--output", str(target), "--home", str(home)])
    assert again.exit_code == 1 and "already exists" in again.output
    assert target.read_text() == "something else\n"


def test_backup_key_makes_one_for_a_home_that_has_none(home, runner):
    key_file = home / "secrets" / "backup-key"
    key_file.unlink()  # a home made before snapshots were signed
    shown = runner.invoke(cli, ["backup", "key", "--home", str(home)])
    assert shown.exit_code == 0, shown.output
    assert shown.stdout == key_file.read_text().strip() + "\n"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_backup_key_of_a_folder_that_is_no_home_is_refused(tmp_path, runner):
    refused = runner.invoke(cli, ["backup", "key", "--home", str(tmp_path / "none")])
    assert refused.exit_code == 1 and "is not a NeuroNova home yet" in refused.output
    assert not (tmp_path / "none" / "secrets").exists()


def test_a_container_home_logs_where_the_backup_key_is_never_the_key(tmp_path, caplog):
    settings = load_settings(tmp_path / "h", environ={})
    with caplog.at_level(logging.INFO, logger="neuronova.service"):
        prepare_home(settings)
    key_file = tmp_path / "h" / "secrets" / "backup-key"
    assert f"the backup key is in {key_file}" in caplog.text
    assert key_file.read_text().strip() not in caplog.text


# Modules a service process must not load: the codec (numpy-heavy imagecodecs), the
# transcoding pipeline, FHIR, deletion/retention and the web app belong to other commands.
NOT_FOR_SERVICES = (
    "imagecodecs",
    "appliance.transcode",
    "appliance.fhir",
    "appliance.lifecycle",
    "appliance.web",
)


def test_a_command_loads_only_its_own_module(runner):
    """`neuronova service receiver` (what `run` starts per service) imports the service
    command alone, not every command's dependencies; `--help` still lists every command."""
    probe = (
        "import sys, click\n"
        "from appliance.cli import cli\n"
        "cli.get_command(click.Context(cli), 'service')\n"
        "print('\\n'.join(sys.modules))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "appliance.cli.services" in loaded
    assert [m for m in loaded if m.startswith(NOT_FOR_SERVICES)] == []
    everything = runner.invoke(cli, ["--help"]).output
    assert all(name in everything for name in ("frames", "study", "retention", "service"))
