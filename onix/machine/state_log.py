"""Read-side state queries (list, show, diff) and pinning.

Reads need no lock: SQLite's WAL mode gives a consistent snapshot while a
transaction runs. Pinning is a one-row write and takes the root lock like
every other change.
"""

from __future__ import annotations

import json

from onix.core.paths import RootPaths, read_state_id
from onix.machine.db import Database
from onix.machine.layout import Entry
from onix.machine.session import Session


def list_states(paths: RootPaths) -> list[dict]:
    db = Database(paths)
    live = read_state_id(paths.usr)
    try:
        with db.read() as c:
            out = []
            for st in db.states(c):
                stones = len(db.state_stone_ids(c, st["id"]))
                out.append({"id": st["id"], "fstx": st["fstx"], "created": st["created"],
                            "summary": st["summary"], "stones": stones,
                            "pinned": bool(st["pinned"]), "active": st["id"] == live,
                            "files": st["files"]})
            return out
    finally:
        db.close()


def _stones(db: Database, c, state_id: int) -> list[dict]:
    return [{"name": r["name"], "version": r["version"], "release": r["release"],
             "arch": r["arch"], "summary": r["summary"], "digest": r["digest"],
             "depends": json.loads(r["depends"]), "provides": json.loads(r["provides"])}
            for r in db.stones(c, db.state_stone_ids(c, state_id))]


def show_state(paths: RootPaths, state_id: int) -> dict:
    db = Database(paths)
    try:
        with db.read() as c:
            st = db.state(c, state_id)
            return {"id": st["id"], "fstx": st["fstx"], "created": st["created"],
                    "summary": st["summary"], "pinned": bool(st["pinned"]),
                    "active": read_state_id(paths.usr) == state_id, "parent": st["parent"],
                    "files": st["files"], "bytes": st["bytes"],
                    "layout_digest": st["layout_digest"], "stones": _stones(db, c, state_id)}
    finally:
        db.close()


def diff_states(paths: RootPaths, a: int, b: int) -> dict:
    """Stones and files added, removed and changed going from state a to state b."""
    db = Database(paths)
    try:
        with db.read() as c:
            db.state(c, a)
            db.state(c, b)
            sa = {s["name"]: s for s in _stones(db, c, a)}
            sb = {s["name"]: s for s in _stones(db, c, b)}
            la = {e.path: e for e in db.state_layout(c, a)}
            lb = {e.path: e for e in db.state_layout(c, b)}
    finally:
        db.close()

    def evr(s: dict) -> str:
        return f"{s['version']}-{s['release']}"

    def same(x: Entry, y: Entry) -> bool:
        return x.canonical() == y.canonical()

    return {
        "from": a, "to": b,
        "stones": {
            "added": [f"{n} {evr(sb[n])}" for n in sorted(set(sb) - set(sa))],
            "removed": [f"{n} {evr(sa[n])}" for n in sorted(set(sa) - set(sb))],
            "changed": [f"{n} {evr(sa[n])} → {evr(sb[n])}" for n in sorted(set(sa) & set(sb))
                        if sa[n]["digest"] != sb[n]["digest"]],
        },
        "files": {
            "added": sorted(f"/usr/{p}" for p in set(lb) - set(la)),
            "removed": sorted(f"/usr/{p}" for p in set(la) - set(lb)),
            "changed": sorted(f"/usr/{p}" for p in set(la) & set(lb) if not same(la[p], lb[p])),
        },
    }


def set_pinned(s: Session, state_id: int, pinned: bool) -> dict:
    with s.db.write() as c:
        s.db.state(c, state_id)
        s.db.set_pinned(c, state_id, pinned)
    return {"id": state_id, "pinned": pinned}
