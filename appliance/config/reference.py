"""The settings' references, written from their declaration: the README's table and the
settings part of the cloud profile's ``.env.example``.

Each reference sits between two marker lines in its file; only that part is rewritten.
``python -m appliance.config.reference README.md .env.example`` updates both (in a
checkout); ``tests/test_settings_reference.py`` fails while either differs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.config.declare import Declared
from appliance.config.loading import toml_value
from appliance.config.settings import DECLARED, declared_setting

# compose.yaml passes these variables of .env to every container as the setting named
# (``NEURONOVA_WEB_PUBLIC_URL: ${PUBLIC_URL}``); the ports and the address it publishes
# (BIND, HTTP_PORT, ...) are compose's own and stay hand-written in .env.example.
CLOUD_VARIABLES = {
    "PUBLIC_URL": "web.public_url",
    "SERVER_NAMES": "web.server_names",
    "REDIRECT_TO_HTTPS": "web.redirect_to_https",
    "CLOUDFLARE": "web.cloudflare",
    "MAX_UPLOAD_MB": "web.max_upload_mb",
    "AE_TITLE": "dicom.ae_title",
    "OVERWRITE": "dicom.overwrite",
    "QUEUE_WORKERS": "queue.workers",
}
BEGIN = "generated from appliance/config by `python -m appliance.config.reference`"
END = "end of the generated part"


def settings_table() -> str:
    """Every setting as a Markdown table: TOML name, environment variable, default, meaning."""
    rows = [
        "| setting | environment variable | default | meaning |",
        "|---|---|---|---|",
    ]
    for declared in DECLARED:
        meaning = f"{declared.help}. {declared.doc}" if declared.doc else declared.help
        rows.append(
            f"| `[{declared.section}] {declared.key}` | `{declared.env_var}` "
            f"| {_shown_default(declared)} | {meaning} |"
        )
    return "\n".join(rows) + "\n"


def cloud_variables() -> str:
    """The ``.env.example`` lines of :data:`CLOUD_VARIABLES`, at the declared defaults."""
    lines = []
    for variable, path in CLOUD_VARIABLES.items():
        declared = declared_setting(path)
        lines.append(f"# {declared.help} ([{declared.section}] {declared.key}).")
        lines.append(f"{variable}={_env_value(declared.default)}")
    return "\n".join(lines) + "\n"


def _shown_default(declared: Declared) -> str:
    return f"`{toml_value(declared.default)}`" if declared.default != "" else "(empty)"


def _env_value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


REFERENCES: dict[str, tuple[str, Callable[[], str]]] = {
    "README.md": ("<!-- {} -->", settings_table),
    ".env.example": ("# --- {} ---", cloud_variables),
}


def with_reference(name: str, text: str) -> str:
    """``text`` (the file ``name``) with its generated part replaced by today's.

    :class:`ValueError` if the file lacks the two marker lines.
    """
    marker, generate = REFERENCES[name]
    begin, end = marker.format(BEGIN), marker.format(END)
    head, found_begin, rest = text.partition(begin + "\n")
    _, found_end, tail = rest.partition(end + "\n")
    if not (found_begin and found_end):
        raise ValueError(f"{name} needs the lines {begin!r} and {end!r} around its settings")
    return f"{head}{begin}\n{generate()}{end}\n{tail}"


def main(argv: list[str] | None = None) -> int:
    """Rewrite the generated part of each file named in ``argv`` (README.md, .env.example).

    A file that cannot be read or lacks its marker lines is a message and exit status 1;
    an argument that names neither file is a usage error (status 2).
    """
    parser = _parser()
    paths: list[Path] = parser.parse_args(argv).files
    for path in paths:
        if path.name not in REFERENCES:
            parser.error(f"{path}: no generated reference lives there; name README.md or "
                         ".env.example")  # fmt: skip
    for path in paths:
        try:
            _rewrite(path)
        except OSError as exc:
            parser.exit(1, f"{parser.prog}: error: {path}: {exc.strerror}\n")
        except ValueError as exc:
            parser.exit(1, f"{parser.prog}: error: {path}: {exc}\n")
    return 0


def _rewrite(path: Path) -> None:
    text = path.read_text()
    updated = with_reference(path.name, text)
    if updated != text:
        path.write_text(updated)
        print(f"updated {path}")
    else:
        print(f"{path} is up to date")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m appliance.config.reference",
        description=(
            "Rewrite the settings reference generated from their declaration in\n"
            "appliance/config: the table of every setting in README.md, and the cloud\n"
            "profile's variables in .env.example. Only the part between the file's two\n"
            "marker lines changes; a file already up to date is left as it is."
        ),
        epilog=(
            "example, from the root of a checkout:\n"
            "  python -m appliance.config.reference README.md .env.example\n\n"
            "tests/config/test_settings_reference.py fails while either file is out of date.\n"
            "To print the table without writing a file: neuronova config reference"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "files", nargs="+", type=Path, metavar="FILE",
        help="README.md or .env.example (chosen by file name; any directory)",
    )  # fmt: skip
    return parser


if __name__ == "__main__":
    sys.exit(main())
