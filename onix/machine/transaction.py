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
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Iterable
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onix.boot import plane as boot
from onix.core import faults, fsutil, proc
from onix.core.errors import ConflictError, DiskFullError, OnixError, StateError, StoneError
from onix.core.lock import root_lock
from onix.core.parallel import in_two_processes, split_balanced
from onix.core.paths import OS_RELEASE_FILE, ROOT_LINKS, STATE_ID_FILE, RootPaths, read_state_id
from onix.core.progress import SILENT, Progress
from onix.machine import ownership
from onix.machine.layout import DIR, FILE, SYMLINK, Entry, canonical_digest, implicit_dirs, merge
from onix.machine.store import DigestMismatch, ObjectKey, Store

BUILD_STEPS = ("import", "journal", "blit", "stateid", "sync", "exchange", "archive", "links",
               "activate", "done")
ACTIVATE_STEPS = ("journal", "exchange", "archive", "links", "activate", "done")
NEW_STATE_KINDS = ("install", "remove")
SWITCH_KINDS = ("activate", "rollback")


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


def os_release(state_id: int, fstx: str) -> bytes:
    return (f'NAME="ONIX"\nID=onix\nPRETTY_NAME="ONIX ({fstx})"\nVERSION_ID="{state_id}"\n'
            f"BUILD_ID={fstx}\nONIX_STATE={state_id}\nONIX_FSTX={fstx}\n").encode()


# -- session: lock, database, recovery ------------------------------------------


class Session:
    """What a mutating command holds: the root lock, the database, the store."""

    def __init__(self, paths: RootPaths, progress: Progress):
        from onix.machine.db import Database

        self.paths = paths
        self.progress = progress
        created = not paths.db.exists()
        self.db = Database(paths, create=True)
        self.store = Store(paths)
        if created:
            with self.db.write() as c:
                self.db.seed_ownership(c, ownership.TABLE)
        self.recovered: list[str] = []

    def live_state(self) -> int | None:
        return read_state_id(self.paths.usr)



def check_live_state(s: Session) -> None:
    """Refuse to act on a /usr whose state onix cannot name.

    A missing or unreadable .stateID in a non-empty /usr, or one naming a state
    the database does not know (a database restored from an older backup), would
    make verify --fix "repair" /usr against nothing and prune or activate treat
    the live tree as disposable. A human has to look first.
    """
    usr = s.paths.usr
    live = s.live_state()
    if live is None:
        if usr.is_dir() and any(usr.iterdir()):
            raise StateError("/usr has no readable .stateID, so onix cannot tell which state "
                             "is live", path=s.paths.state_id_file,
                             hint="restore usr/.stateID (see onix state list) before any change")
        return
    with s.db.read() as c:
        if s.db.maybe_state(c, live) is None:
            raise StateError(f"/usr/.stateID names state {live}, which the database does not "
                             "know", path=s.paths.state_id_file,
                             hint="restore the matching database, or reinstall; onix will "
                             "not guess")


@contextmanager
def session(root: Path | str, *, wait: bool = True, progress: Progress = SILENT,
            create: bool = True):
    paths = RootPaths.of(root)
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
                boot.preflight(s)
                s.recovered += boot.sync_if_needed(s)
                # A recovery, a boot, or a crash after the journal closed: the seams follow.
                s.recovered += seams_if_needed(s)
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


# -- prepare: read stones and plan a selection ---------------------------------


@dataclass
class Candidate:
    """A stone named on the command line: opened and checked, not yet imported."""

    path: Path
    digest: str
    stone: Any  # onix.stone.Stone, open until the command ends

    @property
    def meta(self) -> dict:
        return self.stone.meta.as_dict()

    @property
    def layout(self) -> list[Entry]:
        return self.stone.layout


