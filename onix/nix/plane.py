"""onix-nix-integration: the machine-side seams of the Nix plane, and how healthy they are.

ONIX does not own /nix. It seeds what a multi-user Nix needs from the machine and
then checks it; everything here is idempotent and never overwrites a local edit.

What `seed()` lays down (paths inside the root):

    /etc/group, /etc/passwd, /etc/shadow
        group nixbld (gid 30000), users nixbld1..32 (uids 30001..30032, home /var/empty,
        shell /usr/sbin/nologin, password locked). Fixed ids: the same in every state, so
        a rollback never re-owns the store. Other lines are kept byte for byte; an
        existing nixbld with other ids is an error (Nix's store is chgrp'ed to it).
    /etc/nix/nix.conf, /etc/profile.d/nix.sh
        materialised from the state's declared defaults (usr/share/onix/nix/nix.conf and
        nix.sh) with a header. The blake3 of what onix last wrote is kept in the meta
        table (nix_seeded); a file that still has exactly that content is updated when
        the declared defaults change, a file edited locally is kept and reported as drift.
    /nix/store (1775 root:nixbld), /nix/var/nix/{profiles,gcroots}/per-user,
    /nix/var/nix/daemon-socket (0755)
        only with `runtime=True` (`onix nix seed`): what Nix's installer creates and Nix
        itself would create on first use. Transactions never write inside /nix.

The graphics bridge (`bridge()`): <root>/run/opengl-driver is a symlink to
/run/onix/opengl-driver-<fstx>, a directory of symlinks into the active state's Mesa
(lib/dri, lib/gbm, share/glvnd/egl_vendor.d, share/vulkan/icd.d, the Mesa libraries),
the layout NixOS uses. The links name /usr paths, so they follow /usr through every
exchange; the per-fstx directory is rebuilt after every transaction in case a state
moves its Mesa. It never points into /nix/store (Nix's GC would delete an unrooted target).

GC roots (`sync_gcroots()`): a state whose /usr holds a symlink into /nix/store (its
layout rows in the database say so; no tree walk) gets a root
/nix/var/nix/gcroots/onix/states/<id>-<n> → that store path, removed exactly when the
state is pruned. That directory is the one place onix writes inside /nix; the /nix
fingerprint (ownership.py) leaves it out and reports it on its own.

Health (`daemon_health()`, `drift()`, `opengl_status()`) is computed for `onix status`
with the standard library only (status must start fast): the daemon check speaks the
first bytes of the Nix worker protocol over the socket, because a dead daemon leaves a
stale socket behind.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from onix.core import fsutil, safepath
from onix.core.errors import OnixError, StateError
from onix.core.paths import RootPaths
from onix.machine.session import Session
from onix.services import s6

NIXBLD_GROUP = "nixbld"
NIXBLD_GID = 30000
NIXBLD_USERS = 32
NIXBLD_UID0 = 30001
NOLOGIN = "/usr/sbin/nologin"
DECLARED_DIR = "share/onix/nix"  # relative to usr/
MATERIALISED = {"nix.conf": "etc/nix/nix.conf", "nix.sh": "etc/profile.d/nix.sh"}
META_SEEDED = "nix_seeded"  # JSON {etc path: blake3 of what onix last wrote}
SOCKET = "nix/var/nix/daemon-socket/socket"
SERVICE = "run/service/nix-daemon"
BRIDGE = "run/opengl-driver"
BRIDGE_DIRS = "run/onix"
GCROOTS = "nix/var/nix/gcroots/onix"
WORKER_MAGIC_1 = 0x6E697863
WORKER_MAGIC_2 = 0x6478696F
# Where Debian-style states keep Mesa; the bridge uses the first that exists.
MESA_LIBDIRS = ("lib/x86_64-linux-gnu", "lib64", "lib")
MESA_LINKS = {"lib/dri": "{libdir}/dri", "lib/gbm": "{libdir}/gbm",
              "share/glvnd/egl_vendor.d": "share/glvnd/egl_vendor.d",
              "share/vulkan/icd.d": "share/vulkan/icd.d"}
MESA_REQUIRED = ("lib/dri", "share/glvnd/egl_vendor.d", "share/vulkan/icd.d")
MESA_LIBS = ("libEGL_mesa.so.0", "libGLX_mesa.so.0", "libgbm.so.1", "libglapi.so.0")


def header(name: str) -> str:
    return (f"# Managed by onix (onix nix seed) from /usr/{DECLARED_DIR}/{name}, the declared\n"
            "# defaults. Local edits are kept and reported as drift by onix status;\n"
            "# onix never overwrites them. Delete this file to get the defaults back.\n")


# -- /etc/passwd, /etc/group, /etc/shadow ------------------------------------------------


def _read_lines(path: Path) -> list[str]:
    """Lines of an account file; bytes that are not UTF-8 (an old Latin-1 GECOS field)
    survive the round trip through surrogateescape."""
    try:
        return fsutil.read_nofollow(path).decode("utf-8", "surrogateescape").splitlines()
    except FileNotFoundError:
        return []


def _write_lines(path: Path, lines: list[str], *, mode: int) -> None:
    """Replace an account file as useradd does: owner and mode set on the new file before
    it takes the old one's place, so no moment exists where shadow is world-readable or
    owned by someone unix_chkpwd does not expect."""
    try:
        st = path.lstat()
        mode, uid, gid = st.st_mode & 0o7777, st.st_uid, st.st_gid
    except FileNotFoundError:
        uid = gid = 0
    fsutil.mkdirs(path.parent)
    fsutil.atomic_write(path, ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape"),
                        mode=mode, owner=(uid, gid))


def _entries(lines: list[str], width: int) -> list[list[str]]:
    """The records of an account file that glibc reads: no comments, no NIS +/- lines,
    padded to `width` fields so a short line cannot crash the checks."""
    out = []
    for ln in lines:
        if not ln.strip() or ln.lstrip().startswith(("#", "+", "-")):
            continue
        f = ln.split(":")
        out.append(f + [""] * (width - len(f)))
    return out


def _add_lines(lines: list[str], new: list[str]) -> list[str]:
    """Append records before the first NIS line, where useradd puts them."""
    nis = next((i for i, ln in enumerate(lines) if ln.startswith(("+", "-"))), len(lines))
    return lines[:nis] + new + lines[nis:]


def _accounts(root: Path) -> dict:
    """What must be in the account files."""
    users = [f"nixbld{i}" for i in range(1, NIXBLD_USERS + 1)]
    return {"users": users, "uids": {u: NIXBLD_UID0 + i for i, u in enumerate(users)}}


def check_accounts(root: Path) -> list[str]:
    """Problems with the nixbld group and users in the root's /etc (empty: all fine)."""
    want = _accounts(root)
    problems: list[str] = []
    groups = {f[0]: f for f in _entries(_read_lines(root / "etc/group"), 4)}
    g = groups.get(NIXBLD_GROUP)
    if g is None:
        problems.append(f"group {NIXBLD_GROUP} is missing from /etc/group")
    elif g[2] != str(NIXBLD_GID):
        problems.append(f"group {NIXBLD_GROUP} has gid {g[2] or '?'}, not {NIXBLD_GID}")
    else:
        members = {m for m in g[3].split(",") if m}
        lacking = [u for u in want["users"] if u not in members]
        if lacking:
            problems.append(f"group {NIXBLD_GROUP} is missing {len(lacking)} of its "
                            f"{NIXBLD_USERS} members (Nix builds need them)")
    passwd = {f[0]: f for f in _entries(_read_lines(root / "etc/passwd"), 7)}
    missing = [u for u in want["users"] if u not in passwd]
    if missing:
        problems.append(f"{len(missing)} of the {NIXBLD_USERS} nixbld users are missing from "
                        "/etc/passwd")
    for u in want["users"]:
        f = passwd.get(u)
        if f is not None and (f[2] != str(want["uids"][u]) or f[3] != str(NIXBLD_GID)):
            problems.append(f"user {u} has uid:gid {f[2]}:{f[3]}, not "
                            f"{want['uids'][u]}:{NIXBLD_GID}")
    return problems


