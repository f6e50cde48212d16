"""A session: what a command holds while it works on one root.

Paths, the state database, the store, the progress reporter, and the notes of what
recovery did on the way in. A Session does no orchestration: `recovery.opened()` takes
the root lock, opens one and brings the root to a known state first, and only
onix/api.py calls that. Everything below the api takes a Session (or, to read, the
root's RootPaths), never a bare root.
"""

from __future__ import annotations

from onix.core.errors import StateError
from onix.core.paths import RootPaths, read_state_id
from onix.core.progress import Progress
from onix.machine import ownership
from onix.machine.store import Store


class Session:
    """What a mutating command holds: the root lock (taken by its opener), the database,
    the store."""

    def __init__(self, paths: RootPaths, progress: Progress):
        from onix.machine.db import Database  # SQLAlchemy: only when a session opens

        self.paths = paths
        self.progress = progress
        created = not paths.db.exists()
        self.db = Database(paths, create=True)
        self.store = Store(paths)
        if created:
            with self.db.write() as c:
                self.db.seed_ownership(c, ownership.TABLE)
        self.recovered: list[str] = []
        self.command = ""  # what was asked, as `onix history` shows it (set by api)

    def live_state(self) -> int | None:
        return read_state_id(self.paths.usr)


def check_live_state(s: Session) -> None:
    """Refuse to act on a /usr whose state onix cannot name.

    A missing or unreadable .stateID in a non-empty /usr, or one naming a state
    the database does not know (a database restored from an older backup), would
    make verify --fix "repair" /usr against nothing and prune or activate treat
    the live tree as disposable. A human has to look first.
    """
    usr = s.paths.usr
    live = s.live_state()
    if live is None:
        if usr.is_dir() and any(usr.iterdir()):
            raise StateError("/usr has no readable .stateID, so onix cannot tell which state "
                             "is live", path=s.paths.state_id_file,
                             hint="restore usr/.stateID (see onix state list) before any change")
        return
    with s.db.read() as c:
        if s.db.maybe_state(c, live) is None:
            raise StateError(f"/usr/.stateID names state {live}, which the database does not "
                             "know", path=s.paths.state_id_file,
                             hint="restore the matching database, or reinstall; onix will "
                             "not guess")
