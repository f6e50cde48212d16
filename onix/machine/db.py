"""The state log: SQLite at <root>/.onix/db/onix.db, through SQLAlchemy Core.

Schema (version 2)
------------------
    meta          key → value: schema version, cached store size
    stones        one row per imported stone file (identity: blake3 of the file)
    layout        the stone's entries: (stone_id, path) → kind, mode, uid, gid,
                  size, digest | target
    states        id, fstx, created, summary, pinned, status, parent,
                  layout digest, file count and bytes
                  status: pending (journalled, not yet live), active, archived
    state_stones  which stones make up a state, and whether each was asked for
                  by name (explicit) or pulled in as a dependency; `onix remove`
                  drops dependencies no explicit stone needs any more (schema 2).
                  What a state's triggers wrote is one more row here, pointing at
                  a stone row named TRIGGER_OUTPUTS (no stone file behind it; see
                  triggers.py): its layout counts for verify, prune and diff, but
                  it is not an installed stone
    transactions  the journal: kind, from/to state, step ("journal" while
                  running — prune also records "trash" — and "end" once
                  closed), status running|done|undone, detail, and the /nix
                  fingerprints taken before and after with their verdict
    ownership     surface → owner, reason (the contract in docs/ownership.md)

The database runs in WAL mode with synchronous=FULL so a committed row
survives a crash. Which state is live is decided by <root>/usr/.stateID; the
`active` status mirrors it and is repaired by recovery when they differ.

`onix status` reads this file with the standard library's sqlite3 module and a
read-only URI (see status.py), so the column names here are an interface.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import (
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError

from onix.core.errors import LockedError, StateError
from onix.core.paths import RootPaths
from onix.machine.layout import Entry

SCHEMA_VERSION = 2
# The stone row holding a state's trigger outputs. '@' is outside the characters a stone
# name may use (stone.py), so no real stone can ever be mistaken for it.
TRIGGER_OUTPUTS = "@triggers"

metadata = MetaData()

meta_t = Table("meta", metadata,
               Column("key", String, primary_key=True),
               Column("value", Text, nullable=False))

stones_t = Table("stones", metadata,
                 Column("id", Integer, primary_key=True),
                 Column("digest", String(64), unique=True, nullable=False),
                 Column("name", String, nullable=False, index=True),
                 Column("version", String, nullable=False),
                 Column("release", Integer, nullable=False),
                 Column("arch", String, nullable=False),
                 Column("summary", Text, nullable=False, default=""),
                 Column("license", Text, nullable=False, default=""),
                 Column("provides", Text, nullable=False, default="[]"),
                 Column("depends", Text, nullable=False, default="[]"),
                 Column("imported", String, nullable=False))

layout_t = Table("layout", metadata,
                 Column("stone_id", Integer, ForeignKey("stones.id", ondelete="CASCADE"),
                        primary_key=True),
                 Column("path", Text, primary_key=True),
                 Column("kind", String(8), nullable=False),
                 Column("mode", Integer, nullable=False),
                 Column("uid", Integer, nullable=False),
                 Column("gid", Integer, nullable=False),
                 Column("size", Integer, nullable=False),
                 Column("digest", String(64), nullable=False, default=""),
                 Column("target", Text, nullable=False, default=""),
                 Index("layout_digest", "digest"))

states_t = Table("states", metadata,
                 Column("id", Integer, primary_key=True),
                 Column("fstx", String, nullable=False),
                 Column("created", String, nullable=False),
                 Column("summary", Text, nullable=False),
                 Column("pinned", Boolean, nullable=False, default=False),
                 Column("status", String(10), nullable=False),
                 Column("parent", Integer),
                 Column("layout_digest", String(64), nullable=False),
                 Column("files", Integer, nullable=False, default=0),
                 Column("bytes", Integer, nullable=False, default=0))

state_stones_t = Table("state_stones", metadata,
                       Column("state_id", Integer, ForeignKey("states.id", ondelete="CASCADE"),
                              primary_key=True),
                       Column("stone_id", Integer, ForeignKey("stones.id"), primary_key=True),
                       # A stone in a schema-1 state counts as explicit: never an orphan.
                       Column("explicit", Boolean, nullable=False, default=True,
                              server_default="1"))

transactions_t = Table("transactions", metadata,
                       Column("id", Integer, primary_key=True),
                       Column("kind", String, nullable=False),
                       Column("from_state", Integer),
                       Column("to_state", Integer),
                       Column("step", String, nullable=False),
                       Column("status", String(10), nullable=False),
                       Column("started", String, nullable=False),
                       Column("finished", String),
                       Column("detail", Text, nullable=False, default="{}"),
                       Column("nix_before", Text),
                       Column("nix_after", Text),
                       Column("nix_report", Text))

ownership_t = Table("ownership", metadata,
                    Column("surface", String, primary_key=True),
                    Column("owner", String, nullable=False),
                    Column("reason", Text, nullable=False))


def now(*, ms: bool = False) -> str:
    """UTC, to the second (state creation) or the millisecond (journal rows: `onix
    history` shows how long a transaction took)."""
    t = datetime.now(UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + (f".{t.microsecond // 1000:03d}Z" if ms else "Z")


def _timeout() -> float:
    # Tests shorten this to prove a locked database fails cleanly instead of hanging.
    return float(os.environ.get("ONIX_DB_TIMEOUT", "10"))


def locked(path: Path) -> LockedError:
    return LockedError("the database is locked by another process", path=path,
                       hint="wait for it to finish (or close the program holding it) and retry")


class Database:
    def __init__(self, paths: RootPaths, *, create: bool = False):
        self.paths = paths
        if not paths.db.exists() and not create:
            raise StateError("this root has no ONIX database", path=paths.db,
                             hint="install a stone first: onix install --root DIR X.stone")
        self.engine: Engine = create_engine(
            f"sqlite:///{paths.db}", connect_args={"timeout": _timeout()})

        @event.listens_for(self.engine, "connect")
        def _pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        if create:
            with self.write() as c:
                metadata.create_all(c)
                have = c.execute(select(meta_t.c.value).where(meta_t.c.key == "schema")).first()
                if have is None:
                    c.execute(insert(meta_t), [{"key": "schema", "value": str(SCHEMA_VERSION)},
                                               {"key": "store_bytes", "value": "0"}])
                else:
                    self._migrate(c, int(have[0]) if str(have[0]).isdigit() else SCHEMA_VERSION)
        self._check_schema()

    def _migrate(self, c: Connection, have: int) -> None:
        """Bring an older log up to SCHEMA_VERSION inside the opening write transaction."""
        if have < 2:
            # schema 2: state_stones.explicit; every stone of an older state was explicit
            c.exec_driver_sql("ALTER TABLE state_stones ADD COLUMN explicit BOOLEAN "
                              "NOT NULL DEFAULT 1")
        if have < SCHEMA_VERSION:
            self.set_meta(c, "schema", str(SCHEMA_VERSION))

    def _check_schema(self) -> None:
        with self.read() as c:
            row = c.execute(select(meta_t.c.value).where(meta_t.c.key == "schema")).first()
        if row is not None and (not str(row[0]).isdigit() or int(row[0]) > SCHEMA_VERSION):
            raise StateError(f"the database has schema {row[0]}; this onix knows "
                             f"{SCHEMA_VERSION}", path=self.paths.db,
                             hint="use the onix that wrote it (or a newer one)")

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _locked_is_locked_error(self) -> Iterator[None]:
        """SQLite's 'database is locked' (busy past the timeout) becomes a LockedError."""
        try:
            yield
        except OperationalError as e:
            if "locked" in str(e) or "busy" in str(e):
                raise locked(self.paths.db) from None
            raise

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """One write transaction, committed when the block ends."""
        with self._locked_is_locked_error(), self.engine.begin() as c:
            yield c

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self._locked_is_locked_error(), self.engine.connect() as c:
            yield c

    # -- meta ------------------------------------------------------------------

    def bump_store_bytes(self, c: Connection, delta: int) -> None:
        cur = c.execute(select(meta_t.c.value).where(meta_t.c.key == "store_bytes")).scalar()
        self.set_meta(c, "store_bytes", str(max(0, int(cur or 0) + delta)))

    def get_meta(self, c: Connection, key: str) -> str | None:
        return c.execute(select(meta_t.c.value).where(meta_t.c.key == key)).scalar()

    def delete_meta(self, c: Connection, key: str) -> None:
        c.execute(delete(meta_t).where(meta_t.c.key == key))

    def set_meta(self, c: Connection, key: str, value: str) -> None:
        if c.execute(select(meta_t.c.key).where(meta_t.c.key == key)).first():
            c.execute(update(meta_t).where(meta_t.c.key == key).values(value=value))
        else:
            c.execute(insert(meta_t).values(key=key, value=value))

    # -- stones ----------------------------------------------------------------

    def stone_by_digest(self, c: Connection, digest: str) -> dict | None:
        row = c.execute(select(stones_t).where(stones_t.c.digest == digest)).mappings().first()
        return dict(row) if row else None

    def add_stone(self, c: Connection, digest: str, meta: dict, entries: list[Entry]) -> int:
        sid = c.execute(insert(stones_t).values(
            digest=digest, name=meta["name"], version=meta["version"],
            release=int(meta["release"]), arch=meta["arch"], summary=meta["summary"],
            license=meta["license"], provides=json.dumps(meta["provides"]),
            depends=json.dumps(meta["depends"]), imported=now())).inserted_primary_key[0]
        # Bulk rows through the DB-API cursor, inside the same transaction: building
        # 20k+ parameter dicts for SQLAlchemy doubled the import's database time.
        c.connection.dbapi_connection.executemany(
            "INSERT INTO layout (stone_id, path, kind, mode, uid, gid, size, digest, target) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", [(sid, *e) for e in entries])
        return sid

    def stones(self, c: Connection, ids: Iterable[int]) -> list[dict]:
        ids = list(ids)
        rows = c.execute(select(stones_t).where(stones_t.c.id.in_(ids))).mappings().all()
        return sorted((dict(r) for r in rows), key=lambda r: r["name"])

    def stone_layout(self, c: Connection, stone_id: int) -> list[Entry]:
        # The hot path of every transaction's plan (20k+ rows): plain DB-API tuples
        # straight into Entry cost a quarter of going through SQLAlchemy rows.
        cur = c.connection.dbapi_connection.execute(
            "SELECT path, kind, mode, uid, gid, size, digest, target FROM layout "
            "WHERE stone_id = ? ORDER BY path", (stone_id,))
        return [Entry(*row) for row in cur]

    def unused_stones(self, c: Connection) -> list[int]:
        used = select(state_stones_t.c.stone_id)
        return list(c.execute(select(stones_t.c.id).where(stones_t.c.id.not_in(used))).scalars())

    def delete_stones(self, c: Connection, ids: list[int]) -> None:
        if ids:
            c.execute(delete(layout_t).where(layout_t.c.stone_id.in_(ids)))
            c.execute(delete(stones_t).where(stones_t.c.id.in_(ids)))

    def referenced_objects(self, c: Connection) -> set[tuple[str, int, int, int]]:
        """(digest, installed mode, uid, gid) of every non-empty file any known stone ships.

        The tuples compare equal to store.ObjectKey."""
        cur = c.connection.dbapi_connection.execute(
            "SELECT DISTINCT digest, mode & 3949, uid, gid FROM layout "  # 0o7555: no write bits
            "WHERE kind = 'file' AND size > 0")
        return set(cur)

    # -- states ----------------------------------------------------------------

    def state(self, c: Connection, state_id: int) -> dict:
        row = c.execute(select(states_t).where(states_t.c.id == state_id)).mappings().first()
        if row is None:
            raise StateError(f"state {state_id} does not exist", path=self.paths.db,
                             hint="see onix state list for the states on this root")
        return dict(row)

    def maybe_state(self, c: Connection, state_id: int | None) -> dict | None:
        if state_id is None:
            return None
        row = c.execute(select(states_t).where(states_t.c.id == state_id)).mappings().first()
        return dict(row) if row else None

    def has_states(self) -> bool:
        """Any state ever recorded, pending ones included (a fresh root has none)."""
        with self.read() as c:
            return bool(c.execute(select(func.count()).select_from(states_t)).scalar())

    def states(self, c: Connection) -> list[dict]:
        rows = c.execute(select(states_t).where(states_t.c.status != "pending")
                         .order_by(states_t.c.id.desc())).mappings()
        return [dict(r) for r in rows]

    def active_state(self, c: Connection) -> dict | None:
        row = c.execute(select(states_t).where(states_t.c.status == "active")).mappings().first()
        return dict(row) if row else None

    def state_stone_ids(self, c: Connection, state_id: int, *,
                        with_outputs: bool = False) -> list[int]:
        """The stones installed in a state; with_outputs adds its trigger-outputs row."""
        q = (select(state_stones_t.c.stone_id)
             .join(stones_t, stones_t.c.id == state_stones_t.c.stone_id)
             .where(state_stones_t.c.state_id == state_id))
        if not with_outputs:
            q = q.where(stones_t.c.name != TRIGGER_OUTPUTS)
        return list(c.execute(q).scalars())

    def state_implicit(self, c: Connection, state_id: int) -> set[int]:
        """Stones of a state that were pulled in as dependencies, not asked for."""
        return set(c.execute(select(state_stones_t.c.stone_id).where(
            state_stones_t.c.state_id == state_id, state_stones_t.c.explicit.is_(False)))
            .scalars())

    def mark_explicit(self, c: Connection, state_id: int, stone_ids: list[int]) -> None:
        c.execute(update(state_stones_t).where(state_stones_t.c.state_id == state_id,
                                               state_stones_t.c.stone_id.in_(stone_ids))
                  .values(explicit=True))

    def next_state_id(self, c: Connection) -> int:
        # Ids are never reused, even after prune: logs, boot entries and fstx stay unambiguous.
        top_state = c.execute(select(func.max(states_t.c.id))).scalar() or 0
        top_tx = c.execute(select(func.max(transactions_t.c.to_state))).scalar() or 0
        return max(top_state, top_tx) + 1

    def add_state(self, c: Connection, *, state_id: int, fstx: str, summary: str,
                  parent: int | None, layout_digest: str, stone_ids: list[int], files: int,
                  nbytes: int, implicit: Iterable[int] = ()) -> None:
        c.execute(insert(states_t).values(
            id=state_id, fstx=fstx, created=now(), summary=summary, pinned=False,
            status="pending", parent=parent, layout_digest=layout_digest, files=files,
            bytes=nbytes))
        if stone_ids:  # an empty state (every stone removed) is legal
            implicit = set(implicit)
            c.execute(insert(state_stones_t), [{"state_id": state_id, "stone_id": s,
                                                "explicit": s not in implicit}
                                               for s in stone_ids])

    def add_outputs(self, c: Connection, state_id: int, stone_id: int, *, fstx: str,
                    layout_digest: str, files: int, nbytes: int) -> None:
        """Join a trigger-outputs row to a pending state, whose name and totals now count
        what its triggers wrote."""
        c.execute(insert(state_stones_t).values(state_id=state_id, stone_id=stone_id,
                                                explicit=False))
        c.execute(update(states_t).where(states_t.c.id == state_id).values(
            fstx=fstx, layout_digest=layout_digest, files=files, bytes=nbytes))

    def set_status(self, c: Connection, state_id: int, status: str) -> None:
        c.execute(update(states_t).where(states_t.c.id == state_id).values(status=status))

    def mark_active(self, c: Connection, state_id: int) -> None:
        c.execute(update(states_t).where(states_t.c.status == "active",
                                         states_t.c.id != state_id).values(status="archived"))
        self.set_status(c, state_id, "active")

    def set_pinned(self, c: Connection, state_id: int, pinned: bool) -> None:
        c.execute(update(states_t).where(states_t.c.id == state_id).values(pinned=pinned))

    def delete_state(self, c: Connection, state_id: int) -> None:
        outputs = [r["id"] for r in self.stones(c, self.state_stone_ids(
            c, state_id, with_outputs=True)) if r["name"] == TRIGGER_OUTPUTS]
        c.execute(delete(state_stones_t).where(state_stones_t.c.state_id == state_id))
        c.execute(delete(states_t).where(states_t.c.id == state_id))
        # Trigger outputs have no stone file a later install could reuse: their row goes
        # with the last state that has it (the objects stay for prune's gc to collect).
        unused = set(self.unused_stones(c))
        self.delete_stones(c, [i for i in outputs if i in unused])

    def state_layout(self, c: Connection, state_id: int) -> list[Entry]:
        """The merged layout of a state, straight from the database (no tree walk)."""
        from onix.machine.layout import merge

        by_stone: dict[str, list[Entry]] = {}
        for s in self.stones(c, self.state_stone_ids(c, state_id, with_outputs=True)):
            by_stone[s["name"]] = self.stone_layout(c, s["id"])
        return merge(by_stone)

    def store_links(self, c: Connection) -> dict[int, list[str]]:
        """state id → the /nix/store paths its /usr symlinks point into (sorted, unique),
        from the layout rows: no tree walk on every transaction."""
        rows = c.execute(select(state_stones_t.c.state_id, layout_t.c.target)
                         .join(layout_t, layout_t.c.stone_id == state_stones_t.c.stone_id)
                         .join(states_t, states_t.c.id == state_stones_t.c.state_id)
                         .where(layout_t.c.kind == "symlink",
                                layout_t.c.target.like("/nix/store/%"),
                                states_t.c.status != "pending"))
        out: dict[int, set[str]] = {}
        for sid, target in rows:
            out.setdefault(int(sid), set()).add("/".join(target.split("/")[:4]))
        return {sid: sorted(paths) for sid, paths in out.items()}

    # -- journal ---------------------------------------------------------------

    def begin_tx(self, c: Connection, *, kind: str, from_state: int | None,
                 to_state: int | None, detail: dict | None = None,
                 nix_before: dict | None = None) -> int:
        return c.execute(insert(transactions_t).values(
            kind=kind, from_state=from_state, to_state=to_state, step="journal",
            status="running", started=now(ms=True), detail=json.dumps(detail or {}),
            nix_before=json.dumps(nix_before) if nix_before is not None else None,
        )).inserted_primary_key[0]

    def tx_step(self, c: Connection, tx_id: int, step: str) -> None:
        c.execute(update(transactions_t).where(transactions_t.c.id == tx_id).values(step=step))

    def end_tx(self, c: Connection, tx_id: int, status: str, *, detail: dict | None = None,
               nix_after: dict | None = None, nix_report: str | None = None) -> None:
        from onix.machine.ownership import compact

        values: dict = {"status": status, "finished": now(ms=True), "step": "end"}
        if detail is not None:
            values["detail"] = json.dumps(detail)
        # A closed row keeps the /nix fingerprints small (counts and a digest of the store
        # path list, not the list): a real /nix has tens of thousands of paths. The full
        # "before" was only needed while the row could still be recovered.
        before = c.execute(select(transactions_t.c.nix_before)
                           .where(transactions_t.c.id == tx_id)).scalar()
        if before:
            values["nix_before"] = json.dumps(compact(json.loads(before)))
        if nix_after is not None:
            values["nix_after"] = json.dumps(compact(nix_after))
        if nix_report is not None:
            values["nix_report"] = nix_report
        c.execute(update(transactions_t).where(transactions_t.c.id == tx_id).values(**values))

    def last_done_tx(self, c: Connection) -> int:
        return c.execute(select(func.max(transactions_t.c.id))
                         .where(transactions_t.c.status == "done")).scalar() or 0

    def behind(self, c: Connection, key: str) -> bool:
        """Whether the meta key naming the last transaction something follows (the boot
        files, the Nix seams) lags behind the log: then the next command redoes it."""
        return self.get_meta(c, key) != str(self.last_done_tx(c))

    def activations(self, c: Connection, kinds: Iterable[str]) -> dict[int, int]:
        """state id → id of the last finished transaction of these kinds that made it live."""
        rows = c.execute(select(transactions_t.c.to_state, func.max(transactions_t.c.id))
                         .where(transactions_t.c.status == "done",
                                transactions_t.c.kind.in_(list(kinds)),
                                transactions_t.c.to_state.is_not(None))
                         .group_by(transactions_t.c.to_state))
        return {int(sid): int(tx) for sid, tx in rows}

    def running_tx(self, c: Connection) -> dict | None:
        row = c.execute(select(transactions_t).where(transactions_t.c.status == "running")
                        .order_by(transactions_t.c.id)).mappings().first()
        return dict(row) if row else None

    def tx(self, c: Connection, tx_id: int) -> dict:
        return dict(c.execute(select(transactions_t).where(transactions_t.c.id == tx_id))
                    .mappings().one())

    # -- ownership -------------------------------------------------------------

    def seed_ownership(self, c: Connection, rows: list[tuple[str, str, str]]) -> None:
        c.execute(delete(ownership_t))
        c.execute(insert(ownership_t), [{"surface": s, "owner": o, "reason": r}
                                        for s, o, r in rows])
