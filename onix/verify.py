"""Verify: re-hash the store and check the live /usr against its state's layout.

Store objects are hashed once each. A /usr file that is the very inode of a
verified store object needs no second hash (that is the point of
hardlinking); anything else is hashed on its own. Problems are reported per
path; `fix=True` restores from the store (or, for a damaged store object,
from a sibling object or the cached stone) and removes files no stone owns.
"""

from __future__ import annotations

import os
import shutil
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from onix import fsutil
from onix.layout import DIR, FILE, SYMLINK, Entry, implicit_dirs
from onix.paths import GENERATED, OS_RELEASE_FILE, STATE_ID_FILE, read_state_id
from onix.progress import SILENT, Progress
from onix.store import ObjectKey, hash_file
from onix.transaction import Session, os_release, session


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


def verify(root: Path | str, *, fix: bool = False, wait: bool = True,
           progress: Progress = SILENT) -> VerifyReport:
    with session(root, wait=wait, progress=progress, create=False) as s:
        report = _verify(s)
        if fix and report.problems:
            _fix(s, report)
            fixed = report.problems
            report = _verify(s)
            report.fixed = fixed
        report.recovered = s.recovered
        return report


def _hash_many(paths: list[Path], progress: Progress) -> list[str | None]:
    def one(p: Path) -> str | None:
        try:
            return hash_file(p)
        except OSError:
            return None
        finally:
            progress.advance(1)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(one, paths, chunksize=64))


def _verify(s: Session) -> VerifyReport:
    live = s.live_state()
    report = VerifyReport(state=live)
    with s.db.read() as c:
        wanted = s.db.referenced_objects(c)
        entries = s.db.state_layout(c, live) if live is not None else []

    # 1. the store
    objects = list(s.store.objects())
    s.progress.start("hashing store", len(objects))
    digests = _hash_many([p for _k, p in objects], s.progress)
    s.progress.finish()
    good_inodes: dict[ObjectKey, int] = {}
    present = set()
    for (key, path), actual in zip(objects, digests, strict=True):
        ident = (key.digest, key.mode, key.uid, key.gid)
        present.add(ident)
        if ident not in wanted:
            report.unreferenced_objects += 1
            continue
        report.objects_checked += 1
        st = path.lstat()
        report.bytes_hashed += st.st_size
        rel = str(path.relative_to(s.paths.root))
        if actual != key.digest:
            report.problems.append(Problem(rel, "corrupt", "store object content changed"))
        elif stat.S_IMODE(st.st_mode) != key.mode:
            report.problems.append(Problem(rel, "mode", f"{stat.S_IMODE(st.st_mode):o} "
                                                        f"!= {key.mode:o}"))
        else:
            good_inodes[key] = st.st_ino
    for d, m, u, g in sorted(wanted - present):
        key = ObjectKey(d, m, u, g)
        report.problems.append(Problem(str(s.store.path(key).relative_to(s.paths.root)),
                                       "missing", "store object"))

    _check_archived(s, report, good_inodes)

    # 2. the live tree
    if live is None:
        return report
    usr = s.paths.usr
    is_root = os.geteuid() == 0
    to_hash: list[tuple[Entry, Path]] = []
    for e in entries:
        p = usr / e.path
        try:
            st = p.lstat()
        except FileNotFoundError:
            report.problems.append(Problem(f"/usr/{e.path}", "missing"))
            continue
        if stat.S_IFMT(st.st_mode) != e.st_type:
            report.problems.append(Problem(f"/usr/{e.path}", "type", f"expected {e.kind}"))
            continue
        if e.kind != SYMLINK and stat.S_IMODE(st.st_mode) != e.installed_mode:
            report.problems.append(Problem(f"/usr/{e.path}", "mode",
                                           f"{stat.S_IMODE(st.st_mode):o} != {e.installed_mode:o}"))
        if is_root and (st.st_uid, st.st_gid) != (e.uid, e.gid):
            report.problems.append(Problem(f"/usr/{e.path}", "owner",
                                           f"{st.st_uid}:{st.st_gid} != {e.uid}:{e.gid}"))
        if e.kind == SYMLINK:
            if os.readlink(p) != e.target:
                report.problems.append(Problem(f"/usr/{e.path}", "target",
                                               f"points to {os.readlink(p)}"))
        elif e.kind == FILE:
            report.files_checked += 1
            if st.st_size != e.size:
                report.problems.append(Problem(f"/usr/{e.path}", "corrupt", "size changed"))
            elif e.size and good_inodes.get(ObjectKey(e.digest, e.installed_mode, e.uid,
                                                      e.gid)) != st.st_ino:
                to_hash.append((e, p))
    s.progress.start("hashing /usr", len(to_hash))
    for (e, _p), actual in zip(to_hash, _hash_many([p for _e, p in to_hash], s.progress),
                              strict=True):
        report.bytes_hashed += e.size
        if actual != e.digest:
            report.problems.append(Problem(f"/usr/{e.path}", "corrupt", "content changed"))
    s.progress.finish()
    fstx = None
    with s.db.read() as c:
        st_row = s.db.maybe_state(c, live)
        fstx = st_row["fstx"] if st_row else None
    expected_generated = {STATE_ID_FILE: f"{live}\n".encode(),
                          OS_RELEASE_FILE: os_release(live, fstx or "")}
    for rel, data in expected_generated.items():
        try:
            if (usr / rel).read_bytes() != data:
                report.problems.append(Problem(f"/usr/{rel}", "corrupt", "generated file changed"))
        except FileNotFoundError:
            report.problems.append(Problem(f"/usr/{rel}", "missing", "generated file"))

    known = {e.path for e in entries} | set(implicit_dirs(entries)) | set(GENERATED) | {"lib"}
    for dirpath, dirnames, filenames in os.walk(usr):
        for name in dirnames + filenames:
            rel = (Path(dirpath) / name).relative_to(usr).as_posix()
            if rel not in known:
                report.problems.append(Problem(f"/usr/{rel}", "extra", "no stone owns it"))
        dirnames[:] = [d for d in dirnames
                       if (Path(dirpath) / d).relative_to(usr).as_posix() in known]
    return report


