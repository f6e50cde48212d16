"""The live scan directory: onix's copies of the definitions, their markers, and how
they are laid down, changed and removed. (Starting and stopping is s6.py's.)

The scan directory is `<root>/run/service` unless given:

    <scandir>/<name>/                   a real directory: a COPY of the definition
    <scandir>/<name>/.onix-service      the marker: this service is onix's (see below)
    <scandir>/<name>/supervise/, event/ s6-supervise's (also log/supervise, log/event)
    <scandir>/.<name>.onix-new          a copy being laid down (s6-svscan skips dot-names)
    <scandir>/.<name>.onix-removing     a removed service, until its supervisor is gone
    <scandir>/onix-stage2/              stage 2 (reconcile.py): laid down with copies that
                                        wait for it; no marker, never listed by scan()

Copies, not symlinks to /usr: s6-supervise writes `supervise/` and `event/` into the
service directory, and /usr is read-only and is exchanged whole by every transaction (a
symlink would point at the next state's files the instant /usr is exchanged, before
anything was stopped, and at nothing after a rollback that drops the service). So, like
OSTree's deployments of /etc, each state's definitions are materialised as real files
the running system owns, and the marker says which definition they came from.

The marker `.onix-service` is text, one `key value` per line:

    onix-service 1                       format version
    hash <blake3 hex>                    the definition's content hash
    log-hash <blake3 hex>                its log/ part's hash ("-" without a logger)
    state <id>                           the state the copy came from
    status up|laid|pending|failed|held   see below
    reason <text>                        why it is failed or held (absent otherwise)
    dir <relpath>                        every directory onix copied, then
    file <relpath>                       every file onix copied (so the next change
                                         removes exactly those, never what the
                                         service or its logger wrote into its dir)

`up`: it came up (and ready, with notification-fd) when onix started it. `laid`: laid
down, with s6's `down` file, while no s6-svscan ran on the scan directory (at boot,
before s6-svscan starts; an image being built); s6-svscan supervises it but does not
start it: stage 2, or the next reconcile under s6-svscan, starts it in dependency
order. `pending`: onix is changing it (a crash leaves this, and the next reconcile
redoes the change). `failed`: it did not come up or get ready in time; it stays wanted
up, so s6 keeps trying (a oneshot whose up failed is not run again). `held`: not
started because a dependency failed; it keeps its `down` file. pending, failed and
held copies are restarted by the next reconcile even if their hash matches. A
directory in the scan directory without a marker is not onix's and is never touched (a
state that defines a service of that name is refused).
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from onix.core import safepath
from onix.core.errors import OnixError
from onix.core.fsutil import atomic_write, fsync_dir, remove_tree
from onix.core.paths import SCANDIR
from onix.services.definitions import (
    MARKER,
    STAGE2,
    Definition,
    Entry,
    content_hash,
    from_entries,
    is_log,
    ms,
    valid_name,
)

MARKER_VERSION = "onix-service 1"
NEW_SUFFIX = ".onix-new"
REMOVING_SUFFIX = ".onix-removing"
STATUSES = ("up", "laid", "pending", "failed", "held")
RETRY = frozenset({"pending", "failed", "held"})


@dataclass
class Marker:
    hash: str = ""
    log_hash: str = "-"
    state: int | None = None
    status: str = "pending"
    dirs: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    reason: str = ""

    def encode(self) -> bytes:
        lines = [MARKER_VERSION, f"hash {self.hash or '-'}", f"log-hash {self.log_hash}",
                 f"state {self.state if self.state is not None else '-'}",
                 f"status {self.status}"]
        if self.reason:
            lines.append("reason " + " ".join(self.reason.split()))  # one line
        lines += [f"dir {d}" for d in self.dirs] + [f"file {f}" for f in self.files]
        return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")

    @classmethod
    def decode(cls, data: bytes) -> Marker:
        """Parse a marker; anything unreadable gives a pending marker (redo the service)."""
        m = cls()
        lines = data.decode("utf-8", "surrogateescape").splitlines()
        if not lines or lines[0] != MARKER_VERSION:
            return m
        for line in lines[1:]:
            key, _, value = line.partition(" ")
            if key == "hash":
                m.hash = value if re.fullmatch(r"[0-9a-f]{64}", value) else ""
            elif key == "log-hash":
                m.log_hash = value
            elif key == "state":
                m.state = int(value) if value.isdigit() else None
            elif key == "status":
                m.status = value if value in STATUSES else "pending"
            elif key == "reason":
                m.reason = value
            elif key in ("dir", "file") and safepath.clean_rel(value):
                (m.dirs if key == "dir" else m.files).append(value)
        return m

    @classmethod
    def of(cls, d: Definition, state_id: int | None, status: str) -> Marker:
        return cls(hash=d.hash, log_hash=d.log_hash, state=state_id, status=status,
                   dirs=[e.rel for e in d.entries if e.kind == "d"],
                   files=[e.rel for e in d.entries if e.kind == "f"])


@dataclass
class Live:
    name: str
    path: Path
    ours: bool
    marker: Marker | None = None


def default_scandir(root: Path) -> Path:
    return Path(root).absolute() / SCANDIR


def check_scandir_path(root: Path) -> None:
    """The default scan directory must stay inside the root (no symlinked run/)."""
    try:
        safepath.check_dirs(Path(root).absolute(), SCANDIR)
    except safepath.SymlinkError as e:
        raise OnixError(f"is a symlink to {e.target}; onix writes the live service copies "
                        "inside the root", path=e.where,
                        hint="pass scandir explicitly, or make it a real directory") from None


# -- reading the live copies ------------------------------------------------------------


def read_rel(base: Path, rel: str) -> Entry | None:
    """base/rel as an Entry, reached without following a symlink (base's own name
    included); None if it is missing, a symlink, or neither a file nor a directory."""
    where = f"{base.name}/{rel}"
    try:
        st = safepath.lstat_below(base.parent, where)
        if st is None or not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
            return None
        if stat.S_ISDIR(st.st_mode):
            return Entry(rel, "d", stat.S_IMODE(st.st_mode))
        return Entry(rel, "f", stat.S_IMODE(st.st_mode),
                     safepath.read_regular(base.parent, where))
    except (OSError, OnixError):
        return None


def live_hash(live: Path, d: Definition, *, log_only: bool = False) -> str | None:
    """The hash of the live copy's files at the definition's paths (None if one is off)."""
    entries = []
    for e in d.entries:
        if log_only and not is_log(e.rel):
            continue
        got = read_rel(live, e.rel)
        if got is None or got.kind != e.kind:
            return None
        entries.append(got)
    return content_hash(entries) if entries else "-"


def copy_definition(lv: Live) -> Definition:
    """A live copy read back as a definition: the files its marker lists (what onix
    copied), as they are now. OnixError if one of them makes no sense any more."""
    m = lv.marker or Marker()
    entries = [got for rel in sorted({*m.dirs, *m.files})
               if (got := read_rel(lv.path, rel)) is not None]
    return from_entries(lv.name, lv.path, entries, live=True)


def _read_marker(path: Path) -> Marker | None:
    """The marker of a live directory, None if it has none (not ours)."""
    try:
        st = os.stat(path / MARKER, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not stat.S_ISREG(st.st_mode):
        return Marker()  # ours, but unreadable: redo
    got = read_rel(path, MARKER)
    return Marker.decode(got.data) if got else Marker()


def scan(scandir: Path) -> dict[str, Live]:
    """Every service directory in the scan directory, onix's or not (dot-names skipped)."""
    out: dict[str, Live] = {}
    try:
        names = sorted(os.listdir(scandir))
    except (FileNotFoundError, NotADirectoryError):
        return out
    for name in names:
        if name.startswith(".") or name == STAGE2:
            continue
        p = scandir / name
        st = os.stat(p, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode):
            out[name] = Live(name, p, ours=False)  # a symlinked service: someone else's
            continue
        m = _read_marker(p)
        out[name] = Live(name, p, ours=m is not None, marker=m)
    return out


