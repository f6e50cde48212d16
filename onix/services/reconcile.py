"""Services: the s6 service directories a state ships, and the live scan directory.

Service definitions are part of the machine state. A stone ships them under /usr, so
every state has its own set, and after every transaction and rollback `reconcile()`
makes the live scan directory match the state the way s6-rc-update would (s6-rc
itself is not packaged): new services are started, removed ones stopped, changed ones
(by content hash) restarted, unchanged ones left running, all in dependency order.
`list_services()` is `onix services`.

Definitions (inside a state, read-only)
---------------------------------------

    <usr>/lib/onix/services/<name>/         one s6 service directory per service
        run                                 executable; s6-supervise runs it (required)
        finish                              executable, optional
        notification-fd                     decimal fd for readiness, optional; services
                                            that have it are waited for until *ready*
                                            (`s6-svwait -U`), the others until *up* (-u)
        timeout-up, timeout-down            milliseconds, as in s6-rc: how long onix waits
                                            for this service to come up (and be ready) or
                                            to go down; 0 or absent: reconcile's `timeout`
        timeout-kill, down-signal, ...      other s6-supervise files, copied as they are
        data/...                            anything the scripts use, e.g. data/check for
                                            `s6-notifyoncheck` (it runs ./data/check)
        log/run (+ log/notification-fd ...) a logger: s6-svscan supervises log/ as a
                                            second process and pipes run's stdout into it
        dependencies                        text: one service name per line; blank lines
                                            and lines starting with '#' are ignored. What
                                            s6-rc keeps in dependencies.d/, as one file.

A name is `[a-z0-9][a-z0-9._-]*` (at most 100 bytes). Only regular files and real
directories may be in a definition: a symlink anywhere (the definition directory
itself, or a component of lib/onix/services on the way), a device, a FIFO, a
dependency on a service the state does not define, a dependency cycle or a bad name is
an OnixError naming the path, raised before anything in the scan directory changes.
Definitions are read one component at a time with O_NOFOLLOW, as onix/safepath.py
does, so that a state cannot make onix copy a file of the host into the scan directory.
`supervise/`, `event/` and `down` (top level and in log/) are what s6 and s6-rc make
at run time; in a definition they are ignored, not copied and not hashed.

The content hash of a definition is blake3 over, for every entry in byte order of
its relative path: `d\\0<path>\\0` for a directory, and `f\\0<path>\\0<x|->` plus
the length (8 bytes, big-endian) and the bytes for a file, where x means an exec bit
is set (the other mode bits and times do not matter: the store installs files
read-only, a rebuilt stone may not). `log/` gets a hash of its own the same way,
so a change that only touches the service leaves its logger running, with no logs lost.

The live scan directory (`<root>/run/service` unless given)
-------------------------------------------------------------

    <scandir>/<name>/                   a real directory: a COPY of the definition
    <scandir>/<name>/.onix-service      the marker: this service is onix's (see below)
    <scandir>/<name>/supervise/, event/ s6-supervise's (also log/supervise, log/event)
    <scandir>/.<name>.onix-new          a copy being laid down (s6-svscan skips dot-names)
    <scandir>/.<name>.onix-removing     a removed service, until its supervisor is gone

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
    dir <relpath>                        every directory onix copied, then
    file <relpath>                       every file onix copied (so the next change
                                         removes exactly those, never what the
                                         service or its logger wrote into its dir)

`up`: it came up (and ready, with notification-fd) when onix started it. `laid`: laid
down while no s6-svscan ran on the scan directory (an image being built, a root not
booted); s6-svscan starts it when it starts. `pending`: onix is changing it (a crash
leaves this, and the next reconcile redoes the change). `failed`: it did not come up
or get ready in time; it stays wanted up, so s6 keeps trying. `held`: not started
because a dependency failed. pending, failed and held copies are restarted by the next
reconcile even if their hash matches. A directory in the scan directory without a
marker is not onix's and is never touched (a state that defines a service of that
name is refused).

How reconcile changes things (with an s6-svscan running on the scan directory)
------------------------------------------------------------------------------

1. Check every definition and the plan; refuse before any change.
2. Stop, dependents first (reverse order of the live copies' dependencies): removed
   services, changed ones, and the unchanged services that depend on a changed one
   (s6-rc-update restarts those too). `s6-svc -wD -T <ms> -d`, and SIGKILL (-k) if that
   times out; a removed service's logger after it.
3. Removed: rename to `.<name>.onix-removing`, `s6-svscanctl -an` (rescan, and drop
   the supervisors whose directory went away), wait for both supervisors to exit,
   delete the directory.
4. Changed: the marker goes to `pending`, each file is replaced by a rename over it,
   files of the old definition that the new one lacks are removed; `supervise/` and
   `event/` stay, and so does the supervisor. s6-supervise execs `./run` afresh on
   every start, and reads notification-fd and the timeout files then too, so the next
   `s6-svc -u` runs the new definition: stopping, replacing, then starting (rather
   than `s6-svc -r` while running, which would race the replacement) guarantees no
   old process survives and no new one runs old files. A service whose logger
   appears or disappears is removed and laid down anew (s6-svscan sets up the
   logger pipe only when it first sees a directory).
5. New: written as `.<name>.onix-new` with a `down` file, fsynced, renamed into place,
   then one `s6-svscanctl -a`. The `down` file keeps s6-supervise from starting it on
   its own, so that onix starts it in dependency order; it is removed before
   `s6-svc -u`.
6. Start, in waves of dependency depth: every service of a wave gets `s6-svc -u`
   (its logger first), then one `s6-svwait -U` (with notification-fd) or `-u` per
   service, all at once, each for its timeout-up or else `timeout` seconds. One that
   does not make it is reported failed (with what s6-svstat says) and the others go
   on; what depends on it is not started (held). It stays wanted up, so s6 keeps
   trying, and the next reconcile restarts it.

A service that will not stop is stopped with SIGKILL; if even that fails, a removed
service is deleted anyway (and reported failed), a changed one keeps its old files and
is reported failed. One reconcile runs per scan directory at a time (flock on it).
If s6-svscan is missing but an orphaned s6-supervise still runs on a copy onix changes
or removes, that service is stopped first.

Without a running s6-svscan (`<scandir>/.s6-svscan/control` has no reader) only the
file-system part is done: copies are laid down without `down` files (marker status
`laid`), removed ones are deleted, and the report says `supervised: false`; then
`started` and `restarted` name what s6-svscan will start with the new files. It starts
everything when it starts, all at once: services must cope with a dependency not
being ready yet (s6 restarts a run script that exits), exactly as they must at boot.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import stat
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from onix.core import proc
from onix.core.errors import OnixError

DEFINITIONS = "lib/onix/services"  # relative to usr/
SCANDIR = "run/service"  # relative to the root
MARKER = ".onix-service"
MARKER_VERSION = "onix-service 1"
NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,99}")
RUNTIME = frozenset({"supervise", "event", "down"})  # s6's, at the top and in log/
NEW_SUFFIX = ".onix-new"
REMOVING_SUFFIX = ".onix-removing"
STATUSES = ("up", "laid", "pending", "failed", "held")
RETRY = frozenset({"pending", "failed", "held"})
SVSTAT_FIELDS = ("up", "wantedup", "ready", "pid", "exitcode", "signal", "updownfor")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_POLL = 0.02


# -- definitions ---------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    rel: str  # relative path inside the service directory
    kind: str  # "d" or "f"
    mode: int  # permission bits (files are copied with them)
    data: bytes = b""


@dataclass(frozen=True)
class Definition:
    name: str
    path: Path  # <usr>/lib/onix/services/<name>
    entries: tuple[Entry, ...]
    dependencies: tuple[str, ...]
    notification_fd: int | None
    log_notification_fd: int | None
    timeout_up: float | None  # seconds, from timeout-up (ms); None: the caller's timeout
    has_log: bool
    hash: str
    log_hash: str  # "-" without a logger


def valid_name(name: str) -> bool:
    return NAME_RE.fullmatch(name) is not None


def _blake3():
    import blake3

    return blake3.blake3()


def content_hash(entries: Iterable[Entry]) -> str:
    """blake3 over sorted paths, kinds, exec bits and bytes (module docstring)."""
    h = _blake3()
    for e in sorted(entries, key=lambda e: e.rel.encode("utf-8", "surrogateescape")):
        rel = e.rel.encode("utf-8", "surrogateescape")
        if e.kind == "d":
            h.update(b"d\0" + rel + b"\0")
        else:
            h.update(b"f\0" + rel + b"\0" + (b"x" if e.mode & 0o111 else b"-"))
            h.update(len(e.data).to_bytes(8, "big"))
            h.update(e.data)
    return h.hexdigest()


def _log_hash(entries: Iterable[Entry]) -> str:
    part = [e for e in entries if e.rel == "log" or e.rel.startswith("log/")]
    return content_hash(part) if part else "-"


def _bad(path: Path, message: str, hint: str) -> OnixError:
    return OnixError(message, path=path, hint=hint)


def _walk(dfd: int, base: Path, prefix: str, out: list[Entry]) -> None:
    """Every entry below dfd (a definition directory), symlinks refused, no following."""
    for name in sorted(os.listdir(dfd)):
        rel = prefix + name
        here = base / rel
        if prefix in ("", "log/") and name in RUNTIME:
            continue  # s6's run-time files: not part of a definition
        if name == MARKER:
            raise _bad(here, f"{MARKER} is onix's marker of a live copy and cannot be shipped",
                       "remove it from the definition")
        if any(ord(c) < 32 or c == "\x7f" for c in name):
            raise _bad(here, "a file name in a service definition has a control character",
                       "rename it")
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(name, dir_fd=dfd)
            raise _bad(here, f"is a symlink to {target}; a service definition is copied into "
                       "the scan directory and onix follows no symlink in it",
                       f"ship {rel} as a regular file or a real directory")
        if stat.S_ISDIR(st.st_mode):
            out.append(Entry(rel, "d", stat.S_IMODE(st.st_mode)))
            fd = os.open(name, _DIR_FLAGS, dir_fd=dfd)
            try:
                _walk(fd, base, rel + "/", out)
            finally:
                os.close(fd)
        elif stat.S_ISREG(st.st_mode):
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=dfd)
            try:
                fst = os.fstat(fd)
                if not stat.S_ISREG(fst.st_mode):
                    raise _bad(here, "is not a regular file", "ship a regular file")
                with os.fdopen(fd, "rb", closefd=False) as f:
                    data = f.read()
            finally:
                os.close(fd)
            out.append(Entry(rel, "f", stat.S_IMODE(fst.st_mode), data))
        else:
            raise _bad(here, "is neither a regular file nor a directory",
                       "ship only regular files and directories in a service definition")


def _int_file(entries: dict[str, Entry], rel: str, base: Path) -> int | None:
    e = entries.get(rel)
    if e is None:
        return None
    text = e.data.decode("ascii", "replace").strip()
    if e.kind != "f" or not text.isdigit() or not 0 <= int(text) < 1024:
        raise _bad(base / rel, f"{rel} must hold a file descriptor number",
                   "write a decimal number such as 3 into it")
    return int(text)


def _ms(data: bytes | None) -> float | None:
    """timeout-up/timeout-down text → seconds; None for absent, 0 or unreadable."""
    text = (data or b"").decode("ascii", "replace").strip()
    return int(text) / 1000 if text.isdigit() and int(text) > 0 else None


def _ms_file(entries: dict[str, Entry], rel: str, base: Path) -> float | None:
    e = entries.get(rel)
    if e is None:
        return None
    if e.kind != "f" or not e.data.decode("ascii", "replace").strip().isdigit():
        raise _bad(base / rel, f"{rel} must hold a number of milliseconds",
                   "write a decimal number such as 5000 into it (0: no limit of its own)")
    return _ms(e.data)


def _parse_dependencies(data: bytes, path: Path) -> tuple[str, ...]:
    deps: list[str] = []
    for raw in data.decode("utf-8", "replace").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not valid_name(line):
            raise _bad(path, f"{line!r} is not a service name",
                       "one service name ([a-z0-9][a-z0-9._-]*) per line")
        if line not in deps:
            deps.append(line)
    return tuple(deps)


def _read_definition(fd: int, name: str, base: Path) -> Definition:
    out: list[Entry] = []
    _walk(fd, base, "", out)
    by = {e.rel: e for e in out}
    run = by.get("run")
    if run is None or run.kind != "f" or not run.mode & 0o100:
        raise _bad(base / "run", "a service needs an executable run file",
                   "ship run as a regular file with mode 0755")
    for rel in ("finish", "log/finish"):
        if rel in by and (by[rel].kind != "f" or not by[rel].mode & 0o100):
            raise _bad(base / rel, f"{rel} must be an executable file", "give it mode 0755")
    has_log = "log" in by
    if has_log:
        lrun = by.get("log/run")
        if by["log"].kind != "d" or lrun is None or lrun.kind != "f" or not lrun.mode & 0o100:
            raise _bad(base / "log", "a logger is a directory with an executable log/run",
                       "ship log/run with mode 0755, or no log at all")
    deps: tuple[str, ...] = ()
    if "dependencies" in by:
        if by["dependencies"].kind != "f":
            raise _bad(base / "dependencies", "dependencies must be a file",
                       "one service name per line")
        deps = _parse_dependencies(by["dependencies"].data, base / "dependencies")
    _ms_file(by, "timeout-down", base)  # checked here, read from the live copy when stopping
    return Definition(name=name, path=base, entries=tuple(out), dependencies=deps,
                      notification_fd=_int_file(by, "notification-fd", base),
                      log_notification_fd=_int_file(by, "log/notification-fd", base),
                      timeout_up=_ms_file(by, "timeout-up", base),
                      has_log=has_log, hash=content_hash(out), log_hash=_log_hash(out))


def _open_below(base: Path, rel: str) -> int | None:
    """An O_NOFOLLOW fd of the directory base/rel; None if missing. A symlink is an error."""
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    here = base
    try:
        for part in rel.split("/"):
            here = here / part
            try:
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                os.close(fd)
                return None
            if stat.S_ISLNK(st.st_mode):
                raise _bad(here, f"is a symlink to {os.readlink(part, dir_fd=fd)}; onix reads "
                           "service definitions without following symlinks",
                           "ship it as a real directory")
            if not stat.S_ISDIR(st.st_mode):
                raise _bad(here, "is not a directory", "ship it as a real directory")
            nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise
    return fd


def _definitions(usr: Path, *, strict: bool = True
                 ) -> tuple[dict[str, Definition], dict[str, OnixError]]:
    """The state's definitions by name; with strict, the first problem is raised."""
    usr = Path(usr)
    top = usr / DEFINITIONS
    defs: dict[str, Definition] = {}
    errors: dict[str, OnixError] = {}
    if not usr.is_dir():
        return defs, errors
    fd = _open_below(usr, DEFINITIONS)
    if fd is None:
        return defs, errors
    try:
        for name in sorted(os.listdir(fd)):
            base = top / name
            try:
                if not valid_name(name):
                    raise _bad(base, f"{name!r} is not a service name",
                               "name services [a-z0-9][a-z0-9._-]* (at most 100 bytes)")
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    raise _bad(base, f"is a symlink to {os.readlink(name, dir_fd=fd)}; a "
                               "service definition must be a real directory",
                               "ship the service directory itself")
                if not stat.S_ISDIR(st.st_mode):
                    raise _bad(base, "is not a directory",
                               f"{DEFINITIONS}/ holds only service directories")
                dfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
                try:
                    defs[name] = _read_definition(dfd, name, base)
                finally:
                    os.close(dfd)
            except OnixError as e:
                if strict:
                    raise
                errors[name] = e
    finally:
        os.close(fd)
    return defs, errors