def seed_accounts(root: Path) -> list[str]:
    """Add the nixbld group, its members and users where missing; refuse conflicting ones
    before writing anything."""
    want = _accounts(root)
    etc = root / "etc"
    safepath.check_dirs(root, "etc")
    group_lines = _read_lines(etc / "group")
    passwd_lines = _read_lines(etc / "passwd")
    shadow_lines = _read_lines(etc / "shadow")
    gfields = _entries(group_lines, 4)
    pfields = _entries(passwd_lines, 7)
    by_gid = {f[2]: f[0] for f in gfields}
    by_uid = {f[2]: f[0] for f in pfields}
    for f in gfields:
        if f[0] == NIXBLD_GROUP and f[2] != str(NIXBLD_GID):
            raise StateError(f"group {NIXBLD_GROUP} exists with gid {f[2] or '?'}, not "
                             f"{NIXBLD_GID}", path=etc / "group", hint="onix keeps the build "
                             "ids fixed; fix the group by hand (and chgrp /nix/store to match)")
    if by_gid.get(str(NIXBLD_GID), NIXBLD_GROUP) != NIXBLD_GROUP:
        raise StateError(f"gid {NIXBLD_GID} belongs to group {by_gid[str(NIXBLD_GID)]}",
                         path=etc / "group", hint=f"free gid {NIXBLD_GID} for {NIXBLD_GROUP}")
    for u in want["users"]:
        uid = str(want["uids"][u])
        owner = by_uid.get(uid)
        if owner is not None and owner != u:
            raise StateError(f"uid {uid} belongs to {owner}, not {u}", path=etc / "passwd",
                             hint=f"free uids {NIXBLD_UID0}..{NIXBLD_UID0 + NIXBLD_USERS - 1}")
        for f in pfields:
            if f[0] == u and (f[2] != uid or f[3] != str(NIXBLD_GID)):
                raise StateError(f"user {u} exists with uid:gid {f[2]}:{f[3]}",
                                 path=etc / "passwd", hint="fix or remove it by hand")
    changed: list[str] = []
    group = next((f for f in gfields if f[0] == NIXBLD_GROUP), None)
    if group is None:
        group_lines = _add_lines(group_lines, [f"{NIXBLD_GROUP}:x:{NIXBLD_GID}:"
                                               + ",".join(want["users"])])
    else:
        members = [m for m in group[3].split(",") if m]
        lacking = [u for u in want["users"] if u not in members]
        if lacking:
            line = ":".join([*group[:3], ",".join(members + lacking)])
            group_lines = [line if _entries([ln], 4) and _entries([ln], 4)[0][0] ==
                           NIXBLD_GROUP else ln for ln in group_lines]
    if group is None or group_lines != _read_lines(etc / "group"):
        _write_lines(etc / "group", group_lines, mode=0o644)
        changed.append("/etc/group")
    gshadow = etc / "gshadow"
    if gshadow.exists():  # grpck wants every group there too
        gs_lines = _read_lines(gshadow)
        if NIXBLD_GROUP not in {f[0] for f in _entries(gs_lines, 4)}:
            _write_lines(gshadow, _add_lines(gs_lines, [f"{NIXBLD_GROUP}:!::"
                                                        + ",".join(want["users"])]),
                         mode=0o640)
            changed.append("/etc/gshadow")
    have = {f[0] for f in pfields}
    new_users = [u for u in want["users"] if u not in have]
    if new_users:
        passwd_lines = _add_lines(passwd_lines, [
            f"{u}:x:{want['uids'][u]}:{NIXBLD_GID}:Nix build user {u[6:]}:/var/empty:{NOLOGIN}"
            for u in new_users])
        _write_lines(etc / "passwd", passwd_lines, mode=0o644)
        changed.append("/etc/passwd")
    shadowed = {f[0] for f in _entries(shadow_lines, 9)}
    new_shadow = [u for u in want["users"] if u not in shadowed]
    if new_shadow:
        shadow_lines = _add_lines(shadow_lines, [f"{u}:!:1::::::" for u in new_shadow])
        _write_lines(etc / "shadow", shadow_lines, mode=0o640)  # locked: no login, ever
        changed.append("/etc/shadow")
    return changed