@contextmanager
def open_candidates(files: list[Path]):
    """Open and check every stone before anything is written; close them all at the end."""
    from onix.machine.stone import Stone, digest_file

    out: list[Candidate] = []
    seen: dict[str, Path] = {}
    try:
        for f in files:
            stone = Stone(Path(f))
            try:
                digest = digest_file(Path(f))
            except BaseException:
                stone.close()
                raise
            out.append(Candidate(Path(f).absolute(), digest, stone))
            name = stone.meta.name
            if name in seen:
                raise ConflictError(f"two stones named {name} given ({seen[name]} and {f})",
                                    path=f, hint="pass only one version of a stone")
            seen[name] = Path(f)
        yield out
    finally:
        for cand in out:
            cand.stone.close()


def unmet_dependencies(selection: dict[str, dict]) -> list[str]:
    """Depends no stone of the selection provides; a stone provides its own name."""
    provided: set[str] = set()
    for name, meta in selection.items():
        provided.add(name)
        provided.update(json.loads(meta["provides"]) if isinstance(meta["provides"], str)
                        else meta["provides"])
    out = []
    for name, meta in sorted(selection.items()):
        deps = json.loads(meta["depends"]) if isinstance(meta["depends"], str) else meta["depends"]
        out.extend(f"{name} needs {d}" for d in deps if d not in provided)
    return out


def check_usr_is_ours(paths: RootPaths) -> None:
    usr = paths.usr
    if usr.is_symlink() or (usr.exists() and not usr.is_dir()):
        raise StateError("is not a directory onix can swap", path=usr,
                         hint="move it away; onix owns /usr")
    if usr.is_dir() and read_state_id(usr) is None and any(usr.iterdir()):
        raise StateError("exists but was not made by onix (no .stateID)", path=usr,
                         hint="move it aside (e.g. to usr.orig) so onix can own /usr")


# -- execute: build a new state --------------------------------------------------


def _content_reader(s: Session, cands: list[Candidate]):
    """A file's bytes by its layout entry, before import: from the store, or else from a
    stone on the command line (one pass over its content; the digest is checked here,
    since nothing has verified that content yet)."""
    import blake3

    found: dict[str, bytes] = {}

    def read(e: Entry) -> bytes:
        key = ObjectKey(e.digest, e.installed_mode, e.uid, e.gid)
        if s.store.has(key):
            return fsutil.read_nofollow(s.store.path(key))
        if e.digest not in found:
            for cand in cands:
                if not any(x.digest == e.digest for x in cand.layout):
                    continue
                for digest, _length, chunks in cand.stone.contents():
                    if digest == e.digest:
                        data = b"".join(chunks)
                        if blake3.blake3(data).hexdigest() != digest:
                            raise StoneError(f"content {digest[:16]}… is corrupt",
                                             path=cand.path, hint="the stone is damaged")
                        found[digest] = data
                break
        if e.digest not in found:
            raise StoneError(f"no content for usr/{e.path}", hint="the stone is damaged")
        return found[e.digest]

    return read


def _objects_for(entries: list[Entry]) -> set[ObjectKey]:
    return {ObjectKey(e.digest, e.installed_mode, e.uid, e.gid)
            for e in entries if e.kind == FILE and e.size > 0}


@dataclass
class Imported:
    """What one import added, so a transaction that then fails can take it back."""

    ids: dict[str, int] = field(default_factory=dict)  # stone name → id, every candidate
    new_ids: list[int] = field(default_factory=list)  # rows this import created
    objects: list[Path] = field(default_factory=list)
    shards: list[Path] = field(default_factory=list)
    cached: list[Path] = field(default_factory=list)
    nbytes: int = 0

    def undo(self, s: Session) -> None:
        """Forget the new stones and delete what only they brought (state rows first)."""
        with s.db.write() as c:
            s.db.delete_stones(c, [i for i in self.new_ids if i in s.db.unused_stones(c)])
            s.db.bump_store_bytes(c, -self.nbytes)
        for p in self.objects + self.cached:
            p.unlink(missing_ok=True)
        for shard in self.shards:
            with suppress(OSError):
                shard.rmdir()


