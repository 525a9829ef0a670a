"""The errors a user can fix: a bad config, bad data, a checksum mismatch, a model that cannot be loaded,
a disk that is full.

Each derives from :class:`UserError`; the command line prints these as one ``error: ...`` line
and exits with status 2. Anything else is a bug and keeps its traceback. The subclasses
also derive from the built-in exception a library caller would expect (``ValueError``,
``FileNotFoundError``), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

import errno
import os


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


class OutputError(UserError, OSError):
    """An output that could not be written for want of space: a full disk, a quota, a file-size limit.

    Raised ``from`` the original error (kept as ``__cause__``) once what was half-written has been removed."""


def shown(value, limit: int = 60) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters: a 100 KB field must not make a
    100 KB error line."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


# errno -> what to tell the user; the ones a user fixes by freeing space or raising a limit
_SPACE_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                 errno.EFBIG: "file too large (a file-size limit, ulimit -f)"}


def disk_full(exc: BaseException) -> tuple[str, str | None] | None:
    """(what went wrong, the file the OS named or None) when ``exc`` is a write that ran out of space; else None.

    Looks through the whole exception chain: torch.save raises a RuntimeError whose ``__context__`` is the
    OSError of the failed write. Libraries that keep no OSError are matched by the OS's message, which
    safetensors' Rust writer passes on ("No space left on device (os error 28)")."""
    seen, e = set(), exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _SPACE_ERRNOS:
            return _SPACE_ERRNOS[e.errno], e.filename
        e = e.__cause__ or e.__context__
    text = str(exc)
    for code, what in _SPACE_ERRNOS.items():
        if f"(os error {code})" in text or os.strerror(code) in text:
            return what, None
    return None
