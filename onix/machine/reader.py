"""Read-only queries of the state log with the standard library's sqlite3.

Read commands must start fast, and importing SQLAlchemy alone costs ~0.2 s, so what
`status`, `list` and `sync`'s planning read goes through here: a read-only URI and the
column names db.py documents (the schema is the contract). Writers use db.py.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.parse import quote

from onix.core.paths import RootPaths, read_state_id


def connect(db: Path) -> sqlite3.Connection:
    """Read-write where allowed, so that closing the last connection removes the WAL
    files again (a read must leave the root as it was); read-only for other users."""
    import os

    mode = "rw" if os.access(db, os.W_OK) and os.access(db.parent, os.W_OK) else "ro"
    con = sqlite3.connect(f"file:{quote(str(db))}?mode={mode}", uri=True, timeout=5)
    con.row_factory = sqlite3.Row
    return con


STONE_COLUMNS = ("id", "digest", "name", "version", "release", "arch", "summary", "license",
                 "provides", "depends")


def _has_column(con: sqlite3.Connection, table: str, column: str) -> bool:
    """A schema-1 log (not yet upgraded by a writer) has no state_stones.explicit."""
    return any(r[1] == column for r in con.execute(f"PRAGMA table_info({table})"))


def state_stones(con: sqlite3.Connection, state_id: int) -> list[dict]:
    """The stones of a state, by name, each with `explicit` and `installed_size` (not the
    `@triggers` row of what its triggers wrote: no stone, see triggers.py)."""
    cols = ", ".join(f"s.{c}" for c in STONE_COLUMNS)
    explicit = "ss.explicit" if _has_column(con, "state_stones", "explicit") else "1"
    rows = con.execute(
        f"SELECT {cols}, {explicit} AS explicit, "
        "(SELECT COALESCE(SUM(l.size), 0) FROM layout l WHERE l.stone_id = s.id "
        " AND l.kind = 'file') AS installed_size "
        "FROM state_stones ss JOIN stones s ON s.id = ss.stone_id "
        "WHERE ss.state_id = ? AND s.name NOT LIKE '@%' ORDER BY s.name", (state_id,)).fetchall()
    return [{**dict(r), "explicit": bool(r["explicit"])} for r in rows]


def live_selection(paths: RootPaths) -> tuple[dict[str, dict], set[str]]:
    """(name → stone row, explicit names) of the live state; empty on a fresh root."""
    if not paths.db.exists():
        return {}, set()
    live = read_state_id(paths.usr)
    if live is None:
        return {}, set()
    con = connect(paths.db)
    try:
        rows = state_stones(con, live)
    finally:
        con.close()
    return {r["name"]: r for r in rows}, {r["name"] for r in rows if r["explicit"]}