def import_stones(s: Session, cands: list[Candidate]) -> Imported:
    """Import new stones: store objects + cached stone + DB rows, all or nothing."""
    ids: dict[str, int] = {}
    fresh: list[Candidate] = []
    with s.db.read() as c:
        for cand in cands:
            row = s.db.stone_by_digest(c, cand.digest)
            if row:
                ids[cand.meta["name"]] = row["id"]
            else:
                fresh.append(cand)
    if not fresh:
        return Imported(ids=ids)
    s.store.clean_tmp()
    batch = s.store.batch()
    cached: list[Path] = []
    recorded = False
    total = sum(e.size for cand in fresh for e in cand.layout if e.kind == FILE)
    s.progress.start("importing", total)
    try:
        keys: set[ObjectKey] = set()
        for cand in fresh:
            need = _objects_for(cand.layout)
            keys |= need
            missing = {k.digest for k in need if not s.store.has(k)}
            first_mode = {}
            for k in sorted(need):  # admit() takes keys in this order; the first needs no chmod
                first_mode.setdefault(k.digest, k.mode)
            try:
                for digest, length, chunks in cand.stone.contents():
                    if digest in missing:
                        batch.write(digest, chunks, mode=first_mode[digest])
                    s.progress.advance(length)
            except DigestMismatch as e:
                raise StoneError(f"content {e.expected[:16]}… is corrupt ({e})",
                                 path=cand.path, hint="the stone is damaged; fetch or "
                                 "rebuild it") from None
        # The cached stone is a copy, never a hardlink: `cp new.stone mine.stone` rewrites the
        # user's inode in place, and the cache is what verify --fix restores from. It is
        # copied before admit() so that admit's syncfs() makes it durable too.
        staged_cache = []
        for cand in fresh:
            dest = s.paths.stone_cache / f"{cand.digest}.stone"
            if not dest.exists():
                tmp = dest.with_name(f".{dest.name}.tmp")
                shutil.copyfile(cand.path, tmp)
                staged_cache.append((tmp, dest))
                cached.append(tmp)
        faults.point("install", "admit")
        batch.admit(keys)
        for tmp, dest in staged_cache:
            os.rename(tmp, dest)
            cached.append(dest)
        faults.point("install", "record")
        new_ids = []
        with s.db.write() as c:
            for cand in fresh:
                ids[cand.meta["name"]] = s.db.add_stone(c, cand.digest, cand.meta, cand.layout)
                new_ids.append(ids[cand.meta["name"]])
            s.db.bump_store_bytes(c, batch.admitted_bytes)
            # From here the commit may have happened by the time an interruption lands;
            # orphaned objects are prune's to collect, deleting referenced ones is worse.
            recorded = True
    except BaseException as exc:
        if recorded:  # e.g. Ctrl-C right after the commit: the rows need these objects
            raise
        batch.undo()
        for p in cached:
            p.unlink(missing_ok=True)
        if fsutil.disk_full(exc):
            raise DiskFullError("no space left while importing stones", path=s.paths.store,
                                hint="free space on that file system (onix prune helps) and "
                                "retry; nothing was changed") from None
        raise
    finally:
        batch.close()
        s.progress.finish()
    return Imported(ids=ids, new_ids=new_ids, objects=list(batch.admitted),
                    shards=list(batch.new_shards), cached=cached, nbytes=batch.admitted_bytes)


