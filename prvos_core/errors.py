"""Exception types of PRVOS.

`UserError` and its subclasses are problems a user can fix (a bad path, a bad config key, a corrupt file);
the command line prints them as one line with the fix and exits non-zero. Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix. The message names the thing and the fix, on one line."""


class ConfigError(UserError):
    """The configuration (YAML file or --set override) is invalid."""


class DataError(UserError):
    """A dataset file or folder is missing, unreadable or malformed."""


class StorageError(UserError):
    """A run store or artifact location cannot be read or written."""


class CheckpointError(UserError):
    """A checkpoint is missing, corrupt or belongs to another model."""


def first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message (its type name when it has none), for one-line errors
    that quote what a library said."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
