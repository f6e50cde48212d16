"""The content-addressed store under <root>/.onix/store.

On-disk format
--------------
    store/<d0d1>/<digest>.<mode>.<uid>.<gid>

`digest` is the blake3 hex digest of the file's content, `mode` the installed
permission bits in four octal digits (write bits already stripped), `uid` and
`gid` the owner. The object *is* the file every state hardlinks into its /usr,
so everything an inode carries is part of its name: a file that two stones ship
with different modes becomes two objects with the same content (like OSTree's
file objects, whose checksum covers mode and owner). One level of 256 shards
keeps directories small without paying a mkdir per object.

Empty files are never stored: the blit makes each one fresh, because a single
shared empty inode would hit ext4's 65,000-link limit (moss issue #372).

Writes: content is written under store/.tmp/<batch>/, hashed while written,
flushed with one syncfs(), then renamed into place; a digest that does not
match is never admitted. A crash leaves only .tmp/ debris, removed by the next
onix command that takes the root lock.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

from onix.core import fsutil
from onix.core.paths import RootPaths
from onix.machine.layout import is_digest

CHUNK = 1 << 20


class ObjectKey(NamedTuple):
    """What names a store object: content digest, installed mode, owner. A tuple, so it
    compares equal to the (digest, mode, uid, gid) rows the database hands back."""

    digest: str
    mode: int
    uid: int = 0
    gid: int = 0

    @property
    def name(self) -> str:
        return f"{self.digest}.{self.mode:04o}.{self.uid}.{self.gid}"

    @classmethod
    def parse(cls, name: str) -> ObjectKey | None:
        parts = name.split(".")
        if len(parts) != 4 or not is_digest(parts[0]):
            return None
        try:
            return cls(parts[0], int(parts[1], 8), int(parts[2]), int(parts[3]))
        except ValueError:
            return None


def hash_file(path: Path | str, *, size: int | None = None, threads: bool = True,
              follow_symlinks: bool = True) -> str:
    """blake3 of a file: plain reads for small files, mmap (on all cores) for large ones.

    `size` saves a stat when the caller has one. threads=False inside
    onix.parallel's split: the two processes already use both cores, and
    blake3's thread pool does not survive a fork (the child would wait on
    threads that do not exist).
    """
    import blake3

    if size is None:
        size = os.stat(path).st_size
    if size >= 1 << 20:
        h = blake3.blake3(max_threads=blake3.blake3.AUTO if threads else 1)
        return h.update_mmap(path).hexdigest()
    fd = os.open(path, os.O_RDONLY | (0 if follow_symlinks else os.O_NOFOLLOW))
    try:
        data = os.read(fd, size + 1)
        while len(data) <= size:  # a short read on a file that grew or a slow fs
            more = os.read(fd, size + 1 - len(data))
            if not more:
                break
            data += more
    finally:
        os.close(fd)
    return blake3.blake3(data).hexdigest()


class Store:
    def __init__(self, paths: RootPaths):
        self.paths = paths
        self.dir = paths.store

    def path(self, key: ObjectKey) -> Path:
        return self.dir / key.digest[:2] / key.name

    def has(self, key: ObjectKey) -> bool:
        return os.path.exists(self.path(key))

    def objects(self) -> Iterator[tuple[ObjectKey, Path]]:
        if not self.dir.is_dir():
            return
        for shard in sorted(self.dir.iterdir()):
            if shard.name.startswith(".") or not shard.is_dir():
                continue
            for obj in sorted(shard.iterdir()):
                key = ObjectKey.parse(obj.name)
                if key is not None:
                    yield key, obj

    def size_bytes(self) -> int:
        total = 0
        for _key, p in self.objects():
            with contextlib.suppress(FileNotFoundError):
                total += p.stat().st_size
        return total

    def remove(self, key: ObjectKey) -> int:
        p = self.path(key)
        try:
            size = p.stat().st_size
            p.unlink()
        except FileNotFoundError:
            return 0
        return size

    def clean_tmp(self) -> None:
        """Drop debris of imports that never finished (they admitted nothing)."""
        if self.paths.store_tmp.exists():
            for d in self.paths.store_tmp.iterdir():
                fsutil.remove_tree(d)
        if self.paths.stone_cache.exists():
            for p in self.paths.stone_cache.glob(".*.tmp"):  # cached stones not yet renamed
                p.unlink()

    def batch(self) -> ImportBatch:
        return ImportBatch(self)


class DigestMismatch(Exception):
    def __init__(self, expected: str, actual: str):
        super().__init__(f"content hashes to {actual[:16]}…, layout says {expected[:16]}…")
        self.expected = expected
        self.actual = actual


class ImportBatch:
    """Objects written and verified together, admitted together, or not at all."""

    def __init__(self, store: Store):
        self.store = store
        self.tmp = store.paths.store_tmp / uuid.uuid4().hex
        self.tmp.mkdir(parents=True)
        self.content: dict[str, tuple[str, int]] = {}  # digest → (tmp path, its mode)
        self.admitted: list[Path] = []
        self.new_shards: list[Path] = []
        self.bytes_written = 0
        self.sizes: dict[str, int] = {}
        self.admitted_bytes = 0

    def write(self, digest: str, chunks: Iterable[bytes], *, mode: int = 0o444) -> None:
        """Write one content blob, hashing as it goes; raise DigestMismatch if it lies.

        `mode` is the mode of the first object this content becomes, set on the
        open file so admitting it needs no chmod.
        """
        import blake3

        if not is_digest(digest):
            raise ValueError(f"not a blake3 digest: {digest[:80]!r}")
        if digest in self.content:
            return
        h = blake3.blake3()
        path = f"{self.tmp}/{digest}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            for chunk in chunks:
                h.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
                self.bytes_written += len(chunk)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        actual = h.hexdigest()
        if actual != digest:
            raise DigestMismatch(digest, actual)
        self.content[digest] = (path, mode)
        self.sizes[digest] = os.path.getsize(path)

    def admit(self, keys: Iterable[ObjectKey]) -> list[Path]:
        """Turn written content into store objects for every key; returns new object paths.

        Keys whose object already exists are skipped; the batch's content for
        them was only needed to check the stone.
        """
        euid, egid = os.geteuid(), os.getegid()
        store = str(self.store.dir)
        shards = {e.name for e in os.scandir(store) if e.is_dir()}
        pending: list[tuple[str, str, str]] = []
        used: set[str] = set()
        for key in sorted(set(keys)):
            shard = key.digest[:2]
            dest = f"{store}/{shard}/{key.name}"
            if shard in shards and os.path.exists(dest):
                continue
            src, written_mode = self.content[key.digest]
            if key.digest in used:  # the same content with another mode or owner: a copy
                staged = f"{src}.{key.mode:o}.{key.uid}.{key.gid}"
                shutil.copyfile(src, staged)
                fsutil.set_owner_and_mode(staged, uid=key.uid, gid=key.gid, mode=key.mode)
            else:
                staged = src
                used.add(key.digest)
                if (key.uid, key.gid) != (euid, egid) or written_mode != key.mode:
                    fsutil.set_owner_and_mode(staged, uid=key.uid, gid=key.gid, mode=key.mode)
            pending.append((staged, shard, dest))
        # Before any rename: content must be on disk, so an admitted object is never torn.
        fsutil.syncfs(self.tmp)
        for staged, shard, dest in pending:
            if shard not in shards:
                os.mkdir(f"{store}/{shard}")
                shards.add(shard)
                self.new_shards.append(self.store.dir / shard)
            os.rename(staged, dest)
            self.admitted.append(Path(dest))
            self.admitted_bytes += self.sizes[Path(dest).name.partition(".")[0]]
        fsutil.syncfs(self.store.dir)
        return list(self.admitted)

    def undo(self) -> None:
        """Remove what this batch admitted (the DB commit that should follow failed)."""
        for p in self.admitted:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        self.admitted.clear()
        for shard in self.new_shards:
            # Shards this batch created go too, so a failed import leaves no trace.
            with contextlib.suppress(OSError):
                shard.rmdir()
        self.close()

    def close(self) -> None:
        fsutil.remove_tree(self.tmp)

