"""Explicit vs. dependency stones in the state log: orphans, promotion, the schema-1 upgrade."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from onix import api
from onix.core.errors import ConflictError
from onix.core.paths import RootPaths
from onix.machine.db import SCHEMA_VERSION


def _explicit(root: Path) -> dict[str, bool]:
    db = sqlite3.connect(RootPaths.of(root).db)
    try:
        rows = db.execute(
            "SELECT s.name, ss.explicit FROM state_stones ss JOIN stones s ON s.id = ss.stone_id "
            "JOIN states st ON st.id = ss.state_id WHERE st.status = 'active'").fetchall()
    finally:
        db.close()
    return {name: bool(e) for name, e in rows}


@pytest.fixture
def trio(make_stone):
    lib = make_stone("libz", {"lib/libz.so.1": "z"}, provides=["soname(libz.so.1(x86_64))"])
    tool = make_stone("tool", {"bin/tool": "t"}, depends=["soname(libz.so.1(x86_64))"])
    other = make_stone("other", {"bin/other": "o"})
    return lib, tool, other


def test_dependencies_are_recorded_as_such_and_removed_as_orphans(root, trio):
    lib, tool, other = trio
    api.install(root, [lib, tool, other], dependencies=["libz"])
    assert _explicit(root) == {"libz": False, "tool": True, "other": True}
    r = api.remove(root, ["tool"])
    assert "orphans libz" in r.summary
    assert set(_explicit(root)) == {"other"}
    assert not (root / "usr/lib/libz.so.1").exists()


def test_keep_orphans_and_explicit_dependencies_stay(root, trio):
    lib, tool, _ = trio
    api.install(root, [lib, tool], dependencies=["libz"])
    api.remove(root, ["tool"], orphans=False)
    assert _explicit(root) == {"libz": False}
    # asked for by name later: promoted in place, no new state, never an orphan again
    r = api.install(root, [lib])
    assert not r.changed and "now explicit: libz" in r.summary
    assert _explicit(root) == {"libz": True}


def test_a_stone_still_needed_is_not_an_orphan(root, make_stone, trio):
    lib, tool, _ = trio
    tool2 = make_stone("tool2", {"bin/tool2": "t2"}, depends=["soname(libz.so.1(x86_64))"])
    api.install(root, [lib, tool, tool2], dependencies=["libz"])
    api.remove(root, ["tool"])
    assert _explicit(root) == {"libz": False, "tool2": True}


def test_removing_a_needed_dependency_is_refused(root, trio):
    lib, tool, _ = trio
    api.install(root, [lib, tool], dependencies=["libz"])
    with pytest.raises(ConflictError, match="tool needs soname"):
        api.remove(root, ["libz"])


def test_rollback_restores_the_older_states_intent(root, trio):
    lib, tool, other = trio
    api.install(root, [lib, tool], dependencies=["libz"])
    api.install(root, [other])
    api.remove(root, ["tool"])
    api.rollback(root)
    assert _explicit(root) == {"libz": False, "tool": True, "other": True}


def test_schema_1_log_is_upgraded_and_its_stones_count_as_explicit(root, trio):
    lib, tool, _ = trio
    api.install(root, [lib, tool], dependencies=["libz"])
    db_path = RootPaths.of(root).db
    db = sqlite3.connect(db_path)
    # Rebuild state_stones as schema 1 had it: no explicit column.
    db.executescript("""
        CREATE TABLE ss1 (state_id INTEGER NOT NULL, stone_id INTEGER NOT NULL,
                          PRIMARY KEY (state_id, stone_id));
        INSERT INTO ss1 SELECT state_id, stone_id FROM state_stones;
        DROP TABLE state_stones;
        ALTER TABLE ss1 RENAME TO state_stones;
        UPDATE meta SET value = '1' WHERE key = 'schema';
    """)
    db.commit()
    db.close()
    r = api.remove(root, ["tool"])  # opens the log read-write: upgrades it
    assert "orphans" not in r.summary
    assert _explicit(root) == {"libz": True}
    db = sqlite3.connect(db_path)
    assert db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()[0] == str(
        SCHEMA_VERSION)
    db.close()
