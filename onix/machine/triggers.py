"""Transaction triggers: programs a stone declares, run in the new tree before the swap.

A stone ships `usr/share/onix/triggers/NAME.json`:

    {"paths":   ["lib/modules/*/kernel/**"],
     "run":     ["/usr/bin/busybox", "sh", "-c", "..."],
     "outputs": ["lib/modules/*/modules.dep.bb"]}

Globs are relative to /usr (`*` and `?` stay inside one path component, a `**`
component spans any number of them). When a path of the new state's layout matches
`paths`, the trigger runs (`run` is an argv: no shell unless it names one) after the
blit and before the state is named, in a private mount and PID namespace:

    /      a read-only bind of a scratch skeleton (bin, sbin, lib, lib64 -> usr/...)
    /usr   an overlay: lower = .onix/staging/usr (the new tree), upper = a scratch dir
    /tmp   a tmpfs;  /proc;  /dev/{null,zero,full,random,urandom} from the host

so it sees the new /usr and nothing of the root's /etc, /var or /nix, and cannot write
anywhere but /usr and /tmp. The overlay is what keeps the store safe: every file of the
new tree is a hardlink of a store object, and a write through an overlay copies the
file up into the upper directory instead of writing through the shared inode.

What the upper directory then holds is audited (`_collect`): a trigger may only *add*
paths, and only paths its `outputs` match (plus the directories holding them). Changing,
deleting or re-moding anything a stone ships, a special file, or a path outside its
outputs fails the trigger. Accepted outputs are admitted into the store (store.ImportBatch,
as an import does) and hardlinked into the staging tree, so the next trigger sees them and
the tree is store links throughout. `record()` then writes them as one stone row named
db.TRIGGER_OUTPUTS (content-addressed: identical outputs share a row) joined to the state,
and the state's layout digest and fstx cover them: verify, prune, state diff see them like
every other file, and the next state runs its triggers afresh on its own tree.

Any failure raises one OnixError naming the trigger and ending with its last lines of
output; what this step admitted is taken back and the transaction is undone (state row,
staging) by the caller's settle, so the root is as it was. See docs/triggers.md.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from onix.core import fsutil, proc
from onix.core.errors import OnixError, StoneError
from onix.core.paths import ROOT_LINKS
from onix.machine import blit
from onix.machine.db import TRIGGER_OUTPUTS, layout_t, state_stones_t, stones_t
from onix.machine.layout import (
    DIR,
    FILE,
    PERM_MASK,
    SYMLINK,
    Entry,
    canonical_digest,
    check_entry,
    implicit_dirs,
)
from onix.machine.session import Session
from onix.machine.store import CHUNK, ImportBatch, ObjectKey, hash_file

TRIGGERS_DIR = "share/onix/triggers"  # relative to /usr
FILE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*\.json\Z")
KEYS = ("paths", "run", "outputs")
MAX_DECLARATION = 64 * 1024
TIMEOUT = 900.0  # seconds; fc-cache over a large font set is the slow kind
TAIL_LINES = 5
DEVICES = ("null", "zero", "full", "random", "urandom")
# What a trigger's environment holds: nothing of the caller's (its output must be a
# function of the new /usr, not of whoever ran onix).
ENV = {"PATH": "/usr/bin:/usr/sbin", "HOME": "/", "LC_ALL": "C", "TZ": "UTC"}

# Runs as PID 1 of the new namespaces (unshare -f): mounts, then becomes `timeout`, whose
# child is the trigger; when PID 1 exits, the kernel kills whatever the trigger left
# running. Paths come as arguments, never pasted into the script. Short options only:
# a guest runs this with busybox's unshare, mount, chroot and timeout.
NAMESPACE_SCRIPT = r"""set -e
root=$1 lower=$2 upper=$3 work=$4 mount=$5 chroot=$6 timeout=$7 seconds=$8
shift 8
"$mount" --bind "$root" "$root"
"$mount" -o remount,bind,ro "$root"
"$mount" -t overlay onix-trigger -o "lowerdir=$lower,upperdir=$upper,workdir=$work" "$root/usr"
"$mount" -t tmpfs -o mode=1777 onix-trigger "$root/tmp"
"$mount" -t proc proc "$root/proc"
for d in null zero full random urandom; do "$mount" --bind "/dev/$d" "$root/dev/$d"; done
cd /
exec "$timeout" -s KILL "$seconds" "$chroot" "$root" "$@"
"""


@dataclass(frozen=True)
class Trigger:
    """One parsed declaration. `where` names its file and stone for every message."""

    name: str
    where: str
    paths: tuple[str, ...]
    run: tuple[str, ...]
    outputs: tuple[str, ...]

    def watches(self, path: str) -> bool:
        return _compiled(self.paths).fullmatch(path) is not None

    def may_write(self, path: str) -> bool:
        return _compiled(self.outputs).fullmatch(path) is not None


@dataclass
class Ran:
    """What the triggers of one new state wrote, admitted into the store, not yet recorded."""

    names: list[str]
    outputs: list[Entry]  # the paths they added
    entries: list[Entry]  # the state's whole layout, outputs included
    batches: list[ImportBatch] = field(default_factory=list)

    @property
    def layout_digest(self) -> str:
        return canonical_digest(self.entries)

    @property
    def digest(self) -> str:
        """The outputs' own identity: two states whose triggers wrote the same share a row."""
        import blake3

        text = "onix trigger outputs\n" + "".join(e.canonical() for e in self.outputs)
        return blake3.blake3(text.encode()).hexdigest()

    def undo(self) -> None:
        for batch in self.batches:
            batch.undo()


