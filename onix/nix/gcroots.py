"""GC roots for the machine plane's links into /nix/store.

A state whose /usr holds a symlink into /nix/store (its layout rows in the database say
so; no tree walk) gets a root /nix/var/nix/gcroots/onix/states/<id>-<n> → that store
path, removed exactly when the state is pruned. That directory is the one place onix
writes inside /nix; the /nix fingerprint (machine/ownership.py) leaves it out and reports
it on its own.
"""

from __future__ import annotations

import os

from onix.core import fsutil, safepath
from onix.core.paths import NIX_GCROOTS, RootPaths

# Where Debian-style states keep Mesa; the bridge uses the first that exists.


def sync_gcroots(paths: RootPaths, *, links: dict[int, list[str]]) -> dict:
    """Make gcroots/onix/states hold exactly one root per store path each state links to
    (`links`: state id → store paths, Database.store_links)."""
    root = paths.root
    if not (root / "nix").is_dir():
        return {"added": [], "removed": []}  # no Nix plane here: nothing could collect them
    base = root / NIX_GCROOTS / "states"
    want = {f"{sid}-{n}": target for sid, targets in sorted(links.items())
            for n, target in enumerate(targets)}
    safepath.check_dirs(root, NIX_GCROOTS + "/states")
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


