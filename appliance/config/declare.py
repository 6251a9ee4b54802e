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
from typing import Any

ENV_PREFIX = "NEURONOVA"


def setting(default: Any, help: str, doc: str = "") -> Any:
    """A setting's dataclass field: its built-in default, a one-line help text (the TOML
    file's comment) and, if there is more to say, ``doc`` (the docs' settings table)."""
    return dataclasses.field(default=default, metadata={"help": help, "doc": doc})


@dataclass(frozen=True)
class Section:
    """One TOML table; subclasses declare their keys with :func:`setting` and check
    their values in ``__post_init__`` (raising :class:`~appliance.errors.ConfigError`)."""


@dataclass(frozen=True)
class Declared:
    """One declared setting, as the loader, the CLI and the generated references see it."""

    section: str
    key: str
    type: type
    default: Any
    help: str
    doc: str = ""

    @property
    def path(self) -> str:
        """``section.key``: how code names the setting (``load_settings`` overrides)."""
        return f"{self.section}.{self.key}"

    @property
    def env_var(self) -> str:
        """The environment variable that overrides it: ``NEURONOVA_<SECTION>_<KEY>``."""
        return f"{ENV_PREFIX}_{self.section}_{self.key}".upper()


def declared_in(section: str, section_type: type[Section]) -> list[Declared]:
    """The settings ``section_type`` declares, in declaration order."""
    hints = typing.get_type_hints(section_type)
    return [
        Declared(section, f.name, hints[f.name], f.default, f.metadata["help"], f.metadata["doc"])
        for f in dataclasses.fields(section_type)
    ]
