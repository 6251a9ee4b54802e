"""Where settings come from, and in which order they override each other.

Precedence, lowest to highest: built-in defaults, ``neuronova.toml`` in the data home,
``NEURONOVA_<SECTION>_<KEY>`` environment variables, command-line options.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import platformdirs

from appliance.config.declare import Declared
from appliance.config.settings import CONFIG_FILENAME, DECLARED, Settings
from appliance.errors import ConfigError

HOME_ENV = "NEURONOVA_HOME"
SYSTEM_HOME = Path("/var/lib/neuronova")


def default_home() -> Path:
    """The data home: ``$NEURONOVA_HOME``, else the platform's user data directory.

    For root it is :data:`SYSTEM_HOME` instead (unless a home already exists in root's
    data directory): nginx's workers then run as another user (``[internal]
    nginx_user``), who cannot enter ``/root``.
    """
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env).expanduser()
    user_home = Path(platformdirs.user_data_dir("neuronova", appauthor=False))
    if os.geteuid() == 0 and not (user_home / CONFIG_FILENAME).exists():
        return SYSTEM_HOME
    return user_home


def coerce(declared: Declared, value: Any, origin: str) -> Any:
    """``value`` (from TOML or an environment variable) as ``declared``'s type.

    :class:`ConfigError` naming ``origin`` and the key when it is not one.
    """
    if declared.type is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
    elif declared.type is int:
        try:
            number = int(value)
        except (TypeError, ValueError):
            pass
        else:
            if declared.key.endswith("port") and not 0 < number < 65536:
                raise ConfigError(f"{origin}: {declared.key} must be a port between 1 and 65535")
            return number
    elif isinstance(value, str):
        return value
    raise ConfigError(
        f"{origin}: {declared.key} must be of type {declared.type.__name__}, got {value!r}"
    )


def _from_toml(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}. Fix or delete the file.") from exc
    values: dict[str, Any] = {}
    known = {(d.section, d.key): d for d in DECLARED}
    for section, table in data.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: '{section}' must be a [section]")
        for key, value in table.items():
            declared = known.get((section, key))
            if declared is None:
                raise ConfigError(f"{path}: unknown setting [{section}] {key}")
            values[declared.path] = coerce(declared, value, str(path))
    return values


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    return {
        d.path: coerce(d, environ[d.env_var], d.env_var) for d in DECLARED if d.env_var in environ
    }


def load_settings(
    home: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build the settings for a data home.

    Parameters
    ----------
    home
        The data home; :func:`default_home` when ``None``.
    overrides
        Values by ``section.key`` (e.g. ``{"web.http_port": 8081}``), from the command
        line; ``None`` values are ignored.
    environ
        The environment to read overrides from (``os.environ`` by default).
    """
    home = (home or default_home()).expanduser().resolve()
    values = _from_toml(home / CONFIG_FILENAME)
    values.update(_from_env(os.environ if environ is None else environ))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return Settings(home=home).with_values(values)


def settings_environment(settings: Settings) -> dict[str, str]:
    """Environment variables that give a child process exactly these settings."""
    env = {HOME_ENV: str(settings.home)}
    for declared in DECLARED:
        value = settings.value(declared.path)
        env[declared.env_var] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def render_toml(settings: Settings) -> str:
    """The commented TOML file written at ``init`` and printed by ``config show``."""
    lines = ["# NeuroNova settings. Environment variables NEURONOVA_<SECTION>_<KEY> override them."]
    section = ""
    for declared in DECLARED:
        if declared.section != section:
            section = declared.section
            lines.append(f"\n[{section}]")
        lines.append(f"# {declared.help}")
        lines.append(f"{declared.key} = {toml_value(settings.value(declared.path))}")
    return "\n".join(lines) + "\n"


def toml_value(value: Any) -> str:
    """``value`` (bool, int or str) as a TOML literal."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
