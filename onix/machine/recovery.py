"""Recovery: open a root in a known state, whatever the last onix or the last boot left.

`opened()` is how every command that writes gets its Session (only onix/api.py calls
it): it takes the root lock, then `recover()` finishes or undoes an interrupted
transaction from its journal row (transaction.settle) or runs an interrupted prune
forward (prune.resume), and `reconcile()` files a state the initrd made live while
booting an older entry (`onix.fstx=`). Then the boot files and the Nix seams catch up
with the log if a crash or a boot left them behind.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from onix.boot import checks
from onix.boot import plane as boot
from onix.core import fsutil
from onix.core.errors import DiskFullError, OnixError, StateError
from onix.core.lock import root_lock
from onix.core.paths import RootPaths, read_state_id
from onix.core.progress import SILENT, Progress
from onix.machine import blit, follow, prune, transaction
from onix.machine.session import Session, check_live_state


@contextmanager
def opened(paths: RootPaths, *, wait: bool = True, progress: Progress = SILENT,
           create: bool = True) -> Iterator[Session]:
    """Lock the root, open a Session and bring the root to a known state: finish or undo
    what a crash left, refuse a /usr onix cannot name, catch up boot files and the Nix
    seams. An error inside is settled as the next run would settle it; a first command
    that failed leaves no .onix behind."""
    if not create and not paths.db.exists():
        raise StateError("this root has no ONIX database", path=paths.db,
                         hint="install a stone first: onix install --root DIR X.stone")
    fresh = not paths.onix.exists() and not paths.onix.is_symlink()
    root_existed = paths.root.exists()
    discard = paths.root / f".onix.discard-{os.getpid()}"
    try:
        with root_lock(paths, wait=wait, on_wait=progress.note):
            s = Session(paths, progress)
            try:
                s.recovered = recover(s)
                check_live_state(s)
                checks.preflight(s)
                s.recovered += boot.sync_if_needed(s)
                # A recovery, a boot, or a crash after the journal closed: the seams follow.
                s.recovered += follow.seams_if_needed(s)
                yield s
            except BaseException as exc:
                translated = _settle_after_failure(s, exc)
                # A first command that failed leaves no .onix behind. It is moved aside while
                # the lock is held (anyone queued on its lock file re-locks, see lock.py).
                if fresh and read_state_id(paths.usr) is None and not s.db.has_states():
                    s.db.close()
                    os.rename(paths.onix, discard)
                if translated is not None:
                    raise translated from None
                raise
            finally:
                s.db.close()
    finally:
        if discard.exists():
            fsutil.remove_tree(discard)
            if not root_existed:
                with suppress(OSError):
                    paths.root.rmdir()  # only if still empty


def _settle_after_failure(s: Session, exc: BaseException) -> OnixError | None:
    """An error (not a crash) inside a session: settle now exactly as the next run would.

    A journal row left running is undone if the exchange had not happened
    (drop staging, forget the pending state) and finished if it had; a prune
    is run forward. A full disk comes back as a DiskFullError for the caller to raise.
    """
    with suppress(Exception):  # the original error matters more; the next run retries
        s.recovered += recover(s)
    if fsutil.disk_full(exc):
        live = read_state_id(s.paths.usr)
        return DiskFullError("no space left while building the new /usr", path=s.paths.staging,
                             hint="free space on that file system (onix prune helps) and "
                             f"retry; state {live} is active")
    return None


def reconcile(s: Session) -> list[str]:
    """Make the log follow /usr when a known state was made live outside onix.

    The initrd does this on purpose (booting an older entry with onix.fstx=
    exchanges that archived state into /usr, exactly as `activate` would), and
    leaves no journal. The exchange put the previously live tree where the
    booted one was archived; file it under its own id, mark the booted state
    active, and log a `reconcile` transaction.
    """
    live = s.live_state()
    if live is None:
        return []
    with s.db.read() as c:
        active = s.db.active_state(c)
        known = s.db.maybe_state(c, live)
    if known is None or (active is not None and active["id"] == live):
        return []  # an unknown state is reported by status and refused by check_live_state
    old = active["id"] if active is not None else None
    misfiled = s.paths.state_tree(live)
    if old is not None and read_state_id(misfiled) == old:
        transaction.archive_old_tree(s.paths, misfiled, old)
        transaction.remove_empty(misfiled.parent)
    note = _boot_note(s.paths)
    source = "by the initrd, booting an older entry" if note.get("to") == str(live) else \
        "outside onix"
    with s.db.write() as c:
        tx_id = s.db.begin_tx(c, kind="reconcile", from_state=old, to_state=live,
                              detail={"source": source, "note": note})
        s.db.mark_active(c, live)
        s.db.end_tx(c, tx_id, "done")
    with suppress(FileNotFoundError):
        s.paths.boot_note.unlink()
    blit.root_links(s.paths)
    return [f"state {live} was made live {source} (from state {old}); the log now "
            "follows /usr"]


def _boot_note(paths: RootPaths) -> dict[str, str]:
    """The initrd's `key=value` note about the exchange it made (onix/boot/data/init writes it)."""
    try:
        text = paths.boot_note.read_text(errors="replace")
    except OSError:
        return {}
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def recover(s: Session) -> list[str]:
    """Finish or undo whatever a crashed onix left; returns what it did, for the user."""
    with s.db.read() as c:
        tx = s.db.running_tx(c)
    done: list[str] = []
    if tx is None:
        # No journal: any staging tree is debris of a crash before the journal row.
        if s.paths.staging_usr.exists() or s.paths.staging_usr.is_symlink():
            fsutil.remove_tree(s.paths.staging_usr)
            done.append("removed an unfinished staging tree")
        s.store.clean_tmp()
        transaction.unmark_txn(s.paths)  # a crash after the journal closed, before the marker went
        return done + reconcile(s)
    kind = tx["kind"]
    if kind == "prune" or kind == "state-remove":
        # The machine may have booted into one of the doomed states meanwhile (initrd,
        # onix.fstx=): file the trees first; resume() then spares whatever is live.
        done = reconcile(s)
        prune.resume(s, tx)
        return [*done, f"completed interrupted {kind} (journal {tx['id']})"]
    return transaction.settle(s, tx)
