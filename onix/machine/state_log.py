"""Read-side state queries (list, show, diff) and pinning.

Reads need no lock: SQLite's WAL mode gives a consistent snapshot while a
transaction runs. Pinning is a one-row write and takes the root lock like
every other change.
"""

from __future__ import annotations

import contextlib
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
    implicit = db.state_implicit(c, state_id)
    return [{"name": r["name"], "version": r["version"], "release": r["release"],
             "arch": r["arch"], "summary": r["summary"], "digest": r["digest"],
             "explicit": r["id"] not in implicit,
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

    def same(x: Entry, y: Entry) -> bool:
        return x.canonical() == y.canonical()

    return {
        "from": a, "to": b,
        "stones": stone_changes(sa, sb),
        "files": {
            "added": sorted(f"/usr/{p}" for p in set(lb) - set(la)),
            "removed": sorted(f"/usr/{p}" for p in set(la) - set(lb)),
            "changed": sorted(f"/usr/{p}" for p in set(la) & set(lb) if not same(la[p], lb[p])),
        },
    }


def stone_changes(sa: dict[str, dict], sb: dict[str, dict]) -> list[dict]:
    """Stones going from selection `sa` to `sb`, as {name, from, to, kind}: kind is added,
    removed, upgrade, downgrade, or rebuilt (same version-release, other contents)."""
    from onix.repo.versions import compare_version_release

    def evr(s: dict) -> str:
        return f"{s['version']}-{s['release']}"

    out = []
    for n in sorted(set(sa) | set(sb)):
        x, y = sa.get(n), sb.get(n)
        if x is None or y is None:
            out.append({"name": n, "from": evr(x) if x else None, "to": evr(y) if y else None,
                        "kind": "added" if x is None else "removed"})
            continue
        if x["digest"] == y["digest"]:
            continue
        c = compare_version_release(x["version"], x["release"], y["version"], y["release"])
        out.append({"name": n, "from": evr(x), "to": evr(y),
                    "kind": "downgrade" if c > 0 else "upgrade" if c < 0 else "rebuilt"})
    return out


def history(paths: RootPaths, *, limit: int | None = None) -> list[dict]:
    """The journal, newest first: what was asked, what changed, when, how long, result."""
    from datetime import datetime

    from onix.machine import reader

    if not paths.db.exists():
        return []
    con = reader.connect(paths.db)
    try:
        rows = con.execute("SELECT t.id, t.kind, t.from_state, t.to_state, t.status, "
                           "t.started, t.finished, t.detail, s.summary, s.fstx FROM "
                           "transactions t LEFT JOIN states s ON s.id = t.to_state "
                           "ORDER BY t.id DESC" + (f" LIMIT {int(limit)}" if limit else ""))
        rows = rows.fetchall()
    finally:
        con.close()
    out = []
    for r in rows:
        detail = json.loads(r["detail"] or "{}")
        seconds = None
        if r["started"] and r["finished"]:
            with contextlib.suppress(ValueError):
                seconds = round((datetime.fromisoformat(r["finished"])
                                 - datetime.fromisoformat(r["started"])).total_seconds(), 3)
        out.append({"id": r["id"], "kind": r["kind"], "from_state": r["from_state"],
                    "to_state": r["to_state"], "fstx": r["fstx"], "result": r["status"],
                    "started": r["started"], "seconds": seconds,
                    "command": detail.get("command") or "",
                    "staged": bool(detail.get("staged")),
                    "summary": r["summary"] or _summary(r["kind"], detail)})
    return out


def _summary(kind: str, detail: dict) -> str:
    if kind in ("prune", "state-remove"):
        states = detail.get("states") or detail.get("doomed") or []
        return f"{kind} states {', '.join(str(i) for i in states)}" if states else kind
    return kind


def set_pinned(s: Session, state_id: int, pinned: bool) -> dict:
    with s.db.write() as c:
        s.db.state(c, state_id)
        s.db.set_pinned(c, state_id, pinned)
    return {"id": state_id, "pinned": pinned}