def _check_graph(defs: dict[str, Definition], top: Path) -> None:
    for d in defs.values():
        for dep in d.dependencies:
            if dep not in defs:
                raise _bad(d.path / "dependencies",
                           f"service {d.name} depends on {dep}, which this state does not "
                           "define", f"ship {top}/{dep} too, or drop the dependency")
    colour: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        colour[n] = 1
        stack.append(n)
        for dep in defs[n].dependencies:
            if colour.get(dep) == 1:
                cycle = [*stack[stack.index(dep):], dep]
                raise _bad(defs[n].path / "dependencies",
                           "dependency cycle: " + " → ".join(cycle),
                           "services cannot depend on each other in a loop")
            if dep not in colour:
                visit(dep)
        stack.pop()
        colour[n] = 2

    for n in sorted(defs):
        if n not in colour:
            visit(n)


def load_definitions(usr: Path) -> dict[str, Definition]:
    """Read and check every definition in a state's usr tree (OnixError on any problem)."""
    defs, _ = _definitions(usr)
    _check_graph(defs, Path(usr) / DEFINITIONS)
    return defs


def _levels(names: Iterable[str], deps: dict[str, tuple[str, ...]]) -> dict[str, int]:
    """Dependency depth of each name within `deps` (unknown deps ignored, cycles cut)."""
    level: dict[str, int] = {}
    busy: set[str] = set()

    def depth(n: str) -> int:
        if n in level:
            return level[n]
        if n in busy:
            return 0
        busy.add(n)
        d = 1 + max((depth(x) for x in deps.get(n, ()) if x in deps), default=-1)
        busy.discard(n)
        level[n] = d
        return d

    for n in names:
        depth(n)
    return level


