"""Stones: ONIX's package files. Reading, checking and packing them.

On-disk format, version 1 (all integers little-endian)
------------------------------------------------------
    file header, 32 bytes:
        magic        8   b"\\x00ONIXstn"
        version      u16 1
        payloads     u16 number of payloads that follow (4 in v1)
        reserved     20  zero
    then, for each payload, a 56-byte header followed by its stored bytes:
        kind         u8  1 meta, 2 layout, 3 index, 4 content
        compression  u8  0 none, 1 zstd
        reserved     u16 zero
        records      u32 entries in the payload (1 for meta)
        stored_size  u64 bytes that follow this header
        plain_size   u64 bytes after decompression
        checksum     32  blake3 of the stored bytes

    meta     zstd(JSON object): name, version, release, arch, summary, license,
             provides[], depends[] (each a name, a provider string or a versioned
             constraint `NAME OP VERSION`, canonical: see onix/repo/versions.py)
    layout   zstd(JSON array), one record per path, sorted by path:
             [path relative to /usr, "file"|"dir"|"symlink", mode, uid, gid,
              size, blake3 hex (files) or link target (symlinks) or ""]
    index    zstd(JSON array), one record per unique non-empty content, sorted
             by digest: [blake3 hex, offset, length] into the plain content
    content  one zstd frame: the unique contents concatenated in index order

JSON is written canonically (sorted keys, no spaces) and nothing records a
time, so one input tree always packs to byte-identical stones. A reader checks
the magic, the version, every payload's size against the file and its
checksum before it trusts a byte, and hashes every content blob against the
index while extracting.
"""

from __future__ import annotations

import json
import os
import stat
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from onix.core.errors import DiskFullError, StoneError
from onix.core.fsutil import disk_full
from onix.machine.layout import DIR, FILE, SYMLINK, Entry, check_entry, is_digest

MAGIC = b"\x00ONIXstn"
VERSION = 1
FILE_HEADER = struct.Struct("<8sHH20s")
PAYLOAD_HEADER = struct.Struct("<BBHIQQ32s")
META, LAYOUT, INDEX, CONTENT = 1, 2, 3, 4
KIND_NAMES = {META: "meta", LAYOUT: "layout", INDEX: "index", CONTENT: "content"}
NONE, ZSTD = 0, 1
READ_CHUNK = 1 << 20
# Metadata, layout and index are read whole; a header may not make the reader allocate
# more than this (a 1M-entry layout is ~100 MiB of JSON). Content is always streamed.
MAX_SMALL_PAYLOAD = 512 << 20
META_KEYS = ("name", "version", "release", "arch", "summary", "license", "provides", "depends")


@dataclass
class StoneMeta:
    name: str
    version: str
    release: int = 1
    arch: str = "x86_64"
    summary: str = ""
    license: str = ""
    provides: list[str] = field(default_factory=list)
    depends: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in META_KEYS}

    @property
    def evr(self) -> str:
        return f"{self.version}-{self.release}"


@dataclass(frozen=True)
class PayloadHeader:
    kind: int
    compression: int
    records: int
    stored_size: int
    plain_size: int
    checksum: bytes
    offset: int  # where the stored bytes start in the file


def _canonical_json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _blake3(data: bytes) -> bytes:
    import blake3

    return blake3.blake3(data).digest()


