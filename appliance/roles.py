"""The appliance's user roles: a shared fact the settings and the user accounts both use."""

from __future__ import annotations

ROLES = ("admin", "radiologist", "technologist")
