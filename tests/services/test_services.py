"""Services: state definitions reconciled into a live scan directory under a REAL s6-svscan.

Every test works in its own tmp dir: a state tree (usr/lib/onix/services/...) built from
the demo definitions in tests/data/services, and a scan directory <root>/run/service on
which the `svscan` fixture runs Debian's s6-svscan in its own session. The demo run
scripts write what they do into $ONIX_TEST_OUT (s6-svscan's environment reaches them).
Teardown stops s6-svscan (`s6-svscanctl -t`), then SIGKILLs by pid whatever is left with
its working directory or an argument inside the test's tmp dir (s6-notifyoncheck's
double-forked checkers, say), and asserts that nothing survived.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, onix, onix_json, snapshot

from onix import api
from onix.core.errors import OnixError
from onix.services import definitions, live
from onix.services import reconcile as services
from onix.services import s6 as s6drv

pytestmark = pytest.mark.skipif(shutil.which("s6-svscan") is None,
                                reason="s6 is not installed (apt-get install s6)")

DATA = Path(__file__).resolve().parents[1] / "data" / "services"
# Stage 2 (the onix-stage2 service) runs `onix services --up`: this onix, this code.
STAGE2_ENV = {"PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
              "PYTHONPATH": str(REPO)}
T = 5.0  # reconcile timeout for services that do come up


# -- helpers ----------------------------------------------------------------------------


def make_usr(base: Path, names: list[str]) -> Path:
    """A state's usr tree holding copies of the demo definitions `names`."""
    usr = base / "usr"
    defs = usr / definitions.DEFINITIONS
    defs.mkdir(parents=True, exist_ok=True)
    for n in names:
        shutil.copytree(DATA / n, defs / n, symlinks=True)
    return usr


def defdir(usr: Path, name: str) -> Path:
    return usr / definitions.DEFINITIONS / name


