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
        ordinary declared /etc defaults: the stone ships them as
        usr/share/factory/etc/nix/nix.conf and usr/share/factory/etc/profile.d/nix.sh, and
        machine/etc.py merges them into /etc like every factory file (3-way, per key for
        nix.conf; local edits survive, new keys arrive beside them). `seed()` runs that
        merge; after a state change machine/follow.py runs it on its own. They carry no
        `# Managed by onix` header any more: a header cannot be written into every format
        a factory file may have, and `onix etc status` says what onix manages. A root an
        older onix seeded has the meta key nix_seeded (blake3 of what it wrote);
        `migrate_seeded()` turns it into the merge's record once and deletes it.
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
from onix.core.errors import OnixError, StateError
from onix.core.paths import RootPaths
from onix.machine import etc
from onix.machine.session import Session
from onix.nix import accounts

NIX_CONF = "nix/nix.conf"  # below /etc, as machine/etc.py names its files
NIX_SH = "profile.d/nix.sh"
LEGACY_DIR = "share/onix/nix"  # below usr/: where states before the factory move declared them
META_SEEDED = "nix_seeded"  # an older onix's JSON {etc path: [blake3 of what it wrote]}


def _legacy_header(name: str) -> str:
    """The header an older onix put above its copy (only to recognise that copy)."""
    return (f"# Managed by onix (onix nix seed) from /usr/{LEGACY_DIR}/{name}, the declared\n"
            "# defaults. Local edits are kept and reported as drift by onix status;\n"
            "# onix never overwrites them. Delete this file to get the defaults back.\n")


def _b3(data: bytes) -> str:
    import blake3

    return blake3.blake3(data).hexdigest()


def migrate_seeded(s: Session) -> list[str]:
    """Turn an older onix's nix_seeded hashes into the /etc merge's record, once.

    An untouched copy (its hash is listed) is its own base, header and all, so the merge
    replaces it with the new default. For an edited copy the base is the declared file of
    whichever retained state onix wrote it from (the one whose header + content has a
    listed hash), without the header, so the edit is kept and the merge is per key.
    Returns the /etc paths given a base.
    """
    with s.db.read() as c:
        raw = s.db.get_meta(c, META_SEEDED)
    if raw is None:
        return []
    try:
        seeded = json.loads(raw)
    except ValueError:
        seeded = {}
    trees = [s.paths.usr]
    if s.paths.states.is_dir():
        trees += [p / "usr" for p in sorted(s.paths.states.iterdir())]
    adopted: list[str] = []
    for etc_rel, known in (seeded.items() if isinstance(seeded, dict) else ()):
        known = {known} if isinstance(known, str) else set(known)
        rel = etc_rel.removeprefix("etc/")
        if rel not in etc.LEGACY:
            continue
        base = _adoptable(s.paths.root, rel, known, trees)
        if base is not None:
            etc.adopt(s.paths, rel, base)
            adopted.append(f"/etc/{rel}")
    with s.db.write() as c:  # after the record: a crash before this just redoes it
        s.db.delete_meta(c, META_SEEDED)
    return adopted


def _adoptable(root: Path, rel: str, known: set[str], trees: list[Path]) -> bytes | None:
    try:
        local = safepath.read_regular(root, f"etc/{rel}")
    except (FileNotFoundError, OnixError):
        local = None
    if local is not None and _b3(local) in known:
        return local
    name = rel.rsplit("/", 1)[-1]
    for usr in trees:
        try:
            data = safepath.read_regular(usr, etc.LEGACY[rel])
        except (FileNotFoundError, OnixError):
            continue
        if _b3(_legacy_header(name).encode() + data) in known:
            return data
    return None


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
         etc_files: bool = True) -> dict:
    """Lay down the Nix plane's machine-side seams (see the module docstring).

    With etc_files, the /etc merge of every declared default (machine/etc.py) comes
    first: it refuses a symlinked /etc directory before anything is written. Works on a
    root without a database (a test, an image being composed): the merge's record is
    files below the root.
    """
    root = paths.root
    usr = usr or paths.usr
    # Every directory this may write through is checked before the first write.
    safepath.check_dirs(root, "etc", *(RUNTIME_DIRS if runtime else ()))
    report = etc.merge(paths, usr=usr) if etc_files else None
    changed = list(report.changed) if report else []
    changed += accounts.seed_accounts(root)
    if runtime:
        changed += seed_runtime(root)
    return {"changed": changed, "etc": report.as_dict() if report else None}


def seed_session(s: Session, *, runtime: bool, etc_files: bool = False) -> dict:
    """seed() inside a mutating session. The /etc merge only with etc_files (`onix nix
    seed`): after a state change machine/follow.py runs it on its own, for every state,
    not only those that declare Nix."""
    if etc_files:
        migrate_seeded(s)
    return seed(s.paths, usr=s.paths.usr, runtime=runtime, etc_files=etc_files)


def declares_nix(usr: Path) -> bool:
    return (usr / etc.FACTORY / "nix").is_dir() or (usr / LEGACY_DIR).is_dir()


@dataclass
class Drift:
    overrides: list[str] = field(default_factory=list)  # nix.conf keys the user changed
    errors: list[str] = field(default_factory=list)  # lines Nix would reject
    missing: list[str] = field(default_factory=list)  # /etc files the defaults need
    conflicts: list[str] = field(default_factory=list)  # keys waiting in nix.conf.onix-new

    def as_dict(self) -> dict:
        return {"overrides": self.overrides, "errors": self.errors, "missing": self.missing,
                "conflicts": self.conflicts}


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


def drift(paths: RootPaths, *, usr: Path | None = None,
          rows: list[dict] | None = None) -> Drift:
    """The Nix files' share of the /etc drift (machine/etc.py's rows, per key for
    nix.conf), and the lines of /etc/nix/nix.conf that Nix would reject."""
    out = Drift()
    if rows is None:
        rows = etc.status(paths, usr=usr)
    by_path = {r["path"]: r for r in rows if r["source"] is not None}
    conf, hook = by_path.get(f"/etc/{NIX_CONF}"), by_path.get(f"/etc/{NIX_SH}")
    if conf is not None:
        out.overrides = list(conf["overrides"])
        out.conflicts = list(conf["conflicts"])
        if conf["state"] == "missing":
            out.missing.append(conf["path"])
        else:
            try:
                have = safepath.read_regular(paths.root, f"etc/{NIX_CONF}")
            except (OSError, OnixError):
                have = b""
            _, out.errors = parse_conf(have.decode(errors="replace"), where=conf["path"])
    if hook is not None:
        if hook["state"] == "missing":
            out.missing.append(hook["path"])
        elif hook["conflicts"]:
            out.conflicts.append(hook["path"])
        elif hook["overrides"]:
            out.overrides.append(f"{hook['path']} (edited)")
    return out