class Stone:
    """A stone opened for reading. Metadata, layout and index are checked on open."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.payloads: dict[int, PayloadHeader] = {}
        try:
            self._f: BinaryIO = open(self.path, "rb")  # noqa: SIM115 - closed in close()
        except FileNotFoundError:
            raise StoneError("no such stone file", path=path, hint="check the path") from None
        except IsADirectoryError:
            raise StoneError("is a directory, not a stone", path=path,
                             hint="pack it first: onix stone pack DIR -o X.stone") from None
        try:
            self._read_headers()
            self.meta = self._read_meta()
            self.layout = self._read_layout()
            self.index = self._read_index()
        except BaseException:
            self._f.close()
            raise

    # -- reading -----------------------------------------------------------

    def _bad(self, what: str) -> StoneError:
        return StoneError(what, path=self.path, hint="the stone is corrupt or truncated; "
                          "fetch or rebuild it")

    def _read_headers(self) -> None:
        size = os.fstat(self._f.fileno()).st_size
        raw = self._f.read(FILE_HEADER.size)
        if len(raw) < FILE_HEADER.size:
            raise self._bad("file too short for a stone header")
        magic, version, count, reserved = FILE_HEADER.unpack(raw)
        if magic != MAGIC:
            raise StoneError("not a stone (wrong magic)", path=self.path,
                             hint="pass a .stone file made by onix stone pack or the builder")
        if version != VERSION:
            raise StoneError(f"stone format version {version} is not supported (this onix reads "
                             f"version {VERSION})", path=self.path, hint="upgrade onix")
        if any(reserved):
            raise self._bad("reserved header bytes are not zero")
        pos = FILE_HEADER.size
        for _ in range(count):
            self._f.seek(pos)
            raw = self._f.read(PAYLOAD_HEADER.size)
            if len(raw) < PAYLOAD_HEADER.size:
                raise self._bad("truncated payload header")
            kind, comp, reserved, records, stored, plain, checksum = PAYLOAD_HEADER.unpack(raw)
            pos += PAYLOAD_HEADER.size
            if reserved:
                raise self._bad(f"reserved bytes of payload kind {kind} are not zero")
            if kind not in KIND_NAMES or comp not in (NONE, ZSTD) or kind in self.payloads:
                raise self._bad(f"unknown or repeated payload kind {kind}")
            if pos + stored > size:
                raise self._bad(f"{KIND_NAMES[kind]} payload runs past the end of the file "
                                f"({pos + stored} > {size} bytes)")
            self.payloads[kind] = PayloadHeader(kind, comp, records, stored, plain, checksum, pos)
            pos += stored
        if pos != size:
            raise self._bad(f"{size - pos} bytes of trailing garbage")
        missing = [KIND_NAMES[k] for k in KIND_NAMES if k not in self.payloads]
        if missing:
            raise self._bad(f"missing payloads: {', '.join(missing)}")

    def _read_small(self, kind: int) -> object:
        h = self.payloads[kind]
        if h.plain_size > MAX_SMALL_PAYLOAD or h.stored_size > MAX_SMALL_PAYLOAD:
            raise self._bad(f"{KIND_NAMES[kind]} payload claims "
                            f"{max(h.plain_size, h.stored_size)} bytes, more than this reader "
                            f"accepts ({MAX_SMALL_PAYLOAD})")
        self._f.seek(h.offset)
        stored = self._f.read(h.stored_size)
        if _blake3(stored) != h.checksum:
            raise self._bad(f"{KIND_NAMES[kind]} payload checksum mismatch")
        data = stored
        if h.compression == ZSTD:
            import zstandard

            try:
                data = zstandard.ZstdDecompressor().decompress(stored, max_output_size=h.plain_size)
            except zstandard.ZstdError as e:
                raise self._bad(f"{KIND_NAMES[kind]} payload does not decompress: {e}") from None
        if len(data) != h.plain_size:
            raise self._bad(f"{KIND_NAMES[kind]} payload has the wrong size")
        try:
            return json.loads(data)
        except ValueError:
            raise self._bad(f"{KIND_NAMES[kind]} payload is not valid JSON") from None

    def _read_meta(self) -> StoneMeta:
        raw = self._read_small(META)
        if not isinstance(raw, dict):
            raise self._bad("metadata is not an object")
        missing = [k for k in META_KEYS if k not in raw]
        if missing:
            raise self._bad(f"metadata lacks {', '.join(missing)}")
        meta = StoneMeta(**{k: raw[k] for k in META_KEYS})
        types_ok = (all(isinstance(getattr(meta, k), str) for k in
                        ("name", "version", "arch", "summary", "license"))
                    and isinstance(meta.release, int) and not isinstance(meta.release, bool)
                    and 0 <= meta.release < 2**31
                    and all(isinstance(v, list) and all(isinstance(x, str) for x in v)
                            for v in (meta.provides, meta.depends)))
        if not types_ok or not meta.name or not meta.version:
            raise self._bad("metadata fields have the wrong types or are empty")
        if not all(c.isascii() and (c.isalnum() or c in "-_.+") for c in meta.name):
            raise StoneError(f"stone name {meta.name!r} has characters outside [A-Za-z0-9-_.+]",
                             path=self.path, hint="rebuild the stone")
        # canonical from here on: the index and the download check compare these strings
        meta.depends = check_depends(meta.depends, where=str(self.path))
        return meta

    def _read_layout(self) -> list[Entry]:
        raw = self._read_small(LAYOUT)
        if not isinstance(raw, list) or len(raw) != self.payloads[LAYOUT].records:
            raise self._bad("layout payload is not a list of the declared length")
        entries = []
        where = str(self.path)
        for rec in raw:
            try:
                if not isinstance(rec, list):
                    raise TypeError
                e = Entry.from_record(rec)
            except (TypeError, ValueError):
                raise self._bad(f"malformed layout record {str(rec)[:80]}") from None
            check_entry(e, where=where)
            entries.append(e)
        paths = [e.path for e in entries]
        if len(set(paths)) != len(paths):
            dup = next(p for p in paths if paths.count(p) > 1)
            raise StoneError(f"layout lists /usr/{dup} twice", path=self.path,
                             hint="rebuild the stone")
        return entries

    def _read_index(self) -> list[tuple[str, int, int]]:
        raw = self._read_small(INDEX)
        plain = self.payloads[CONTENT].plain_size
        if not isinstance(raw, list) or len(raw) != self.payloads[INDEX].records:
            raise self._bad("content index is not a list of the declared length")
        out = []
        expect = 0
        try:
            for digest, offset, length in raw:
                if offset != expect or not isinstance(length, int) or length <= 0 \
                        or not is_digest(digest):
                    raise ValueError
                expect = offset + length
                out.append((str(digest), int(offset), int(length)))
        except (TypeError, ValueError):
            raise self._bad("content index is malformed") from None
        if expect != plain:
            raise self._bad("content index does not cover the content payload")
        lengths = {d: n for d, _, n in out}
        if len(lengths) != len(out):
            raise self._bad("content index lists a digest twice")
        for e in self.layout:
            if e.kind == FILE and e.size > 0 and lengths.get(e.digest) != e.size:
                raise self._bad(f"/usr/{e.path} has no content of its size in the stone")
        return out

    def contents(self) -> Iterator[tuple[str, int, Iterator[bytes]]]:
        """Yield (digest, length, chunks) for each unique content, in index order.

        The stored bytes' checksum is verified as they stream; a mismatch raises
        StoneError after the last blob, so callers must not admit anything
        before this generator is exhausted.
        """
        import blake3
        import zstandard

        h = self.payloads[CONTENT]
        self._f.seek(h.offset)
        summer = blake3.blake3()
        remaining = h.stored_size
        f = self._f

        class Reader:
            def read(self, n: int = -1) -> bytes:
                nonlocal remaining
                if remaining <= 0:
                    return b""
                n = remaining if n < 0 else min(n, remaining)
                data = f.read(n)
                if not data:
                    raise EOFError
                remaining -= len(data)
                summer.update(data)
                return data

        source = Reader()
        reader = (zstandard.ZstdDecompressor().stream_reader(source, read_size=READ_CHUNK)
                  if h.compression == ZSTD else source)

        def chunks(length: int) -> Iterator[bytes]:
            left = length
            while left:
                try:
                    data = reader.read(min(left, READ_CHUNK))
                except (zstandard.ZstdError, EOFError) as e:
                    raise self._bad(f"content payload does not decompress: {e}") from None
                if not data:
                    raise self._bad("content payload ends early")
                left -= len(data)
                yield data

        for digest, _offset, length in self.index:
            it = chunks(length)
            yield digest, length, it
            for _ in it:  # drain what the caller did not read
                pass
        while source.read(READ_CHUNK):
            pass
        if summer.digest() != h.checksum:
            raise self._bad("content payload checksum mismatch")

    def check_content(self) -> None:
        """Hash every content blob against the index (what install does, without writing)."""
        import blake3

        for digest, _length, chunks in self.contents():
            h = blake3.blake3()
            for chunk in chunks:
                h.update(chunk)
            if h.hexdigest() != digest:
                raise self._bad(f"content {digest[:16]}… does not match its digest")

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> Stone:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> dict:
        files = [e for e in self.layout if e.kind == FILE]
        return {
            "path": str(self.path),
            "format": VERSION,
            "meta": self.meta.as_dict(),
            "payloads": {KIND_NAMES[k]: {"stored": h.stored_size, "plain": h.plain_size,
                                         "records": h.records, "checksum": h.checksum.hex()}
                         for k, h in sorted(self.payloads.items())},
            "entries": len(self.layout),
            "files": len(files),
            "unique_contents": len(self.index),
            "installed_size": sum(e.size for e in files),
        }


def digest_file(path: Path) -> str:
    """blake3 of a whole stone file: its identity in the database and the cache."""
    from onix.machine.store import hash_file

    return hash_file(path)


# -- packing ---------------------------------------------------------------


def scan_tree(usr: Path) -> list[Entry]:
    """Describe the tree below `usr` as layout entries (owner recorded as root)."""
    entries: list[Entry] = []
    for dirpath, dirnames, filenames in os.walk(usr):
        dirnames.sort()
        base = Path(dirpath)
        for name in dirnames + sorted(filenames):
            p = base / name
            rel = p.relative_to(usr).as_posix()
            st = p.lstat()
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                entries.append(Entry(rel, SYMLINK, 0o777, target=os.readlink(p)))
            elif stat.S_ISDIR(st.st_mode):
                entries.append(Entry(rel, DIR, mode))
            elif stat.S_ISREG(st.st_mode):
                from onix.machine.store import hash_file

                entries.append(Entry(rel, FILE, mode, size=st.st_size, digest=hash_file(p)))
            else:
                raise StoneError("device nodes, sockets and fifos cannot go in a stone", path=p,
                                 hint="remove it from the tree")
    # os.walk descends into symlinked dirs only with followlinks; it lists them in dirnames
    return sorted(entries, key=lambda e: e.path)


def check_depends(depends: list[str], *, where: str) -> list[str]:
    """The meta's depends, each parsed (onix.repo.versions grammar: a name, a provider
    string, or `NAME OP VERSION`), in canonical form; one that does not parse is refused
    naming `where` (the stone's path)."""
    from onix.core.errors import OnixError
    from onix.repo.versions import parse_dep

    out = []
    for d in depends:
        try:
            out.append(str(parse_dep(d, where=where)))
        except OnixError as e:
            raise StoneError(f"metadata {e.message}", path=where, hint=e.hint) from None
    return out


def pack(src: Path, out: Path, meta: StoneMeta, *, level: int = 6,
         progress: Callable[[int], None] | None = None) -> dict:
    """Pack DESTDIR `src` (which must hold only usr/) into a stone at `out`; its depends
    are written canonically (`hello>=1` → `hello >= 1`), one that does not parse is
    refused before anything is written."""
    src = Path(src)
    meta.depends = sorted(set(check_depends(meta.depends, where=str(out))))
    if not (src / "usr").is_dir():
        raise StoneError("no usr/ directory to pack", path=src,
                         hint="pass a DESTDIR whose payload is under usr/")
    others = sorted(p.name for p in src.iterdir() if p.name != "usr")
    if others:
        raise StoneError(f"stones may only hold /usr; {src} also has {', '.join(others)}",
                         path=src / others[0], hint="move those files under usr/ or drop them")
    entries = scan_tree(src / "usr")
    for e in entries:
        check_entry(e, where=str(src))
    by_digest: dict[str, Entry] = {}
    for e in entries:
        if e.kind == FILE and e.size > 0:
            by_digest.setdefault(e.digest, e)
    index: list[list] = []
    offset = 0
    for digest in sorted(by_digest):
        index.append([digest, offset, by_digest[digest].size])
        offset += by_digest[digest].size
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        _write_stone(tmp, src, meta, entries, index, by_digest, offset, level, progress)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)  # no half-written stone next to the real one
        if disk_full(exc):
            raise DiskFullError("no space left while packing", path=out,
                                hint="free space or write the stone elsewhere with -o") from None
        raise
    os.replace(tmp, out)
    with Stone(out) as s:
        return s.describe()