def blit(s: Session, entries: list[Entry], dest: Path) -> None:
    """Build a /usr tree at `dest` from the store: directories, then the file links.

    The plan is the layout itself, so unlike `cp -al` nothing is walked or
    stat'ed. Linking is split by directory between this process and one forked
    child (onix.parallel): ~87 ms for 20k files, against ~107 ms with threads.
    """
    if dest.exists() or dest.is_symlink():
        fsutil.remove_tree(dest)
    os.mkdir(dest, 0o755)
    base = str(dest)
    dirs = [e for e in entries if e.kind == DIR]
    # Declared and implicit directories together, parents first ("a" sorts before "a/b").
    for d in sorted([*implicit_dirs(entries), *(e.path for e in dirs)]):
        os.mkdir(f"{base}/{d}", 0o755)
    groups: dict[str, list[Entry]] = {}
    for e in entries:
        if e.kind == FILE:
            groups.setdefault(e.path.rpartition("/")[0], []).append(e)
    total = sum(len(g) for g in groups.values())
    s.progress.start("linking", total)
    store = str(s.store.dir)
    if total < 4000:  # not worth a fork
        _link_files(store, base, list(groups.items()))
    else:
        mine, theirs = split_balanced(list(groups.items()), lambda kv: len(kv[1]))
        in_two_processes(lambda: _link_files(store, base, theirs),
                         lambda: _link_files(store, base, mine))
    s.progress.advance(total)
    is_root = os.geteuid() == 0
    for e in entries:
        if e.kind == SYMLINK:
            os.symlink(e.target, f"{base}/{e.path}")
            if is_root:
                os.lchown(f"{base}/{e.path}", e.uid, e.gid)
    # Directory modes last: a 0555 directory would refuse its own children otherwise.
    for e in reversed(dirs):
        fsutil.set_owner_and_mode(f"{base}/{e.path}", uid=e.uid, gid=e.gid,
                                  mode=e.installed_mode)
    s.progress.finish()


def _link_files(store: str, base: str, groups: list[tuple[str, list[Entry]]]) -> None:
    """Hardlink (or, for empty files, create) every file of `groups` below `base`."""
    shard_fds: dict[str, int] = {}
    try:
        for parent, files in groups:
            dfd = os.open(f"{base}/{parent}" if parent else base, os.O_RDONLY | os.O_DIRECTORY)
            try:
                for e in files:
                    name = e.path.rpartition("/")[2]
                    mode = e.installed_mode
                    if e.size == 0:
                        # A fresh inode per empty file: one shared one would hit EMLINK.
                        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode,
                                     dir_fd=dfd)
                        try:
                            fsutil.set_owner_and_mode(fd, uid=e.uid, gid=e.gid, mode=mode)
                        finally:
                            os.close(fd)
                        continue
                    shard = e.digest[:2]
                    obj = f"{e.digest}.{mode:04o}.{e.uid}.{e.gid}"  # store.ObjectKey.name
                    try:
                        sfd = shard_fds.get(shard)
                        if sfd is None:
                            sfd = shard_fds[shard] = os.open(f"{store}/{shard}",
                                                             os.O_RDONLY | os.O_DIRECTORY)
                        os.link(obj, name, src_dir_fd=sfd, dst_dir_fd=dfd)
                    except FileNotFoundError:
                        raise FileNotFoundError(errno.ENOENT, "store object missing (onix "
                                                "verify --fix restores it)",
                                                f"{store}/{shard}/{obj}") from None
                    except OSError as err:
                        if err.errno != errno.EMLINK:
                            raise
                        # The inode is full of links (ext4: 65,000): give this path a copy.
                        shutil.copyfile(f"{store}/{shard}/{obj}", f"{base}/{e.path}")
                        fsutil.set_owner_and_mode(f"{base}/{e.path}", uid=e.uid, gid=e.gid,
                                                  mode=mode)
            finally:
                os.close(dfd)
    finally:
        for fd in shard_fds.values():
            os.close(fd)


def write_generated(tree: Path, state_id: int, fstx: str) -> None:
    """Write usr/.stateID and usr/lib/os-release, never through a symlink."""
    lib = tree / "lib"
    if lib.is_symlink():  # layouts reserve lib as a directory; this is a second guard
        raise StateError("is a symlink; onix will not write through it", path=lib,
                         hint="the stone that ships it is unsafe")
    lib.mkdir(exist_ok=True)
    for rel, data in generated_files(state_id, fstx).items():
        write_generated_file(tree, rel, data)


