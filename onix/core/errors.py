"""The one exception type the CLI turns into a single clear error line."""

from __future__ import annotations

from pathlib import Path


class OnixError(Exception):
    """A failure the user can act on.

    `path` names what was wrong, `hint` says what to do. The CLI prints
    ``error: <path>: <message>; <hint>`` and exits non-zero. Checks run before
    anything is written, and an error after that settles the journal on the
    way out (recovery.opened), so the root holds the old or the new state.
    """

    exit_code = 1

    def __init__(self, message: str, *, path: Path | str | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.path = str(path) if path is not None else None
        self.hint = hint

    def line(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        return f"{text}; {self.hint}" if self.hint else text

    def as_dict(self) -> dict:
        return {"error": self.message, "path": self.path, "hint": self.hint}


class StoneError(OnixError):
    """A stone file is corrupt, truncated, of another format, or unsafe."""


class ConflictError(OnixError):
    """Two stones claim one path, or a selection is inconsistent."""


class StateError(OnixError):
    """An unknown state, or an operation a state does not allow."""


class BootError(OnixError):
    """The boot files could not be brought in line with the states."""


class LockedError(OnixError):
    """Another onix holds the root's lock, or SQLite reports the database locked."""

    exit_code = 3


class DiskFullError(OnixError):
    exit_code = 4


def from_exception(exc: BaseException) -> OnixError | None:
    """Turn an environment failure that reached the CLI into one clear OnixError.

    Library code checks what it can up front; what is left (permissions, a disk
    that vanished, a database file that is not one) still deserves one line
    naming the path, not a traceback.
    """
    import errno as errnos
    import sqlite3

    from onix.core.fsutil import disk_full

    orig = getattr(exc, "orig", None)  # SQLAlchemy wraps the DB-API error
    if isinstance(orig, sqlite3.DatabaseError):
        exc = orig
    if isinstance(exc, sqlite3.DatabaseError) and any(
            m in str(exc) for m in ("disk is full", "disk I/O error")):
        # SQLITE_FULL, or the I/O error SQLite reports when its WAL cannot grow
        return DiskFullError(f"the database could not be written ({exc})",
                             path="<root>/.onix/db/onix.db",
                             hint="free space on that file system (or check the disk) and "
                             "retry; SQLite kept the last committed state")
    if isinstance(exc, sqlite3.DatabaseError):
        return OnixError(f"the ONIX database is unreadable ({exc})",
                         hint="restore <root>/.onix/db/onix.db from a backup; the store and "
                         "states are untouched")
    if isinstance(exc, OSError):
        where = exc.filename or None
        what = exc.strerror or str(exc)
        if exc.errno in (errnos.EACCES, errnos.EPERM, errnos.EROFS):
            hint = "run as root, or point --root at a tree you own"
        elif disk_full(exc):
            return DiskFullError(what, path=where, hint="free space and retry")
        else:
            hint = "check the path and retry"
        return OnixError(what, path=where, hint=hint)
    return None