def _write_stone(tmp: Path, src: Path, meta: StoneMeta, entries: list[Entry], index: list[list],
                 by_digest: dict[str, Entry], content_size: int, level: int,
                 progress: Callable[[int], None] | None) -> None:
    import blake3
    import zstandard

    cctx = zstandard.ZstdCompressor(level=level, write_checksum=False, write_content_size=False)

    def payload(kind: int, obj: object, records: int) -> bytes:
        plain = _canonical_json(obj)
        stored = cctx.compress(plain)
        return PAYLOAD_HEADER.pack(kind, ZSTD, 0, records, len(stored), len(plain),
                                   _blake3(stored)) + stored

    with open(tmp, "wb") as f:
        f.write(FILE_HEADER.pack(MAGIC, VERSION, 4, bytes(20)))
        f.write(payload(META, meta.as_dict(), 1))
        f.write(payload(LAYOUT, [e.as_record() for e in entries], len(entries)))
        f.write(payload(INDEX, index, len(index)))
        header_at = f.tell()
        f.write(bytes(PAYLOAD_HEADER.size))
        summer = blake3.blake3()
        stored = 0

        class Sink:
            def write(self, data: bytes) -> int:
                nonlocal stored
                summer.update(data)
                stored += len(data)
                return f.write(data)

        with cctx.stream_writer(Sink(), closefd=False) as zw:
            for digest, _off, _len in index:
                # Streamed in chunks: a multi-GiB file must not need multi-GiB of memory.
                h = blake3.blake3()
                with open(src / "usr" / by_digest[digest].path, "rb") as blob:
                    while chunk := blob.read(READ_CHUNK):
                        h.update(chunk)
                        zw.write(chunk)
                        if progress:
                            progress(len(chunk))
                if h.hexdigest() != digest:
                    raise StoneError("file changed while packing", path=by_digest[digest].path,
                                     hint="pack again from a quiet tree")
        f.seek(header_at)
        f.write(PAYLOAD_HEADER.pack(CONTENT, ZSTD, 0, len(index), stored, content_size,
                                    summer.digest()))