def generated_files(state_id: int, fstx: str) -> dict[str, bytes]:
    """What onix writes into every state's tree (relative to usr/) besides its stones."""
    return {STATE_ID_FILE: f"{state_id}\n".encode(), OS_RELEASE_FILE: os_release(state_id, fstx)}


def write_generated_file(tree: Path, rel: str, data: bytes) -> None:
    """Replace one generated file, read-only, never writing through a symlink."""
    p = tree / rel
    if p.is_symlink() or p.exists():
        fsutil.remove_tree(p)  # a file, a link, or a directory someone put in its place
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o444)
    try:
        os.write(fd, data)
        os.fchmod(fd, 0o444)
    finally:
        os.close(fd)


def root_links(paths: RootPaths) -> list[str]:
    """Point /bin, /sbin, /lib, /lib64 into usr/; never replace something that is not a link."""
    warnings = []
    for name, target in ROOT_LINKS.items():
        p = paths.root / name
        try:
            if p.is_symlink():
                if os.readlink(p) != target:
                    fsutil.atomic_symlink(target, p)
            elif p.exists():
                warnings.append(f"{p} is a real {'directory' if p.is_dir() else 'file'}, not a "
                                f"link to {target}; left as it is")
            else:
                fsutil.atomic_symlink(target, p)
        except OSError as e:
            # The new /usr is already live; a convenience link must not make this
            # transaction (or its recovery) fail forever. Say so and move on.
            warnings.append(f"could not point {p} at {target}: {e.strerror}")
    return warnings


def _archive_old_tree(paths: RootPaths, where: Path, old_state: int | None) -> None:
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
    warnings = root_links(s.paths)
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
    _unmark_txn(s.paths)
    faults.point(kind, "done")
    return report, warnings


def _after_activation(s: Session, result: Result) -> Result:
    """The planes that follow the live state: boot files, the Nix seams, services.

    The state is committed by now. Boot files are required (an error says what to do);
    the Nix seams and services are reported as warnings when they fail, since the
    machine is live and `onix nix seed` / `onix services --sync` redo them.
    """
    result.detail["boot"] = boot.after_change(s)
    result.detail.update(follow_live(s, result.warnings))
    return result


def check_seams(usr: Path) -> None:
    """Before a state becomes live: its service definitions load (names, dependencies,
    no cycles, no symlinks) and its declared nix.conf is one Nix would accept."""
    from onix.nix import plane as nixplane
    from onix.services import reconcile as services

    if (usr / services.DEFINITIONS).is_dir():
        services.load_definitions(usr)
    declared = nixplane.declared(usr).get("nix.conf")
    if declared is not None:
        _, errors = nixplane.parse_conf(declared.decode(errors="replace"),
                                        where=f"usr/{nixplane.DECLARED_DIR}/nix.conf")
        if errors:
            raise StateError(errors[0], path=usr / nixplane.DECLARED_DIR / "nix.conf",
                             hint="fix the stone's declared defaults")


def follow_live(s: Session, warnings: list[str]) -> dict:
    """The Nix seams and the services, for whatever state is live now; failures become
    warnings. Also run after a recovery or a reconcile changed the live state."""
    from onix.nix import plane as nixplane

    out: dict = {}
    before = len(warnings)
    out["nix"] = nixplane.after_change(s, warnings)
    out["services"] = _services_follow(s, warnings)
    if "/etc/nix/nix.conf" in out["nix"].get("seed", []):
        # The daemon reads nix.conf once: new defaults mean nothing until it restarts.
        restart_service(s, "nix-daemon", warnings)
    with s.db.write() as c:  # "" = lagging: status says so, the next command retries
        s.db.set_meta(c, META_SEAMS_SYNCED,
                      str(s.db.last_done_tx(c)) if len(warnings) == before else "")
    return out


META_SEAMS_SYNCED = "seams_synced_tx"  # last transaction the Nix seams and services follow


