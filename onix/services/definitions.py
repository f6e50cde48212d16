"""The s6 service definitions a state ships: reading, checking and hashing them.

Service definitions are part of the machine state. A stone ships them under /usr, so
every state has its own set (reconcile.py makes the live scan directory run them).

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
        type                                `longrun` (the default) or `oneshot`, as in s6-rc

A oneshot (s6-rc's word) is a job that runs once and is then "up": its definition has
`type` oneshot and an executable `up` (run in the service directory), and no `run`,
`finish`, `notification-fd` or `log/`: onix adds a `run` and a `notification-fd` of
its own (ONESHOT_RUN, below) when it reads the definition, so the live copy is an
ordinary s6 service directory. s6-supervise runs it once (`s6-svc -O`); when `up`
exits 0 the service notifies readiness and stays up (a sleeping process), so that
`s6-svwait -U`, `s6-svstat` and the services that depend on it see a oneshot that has
run; when `up` fails the service goes down with its exit status and is not run again
until something starts it (a reconcile, or `s6-svc -u`). Stopping it just ends the
sleep: s6-rc's `down` script has no place here, because `down` is the name of s6's own
"do not start" file in a service directory.

The name STAGE2 is onix's own service (live.py lays it down for stage 2, see
reconcile.py): no definition may use it.

A name is `[a-z0-9][a-z0-9._-]*` (at most 100 bytes). Only regular files and real
directories may be in a definition: a symlink anywhere (the definition directory
itself, or a component of lib/onix/services on the way), a device, a FIFO, a
dependency on a service the state does not define, a dependency cycle or a bad name is
an OnixError naming the path, raised before anything in the scan directory changes.
Definitions are read one component at a time with O_NOFOLLOW (onix/core/safepath.py),
so that a state cannot make onix copy a file of the host into the scan directory.
`supervise/`, `event/` and `down` (top level and in log/) are what s6 and s6-rc make
at run time; in a definition they are ignored, not copied and not hashed.

The content hash of a definition is blake3 over, for every entry in byte order of
its relative path: `d\\0<path>\\0` for a directory, and `f\\0<path>\\0<x|->` plus
the length (8 bytes, big-endian) and the bytes for a file, where x means an exec bit
is set (the other mode bits and times do not matter: the store installs files
read-only, a rebuilt stone may not). `log/` gets a hash of its own the same way,
so a change that only touches the service leaves its logger running, with no logs lost.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from onix.core import safepath
from onix.core.errors import OnixError

DEFINITIONS = "lib/onix/services"  # relative to usr/
MARKER = ".onix-service"  # the live copy's marker (live.py): a definition cannot ship one
NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,99}")
RUNTIME = frozenset({"supervise", "event", "down"})  # s6's, at the top and in log/
STAGE2 = "onix-stage2"  # reserved: onix's stage-2 service in the scan directory
ONESHOT_FD = 3
# What s6-supervise runs for a oneshot (the module docstring). fd 3 is closed for ./up,
# so that nothing it starts can hold the readiness pipe open; `sleep` with a number
# (not `infinity`) works with coreutils and busybox alike.
ONESHOT_RUN = b"""#!/bin/sh
# onix's run script of a oneshot: ./up once, then up and ready until stopped.
# (onix/services/definitions.py writes it; the definition ships only ./up.)
s6-svc -O .
./up 3>&- || exit
echo >&3
exec sleep 2147483647 3>&-
"""


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
    oneshot: bool = False  # type oneshot: "up" once ./up has run successfully


def valid_name(name: str) -> bool:
    return NAME_RE.fullmatch(name) is not None


def content_hash(entries: Iterable[Entry]) -> str:
    """blake3 over sorted paths, kinds, exec bits and bytes (module docstring)."""
    import blake3

    h = blake3.blake3()
    for e in sorted(entries, key=lambda e: e.rel.encode("utf-8", "surrogateescape")):
        rel = e.rel.encode("utf-8", "surrogateescape")
        if e.kind == "d":
            h.update(b"d\0" + rel + b"\0")
        else:
            h.update(b"f\0" + rel + b"\0" + (b"x" if e.mode & 0o111 else b"-"))
            h.update(len(e.data).to_bytes(8, "big"))
            h.update(e.data)
    return h.hexdigest()


def is_log(rel: str) -> bool:
    """rel belongs to the logger's part of a service directory."""
    return rel == "log" or rel.startswith("log/")


def _log_hash(entries: Iterable[Entry]) -> str:
    part = [e for e in entries if is_log(e.rel)]
    return content_hash(part) if part else "-"


