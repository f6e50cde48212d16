"""Two processes for syscall-bound loops (blit, verify) where threads lose to the GIL.

Linking or hashing 20k small files is a stream of short system calls and
short C calls; Python threads serialise on the GIL between them, a forked
child does not. The child only runs plain OS and hashing calls and leaves with
os._exit, so it never touches the database connection or locks it inherited.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable


def in_two_processes(child_work: Callable[[], bytes | None], own_work: Callable[[], None]) -> bytes:
    """Run `child_work` in a forked child while this process runs `own_work`.

    Returns the bytes the child's function returned. A failure on either side
    is raised here; the child's keeps its errno (so ENOSPC stays ENOSPC).
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        code = 0
        try:
            out = child_work() or b""
            payload = b"ok|" + out
        except BaseException as exc:  # reported to the parent, errno first, then exit
            err = getattr(exc, "errno", None) or errno.EIO
            payload = f"{err}|{type(exc).__name__}: {exc}".encode()[:4000]
            code = 1
        view = memoryview(payload)
        while view:
            view = view[os.write(w, view):]
        os._exit(code)
    os.close(w)
    try:
        own_work()
    finally:
        with os.fdopen(r, "rb") as pipe:
            message = pipe.read()
        _pid, status = os.waitpid(pid, 0)
    head, _, body = message.partition(b"|")
    if os.waitstatus_to_exitcode(status) != 0 or head != b"ok":
        text = body.decode(errors="replace")
        raise OSError(int(head) if head.isdigit() else errno.EIO,
                      f"the helper process failed: {text}")
    return body


def split_balanced(items: list, weight: Callable[[object], int]) -> tuple[list, list]:
    """Two halves of about equal total weight (heaviest first, greedy)."""
    halves: tuple[list, list] = ([], [])
    totals = [0, 0]
    for item in sorted(items, key=weight, reverse=True):
        i = 0 if totals[0] <= totals[1] else 1
        halves[i].append(item)
        totals[i] += weight(item)
    return halves
