"""Errors the appliance reports to people; the CLI turns them into ``Error: ...`` lines."""


class ApplianceError(Exception):
    """A problem a user can fix; the message says what to do."""


class ConfigError(ApplianceError):
    """A setting is missing or invalid."""


class MissingBinaryError(ApplianceError):
    """nginx or Orthanc could not be found."""


class AlreadyRunningError(ApplianceError):
    """Another ``neuronova run`` holds the data home."""


class NotInitializedError(ApplianceError):
    """The data home has not been set up with ``neuronova init``."""


class UserError(ApplianceError):
    """An invalid user-management request (unknown user, bad role, weak password)."""


class PortInUseError(ApplianceError):
    """A port the appliance listens on is taken by another program."""


class HomeTooNewError(ApplianceError):
    """The data home was migrated by a newer NeuroNova than this one."""