def seams_if_needed(s: Session) -> list[str]:
    """Start of a mutating command: redo the seams a crash after the journal left undone."""
    if s.live_state() is None:
        return []
    with s.db.read() as c:
        if not s.db.behind(c, META_SEAMS_SYNCED):
            return []
    notes: list[str] = []
    follow_live(s, notes)
    return notes or ["brought the Nix seams and services up to date with the live state"]


def restart_service(s: Session, name: str, warnings: list[str]) -> None:
    from onix.services import reconcile as services

    svc = services.default_scandir(s.paths.root) / name
    if not (svc / "supervise").is_dir() or not services.svscan_running(svc.parent):
        return
    try:
        r = proc.run(["s6-svc", "-r", str(svc)], check=False, timeout=10)
        why = r.stderr.decode(errors="replace").strip() or str(r.returncode) \
            if r.returncode != 0 else None
    except OnixError as e:
        why = e.message
    if why is not None:
        warnings.append(f"service {name}: could not restart it for the new /etc/nix/nix.conf "
                        f"({why}); s6-svc -r {svc}")


def _services_follow(s: Session, warnings: list[str]) -> dict | None:
    """Reconcile the live s6 scan directory with the live state's service definitions."""
    from onix.services import reconcile as services

    live = s.live_state()
    has_defs = (s.paths.usr / services.DEFINITIONS).is_dir()
    if live is None or (not has_defs and not services.default_scandir(s.paths.root).is_dir()):
        return None
    try:
        report = services.reconcile(root=s.paths.root, usr=s.paths.usr, state_id=live)
    except (OnixError, OSError) as e:
        warnings.append(f"services: {e.line() if isinstance(e, OnixError) else e}; "
                        "onix services --sync redoes it")
        return None
    for f in report.failed:
        warnings.append(f"service {f['name']} did not come up: {f['reason']}")
    return report.as_dict()


def _mark_txn(paths: RootPaths) -> None:
    """Tell the initrd (boot/init) not to exchange /usr until this journal is closed."""
    fd = os.open(paths.txn_marker, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    os.fsync(fd)
    os.close(fd)
    fsutil.fsync_dir(paths.onix)


def _unmark_txn(paths: RootPaths) -> None:
    with suppress(FileNotFoundError):
        paths.txn_marker.unlink()


def build_state(s: Session, *, kind: str, stone_ids: list[int], entries: list[Entry],
                summary: str, implicit: Iterable[int] = ()) -> Result:
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
                              detail={"source": "staging"}, nix_before=nix_before)
    _mark_txn(paths)
    faults.point(kind, "blit")
    blit(s, entries, paths.staging_usr)
    faults.point(kind, "stateid")
    write_generated(paths.staging_usr, state_id, fstx)
    boot.check_state(s, usr=paths.staging_usr, fstx=fstx)  # before it can become live
    check_seams(paths.staging_usr)
    faults.point(kind, "sync")
    fsutil.syncfs(paths.staging)
    faults.point(kind, "exchange")
    if paths.usr.is_dir():
        fsutil.exchange(paths.staging_usr, paths.usr)
    else:
        os.rename(paths.staging_usr, paths.usr)
    fsutil.fsync_dir(paths.root)
    faults.point(kind, "archive")
    _archive_old_tree(paths, paths.staging_usr, from_state)
    report, warnings = _finish(s, tx_id, state_id, kind, nix_before)
    return _after_activation(s, Result(
        kind=kind, from_state=from_state, to_state=state_id, fstx=fstx, summary=summary,
        nix=report, warnings=warnings, recovered=s.recovered))


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


def install(root: Path | str, files: list[Path], *, dependencies: Iterable[str] = (),
            wait: bool = True, progress: Progress = SILENT) -> Result:
    """Install or replace stones by file; one transaction, one new state.

    Stones are recorded as explicit (asked for) unless their name is in `dependencies`
    (pulled in by the resolver), which `onix remove` may later drop as orphans.
    """
    if not files:
        raise OnixError("nothing to install", hint="name one or more .stone files")
    with open_candidates(files) as cands:  # every stone checked before anything is written
        return _install(root, cands, dependencies=set(dependencies), wait=wait,
                        progress=progress)


