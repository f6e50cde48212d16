"""The one exception type the CLI turns into a single clear error line."""

from __future__ import annotations

from pathlib import Path


class OnixError(Exception):
    """A failure the user can act on.

    `path` names what was wrong, `hint` says what to do. The CLI prints
    ``error: <path>: <message>; <hint>`` and exits non-zero. Checks run before
    anything is written, and an error after that settles the journal on the
    way out (transaction.session), so the root holds the old or the new state.
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


class LockedError(OnixError):
    """Another onix holds the root's lock, or SQLite reports the database locked."""

    exit_code = 3


class DiskFullError(OnixError):
    exit_code = 4