# -- declared defaults → /etc ---------------------------------------------------------------


def declared(usr: Path) -> dict[str, bytes]:
    """The state's declared defaults by name (nix.conf, nix.sh), read without symlinks."""
    out: dict[str, bytes] = {}
    for name in MATERIALISED:
        rel = f"{DECLARED_DIR}/{name}"
        if safepath.is_regular(usr, rel):
            out[name] = safepath.read_regular(usr, rel)
    return out


def _b3(data: bytes) -> str:
    import blake3

    return blake3.blake3(data).hexdigest()


def materialise(root: Path, usr: Path, seeded: dict, *,
                remember=None) -> tuple[list[str], dict]:
    """Write the declared defaults to /etc where nobody edited them. Returns (changed, seeded)."""
    changed: list[str] = []
    seeded = dict(seeded)
    safepath.check_dirs(root, *{rel.rsplit("/", 1)[0] for rel in MATERIALISED.values()})
    for name, data in declared(usr).items():
        rel = MATERIALISED[name]
        dest = root / rel
        content = header(name).encode() + data
        try:
            current: bytes | None = fsutil.read_nofollow(dest)
        except FileNotFoundError:
            current = None
        if current == content:
            seeded[rel] = [_b3(content)]
            continue
        known = seeded.get(rel) or []
        known = [known] if isinstance(known, str) else known
        ours = current is None or _b3(current) in known
        if not ours:
            continue  # a local edit: kept, and drift() reports it
        # Remember the new content as ours before it is written (and the old until it is
        # gone): a crash between the two must not make onix's own file look edited.
        seeded[rel] = [*known[-1:], _b3(content)]
        if remember is not None:
            remember(seeded)
        fsutil.mkdirs(dest.parent)
        fsutil.atomic_write(dest, content, mode=0o644)
        seeded[rel] = [_b3(content)]
        changed.append(f"/{rel}")
    return changed, seeded


