"""onix-nix-integration: the machine-side seams of the Nix plane (`onix nix seed`).

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
from dataclasses import dataclass, field
from pathlib import Path

from onix.core import fsutil, safepath
from onix.core.errors import StateError
from onix.core.paths import RootPaths
from onix.machine.session import Session
from onix.nix import accounts

DECLARED_DIR = "share/onix/nix"  # relative to usr/
MATERIALISED = {"nix.conf": "etc/nix/nix.conf", "nix.sh": "etc/profile.d/nix.sh"}
META_SEEDED = "nix_seeded"  # JSON {etc path: blake3 of what onix last wrote}


def header(name: str) -> str:
    return (f"# Managed by onix (onix nix seed) from /usr/{DECLARED_DIR}/{name}, the declared\n"
            "# defaults. Local edits are kept and reported as drift by onix status;\n"
            "# onix never overwrites them. Delete this file to get the defaults back.\n")


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
        os.chown(store, 0, accounts.NIXBLD_GID)
        os.chmod(store, 0o1775)
        made.append("/nix/store")
    return made


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
    changed = accounts.seed_accounts(root)
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


