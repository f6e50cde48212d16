"""The one s6 driver: every s6 program onix runs, and what it reads of s6's own files.

s6-svscan supervises a scan directory, starting one s6-supervise per service directory
in it; each listens on a control FIFO, `<dir>/supervise/control`, as s6-svscan does on
`<scandir>/.s6-svscan/control`. Whether one runs is whether that FIFO has a reader:
opening it for writing without blocking fails with ENXIO when nobody reads (what
s6-svok checks), so no s6 program is run for it.

The programs are run through onix.core.proc (declared in onix/core/tools.py, found on
PATH): s6-svstat (`svstat()`, `fields()`), s6-svc (`restart()` and the `S6` methods),
s6-svwait and s6-svscanctl (`S6`). A oneshot (definitions.py) is waited for by polling
s6-svstat instead of s6-svwait (`S6.wait`, flag ONCE). `S6` finds s6-svc, s6-svwait and
s6-svscanctl when it is made, so a missing one is an error before reconcile changes
anything.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from onix.core import proc
from onix.core.errors import OnixError

SVSTAT_FIELDS = ("up", "wantedup", "ready", "pid", "exitcode", "signal", "updownfor")
_POLL = 0.02


def _listening(fifo: Path) -> bool:
    """True if a process reads the FIFO (s6-svscan's or s6-supervise's control)."""
    try:
        st = os.stat(fifo, follow_symlinks=False)
    except OSError:
        return False
    if not stat.S_ISFIFO(st.st_mode):
        return False
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:  # ENXIO: no reader
        return False
    os.close(fd)
    return True


def svscan_running(scandir: Path) -> bool:
    """An s6-svscan runs on scandir: its control FIFO has a reader (what s6-svscanctl needs)."""
    return _listening(Path(scandir) / ".s6-svscan" / "control")


def supervised(servicedir: Path) -> bool:
    """An s6-supervise runs on servicedir (what s6-svok checks)."""
    return _listening(Path(servicedir) / "supervise" / "control")


def wait_for(pred: Callable[[], bool], deadline: float, *, poll: float = _POLL) -> bool:
    """Poll pred until it holds (True) or time.monotonic() reaches deadline (False)."""
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)


def fields(servicedir: Path, *, timeout: float = 10,
           names: tuple[str, ...] = SVSTAT_FIELDS) -> dict[str, str] | None:
    """s6-svstat's fields `names` of a service, as it prints them; None if it fails.

    OnixError if s6-svstat is not installed or does not answer within `timeout`.
    """
    r = proc.run(["s6-svstat", "-o", ",".join(names), servicedir], check=False,
                 timeout=timeout)
    vals = (r.stdout or b"").decode(errors="replace").split()
    if r.returncode != 0 or len(vals) != len(names):
        return None
    return dict(zip(names, vals, strict=True))


def blank(state: str, text: str) -> dict:
    """A status with nothing known but its state and text (see svstat)."""
    return {"state": state, "up": None, "ready": None, "pid": None, "seconds": None,
            "exitcode": None, "signal": None, "wanted_up": None, "text": text}


def _number(v: str) -> int | None:
    return int(v) if v.lstrip("-").isdigit() and int(v) >= 0 else None


def svstat(servicedir: Path) -> dict:
    """What s6-svstat says of a service: parsed fields plus its own one-line text."""
    servicedir = Path(servicedir)
    if not supervised(servicedir):
        return blank("not supervised", "not supervised")
    tool = proc.which("s6-svstat")
    f = fields(servicedir)
    t = proc.run([tool, servicedir], check=False, timeout=10)
    text = (t.stdout or b"").decode(errors="replace").strip() or \
        (t.stderr or b"").decode(errors="replace").strip()
    if f is None:
        return blank("unknown", text)
    up = f["up"] == "true"
    return {"state": "up" if up else "down", "up": up, "ready": f["ready"] == "true",
            "pid": _number(f["pid"]) if up else None, "seconds": _number(f["updownfor"]),
            "exitcode": _number(f["exitcode"]),
            "signal": None if f["signal"] in ("NA", "-1") else f["signal"],
            "wanted_up": f["wantedup"] == "true", "text": text}


def came_up(st: dict, notification: bool) -> bool:
    """svstat's answer says up, and ready too for a service with a notification-fd."""
    return bool(st["up"]) and (bool(st["ready"]) or not notification)


