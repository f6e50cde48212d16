"""Import: stream the stones' content into the store, and take it back if asked.

Each blob is hashed as it is written under store/.tmp and admitted into the store by
its digest, mode and owner (store.ImportBatch); the stone rows and their layouts go
into the database. `Imported.undo` removes exactly what one import added, for a
transaction that fails before its exchange. `content_reader` reads a file's bytes by
its layout entry before anything is imported (the boot checks look into kernels and
command lines this way).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from onix.core import faults, fsutil
from onix.core.errors import DiskFullError, StoneError
from onix.machine.candidates import Candidate
from onix.machine.layout import FILE, Entry
from onix.machine.session import Session
from onix.machine.store import DigestMismatch, ObjectKey


def content_reader(s: Session, cands: list[Candidate]) -> Callable[[Entry], bytes]:
    """A file's bytes by its layout entry, before import: from the store, or else from a
    stone on the command line (one pass over its content; the digest is checked here,
    since nothing has verified that content yet)."""
    import blake3

    found: dict[str, bytes] = {}

    def read(e: Entry) -> bytes:
        key = ObjectKey(e.digest, e.installed_mode, e.uid, e.gid)
        if s.store.has(key):
            return fsutil.read_nofollow(s.store.path(key))
        if e.digest not in found:
            for cand in cands:
                if not any(x.digest == e.digest for x in cand.layout):
                    continue
                for digest, _length, chunks in cand.stone.contents():
                    if digest == e.digest:
                        data = b"".join(chunks)
                        if blake3.blake3(data).hexdigest() != digest:
                            raise StoneError(f"content {digest[:16]}… is corrupt",
                                             path=cand.path, hint="the stone is damaged")
                        found[digest] = data
                break
        if e.digest not in found:
            raise StoneError(f"no content for usr/{e.path}", hint="the stone is damaged")
        return found[e.digest]

    return read


def _objects_for(entries: list[Entry]) -> set[ObjectKey]:
    return {ObjectKey(e.digest, e.installed_mode, e.uid, e.gid)
            for e in entries if e.kind == FILE and e.size > 0}


@dataclass
class Imported:
    """What one import added, so a transaction that then fails can take it back."""

    ids: dict[str, int] = field(default_factory=dict)  # stone name → id, every candidate
    new_ids: list[int] = field(default_factory=list)  # rows this import created
    objects: list[Path] = field(default_factory=list)
    shards: list[Path] = field(default_factory=list)
    cached: list[Path] = field(default_factory=list)
    nbytes: int = 0

    def undo(self, s: Session) -> None:
        """Forget the new stones and delete what only they brought (state rows first)."""
        with s.db.write() as c:
            s.db.delete_stones(c, [i for i in self.new_ids if i in s.db.unused_stones(c)])
            s.db.bump_store_bytes(c, -self.nbytes)
        for p in self.objects + self.cached:
            p.unlink(missing_ok=True)
        for shard in self.shards:
            with suppress(OSError):
                shard.rmdir()


def import_stones(s: Session, cands: list[Candidate]) -> Imported:
    """Import new stones: store objects + cached stone + DB rows, all or nothing."""
    ids: dict[str, int] = {}
    fresh: list[Candidate] = []
    with s.db.read() as c:
        for cand in cands:
            row = s.db.stone_by_digest(c, cand.digest)
            if row:
                ids[cand.meta["name"]] = row["id"]
            else:
                fresh.append(cand)
    if not fresh:
        return Imported(ids=ids)
    s.store.clean_tmp()
    batch = s.store.batch()
    cached: list[Path] = []
    recorded = False
    total = sum(e.size for cand in fresh for e in cand.layout if e.kind == FILE)
    s.progress.start("importing", total)
    try:
        keys: set[ObjectKey] = set()
        for cand in fresh:
            need = _objects_for(cand.layout)
            keys |= need
            missing = {k.digest for k in need if not s.store.has(k)}
            first_mode = {}
            for k in sorted(need):  # admit() takes keys in this order; the first needs no chmod
                first_mode.setdefault(k.digest, k.mode)
            try:
                for digest, length, chunks in cand.stone.contents():
                    if digest in missing:
                        batch.write(digest, chunks, mode=first_mode[digest])
                    s.progress.advance(length)
            except DigestMismatch as e:
                raise StoneError(f"content {e.expected[:16]}… is corrupt ({e})",
                                 path=cand.path, hint="the stone is damaged; fetch or "
                                 "rebuild it") from None
        # The cached stone is a copy, never a hardlink: `cp new.stone mine.stone` rewrites the
        # user's inode in place, and the cache is what verify --fix restores from. It is
        # copied before admit() so that admit's syncfs() makes it durable too.
        staged_cache = []
        for cand in fresh:
            dest = s.paths.stone_cache / f"{cand.digest}.stone"
            if not dest.exists():
                tmp = dest.with_name(f".{dest.name}.tmp")
                shutil.copyfile(cand.path, tmp)
                staged_cache.append((tmp, dest))
                cached.append(tmp)
        faults.point("install", "admit")
        batch.admit(keys)
        for tmp, dest in staged_cache:
            os.rename(tmp, dest)
            cached.append(dest)
        faults.point("install", "record")
        new_ids = []
        with s.db.write() as c:
            for cand in fresh:
                ids[cand.meta["name"]] = s.db.add_stone(c, cand.digest, cand.meta, cand.layout)
                new_ids.append(ids[cand.meta["name"]])
            s.db.bump_store_bytes(c, batch.admitted_bytes)
            # From here the commit may have happened by the time an interruption lands;
            # orphaned objects are prune's to collect, deleting referenced ones is worse.
            recorded = True
    except BaseException as exc:
        if recorded:  # e.g. Ctrl-C right after the commit: the rows need these objects
            raise
        batch.undo()
        for p in cached:
            p.unlink(missing_ok=True)
        if fsutil.disk_full(exc):
            raise DiskFullError("no space left while importing stones", path=s.paths.store,
                                hint="free space on that file system (onix prune helps) and "
                                "retry; nothing was changed") from None
        raise
    finally:
        batch.close()
        s.progress.finish()
    return Imported(ids=ids, new_ids=new_ids, objects=list(batch.admitted),
                    shards=list(batch.new_shards), cached=cached, nbytes=batch.admitted_bytes)
