"""The appliance's settings: the data home and one section per TOML table."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.config.declare import Declared, Section, declared_in
from appliance.config.sections import (
    BackupSettings,
    DicomSettings,
    FhirSettings,
    InternalSettings,
    LogsSettings,
    NetworkSettings,
    OrthancSettings,
    QueueSettings,
    RetentionSettings,
    WebSettings,
)
from appliance.config.sign_in import OidcSettings, SmartSettings
from appliance.errors import ConfigError
from appliance.layout import HomeLayout

CONFIG_FILENAME = "neuronova.toml"


@dataclass(frozen=True)
class Settings:
    """The appliance's settings: ``settings.web.http_port``, ``settings.dicom.port``, ...

    Every path derives from ``home``; ``layout`` names them (built once).
    """

    home: Path
    network: NetworkSettings = field(default_factory=NetworkSettings)
    web: WebSettings = field(default_factory=WebSettings)
    dicom: DicomSettings = field(default_factory=DicomSettings)
    internal: InternalSettings = field(default_factory=InternalSettings)
    orthanc: OrthancSettings = field(default_factory=OrthancSettings)
    queue: QueueSettings = field(default_factory=QueueSettings)
    logs: LogsSettings = field(default_factory=LogsSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    fhir: FhirSettings = field(default_factory=FhirSettings)
    oidc: OidcSettings = field(default_factory=OidcSettings)
    smart: SmartSettings = field(default_factory=SmartSettings)
    backup: BackupSettings = field(default_factory=BackupSettings)
    layout: HomeLayout = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "layout", HomeLayout(self.home))

    @property
    def config_file(self) -> Path:
        """The home's settings file, ``neuronova.toml``."""
        return self.home / CONFIG_FILENAME

    @property
    def rclone_config_path(self) -> Path:
        """``[backup] rclone_config``, relative to the home unless absolute."""
        return self.home / self.backup.rclone_config

    @property
    def orthanc_db_password_path(self) -> Path:
        """``[orthanc] db_password_file``, relative to the home unless absolute."""
        return self.home / self.orthanc.db_password_file

    def value(self, path: str) -> Any:
        """The value of the setting named ``section.key`` (e.g. ``"web.http_port"``)."""
        section, key = declared_setting(path).path.split(".")
        return getattr(getattr(self, section), key)

    def with_values(self, values: Mapping[str, Any]) -> Settings:
        """These settings with ``{"section.key": value}`` changed (each section re-checked).

        :class:`ConfigError` for a name no section declares, or a value its section refuses.
        """
        changes: dict[str, dict[str, Any]] = {}
        for path, value in values.items():
            declared = declared_setting(path)
            changes.setdefault(declared.section, {})[declared.key] = value
        sections = {
            name: dataclasses.replace(getattr(self, name), **keys) for name, keys in changes.items()
        }
        return dataclasses.replace(self, **sections)

    def as_toml_dict(self) -> dict[str, dict[str, Any]]:
        """The settings grouped by TOML section, as ``config show`` prints them."""
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}


def _section_types() -> dict[str, type[Section]]:
    """The sections of :class:`Settings` by attribute, which is each one's TOML table."""
    hints = typing.get_type_hints(Settings)
    sections = {
        f.name: hints[f.name]
        for f in dataclasses.fields(Settings)
        if isinstance(hints[f.name], type) and issubclass(hints[f.name], Section)
    }
    for name, section_type in sections.items():
        if section_type.table != name:
            raise TypeError(f"Settings.{name} holds the section of [{section_type.table}]")
    return sections


SECTIONS: dict[str, type[Section]] = _section_types()
# Every setting, in the order of the TOML file: the one list the loader, the CLI options,
# ``config show`` and the generated references (``neuronova config reference``) use.
DECLARED: tuple[Declared, ...] = tuple(
    declared for section_type in SECTIONS.values() for declared in declared_in(section_type)
)
_BY_PATH = {declared.path: declared for declared in DECLARED}


def declared_setting(path: str) -> Declared:
    """The declaration of the setting ``section.key``; :class:`ConfigError` if none."""
    try:
        return _BY_PATH[path]
    except KeyError:
        raise ConfigError(f"unknown setting {path!r} (a name like 'web.http_port')") from None