def _order(names: Iterable[str], deps: dict[str, tuple[str, ...]]) -> list[str]:
    """Dependencies first; ties by name (deterministic)."""
    names = list(names)
    lv = _levels(names, deps)
    return sorted(names, key=lambda n: (lv[n], n))


# -- the live scan directory -----------------------------------------------------------


@dataclass
class Marker:
    hash: str = ""
    log_hash: str = "-"
    state: int | None = None
    status: str = "pending"
    dirs: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def encode(self) -> bytes:
        lines = [MARKER_VERSION, f"hash {self.hash or '-'}", f"log-hash {self.log_hash}",
                 f"state {self.state if self.state is not None else '-'}",
                 f"status {self.status}"]
        lines += [f"dir {d}" for d in self.dirs] + [f"file {f}" for f in self.files]
        return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")

    @classmethod
    def decode(cls, data: bytes) -> Marker:
        """Parse a marker; anything unreadable gives a pending marker (redo the service)."""
        from onix.core.safepath import clean_rel

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
            elif key in ("dir", "file") and clean_rel(value):
                (m.dirs if key == "dir" else m.files).append(value)
        return m

    @classmethod
    def of(cls, d: Definition, state_id: int, status: str) -> Marker:
        return cls(hash=d.hash, log_hash=d.log_hash, state=state_id, status=status,
                   dirs=[e.rel for e in d.entries if e.kind == "d"],
                   files=[e.rel for e in d.entries if e.kind == "f"])


