"""The Nix build users in a root: group nixbld (gid 30000), users nixbld1..32.

/etc/group, /etc/passwd and /etc/shadow (and /etc/gshadow where it exists) get the
group and the users with fixed ids (the same in every state, so a rollback never
re-owns the store); every other line is kept byte for byte. An existing nixbld with
other ids is an error: Nix's store is chgrp'ed to it.
"""

from __future__ import annotations

from pathlib import Path

from onix.core import fsutil, safepath
from onix.core.errors import StateError

NIXBLD_GROUP = "nixbld"
NIXBLD_GID = 30000
NIXBLD_USERS = 32
NIXBLD_UID0 = 30001
NOLOGIN = "/usr/sbin/nologin"


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


