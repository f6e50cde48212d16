"""Verify: re-hash the store and check every state's tree against its layout.

Store objects are hashed once each (in two processes). The live /usr and every
archived .onix/states/<id>/usr are checked entry by entry; a file that is the
very inode of its store object needs no second hash (that is the point of
hardlinking) and is corrupt exactly when the object is. Problems are reported
per path; `fix=True` restores from the store (or, for a damaged store object,
from a sibling object or the cached stone) and removes files no stone owns.
"""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

from onix.core import fsutil
from onix.core.errors import OnixError
from onix.core.parallel import in_two_processes
from onix.core.paths import GENERATED, read_state_id
from onix.machine.blit import generated_files, write_generated_file
from onix.machine.layout import DIR, FILE, SYMLINK, Entry, implicit_dirs
from onix.machine.session import Session
from onix.machine.store import ObjectKey, hash_file


@dataclass
class Problem:
    path: str
    problem: str  # corrupt | missing | extra | mode | owner | type | target
    detail: str = ""

    def as_dict(self) -> dict:
        return {"path": self.path, "problem": self.problem, "detail": self.detail}


@dataclass
class VerifyReport:
    state: int | None
    objects_checked: int = 0
    files_checked: int = 0
    bytes_hashed: int = 0
    unreferenced_objects: int = 0
    problems: list[Problem] = field(default_factory=list)
    fixed: list[Problem] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return {"state": self.state, "clean": self.clean, "objects_checked": self.objects_checked,
                "files_checked": self.files_checked, "bytes_hashed": self.bytes_hashed,
                "unreferenced_objects": self.unreferenced_objects,
                "problems": [p.as_dict() for p in self.problems],
                "fixed": [p.as_dict() for p in self.fixed], "recovered": self.recovered}


def verify(s: Session, *, fix: bool = False) -> VerifyReport:
    report = _verify(s)
    if fix and report.problems:
        _fix(s, report)
        before = report.problems
        report = _verify(s)
        left = {(p.path, p.problem) for p in report.problems}
        report.fixed = [p for p in before if (p.path, p.problem) not in left]
    report.recovered = s.recovered
    return report


def _hash_path(path: str, size: int, *, threads: bool = True) -> str | None:
    """store.hash_file, with an unreadable file counting as a mismatch."""
    try:
        return hash_file(path, size=size, threads=threads, follow_symlinks=False)
    except OSError:
        return None


def _verify(s: Session) -> VerifyReport:
    live = s.live_state()
    report = VerifyReport(state=live)
    with s.db.read() as c:
        wanted = s.db.referenced_objects(c)
        trees: list[tuple[int, list[Entry]]] = []
        if live is not None:
            trees.append((live, s.db.state_layout(c, live)))
        states = s.db.states(c)
        for st in states:
            if st["status"] == "archived":
                trees.append((st["id"], s.db.state_layout(c, st["id"])))
        fstx = {st["id"]: st["fstx"] for st in states}

    todo, store_inodes = _scan_store(s, report, wanted)
    shared: list[tuple[str, ObjectKey]] = []

    def check_trees() -> None:
        for sid, entries in trees:
            tree = s.paths.usr if sid == live else s.paths.state_tree(sid)
            prefix = "/usr" if sid == live else str(tree.relative_to(s.paths.root))
            if sid != live and (tree.is_symlink() or tree.parent.is_symlink()):
                report.problems.append(Problem(prefix, "type", "an archived tree may not be a "
                                               "symlink; onix will not follow it"))
                continue
            if sid != live and read_state_id(tree) != sid:
                report.problems.append(Problem(prefix, "missing",
                                               f"archived tree of state {sid}"))
                continue
            _check_tree(s, report, tree, prefix, sid, fstx.get(sid, ""), entries,
                        store_inodes, shared)

    # Hashing is split with a forked child; this process also walks the trees, so it
    # takes a smaller share (weights: bytes, plus a fixed cost per file or entry).
    tree_weight = sum(len(entries) for _sid, entries in trees) * 6000
    s.progress.start("hashing store", len(todo))
    if len(todo) < 1000:
        check_trees()
        bad = set(_bad_objects(todo, threads=True))
    else:
        total = sum(st.st_size + 8192 for _k, _p, st in todo)
        mine, theirs, mine_weight = [], [], 0
        for item in todo:
            if mine_weight < (total - tree_weight) / 2:
                mine.append(item)
                mine_weight += item[2].st_size + 8192
            else:
                theirs.append(item)
        mine_bad: list[ObjectKey] = []

        def own_share() -> None:
            check_trees()
            mine_bad.extend(_bad_objects(mine, threads=False))

        child = in_two_processes(
            lambda: "\n".join(k.name for k in _bad_objects(theirs, threads=False)).encode(),
            own_share)
        bad = set(mine_bad) | {ObjectKey.parse(n) for n in child.decode().split()}
    s.progress.advance(len(todo))
    s.progress.finish()
    root = str(s.paths.root) + "/"
    for key, path, _st in todo:
        if key in bad:
            report.problems.append(Problem(path.removeprefix(root), "corrupt",
                                           "store object content changed"))
    for where, key in shared:  # the same inode as a corrupt object is the same corruption
        if key in bad:
            report.problems.append(Problem(where, "corrupt", "content changed"))
    return report