def restart(servicedir: Path) -> None:
    """s6-svc -r: s6-supervise sends the service its down signal and starts it again.

    OnixError with s6-svc's complaint (or its exit status) if that fails.
    """
    r = proc.run(["s6-svc", "-r", str(servicedir)], check=False, timeout=10)
    if r.returncode != 0:
        raise OnixError(r.stderr.decode(errors="replace").strip() or str(r.returncode))


_ONCE_FIELDS = ("up", "wantedup", "ready", "updownsince")
ONCE = "once"  # a wait flag of S6.wait(): a oneshot's run (see S6.up)


class S6:
    """s6-svc, s6-svwait and s6-svscanctl, found once, run through onix.core.proc."""

    def __init__(self) -> None:
        self.svc = proc.which("s6-svc")
        self.svwait = proc.which("s6-svwait")
        self.svscanctl = proc.which("s6-svscanctl")
        self._since: dict[Path, str] = {}  # a oneshot's updownsince before its start

    def stop(self, sdir: Path, timeout: float) -> bool:
        """Bring a supervised service down (finish done); SIGKILL if it takes too long."""
        if not supervised(sdir):
            return True
        ms = str(max(1, int(timeout * 1000)))
        r = proc.run([self.svc, "-wD", "-T", ms, "-d", sdir], check=False, timeout=timeout + 5)
        if r.returncode == 0:
            return True
        proc.run([self.svc, "-k", sdir], check=False, timeout=10)
        r = proc.run([self.svwait, "-D", "-t", "2000", sdir], check=False, timeout=10)
        return r.returncode == 0

    def up(self, sdir: Path, *, once: bool = False) -> bool:
        """s6-svc -u. With once (a oneshot, which s6-supervise runs once: s6-svc -O),
        the time of its last change of state is noted first, so that wait() can tell
        "it ran and failed" from "s6-supervise has not started it yet": both are down
        and not wanted up."""
        if once:
            f = fields(sdir, names=_ONCE_FIELDS)
            self._since[Path(sdir)] = f["updownsince"] if f else ""
        return proc.run([self.svc, "-u", sdir], check=False, timeout=10).returncode == 0

    def _ran(self, sdir: Path) -> bool:
        """A oneshot started by up(once=True) is ready, or has gone down for good."""
        f = fields(sdir, names=_ONCE_FIELDS)
        if f is None:
            return False
        if f["up"] == "true":
            return f["ready"] == "true"
        return f["wantedup"] == "false" and f["updownsince"] != self._since.get(Path(sdir))

    def exit(self, sdir: Path) -> None:
        """Tell s6-supervise to exit once the service is down (s6-svc -x)."""
        if supervised(sdir):
            proc.run([self.svc, "-x", sdir], check=False, timeout=10)

    def wait(self, items: list[tuple[Path, str, float]]) -> None:
        """s6-svwait <flag> -t <limit> for each (dir, flag, seconds), all at once. The
        flag ONCE waits for a oneshot: ready, or down for good (its up script failed),
        which s6-svwait cannot tell (it would wait out the limit), so s6-svstat is polled."""
        from concurrent.futures import ThreadPoolExecutor

        def one(item: tuple[Path, str, float]) -> None:
            sdir, flag, limit = item
            if flag == ONCE:
                wait_for(lambda: self._ran(sdir), time.monotonic() + limit, poll=0.05)
                return
            proc.run([self.svwait, flag, "-t", str(max(1, int(limit * 1000))), sdir],
                     check=False, timeout=limit + 5)

        if items:
            with ThreadPoolExecutor(max_workers=min(len(items), 16)) as pool:
                list(pool.map(one, items))

    def scan(self, scandir: Path) -> None:
        """s6-svscanctl -a: s6-svscan looks at the scan directory now, not at its next tick."""
        proc.run([self.svscanctl, "-a", scandir], check=True, timeout=10)

    def drop(self, scandir: Path, dirs: Iterable[Path], timeout: float) -> None:
        """s6-svscanctl -an, then wait (up to `timeout`) until the supervisors of dirs,
        loggers included, have exited: dirs must be gone from s6-svscan's sight."""
        proc.run([self.svscanctl, "-an", scandir], check=True, timeout=10)
        deadline = time.monotonic() + timeout
        for d in dirs:
            wait_for(lambda d=d: not supervised(d) and not supervised(d / "log"), deadline)