def _read_file(dfd: int, name: str, here: Path) -> tuple[int, bytes]:
    """Mode bits and bytes of a regular file in dfd, opened without following or blocking."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
    try:
        fst = os.fstat(fd)
        if not stat.S_ISREG(fst.st_mode):
            raise OnixError("is not a regular file", path=here, hint="ship a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return stat.S_IMODE(fst.st_mode), f.read()
    finally:
        os.close(fd)


def _walk(dfd: int, base: Path, prefix: str, out: list[Entry]) -> None:
    """Every entry below dfd (a definition directory), symlinks refused, no following."""
    for name in sorted(os.listdir(dfd)):
        rel = prefix + name
        here = base / rel
        if prefix in ("", "log/") and name in RUNTIME:
            continue  # s6's run-time files: not part of a definition
        if name == MARKER:
            raise OnixError(f"{MARKER} is onix's marker of a live copy and cannot be shipped",
                            path=here, hint="remove it from the definition")
        if any(ord(c) < 32 or c == "\x7f" for c in name):
            raise OnixError("a file name in a service definition has a control character",
                            path=here, hint="rename it")
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(name, dir_fd=dfd)
            raise OnixError(f"is a symlink to {target}; a service definition is copied into "
                            "the scan directory and onix follows no symlink in it", path=here,
                            hint=f"ship {rel} as a regular file or a real directory")
        if stat.S_ISDIR(st.st_mode):
            out.append(Entry(rel, "d", stat.S_IMODE(st.st_mode)))
            fd = safepath.open_dirs(here.parent, name, dir_fd=dfd)
            try:
                _walk(fd, base, rel + "/", out)
            finally:
                os.close(fd)
        elif stat.S_ISREG(st.st_mode):
            out.append(Entry(rel, "f", *_read_file(dfd, name, here)))
        else:
            raise OnixError("is neither a regular file nor a directory", path=here,
                            hint="ship only regular files and directories in a service "
                            "definition")


def _int_file(entries: dict[str, Entry], rel: str, base: Path) -> int | None:
    e = entries.get(rel)
    if e is None:
        return None
    text = e.data.decode("ascii", "replace").strip()
    if e.kind != "f" or not text.isdigit() or not 0 <= int(text) < 1024:
        raise OnixError(f"{rel} must hold a file descriptor number", path=base / rel,
                        hint="write a decimal number such as 3 into it")
    return int(text)


def ms(data: bytes | None) -> float | None:
    """timeout-up/timeout-down text → seconds; None for absent, 0 or unreadable."""
    text = (data or b"").decode("ascii", "replace").strip()
    return int(text) / 1000 if text.isdigit() and int(text) > 0 else None


def _ms_file(entries: dict[str, Entry], rel: str, base: Path) -> float | None:
    e = entries.get(rel)
    if e is None:
        return None
    if e.kind != "f" or not e.data.decode("ascii", "replace").strip().isdigit():
        raise OnixError(f"{rel} must hold a number of milliseconds", path=base / rel,
                        hint="write a decimal number such as 5000 into it (0: no limit of "
                        "its own)")
    return ms(e.data)


def _parse_dependencies(data: bytes, path: Path) -> tuple[str, ...]:
    deps: list[str] = []
    for raw in data.decode("utf-8", "replace").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not valid_name(line):
            raise OnixError(f"{line!r} is not a service name", path=path,
                            hint="one service name ([a-z0-9][a-z0-9._-]*) per line")
        if line not in deps:
            deps.append(line)
    return tuple(deps)


def _executable(e: Entry | None) -> bool:
    return e is not None and e.kind == "f" and bool(e.mode & 0o100)


def _check_scripts(by: dict[str, Entry], base: Path) -> None:
    """run (and log/run for a logger) must be there; finish scripts must be executable."""
    if not _executable(by.get("run")):
        raise OnixError("a service needs an executable run file", path=base / "run",
                        hint="ship run as a regular file with mode 0755")
    for rel in ("finish", "log/finish"):
        if rel in by and not _executable(by[rel]):
            raise OnixError(f"{rel} must be an executable file", path=base / rel,
                            hint="give it mode 0755")
    if "log" in by and (by["log"].kind != "d" or not _executable(by.get("log/run"))):
        raise OnixError("a logger is a directory with an executable log/run",
                        path=base / "log", hint="ship log/run with mode 0755, or no log at all")


def _is_oneshot(by: dict[str, Entry], base: Path) -> bool:
    e = by.get("type")
    if e is None:
        return False
    text = e.data.decode("utf-8", "replace").strip() if e.kind == "f" else ""
    if text not in ("longrun", "oneshot"):
        raise OnixError("type must say longrun or oneshot", path=base / "type",
                        hint="write longrun or oneshot into it (s6-rc's words), or drop it "
                        "for a longrun")
    return text == "oneshot"


def _oneshot_entries(by: dict[str, Entry], base: Path) -> list[Entry]:
    """The run and notification-fd onix adds to a oneshot (its own files are checked)."""
    if not _executable(by.get("up")):
        raise OnixError("a oneshot needs an executable up file", path=base / "up",
                        hint="ship up as a regular file with mode 0755 (it runs once)")
    for rel in ("run", "finish", "notification-fd", "log"):
        if rel in by:
            raise OnixError(f"a oneshot ships up, not {rel}: onix writes its run script",
                            path=base / rel, hint=f"remove {rel}, or make the service a "
                            "longrun (no type file)")
    return [Entry("run", "f", 0o755, ONESHOT_RUN),
            Entry("notification-fd", "f", 0o644, f"{ONESHOT_FD}\n".encode())]


def _read_definition(fd: int, name: str, base: Path) -> Definition:
    out: list[Entry] = []
    _walk(fd, base, "", out)
    return from_entries(name, base, out)


def from_entries(name: str, base: Path, entries: Iterable[Entry], *,
                 live: bool = False) -> Definition:
    """The Definition of these entries. With live, they are a live copy's (onix's own
    run of a oneshot is in them already): the scripts are not checked again."""
    out = list(entries)
    by = {e.rel: e for e in out}
    oneshot = _is_oneshot(by, base)
    if oneshot and not live:
        out += _oneshot_entries(by, base)
        by = {e.rel: e for e in out}
    elif not live:
        _check_scripts(by, base)
    deps: tuple[str, ...] = ()
    if "dependencies" in by:
        if by["dependencies"].kind != "f":
            raise OnixError("dependencies must be a file", path=base / "dependencies",
                            hint="one service name per line")
        deps = _parse_dependencies(by["dependencies"].data, base / "dependencies")
    _ms_file(by, "timeout-down", base)  # checked here, read from the live copy when stopping
    return Definition(name=name, path=base, entries=tuple(out), dependencies=deps,
                      notification_fd=_int_file(by, "notification-fd", base),
                      log_notification_fd=_int_file(by, "log/notification-fd", base),
                      timeout_up=_ms_file(by, "timeout-up", base),
                      has_log="log" in by, hash=content_hash(out), log_hash=_log_hash(out),
                      oneshot=oneshot)


def _open_top(usr: Path) -> int | None:
    """An fd of usr/lib/onix/services, None if it is missing; a symlink on the way or a
    component that is not a directory is refused."""
    try:
        return safepath.open_dirs(usr, DEFINITIONS)
    except FileNotFoundError:
        return None
    except safepath.SymlinkError as e:
        raise OnixError(f"is a symlink to {e.target}; onix reads service definitions "
                        "without following symlinks", path=e.where,
                        hint="ship it as a real directory") from None
    except NotADirectoryError as e:
        raise OnixError("is not a directory", path=e.filename,
                        hint="ship it as a real directory") from None


def _read_one(fd: int, top: Path, name: str) -> Definition:
    """The definition top/name, fd being top's open directory."""
    base = top / name
    if not valid_name(name):
        raise OnixError(f"{name!r} is not a service name", path=base,
                        hint="name services [a-z0-9][a-z0-9._-]* (at most 100 bytes)")
    if name == STAGE2:
        raise OnixError(f"{STAGE2} is the name of onix's own stage-2 service", path=base,
                        hint="rename the service")
    try:
        dfd = safepath.open_dirs(top, name, dir_fd=fd)
    except safepath.SymlinkError as e:
        raise OnixError(f"is a symlink to {e.target}; a service definition must be a real "
                        "directory", path=base, hint="ship the service directory itself") \
            from None
    except NotADirectoryError:
        raise OnixError("is not a directory", path=base,
                        hint=f"{DEFINITIONS}/ holds only service directories") from None
    try:
        return _read_definition(dfd, name, base)
    finally:
        os.close(dfd)


