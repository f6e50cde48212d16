"""Previews: what a transaction would do, computed without changing anything.

`--dry-run` on install, remove, sync, prune, rollback and state activate, and the plan
`onix sync` prints before it asks, are a `Preview`: the stones that move (from → to,
and why), the states created or removed, the files of /usr added, removed and changed,
the bytes to fetch and to free. It is read from the state log with the standard
library (reader.py) and takes no lock, so a preview leaves the root byte-identical.

File changes are exact wherever the layouts are known — stone files named on the command
line, stones being removed, archived states. A stone still to be downloaded has no
layout here (indexes do not carry layouts), so a plan that fetches reports its file
changes as unknown rather than guessing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from onix.core.paths import RootPaths, read_state_id
from onix.machine.layout import FILE, Entry, merge

UPGRADE, DOWNGRADE, NEW, DEPENDENCY, REMOVED, REINSTALL = (
    "upgrade", "downgrade", "new", "dependency", "removed", "reinstall")


@dataclass
class StoneChange:
    """One row of a plan: a stone that moves, arrives or goes."""

    name: str
    kind: str  # upgrade, downgrade, new, dependency, removed, reinstall
    old: str | None  # installed version-release
    new: str | None  # version-release it moves to
    repo: str = ""  # where it comes from ("" for a stone file or a removal)
    download: int = 0  # bytes to fetch
    size_change: int = 0  # installed bytes, new minus old (0 where nothing says)

    def as_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "from": self.old, "to": self.new,
                "repo": self.repo, "download": self.download, "size_change": self.size_change}


@dataclass
class Preview:
    kind: str
    live: int | None
    stones: list[StoneChange] = field(default_factory=list)
    creates_state: bool = False
    staged: bool = False  # the new state becomes the next boot's default, /usr unchanged
    switch_to: int | None = None  # rollback/activate: the state made live
    states_removed: list[int] = field(default_factory=list)
    files: dict[str, list[str]] | None = None  # None: not known before the download
    fetch_bytes: int = 0
    free_bytes: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.stones or self.switch_to is not None or self.states_removed)

    def as_dict(self) -> dict:
        return {"dry_run": True, "kind": self.kind, "live": self.live,
                "stones": [c.as_dict() for c in self.stones],
                "creates_state": self.creates_state, "staged": self.staged,
                "switch_to": self.switch_to, "states_removed": self.states_removed,
                "files": self.files, "fetch_bytes": self.fetch_bytes,
                "free_bytes": self.free_bytes, "notes": self.notes, "empty": self.empty}


def files_diff(old: list[Entry], new: list[Entry]) -> dict[str, list[str]]:
    """/usr paths added, removed and changed going from layout `old` to layout `new`."""
    a = {e.path: e for e in old}
    b = {e.path: e for e in new}
    return {"added": sorted(f"/usr/{p}" for p in b.keys() - a.keys()),
            "removed": sorted(f"/usr/{p}" for p in a.keys() - b.keys()),
            "changed": sorted(f"/usr/{p}" for p in a.keys() & b.keys()
                              if a[p].canonical() != b[p].canonical())}


def stone_layouts(paths: RootPaths, stone_ids: dict[str, int]) -> dict[str, list[Entry]]:
    """name → layout of installed stones, from the log."""
    from onix.machine import reader

    con = reader.connect(paths.db)
    try:
        return {name: [Entry(*tuple(r)) for r in con.execute(
            "SELECT path, kind, mode, uid, gid, size, digest, target FROM layout "
            "WHERE stone_id = ? ORDER BY path", (sid,))] for name, sid in stone_ids.items()}
    finally:
        con.close()


def selection_change(paths: RootPaths, *, kind: str, current: dict[str, dict],
                     changes: list[StoneChange], new_layouts: dict[str, list[Entry]],
                     stage: bool = False, notes: list[str] | None = None) -> Preview:
    """A transaction that builds a new state: `changes` applied to the live `current`
    selection; `new_layouts` holds the layouts known for the stones that come in."""
    p = Preview(kind=kind, live=read_state_id(paths.usr), stones=changes,
                creates_state=bool(changes), staged=stage, notes=list(notes or []),
                fetch_bytes=sum(c.download for c in changes))
    if not changes:
        return p
    incoming = {c.name for c in changes if c.kind != REMOVED}
    unknown = sorted(incoming - new_layouts.keys())
    if unknown:
        p.notes.append(f"file changes are known once {len(unknown)} stone"
                       f"{'s are' if len(unknown) != 1 else ' is'} fetched")
        return p
    gone = {c.name for c in changes if c.kind == REMOVED}
    old = stone_layouts(paths, {n: r["id"] for n, r in current.items()})
    new = {n: lay for n, lay in old.items() if n not in gone and n not in incoming}
    new.update({n: new_layouts[n] for n in incoming})
    p.files = files_diff(merge(old) if old else [], merge(new) if new else [])
    for c in changes:  # what the layouts say about installed bytes
        before = sum(e.size for e in old.get(c.name, []) if e.kind == FILE)
        after = sum(e.size for e in new.get(c.name, []) if e.kind == FILE)
        c.size_change = after - before
    return p


def switch(paths: RootPaths, *, kind: str, to: int | None) -> Preview:
    """rollback / state activate: the stones and files that change when `to` (for a
    rollback by default the newest older state) goes live; refused as the real one is."""
    from onix.core.errors import StateError
    from onix.machine import state_log

    live = read_state_id(paths.usr)
    ids = [st["id"] for st in state_log.list_states(paths)]
    if to is None:
        older = [i for i in ids if live is not None and i < live]
        if not older:
            raise StateError("there is no older state to roll back to", path=paths.db,
                             hint="see onix state list")
        to = max(older)
    if to not in ids:
        raise StateError(f"state {to} does not exist", path=paths.db,
                         hint="see onix state list for the states on this root")
    if to == live:
        raise StateError(f"state {to} is already active", path=paths.state_id_file,
                         hint="nothing to do")
    d = state_log.diff_states(paths, live, to) if live is not None else None
    p = Preview(kind=kind, live=live, switch_to=to)
    if d is not None:
        p.stones = [StoneChange(name=s["name"], kind=s["kind"], old=s["from"], new=s["to"])
                    for s in d["stones"]]
        p.files = d["files"]
    return p


def prune(paths: RootPaths, *, doomed: list[int]) -> Preview:
    """The states a prune removes and the store bytes only they use."""
    from onix.machine import reader

    p = Preview(kind="prune", live=read_state_id(paths.usr), states_removed=list(doomed))
    if not doomed:
        return p
    con = reader.connect(paths.db)
    try:
        marks = ",".join("?" * len(doomed))
        rows = con.execute(
            "SELECT DISTINCT l.digest, l.size FROM layout l JOIN state_stones ss "
            f"ON ss.stone_id = l.stone_id WHERE ss.state_id IN ({marks}) AND l.kind = 'file' "
            "AND l.size > 0 AND l.digest NOT IN (SELECT l2.digest FROM layout l2 "
            "JOIN state_stones s2 ON s2.stone_id = l2.stone_id JOIN states st "
            f"ON st.id = s2.state_id WHERE s2.state_id NOT IN ({marks}) "
            "AND st.status != 'pending' AND l2.kind = 'file')",
            (*doomed, *doomed)).fetchall()
    finally:
        con.close()
    p.free_bytes = sum(r[1] for r in {(r[0], r[1]) for r in rows})
    return p


def removal(paths: RootPaths, names: list[str], *, orphans: bool) -> Preview:
    """`onix remove --dry-run`: the stones removed (orphans too) and the files they take."""
    from onix.machine import reader
    from onix.machine.transaction import remove_selection

    current, _ = reader.live_selection(paths)
    selection, dropped = remove_selection(current, names, orphans=orphans, usr=paths.usr)
    changes = [StoneChange(name=n, kind=REMOVED, old=f"{r['version']}-{r['release']}",
                           new=None) for n, r in sorted(current.items()) if n not in selection]
    p = selection_change(paths, kind="remove", current=current, changes=changes,
                         new_layouts={})
    if dropped:
        p.notes.append("orphans removed with them: " + ", ".join(sorted(dropped)))
    return p
