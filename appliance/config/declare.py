"""How a setting is declared: once, as a typed field of its TOML table's dataclass.

Each TOML table (``[web]``, ``[dicom]``, ...) is one frozen dataclass, a :class:`Section`,
whose fields are its keys: the annotation is the type, :func:`setting` gives the default
and the help text. The environment name (``NEURONOVA_<SECTION>_<KEY>``), the TOML file
written at ``init``, ``config show``, ``.env.example`` and the docs' tables all derive
from that one declaration through :class:`Declared`.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

from appliance.errors import ConfigError

ENV_PREFIX = "NEURONOVA"


def setting(
    default: Any,
    help: str,
    doc: str = "",
    choices: tuple[str, ...] = (),
    minimum: int | None = None,
) -> Any:
    """A setting's dataclass field: its built-in default, a one-line help text (the TOML
    file's comment), if there is more to say ``doc`` (the docs' settings table), and the
    values it takes: one of ``choices``, or a number of at least ``minimum``."""
    return dataclasses.field(
        default=default,
        metadata={"help": help, "doc": doc, "choices": choices, "minimum": minimum},
    )


@dataclass(frozen=True)
class Section:
    """One TOML table named ``table``; subclasses declare their keys with :func:`setting`.

    Building one checks the declared ``choices`` and ``minimum`` of each key, then
    :meth:`check`; both raise :class:`~appliance.errors.ConfigError` naming the key.
    """

    table: ClassVar[str]

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value, rule = getattr(self, field.name), field.metadata
            if rule["choices"] and value not in rule["choices"]:
                raise ConfigError(
                    f"[{self.table}] {field.name} must be one of {', '.join(rule['choices'])} "
                    f"(got {value!r})"
                )
            if rule["minimum"] is not None and value < rule["minimum"]:
                raise ConfigError(
                    f"[{self.table}] {field.name} must be at least {rule['minimum']} (got {value})"
                )
        self.check()

    def check(self) -> None:
        """Checks beyond one key's choices and minimum (none by default)."""


@dataclass(frozen=True)
class Declared:
    """One declared setting, as the loader, the CLI and the generated references see it."""

    section: str
    key: str
    type: type
    default: Any
    help: str
    doc: str = ""
    choices: tuple[str, ...] = ()
    minimum: int | None = None

    @property
    def path(self) -> str:
        """``section.key``: how code names the setting (``load_settings`` overrides)."""
        return f"{self.section}.{self.key}"

    @property
    def env_var(self) -> str:
        """The environment variable that overrides it: ``NEURONOVA_<SECTION>_<KEY>``."""
        return f"{ENV_PREFIX}_{self.section}_{self.key}".upper()


def declared_in(section_type: type[Section]) -> list[Declared]:
    """The settings ``section_type`` declares, in declaration order."""
    hints = typing.get_type_hints(section_type)
    return [
        Declared(section_type.table, f.name, hints[f.name], f.default, **f.metadata)
        for f in dataclasses.fields(section_type)
    ]