# -- declarations -----------------------------------------------------------------


def glob_regex(pattern: str) -> str:
    """A /usr-relative glob as a regular expression (for re.fullmatch)."""
    parts = pattern.split("/")
    out = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            out.append(".+" if last else "(?:[^/]+/)*")
            continue
        out.append("".join("[^/]*" if ch == "*" else "[^/]" if ch == "?" else re.escape(ch)
                           for ch in part) + ("" if last else "/"))
    return "".join(out)


_cache: dict[tuple[str, ...], re.Pattern] = {}


def _compiled(globs: tuple[str, ...]) -> re.Pattern:
    if globs not in _cache:
        _cache[globs] = re.compile("|".join(f"(?:{glob_regex(g)})" for g in globs))
    return _cache[globs]


def _bad(where: str, what: str) -> OnixError:
    return OnixError(f"is not a valid trigger declaration: {what}", path=where,
                     hint="fix the stone that ships it (see docs/triggers.md), or remove it")


def _globs(value: object, *, key: str, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise _bad(where, f'"{key}" must be a non-empty list of globs relative to /usr')
    for g in value:
        if not isinstance(g, str) or not g or len(g) > 1000 or not g.isprintable():
            raise _bad(where, f'"{key}" holds {g!r}, which is not a glob')
        if g.startswith("/") or any(p in ("", ".", "..") for p in g.split("/")):
            raise _bad(where, f'"{key}" glob {g!r} must be relative to /usr and normalised '
                       '(no leading /, no . or .. or empty components)')
        if any(ch in g for ch in "[]\\{}"):
            raise _bad(where, f'"{key}" glob {g!r} uses [ ] {{ }} or \\; only * ? and ** '
                       'are supported')
        if any("**" in p and p != "**" for p in g.split("/")):
            raise _bad(where, f'"{key}" glob {g!r}: ** must be a whole path component')
    return tuple(value)


def parse(data: bytes, *, name: str, where: str) -> Trigger:
    """A declaration's bytes, checked strictly: every key known, every value typed."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise _bad(where, f"not JSON ({e})") from None
    if not isinstance(doc, dict):
        raise _bad(where, "not a JSON object")
    unknown = sorted(set(doc) - set(KEYS))
    missing = [k for k in KEYS if k not in doc]
    if unknown or missing:
        raise _bad(where, f"keys are {', '.join(KEYS)}" + (
            f"; unknown: {', '.join(map(repr, unknown))}" if unknown else "") + (
            f"; missing: {', '.join(missing)}" if missing else ""))
    run = doc["run"]
    if (not isinstance(run, list) or not run
            or not all(isinstance(a, str) and "\0" not in a for a in run)):
        raise _bad(where, '"run" must be a non-empty list of strings (an argv; no shell '
                   "unless it names one)")
    prog = run[0]
    if not prog.startswith("/usr/") or any(p in ("", ".", "..") for p in prog[5:].split("/")):
        raise _bad(where, f'"run" starts with {prog!r}; name the program by its absolute '
                   "path in the new /usr (e.g. /usr/bin/busybox)")
    return Trigger(name=name, where=where, paths=_globs(doc["paths"], key="paths", where=where),
                   run=tuple(run), outputs=_globs(doc["outputs"], key="outputs", where=where))


def _shipped_by(s: Session, state_id: int, path: str) -> str:
    """' (stone NAME)' for the stone of the new state that ships `path`, for messages."""
    with s.db.read() as c:
        name = c.execute(select(stones_t.c.name)
                         .join(layout_t, layout_t.c.stone_id == stones_t.c.id)
                         .join(state_stones_t, state_stones_t.c.stone_id == stones_t.c.id)
                         .where(state_stones_t.c.state_id == state_id, layout_t.c.path == path)
                         ).scalar()
    return f" (stone {name})" if name else ""


def declared(s: Session, *, state_id: int, entries: list[Entry]) -> list[Trigger]:
    """Every trigger the new layout declares, by file name; a bad one is refused."""
    out = []
    prefix = TRIGGERS_DIR + "/"
    for e in entries:
        if not e.path.startswith(prefix):
            continue
        where = f"/usr/{e.path}{_shipped_by(s, state_id, e.path)}"
        rel = e.path[len(prefix):]
        if e.kind == DIR and "/" not in rel:
            raise _bad(where, f"a directory; {TRIGGERS_DIR} holds only NAME.json files")
        if "/" in rel:
            continue  # below a directory refused above
        if e.kind != FILE or not FILE_NAME.match(rel):
            raise _bad(where, f"{TRIGGERS_DIR} holds only regular files named NAME.json "
                       "(lowercase letters, digits, '.', '_', '-')")
        if e.size > MAX_DECLARATION:
            raise _bad(where, f"larger than {MAX_DECLARATION} bytes")
        data = b""
        if e.size:
            key = ObjectKey(e.digest, e.installed_mode, e.uid, e.gid)
            data = fsutil.read_nofollow(s.store.path(key))
        out.append(parse(data, name=rel.removesuffix(".json"), where=where))
    return sorted(out, key=lambda t: t.name)


# -- running ----------------------------------------------------------------------


def run(s: Session, *, state_id: int, usr: Path, entries: list[Entry]) -> Ran | None:
    """Run the new layout's matching triggers over the staging tree `usr`.

    Returns None when no trigger matches (nothing changed). Otherwise the outputs are in
    the store and in `usr`, and record() must be called to make them part of the state.
    """
    triggers = declared(s, state_id=state_id, entries=entries)
    if not any(t.watches(e.path) for t in triggers for e in entries):
        return None  # (a trigger watching only another's outputs needs that one to run)
    tree = {**{d: Entry(d, DIR, 0o755) for d in implicit_dirs(entries)},
            **{e.path: e for e in entries}}
    scratch = s.paths.store_tmp / f"trigger-{uuid.uuid4().hex}"
    ran = Ran(names=[], outputs=[], entries=list(entries))
    try:
        skeleton = _skeleton(scratch)
        for i, t in enumerate(triggers):
            # in name order, each over the tree so far: a later one sees earlier outputs
            if not any(t.watches(p) for p in tree):
                continue
            program = tree.get(t.run[0].removeprefix("/usr/"))
            if program is None or program.kind == DIR:
                raise OnixError(f"trigger {t.name} runs {t.run[0]}, which the new state "
                                "does not have", path=t.where,
                                hint="install the stone that provides it in the same command")
            ran.names.append(t.name)
            upper, work = scratch / f"{i}.upper", scratch / f"{i}.work"
            upper.mkdir(0o755)
            os.chmod(upper, 0o755)  # the overlay's root is /usr: the mode blit gives it
            work.mkdir()
            _execute(s, t, root=skeleton, lower=usr, upper=upper, work=work,
                     log=scratch / f"{i}.log")
            added = _collect(t, upper, tree)
            batch = s.store.batch()
            ran.batches.append(batch)
            _admit(batch, upper, added)
            _place(s, usr, added)
            for e in added:
                tree[e.path] = e
            ran.outputs.extend(added)
    except BaseException:
        ran.undo()
        raise
    finally:
        fsutil.remove_tree(scratch)
    ran.outputs.sort(key=lambda e: e.path)
    ran.entries = sorted([*entries, *ran.outputs], key=lambda e: e.path)
    return ran


def _skeleton(scratch: Path) -> Path:
    """The trigger's / : mount points and the root links a first install has not made yet."""
    root = scratch / "root"
    for d in ("usr", "tmp", "proc", "dev", "etc"):
        (root / d).mkdir(parents=True)
    for name, target in ROOT_LINKS.items():
        os.symlink(target, root / name)
    for dev in DEVICES:
        (root / "dev" / dev).touch(0o644)
    for p in (scratch, root):
        # overlay options are comma- and colon-separated; a root path with them cannot
        # be spelled there (the store's own names never have them)
        if any(ch in str(p) for ch in ",:\\"):
            raise OnixError("the root's path holds a ',', ':' or '\\', which an overlay "
                            "mount cannot name", path=p, hint="use a root path without them")
    return root


def _execute(s: Session, t: Trigger, *, root: Path, lower: Path, upper: Path, work: Path,
             log: Path) -> None:
    argv = ["unshare", "-m", "--propagation", "private", "-p", "-f", proc.which("sh"), "-c",
            NAMESPACE_SCRIPT, "onix-trigger", root, lower, upper, work, proc.which("mount"),
            proc.which("chroot"), proc.which("timeout"), str(int(TIMEOUT)), *t.run]
    live = s.live_state()
    hint = (f"the new state was not made{f'; state {live} stays active' if live else ''}; "
            "fix or remove the stone that ships the trigger")
    with open(log, "wb") as out:
        try:
            r = proc.run(argv, check=False, output=out, env=ENV, timeout=TIMEOUT + 60,
                         umask=0o022)
        except OnixError as e:  # the backstop: `timeout` inside did not end it
            raise OnixError(f"trigger {t.name} ({' '.join(t.run)}): {e.message}",
                            path=t.where, hint=hint) from None
    if r.returncode == 124:  # coreutils timeout, after its SIGKILL
        raise OnixError(f"trigger {t.name} did not finish within {TIMEOUT:.0f} s",
                        path=t.where, hint=hint)
    if r.returncode != 0:
        last = log.read_bytes().decode(errors="replace").strip().splitlines()[-TAIL_LINES:]
        raise OnixError(f"trigger {t.name} failed with exit status {r.returncode}: "
                        + (" | ".join(last) if last else "no output"), path=t.where, hint=hint)


def _walk(top: Path) -> list[tuple[str, os.stat_result]]:
    """Every path below `top`, parents first, relative, without following symlinks."""
    out: list[tuple[str, os.stat_result]] = []
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(top / rel if rel else top) as it:
            for entry in sorted(it, key=lambda x: x.name):
                child = f"{rel}/{entry.name}" if rel else entry.name
                st = entry.stat(follow_symlinks=False)
                out.append((child, st))
                if stat.S_ISDIR(st.st_mode):
                    stack.append(child)
    return sorted(out, key=lambda x: x[0])


def _opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, "trusted.overlay.opaque", follow_symlinks=False) == b"y"
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP):
            return False
        raise


