"""The settings' references stay equal to their one declaration (appliance/config)."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from appliance.config import DECLARED, ConfigError, load_settings, render_toml
from appliance.config.reference import CLOUD_VARIABLES, main, settings_table, with_reference
from appliance.config.settings import declared_setting

REPO = Path(__file__).resolve().parents[2]
FIX = "run `python -m appliance.config.reference README.md .env.example`"


@pytest.mark.parametrize("name", ["README.md", ".env.example"])
def test_the_generated_reference_in_the_file_is_todays(name: str) -> None:
    text = (REPO / name).read_text()
    assert with_reference(name, text) == text, f"{name} is out of date: {FIX}"


def test_the_readme_table_has_one_row_per_setting() -> None:
    rows = settings_table().splitlines()[2:]
    assert len(rows) == len(DECLARED) > 50
    for declared, row in zip(DECLARED, rows, strict=True):
        assert row.startswith(f"| `[{declared.section}] {declared.key}` | `{declared.env_var}` |")
    assert settings_table() in (REPO / "README.md").read_text()


def test_a_file_without_its_markers_is_refused() -> None:
    with pytest.raises(ValueError, match="needs the lines"):
        with_reference("README.md", "# no settings here\n")


def test_help_teaches_what_the_command_rewrites_and_how_to_run_it() -> None:
    """``--help`` was read as a file name (a traceback); now it is the parser's help."""
    shown = subprocess.run(
        [sys.executable, "-m", "appliance.config.reference", "--help"],
        capture_output=True, text=True, cwd=REPO, timeout=60, check=False,
    )  # fmt: skip
    assert shown.returncode == 0 and not shown.stderr
    assert shown.stdout.startswith("usage: python -m appliance.config.reference [-h] FILE")
    for taught in ("README.md", ".env.example", "marker lines", FIX.split("`")[1]):
        assert taught in shown.stdout


def test_a_stale_copy_is_rewritten_and_a_current_one_left(tmp_path: Path, capsys) -> None:
    stale = tmp_path / "README.md"
    stale.write_text(re.sub(r"\| `\[web\] http_port` .*\n", "", (REPO / "README.md").read_text()))
    assert main([str(stale)]) == 0 and main([str(stale)]) == 0
    assert stale.read_text() == (REPO / "README.md").read_text()
    assert capsys.readouterr().out == f"updated {stale}\n{stale} is up to date\n"


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        ([], 2, "the following arguments are required: FILE"),
        (["notes.md"], 2, "notes.md: no generated reference lives there; name README.md or "),
        (["{tmp}/missing/README.md"], 1, "{tmp}/missing/README.md: No such file or directory"),
        (["{tmp}/.env.example"], 1, "{tmp}/.env.example: .env.example needs the lines"),
    ],
)
def test_wrong_arguments_are_a_message_naming_what_to_fix(
    argv: list[str], status: int, message: str, tmp_path: Path, capsys
) -> None:
    (tmp_path / ".env.example").write_text("PUBLIC_URL=\n")  # no marker lines
    with pytest.raises(SystemExit) as exited:
        main([arg.format(tmp=tmp_path) for arg in argv])
    assert exited.value.code == status
    error = capsys.readouterr().err
    assert f"python -m appliance.config.reference: error: {message.format(tmp=tmp_path)}" in error
    assert "Traceback" not in error


def test_compose_passes_each_cloud_variable_as_its_setting_with_its_default() -> None:
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    environment = compose["x-appliance"]["environment"]
    example = dict(
        line.split("=", 1)
        for line in (REPO / ".env.example").read_text().splitlines()
        if re.match(r"^[A-Z_]+=", line)
    )
    for variable, path in CLOUD_VARIABLES.items():
        declared = declared_setting(path)
        passed = str(environment[declared.env_var])
        default = str(declared.default).lower() if declared.type is bool else str(declared.default)
        assert passed == (f"${{{variable}:-{default}}}" if default else f"${{{variable}}}"), passed
        assert example[variable] == default


def test_the_settings_file_lists_every_setting_with_its_help(tmp_path: Path) -> None:
    settings = load_settings(tmp_path, environ={})
    text = render_toml(settings)
    assert tomllib.loads(text) == settings.as_toml_dict()
    for declared in DECLARED:
        assert f"# {declared.help}\n{declared.key} = " in text


def test_an_environment_variable_overrides_the_file_and_an_option_both(tmp_path: Path) -> None:
    (tmp_path / "neuronova.toml").write_text('[web]\nhttp_port = 8081\n[oidc]\nscopes = "a"\n')
    environ = {"NEURONOVA_WEB_HTTP_PORT": "8082", "NEURONOVA_OIDC_AUTO_CREATE": "no"}
    settings = load_settings(tmp_path, environ=environ)
    assert (settings.web.http_port, settings.oidc.scopes, settings.oidc.auto_create) == (
        8082,
        "a",
        False,
    )
    assert load_settings(tmp_path, {"web.http_port": 8083}, environ=environ).web.http_port == 8083


def test_a_setting_named_wrong_in_code_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown setting 'web\.http_prot'"):
        load_settings(tmp_path, {"web.http_prot": 1}, environ={})
