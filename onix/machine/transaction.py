"""Transactions: every change to the machine plane goes through here.

Shape (after conda's link transaction): *prepare* (read and check the stones,
merge layouts, resolve dependencies — nothing written), *verify* (conflicts,
symlink escapes, unknown states — still nothing written), *execute* (the
named steps below, each recorded in the journal). A crash at any step leaves
the journal row `running`; the next onix that takes the lock calls
`recover()`, which looks at what /usr/.stateID says and either finishes the
transaction (the exchange happened) or undoes it (it did not). The root is
then exactly the old state or exactly the new one.

Steps of a transaction that builds a new state (install, remove):

    import    stream stones into store/.tmp, hash every blob, admit, record
    journal   pending state row + running journal row, /nix fingerprint
    blit      build .onix/staging/usr by hardlinking from the store
    trigger   run the stones' triggers over it; record what they wrote (triggers.py)
    stateid   write usr/.stateID and usr/lib/os-release into staging
    sync      syncfs, so the tree we swap in is on disk
    exchange  renameat2(RENAME_EXCHANGE) staging/usr <-> /usr   (the commit point)
    archive   move the old tree to .onix/states/<old>/usr
    links     /bin, /sbin, /lib, /lib64 -> usr/...
    activate  mark the state active, close the journal row
    done      (crash point after the last step, before unlock)

Activating an archived state (activate, rollback) needs no blit: its tree is
exchanged straight from .onix/states/<id>/usr, which is why rollback costs the
same at 20k files as at 200k.

The steps' work lives beside this module: candidates.py (prepare), importer.py
(import), blit.py (blit, stateid, links), follow.py (the seams after activation);
this module orders them, journals them, and settles a journal a crash left running.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onix.boot import checks
from onix.boot import plane as boot
from onix.core import faults, fsutil
from onix.core.errors import ConflictError, StateError
from onix.core.paths import RootPaths, read_state_id
from onix.machine import blit, follow, importer, ownership, triggers
from onix.machine.candidates import Candidate, unmet_dependencies
from onix.machine.layout import FILE, Entry, canonical_digest, merge
from onix.machine.session import Session

BUILD_STEPS = ("import", "journal", "blit", "trigger", "stateid", "sync", "exchange", "archive",
               "links", "activate", "done")
ACTIVATE_STEPS = ("journal", "exchange", "archive", "links", "activate", "done")
NEW_STATE_KINDS = ("install", "remove", "sync")


@dataclass
class Result:
    """What a command did, for --json and for the human summary."""

    kind: str
    changed: bool = True
    from_state: int | None = None
    to_state: int | None = None
    fstx: str | None = None
    summary: str = ""
    nix: str | None = None
    recovered: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("kind", "changed", "from_state", "to_state", "fstx",
                                              "summary", "nix", "recovered", "warnings", "detail")}


def fstx_of(state_id: int, layout_digest: str) -> str:
    return f"{state_id}-{layout_digest[:4]}"


# -- execute: build a new state --------------------------------------------------


def archive_old_tree(paths: RootPaths, where: Path, old_state: int | None) -> None:
    """After the exchange, `where` holds the previous /usr: file it under its state id."""
    if not where.exists():
        return
    if old_state is None:
        fsutil.remove_tree(where)  # the empty placeholder a first install swapped out
        return
    dest = paths.state_tree(old_state)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        fsutil.remove_tree(dest)
    os.rename(where, dest)
    fsutil.fsync_dir(dest.parent)
    fsutil.fsync_dir(paths.states)  # the new states/<id> entry itself


def _finish(s: Session, tx_id: int, to_state: int, kind: str, nix_before: dict) -> tuple[str, list]:
    faults.point(kind, "links")
    warnings = blit.root_links(s.paths)
    faults.point(kind, "activate")
    nix_after = ownership.nix_fingerprint(s.paths.root)
    report = ownership.report(nix_before, nix_after)
    with s.db.write() as c:
        s.db.mark_active(c, to_state)
        if kind in boot.USER_KINDS:
            # What the user chose is what boots by default (boot.py); a state made live
            # by booting an older entry (reconcile) is not.
            s.db.set_meta(c, boot.META_DEFAULT, str(to_state))
            s.db.delete_meta(c, boot.META_FALLBACK)
        s.db.end_tx(c, tx_id, "done", nix_after=nix_after, nix_report=report)
    unmark_txn(s.paths)
    faults.point(kind, "done")
    return report, warnings


def _after_activation(s: Session, result: Result) -> Result:
    """The planes that follow the live state: boot files, the Nix seams, services.

    The state is committed by now. Boot files are required (an error says what to do);
    the Nix seams and services are reported as warnings when they fail, since the
    machine is live and `onix nix seed` / `onix services --sync` redo them.
    """
    result.detail["boot"] = boot.after_change(s)
    result.detail.update(follow.follow_live(s, result.warnings))
    return result


def mark_txn(paths: RootPaths) -> None:
    """Tell the initrd (onix/boot/data/init) not to exchange /usr until this journal is closed."""
    fd = os.open(paths.txn_marker, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    os.fsync(fd)
    os.close(fd)
    fsutil.fsync_dir(paths.onix)


def unmark_txn(paths: RootPaths) -> None:
    with suppress(FileNotFoundError):
        paths.txn_marker.unlink()


def build_state(s: Session, *, kind: str, stone_ids: list[int], entries: list[Entry],
                summary: str, implicit: Iterable[int] = (), stage: bool = False) -> Result:
    """Build a new state from `entries` and make it live — or, with `stage`, file it as
    an archived state and make it the next boot's default without touching /usr
    (`onix sync --boot`, as `nixos-rebuild boot`): the initrd exchanges it in at boot."""
    paths = s.paths
    from_state = s.live_state()
    digest = canonical_digest(entries)
    files = [e for e in entries if e.kind == FILE]
    faults.point(kind, "journal")
    nix_before = ownership.nix_fingerprint(paths.root)
    with s.db.write() as c:
        state_id = s.db.next_state_id(c)
        fstx = fstx_of(state_id, digest)
        s.db.add_state(c, state_id=state_id, fstx=fstx, summary=summary, parent=from_state,
                       layout_digest=digest, stone_ids=stone_ids, files=len(files),
                       nbytes=sum(e.size for e in files), implicit=implicit)
        tx_id = s.db.begin_tx(c, kind=kind, from_state=from_state, to_state=state_id,
                              detail={"source": "staging", "staged": stage,
                                      "command": s.command}, nix_before=nix_before)
    mark_txn(paths)
    faults.point(kind, "blit")
    blit.blit(s, entries, paths.staging_usr)
    faults.point(kind, "trigger")
    ran = triggers.run(s, state_id=state_id, usr=paths.staging_usr, entries=entries)
    if ran is not None:  # what the triggers wrote is part of the state, and of its name
        fstx = fstx_of(state_id, ran.layout_digest)
        triggers.record(s, ran, state_id=state_id, fstx=fstx)
    faults.point(kind, "stateid")
    blit.write_generated(paths.staging_usr, state_id, fstx)
    checks.check_state(s, usr=paths.staging_usr, fstx=fstx)  # before it can become live
    follow.check_seams(paths.staging_usr)
    faults.point(kind, "sync")
    fsutil.syncfs(paths.staging)
    if stage:
        return _stage(s, tx_id=tx_id, state_id=state_id, fstx=fstx, kind=kind,
                      summary=summary, from_state=from_state)
    faults.point(kind, "exchange")
    if paths.usr.is_dir():
        fsutil.exchange(paths.staging_usr, paths.usr)
    else:
        os.rename(paths.staging_usr, paths.usr)
    fsutil.fsync_dir(paths.root)
    faults.point(kind, "archive")
    archive_old_tree(paths, paths.staging_usr, from_state)
    report, warnings = _finish(s, tx_id, state_id, kind, nix_before)
    return _after_activation(s, Result(
        kind=kind, from_state=from_state, to_state=state_id, fstx=fstx, summary=summary,
        nix=report, warnings=warnings, recovered=s.recovered))


def _stage(s: Session, *, tx_id: int, state_id: int, fstx: str, kind: str, summary: str,
           from_state: int | None) -> Result:
    """File the built tree as an archived state and make it the boot default.

    The live /usr is not touched. A crash before the journal closes undoes it (settle
    removes the filed tree and forgets the state): the old state, as if never asked.
    """
    paths = s.paths
    faults.point(kind, "stage")
    dest = paths.state_tree(state_id)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.rename(paths.staging_usr, dest)
    fsutil.fsync_dir(dest.parent)
    fsutil.fsync_dir(paths.states)
    faults.point(kind, "activate")
    with s.db.write() as c:
        s.db.set_status(c, state_id, "archived")
        s.db.set_meta(c, boot.META_DEFAULT, str(state_id))
        s.db.delete_meta(c, boot.META_FALLBACK)
        s.db.end_tx(c, tx_id, "done")
    unmark_txn(paths)
    faults.point(kind, "done")
    result = Result(kind=kind, from_state=from_state, to_state=state_id, fstx=fstx,
                    summary=summary, recovered=s.recovered, detail={"staged": True})
    result.detail["boot"] = boot.after_change(s)
    return result


def _selection(s: Session) -> dict[str, dict]:
    """Stone name → stone row for the live state (empty on a fresh root).

    Each row carries `explicit`: asked for by name, or pulled in as a dependency.
    """
    live = s.live_state()
    if live is None:
        return {}
    with s.db.read() as c:  # check_live_state() made sure the database knows it
        implicit = s.db.state_implicit(c, live)
        return {r["name"]: {**r, "explicit": r["id"] not in implicit}
                for r in s.db.stones(c, s.db.state_stone_ids(c, live))}


def _plan(s: Session, selection: dict[str, dict], new: dict[str, Candidate]) -> list[Entry]:
    layouts: dict[str, list[Entry]] = {}
    with s.db.read() as c:
        for name, row in selection.items():
            layouts[name] = new[name].layout if name in new else s.db.stone_layout(c, row["id"])
    return merge(layouts)


def install(s: Session, cands: list[Candidate], *, dependencies: Iterable[str] = (),
            drop: Iterable[str] = (), kind: str = "install", stage: bool = False) -> Result:
    """Install or replace stones (opened and checked by open_candidates), and leave out
    the installed stones named in `drop` (a sync's orphans); one transaction, one new
    state — staged for the next boot with `stage`.

    Stones are recorded as explicit (asked for) unless their name is in `dependencies`
    (pulled in by the resolver), which `onix remove` may later drop as orphans.
    """
    dependencies = set(dependencies)
    faults.point(kind, "import")
    current = _selection(s)
    gone = [n for n in drop if n in current]
    selection = {n: r for n, r in current.items() if n not in gone}
    new = {cand.meta["name"]: cand for cand in cands}
    # An explicit request promotes a dependency; a dependency never demotes a request.
    explicit = {n for n, r in current.items() if r["explicit"]}
    explicit |= {n for n in new if n not in dependencies}
    changes = []
    for name, cand in new.items():
        old = current.get(name)
        if old and old["digest"] == cand.digest:
            continue
        evr = f"{cand.meta['version']}-{cand.meta['release']}"
        changes.append(f"{name} {old['version']}-{old['release']} → {evr}" if old
                       else f"{name} {evr}")
        selection[name] = cand.meta
    changes += [f"{n} {current[n]['version']}-{current[n]['release']} removed"
                for n in sorted(gone)]
    if not changes:
        return _promote(s, current, sorted(n for n in new if n in explicit))
    unmet = unmet_dependencies(selection)
    if unmet:
        raise ConflictError("unmet dependencies: " + "; ".join(unmet), path=cands[0].path,
                            hint="install the stones that provide them in the same command")
    entries = _plan(s, selection, new)
    checks.check_layout(s, entries, read=importer.content_reader(s, list(new.values())))
    changed = [new[n] for n in new if selection[n] is not current.get(n)]
    imported = importer.import_stones(s, changed)
    ids = {n: imported.ids.get(n) or selection[n]["id"] for n in selection}
    before = s.live_state()
    try:
        return build_state(s, kind=kind, stone_ids=[ids[n] for n in sorted(ids)],
                           implicit=[ids[n] for n in ids if n not in explicit],
                           entries=entries, summary=_install_summary(changes, explicit, kind),
                           stage=stage)
    except BaseException:
        # Settle the journal now (the session would too), and if the old state is still
        # live, take the import back as well: a failed install leaves no new stones.
        with suppress(Exception):
            with s.db.read() as c:
                tx = s.db.running_tx(c)
            if tx is not None:
                s.recovered += settle(s, tx)
            if s.live_state() == before:
                imported.undo(s)
        raise


def mark_explicit(s: Session, names: list[str]) -> Result:
    """Record installed stones as asked for (never orphans); no new state: intent only."""
    current = _selection(s)
    missing = [n for n in names if n not in current]
    if missing:
        raise StateError(f"not installed: {', '.join(missing)}", path=s.paths.usr,
                         hint="see onix state show for what the active state holds")
    return _promote(s, current, names)


def _promote(s: Session, current: dict[str, dict], names: list[str]) -> Result:
    """Mark installed dependencies as asked for: intent, not layout, so no new state."""
    promoted = [n for n in names if not current[n]["explicit"]]
    if promoted:
        with s.db.write() as c:
            s.db.mark_explicit(c, s.live_state(), [current[n]["id"] for n in promoted])
    return Result(kind="install", changed=False, from_state=s.live_state(),
                  summary="already installed" + (
                      f" (now explicit: {', '.join(promoted)})" if promoted else ""),
                  recovered=s.recovered)


def _install_summary(changes: list[str], explicit: set[str], kind: str = "install") -> str:
    """'install a 1-1, b 2-1' — what was asked for first; dependencies counted past a few
    (installing nix by name pulls ~50 libraries; state list should stay readable)."""
    asked = [c for c in changes if c.split(" ", 1)[0] in explicit]
    pulled = [c for c in changes if c.split(" ", 1)[0] not in explicit]
    if len(changes) <= 6:
        return f"{kind} " + ", ".join(asked + pulled)
    shown = asked[:5]
    more = [f"{len(asked) - len(shown)} more"] if len(asked) > len(shown) else []
    more += [f"{len(pulled)} dependencies"] if pulled else []
    return f"{kind} " + ", ".join(shown) + (" and " + " and ".join(more) if more else "")


def remove_selection(current: dict[str, dict], names: list[str], *, orphans: bool,
                     usr: Path) -> tuple[dict[str, dict], set[str]]:
    """(the selection after removing `names`, the orphans dropped with them); refuses a
    name that is not installed and a removal that breaks a dependency. Also the plan
    `onix remove --dry-run` shows."""
    missing = [n for n in names if n not in current]
    if missing:
        raise StateError(f"not installed: {', '.join(missing)}", path=usr,
                         hint="see onix state show for what the active state holds")
    selection = {n: r for n, r in current.items() if n not in names}
    unmet = unmet_dependencies(selection)
    if unmet:
        raise ConflictError("removal would break dependencies: " + "; ".join(unmet),
                            path=usr, hint="remove the dependents too")
    dropped: set[str] = set()
    if orphans:
        from onix.repo.resolve import orphans as find_orphans

        dropped = find_orphans(selection=selection,
                               explicit={n for n, r in selection.items() if r["explicit"]})
        selection = {n: r for n, r in selection.items() if n not in dropped}
    return selection, dropped


def remove(s: Session, names: list[str], *, orphans: bool = True) -> Result:
    """Remove stones by name, and (unless orphans=False) the dependencies they alone needed.
    api.remove refuses an empty list before the root is locked."""
    faults.point("remove", "import")
    selection, dropped = remove_selection(_selection(s), names, orphans=orphans,
                                          usr=s.paths.usr)
    entries = _plan(s, selection, {})
    checks.check_layout(s, entries, read=importer.content_reader(s, []))
    summary = "remove " + ", ".join(sorted(names))
    if dropped:
        summary += f" (and orphans {', '.join(sorted(dropped))})"
    return build_state(s, kind="remove", stone_ids=[r["id"] for r in selection.values()],
                       implicit=[r["id"] for r in selection.values() if not r["explicit"]],
                       entries=entries, summary=summary)


# -- execute: switch to an archived state ----------------------------------------


def rollback(s: Session, *, to: int | None = None) -> Result:
    """Activate the newest state older than the live one (or `to`)."""
    if to is None:
        live = s.live_state()
        with s.db.read() as c:
            older = [st["id"] for st in s.db.states(c) if live is not None and st["id"] < live]
        if not older:
            raise StateError("there is no older state to roll back to", path=s.paths.db,
                             hint="see onix state list")
        to = max(older)
    return activate(s, to, kind="rollback")


def activate(s: Session, state_id: int, *, kind: str = "activate") -> Result:
    paths = s.paths
    live = s.live_state()
    with s.db.read() as c:
        target = s.db.state(c, state_id)
    if state_id == live:
        raise StateError(f"state {state_id} is already active", path=paths.state_id_file,
                         hint="nothing to do")
    tree = paths.state_tree(state_id)
    if tree.is_symlink() or tree.parent.is_symlink():
        raise StateError(f"the archived tree of state {state_id} is a symlink", path=tree,
                         hint="onix will not exchange a tree from outside the root into /usr")
    if read_state_id(tree) != state_id:
        raise StateError(f"the archived tree of state {state_id} is missing or damaged",
                         path=tree, hint="run onix verify; prune it with onix state remove")
    checks.check_state(s, usr=tree, fstx=target["fstx"])
    faults.point(kind, "journal")
    nix_before = ownership.nix_fingerprint(paths.root)
    with s.db.write() as c:
        tx_id = s.db.begin_tx(c, kind=kind, from_state=live, to_state=state_id,
                              detail={"source": "archive"}, nix_before=nix_before)
    mark_txn(paths)
    faults.point(kind, "exchange")
    fsutil.exchange(tree, paths.usr)
    fsutil.fsync_dir(paths.root)
    faults.point(kind, "archive")
    archive_old_tree(paths, tree, live)
    remove_empty(tree.parent)
    report, warnings = _finish(s, tx_id, state_id, kind, nix_before)
    return _after_activation(s, Result(
        kind=kind, from_state=live, to_state=state_id, fstx=target["fstx"],
        summary=f"{kind} to state {state_id}", nix=report, warnings=warnings,
        recovered=s.recovered))


def remove_empty(d: Path) -> None:
    with suppress(OSError):
        d.rmdir()


def settle(s: Session, tx: dict) -> list[str]:
    """Finish or undo an install, remove, activate or rollback whose journal row is still
    running (a crash, or an error inside the command): finished when /usr is already the
    new state (the exchange happened), undone when it is still the old one."""
    kind = tx["kind"]
    done: list[str] = []
    detail = json.loads(tx["detail"] or "{}")
    live = s.live_state()
    frm, to = tx["from_state"], tx["to_state"]
    source = s.paths.staging_usr if detail.get("source") == "staging" else s.paths.state_tree(to)
    nix_before = json.loads(tx["nix_before"]) if tx["nix_before"] else {}
    if live == to:
        archive_old_tree(s.paths, source, frm)
        if detail.get("source") != "staging":
            remove_empty(source.parent)
        _finish(s, tx["id"], to, kind, nix_before)
        done.append(f"completed interrupted {kind} to state {to} (journal {tx['id']})")
    elif live == frm:
        if detail.get("source") == "staging":
            fsutil.remove_tree(s.paths.staging_usr)
        if detail.get("staged"):  # filed, but the journal never closed: not made
            fsutil.remove_tree(s.paths.state_tree(to))
            remove_empty(s.paths.state_tree(to).parent)
        with s.db.write() as c:
            if kind in NEW_STATE_KINDS:
                s.db.delete_state(c, to)
            s.db.end_tx(c, tx["id"], "undone")
        unmark_txn(s.paths)
        # Links may be missing if the first install crashed before creating them; harmless.
        if kind in NEW_STATE_KINDS:
            done.append(f"undid interrupted {kind} (state {to} discarded; state {frm} kept)")
        else:
            done.append(f"undid interrupted {kind} to state {to} (state {frm} stays active)")
    else:
        raise StateError(f"/usr/.stateID says {live}, but the interrupted {kind} went from "
                         f"{frm} to {to}", path=s.paths.state_id_file,
                         hint="this needs a human: inspect .onix/states and /usr")
    s.store.clean_tmp()
    return done