@dataclass
class Live:
    name: str
    path: Path
    ours: bool
    marker: Marker | None = None


def _read_rel(base: Path, rel: str) -> Entry | None:
    """base/rel as an Entry, reached with O_NOFOLLOW; None if missing or not a plain file."""
    parts = rel.split("/")
    try:
        fd = os.open(base, _DIR_FLAGS)
    except OSError:
        return None
    try:
        for part in parts[:-1]:
            nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nfd
        st = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            return Entry(rel, "d", stat.S_IMODE(st.st_mode))
        if not stat.S_ISREG(st.st_mode):
            return None
        ffd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                      dir_fd=fd)
        with os.fdopen(ffd, "rb") as f:
            return Entry(rel, "f", stat.S_IMODE(st.st_mode), f.read())
    except OSError:
        return None
    finally:
        os.close(fd)


def _live_hash(live: Path, d: Definition, *, log_only: bool = False) -> str | None:
    """The hash of the live copy's files at the definition's paths (None if one is off)."""
    entries = []
    for e in d.entries:
        if log_only and not (e.rel == "log" or e.rel.startswith("log/")):
            continue
        got = _read_rel(live, e.rel)
        if got is None or got.kind != e.kind:
            return None
        entries.append(got)
    return content_hash(entries) if entries else "-"


