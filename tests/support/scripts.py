"""The scripts of ``packaging/``, imported by path for tests that call their functions."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from tests.support.paths import REPO


def packaging_script(stem: str) -> ModuleType:
    """``packaging/STEM.py`` as the module ``neuronova_STEM``, loaded once per run
    (``packaging/`` is not a package: PyPI's ``packaging`` takes the name)."""
    name = f"neuronova_{stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "packaging" / f"{stem}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