def _bad_objects(items: list, *, threads: bool) -> list[ObjectKey]:
    return [key for key, path, st in items
            if not stat.S_ISREG(st.st_mode)
            or _hash_path(path, st.st_size, threads=threads) != key.digest]


def _scan_store(s: Session, report: VerifyReport, wanted: set
                ) -> tuple[list[tuple[ObjectKey, str, os.stat_result]], dict[ObjectKey, int]]:
    """List the store: referenced objects to hash, their inodes, and what is missing."""
    by_name = {ObjectKey(*k).name: ObjectKey(*k) for k in wanted}
    todo: list[tuple[ObjectKey, str, os.stat_result]] = []
    if s.store.dir.is_dir():
        for shard in os.scandir(s.store.dir):
            if shard.name.startswith(".") or not shard.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(shard.path):
                key = by_name.get(entry.name)
                if key is None:
                    report.unreferenced_objects += 1
                else:
                    todo.append((key, entry.path, entry.stat(follow_symlinks=False)))
    report.objects_checked = len(todo)
    report.bytes_hashed += sum(st.st_size for _k, _p, st in todo)
    inodes: dict[ObjectKey, int] = {}
    root = str(s.paths.root) + "/"
    check_owner = os.geteuid() == 0
    for key, path, st in todo:
        if not stat.S_ISREG(st.st_mode):
            continue  # hashing reports it corrupt
        if stat.S_IMODE(st.st_mode) != key.mode:
            report.problems.append(Problem(path.removeprefix(root), "mode",
                                           f"{stat.S_IMODE(st.st_mode):o} != {key.mode:o}"))
        elif check_owner and (st.st_uid, st.st_gid) != (key.uid, key.gid):
            report.problems.append(Problem(path.removeprefix(root), "owner",
                                           f"{st.st_uid}:{st.st_gid} != {key.uid}:{key.gid}"))
        else:
            inodes[key] = st.st_ino
    for missing in sorted(set(by_name.values()) - {k for k, _p, _st in todo}):
        report.problems.append(Problem(str(s.store.path(missing).relative_to(s.paths.root)),
                                       "missing", "store object"))
    return todo, inodes


def tree_entries(entries: list[Entry]) -> list[Entry]:
    """Everything a state's tree holds besides generated files: its layout, the parent
    directories the blit makes 0755 for it, and lib/ (made for lib/os-release)."""
    out = [*entries, *(Entry(d, DIR, 0o755) for d in implicit_dirs(entries))]
    if "lib" not in {e.path for e in out}:
        out.append(Entry("lib", DIR, 0o755))
    return out


