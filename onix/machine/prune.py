"""Prune: forget old states, delete their trees, collect unused store content.

Steps (each a crash point; the journal row carries the plan, so an
interrupted prune is simply run forward again by the next onix):

    journal   record which states go, /nix fingerprint
    boot      sync the boot files without them (boot.prune_entries): no entry may
              outlive its state, and none may name a state the log forgot
    forget    delete their rows (the states are gone from here on)
    trash     move .onix/states/<id> to .onix/trash/, then delete it
    gc        drop stones no state uses, store objects no stone uses,
              cached stones of dropped stones, and import debris
    done      close the journal row with what was freed
"""

from __future__ import annotations

import json
import os
from contextlib import suppress

from sqlalchemy import select

from onix.boot import plane as boot
from onix.core import faults, fsutil
from onix.core.errors import StateError
from onix.core.paths import RootPaths, read_state_id
from onix.machine import follow, ownership
from onix.machine.db import stones_t
from onix.machine.preview import Preview
from onix.machine.session import Session
from onix.machine.transaction import Result

PRUNE_STEPS = ("journal", "boot", "forget", "trash", "gc", "done")


def plan(states: list[dict], *, active: int | None, keep: int,
         boot_default: int | None = None) -> list[int]:
    """Ids to prune: all but the `keep` newest, the active one, the boot default, pinned ones."""
    newest = {s["id"] for s in sorted(states, key=lambda s: s["id"], reverse=True)[:keep]}
    spared = {active, boot_default}
    return sorted(s["id"] for s in states
                  if s["id"] not in newest and s["id"] not in spared and not s["pinned"])


def _boot_default(s: Session, c) -> int | None:
    value = s.db.get_meta(c, boot.META_DEFAULT)
    return int(value) if value and value.isdigit() else None


def check_keep(keep: int) -> None:
    """Before the root is locked: a prune must keep the active state at least."""
    if keep < 1:
        raise StateError("--keep must be at least 1", hint="the active state is always kept")


def prune(s: Session, *, keep: int = 3) -> Result:
    """Prune all but the `keep` newest states (api.prune checks `keep` before locking)."""
    with s.db.read() as c:
        doomed = plan(s.db.states(c), active=s.live_state(), keep=keep,
                      boot_default=_boot_default(s, c))
    return _run(s, doomed, kind="prune")


def preview(paths: RootPaths, *, keep: int = 3) -> Preview:
    """`onix prune --dry-run`: the states prune would remove and the store bytes only
    they use, read without the lock (nothing is written)."""
    from onix.machine import preview as previews
    from onix.machine import reader

    live = read_state_id(paths.usr)
    con = reader.connect(paths.db)
    try:
        states = [dict(r) for r in con.execute(
            "SELECT id, pinned FROM states WHERE status != 'pending'")]
        row = con.execute("SELECT value FROM meta WHERE key = ?",
                          (boot.META_DEFAULT,)).fetchone()
    finally:
        con.close()
    default = int(row[0]) if row and str(row[0]).isdigit() else None
    return previews.prune(paths, doomed=plan(states, active=live, keep=keep,
                                             boot_default=default))


def remove_states(s: Session, ids: list[int]) -> Result:
    """`onix state remove`: like prune, for named states."""
    live = s.live_state()
    with s.db.read() as c:
        for sid in ids:
            st = s.db.state(c, sid)
            if sid == live:
                raise StateError(f"state {sid} is the active state", path=s.paths.db,
                                 hint="activate another state first")
            if st["pinned"]:
                raise StateError(f"state {sid} is pinned", path=s.paths.db,
                                 hint=f"onix state unpin {sid} first")
            if sid == _boot_default(s, c):
                raise StateError(f"state {sid} is the boot default", path=s.paths.db,
                                 hint="onix boot set-default another state first")
    return _run(s, sorted(set(ids)), kind="state-remove")


def _run(s: Session, doomed: list[int], *, kind: str) -> Result:
    faults.point(kind, "journal")
    nix_before = ownership.nix_fingerprint(s.paths.root)
    with s.db.write() as c:
        tx_id = s.db.begin_tx(c, kind=kind, from_state=s.live_state(), to_state=None,
                              detail={"states": doomed}, nix_before=nix_before)
        tx = s.db.tx(c, tx_id)
    detail = resume(s, tx)
    report = detail.pop("nix_report")
    detail["boot"] = boot.after_change(s)
    warnings: list[str] = []
    detail.update(follow.follow_live(s, warnings))  # drops the GC roots of the pruned states
    return Result(kind=kind, changed=bool(doomed or detail["objects"]), summary=(
        f"removed {len(doomed)} states, {detail['objects']} objects, "
        f"{detail['bytes_freed']} bytes"), nix=report, recovered=s.recovered, detail=detail,
        warnings=warnings)


def resume(s: Session, tx: dict) -> dict:
    """Run (or re-run after a crash) the steps of a prune journal row. Idempotent."""
    kind = tx["kind"]
    live = s.live_state()
    # Never the live state, even if it was doomed when the prune was journalled.
    doomed: list[int] = [i for i in json.loads(tx["detail"])["states"] if i != live]
    faults.point(kind, "boot")
    boot.prune_entries(s, doomed)
    faults.point(kind, "forget")
    with s.db.write() as c:
        for sid in doomed:
            s.db.delete_state(c, sid)
        s.db.tx_step(c, tx["id"], "trash")
    faults.point(kind, "trash")
    s.paths.trash.mkdir(exist_ok=True)
    for sid in doomed:
        d = s.paths.states / str(sid)
        if d.exists():
            os.rename(d, s.paths.trash / f"{sid}-{tx['id']}")
    for d in list(s.paths.trash.iterdir()):
        fsutil.remove_tree(d)
    faults.point(kind, "gc")
    objects, freed = collect_garbage(s)
    faults.point(kind, "done")
    nix_before = json.loads(tx["nix_before"]) if tx["nix_before"] else {}
    nix_after = ownership.nix_fingerprint(s.paths.root)
    report = ownership.report(nix_before, nix_after)
    detail = {"states": doomed, "objects": objects, "bytes_freed": freed}
    with s.db.write() as c:
        s.db.end_tx(c, tx["id"], "done", detail=detail, nix_after=nix_after, nix_report=report)
    return {**detail, "nix_report": report}


def collect_garbage(s: Session) -> tuple[int, int]:
    """Delete what no remaining state can reach. Returns (objects removed, bytes freed)."""
    with s.db.write() as c:
        s.db.delete_stones(c, s.db.unused_stones(c))
        keep = s.db.referenced_objects(c)
        known = set(c.execute(select(stones_t.c.digest)).scalars())
    objects = object_bytes = kept_bytes = 0
    for key, path in list(s.store.objects()):
        if (key.digest, key.mode, key.uid, key.gid) not in keep:
            if path.exists() or path.is_symlink():
                object_bytes += s.store.remove(key)
                objects += 1
        else:
            with suppress(FileNotFoundError):  # verify reports it missing; nothing to count
                kept_bytes += path.lstat().st_size
    cache_bytes = 0
    for cached in s.paths.stone_cache.glob("*.stone"):
        if cached.stem not in known:
            with suppress(FileNotFoundError):
                cache_bytes += cached.stat().st_size
                cached.unlink()
    s.store.clean_tmp()
    with s.db.write() as c:
        # Recount rather than subtract: objects admitted by an import that crashed before it
        # was recorded were never counted, and this walk sees every object anyway.
        s.db.set_meta(c, "store_bytes", str(kept_bytes))
    return objects, object_bytes + cache_bytes