def _read_marker(path: Path) -> Marker | None:
    """The marker of a live directory, None if it has none (not ours)."""
    try:
        st = os.stat(path / MARKER, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not stat.S_ISREG(st.st_mode):
        return Marker()  # ours, but unreadable: redo
    got = _read_rel(path, MARKER)
    return Marker.decode(got.data) if got else Marker()


def _live(scandir: Path) -> dict[str, Live]:
    out: dict[str, Live] = {}
    try:
        names = sorted(os.listdir(scandir))
    except (FileNotFoundError, NotADirectoryError):
        return out
    for name in names:
        if name.startswith("."):
            continue
        p = scandir / name
        st = os.stat(p, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode):
            out[name] = Live(name, p, ours=False)  # a symlinked service: someone else's
            continue
        m = _read_marker(p)
        out[name] = Live(name, p, ours=m is not None, marker=m)
    return out


def _live_dependencies(lv: Live) -> tuple[str, ...]:
    got = _read_rel(lv.path, "dependencies")
    if got is None or got.kind != "f":
        return ()
    return tuple(n for n in (ln.strip() for ln in got.data.decode("utf-8", "replace")
                             .splitlines()) if valid_name(n))


def _listening(fifo: Path) -> bool:
    """True if a process reads the FIFO (s6-svscan's or s6-supervise's control)."""
    try:
        st = os.stat(fifo, follow_symlinks=False)
    except OSError:
        return False
    if not stat.S_ISFIFO(st.st_mode):
        return False
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:  # ENXIO: no reader
        return False
    os.close(fd)
    return True


def svscan_running(scandir: Path) -> bool:
    """An s6-svscan runs on scandir: its control FIFO has a reader (what s6-svscanctl needs)."""
    return _listening(Path(scandir) / ".s6-svscan" / "control")


def supervised(servicedir: Path) -> bool:
    """An s6-supervise runs on servicedir (what s6-svok checks)."""
    return _listening(Path(servicedir) / "supervise" / "control")


def svstat(servicedir: Path) -> dict:
    """What s6-svstat says of a service: parsed fields plus its own one-line text."""
    servicedir = Path(servicedir)
    if not supervised(servicedir):
        return {"state": "not supervised", "up": None, "ready": None, "pid": None,
                "seconds": None, "exitcode": None, "signal": None, "wanted_up": None,
                "text": "not supervised"}
    tool = proc.which("s6-svstat")
    r = proc.run([tool, "-o", ",".join(SVSTAT_FIELDS), servicedir], check=False, timeout=10)
    t = proc.run([tool, servicedir], check=False, timeout=10)
    text = (t.stdout or b"").decode(errors="replace").strip() or \
        (t.stderr or b"").decode(errors="replace").strip()
    vals = (r.stdout or b"").decode(errors="replace").split()
    if r.returncode != 0 or len(vals) != len(SVSTAT_FIELDS):
        return {"state": "unknown", "up": None, "ready": None, "pid": None, "seconds": None,
                "exitcode": None, "signal": None, "wanted_up": None, "text": text}
    f = dict(zip(SVSTAT_FIELDS, vals, strict=True))

    def num(v: str) -> int | None:
        return int(v) if v.lstrip("-").isdigit() and int(v) >= 0 else None

    up = f["up"] == "true"
    return {"state": "up" if up else "down", "up": up, "ready": f["ready"] == "true",
            "pid": num(f["pid"]) if up else None, "seconds": num(f["updownfor"]),
            "exitcode": num(f["exitcode"]),
            "signal": None if f["signal"] in ("NA", "-1") else f["signal"],
            "wanted_up": f["wantedup"] == "true", "text": text}


# -- writing copies -------------------------------------------------------------------


def _write_file(dirpath: Path, name: str, data: bytes, mode: int) -> None:
    """Write dirpath/name by a temp name and a rename over it (fsynced)."""
    tmp = dirpath / f".{name}.onix-tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fchmod(fd, mode & 0o777)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, dirpath / name)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, _DIR_FLAGS)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    from onix.core.fsutil import remove_tree

    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        remove_tree(path)
    else:
        os.unlink(path)


def _install_entries(dest: Path, d: Definition, old: Marker | None) -> None:
    """Make dest's definition files those of d: replace, add, remove the old ones."""
    kinds = {e.rel: e.kind for e in d.entries}
    if old is not None:
        # Old paths the new definition lacks (or has as the other kind), deepest first.
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
                _remove(p)  # a directory becomes a file: whatever is in it goes
            else:
                with contextlib.suppress(OSError):
                    os.rmdir(p)  # dropped; kept if the service wrote files into it
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
                    _remove(p)
            _write_file(p.parent, p.name, e.data, e.mode)
    for rel in sorted(dirs, key=lambda r: -r.count("/")):
        _fsync_dir(dest / rel if rel else dest)


def _write_marker(dest: Path, m: Marker) -> None:
    _write_file(dest, MARKER, m.encode(), 0o644)
    _fsync_dir(dest)


def _pending(old: Marker, d: Definition) -> Marker:
    """The marker while a copy is being changed: it owns the old and the new paths."""
    return Marker(hash="", log_hash=old.log_hash, state=old.state, status="pending",
                  dirs=sorted({*old.dirs, *(e.rel for e in d.entries if e.kind == "d")}),
                  files=sorted({*old.files, *(e.rel for e in d.entries if e.kind == "f")}))


def _lay_down(scandir: Path, d: Definition, marker: Marker, *, down: bool) -> Path:
    """Write a fresh copy as .<name>.onix-new and rename it to <name>."""
    tmp = scandir / f".{d.name}{NEW_SUFFIX}"
    _remove(tmp)
    os.mkdir(tmp, 0o755)
    os.chmod(tmp, 0o755)  # not left to the umask
    _install_entries(tmp, d, None)
    if down:
        _write_file(tmp, "down", b"", 0o644)
    _write_marker(tmp, marker)
    dest = scandir / d.name
    os.rename(tmp, dest)
    _fsync_dir(scandir)
    return dest


# -- reconcile ----------------------------------------------------------------------


@dataclass
class Report:
    state_id: int
    scandir: str
    supervised: bool
    started: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)  # {name, reason, svstat}

    @property
    def ok(self) -> bool:
        return not self.failed

    def as_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


@dataclass
class Plan:
    new: list[str]
    removed: list[str]
    changed: list[str]  # definition or live copy differs, or the marker asks for a redo
    recreate: list[str]  # changed, and the logger appears or disappears
    dependents: list[str]  # unchanged, but depend on a changed service: restarted too
    unchanged: list[str]


def default_scandir(root: Path) -> Path:
    return Path(root).absolute() / SCANDIR


def _check_scandir_path(root: Path) -> None:
    """The default scan directory must stay inside the root (no symlinked run/)."""
    here = Path(root).absolute()
    for part in SCANDIR.split("/"):
        here = here / part
        if here.is_symlink():
            raise _bad(here, f"is a symlink to {os.readlink(here)}; onix writes the live "
                       "service copies inside the root", "pass scandir explicitly, or make "
                       "it a real directory")


