"""Built static web apps: ``main`` (React) and ``pacs-viewer`` (OHIF), served by nginx."""

from importlib.resources import files
from pathlib import Path


def spa_root() -> Path:
    """The folder holding ``main/`` and ``pacs-viewer/``."""
    return Path(str(files(__name__)))