def _check_tree(s: Session, report: VerifyReport, tree: Path, prefix: str, state_id: int,
                fstx: str, entries: list[Entry], store_inodes: dict[ObjectKey, int],
                shared: list[tuple[str, ObjectKey]]) -> None:
    """One state's tree against its layout: every entry, generated files, nothing extra.

    A file that is the very inode of its store object is not hashed again: it is
    noted in `shared` and is corrupt exactly when that object is.
    """
    base = str(tree) + "/"
    is_root = os.geteuid() == 0
    problems = report.problems
    expected = tree_entries(entries)
    for e in expected:
        path = base + e.path
        where = f"{prefix}/{e.path}"
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            problems.append(Problem(where, "missing"))
            continue
        if stat.S_IFMT(st.st_mode) != e.st_type:
            problems.append(Problem(where, "type", f"expected {e.kind}"))
            continue
        if e.kind != SYMLINK and stat.S_IMODE(st.st_mode) != e.installed_mode:
            problems.append(Problem(where, "mode",
                                    f"{stat.S_IMODE(st.st_mode):o} != {e.installed_mode:o}"))
        if is_root and (st.st_uid, st.st_gid) != (e.uid, e.gid):
            problems.append(Problem(where, "owner",
                                    f"{st.st_uid}:{st.st_gid} != {e.uid}:{e.gid}"))
        if e.kind == SYMLINK:
            if os.readlink(path) != e.target:
                problems.append(Problem(where, "target", f"points to {os.readlink(path)}"))
        elif e.kind == FILE:
            report.files_checked += 1
            if st.st_size != e.size:
                problems.append(Problem(where, "corrupt", "size changed"))
            elif e.size:
                key = ObjectKey(e.digest, e.installed_mode, e.uid, e.gid)
                if store_inodes.get(key) == st.st_ino:
                    shared.append((where, key))
                else:
                    report.bytes_hashed += e.size
                    if _hash_path(path, e.size, threads=False) != e.digest:
                        problems.append(Problem(where, "corrupt", "content changed"))
    for rel, data in generated_files(state_id, fstx).items():
        try:
            if os.path.islink(base + rel) or Path(base + rel).read_bytes() != data:
                problems.append(Problem(f"{prefix}/{rel}", "corrupt", "generated file changed"))
        except (FileNotFoundError, NotADirectoryError):
            problems.append(Problem(f"{prefix}/{rel}", "missing", "generated file"))
        except IsADirectoryError:
            problems.append(Problem(f"{prefix}/{rel}", "type", "expected the generated file"))
    known = {e.path for e in expected} | set(GENERATED)
    for rel in _walk(tree):
        if rel not in known:
            problems.append(Problem(f"{prefix}/{rel}", "extra", "no stone owns it"))


def _walk(tree: Path) -> list[str]:
    """Every path below `tree`, relative, without following symlinks."""
    out: list[str] = []
    stack = [("", str(tree))]
    while stack:
        rel, path = stack.pop()
        with os.scandir(path) as it:
            for entry in it:
                child = f"{rel}/{entry.name}" if rel else entry.name
                out.append(child)
                if entry.is_dir(follow_symlinks=False):
                    stack.append((child, entry.path))
    return out


def _restore_object(s: Session, key: ObjectKey) -> bool:
    """Rewrite one store object from a healthy sibling or from a cached stone."""
    from onix.machine.stone import Stone

    dest = s.store.path(key)
    tmp = s.paths.store_tmp / f"fix-{key.name}"
    s.paths.store_tmp.mkdir(parents=True, exist_ok=True)
    for other, path in s.store.objects():
        if other.digest == key.digest and other != key and hash_file(path) == key.digest:
            shutil.copyfile(path, tmp)
            break
    else:
        for cached in sorted(s.paths.stone_cache.glob("*.stone")):
            try:
                with Stone(cached) as stone:
                    if not any(d == key.digest for d, _o, _l in stone.index):
                        continue
                    for digest, _length, chunks in stone.contents():
                        if digest == key.digest:
                            with open(tmp, "wb") as f:
                                for chunk in chunks:
                                    f.write(chunk)
                            break
            except OnixError:
                pass  # a damaged cached stone is one source fewer, not the end of the repair
            if tmp.exists() and hash_file(tmp) == key.digest:
                break
            tmp.unlink(missing_ok=True)
    if not tmp.exists():
        return False
    fsutil.set_owner_and_mode(str(tmp), uid=key.uid, gid=key.gid, mode=key.mode)
    dest.parent.mkdir(exist_ok=True)
    os.rename(tmp, dest)
    return True


