"""Small file-system primitives the engine's crash safety rests on.

Python's standard library has no `renameat2()` and no `syncfs()`, so both are
called through libc. Everything else here is a thin, documented wrapper so the
transaction code reads as a list of steps.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import shutil
from pathlib import Path

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

AT_FDCWD = -100
RENAME_EXCHANGE = 1 << 1


def exchange(a: Path, b: Path) -> None:
    """Atomically swap two paths with renameat2(RENAME_EXCHANGE).

    Both must exist on one file system. Either the swap happens or nothing
    does; there is no moment where one of the names is missing.
    """
    rc = _libc.renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"renameat2(RENAME_EXCHANGE) failed: {os.strerror(err)}", str(a))


def syncfs(path: Path) -> None:
    """Flush the whole file system holding `path` to disk.

    One syncfs() after writing thousands of store objects costs about what a
    single fsync does; an fsync per object would dominate import time.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY if path.is_dir() else os.O_RDONLY)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename inside it is durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def mkdirs(path: Path, mode: int = 0o755) -> None:
    """mkdir -p with the mode set explicitly: a root seeded under umask 027 must still
    let users reach /etc/nix, /run/opengl-driver, the store and the services' scan
    directory (s6 tools run as other users read it)."""
    missing = []
    p = path
    while not p.exists() and not p.is_symlink():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir()
        os.chmod(d, mode)


def atomic_write(path: Path, data: bytes, *, mode: int | None = 0o644,
                 owner: tuple[int, int] | None = None) -> None:
    """Write a whole file so that readers see the old or the new content, never a part.

    Temp name beside it (created O_EXCL|O_NOFOLLOW: a planted symlink is never written
    through), owner and mode set before it takes the old file's place, fsync, rename,
    fsync of the directory. `mode=None` sets no mode (vfat has none and refuses some).
    A failed write takes its temp file away again (a full disk must not stay full of
    it); errors name `path`.
    """
    tmp = path.with_name(f".{path.name}.onix-tmp")
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()  # debris of an earlier, interrupted write
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600
                     if mode is not None else 0o644)
        try:
            if owner is not None:
                os.fchown(fd, *owner)
            if mode is not None:
                os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        if tmp.exists() or tmp.is_symlink():
            with contextlib.suppress(OSError):
                tmp.unlink()
        if e.filename is None or e.filename == str(tmp):
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise


def replace_file(path: Path, data: bytes) -> None:
    """atomic_write for the ESP: the directory is made, no mode is set (FAT)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data, mode=None)


def read_nofollow(path: Path) -> bytes:
    """Read a file without following a symlink at its last component (ELOOP if it is one)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


def atomic_symlink(target: str, path: Path) -> None:
    """Point `path` at `target`, replacing an existing symlink atomically."""
    tmp = path.with_name(f".{path.name}.next")
    if tmp.is_symlink() or tmp.exists():
        remove_tree(tmp)  # debris of an earlier try, whatever it is
    os.symlink(target, tmp)
    os.rename(tmp, path)


def remove_tree(path: Path) -> None:
    """Remove a tree that may contain read-only files and dirs (we strip write bits)."""
    if not (path.exists() or path.is_symlink()):
        return
    if path.is_symlink() or not path.is_dir():
        path.unlink()
        return

    def onerror(func, p, _exc_info):
        # Directories we made read-only refuse unlinks of their children for
        # non-root users; give the parent its write bit back and retry once.
        parent = Path(p).parent
        os.chmod(parent, 0o755)
        func(p)

    shutil.rmtree(path, onerror=onerror)  # onexc needs 3.12


def disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def set_owner_and_mode(target: int | str | Path, *, uid: int, gid: int, mode: int) -> None:
    """chown, then chmod, of an fd or a path (never a symlink: links get lchown only).

    The order matters: Linux clears setuid and setgid on every chown, root's
    included, so chmod-then-chown silently installs /usr/bin/wall without its
    setgid bit. Only root can give files away; others keep their own uid.
    """
    if isinstance(target, int):
        if os.geteuid() == 0:
            os.fchown(target, uid, gid)
        os.fchmod(target, mode)
    else:
        if os.geteuid() == 0:
            os.chown(target, uid, gid, follow_symlinks=False)
        os.chmod(target, mode)


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes (hex), read in 1 MiB chunks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