def _install(root: Path | str, cands: list[Candidate], *, dependencies: set[str], wait: bool,
             progress: Progress) -> Result:
    paths = RootPaths.of(root)
    check_usr_is_ours(paths)
    with session(paths.root, wait=wait, progress=progress) as s:
        faults.point("install", "import")
        current = _selection(s)
        selection = dict(current)
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
        if not changes:
            return _promote(s, current, sorted(n for n in new if n in explicit))
        unmet = unmet_dependencies(selection)
        if unmet:
            raise ConflictError("unmet dependencies: " + "; ".join(unmet), path=cands[0].path,
                                hint="install the stones that provide them in the same command")
        entries = _plan(s, selection, new)
        boot.check_layout(s, entries, read=_content_reader(s, list(new.values())))
        imported = import_stones(s, [new[n] for n in new
                                     if selection[n] is not current.get(n)])
        ids = {n: imported.ids.get(n) or selection[n]["id"] for n in selection}
        before = s.live_state()
        try:
            return build_state(s, kind="install", stone_ids=[ids[n] for n in sorted(ids)],
                               implicit=[ids[n] for n in ids if n not in explicit],
                               entries=entries, summary=_install_summary(changes, explicit))
        except BaseException:
            # Settle the journal now (the session would too), and if the old state is still
            # live, take the import back as well: a failed install leaves no new stones.
            with suppress(Exception):
                s.recovered += recover(s)
                if s.live_state() == before:
                    imported.undo(s)
            raise


def mark_explicit(root: Path | str, names: list[str], *, wait: bool = True) -> Result:
    """Record installed stones as asked for (never orphans); no new state: intent only."""
    with session(root, wait=wait, create=False) as s:
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


def _install_summary(changes: list[str], explicit: set[str]) -> str:
    """'install a 1-1, b 2-1' — what was asked for first; dependencies counted past a few
    (installing nix by name pulls ~50 libraries; state list should stay readable)."""
    asked = [c for c in changes if c.split(" ", 1)[0] in explicit]
    pulled = [c for c in changes if c.split(" ", 1)[0] not in explicit]
    if len(changes) <= 6:
        return "install " + ", ".join(asked + pulled)
    return "install " + ", ".join(asked) + (f" and {len(pulled)} dependencies" if asked else
                                            f"{len(pulled)} dependencies")


def remove(root: Path | str, names: list[str], *, orphans: bool = True, wait: bool = True,
           progress: Progress = SILENT) -> Result:
    """Remove stones by name, and (unless orphans=False) the dependencies they alone needed."""
    if not names:
        raise OnixError("nothing to remove", hint="name one or more installed stones")
    with session(root, wait=wait, progress=progress, create=False) as s:
        faults.point("remove", "import")
        current = _selection(s)
        missing = [n for n in names if n not in current]
        if missing:
            raise StateError(f"not installed: {', '.join(missing)}", path=s.paths.usr,
                             hint="see onix state show for what the active state holds")
        selection = {n: r for n, r in current.items() if n not in names}
        unmet = unmet_dependencies(selection)
        if unmet:
            raise ConflictError("removal would break dependencies: " + "; ".join(unmet),
                                path=s.paths.usr, hint="remove the dependents too")
        dropped: set[str] = set()
        if orphans:
            from onix.repo.resolve import orphans as find_orphans

            dropped = find_orphans(selection=selection,
                                   explicit={n for n, r in selection.items() if r["explicit"]})
            selection = {n: r for n, r in selection.items() if n not in dropped}
        entries = _plan(s, selection, {})
        boot.check_layout(s, entries, read=_content_reader(s, []))
        summary = "remove " + ", ".join(sorted(names))
        if dropped:
            summary += f" (and orphans {', '.join(sorted(dropped))})"
        return build_state(s, kind="remove", stone_ids=[r["id"] for r in selection.values()],
                           implicit=[r["id"] for r in selection.values() if not r["explicit"]],
                           entries=entries, summary=summary)