def _check_archived(s: Session, report: VerifyReport, good_inodes: dict[ObjectKey, int]) -> None:
    """Archived trees: every file present and still the store's inode (or hashing right).

    A corrupt store object restored by --fix gets a new inode; archived trees
    that shared the old one are caught here and relinked too.
    """
    with s.db.read() as c:
        archived = [st["id"] for st in s.db.states(c) if st["status"] == "archived"]
        layouts = {sid: s.db.state_layout(c, sid) for sid in archived}
    for sid, entries in layouts.items():
        tree = s.paths.state_tree(sid)
        prefix = str(tree.relative_to(s.paths.root))
        if read_state_id(tree) != sid:
            report.problems.append(Problem(prefix, "missing", f"archived tree of state {sid}"))
            continue
        for e in entries:
            p = tree / e.path
            try:
                st = p.lstat()
            except FileNotFoundError:
                report.problems.append(Problem(f"{prefix}/{e.path}", "missing"))
                continue
            if stat.S_IFMT(st.st_mode) != e.st_type:
                report.problems.append(Problem(f"{prefix}/{e.path}", "type", f"expected {e.kind}"))
            elif e.kind == FILE and e.size:
                key = ObjectKey(e.digest, e.installed_mode, e.uid, e.gid)
                if good_inodes.get(key) != st.st_ino and hash_file(p) != e.digest:
                    report.problems.append(Problem(f"{prefix}/{e.path}", "corrupt",
                                                   "content changed"))


def _restore_object(s: Session, key: ObjectKey) -> bool:
    """Rewrite one store object from a healthy sibling or from a cached stone."""
    from onix.stone import Stone

    dest = s.store.path(key)
    tmp = s.paths.store_tmp / f"fix-{key.name}"
    s.paths.store_tmp.mkdir(parents=True, exist_ok=True)
    for other, path in s.store.objects():
        if other.digest == key.digest and other != key and hash_file(path) == key.digest:
            shutil.copyfile(path, tmp)
            break
    else:
        for cached in sorted(s.paths.stone_cache.glob("*.stone")):
            with Stone(cached) as stone:
                if not any(d == key.digest for d, _o, _l in stone.index):
                    continue
                for digest, _length, chunks in stone.contents():
                    if digest == key.digest:
                        with open(tmp, "wb") as f:
                            for chunk in chunks:
                                f.write(chunk)
                        break
            if tmp.exists() and hash_file(tmp) == key.digest:
                break
            tmp.unlink(missing_ok=True)
    if not tmp.exists():
        return False
    os.chmod(tmp, key.mode)
    if os.geteuid() == 0:
        os.chown(tmp, key.uid, key.gid)
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
        fstx = s.db.state(c, live)["fstx"] if live else ""
        layouts: dict[int, dict[str, Entry]] = {}

        def layout(sid: int) -> dict[str, Entry]:
            if sid not in layouts:
                layouts[sid] = {e.path: e for e in s.db.state_layout(c, sid)}
            return layouts[sid]

        for path in paths:
            if path.startswith("/usr/"):
                rel = path[len("/usr/"):]
                if rel in GENERATED:
                    _rewrite_generated(s.paths.usr, rel, live, fstx)
                    continue
                e = layout(live).get(rel)
                if e is None:  # extra: no stone owns it
                    fsutil.remove_tree(s.paths.usr / rel)
                else:
                    _replace(s, e, s.paths.usr / rel)
            elif path.startswith(states_dir + "/"):
                sid_text, _, rest = path[len(states_dir) + 1:].partition("/")
                rel = rest.partition("/")[2]  # drop the leading "usr"
                e = layout(int(sid_text)).get(rel) if rel else None
                if e is not None:
                    _replace(s, e, s.paths.state_tree(int(sid_text)) / rel)
    if live is not None and read_state_id(s.paths.usr) != live:
        raise AssertionError("verify --fix changed the live state id")


def _rewrite_generated(usr: Path, rel: str, live: int, fstx: str) -> None:
    target = usr / rel
    data = f"{live}\n".encode() if rel == STATE_ID_FILE else os_release(live, fstx)
    target.unlink(missing_ok=True)
    target.write_bytes(data)
    os.chmod(target, 0o444)


def _replace(s: Session, e: Entry, target: Path) -> None:
    """Put one layout entry back exactly, replacing whatever is at its path."""
    if e.kind == DIR:
        if target.is_dir() and not target.is_symlink():
            os.chmod(target, e.installed_mode)
        else:
            if target.exists() or target.is_symlink():
                fsutil.remove_tree(target)
            os.mkdir(target, e.installed_mode)
        if os.geteuid() == 0:
            os.chown(target, e.uid, e.gid)
        return
    tmp = target.with_name(f".{target.name}.onix-fix")
    if tmp.exists() or tmp.is_symlink():
        tmp.unlink()
    if e.kind == SYMLINK:
        os.symlink(e.target, tmp)
    elif e.size == 0:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, e.installed_mode))
        os.chmod(tmp, e.installed_mode)
    else:
        os.link(s.store.path(ObjectKey(e.digest, e.installed_mode, e.uid, e.gid)), tmp)
    if os.geteuid() == 0:
        os.lchown(tmp, e.uid, e.gid)
    if target.is_dir() and not target.is_symlink():
        fsutil.remove_tree(target)
    os.rename(tmp, target)
