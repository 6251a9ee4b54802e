"""Settings: where the data home is, which ports to use, and how they are overridden.

Each TOML table is one typed section declared once (:mod:`appliance.config.sections`,
:mod:`appliance.config.sign_in`); :class:`Settings` holds them (``settings.web.public_url``,
``settings.dicom.port``) and the home's :class:`~appliance.layout.HomeLayout`
(``settings.layout``). :mod:`appliance.config.loading` reads them with their precedence;
:mod:`appliance.config.reference` writes ``.env.example`` and the docs' tables from them.
"""

from appliance.config.declare import Declared
from appliance.config.hosts import is_host_name, is_loopback_host
from appliance.config.loading import (
    HOME_ENV,
    SYSTEM_HOME,
    default_home,
    load_settings,
    render_toml,
    settings_environment,
)
from appliance.config.sections import (
    ORTHANC_INDEXES,
    OVERWRITE_POLICIES,
    RETENTION_BY,
    TOKEN_AUTH_METHODS,
)
from appliance.config.settings import CONFIG_FILENAME, DECLARED, Settings, declared_setting
from appliance.config.sign_in import parse_role_map
from appliance.errors import ConfigError

__all__ = [
    "CONFIG_FILENAME",
    "DECLARED",
    "HOME_ENV",
    "ORTHANC_INDEXES",
    "OVERWRITE_POLICIES",
    "RETENTION_BY",
    "SYSTEM_HOME",
    "TOKEN_AUTH_METHODS",
    "ConfigError",
    "Declared",
    "Settings",
    "declared_setting",
    "default_home",
    "is_host_name",
    "is_loopback_host",
    "load_settings",
    "parse_role_map",
    "render_toml",
    "settings_environment",
]
