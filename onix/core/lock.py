"""One mutating onix per root: an flock on <root>/.onix/lock.

flock is released by the kernel when the process dies, so a crashed onix never
leaves a stale lock behind; the journal, not the lock, carries what it was doing.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from onix.core.errors import LockedError
from onix.core.paths import RootPaths


@contextmanager
def root_lock(paths: RootPaths, *, wait: bool = True,
              on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    told = False
    while True:
        paths.ensure()
        fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    raise LockedError("another onix is working on this root", path=paths.lock,
                                      hint="wait for it to finish, or run without --no-wait to "
                                      "queue behind it") from None
                if on_wait and not told:
                    on_wait(f"waiting for another onix to release {paths.lock} …")
                    told = True
                fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        # A failed first command discards its .onix (lock file included) while holding the
        # lock; whoever queued on that old file must lock the new one instead.
        try:
            held, now = os.fstat(fd), os.lstat(paths.lock)
            current = (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)
    try:
        yield
    finally:
        os.close(fd)  # closing drops the flock


def lock_held(paths: RootPaths) -> bool:
    """Whether some onix holds the root's lock right now (without taking or waiting for it)."""
    try:
        fd = os.open(paths.lock, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