# -- execute: switch to an archived state ----------------------------------------


def activate(root: Path | str, state_id: int, *, kind: str = "activate", wait: bool = True,
             progress: Progress = SILENT) -> Result:
    with session(root, wait=wait, progress=progress, create=False) as s:
        return _activate(s, state_id, kind)


def rollback(root: Path | str, *, to: int | None = None, wait: bool = True,
             progress: Progress = SILENT) -> Result:
    """Activate the newest state older than the live one (or `to`)."""
    with session(root, wait=wait, progress=progress, create=False) as s:
        if to is None:
            live = s.live_state()
            with s.db.read() as c:
                older = [st["id"] for st in s.db.states(c) if live is not None and st["id"] < live]
            if not older:
                raise StateError("there is no older state to roll back to", path=s.paths.db,
                                 hint="see onix state list")
            to = max(older)
        return _activate(s, to, "rollback")


def _activate(s: Session, state_id: int, kind: str) -> Result:
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
    boot.check_state(s, usr=tree, fstx=target["fstx"])
    faults.point(kind, "journal")
    nix_before = ownership.nix_fingerprint(paths.root)
    with s.db.write() as c:
        tx_id = s.db.begin_tx(c, kind=kind, from_state=live, to_state=state_id,
                              detail={"source": "archive"}, nix_before=nix_before)
    _mark_txn(paths)
    faults.point(kind, "exchange")
    fsutil.exchange(tree, paths.usr)
    fsutil.fsync_dir(paths.root)
    faults.point(kind, "archive")
    _archive_old_tree(paths, tree, live)
    _remove_empty(tree.parent)
    report, warnings = _finish(s, tx_id, state_id, kind, nix_before)
    return _after_activation(s, Result(
        kind=kind, from_state=live, to_state=state_id, fstx=target["fstx"],
        summary=f"{kind} to state {state_id}", nix=report, warnings=warnings,
        recovered=s.recovered))


def _remove_empty(d: Path) -> None:
    with suppress(OSError):
        d.rmdir()


# -- recovery ------------------------------------------------------------------


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
        _archive_old_tree(s.paths, misfiled, old)
        _remove_empty(misfiled.parent)
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
    root_links(s.paths)
    return [f"state {live} was made live {source} (from state {old}); the log now "
            "follows /usr"]


def _boot_note(paths: RootPaths) -> dict[str, str]:
    """The initrd's `key=value` note about the exchange it made (boot/init writes it)."""
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
        _unmark_txn(s.paths)  # a crash after the journal closed, before the marker went
        return done + reconcile(s)
    kind = tx["kind"]
    if kind == "prune" or kind == "state-remove":
        from onix.machine.prune import resume

        # The machine may have booted into one of the doomed states meanwhile (initrd,
        # onix.fstx=): file the trees first; resume() then spares whatever is live.
        done = reconcile(s)
        resume(s, tx)
        return [*done, f"completed interrupted {kind} (journal {tx['id']})"]
    detail = json.loads(tx["detail"] or "{}")
    live = s.live_state()
    frm, to = tx["from_state"], tx["to_state"]
    source = s.paths.staging_usr if detail.get("source") == "staging" else s.paths.state_tree(to)
    nix_before = json.loads(tx["nix_before"]) if tx["nix_before"] else {}
    if live == to:
        _archive_old_tree(s.paths, source, frm)
        if detail.get("source") != "staging":
            _remove_empty(source.parent)
        _finish(s, tx["id"], to, kind, nix_before)
        done.append(f"completed interrupted {kind} to state {to} (journal {tx['id']})")
    elif live == frm:
        if detail.get("source") == "staging":
            fsutil.remove_tree(s.paths.staging_usr)
        with s.db.write() as c:
            if kind in NEW_STATE_KINDS:
                s.db.delete_state(c, to)
            s.db.end_tx(c, tx["id"], "undone")
        _unmark_txn(s.paths)
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
