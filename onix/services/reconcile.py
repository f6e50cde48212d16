"""Reconciling the live scan directory with a state's services, and listing them.

After every transaction and rollback `reconcile()` makes the live scan directory match
the state the way s6-rc-update would (s6-rc itself is not packaged): new services are
started, removed ones stopped, changed ones (by content hash) restarted, unchanged ones
left running, all in dependency order. `up()` is stage 2 of a boot (`onix services
--up`, below). `list_services()` is `onix services`.

The package, in the order a reconcile uses it:

    definitions.py  the definitions a state ships under usr/lib/onix/services: reading
                    them without following symlinks, checking names, dependencies and
                    cycles, and their content hash
    live.py         the scan directory's copies of them, and their markers: reading,
                    laying down, changing in place
    s6.py           the one s6 driver: every s6 program onix runs, and whether s6-svscan
                    and s6-supervise run
    reconcile.py    this: the plan, and the steps that carry it out

How reconcile changes things (with an s6-svscan running on the scan directory)
------------------------------------------------------------------------------

1. Check every definition and the plan; refuse before any change.
2. Stop, dependents first (reverse order of the live copies' dependencies): removed
   services, changed ones, and the unchanged services that depend on a changed one
   (s6-rc-update restarts those too). `s6-svc -wD -T <ms> -d`, and SIGKILL (-k) if that
   times out; a removed service's logger after it.
3. Removed: rename to `.<name>.onix-removing`, `s6-svscanctl -an` (rescan, and drop
   the supervisors whose directory went away), wait for both supervisors to exit,
   delete the directory.
4. Changed: the marker goes to `pending`, each file is replaced by a rename over it,
   files of the old definition that the new one lacks are removed; `supervise/` and
   `event/` stay, and so does the supervisor. s6-supervise execs `./run` afresh on
   every start, and reads notification-fd and the timeout files then too, so the next
   `s6-svc -u` runs the new definition: stopping, replacing, then starting (rather
   than `s6-svc -r` while running, which would race the replacement) guarantees no
   old process survives and no new one runs old files. A service whose logger
   appears or disappears is removed and laid down anew (s6-svscan sets up the
   logger pipe only when it first sees a directory).
5. New: written as `.<name>.onix-new` with a `down` file, fsynced, renamed into place,
   then one `s6-svscanctl -a`. The `down` file keeps s6-supervise from starting it on
   its own, so that onix starts it in dependency order; it is removed before
   `s6-svc -u`. Copies laid down before s6-svscan ran (marker `laid`) are started
   with them.
6. Start, in waves of dependency depth: every service of a wave gets `s6-svc -u`
   (its logger first), then one `s6-svwait -U` (with notification-fd) or `-u` per
   service, all at once, each for its timeout-up or else `timeout` seconds; a oneshot
   until its up script succeeded or failed. One that does not make it is reported
   failed (with what s6-svstat says, and the reason in its marker) and the others go
   on; what depends on it is not started (held, and it keeps its `down` file). A
   failed longrun stays wanted up, so s6 keeps trying, and the next reconcile
   restarts it.

A service that will not stop is stopped with SIGKILL; if even that fails, a removed
service is deleted anyway (and reported failed), a changed one keeps its old files and
is reported failed. One reconcile runs per scan directory at a time (flock on it).
If s6-svscan is missing but an orphaned s6-supervise still runs on a copy onix changes
or removes, that service is stopped first.

Boot: stage 1 lays down, stage 2 starts (s6-linux-init's stages, s6-rc's order)
------------------------------------------------------------------------------

Without a running s6-svscan (`<scandir>/.s6-svscan/control` has no reader: at boot,
before init execs s6-svscan; an image being built) only the file-system part is done:
copies are laid down WITH s6's `down` file (marker status `laid`), changed ones get
their new files and a `down` file, removed ones are deleted, and the report says
`supervised: false`; `started` and `restarted` name what stage 2 will start. Were
there no `down` files, s6-svscan would start every service at once when it starts,
dependencies or not. In the root's own scan directory (`<root>/run/service`) the
stage-2 service `onix-stage2` is laid down next to them (live.lay_stage2), without a
`down` file and without dependencies, so s6-svscan starts it as soon as it runs: it
runs once (`s6-svc -O`) `onix services --up --root <root>`, which is `up()`.

`up()` waits until s6-svscan runs on the scan directory, then starts every copy
marked `laid`, in the waves of step 6, reading dependencies, notification-fd and
timeout-up from the live copies themselves (no state, no root lock: only the scan
directory's flock, so a transaction's reconcile runs before or after it, not
during). A dependency that is failed or held already, or not in the scan directory,
holds its dependents. s6-linux-init's stage 2 (`rc.init`, running once s6-svscan is
up, bringing the services up with s6-rc) is the model; here it is a supervised
oneshot, so that whatever lays the services down also lays down what brings them up
and `s6-svstat <scandir>/onix-stage2` says how it ended. A reconcile under s6-svscan
starts `laid` copies too, so stage 2 finding nothing left to do is fine.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from onix.core.errors import OnixError
from onix.core.fsutil import atomic_write, fsync_dir, mkdirs, remove_tree
from onix.services.definitions import Definition, levels, load_definitions, order, read_all
from onix.services.live import (
    NEW_SUFFIX,
    REMOVING_SUFFIX,
    RETRY,
    Live,
    Marker,
    change_in_place,
    check_scandir_path,
    copy_definition,
    default_scandir,
    dependencies,
    lay_down,
    lay_stage2,
    live_hash,
    scan,
    stop_timeout,
    write_marker,
)
from onix.services.s6 import (
    ONCE,
    S6,
    blank,
    came_up,
    supervised,
    svscan_running,
    svstat,
    wait_for,
)

UP_TIMEOUT = 60.0  # stage 2's wait for each service (a boot is slow; s6-rc has no limit)
SVSCAN_TIMEOUT = 60.0  # how long stage 2 waits for s6-svscan to run on the scan directory


@dataclass
class Report:
    state_id: int | None  # None: stage 2 (up()), which works from the live copies alone
    scandir: str
    supervised: bool
    started: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)  # {name, reason, svstat}

    @property
    def ok(self) -> bool:
        return not self.failed

    def as_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


@dataclass
class Plan:
    new: list[str]
    removed: list[str]
    changed: list[str]  # definition or live copy differs, or the marker asks for a redo
    recreate: list[str]  # changed, and the logger appears or disappears
    dependents: list[str]  # unchanged, but depend on a changed service: restarted too
    unchanged: list[str]
    laid: list[str] = field(default_factory=list)  # unchanged, laid down, not started yet


def _refuse_foreign(defs: dict[str, Definition], live: dict[str, Live]) -> None:
    for name, d in defs.items():
        lv = live.get(name)
        if lv is not None and not lv.ours:
            raise OnixError(f"the scan directory already has a service {name} that is not "
                            "onix's (it has no .onix-service marker)", path=lv.path,
                            hint=f"remove or rename it, or do not ship {d.path}")


def _dependents(defs: dict[str, Definition], changed: list[str],
                unchanged: list[str]) -> set[str]:
    """The unchanged services that depend, directly or not, on a changed one."""
    hit = set(changed)
    grew = True
    while grew:
        grew = False
        for n in unchanged:
            if n not in hit and any(x in hit for x in defs[n].dependencies):
                hit.add(n)
                grew = True
    return hit - set(changed)


def plan(defs: dict[str, Definition], live: dict[str, Live]) -> Plan:
    """Compare the state's definitions with the live copies (no side effects)."""
    _refuse_foreign(defs, live)
    new = sorted(n for n in defs if n not in live)
    removed = sorted(n for n, lv in live.items() if lv.ours and n not in defs)
    changed, recreate, unchanged, laid = [], [], [], []
    for n in sorted(defs):
        lv = live.get(n)
        if lv is None:
            continue
        d, m = defs[n], lv.marker or Marker()
        if m.hash == d.hash and m.status not in RETRY and live_hash(lv.path, d) == d.hash:
            (laid if m.status == "laid" else unchanged).append(n)
            continue
        changed.append(n)
        if (lv.path / "log").is_dir() != d.has_log:  # s6-svscan pipes only what it first saw
            recreate.append(n)
    # s6-rc-update restarts what depends on a changed service; so do we.
    hit = _dependents(defs, changed, unchanged)
    return Plan(new=new, removed=removed, changed=changed, recreate=recreate,
                dependents=[n for n in unchanged if n in hit],
                unchanged=[n for n in unchanged if n not in hit], laid=laid)