def _same(low: Entry, path: Path, st: os.stat_result) -> bool:
    """Whether a copied-up path still is what the stone ships (opened for writing,
    touched, chmod'ed to its own mode: not a change)."""
    if (st.st_uid, st.st_gid) != (low.uid, low.gid) and os.geteuid() == 0:
        return False
    if low.kind == SYMLINK:
        return stat.S_ISLNK(st.st_mode) and os.readlink(path) == low.target
    if stat.S_IMODE(st.st_mode) != low.installed_mode:
        return False
    if low.kind == DIR:
        return stat.S_ISDIR(st.st_mode)
    return (stat.S_ISREG(st.st_mode) and st.st_size == low.size
            and (low.size == 0 or hash_file(path, size=st.st_size,
                                             follow_symlinks=False) == low.digest))


def _collect(t: Trigger, upper: Path, tree: dict[str, Entry]) -> list[Entry]:
    """Audit the upper directory: the layout entries the trigger added, or a refusal."""

    def refuse(what: str) -> OnixError:
        return OnixError(f"trigger {t.name} {what}", path=t.where,
                         hint="a trigger may only add paths its \"outputs\" match "
                         f"({', '.join(t.outputs)}); fix the declaration or the program")

    top = os.lstat(upper)
    if stat.S_IMODE(top.st_mode) != 0o755 or (os.geteuid() == 0 and top.st_uid != 0):
        raise refuse("changed the mode or owner of /usr itself")
    added: list[Entry] = []
    new_dirs: list[Entry] = []
    for rel, st in _walk(upper):
        path = upper / rel
        low = tree.get(rel)
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:  # an overlay whiteout
            raise refuse(f"deleted /usr/{rel}" + (", which a stone ships" if low else ""))
        if low is not None:
            if low.kind == DIR and stat.S_ISDIR(st.st_mode) and _opaque(path):
                raise refuse(f"replaced the directory /usr/{rel}, which a stone ships")
            if not _same(low, path, st):
                raise refuse(f"changed /usr/{rel}, which a stone (or an earlier trigger) "
                             "put there")
            continue
        mode = stat.S_IMODE(st.st_mode) & PERM_MASK
        if stat.S_ISDIR(st.st_mode):
            new_dirs.append(Entry(rel, DIR, mode, st.st_uid, st.st_gid))
            continue
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            raise refuse(f"made /usr/{rel}, which is neither a file, a directory nor a "
                         "symlink")
        if not t.may_write(rel):
            raise refuse(f"wrote /usr/{rel}, outside its outputs")
        if stat.S_ISLNK(st.st_mode):
            added.append(Entry(rel, SYMLINK, 0o777, st.st_uid, st.st_gid,
                               target=os.readlink(path)))
        else:
            digest = hash_file(path, size=st.st_size, follow_symlinks=False)
            added.append(Entry(rel, FILE, mode, st.st_uid, st.st_gid, st.st_size, digest))
    holding = {p for e in added for p in implicit_dirs([e])}
    for d in new_dirs:
        if d.path not in holding and not t.may_write(d.path):
            raise refuse(f"made the directory /usr/{d.path}, outside its outputs")
    out = sorted([*new_dirs, *added], key=lambda e: e.path)
    for e in out:
        try:
            check_entry(e, where=t.where)
        except StoneError as err:
            raise refuse(f"wrote a path onix cannot record: {err.message}") from None
    return out


