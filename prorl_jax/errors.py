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
