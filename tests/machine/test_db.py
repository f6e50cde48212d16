"""The state log (onix/machine/db.py): the journal of transactions, the states, the schema
check, and a database that is missing, locked or unreadable is one clear error."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_clean_failure, onix

from onix.core.errors import LockedError, StateError
from onix.core.paths import RootPaths
from onix.machine.db import SCHEMA_VERSION, Database


@pytest.fixture
def db(root: Path):
    paths = RootPaths.of(root)
    paths.db_dir.mkdir(parents=True)
    d = Database(paths, create=True)
    yield d
    d.close()


def add_state(db: Database, c, state_id: int) -> None:
    db.add_state(c, state_id=state_id, fstx=f"fstx-{state_id}", summary=f"state {state_id}",
                 parent=state_id - 1 or None, layout_digest="0" * 64, stone_ids=[], files=0,
                 nbytes=0)


def test_a_root_without_a_database_is_one_clear_error(root: Path) -> None:
    with pytest.raises(StateError, match="no ONIX database") as e:
        Database(RootPaths.of(root))
    assert e.value.path == str(RootPaths.of(root).db) and "onix install" in e.value.hint


def test_a_transaction_row_is_running_until_it_ends(db: Database) -> None:
    with db.write() as c:
        tx = db.begin_tx(c, kind="install", from_state=None, to_state=1, detail={"a": 1})
    with db.read() as c:
        running = db.running_tx(c)
        assert running["id"] == tx and running["step"] == "journal"
        assert running["status"] == "running" and db.last_done_tx(c) == 0
    with db.write() as c:
        db.tx_step(c, tx, "exchange")
        assert db.running_tx(c)["step"] == "exchange"
        db.end_tx(c, tx, "done", detail={"b": 2})
    with db.read() as c:
        assert db.running_tx(c) is None and db.last_done_tx(c) == tx
        row = db.tx(c, tx)
        assert (row["step"], row["status"], row["detail"]) == ("end", "done", '{"b": 2}')
        assert row["finished"] and db.activations(c, ["install"]) == {1: tx}


def test_states_are_listed_newest_first_and_ids_never_reused(db: Database) -> None:
    with db.write() as c:
        for sid in (1, 2, 3):
            add_state(db, c, sid)
        db.mark_active(c, 1)
        db.mark_active(c, 2)  # 1 is archived, 3 stays pending
    with db.read() as c:
        assert [(s["id"], s["status"]) for s in db.states(c)] == [(2, "active"), (1, "archived")]
        assert db.active_state(c)["id"] == 2 and db.maybe_state(c, 3)["status"] == "pending"
        with pytest.raises(StateError, match="state 7 does not exist"):
            db.state(c, 7)
    with db.write() as c:
        db.begin_tx(c, kind="install", from_state=2, to_state=3)
        db.delete_state(c, 3)
        assert db.next_state_id(c) == 4  # the journal still names 3


def test_a_database_of_a_newer_schema_is_refused(db: Database) -> None:
    with db.write() as c:
        assert db.get_meta(c, "schema") == str(SCHEMA_VERSION)
        db.set_meta(c, "schema", str(SCHEMA_VERSION + 1))
    with pytest.raises(StateError, match=f"schema {SCHEMA_VERSION + 1}"):
        Database(db.paths)


def test_a_write_while_another_connection_holds_the_lock_is_a_locked_error(
        db: Database, monkeypatch) -> None:
    monkeypatch.setenv("ONIX_DB_TIMEOUT", "0.2")
    other = Database(db.paths)  # the timeout is read when the engine is made
    holder = sqlite3.connect(db.paths.db, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(LockedError, match="database is locked") as e, other.write() as c:
            other.set_meta(c, "x", "1")
        assert e.value.path == str(db.paths.db)
    finally:
        holder.close()
        other.close()
    with db.write() as c:
        db.set_meta(c, "x", "2")


def test_locked_database(installed: Path, make_stone) -> None:
    extra = make_stone("extra", {"share/extra": "e" * 10_000})
    # Another process holds SQLite's write lock (in-process would not do: closing any fd of
    # the file, as snapshot() does, drops this process's POSIX locks).
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sqlite3, sys\n"
         f"c = sqlite3.connect({str(installed / '.onix/db/onix.db')!r})\n"
         "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        # nothing may leak into the store while the DB refuses writes
        assert_clean_failure(installed, ["install", extra], match="database is locked",
                             env={"ONIX_DB_TIMEOUT": "0.3"}, code=3)
    finally:
        holder.communicate("")
    assert onix("install", extra, "--root", installed).returncode == 0


def test_corrupt_database_is_one_line(installed: Path) -> None:
    db = installed / ".onix/db/onix.db"
    for suffix in ("-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    db.write_bytes(b"this is not a database" * 100)
    for args in (["status"], ["state", "list"], ["rollback"]):
        r = onix(*args, "--root", installed)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 1 and len(lines) == 1, (args, r.stderr)
        assert "database is unreadable" in lines[0]