def _admit(batch: ImportBatch, upper: Path, added: list[Entry]) -> None:
    """Outputs into the store, as an import's content is: hashed, synced, renamed in."""
    keys = set()
    for e in added:
        if e.kind == FILE and e.size:
            key = ObjectKey(e.digest, e.installed_mode, e.uid, e.gid)
            with open(upper / e.path, "rb") as f:
                batch.write(e.digest, iter(lambda f=f: f.read(CHUNK), b""), mode=key.mode)
            keys.add(key)
    batch.admit(keys)


def _place(s: Session, usr: Path, added: list[Entry]) -> None:
    """Outputs into the staging tree, the way the blit lays out a state's files."""
    dirs = [e for e in added if e.kind == DIR]
    for d in dirs:
        os.mkdir(usr / d.path, 0o755)
    groups: dict[str, list[Entry]] = {}
    for e in added:
        if e.kind == FILE:
            groups.setdefault(e.path.rpartition("/")[0], []).append(e)
        elif e.kind == SYMLINK:
            os.symlink(e.target, usr / e.path)
            if os.geteuid() == 0:
                os.lchown(usr / e.path, e.uid, e.gid)
    blit._link_files(str(s.store.dir), str(usr), list(groups.items()))
    for d in reversed(dirs):
        fsutil.set_owner_and_mode(usr / d.path, uid=d.uid, gid=d.gid, mode=d.installed_mode)


def record(s: Session, ran: Ran, *, state_id: int, fstx: str) -> None:
    """Make the outputs part of the pending state: one stone row (shared when identical),
    joined to the state, whose fstx and totals now count them. One database transaction."""
    files = [e for e in ran.entries if e.kind == FILE]
    meta = {"name": TRIGGER_OUTPUTS, "version": "0", "release": 0, "arch": "any",
            "summary": "written by the triggers " + ", ".join(ran.names), "license": "",
            "provides": [], "depends": []}
    try:
        with s.db.write() as c:
            row = s.db.stone_by_digest(c, ran.digest)
            sid = row["id"] if row else s.db.add_stone(c, ran.digest, meta, ran.outputs)
            s.db.add_outputs(c, state_id, sid, fstx=fstx, layout_digest=ran.layout_digest,
                             files=len(files), nbytes=sum(e.size for e in files))
            s.db.bump_store_bytes(c, sum(b.admitted_bytes for b in ran.batches))
    except BaseException:
        ran.undo()
        raise
    for batch in ran.batches:
        batch.close()