def wait_until(pred, timeout: float = 5.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def pid(scandir: Path, name: str) -> int | None:
    return s6drv.svstat(scandir / name)["pid"]


def alive(p: int) -> bool:
    try:
        state = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def order_lines(out: Path) -> list[str]:
    f = out / "order"
    return f.read_text().splitlines() if f.exists() else []


def _ours(base: str) -> list[int]:
    """Live processes whose cwd or argv is inside `base` (this test's tmp dir)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(d / "cwd")
            argv = (d / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if (cwd == base or cwd.startswith(base + "/") or base in argv) and alive(int(d.name)):
            found.append(int(d.name))
    return found


class SvScan:
    def __init__(self, scandir: Path, out: Path, log: Path):
        self.scandir, self.out, self.log = scandir, out, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> SvScan:
        self.scandir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "ONIX_TEST_OUT": str(self.out), **STAGE2_ENV}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(["s6-svscan", str(self.scandir)], env=env,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        wait_until(lambda: s6drv.svscan_running(self.scandir), what="s6-svscan")
        return self

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        subprocess.run(["s6-svscanctl", "-t", str(self.scandir)], capture_output=True,
                       timeout=10)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)


@pytest.fixture
def out(tmp_path: Path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d


@pytest.fixture
def scandir(root: Path) -> Path:
    return root / "run" / "service"


@pytest.fixture
def s6(tmp_path: Path, scandir: Path, out: Path):
    """An s6-svscan factory (not started): s6().start(). Everything is gone after the test."""
    made: list[SvScan] = []

    def make() -> SvScan:
        sv = SvScan(scandir, out, tmp_path / "svscan.log")
        made.append(sv)
        return sv

    yield make
    for sv in made:
        sv.stop()
    base = str(tmp_path)
    for p in _ours(base):
        os.kill(p, signal.SIGKILL)
    wait_until(lambda: not _ours(base), what="the test's processes to exit")


@pytest.fixture
def svscan(s6) -> SvScan:
    return s6().start()


def reconcile(root: Path, usr: Path, state_id: int, **kw) -> services.Report:
    return services.reconcile(root=root, usr=usr, state_id=state_id, **{"timeout": T, **kw})


# -- definitions and hashes (no s6 needed) -----------------------------------------------


def test_definitions_hash_and_format(tmp_path: Path):
    usr = make_usr(tmp_path / "a", ["ticker", "web", "logged"])
    defs = definitions.load_definitions(usr)
    assert sorted(defs) == ["logged", "ticker", "web"]
    assert defs["web"].dependencies == ("ticker",)  # the comment line is ignored
    assert defs["ticker"].notification_fd == 3 and defs["web"].notification_fd is None
    assert defs["logged"].has_log and defs["logged"].log_hash != "-"
    assert defs["web"].log_hash == "-"
    # the same content elsewhere hashes the same; run-time files do not count
    usr2 = make_usr(tmp_path / "b", ["ticker"])
    (defdir(usr2, "ticker") / "down").write_text("")
    (defdir(usr2, "ticker") / "supervise").mkdir()
    assert definitions.load_definitions(usr2)["ticker"].hash == defs["ticker"].hash
    # the exec bit matters; other mode bits do not
    os.chmod(defdir(usr2, "ticker") / "data" / "version", 0o444)
    assert definitions.load_definitions(usr2)["ticker"].hash == defs["ticker"].hash
    os.chmod(defdir(usr2, "ticker") / "data" / "version", 0o755)
    assert definitions.load_definitions(usr2)["ticker"].hash != defs["ticker"].hash
    # no services directory: no services
    assert definitions.load_definitions(tmp_path / "empty" / "usr") == {}
    # a oneshot ships up; onix adds the run script and notification-fd s6 needs
    usr3 = make_usr(tmp_path / "c", ["base", "prep"])
    prep = definitions.load_definitions(usr3)["prep"]
    assert prep.oneshot and prep.notification_fd == definitions.ONESHOT_FD
    files = {e.rel: e for e in prep.entries}
    assert files["run"].data == definitions.ONESHOT_RUN and files["run"].mode & 0o100
    assert set(files) == {"dependencies", "notification-fd", "run", "type", "up"}


def test_marker_round_trip():
    m = live.Marker(hash="a" * 64, log_hash="-", state=7, status="up",
                        dirs=["data"], files=["data/check", "run"])
    assert live.Marker.decode(m.encode()) == m
    assert live.Marker.decode(b"garbage\n").status == "pending"
    bad = live.Marker.decode(m.encode() + b"file ../../etc/passwd\n")
    assert bad.files == ["data/check", "run"]


# -- reconcile under a real s6-svscan -----------------------------------------------------


def test_new_services_start_in_dependency_order(tmp_path, root, scandir, out, svscan):
    usr = make_usr(tmp_path / "s1", ["web", "ticker", "lone", "logged"])
    r = reconcile(root, usr, 1)
    assert r.supervised and r.ok, r.as_dict()
    assert r.started == ["logged", "lone", "ticker", "web"]  # depth 0 by name, then web
    assert r.stopped == r.restarted == r.unchanged == []
    lines = order_lines(out)
    assert lines.index("ticker start v1") < lines.index("web start v1 ticker=ready")
    for n in r.started:
        st = s6drv.svstat(scandir / n)
        assert st["up"] and st["pid"], (n, st)
        marker = (scandir / n / definitions.MARKER).read_text()
        assert "status up" in marker and "state 1" in marker
    assert s6drv.svstat(scandir / "ticker")["ready"]
    wait_until(lambda: "hello from logged" in (out / "logged-log" / "current").read_text()
               if (out / "logged-log" / "current").exists() else False, what="the logger")
    # the copies are real directories, not links into /usr
    assert not (scandir / "web").is_symlink() and (scandir / "web" / "run").is_file()
    rows = {row["name"]: row for row in services.list_services(root=root, usr=usr)}
    assert set(rows) == {"logged", "lone", "ticker", "web"}
    for row in rows.values():
        assert row["ours"] and row["in_state"] and row["live"] and row["hash_match"]
        assert row["state"] == "up" and row["pid"] > 0 and row["from_state"] == 1
        assert row["seconds"] is not None
    assert rows["ticker"]["ready"] is True and rows["web"]["dependencies"] == ["ticker"]
    assert rows["logged"]["logger"] is True
    assert r.as_dict()["ok"] is True and r.as_dict()["started"] == r.started


def test_unchanged_services_keep_running(tmp_path, root, scandir, svscan):
    usr1 = make_usr(tmp_path / "s1", ["ticker", "web", "lone"])
    assert reconcile(root, usr1, 1).ok
    pids = {n: pid(scandir, n) for n in ("ticker", "web", "lone")}
    usr2 = make_usr(tmp_path / "s2", ["ticker", "web", "lone"])  # same content, new state
    r = reconcile(root, usr2, 2)
    assert r.unchanged == ["lone", "ticker", "web"]
    assert r.started == r.stopped == r.restarted == r.failed == []
    assert {n: pid(scandir, n) for n in pids} == pids
    assert "state 1" in (scandir / "lone" / definitions.MARKER).read_text()  # where it came from


def test_changed_service_is_restarted_with_its_dependents(tmp_path, root, scandir, out,
                                                          svscan):
    usr1 = make_usr(tmp_path / "s1", ["ticker", "web", "lone"])
    assert reconcile(root, usr1, 1).ok
    before = {n: pid(scandir, n) for n in ("ticker", "web", "lone")}
    # only web changes: web restarts, ticker and lone keep running
    usr2 = make_usr(tmp_path / "s2", ["ticker", "web", "lone"])
    (defdir(usr2, "web") / "data" / "version").write_text("v2\n")
    r = reconcile(root, usr2, 2)
    assert r.ok and r.restarted == ["web"] and r.unchanged == ["lone", "ticker"], r.as_dict()
    assert (out / "web.version").read_text() == "v2\n"
    assert (scandir / "web" / "data" / "version").read_text() == "v2\n"
    assert pid(scandir, "web") != before["web"] and not alive(before["web"])
    assert pid(scandir, "ticker") == before["ticker"] and pid(scandir, "lone") == before["lone"]
    # ticker changes: it restarts, and so does web, which depends on it (after it)
    usr3 = make_usr(tmp_path / "s3", ["ticker", "web", "lone"])
    (defdir(usr3, "web") / "data" / "version").write_text("v2\n")
    (defdir(usr3, "ticker") / "data" / "version").write_text("v3\n")
    web_before = pid(scandir, "web")
    r = reconcile(root, usr3, 3)
    assert r.ok and r.restarted == ["ticker", "web"] and r.unchanged == ["lone"], r.as_dict()
    lines = order_lines(out)
    assert lines[-2:] == ["ticker start v3", "web start v2 ticker=ready"]
    assert pid(scandir, "web") != web_before
    # an edit of the live copy is undone: the copy no longer matches its definition
    (scandir / "lone" / "run").write_text("#!/bin/sh\nexec sleep 5\n")
    lone_before = pid(scandir, "lone")
    row = {x["name"]: x for x in services.list_services(root=root, usr=usr3)}["lone"]
    assert row["hash_match"] is False
    r = reconcile(root, usr3, 3)
    assert r.restarted == ["lone"] and pid(scandir, "lone") != lone_before
    assert (scandir / "lone" / "run").read_bytes() == (defdir(usr3, "lone") / "run").read_bytes()


def test_removed_services_are_stopped_and_gone(tmp_path, root, scandir, out, svscan):
    usr1 = make_usr(tmp_path / "s1", ["ticker", "web", "lone", "logged"])
    assert reconcile(root, usr1, 1).ok
    gone = {n: pid(scandir, n) for n in ("web", "logged")}
    logger = s6drv.svstat(scandir / "logged" / "log")["pid"]
    usr2 = make_usr(tmp_path / "s2", ["ticker", "lone"])
    r = reconcile(root, usr2, 2)
    assert r.ok and sorted(r.stopped) == ["logged", "web"] and r.unchanged == ["lone", "ticker"]
    for n, p in gone.items():
        assert not (scandir / n).exists() and not alive(p), n
    assert not alive(logger)
    assert not [p for p in scandir.iterdir() if p.name.endswith(live.REMOVING_SUFFIX)]
    # a dependency of a service cannot go while the service stays
    usr3 = make_usr(tmp_path / "s3", ["web"])
    with pytest.raises(OnixError, match="depends on ticker"):
        reconcile(root, usr3, 3)


def test_services_not_ours_are_untouched(tmp_path, root, scandir, out, svscan):
    foreign = scandir / "foreign"
    foreign.mkdir(parents=True)
    (foreign / "run").write_text("#!/bin/sh\nexec sleep 100000\n")
    os.chmod(foreign / "run", 0o755)
    subprocess.run(["s6-svscanctl", "-a", str(scandir)], check=True)
    wait_until(lambda: pid(scandir, "foreign"), what="the foreign service")
    fpid = pid(scandir, "foreign")
    usr1 = make_usr(tmp_path / "s1", ["lone"])
    assert reconcile(root, usr1, 1).started == ["lone"]
    usr2 = make_usr(tmp_path / "s2", [])
    r = reconcile(root, usr2, 2)
    assert r.stopped == ["lone"] and "foreign" not in str(r.as_dict())
    assert pid(scandir, "foreign") == fpid and not (foreign / definitions.MARKER).exists()
    row = {x["name"]: x for x in services.list_services(root=root, usr=usr2)}["foreign"]
    assert row["ours"] is False and row["in_state"] is False and row["state"] == "up"
    # a state that would take over a service that is not ours is refused
    usr3 = make_usr(tmp_path / "s3", ["lone"])
    shutil.copytree(DATA / "lone", defdir(usr3, "foreign"))
    before = snapshot(scandir)
    with pytest.raises(OnixError, match="not onix's") as e:
        reconcile(root, usr3, 3)
    assert e.value.path == str(foreign)
    assert snapshot(scandir) == before and pid(scandir, "foreign") == fpid


def test_killed_service_is_brought_back_by_s6(tmp_path, root, scandir, svscan):
    usr = make_usr(tmp_path / "s1", ["lone", "ticker"])
    assert reconcile(root, usr, 1).ok
    old = pid(scandir, "lone")
    os.kill(old, signal.SIGKILL)
    new = wait_until(lambda: (p := pid(scandir, "lone")) and p != old and p, timeout=5,
                     what="s6 to restart lone")
    r = reconcile(root, usr, 1)
    assert r.unchanged == ["lone", "ticker"] and r.restarted == [] and r.ok
    assert pid(scandir, "lone") == new


def _symlinked_run(usr: Path) -> None:
    run = defdir(usr, "web") / "run"
    run.unlink()
    run.symlink_to("/bin/true")


def _unknown_dependency(usr: Path) -> None:
    (defdir(usr, "web") / "dependencies").write_text("ticker\nnosuch\n")


def _cycle(usr: Path) -> None:
    (defdir(usr, "ticker") / "dependencies").write_text("web\n")


def _bad_name(usr: Path) -> None:
    shutil.copytree(DATA / "lone", defdir(usr, "Bad_Name"))


def _symlinked_definition(usr: Path) -> None:
    os.symlink(DATA / "lone", defdir(usr, "linked"))


def _symlink_in_data(usr: Path) -> None:
    os.symlink("/etc/shadow", defdir(usr, "ticker") / "data" / "secret")


def _not_executable(usr: Path) -> None:
    os.chmod(defdir(usr, "web") / "run", 0o644)


def _oneshot_with_run(usr: Path) -> None:
    shutil.copytree(DATA / "broken", defdir(usr, "odd"))
    shutil.copy2(DATA / "lone" / "run", defdir(usr, "odd") / "run")


def _bad_type(usr: Path) -> None:
    (defdir(usr, "web") / "type").write_text("daemon\n")


def _reserved_name(usr: Path) -> None:
    shutil.copytree(DATA / "lone", defdir(usr, definitions.STAGE2))


@pytest.mark.parametrize("breaks, where, match", [
    (_symlinked_run, "web/run", "is a symlink to /bin/true"),
    (_unknown_dependency, "web/dependencies", "depends on nosuch"),
    (_cycle, "dependencies", "dependency cycle"),
    (_bad_name, "Bad_Name", "is not a service name"),
    (_symlinked_definition, "linked", "is a symlink"),
    (_symlink_in_data, "ticker/data/secret", "is a symlink to /etc/shadow"),
    (_not_executable, "web/run", "executable run"),
    (_oneshot_with_run, "odd/run", "a oneshot ships up, not run"),
    (_bad_type, "web/type", "type must say longrun or oneshot"),
    (_reserved_name, definitions.STAGE2, "onix's own stage-2 service"),
])
def test_bad_definitions_change_nothing(tmp_path, root, scandir, svscan, breaks, where, match):
    usr1 = make_usr(tmp_path / "s1", ["lone"])
    assert reconcile(root, usr1, 1).ok
    lone = pid(scandir, "lone")
    before = snapshot(scandir)
    usr2 = make_usr(tmp_path / "s2", ["ticker", "web"])  # would stop lone, start two
    breaks(usr2)
    with pytest.raises(OnixError, match=match) as e:
        reconcile(root, usr2, 2)
    assert e.value.path and where in e.value.path
    assert snapshot(scandir) == before
    assert pid(scandir, "lone") == lone


def test_without_svscan_files_are_laid_down_and_start_later(tmp_path, root, scandir, out, s6):
    usr = make_usr(tmp_path / "s1", ["ticker", "web", "lone", "logged"])
    r = reconcile(root, usr, 1)
    assert r.supervised is False and r.ok
    assert r.started == ["logged", "lone", "ticker", "web"]
    for n in r.started:
        # down: s6-svscan supervises it but does not start it; stage 2 does, in order
        assert (scandir / n / "run").is_file() and (scandir / n / "down").exists()
        assert "status laid" in (scandir / n / definitions.MARKER).read_text()
        assert not (scandir / n / "supervise").exists()
    stage2 = scandir / definitions.STAGE2
    assert not (stage2 / "down").exists() and "onix services --up --root" in \
        (stage2 / "run").read_text()
    rows = services.list_services(root=root, usr=usr)
    assert {x["state"] for x in rows} == {"not supervised"} and not rows[0]["svscan"]
    assert {x["status"] for x in rows} == {"laid"}
    assert definitions.STAGE2 not in {x["name"] for x in rows}
    # no svscan, a definition changes and one goes: still only files
    usr2 = make_usr(tmp_path / "s2", ["ticker", "web", "lone"])
    (defdir(usr2, "lone") / "run").write_text("#!/bin/sh\necho lone2 >> \"$ONIX_TEST_OUT/order\""
                                               "\nexec sleep 100000\n")
    r = reconcile(root, usr2, 2)
    assert r.supervised is False and r.stopped == ["logged"] and r.restarted == ["lone"]
    assert r.unchanged == ["ticker", "web"]  # laid, still waiting for stage 2
    assert not (scandir / "logged").exists() and (scandir / "lone" / "down").exists()
    # s6-svscan starts: stage 2 brings up what was laid down, web after ticker is ready
    s6().start()
    wait_until(lambda: s6drv.svstat(stage2)["exitcode"] == 0 and not
               s6drv.svstat(stage2)["up"], timeout=30, what="stage 2 to finish")
    assert sorted(order_lines(out)) == ["lone2", "ticker start v1", "web start v1 ticker=ready"]
    for n in ("ticker", "web", "lone"):
        assert pid(scandir, n) and "status up" in (scandir / n / definitions.MARKER).read_text()
    pids = {n: pid(scandir, n) for n in ("ticker", "web", "lone")}
    r = reconcile(root, usr2, 2)
    assert r.supervised and r.unchanged == ["lone", "ticker", "web"] and r.ok, r.as_dict()
    assert {n: pid(scandir, n) for n in pids} == pids


def test_readiness_timeout_is_reported_and_others_start(tmp_path, root, scandir, out,
                                                        svscan):
    usr = make_usr(tmp_path / "s1", ["stuck", "lone", "ticker", "web"])
    needs = defdir(usr, "needs-stuck")
    shutil.copytree(DATA / "lone", needs)
    (needs / "dependencies").write_text("stuck\n")
    shutil.copytree(DATA / "stuck", defdir(usr, "stuck2"))
    (defdir(usr, "stuck2") / "timeout-up").write_text("500\n")  # its own limit, in ms
    t0 = time.monotonic()
    r = services.reconcile(root=root, usr=usr, state_id=1, timeout=1.5)
    took = time.monotonic() - t0
    assert r.started == ["lone", "ticker", "web"], r.as_dict()
    failed = {f["name"]: f for f in r.failed}
    assert set(failed) == {"stuck", "stuck2", "needs-stuck"}
    assert "did not get ready within 1.5 s" in failed["stuck"]["reason"]
    assert "did not get ready within 0.5 s" in failed["stuck2"]["reason"]
    assert failed["stuck"]["svstat"].startswith("up (pid")
    assert "depends on stuck" in failed["needs-stuck"]["reason"]
    assert not r.ok and took < 4  # the waits of one wave run side by side
    assert s6drv.svstat(scandir / "stuck")["up"] and pid(scandir, "needs-stuck") is None
    assert "status failed" in (scandir / "stuck" / definitions.MARKER).read_text()
    assert "status held" in (scandir / "needs-stuck" / definitions.MARKER).read_text()
    assert (scandir / "needs-stuck" / "down").exists()  # held back, even from s6-svscan
    assert "reason not started: it depends on stuck" in \
        (scandir / "needs-stuck" / definitions.MARKER).read_text()
    # fixed in the next state: stuck is retried, needs-stuck started after it
    usr2 = make_usr(tmp_path / "s2", ["lone", "ticker", "web"])
    shutil.copytree(DATA / "lone", defdir(usr2, "stuck"))
    shutil.copytree(needs, defdir(usr2, "needs-stuck"))
    r = reconcile(root, usr2, 2)
    assert r.ok and r.restarted == ["stuck", "needs-stuck"] and r.stopped == ["stuck2"], \
        r.as_dict()
    assert r.unchanged == ["lone", "ticker", "web"]


def test_logger_added_recreates_the_service(tmp_path, root, scandir, out, svscan):
    usr1 = make_usr(tmp_path / "s1", ["lone"])
    assert reconcile(root, usr1, 1).ok
    old = pid(scandir, "lone")
    usr2 = make_usr(tmp_path / "s2", [])
    shutil.copytree(DATA / "logged", defdir(usr2, "lone"))  # same name, now with a logger
    r = reconcile(root, usr2, 2)
    assert r.ok and r.restarted == ["lone"], r.as_dict()
    assert not alive(old) and s6drv.svstat(scandir / "lone" / "log")["up"]
    wait_until(lambda: (out / "logged-log" / "current").exists()
               and "hello from logged" in (out / "logged-log" / "current").read_text(),
               what="the new logger")


def test_states_from_real_transactions(tmp_path, root, scandir, out, svscan, make_stone):
    from onix.core.paths import read_state_id

    def stone(version: str):
        files: dict[str, object] = {}
        for p in sorted((DATA / "lone").rglob("*")):
            if p.is_file():
                files[f"lib/onix/services/lone/{p.relative_to(DATA / 'lone')}"] = (
                    p.read_bytes(), p.stat().st_mode & 0o777)
        files["lib/onix/services/lone/data/version"] = version
        return make_stone("lone-service", files, version=version)

    # Every transaction and rollback reconciles the scan dir itself (transaction.py).
    r = api.install(root, [stone("1")]).detail["services"]
    s1 = read_state_id(root / "usr")
    assert r["started"] == ["lone"] and r["ok"] and r["supervised"]
    p1 = pid(scandir, "lone")
    assert f"state {s1}" in (scandir / "lone" / definitions.MARKER).read_text()
    r = api.install(root, [stone("2")]).detail["services"]
    s2 = read_state_id(root / "usr")
    assert r["restarted"] == ["lone"] and r["state_id"] == s2
    assert (scandir / "lone" / "data" / "version").read_text() == "2"
    assert pid(scandir, "lone") != p1
    r = api.rollback(root).detail["services"]
    assert read_state_id(root / "usr") == s1
    assert r["restarted"] == ["lone"] and (scandir / "lone" / "data" / "version").read_text() == "1"
    assert reconcile(root, root / "usr", s1).unchanged == ["lone"]  # nothing left to do
    rows = services.list_services(root=root, usr=None)  # usr defaults to <root>/usr
    assert rows[0]["name"] == "lone" and rows[0]["hash_match"] and rows[0]["from_state"] == s1


def test_a_service_that_ignores_sigterm_is_killed(tmp_path, root, scandir, svscan):
    usr1 = make_usr(tmp_path / "s1", ["lone"])
    deaf = defdir(usr1, "deaf")
    deaf.mkdir()
    (deaf / "run").write_text("#!/bin/sh\ntrap '' TERM\nexec sleep 100000\n")
    os.chmod(deaf / "run", 0o755)
    assert reconcile(root, usr1, 1).started == ["deaf", "lone"]
    old = pid(scandir, "deaf")
    t0 = time.monotonic()
    r = services.reconcile(root=root, usr=make_usr(tmp_path / "s2", ["lone"]), state_id=2,
                           timeout=1)
    assert r.ok and r.stopped == ["deaf"] and time.monotonic() - t0 < 4
    assert not alive(old) and not (scandir / "deaf").exists()


def test_an_interrupted_reconcile_is_redone(tmp_path, root, scandir, svscan):
    usr = make_usr(tmp_path / "s1", ["lone", "ticker"])
    assert reconcile(root, usr, 1).ok
    old = pid(scandir, "lone")
    # what a crash leaves: a copy marked pending, a half-written copy, a removal
    marker = scandir / "lone" / definitions.MARKER
    marker.write_text(marker.read_text().replace("status up", "status pending"))
    (scandir / ".ghost.onix-new").mkdir()
    (scandir / ".ghost.onix-new" / "run").write_text("#!/bin/sh\n")
    (scandir / ".old.onix-removing" / "data").mkdir(parents=True)
    r = reconcile(root, usr, 1)
    assert r.ok and r.restarted == ["lone"] and r.unchanged == ["ticker"]
    assert pid(scandir, "lone") != old and "status up" in marker.read_text()
    assert sorted(p.name for p in scandir.iterdir()) == [".s6-svscan", "lone", "ticker"]


# -- boot: laid down on a fresh scan directory, then s6-svscan, then stage 2 ----------------

CHAIN = ["base", "prep", "mid", "top"]  # three longruns and a oneshot (prep), in that order


def stage2_ended(scandir: Path) -> bool:
    st = s6drv.svstat(scandir / definitions.STAGE2)
    return st["state"] == "down" and st["wanted_up"] is False  # ran once, and ended


def boot(root: Path, scandir: Path, s6) -> services.Report:
    """What a boot does: /run starts empty, init lays the live state's services down
    (onix services --sync), then execs s6-svscan, which starts onix-stage2 by itself."""
    assert not scandir.exists()
    r = reconcile(root, root / "usr", 1)
    assert r.supervised is False and r.ok, r.as_dict()
    s6().start()
    wait_until(lambda: stage2_ended(scandir), timeout=60, what="stage 2 to end")
    assert s6drv.svstat(scandir / definitions.STAGE2)["exitcode"] == 0
    return r


def chain_lines(out: Path) -> list[list[str]]:
    return [ln.split() for ln in (out / "chain").read_text().splitlines()]


@pytest.mark.parametrize("fresh", [True, False], ids=["boot", "live"])
def test_a_chain_comes_up_in_dependency_order(root, scandir, out, s6, fresh):
    usr = make_usr(root, CHAIN)
    if fresh:
        r = boot(root, scandir, s6)
    else:  # reconciled into a scan directory that s6-svscan already supervises
        s6().start()
        r = reconcile(root, usr, 1)
        assert r.supervised and r.ok, r.as_dict()
    assert r.started == CHAIN
    lines = chain_lines(out)
    assert [ln[0] for ln in lines] == CHAIN  # each started once, in dependency order
    times = [float(ln[2]) for ln in lines]
    assert times == sorted(times)
    # and each found its dependency up and ready (the oneshot prep: it had run)
    assert [ln[3:] for ln in lines] == [[], ["base=ready"], ["prep=ready", "prep-done"],
                                        ["mid=ready"]]
    rows = {x["name"]: x for x in services.list_services(root=root)}
    assert set(rows) == set(CHAIN)  # onix-stage2 is not one of the state's services
    for n in CHAIN:
        assert rows[n]["status"] == "up" and rows[n]["state"] == "up", rows[n]
        assert rows[n]["reason"] is None and rows[n]["from_state"] == 1
    assert rows["prep"]["type"] == "oneshot" and rows["prep"]["ready"] is True
    assert rows["base"]["type"] == "longrun"
    # a reconcile now finds nothing to do, and stopping the oneshot is just that
    r = reconcile(root, usr, 1)
    assert r.unchanged == sorted(CHAIN) and r.started == r.restarted == []


def test_boot_holds_what_depends_on_a_service_that_does_not_come_up(tmp_path, root, scandir,
                                                                    out, s6):
    usr = make_usr(root, ["stuck", "broken", "lone"])
    (defdir(usr, "stuck") / "timeout-up").write_text("1000\n")  # never ready: 1 s, then
    for name, dep in (("needs-stuck", "stuck"), ("needs-broken", "broken"),
                      ("needs-needs", "needs-stuck")):
        shutil.copytree(DATA / "lone", defdir(usr, name))  # a copy of lone says "lone start"
        (defdir(usr, name) / "dependencies").write_text(dep + "\n")
    boot(root, scandir, s6)
    assert order_lines(out).count("lone start") == 1  # lone; none of what depends on a failure
    assert order_lines(out).count("broken start") == 1  # a failed oneshot is not run again
    rows = {x["name"]: x for x in onix_json("services", "--root", root)}
    assert rows["stuck"]["status"] == "failed" and rows["stuck"]["up"] is True
    assert rows["stuck"]["reason"] == "did not get ready within 1 s"
    assert rows["broken"]["status"] == "failed" and rows["broken"]["up"] is False
    assert rows["broken"]["reason"] == "its up script failed (exit 3)"
    assert rows["broken"]["type"] == "oneshot"
    for name, dep in (("needs-stuck", "stuck"), ("needs-broken", "broken"),
                      ("needs-needs", "needs-stuck")):
        assert rows[name]["status"] == "held" and rows[name]["up"] is False, rows[name]
        assert rows[name]["reason"] == f"not started: it depends on {dep}, which did not " \
            "come up"
        assert (scandir / name / "down").exists()
    assert rows["lone"]["status"] == "up" and rows["lone"]["up"] is True
    human = onix("services", "--root", root, check=True).stdout
    assert "[held: not started: it depends on stuck, which did not come up]" in human
    assert "[failed: its up script failed (exit 3)]" in human
    # stage 2 said so on its console too (s6-svscan's output)
    log = (tmp_path / "svscan.log").read_text()
    assert "warning: service stuck did not come up: did not get ready within 1 s" in log
