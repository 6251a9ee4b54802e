"""NeuroNova: an on-prem medical imaging appliance."""

from __future__ import annotations


def __getattr__(name: str) -> str:
    """``appliance.__version__``: :func:`appliance.version.current`, asked only when read."""
    if name == "__version__":
        from appliance.version import current

        return current()
    raise AttributeError(f"module 'appliance' has no attribute {name!r}")
