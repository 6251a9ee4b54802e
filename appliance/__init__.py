"""NeuroNova: an on-prem medical imaging appliance."""

__version__ = "0.1.0"
