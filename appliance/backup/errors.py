"""The error every backup module raises when it cannot go on."""

from __future__ import annotations

from appliance.errors import ApplianceError


class BackupError(ApplianceError):
    """A backup, verify or restore that cannot go on; the message says what to do."""
