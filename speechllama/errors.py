"""The one line between a user's mistake and a bug.

A :class:`UserError` is a problem with what the user gave (a file, a manifest row, a config key, a
flag): its message names the file, line, field or key and says what to do, and the CLI prints it
as one line. Anything else that escapes a command is a bug in speechllama and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input or setup; the message is meant for the user as is."""


class UsageError(UserError, ValueError):
    """A value the user chose (a flag, a config setting, a combination of them) that cannot work."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named (or an install step provides) that is not there."""