def plan(defs: dict[str, Definition], live: dict[str, Live]) -> Plan:
    """Compare the state's definitions with the live copies (no side effects)."""
    for name, d in defs.items():
        lv = live.get(name)
        if lv is not None and not lv.ours:
            raise _bad(lv.path, f"the scan directory already has a service {name} that is "
                       "not onix's (it has no .onix-service marker)",
                       f"remove or rename it, or do not ship {d.path}")
    new = sorted(n for n in defs if n not in live)
    removed = sorted(n for n, lv in live.items() if lv.ours and n not in defs)
    changed, recreate, unchanged = [], [], []
    for n in sorted(defs):
        lv = live.get(n)
        if lv is None:
            continue
        d, m = defs[n], lv.marker or Marker()
        if m.hash == d.hash and m.status not in RETRY and _live_hash(lv.path, d) == d.hash:
            unchanged.append(n)
            continue
        changed.append(n)
        if (lv.path / "log").is_dir() != d.has_log:  # s6-svscan pipes only what it first saw
            recreate.append(n)
    # s6-rc-update restarts what depends on a changed service; so do we.
    deps = {n: d.dependencies for n, d in defs.items()}
    hit = set(changed)
    grew = True
    while grew:
        grew = False
        for n in unchanged:
            if n not in hit and any(x in hit for x in deps[n]):
                hit.add(n)
                grew = True
    dependents = [n for n in unchanged if n in hit]
    unchanged = [n for n in unchanged if n not in hit]
    return Plan(new=new, removed=removed, changed=changed, recreate=recreate,
                dependents=dependents, unchanged=unchanged)


@contextlib.contextmanager
def _locked(scandir: Path) -> Iterator[None]:
    """One reconcile per scan directory at a time (flock on the directory itself)."""
    fd = os.open(scandir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _wait_for(pred, deadline: float) -> bool:
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL)


class _S6:
    """The s6 programs, found once, run through onix.proc.run."""

    def __init__(self) -> None:
        self.svc = proc.which("s6-svc")
        self.svwait = proc.which("s6-svwait")
        self.svscanctl = proc.which("s6-svscanctl")

    def stop(self, sdir: Path, timeout: float) -> bool:
        """Bring a supervised service down (finish done); SIGKILL if it takes too long.

        The live copy's timeout-down, if it has one, replaces `timeout`.
        """
        if not supervised(sdir):
            return True
        own = _read_rel(sdir, "timeout-down")
        timeout = _ms(own.data if own and own.kind == "f" else None) or timeout
        ms = str(max(1, int(timeout * 1000)))
        r = proc.run([self.svc, "-wD", "-T", ms, "-d", sdir], check=False, timeout=timeout + 5)
        if r.returncode == 0:
            return True
        proc.run([self.svc, "-k", sdir], check=False, timeout=10)
        r = proc.run([self.svwait, "-D", "-t", "2000", sdir], check=False, timeout=10)
        return r.returncode == 0

    def up(self, sdir: Path) -> bool:
        return proc.run([self.svc, "-u", sdir], check=False, timeout=10).returncode == 0

    def exit(self, sdir: Path) -> None:
        """Tell s6-supervise to exit once the service is down (s6-svc -x)."""
        if supervised(sdir):
            proc.run([self.svc, "-x", sdir], check=False, timeout=10)

    def wait(self, items: list[tuple[Path, str, float]]) -> None:
        """s6-svwait <flag> -t <limit> for each (dir, flag, seconds), all at once."""
        from concurrent.futures import ThreadPoolExecutor

        def one(item: tuple[Path, str, float]) -> None:
            sdir, flag, limit = item
            proc.run([self.svwait, flag, "-t", str(max(1, int(limit * 1000))), sdir],
                     check=False, timeout=limit + 5)

        if items:
            with ThreadPoolExecutor(max_workers=min(len(items), 16)) as pool:
                list(pool.map(one, items))

    def scan(self, scandir: Path, *, nuke: bool = False) -> None:
        proc.run([self.svscanctl, "-an" if nuke else "-a", scandir], check=True, timeout=10)


def _came_up(st: dict, notif: bool) -> bool:
    return bool(st["up"]) and (bool(st["ready"]) or not notif)


def _clean_debris(scandir: Path, s6: _S6 | None, timeout: float) -> None:
    """Leftovers of an interrupted reconcile: half-written copies, unfinished removals."""
    try:
        names = os.listdir(scandir)
    except FileNotFoundError:
        return
    debris = [scandir / n for n in names if n.startswith(".")
              and (n.endswith(NEW_SUFFIX) or n.endswith(REMOVING_SUFFIX))]
    if not debris:
        return
    if s6 is not None and any(supervised(p) or supervised(p / "log") for p in debris):
        s6.scan(scandir, nuke=True)
        deadline = time.monotonic() + timeout
        for p in debris:
            _wait_for(lambda p=p: not supervised(p) and not supervised(p / "log"), deadline)
    for p in debris:
        _remove(p)


