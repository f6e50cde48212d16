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
from onix.core import faults, fsutil
from onix.core.errors import ConflictError, DiskFullError, OnixError, StateError, StoneError
from onix.core.parallel import in_two_processes, split_balanced
from onix.core.paths import OS_RELEASE_FILE, ROOT_LINKS, STATE_ID_FILE, RootPaths, read_state_id
from onix.machine import follow, ownership
from onix.machine.layout import DIR, FILE, SYMLINK, Entry, canonical_digest, implicit_dirs, merge
from onix.machine.session import Session
from onix.machine.store import DigestMismatch, ObjectKey

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
    mark_txn(paths)
    faults.point(kind, "blit")
    blit(s, entries, paths.staging_usr)
    faults.point(kind, "stateid")
    write_generated(paths.staging_usr, state_id, fstx)
    boot.check_state(s, usr=paths.staging_usr, fstx=fstx)  # before it can become live
    follow.check_seams(paths.staging_usr)
    faults.point(kind, "sync")
    fsutil.syncfs(paths.staging)
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


def install(s: Session, cands: list[Candidate], *, dependencies: Iterable[str] = ()) -> Result:
    """Install or replace stones (opened and checked by open_candidates); one transaction,
    one new state.

    Stones are recorded as explicit (asked for) unless their name is in `dependencies`
    (pulled in by the resolver), which `onix remove` may later drop as orphans.
    """
    dependencies = set(dependencies)
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
    imported = import_stones(s, [new[n] for n in new if selection[n] is not current.get(n)])
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


def _install_summary(changes: list[str], explicit: set[str]) -> str:
    """'install a 1-1, b 2-1' — what was asked for first; dependencies counted past a few
    (installing nix by name pulls ~50 libraries; state list should stay readable)."""
    asked = [c for c in changes if c.split(" ", 1)[0] in explicit]
    pulled = [c for c in changes if c.split(" ", 1)[0] not in explicit]
    if len(changes) <= 6:
        return "install " + ", ".join(asked + pulled)
    return "install " + ", ".join(asked) + (f" and {len(pulled)} dependencies" if asked else
                                            f"{len(pulled)} dependencies")


def remove(s: Session, names: list[str], *, orphans: bool = True) -> Result:
    """Remove stones by name, and (unless orphans=False) the dependencies they alone needed."""
    if not names:
        raise OnixError("nothing to remove", hint="name one or more installed stones")
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
    boot.check_state(s, usr=tree, fstx=target["fstx"])
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
