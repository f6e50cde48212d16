"""The Nix plane's seams after every change of the live state.

`after_change` runs each seam on its own, GC roots first (gcroots.py), then the
build users (seed.py; the declared /etc files are merged by machine/etc.py, which
machine/follow.py runs for every state) and the graphics bridge (bridge.py): a problem
in /etc must never leave a store path the live /usr links to unrooted. Health for
`onix status` is daemon.py, seed.drift and bridge.opengl_status; the build users are
accounts.py.
"""

from __future__ import annotations

from onix.core.errors import OnixError
from onix.machine.session import Session
from onix.nix import bridge, gcroots, seed


def after_change(s: Session, warnings: list[str] | None = None) -> dict:
    """After a transaction, rollback or prune: GC roots, the build users, the bridge.

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

    def roots() -> dict:
        with s.db.read() as c:
            links = s.db.store_links(c)
        return gcroots.sync_gcroots(paths, links=links)

    def etc() -> list[str]:
        return seed.seed_session(s, runtime=False)["changed"]

    def opengl() -> dict:
        return bridge.bridge(paths, fstx=fstx, usr=paths.usr)

    steps = [("gcroots", roots, "onix nix seed")]
    if seed.declares_nix(paths.usr):
        steps.append(("seed", etc, "fix /etc as it says, then onix nix seed"))
    if fstx is not None and (bridge.mesa_libdir(paths.usr) is not None or
                             (paths.root / bridge.OPENGL_BRIDGE).is_symlink()):
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