# -- /nix runtime dirs ----------------------------------------------------------------------


RUNTIME_DIRS = ("nix/var", "nix/var/log", "nix/var/log/nix", "nix/var/log/nix/drvs",
                "nix/var/nix", "nix/var/nix/gcroots", "nix/var/nix/profiles",
                "nix/var/nix/temproots", "nix/var/nix/userpool", "nix/var/nix/daemon-socket",
                "nix/var/nix/gcroots/per-user", "nix/var/nix/profiles/per-user")


def seed_runtime(root: Path) -> list[str]:
    """The directories Nix's multi-user installer makes, with its modes."""
    made: list[str] = []
    nix = root / "nix"
    if nix.is_symlink():
        raise StateError("is a symlink", path=nix, hint="/nix must be a real directory")
    if not nix.exists():
        fsutil.mkdirs(nix)
        made.append("/nix")
    safepath.check_dirs(root, *RUNTIME_DIRS, "nix/store")
    for rel in RUNTIME_DIRS:
        p = root / rel
        if not p.exists() and not p.is_symlink():
            fsutil.mkdirs(p)
            made.append(f"/{rel}")
    store = root / "nix/store"
    if not store.exists() and not store.is_symlink():
        store.mkdir()
        os.chown(store, 0, NIXBLD_GID)
        os.chmod(store, 0o1775)
        made.append("/nix/store")
    return made


# -- seed: the library call behind `onix nix seed` and transactions ---------------------------


