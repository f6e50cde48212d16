"""Fetching stones a repository offers: downloaded once, checked, kept by sha256.

    <root>/.onix/cache/downloads/<sha256>.stone   fetched stones, by the sha256 the index
                                           gives; written to `.<sha256>.stone.<pid>.tmp`,
                                           checked (size, sha256, and the stone's own
                                           name, version and release against the index),
                                           then renamed
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from onix.core.errors import OnixError
from onix.core.fsutil import fsync_dir, sha256_file
from onix.core.paths import DOWNLOADS_DIR, RootPaths
from onix.repo import config, transport
from onix.repo.versions import Available


def fetch(paths: RootPaths, entry: Available, *,
          progress: Callable[[int], None] | None = None) -> Path:
    """The local path of `entry`'s stone, downloaded (or reused) and sha256-verified."""
    root = paths.root
    created: list[Path] = []
    d = config.make_dirs(root, DOWNLOADS_DIR, created)
    final = d / f"{entry.sha256}.stone"
    try:
        if final.is_file() and not final.is_symlink():
            if (sha256_file(final), final.stat().st_size) == (entry.sha256, entry.size):
                _check_meta(entry, final)
                if progress:
                    progress(entry.size)
                return final
            final.unlink()  # a damaged cache entry: fetch it again
        # the pid keeps two onix processes fetching one stone from writing one temp file
        tmp = d / f".{entry.sha256}.stone.{os.getpid()}.tmp"
        _download(entry, tmp, progress)
        try:
            _check_meta(entry, tmp)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.rename(tmp, final)
        fsync_dir(d)
        return final
    except BaseException:
        config.undo_dirs(created)
        raise


def _check_meta(entry: Available, path: Path) -> None:
    """The stone is the one its index entry describes. Resolution chose it by the
    entry's name, version and provides; a stone that says otherwise (an index written
    by hand, or signed over the wrong file) would install something nobody asked for
    under a name nobody chose, and be recorded as asked for."""
    from onix.core.errors import StoneError
    from onix.machine.stone import Stone

    try:
        with Stone(path) as s:
            m = s.meta
    except StoneError as e:
        raise OnixError(f"is not a valid stone ({e.message}), though its index entry "
                        f"({entry.name} {entry.evr}) verified", path=entry.location,
                        hint=f"ask the owner of repository {entry.repo} to re-index it "
                        "with onix index") from None
    said = (entry.name, entry.version, entry.release, entry.arch,
            sorted(set(entry.provides)), sorted(set(entry.depends)))
    have = (m.name, m.version, m.release, m.arch, sorted(set(m.provides)),
            sorted(set(m.depends)))
    if said != have:
        what = [f"{k} {a!r} (index) vs {b!r} (stone)" for k, a, b in zip(
            ("name", "version", "release", "arch", "provides", "depends"), said, have,
            strict=True) if a != b]
        raise OnixError(f"the stone is not what repository {entry.repo}'s index says "
                        f"({'; '.join(what)})", path=entry.location,
                        hint=f"ask the owner of repository {entry.repo} to re-index it with "
                        "onix index; nothing was installed")


def _download(entry: Available, tmp: Path, progress: Callable[[int], None] | None) -> None:
    where = entry.location
    try:
        stream = transport.open_stream(entry.uri, entry.file)
    except transport.NotFound:
        raise OnixError(f"not found (repository {entry.repo} lists {entry.name} {entry.evr})",
                        path=where, hint=f"the repository changed: onix repo update "
                        f"{entry.repo}") from None
    h = hashlib.sha256()
    size = 0
    try:
        with stream, open(tmp, "wb") as out:
            for chunk in transport.chunks(stream, where):
                size += len(chunk)
                if size > entry.size:
                    break  # a wrong or endless response must not fill the disk
                h.update(chunk)
                out.write(chunk)
                if progress:
                    progress(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        if (h.hexdigest(), size) != (entry.sha256, entry.size):
            if size > entry.size:
                got = f"is larger than the {entry.size} bytes the index gives"
            else:
                got = (f"has sha256 {h.hexdigest()} ({size} bytes), the index says "
                       f"{entry.sha256} ({entry.size} bytes)")
            raise OnixError(f"checksum mismatch: the download of {entry.name} {entry.evr} "
                            f"{got}", path=where,
                            hint=f"the stone changed after indexing or was damaged on the way: "
                            f"onix repo update {entry.repo} and retry, or ask the "
                            "repository's owner to re-index")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
