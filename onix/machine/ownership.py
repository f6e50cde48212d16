"""The ownership contract between the machine plane and the Nix plane.

The table is the product's promise (docs/ownership.md); it is written into
the database on every init so `onix ownership` and scripts read one source.

`nix_fingerprint()` is the proof side: a cheap description of <root>/nix
(store path names, where profile and GC-root links point, the identity of
Nix's db.sqlite) taken before and after every machine transaction (install,
remove, activate, rollback, prune) and stored in its journal row. If the two
differ the command says exactly what moved instead of printing "untouched".
"""

from __future__ import annotations

import os
from pathlib import Path

from onix.core.paths import RootPaths

MACHINE = "machine"
NIX_INTEGRATION = "onix-nix-integration"
NIX = "Nix"
SEAM = "ONIX seam"

TABLE: list[tuple[str, str, str]] = [
    ("/usr", MACHINE, "stateless machine payload, one tree per state"),
    ("/.onix", MACHINE, "content store, archived states and the transaction log"),
    ("/boot", MACHINE, "kernel, initrd, BLS entries"),
    ("/etc/nix", NIX_INTEGRATION, "declared defaults, no installer drift"),
    ("/nix", NIX, "persistent store, daemon, profiles"),
    ("/run/opengl-driver", SEAM, "host graphics bridge for Nix apps"),
]


def table(paths: RootPaths) -> list[dict]:
    """The table as recorded in the root's database, or the built-in one for a fresh root."""
    import sqlite3
    from urllib.parse import quote

    db = paths.db
    rows = [(s, o, r) for s, o, r in TABLE]
    if db.exists():
        con = sqlite3.connect(f"file:{quote(str(db.absolute()))}?mode=ro", uri=True)
        try:
            rows = con.execute("SELECT surface, owner, reason FROM ownership").fetchall() or rows
        finally:
            con.close()
    order = {s: i for i, (s, _o, _r) in enumerate(TABLE)}
    rows.sort(key=lambda r: order.get(r[0], len(order)))
    return [{"surface": s, "owner": o, "reason": r} for s, o, r in rows]


def _links(base: Path) -> dict[str, str]:
    """Every symlink below `base` (relative name → target), without following any."""
    out: dict[str, str] = {}
    if not base.is_dir() or base.is_symlink():
        return out
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p.is_symlink():
                out[p.relative_to(base).as_posix()] = os.readlink(p)
    return out


def nix_fingerprint(root: Path) -> dict:
    """Describe <root>/nix cheaply enough to take around every machine transaction."""
    nix = Path(root) / "nix"
    if not nix.exists() and not nix.is_symlink():
        return {"present": False}
    store = nix / "store"
    try:
        paths = sorted(os.listdir(store)) if store.is_dir() else []
    except PermissionError:
        paths = []
    db = nix / "var" / "nix" / "db" / "db.sqlite"
    try:
        st = db.stat()
        db_id = [st.st_ino, st.st_size, st.st_mtime_ns]
    except FileNotFoundError:
        db_id = None
    return {
        "present": True,
        "store_paths": paths,
        "profiles": _links(nix / "var" / "nix" / "profiles"),
        # gcroots/onix is onix's own seam (nix/gcroots.py): roots for store paths a
        # machine state links to, added and removed with the states. Not Nix's to change.
        "gcroots": {k: v for k, v in _links(nix / "var" / "nix" / "gcroots").items()
                    if not k.startswith("onix/")},
        "db": db_id,
    }


def compact(fingerprint: dict) -> dict:
    """A fingerprint for the record: the store path list becomes its count and digest."""
    if "store_paths" not in fingerprint:
        return fingerprint
    import blake3

    paths = fingerprint["store_paths"]
    out = {k: v for k, v in fingerprint.items() if k != "store_paths"}
    out["store_paths_count"] = len(paths)
    out["store_paths_digest"] = blake3.blake3("\n".join(paths).encode()).hexdigest()
    return out


def compare(before: dict, after: dict) -> tuple[bool, list[str]]:
    """(untouched?, human lines describing each difference)."""
    if before == after:
        return True, []
    changes: list[str] = []
    if before.get("present") != after.get("present"):
        changes.append("/nix appeared" if after.get("present") else "/nix disappeared")
        return False, changes
    b, a = set(before.get("store_paths", [])), set(after.get("store_paths", []))
    if a - b:
        changes.append(f"{len(a - b)} store paths added")
    if b - a:
        changes.append(f"{len(b - a)} store paths removed")
    for kind in ("profiles", "gcroots"):
        lb, la = before.get(kind, {}), after.get(kind, {})
        moved = sorted(k for k in set(lb) | set(la) if lb.get(k) != la.get(k))
        if moved:
            changes.append(f"{kind} links changed: {', '.join(moved[:5])}"
                           + (" …" if len(moved) > 5 else ""))
    if before.get("db") != after.get("db"):
        changes.append("nix/var/nix/db/db.sqlite changed")
    return False, changes


def report(before: dict, after: dict) -> str:
    untouched, changes = compare(before, after)
    return "untouched" if untouched else "changed: " + "; ".join(changes)