def seed(paths: RootPaths, *, usr: Path | None = None, runtime: bool = True,
         seeded: dict | None = None, remember=None) -> dict:
    """Lay down the Nix plane's machine-side seams (see the module docstring).

    Without a database (a test or an image build), `seeded` carries what onix last
    wrote to /etc; the session-level callers keep it in the meta table.
    """
    root = paths.root
    usr = usr or paths.usr
    # Every directory this may write through is checked before the first write.
    safepath.check_dirs(root, "etc", *{rel.rsplit("/", 1)[0] for rel in MATERIALISED.values()},
               *(RUNTIME_DIRS if runtime else ()))
    changed = seed_accounts(root)
    files, seeded_now = materialise(root, usr, seeded or {}, remember=remember)
    changed += files
    if runtime:
        changed += seed_runtime(root)
    return {"changed": changed, "seeded": seeded_now}


def seed_session(s: Session, *, runtime: bool) -> dict:
    """seed() inside a mutating session: remembers what was written in the meta table."""
    with s.db.read() as c:
        raw = s.db.get_meta(c, META_SEEDED)
    def remember(seeded: dict) -> None:
        with s.db.write() as c:
            s.db.set_meta(c, META_SEEDED, json.dumps(seeded, sort_keys=True))

    report = seed(s.paths, usr=s.paths.usr, runtime=runtime,
                  seeded=json.loads(raw) if raw else {}, remember=remember)
    remember(report["seeded"])
    return report


def declares_nix(usr: Path) -> bool:
    return (usr / DECLARED_DIR).is_dir()


# -- drift ------------------------------------------------------------------------------------


@dataclass
class Drift:
    overrides: list[str] = field(default_factory=list)  # keys that differ from the defaults
    errors: list[str] = field(default_factory=list)  # lines Nix would reject
    missing: list[str] = field(default_factory=list)  # /etc files the defaults need

    def as_dict(self) -> dict:
        return {"overrides": self.overrides, "errors": self.errors, "missing": self.missing}


def parse_conf(text: str, *, where: str) -> tuple[dict[str, str], list[str]]:
    """nix.conf by Nix 2.8's own rule (later wins): a comment runs from `#` to the end of
    the line; the rest splits on whitespace; `include`/`!include` take exactly one path;
    anything else needs `=` as its second word — `max-jobs=4` is an illegal line to Nix,
    so it is an error here too, with its line number."""
    values: dict[str, str] = {}
    errors: list[str] = []
    for n, raw in enumerate(text.splitlines(), 1):
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        if words[0] in ("include", "!include"):
            if len(words) != 2:
                errors.append(f"{where} line {n}: {words[0]} takes exactly one path")
            continue
        if len(words) < 2 or words[1] != "=":
            errors.append(f"{where} line {n}: illegal configuration line {raw.strip()!r} "
                          "(Nix wants `name = value`, with spaces around =)")
            continue
        values[words[0]] = " ".join(words[2:])
    return values, errors


def drift(paths: RootPaths, *, usr: Path | None = None) -> Drift:
    """How /etc/nix/nix.conf differs from the state's declared defaults, key by key."""
    root = paths.root
    usr = usr or paths.usr
    out = Drift()
    try:
        want_raw = (usr / DECLARED_DIR / "nix.conf").read_bytes()
    except OSError:
        return out
    want, _ = parse_conf(want_raw.decode(errors="replace"), where="declared nix.conf")
    try:
        have_raw = (root / MATERIALISED["nix.conf"]).read_bytes()
    except FileNotFoundError:
        out.missing.append("/etc/nix/nix.conf")
        return out
    have, out.errors = parse_conf(have_raw.decode(errors="replace"), where="/etc/nix/nix.conf")
    out.overrides = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
    try:
        hook_want = header("nix.sh").encode() + (usr / DECLARED_DIR / "nix.sh").read_bytes()
        hook_have = (root / MATERIALISED["nix.sh"]).read_bytes()
        if hook_have != hook_want:
            out.overrides.append("/etc/profile.d/nix.sh (edited)")
    except FileNotFoundError:
        if (usr / DECLARED_DIR / "nix.sh").is_file():
            out.missing.append("/etc/profile.d/nix.sh")
    except OSError:
        pass
    return out


