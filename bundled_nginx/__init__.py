"""nginx configuration templates shipped with the appliance (package data)."""

from importlib.resources import files
from pathlib import Path


def template_text(name: str = "nginx.conf.template") -> str:
    """The text of a bundled template."""
    return files(__name__).joinpath(name).read_text()


def mime_types_path() -> Path:
    """The bundled ``mime.types`` (the bundle has no /etc/nginx)."""
    return Path(str(files(__name__).joinpath("mime.types")))