def read_all(usr: Path, *, strict: bool = True
             ) -> tuple[dict[str, Definition], dict[str, OnixError]]:
    """The state's definitions by name, and the errors of those that cannot be read;
    with strict, the first problem is raised instead."""
    usr = Path(usr)
    defs: dict[str, Definition] = {}
    errors: dict[str, OnixError] = {}
    if not usr.is_dir():
        return defs, errors
    fd = _open_top(usr)
    if fd is None:
        return defs, errors
    try:
        for name in sorted(os.listdir(fd)):
            try:
                defs[name] = _read_one(fd, usr / DEFINITIONS, name)
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
                raise OnixError(f"service {d.name} depends on {dep}, which this state does "
                                "not define", path=d.path / "dependencies",
                                hint=f"ship {top}/{dep} too, or drop the dependency")
    colour: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        colour[n] = 1
        stack.append(n)
        for dep in defs[n].dependencies:
            if colour.get(dep) == 1:
                cycle = [*stack[stack.index(dep):], dep]
                raise OnixError("dependency cycle: " + " → ".join(cycle),
                                path=defs[n].path / "dependencies",
                                hint="services cannot depend on each other in a loop")
            if dep not in colour:
                visit(dep)
        stack.pop()
        colour[n] = 2

    for n in sorted(defs):
        if n not in colour:
            visit(n)


def load_definitions(usr: Path) -> dict[str, Definition]:
    """Read and check every definition in a state's usr tree (OnixError on any problem)."""
    defs, _ = read_all(usr)
    _check_graph(defs, Path(usr) / DEFINITIONS)
    return defs


def levels(names: Iterable[str], deps: dict[str, tuple[str, ...]]) -> dict[str, int]:
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


def order(names: Iterable[str], deps: dict[str, tuple[str, ...]]) -> list[str]:
    """Dependencies first; ties by name (deterministic)."""
    names = list(names)
    lv = levels(names, deps)
    return sorted(names, key=lambda n: (lv[n], n))