# -- nix-daemon health ------------------------------------------------------------------------


STDERR_LAST = 0x616C7473


def handshake(sock_path: Path, *, timeout: float = 0.25) -> tuple[str, str]:
    """(state, reason) from the opening of the Nix worker protocol.

    The client sends WORKER_MAGIC_1 (a little-endian u64); a live daemon answers with
    WORKER_MAGIC_2 and its protocol version. The client then sends its own version and
    the two flags old daemons expect (no CPU affinity, no reserved space), and the daemon
    ends its setup with STDERR_LAST; closing after that is an ordinary disconnect, not
    an "unexpected end-of-file" in the daemon's log. Connecting alone proves nothing: a
    dead daemon leaves its socket file behind (ECONNREFUSED).
    """
    if not sock_path.exists():
        return "down", f"no socket at {sock_path}"
    import time

    deadline = time.monotonic() + timeout  # one budget for the whole exchange
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)

    def recv(n: int) -> bytes:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        s.settimeout(left)
        return s.recv(n)

    def read(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = recv(n - len(data))
            if not chunk:
                break
            data += chunk
        return data

    try:
        s.connect(str(sock_path))
        s.sendall(struct.pack("<Q", WORKER_MAGIC_1))
        data = read(16)
        if len(data) < 16:
            return "not ready", "the daemon closed the connection during the handshake"
        magic, version = struct.unpack("<QQ", data)
        if magic != WORKER_MAGIC_2:
            return "down", f"{sock_path} does not speak the Nix worker protocol"
        minor = version & 0xFF
        reply = struct.pack("<Q", version)
        if minor >= 14:
            reply += struct.pack("<Q", 0)  # no CPU affinity
        if minor >= 11:
            reply += struct.pack("<Q", 0)  # no reserved space
        s.sendall(reply)
        # Setup ends with STDERR_LAST (newer daemons send their version string first).
        tail = b""
        while struct.pack("<Q", STDERR_LAST) not in tail and len(tail) < 4096:
            chunk = recv(4096)
            if not chunk:
                break
            tail += chunk
    except ConnectionRefusedError:
        return "down", f"stale socket {sock_path}: nothing listens on it"
    except TimeoutError:
        return "not ready", "the daemon accepted the connection but did not answer in time"
    except OSError as e:
        return "down", f"{sock_path}: {e.strerror}"
    finally:
        s.close()
    return "healthy", f"protocol {version >> 8}.{minor}"


def _svstat(root: Path) -> str | None:
    """What s6 says about the nix-daemon service (None when it is not supervised)."""
    svc = root / SERVICE
    if not (svc / "supervise").is_dir():
        return None
    try:
        st = s6.fields(svc, timeout=2)
    except OnixError:  # not installed, or hung: the handshake's reason stands alone
        return None
    if st is None:
        return None
    secs = st["updownfor"]
    if st["up"] == "true":
        return f"up {secs} s, pid {st['pid']}" + ("" if st["ready"] == "true" else ", not ready")
    sig = st["signal"]
    why = f"killed by {sig}" if sig not in ("NA", "-1") else f"exit {st['exitcode']}"
    return f"down {secs} s ({why})"


def daemon_health(paths: RootPaths) -> tuple[str, str]:
    """healthy / down / not ready, with the reason (the handshake, then what s6 says)."""
    root = paths.root
    state, reason = handshake(root / SOCKET)
    if state != "healthy":
        supervised = _svstat(root)  # only then: s6-svstat is a process per status call
        if supervised:
            reason = f"{reason}; s6: {supervised}"
    return state, reason


# -- the graphics bridge ------------------------------------------------------------------------


def _mesa_libdir(usr: Path) -> str | None:
    for d in MESA_LIBDIRS:
        if (usr / d / "dri").is_dir():
            return d
    return None


def bridge(paths: RootPaths, *, fstx: str, usr: Path | None = None) -> dict:
    """Point /run/opengl-driver at the active state's Mesa (see the module docstring)."""
    root = paths.root
    usr = usr or paths.usr
    safepath.check_dirs(root, BRIDGE_DIRS)
    libdir = _mesa_libdir(usr)
    if libdir is None:
        with suppress(FileNotFoundError):
            if (root / BRIDGE).is_symlink():
                (root / BRIDGE).unlink()
            for old in (root / BRIDGE_DIRS).iterdir():
                if old.name.startswith(("opengl-driver-", ".opengl-driver-")):
                    fsutil.remove_tree(old)
        return {"bridge": None, "reason": "the active state has no Mesa (no lib/*/dri)"}
    target = root / BRIDGE_DIRS / f"opengl-driver-{fstx}"
    tmp = target.with_name(f".{target.name}.new")
    if tmp.exists() or tmp.is_symlink():
        fsutil.remove_tree(tmp)
    for link, rel in MESA_LINKS.items():
        src = rel.format(libdir=libdir)
        if (usr / src).exists():
            fsutil.mkdirs((tmp / link).parent)
            os.symlink(f"/usr/{src}", tmp / link)
    for lib in MESA_LIBS:
        if (usr / libdir / lib).exists():
            fsutil.mkdirs(tmp / "lib")
            os.symlink(f"/usr/{libdir}/{lib}", tmp / "lib" / lib)
    if target.exists() or target.is_symlink():
        fsutil.remove_tree(target)
    os.rename(tmp, target)
    fsutil.atomic_symlink(f"/{BRIDGE_DIRS}/{target.name}", root / BRIDGE)
    for old in (root / BRIDGE_DIRS).iterdir():
        if old.name.startswith("opengl-driver-") and old.name != target.name:
            fsutil.remove_tree(old)
    return {"bridge": f"/{BRIDGE_DIRS}/{target.name}", "libdir": libdir}


def _inside(root: Path, path: str, base: Path) -> Path:
    """Resolve a path as the root's own system would: absolute links start at the root."""
    p = Path(path)
    cur = root if p.is_absolute() else base
    for _ in range(40):
        parts = p.parts[1:] if p.is_absolute() else p.parts
        out = cur
        for i, part in enumerate(parts):
            if part == "..":
                out = out.parent if out != root else root
                continue
            nxt = out / part
            if nxt.is_symlink():
                target = os.readlink(nxt)
                rest = Path(*parts[i + 1:]) if i + 1 < len(parts) else Path()
                p = Path(target) / rest
                cur = root if Path(target).is_absolute() else out
                break
            out = nxt
        else:
            return out
    raise OnixError("too many levels of symlinks", path=root / path)


def opengl_status(paths: RootPaths, *, fstx: str | None, usr: Path | None = None) -> str:
    """`coherent`, or what is stale or missing (one line)."""
    root = paths.root
    usr = usr or paths.usr
    if _mesa_libdir(usr) is None:
        return "no Mesa in the active state"
    link = root / BRIDGE
    if not link.is_symlink() and not link.exists():
        return "missing: /run/opengl-driver (run onix nix seed)"
    try:
        base = _inside(root, f"/{BRIDGE}", root)
    except OnixError:
        return "stale: /run/opengl-driver loops"
    if fstx is not None and link.is_symlink() and \
            not os.readlink(link).endswith(f"opengl-driver-{fstx}"):
        return f"stale: /run/opengl-driver points at {os.readlink(link)}, not state {fstx}"
    problems = []
    for rel in MESA_REQUIRED:
        p = base / rel
        try:
            real = _inside(root, str(p.relative_to(root)), root) if p.is_symlink() else p
        except OnixError:
            real = p
        if not real.is_dir():
            problems.append(f"{rel} is missing")
            continue
        if not str(real).startswith(str(usr)):
            problems.append(f"{rel} is not in the active /usr")
        if rel == "lib/dri" and not any(real.glob("*.so")):
            problems.append("lib/dri has no drivers")
        for icd in sorted(real.glob("*.json")):
            lib = _icd_library(icd)
            if lib and not _library_exists(root, usr, lib):
                problems.append(f"{rel}/{icd.name} names {lib}, which does not exist")
    return "coherent" if not problems else "stale: " + "; ".join(problems)


def _icd_library(path: Path) -> str | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    for key in ("ICD", "ICD_FILE"):
        if isinstance(data.get(key), dict):
            return data[key].get("library_path")
    return None


def _library_exists(root: Path, usr: Path, lib: str) -> bool:
    if lib.startswith("/"):
        try:
            return _inside(root, lib, root).exists()
        except OnixError:
            return False
    return any((usr / d / lib).exists() for d in MESA_LIBDIRS)


# -- GC roots for machine-plane links into /nix/store -----------------------------------------


def sync_gcroots(paths: RootPaths, *, links: dict[int, list[str]]) -> dict:
    """Make gcroots/onix/states hold exactly one root per store path each state links to
    (`links`: state id → store paths, Database.store_links)."""
    root = paths.root
    if not (root / "nix").is_dir():
        return {"added": [], "removed": []}  # no Nix plane here: nothing could collect them
    base = root / GCROOTS / "states"
    want = {f"{sid}-{n}": target for sid, targets in sorted(links.items())
            for n, target in enumerate(targets)}
    safepath.check_dirs(root, GCROOTS + "/states")
    have: dict[str, str] = {}
    if base.is_dir():
        have = {p.name: os.readlink(p) for p in base.iterdir() if p.is_symlink()}
    if not want and not have:
        return {"added": [], "removed": []}
    added, removed = [], []
    for name in sorted(set(have) - set(want)) + [n for n in want if n in have and
                                                  have[n] != want[n]]:
        (base / name).unlink()
        removed.append(name)
    if want:
        fsutil.mkdirs(base)
    for name, target in sorted(want.items()):
        if have.get(name) != target:
            fsutil.atomic_symlink(target, base / name)
            added.append(name)
    return {"added": added, "removed": removed}


# -- after every transaction ---------------------------------------------------------------


def after_change(s: Session, warnings: list[str] | None = None) -> dict:
    """After a transaction, rollback or prune: GC roots, /etc defaults, the bridge.

    Each seam on its own, GC roots first: a problem in /etc must never leave a store
    path the live /usr links to unrooted. A failing seam adds a warning (or, without a
    warnings list, raises). Never writes inside /nix except onix's own gcroots/onix.
    """
    paths = s.paths
    live = s.live_state()
    out: dict = {}
    if live is None:
        return out
    with s.db.read() as c:
        states = s.db.states(c)
    fstx = next((st["fstx"] for st in states if st["id"] == live), None)

    def gcroots() -> dict:
        with s.db.read() as c:
            links = s.db.store_links(c)
        return sync_gcroots(paths, links=links)

    def etc() -> list[str]:
        return seed_session(s, runtime=False)["changed"]

    def opengl() -> dict:
        return bridge(paths, fstx=fstx, usr=paths.usr)

    steps = [("gcroots", gcroots, "onix nix seed")]
    if declares_nix(paths.usr):
        steps.append(("seed", etc, "fix /etc as it says, then onix nix seed"))
    if fstx is not None and (_mesa_libdir(paths.usr) is not None or
                             (paths.root / BRIDGE).is_symlink()):
        steps.append(("opengl", opengl, "onix nix seed"))
    for name, step, redo in steps:
        try:
            out[name] = step()
        except (OnixError, OSError, ValueError) as e:
            if warnings is None:
                raise
            what = e.line() if isinstance(e, OnixError) else str(e)
            warnings.append(f"nix plane ({name}): {what}; {redo} redoes it")
    return out