@contextlib.contextmanager
def _locked(scandir: Path) -> Iterator[None]:
    """One reconcile per scan directory at a time (flock on the directory itself)."""
    fd = os.open(scandir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _stop(s6: S6, sdir: Path, timeout: float) -> bool:
    return s6.stop(sdir, stop_timeout(sdir, timeout))


def _clean_debris(scandir: Path, s6: S6 | None, timeout: float) -> None:
    """Leftovers of an interrupted reconcile: half-written copies, unfinished removals."""
    try:
        names = os.listdir(scandir)
    except FileNotFoundError:
        return
    debris = [scandir / n for n in names if n.startswith(".")
              and (n.endswith(NEW_SUFFIX) or n.endswith(REMOVING_SUFFIX))]
    if not debris:
        return
    if s6 is not None and any(supervised(p) or supervised(p / "log") for p in debris):
        s6.drop(scandir, debris, timeout)
    for p in debris:
        remove_tree(p)


def reconcile(*, root: Path, usr: Path, state_id: int, scandir: Path | None = None,
              timeout: float = 10) -> Report:
    """Make the live scan directory run the services of the state in `usr`.

    Every definition is checked first (OnixError before any change). A service that
    does not come up is reported in `failed`, not raised. See the module docstring.
    """
    root = Path(root).absolute()
    if scandir is None:
        check_scandir_path(root)
        scandir = default_scandir(root)
    scandir = Path(scandir).absolute()
    defs = load_definitions(Path(usr))
    plan(defs, scan(scandir))  # refuses a state that would take over a service not ours
    active = svscan_running(scandir)
    report = Report(state_id=state_id, scandir=str(scandir), supervised=active)
    if not scandir.is_dir():
        if not defs:
            return report
        mkdirs(scandir)  # 0755 whatever the umask: s6 tools run as other users read it
    s6 = S6() if active else None
    with _locked(scandir):
        _clean_debris(scandir, s6, timeout)
        live = scan(scandir)  # again, under the lock
        p = plan(defs, live)
        report.unchanged = list(p.unchanged)
        if s6 is None:
            _reconcile_files(scandir, defs, live, p, state_id, report, timeout)
            if scandir == default_scandir(root) and any(
                    lv.ours and lv.marker and lv.marker.status == "laid"
                    for lv in scan(scandir).values()):
                lay_stage2(scandir, root)
        else:
            _Pass(scandir, defs, live, p, state_id, report, s6, timeout).run()
    return report


def _reconcile_files(scandir: Path, defs: dict[str, Definition], live: dict[str, Live],
                     p: Plan, state_id: int, report: Report, timeout: float) -> None:
    """No s6-svscan: lay the files down, each with a `down` file; stage 2 starts them.

    If s6-svscan died and left a supervisor running on a copy onix changes or removes,
    that service is stopped first (and its supervisor told to exit if it goes away).
    """
    s6: S6 | None = None
    for n in [*p.removed, *p.changed]:
        for sdir in (live[n].path, live[n].path / "log"):
            if supervised(sdir):
                s6 = s6 or S6()
                _stop(s6, sdir, timeout)
                if n in p.removed or n in p.recreate:
                    s6.exit(sdir)
    for n in p.removed:
        remove_tree(live[n].path)
        report.stopped.append(n)
    for n in p.changed:
        d = defs[n]
        if n in p.recreate:
            remove_tree(live[n].path)
            lay_down(scandir, d, Marker.of(d, state_id, "laid"), down=True)
        else:
            change_in_place(live[n], d, down=True)
            write_marker(live[n].path, Marker.of(d, state_id, "laid"))
        report.restarted.append(n)
    report.unchanged += p.dependents  # nothing runs: nothing to restart
    report.unchanged = sorted([*report.unchanged, *p.laid])  # still waiting for stage 2
    for n in order(p.new, {k: v.dependencies for k, v in defs.items()}):
        lay_down(scandir, defs[n], Marker.of(defs[n], state_id, "laid"), down=True)
        report.started.append(n)
    fsync_dir(scandir)


@dataclass
class _Pass:
    """One reconcile with s6-svscan running, step by step (the module docstring's 2-6)."""

    scandir: Path
    defs: dict[str, Definition]
    live: dict[str, Live]
    plan: Plan
    state_id: int | None  # None (stage 2): each copy keeps its marker's state
    report: Report
    s6: S6
    timeout: float
    fail: dict[str, str] = field(default_factory=dict)  # name → why it is not running
    unavailable: dict[str, str] = field(default_factory=dict)  # not started here, not up
    gone_fail: dict[str, str] = field(default_factory=dict)  # removed, though not stopped
    status: dict[str, str] = field(default_factory=dict)  # name → its marker's status
    stop_order: list[str] = field(default_factory=list)
    log_stop: set[str] = field(default_factory=set)  # loggers stopped, so started again
    stuck: set[str] = field(default_factory=set)  # would not stop: left with the old files
    fresh: list[str] = field(default_factory=list)  # laid down anew
    starting: set[str] = field(default_factory=set)

    @property
    def deps(self) -> dict[str, tuple[str, ...]]:
        return {n: d.dependencies for n, d in self.defs.items()}

    def run(self) -> None:
        self.stop()
        self.drop_gone()
        for n in self.plan.changed:
            if n not in self.plan.recreate and n not in self.fail:
                change_in_place(self.live[n], self.defs[n], down=True)  # marker pending first
        self.lay_fresh()
        self.supervise()
        lv = levels(self.defs, self.deps)
        for wave in sorted({lv[n] for n in self.starting}):
            self.start_wave(sorted(n for n in self.starting if lv[n] == wave))
        self.settle()

    def _logs_to_stop(self) -> set[str]:
        """Removed and recreated services' loggers, and changed ones' whose log/ changed."""
        p = self.plan
        out = set(p.removed) | set(p.recreate)
        for n in p.changed:
            m, d = self.live[n].marker or Marker(), self.defs[n]
            if n not in p.recreate and (m.log_hash != d.log_hash or live_hash(
                    self.live[n].path, d, log_only=True) != d.log_hash):
                out.add(n)
        return out

    def stop(self) -> None:
        """Dependents first, in the order the live copies depend on each other."""
        p = self.plan
        to_stop = [*p.removed, *p.changed, *p.dependents]
        live_deps = {n: dependencies(lv) for n, lv in self.live.items() if lv.ours}
        self.stop_order = list(reversed(order(to_stop, live_deps)))
        self.log_stop = self._logs_to_stop()
        for n in self.stop_order:
            sdir = self.live[n].path
            why = None
            if not _stop(self.s6, sdir, self.timeout):
                why = "did not stop within the timeout, even after SIGKILL"
            if n in self.log_stop and (sdir / "log").is_dir() and \
                    not _stop(self.s6, sdir / "log", self.timeout):
                why = why or "its logger did not stop within the timeout"
            if why and n in p.removed:
                self.gone_fail[n] = why
            elif why and n not in p.recreate:  # a recreated one goes with its supervisor
                self.fail[n] = why
            elif n in p.removed:
                self.report.stopped.append(n)
        self.stuck = set(self.fail)

    def drop_gone(self) -> None:
        """Removed (and recreated): out of s6-svscan's sight, supervisors dropped, deleted."""
        moved: list[Path] = []
        for n in [*self.plan.removed, *self.plan.recreate]:
            dest = self.scandir / f".{n}{REMOVING_SUFFIX}"
            remove_tree(dest)
            os.rename(self.live[n].path, dest)
            moved.append(dest)
        if moved:
            fsync_dir(self.scandir)
            self.s6.drop(self.scandir, moved, self.timeout)
            for d in moved:
                remove_tree(d)

    def lay_fresh(self) -> None:
        """New (and recreated): laid down with a `down` file; the rescan is supervise's."""
        p = self.plan
        self.fresh = sorted([*p.new, *p.recreate])
        for n in self.fresh:
            d = self.defs[n]
            lay_down(self.scandir, d, Marker.of(d, self.state_id, "pending"), down=True)
        self.starting = set(self.fresh) | set(p.changed) | set(p.dependents) | set(p.laid)

    def supervise(self) -> None:
        """Every service to start needs its s6-supervise: the fresh ones, and a copy that a
        crash left pending before s6-svscan saw it."""
        def watched(n: str) -> bool:
            sdir = self.scandir / n
            return supervised(sdir) and (not self.defs[n].has_log or supervised(sdir / "log"))

        orphans = sorted(n for n in self.starting if n not in self.fail and not watched(n))
        if orphans:
            self.s6.scan(self.scandir)
            deadline = time.monotonic() + self.timeout
            for n in orphans:
                if not wait_for(lambda n=n: watched(n), deadline):
                    self.fail[n] = "s6-svscan started no s6-supervise for it"

    def _hold(self, batch: list[str]) -> list[str]:
        """The services of a wave that may start; what depends on a failure is held."""
        go: list[str] = []
        for n in batch:
            bad = [x for x in self.defs[n].dependencies if x in self.fail]
            gone = [x for x in self.defs[n].dependencies if x in self.unavailable]
            if n in self.fail:
                self.status[n] = "failed"
            elif bad or gone:
                self.fail[n] = (f"not started: it depends on {bad[0]}, which did not come up"
                                if bad else f"not started: it depends on {gone[0]}, "
                                f"{self.unavailable[gone[0]]}")
                self.status[n] = "held"
                # held back until a reconcile starts it after its dependency
                atomic_write(self.scandir / n / "down", b"", mode=0o644)
            else:
                go.append(n)
        return go

    def _start_loggers(self, go: list[str]) -> None:
        """A service whose logger is not there is not started (s6-rc: the logger is a
        dependency of its service)."""
        logs = [n for n in go if self.defs[n].has_log
                and n in self.log_stop | set(self.fresh) | set(self.plan.laid)]
        for n in logs:
            if not self.s6.up(self.scandir / n / "log"):
                self.fail.setdefault(n, "s6-svc -u failed on its logger")
        self.s6.wait([(self.scandir / n / "log",
                       "-u" if self.defs[n].log_notification_fd is None else "-U", self.timeout)
                      for n in logs])
        for n in logs:
            if n not in self.fail and not came_up(svstat(self.scandir / n / "log"),
                                                  self.defs[n].log_notification_fd is not None):
                self.fail[n] = f"its logger did not come up within {self.timeout:g} s"

    def start_wave(self, batch: list[str]) -> None:
        """s6-svc -u for each service of a wave, then their s6-svwaits side by side."""
        go = self._hold(batch)
        limit = {n: self.defs[n].timeout_up or self.timeout for n in go}
        self._start_loggers(go)
        go = [n for n in go if n not in self.fail]
        for n in go:
            remove_tree(self.scandir / n / "down")
            if not self.s6.up(self.scandir / n, once=self.defs[n].oneshot):
                self.fail.setdefault(n, "s6-svc -u failed")
        self.s6.wait([(self.scandir / n, self._flag(n), limit[n])
                      for n in go if n not in self.fail])
        for n in batch:
            if n in self.fail and n not in self.status:
                self.status[n] = "failed"
        for n in go:
            if n in self.fail:
                continue
            st = svstat(self.scandir / n)
            if came_up(st, self.defs[n].notification_fd is not None):
                self.status[n] = "up"
            elif self.defs[n].oneshot and st["up"] is False and st["wanted_up"] is False:
                self.fail[n] = "its up script failed (" + (
                    f"signal {st['signal']})" if st["signal"] else f"exit {st['exitcode']})")
                self.status[n] = "failed"
            else:
                what = ("finish its up script" if self.defs[n].oneshot else
                        "get ready" if st["up"] else "come up")
                self.fail[n] = f"did not {what} within {limit[n]:g} s"
                self.status[n] = "failed"

    def _flag(self, n: str) -> str:
        """How S6.wait waits for a service: a oneshot's run, else ready or up."""
        d = self.defs[n]
        return ONCE if d.oneshot else "-u" if d.notification_fd is None else "-U"

    def settle(self) -> None:
        """Markers say how each service ended; the report says it too."""
        for n in self.starting:
            sdir = self.scandir / n
            status = self.status.get(n, "failed")
            why = self.fail.get(n, "") if status != "up" else ""
            old = self.live[n].marker if n in self.live else None
            if n in self.stuck:
                write_marker(sdir, replace(old or Marker(), status="failed", reason=why))
            elif not sdir.is_dir():
                continue
            elif self.state_id is None and old is not None:
                write_marker(sdir, replace(old, status=status, reason=why))
            else:
                write_marker(sdir, replace(Marker.of(self.defs[n], self.state_id, status),
                                           reason=why))
        fsync_dir(self.scandir)
        started = order(self.starting, self.deps)
        new = [*self.plan.new, *self.plan.laid]  # not running before: started, not restarted
        self.report.started = [n for n in started if n in new and self.status.get(n) == "up"]
        self.report.restarted = [n for n in started
                                 if n not in new and self.status.get(n) == "up"]
        for n in self.stop_order:
            if n in self.gone_fail:
                self.report.failed.append({"name": n, "reason": self.gone_fail[n] +
                                           "; removed anyway", "svstat": "removed"})
        for n in [*self.stop_order, *(x for x in started if x not in self.stop_order)]:
            if n in self.fail and not any(f["name"] == n for f in self.report.failed):
                self.report.failed.append({"name": n, "reason": self.fail[n],
                                           "svstat": svstat(self.scandir / n)["text"]})


def up(*, root: Path, scandir: Path | None = None, timeout: float = UP_TIMEOUT,
       svscan_timeout: float = SVSCAN_TIMEOUT) -> Report:
    """Stage 2: once s6-svscan runs on the scan directory, start the copies laid down
    before it ran, in dependency order (the module docstring). A service that does not
    come up is reported in `failed` and its marker, not raised; OnixError if no
    s6-svscan runs on the scan directory within `svscan_timeout` seconds."""
    root = Path(root).absolute()
    if scandir is None:
        check_scandir_path(root)
        scandir = default_scandir(root)
    scandir = Path(scandir).absolute()
    if not wait_for(lambda: svscan_running(scandir), time.monotonic() + svscan_timeout,
                    poll=0.1):
        raise OnixError(f"no s6-svscan runs on the scan directory after {svscan_timeout:g} s",
                        path=scandir, hint=f"stage 2 starts what s6-svscan supervises: run "
                        f"s6-svscan {scandir} first")
    report = Report(state_id=None, scandir=str(scandir), supervised=True)
    s6 = S6()
    with _locked(scandir):
        live = {n: lv for n, lv in scan(scandir).items() if lv.ours}
        defs: dict[str, Definition] = {}
        p = _Pass(scandir, defs, live, Plan([], [], [], [], [], []), None, report, s6,
                  timeout)
        for n, lv in live.items():
            try:
                defs[n] = copy_definition(lv)
            except OnixError as e:
                p.unavailable[n] = f"whose live copy is broken ({e.message})"
        for n, lv in live.items():
            status = (lv.marker or Marker()).status
            if n not in defs:
                continue
            if status == "laid":
                p.plan.laid.append(n)
            elif status in ("failed", "held", "pending"):
                p.unavailable[n] = f"which is {status}"
        for d in defs.values():
            for x in d.dependencies:
                if x not in defs and x not in p.unavailable:
                    p.unavailable[x] = "which is not in the scan directory"
        p.plan.unchanged = sorted(n for n in defs if n not in p.plan.laid)
        p.run()
        report.unchanged = list(p.plan.unchanged)
    return report


def list_services(*, root: Path, usr: Path | None = None,
                  scandir: Path | None = None) -> list[dict]:
    """Every service the state defines and/or the scan directory holds, with its state.

    usr defaults to <root>/usr. A definition that cannot be read is listed with its
    error rather than failing the listing.
    """
    root = Path(root).absolute()
    usr = Path(usr) if usr is not None else root / "usr"
    scandir = Path(scandir).absolute() if scandir is not None else default_scandir(root)
    defs, errors = read_all(usr, strict=False)
    live = scan(scandir)
    active = svscan_running(scandir)
    rows = []
    for name in sorted({*defs, *errors, *live}):
        d, lv = defs.get(name), live.get(name)
        m = lv.marker if lv else None
        row: dict = {"name": name, "in_state": d is not None or name in errors,
                     "live": lv is not None, "ours": bool(lv and lv.ours),
                     "hash": d.hash if d else None, "live_hash": (m.hash or None) if m else None,
                     "hash_match": None, "from_state": m.state if m else None,
                     "status": m.status if m else None,
                     "reason": (m.reason or None) if m else None,
                     "type": ("oneshot" if d.oneshot else "longrun") if d else None,
                     "dependencies": list(d.dependencies) if d else [],
                     "logger": d.has_log if d else bool(lv and (lv.path / "log").is_dir()),
                     "error": errors[name].line() if name in errors else None,
                     "svscan": active}
        if d is not None and lv is not None and lv.ours and m is not None:
            row["hash_match"] = m.hash == d.hash and live_hash(lv.path, d) == d.hash
        row.update(blank("absent", "not live") if lv is None else svstat(lv.path))
        rows.append(row)
    return rows