def dependencies(lv: Live) -> tuple[str, ...]:
    """What the live copy's own dependencies file names (it may be an older state's)."""
    got = read_rel(lv.path, "dependencies")
    if got is None or got.kind != "f":
        return ()
    return tuple(n for n in (ln.strip() for ln in got.data.decode("utf-8", "replace")
                             .splitlines()) if valid_name(n))


def stop_timeout(sdir: Path, timeout: float) -> float:
    """How long to wait for a service to go down: its live copy's timeout-down, if set."""
    own = read_rel(sdir, "timeout-down")
    return ms(own.data if own and own.kind == "f" else None) or timeout


# -- writing copies -------------------------------------------------------------------


def _remove_old(dest: Path, d: Definition, old: Marker) -> None:
    """Old paths the new definition lacks (or has as the other kind), deepest first."""
    kinds = {e.rel: e.kind for e in d.entries}
    for rel in sorted([*old.files, *old.dirs], key=lambda r: (-r.count("/"), r)):
        p = dest / rel
        try:
            st = os.stat(p, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            continue
        is_dir = stat.S_ISDIR(st.st_mode)
        want = kinds.get(rel)
        if want == ("d" if is_dir else "f"):
            continue
        if not is_dir:
            os.unlink(p)
        elif want == "f":
            remove_tree(p)  # a directory becomes a file: whatever is in it goes
        else:
            with contextlib.suppress(OSError):
                os.rmdir(p)  # dropped; kept if the service wrote files into it


def _install_entries(dest: Path, d: Definition, old: Marker | None) -> None:
    """Make dest's definition files those of d: replace, add, remove the old ones."""
    if old is not None:
        _remove_old(dest, d, old)
    dirs = {""}
    for e in d.entries:
        p = dest / e.rel
        if e.kind == "d":
            try:
                st = os.stat(p, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    os.unlink(p)
                    raise FileNotFoundError
            except FileNotFoundError:
                os.mkdir(p, 0o755)
                os.chmod(p, 0o755)  # not left to the umask
            os.chmod(p, (e.mode | 0o700) & 0o777)
            dirs.add(e.rel)
        else:
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISDIR(os.stat(p, follow_symlinks=False).st_mode):
                    remove_tree(p)
            atomic_write(p, e.data, mode=e.mode & 0o777)
    for rel in sorted(dirs, key=lambda r: -r.count("/")):
        fsync_dir(dest / rel if rel else dest)


def write_marker(dest: Path, m: Marker) -> None:
    atomic_write(dest / MARKER, m.encode(), mode=0o644)


def _pending(old: Marker, d: Definition) -> Marker:
    """The marker while a copy is being changed: it owns the old and the new paths."""
    return Marker(hash="", log_hash=old.log_hash, state=old.state, status="pending",
                  dirs=sorted({*old.dirs, *(e.rel for e in d.entries if e.kind == "d")}),
                  files=sorted({*old.files, *(e.rel for e in d.entries if e.kind == "f")}))


def change_in_place(lv: Live, d: Definition, *, down: bool = False) -> None:
    """Give a live copy d's files. Its marker says pending meanwhile, so that a crash
    halfway is redone by the next reconcile; the caller writes the final marker. With
    down, the copy keeps (or gets) s6's `down` file; else it loses it."""
    old = lv.marker or Marker()
    write_marker(lv.path, _pending(old, d))
    _install_entries(lv.path, d, old)
    if down:
        atomic_write(lv.path / "down", b"", mode=0o644)
    else:
        remove_tree(lv.path / "down")


def lay_down(scandir: Path, d: Definition, marker: Marker, *, down: bool) -> Path:
    """Write a fresh copy as .<name>.onix-new and rename it to <name>."""
    tmp = scandir / f".{d.name}{NEW_SUFFIX}"
    remove_tree(tmp)
    os.mkdir(tmp, 0o755)
    os.chmod(tmp, 0o755)  # not left to the umask
    _install_entries(tmp, d, None)
    if down:
        atomic_write(tmp / "down", b"", mode=0o644)
    write_marker(tmp, marker)
    dest = scandir / d.name
    os.rename(tmp, dest)
    fsync_dir(scandir)
    return dest


def stage2_run(root: Path) -> bytes:
    """The run script of onix's stage-2 service for the scan directory of root."""
    import shlex

    return f"""#!/bin/sh
# ONIX stage 2 (onix/services/reconcile.py): the services of this scan directory were
# laid down with s6's down file before s6-svscan ran; this brings them up in dependency
# order, once (s6-svc -O), now that s6-svscan supervises them. Its exit status is
# onix's: s6-svstat on this directory says how stage 2 ended.
exec 2>&1
s6-svc -O .
exec onix services --up --root {shlex.quote(str(root))}
""".encode()


def lay_stage2(scandir: Path, root: Path) -> Path:
    """Lay down onix's stage-2 service (no down file: s6-svscan starts it at once).
    One that is there already (an earlier lay-down of this boot) gets the run file anew."""
    dest = scandir / STAGE2
    if dest.is_dir() and not dest.is_symlink():
        atomic_write(dest / "run", stage2_run(root), mode=0o755)
        return dest
    tmp = scandir / f".{STAGE2}{NEW_SUFFIX}"
    remove_tree(tmp)
    os.mkdir(tmp, 0o755)
    os.chmod(tmp, 0o755)  # not left to the umask
    atomic_write(tmp / "run", stage2_run(root), mode=0o755)
    remove_tree(dest)
    os.rename(tmp, dest)
    fsync_dir(scandir)
    return dest