def reconcile(*, root: Path, usr: Path, state_id: int, scandir: Path | None = None,
              timeout: float = 10) -> Report:
    """Make the live scan directory run the services of the state in `usr`.

    Every definition is checked first (OnixError before any change). A service that
    does not come up is reported in `failed`, not raised. See the module docstring.
    """
    root = Path(root).absolute()
    if scandir is None:
        _check_scandir_path(root)
        scandir = default_scandir(root)
    scandir = Path(scandir).absolute()
    defs = load_definitions(Path(usr))
    plan(defs, _live(scandir))  # refuses a state that would take over a service not ours
    active = svscan_running(scandir)
    report = Report(state_id=state_id, scandir=str(scandir), supervised=active)
    if not scandir.is_dir():
        if not defs:
            return report
        from onix.core.fsutil import mkdirs

        mkdirs(scandir)  # 0755 whatever the umask: s6 tools run as other users read it
    s6 = _S6() if active else None
    with _locked(scandir):
        _clean_debris(scandir, s6, timeout)
        live = _live(scandir)  # again, under the lock
        p = plan(defs, live)
        report.unchanged = list(p.unchanged)
        if s6 is None:
            _reconcile_files(scandir, defs, live, p, state_id, report, timeout)
        else:
            _reconcile_live(scandir, defs, live, p, state_id, report, s6, timeout)
    return report


def _reconcile_files(scandir: Path, defs: dict[str, Definition], live: dict[str, Live],
                     p: Plan, state_id: int, report: Report, timeout: float) -> None:
    """No s6-svscan: lay the files down; s6-svscan starts them when it starts.

    If s6-svscan died and left a supervisor running on a copy onix changes or removes,
    that service is stopped first (and its supervisor told to exit if it goes away).
    """
    s6: _S6 | None = None
    for n in [*p.removed, *p.changed]:
        for sdir in (live[n].path, live[n].path / "log"):
            if supervised(sdir):
                s6 = s6 or _S6()
                s6.stop(sdir, timeout)
                if n in p.removed or n in p.recreate:
                    s6.exit(sdir)
    for n in p.removed:
        _remove(live[n].path)
        report.stopped.append(n)
    for n in p.changed:
        d = defs[n]
        if n in p.recreate:
            _remove(live[n].path)
            _lay_down(scandir, d, Marker.of(d, state_id, "laid"), down=False)
        else:
            old = live[n].marker or Marker()
            _write_marker(live[n].path, _pending(old, d))
            _install_entries(live[n].path, d, old)
            _remove(live[n].path / "down")
            _write_marker(live[n].path, Marker.of(d, state_id, "laid"))
        report.restarted.append(n)
    report.unchanged += p.dependents  # nothing runs: nothing to restart
    for n in _order(p.new, {k: v.dependencies for k, v in defs.items()}):
        _lay_down(scandir, defs[n], Marker.of(defs[n], state_id, "laid"), down=False)
        report.started.append(n)
    _fsync_dir(scandir)