def _fix(s: Session, report: VerifyReport) -> None:
    store_dir = str(s.store.dir.relative_to(s.paths.root))
    states_dir = str(s.paths.states.relative_to(s.paths.root))
    paths = sorted({p.path for p in report.problems})  # one repair per path, however many faults
    for path in paths:
        if path.startswith(store_dir):
            key = ObjectKey.parse(Path(path).name)
            if key is not None:
                _restore_object(s, key)
    live = s.live_state()
    with s.db.read() as c:
        fstx = {st["id"]: st["fstx"] for st in s.db.states(c)}
        layouts: dict[int, dict[str, Entry]] = {}

        def layout(sid: int) -> dict[str, Entry]:
            if sid not in layouts:
                layouts[sid] = {e.path: e for e in tree_entries(s.db.state_layout(c, sid))}
            return layouts[sid]

        # parents before children, so a directory restored first can receive its files
        for path in sorted(paths, key=lambda p: (p.count("/"), p)):
            if path.startswith("/usr/") and live is not None:
                sid, tree, rel = live, s.paths.usr, path[len("/usr/"):]
            elif path.startswith(states_dir + "/"):
                sid_text, _, rest = path[len(states_dir) + 1:].partition("/")
                sid, tree, rel = int(sid_text), s.paths.state_tree(int(sid_text)), \
                    rest.partition("/")[2]
                if not rel:
                    continue  # a whole archived tree is gone; nothing here to restore from
            else:
                continue
            if rel in GENERATED:
                write_generated_file(tree, rel, generated_files(sid, fstx.get(sid, ""))[rel])
                continue
            e = layout(sid).get(rel)
            if e is None:  # extra: no stone owns it
                fsutil.remove_tree(tree / rel)
            else:
                _replace(s, e, tree / rel)
    if live is not None and read_state_id(s.paths.usr) != live:
        raise AssertionError("verify --fix changed the live state id")


def _replace(s: Session, e: Entry, target: Path) -> None:
    """Put one layout entry back exactly, replacing whatever is at its path."""
    if e.kind == DIR:
        if not target.is_dir() or target.is_symlink():
            if target.exists() or target.is_symlink():
                fsutil.remove_tree(target)
            os.mkdir(target, 0o700)
        fsutil.set_owner_and_mode(str(target), uid=e.uid, gid=e.gid, mode=e.installed_mode)
        return
    tmp = target.with_name(f".{target.name}.onix-fix")
    if tmp.exists() or tmp.is_symlink():
        tmp.unlink()
    if e.kind == SYMLINK:
        os.symlink(e.target, tmp)
        if os.geteuid() == 0:
            os.lchown(tmp, e.uid, e.gid)
    elif e.size == 0:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            fsutil.set_owner_and_mode(fd, uid=e.uid, gid=e.gid, mode=e.installed_mode)
        finally:
            os.close(fd)
    else:
        os.link(s.store.path(ObjectKey(e.digest, e.installed_mode, e.uid, e.gid)), tmp)
    if target.is_dir() and not target.is_symlink():
        fsutil.remove_tree(target)
    os.rename(tmp, target)
    # rename() between two names of one inode does nothing and leaves both: the target
    # already was the store object, so the temporary name is all that must go.
    if tmp.exists() or tmp.is_symlink():
        tmp.unlink()
