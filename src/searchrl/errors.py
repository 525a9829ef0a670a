"""The errors a user can fix: a bad config, bad data, a checksum mismatch, a model that cannot be loaded.

Each derives from :class:`UserError`; the command line prints these as one ``error: ...`` line
and exits with status 2. Anything else is a bug and keeps its traceback. The subclasses
also derive from the built-in exception a library caller would expect (``ValueError``,
``FileNotFoundError``), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user gave us; the message says what and where."""


class ConfigError(UserError, ValueError):
    """A config key, value or combination of values that cannot work."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or directory the user named does not exist or is not what it should be."""


class ModelError(UserError, ValueError):
    """A model directory or file that cannot be loaded as asked (format, missing tokens, unsafe weights)."""


class OutputExistsError(UserError, FileExistsError):
    """An output that would overwrite something the user did not ask to replace."""


class InputError(UserError, ValueError):
    """Input that cannot be used as asked: an empty split, nothing left to train on, an unknown name."""