def _reconcile_live(scandir: Path, defs: dict[str, Definition], live: dict[str, Live],
                    p: Plan, state_id: int, report: Report, s6: _S6, timeout: float) -> None:
    fail: dict[str, str] = {}  # name → why it is not running the state's definition
    gone_fail: dict[str, str] = {}  # removed services that would not stop (deleted anyway)

    # 1. stop: dependents first, in the order the live copies depend on each other
    to_stop = [*p.removed, *p.changed, *p.dependents]
    live_deps = {n: _live_dependencies(live[n]) for n in live if live[n].ours}
    stop_order = list(reversed(_order(to_stop, live_deps)))
    log_stop = set(p.removed) | set(p.recreate)
    for n in p.changed:
        m, d = live[n].marker or Marker(), defs[n]
        if n not in p.recreate and (m.log_hash != d.log_hash or _live_hash(
                live[n].path, d, log_only=True) != d.log_hash):
            log_stop.add(n)
    for n in stop_order:
        sdir = live[n].path
        why = None
        if not s6.stop(sdir, timeout):
            why = "did not stop within the timeout, even after SIGKILL"
        if n in log_stop and (sdir / "log").is_dir() and not s6.stop(sdir / "log", timeout):
            why = why or "its logger did not stop within the timeout"
        if why and n in p.removed:
            gone_fail[n] = why
        elif why and n not in p.recreate:  # a recreated one goes with its supervisor
            fail[n] = why
        elif n in p.removed:
            report.stopped.append(n)
    stuck = set(fail)  # changed in place, but still running the old files: left alone

    # 2. removed (and recreated): out of s6-svscan's sight, supervisors dropped, deleted
    gone = [*p.removed, *p.recreate]
    moved: list[Path] = []
    for n in gone:
        dest = scandir / f".{n}{REMOVING_SUFFIX}"
        _remove(dest)
        os.rename(live[n].path, dest)
        moved.append(dest)
    if moved:
        _fsync_dir(scandir)
        s6.scan(scandir, nuke=True)
        deadline = time.monotonic() + timeout
        for d in moved:
            _wait_for(lambda d=d: not supervised(d) and not supervised(d / "log"), deadline)
            _remove(d)

    # 3. changed in place: marker pending first, so a crash here is redone next time
    for n in p.changed:
        if n in p.recreate or n in fail:
            continue
        lv, d = live[n], defs[n]
        old = lv.marker or Marker()
        _write_marker(lv.path, _pending(old, d))
        _install_entries(lv.path, d, old)
        _remove(lv.path / "down")

    # 4. new (and recreated): laid down with a `down` file, then one rescan
    fresh = sorted([*p.new, *p.recreate])
    for n in fresh:
        _lay_down(scandir, defs[n], Marker.of(defs[n], state_id, "pending"), down=True)
    starting = set(fresh) | set(p.changed) | set(p.dependents)
    # Every service to start needs its s6-supervise: the fresh ones, and a copy that a
    # crash left pending before s6-svscan saw it.
    orphans = sorted(n for n in starting if n not in fail and (
        not supervised(scandir / n) or (defs[n].has_log and not supervised(scandir / n / "log"))))
    if orphans:
        s6.scan(scandir)
        deadline = time.monotonic() + timeout
        for n in orphans:
            sdir = scandir / n
            ok = _wait_for(lambda sdir=sdir, log=defs[n].has_log: supervised(sdir) and (
                not log or supervised(sdir / "log")), deadline)
            if not ok:
                fail[n] = "s6-svscan started no s6-supervise for it"

    # 5. start in waves of dependency depth; a failure holds back what depends on it
    deps = {n: d.dependencies for n, d in defs.items()}
    levels = _levels(defs, deps)
    status: dict[str, str] = {}
    for wave in sorted({levels[n] for n in starting}):
        batch = sorted(n for n in starting if levels[n] == wave)
        go: list[str] = []
        for n in batch:
            bad = [x for x in deps[n] if x in fail]
            if n in fail:
                status[n] = "failed"
            elif bad:
                fail[n] = f"not started: it depends on {bad[0]}, which did not come up"
                status[n] = "held"
                _remove(scandir / n / "down")
            else:
                go.append(n)
        logs = [n for n in go if defs[n].has_log and n in log_stop | set(fresh)]
        limit = {n: defs[n].timeout_up or timeout for n in go}
        for n in logs:
            if not s6.up(scandir / n / "log"):
                fail.setdefault(n, "s6-svc -u failed on its logger")
        s6.wait([(scandir / n / "log", "-u" if defs[n].log_notification_fd is None else "-U",
                  timeout) for n in logs])
        for n in logs:  # a service whose logger is not there is not started (s6-rc: the
            # logger is a dependency of its service)
            if n not in fail and not _came_up(svstat(scandir / n / "log"),
                                              defs[n].log_notification_fd is not None):
                fail[n] = f"its logger did not come up within {timeout:g} s"
        go = [n for n in go if n not in fail]
        for n in go:
            _remove(scandir / n / "down")
            if not s6.up(scandir / n):
                fail.setdefault(n, "s6-svc -u failed")
        s6.wait([(scandir / n, "-u" if defs[n].notification_fd is None else "-U", limit[n])
                 for n in go if n not in fail])
        for n in batch:
            if n in fail and n not in status:
                status[n] = "failed"
        for n in go:
            st = svstat(scandir / n)
            if n in fail:
                status[n] = "failed"
            elif _came_up(st, defs[n].notification_fd is not None):
                status[n] = "up"
            else:
                what = "get ready" if st["up"] else "come up"
                fail[n] = f"did not {what} within {limit[n]:g} s"
                status[n] = "failed"

    # 6. markers, and the report
    for n in starting:
        if n in stuck:
            _write_marker(scandir / n, Marker(**{**asdict(live[n].marker or Marker()),
                                                "status": "failed"}))
        elif (scandir / n).is_dir():
            _write_marker(scandir / n, Marker.of(defs[n], state_id, status.get(n, "failed")))
    _fsync_dir(scandir)
    order = _order(starting, deps)
    report.started = [n for n in order if n in p.new and status.get(n) == "up"]
    report.restarted = [n for n in order if n not in p.new and status.get(n) == "up"]
    for n in stop_order:
        if n in gone_fail:
            report.failed.append({"name": n, "reason": gone_fail[n] + "; removed anyway",
                                  "svstat": "removed"})
    for n in [*stop_order, *(x for x in order if x not in stop_order)]:
        if n in fail and not any(f["name"] == n for f in report.failed):
            report.failed.append({"name": n, "reason": fail[n],
                                  "svstat": svstat(scandir / n)["text"]})


# -- listing ------------------------------------------------------------------------


def list_services(*, root: Path, usr: Path | None = None,
                  scandir: Path | None = None) -> list[dict]:
    """Every service the state defines and/or the scan directory holds, with its state.

    usr defaults to <root>/usr. A definition that cannot be read is listed with its
    error rather than failing the listing.
    """
    root = Path(root).absolute()
    usr = Path(usr) if usr is not None else root / "usr"
    scandir = Path(scandir).absolute() if scandir is not None else default_scandir(root)
    defs, errors = _definitions(usr, strict=False)
    live = _live(scandir)
    active = svscan_running(scandir)
    rows = []
    for name in sorted({*defs, *errors, *live}):
        d, lv = defs.get(name), live.get(name)
        m = lv.marker if lv else None
        row: dict = {"name": name, "in_state": d is not None or name in errors,
                     "live": lv is not None, "ours": bool(lv and lv.ours),
                     "hash": d.hash if d else None, "live_hash": (m.hash or None) if m else None,
                     "hash_match": None, "from_state": m.state if m else None,
                     "status": m.status if m else None,
                     "dependencies": list(d.dependencies) if d else [],
                     "logger": d.has_log if d else bool(lv and (lv.path / "log").is_dir()),
                     "error": errors[name].line() if name in errors else None,
                     "svscan": active}
        if d is not None and lv is not None and lv.ours and m is not None:
            row["hash_match"] = m.hash == d.hash and _live_hash(lv.path, d) == d.hash
        if lv is None:
            st = {"state": "absent", "up": None, "ready": None, "pid": None, "seconds": None,
                  "exitcode": None, "signal": None, "wanted_up": None, "text": "not live"}
        else:
            st = svstat(lv.path)
        row.update(st)
        rows.append(row)
    return rows

