"""Exceptions that mean "the user gave us something wrong" (as opposed to a bug).

The CLI catches `UserError` and prints its message as one line with exit code 2, no
traceback. Raise a subclass of it for malformed configs, missing or corrupt files,
unsupported architectures and bad data; let real bugs raise anything else.
"""


class UserError(Exception):
    """An error caused by input the user controls; shown as one line, exit code 2."""


class ConfigError(UserError, ValueError):
    """A config key is unknown, has the wrong type or an invalid value."""


class CheckpointError(UserError):
    """A checkpoint directory is missing, incomplete, corrupt or of an unsupported kind."""


class DataError(UserError):
    """A dataset file or record is malformed."""


class DamagedCheckpointError(CheckpointError):
    """A checkpoint step that looks complete but cannot be read (an item is missing or an
    array file is truncated).

    Attributes:
      step: the damaged step.
      fallback: the newest complete step before it (None when there is none); the
        command-line layer turns it into "use --step N".
    """

    def __init__(self, message: str, step: int, fallback: int | None):
        super().__init__(message)
        self.step = step
        self.fallback = fallback
