"""The real Nix plane: Debian's nix-daemon under s6, in a scratch root, offline.

Every test runs a NixPlane (tests/nixkit.py): R/nix appears at /nix only inside a private
mount and PID namespace, never on the host. onix itself always runs outside, with
--root R: it never needs /nix mounted, it fingerprints R/nix.

The local flake onix/validate/fixtures/nix/nixpkgs stands in for nixpkgs (`ripgrep` is a
two-line script called rg); fixtures/nix/nix-test.conf, appended to the declared nix.conf
in the test's integration stone, makes the plane offline (no substituters, a local
registry).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
from conftest import onix, onix_json, snapshot
from nixkit import (
    REPO,
    SCANDIR,
    HarnessError,
    NixPlane,
    available,
    base_accounts,
    integration_stone,
    pidns_members,
)

from onix import api
from onix.core.errors import OnixError
from onix.core.paths import RootPaths
from onix.nix import accounts as nix_accounts
from onix.nix import check as nixcheck_mod
from onix.nix import daemon as nix_daemon
from onix.nix import seed as nix_seed

SOCKET = "nix/var/nix/daemon-socket/socket"
CHECK = f"{SCANDIR}/nix-daemon/data/check"
PROFILE = ". /etc/profile.d/nix.sh && "  # what a login shell does (nixplane writes it)


@pytest.fixture(autouse=True)
def _host_untouched():
    """The host's /nix and mount table are the same after every test as before it."""
    why = available()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"the real-Nix tests cannot run: {why} (scripts/bootstrap installs "
                        "nix-bin and s6; run as root)")
        pytest.skip(why)
    had_nix = os.path.lexists("/nix")
    mounts = _mount_points()
    yield
    assert os.path.lexists("/nix") == had_nix, "the host's /nix changed"
    assert _mount_points() == mounts, "the host's mount table changed"


def _mount_points() -> list[str]:
    return sorted(line.split()[4] for line in Path("/proc/self/mountinfo").read_text()
                  .splitlines())


@pytest.fixture
def machine(root: Path, tmp_path: Path) -> Path:
    """An ONIX root: base accounts, one state with onix-nix-integration, seeded."""
    base_accounts(root)
    api.install(root, [integration_stone(tmp_path)])
    nix_seed.seed(RootPaths.of(root))
    return root


@pytest.fixture
def plane(machine: Path):
    with NixPlane(machine) as p:
        p.start_supervision()
        p.wait_ready(10)
        yield p


def alice(plane: NixPlane, cmd: str, **kw):
    return plane.sh(PROFILE + cmd, user="alice", **kw)


def store_verify(plane: NixPlane) -> None:
    r = plane.run(["nix", "store", "verify", "--all"], check=False, timeout=60)
    assert r.returncode == 0, r.stderr
    bad = [ln for ln in r.stderr.splitlines() if not ln.startswith("checking ")]
    assert not bad, r.stderr


def onix_inside(plane: NixPlane, *args: str, check: bool = True):
    """The onix CLI inside the plane (for `onix nix check`, which runs where it is called)."""
    return plane.run([sys.executable, "-m", "onix", *args], check=check, cwd=str(REPO),
                     env={"COLUMNS": "300"}, timeout=60)


def nixcheck(plane: NixPlane, user: str = "alice") -> dict:
    code = ("import json; from onix.nix.check import check; "
            f"print(json.dumps(check(user={user!r})))")
    return json.loads(plane.python(code, timeout=60).stdout)


# -- seed ------------------------------------------------------------------------------------


def test_seeded_plane_is_what_nix_reads(machine: Path) -> None:
    """nix_seed.seed's accounts and nix.conf are what nix-daemon and clients use; onix
    outside the namespace sees the daemon through R/nix; the harness adds nothing to R/etc."""
    assert nix_accounts.check_accounts(machine) == []
    clean = {"overrides": [], "errors": [], "missing": [], "conflicts": []}
    assert nix_seed.drift(RootPaths.of(machine)).as_dict() == clean
    assert nix_seed.seed(RootPaths.of(machine))["changed"] == []  # idempotent
    etc_before = snapshot(machine / "etc")
    with NixPlane(machine) as p:
        report = p.start_supervision()  # onix.services.reconcile, from outside
        assert report.started == ["nix-daemon"] and report.ok
        p.wait_ready(10)
        conf = dict(ln.split(" = ", 1) for ln in
                    p.run(["nix", "show-config"], user="alice").stdout.splitlines()
                    if " = " in ln)
        assert conf["build-users-group"] == "nixbld"
        assert conf["substituters"] == ""
        assert conf["flake-registry"] == "/srv/onix-nix/registry.json"
        assert set(conf["experimental-features"].split()) >= {"nix-command", "flakes"}
        members = p.run(["getent", "group", "nixbld"]).stdout.strip().split(":")
        assert members[2] == "30000" and len(members[3].split(",")) == 32
        assert p.run(["id", "-u", "nixbld1"]).stdout.strip() == "30001"
        # the store as Nix's installer leaves it, and the daemon's socket in R/nix
        st = (machine / "nix/store").stat()
        assert (oct(st.st_mode & 0o7777), st.st_gid) == ("0o1775", 30000)
        st = onix_json("status", "--root", machine)
        assert st["nix"]["daemon"] == "healthy", st["nix"]
        text = onix("status", "--root", machine, check=True).stdout
        assert "nix daemon: healthy" in text and "etc drift: none" in text
        # status's handshake ends the way a client does: no error in the daemon's log.
        log = p.sh("cat /var/log/nix-daemon/current 2>/dev/null || true").stdout
        assert "accepted connection" in log and "unexpected end-of-file" not in log, log
    assert snapshot(machine / "etc") == etc_before


# -- s6 supervision ---------------------------------------------------------------------------


def test_s6_brings_a_killed_daemon_back_and_the_check_sees_a_dead_one(plane: NixPlane,
                                                                      machine: Path) -> None:
    pid = plane.wait_ready()
    assert plane.run([CHECK]).returncode == 0
    t0 = time.monotonic()
    plane.run(["kill", "-9", str(pid)])
    pid2 = plane.wait_ready(5, not_pid=pid)
    back = time.monotonic() - t0
    assert pid2 != pid and back < 5
    assert plane.run([CHECK]).returncode == 0
    assert plane.run(["nix", "store", "ping", "--store", "daemon"], user="alice").returncode == 0
    log = plane.run(["cat", "/var/log/nix-daemon/current"]).stdout  # s6-log got its output
    assert "accepted connection from pid" in log and "user alice" in log

    # A daemon that died leaves its socket file behind: the readiness check is a real
    # handshake, so it fails, and so do onix's health line and `onix nix check`.
    plane.run(["s6-svc", "-O", f"{SCANDIR}/nix-daemon"])  # do not restart it this time
    plane.run(["kill", "-9", str(pid2)])
    plane.run(["s6-svwait", "-D", "-t", "5000", f"{SCANDIR}/nix-daemon"])
    assert (machine / SOCKET).is_socket()
    assert plane.run([CHECK], check=False).returncode != 0
    state, reason = nix_daemon.daemon_health(RootPaths.of(machine))
    assert state == "down" and "stale socket" in reason
    r = onix_inside(plane, "nix", "check", "--user", "alice", check=False)
    assert r.returncode == 1, r
    assert "the Nix self-test as alice failed" in r.stderr
    assert "nix-daemon is not running or not ready" in r.stderr
    plane.run(["s6-svc", "-u", f"{SCANDIR}/nix-daemon"])
    plane.wait_ready(5, not_pid=pid2)
    assert plane.run([CHECK]).returncode == 0
    assert nix_daemon.daemon_health(RootPaths.of(machine))[0] == "healthy"


# -- onix nix check ---------------------------------------------------------------------------


def test_onix_nix_check_builds_through_the_daemon_as_a_user(plane: NixPlane) -> None:
    first = nixcheck(plane, "alice")
    assert first["ok"] is True and first["path"].endswith("-onix-nix-check")
    assert first["rebuilt"] is False and first["seconds"] < 30
    # the output is in the store now: the next check builds it again (--check)
    again = nixcheck(plane, "alice")
    assert again["path"] == first["path"] and again["rebuilt"] is True
    # the command itself, with its default user (nobody, whose home does not exist)
    r = onix_inside(plane, "nix", "check")
    assert f"nix daemon built {first['path']} as nobody" in r.stdout and "ok" in r.stdout
    # nothing of the check is left in the user's home
    assert not plane.sh("ls -A /home/alice", user="alice").stdout.strip()
    with pytest.raises(OnixError, match="no user onix-no-such-user"):
        nixcheck_mod.check(user="onix-no-such-user")


# -- user profiles across a reboot ------------------------------------------------------------


@pytest.mark.slow
def test_profile_install_from_the_local_flake_survives_a_reboot(plane: NixPlane,
                                                                machine: Path) -> None:
    alice(plane, "nix profile install nixpkgs#ripgrep", timeout=60)
    assert alice(plane, "command -v rg").stdout.strip() == "/home/alice/.nix-profile/bin/rg"
    assert "onix test stand-in" in alice(plane, "rg --version").stdout
    listed = alice(plane, "nix profile list").stdout
    assert "ripgrep-14.1.0-onix-test" in listed
    plane.sh("touch /run/before-reboot")
    before = {(p["pid"], p["start"]) for p in plane.processes() if p["pid"] > 2}

    assert plane.reboot() == []  # s6 stopped the daemon and its logger itself
    plane.wait_ready(10)
    assert not (machine / "run/before-reboot").exists()  # /run starts empty
    after = {(p["pid"], p["start"]) for p in plane.processes() if p["pid"] > 2}
    assert not before & after  # every process is new (PID 1 and 2 are the harness)

    assert alice(plane, "rg after-reboot").stdout.strip() == \
        "ripgrep 14.1.0 (onix test stand-in) after-reboot"
    assert alice(plane, "nix profile list").stdout == listed
    store_verify(plane)


# -- the machine plane moves, the Nix plane does not --------------------------------------------


@pytest.mark.slow
def test_rollback_prune_and_nix_gc_leave_each_plane_alone(plane: NixPlane, machine: Path,
                                                          make_stone) -> None:
    api.install(machine, [make_stone("hello", {"bin/hello": "#!/bin/sh\necho 1\n"})])
    api.install(machine, [make_stone("hello", {"bin/hello": "#!/bin/sh\necho 2\n"},
                                             version="2")])
    alice(plane, "nix profile install nixpkgs#ripgrep", timeout=60)
    listed = alice(plane, "nix profile list").stdout
    daemon = plane.wait_ready()

    def nix_plane_intact() -> None:
        assert alice(plane, "nix profile list").stdout == listed
        assert alice(plane, "rg ok").stdout.strip() == "ripgrep 14.1.0 (onix test stand-in) ok"
        store_verify(plane)
        assert plane.wait_ready(5) == daemon  # the same daemon, never restarted
        assert plane.run([CHECK]).returncode == 0

    r = onix("rollback", "--root", machine, check=True)
    assert "/nix: untouched" in r.stdout, r.stdout
    assert onix_json("status", "--root", machine)["active_state"] == 2
    nix_plane_intact()

    nixcheck(plane)  # a Nix operation between two machine transactions
    r = onix("prune", "--keep", "1", "--root", machine, check=True)
    assert "/nix: untouched" in r.stdout, r.stdout
    ids = [s["id"] for s in onix_json("state", "list", "--root", machine)]
    assert 1 not in ids and 2 in ids
    nix_plane_intact()

    gc = plane.run(["nix", "store", "gc"], timeout=60)
    assert "onix-nix-check" in gc.stdout + gc.stderr  # unrooted: collected
    r = onix("verify", "--root", machine)
    assert r.returncode == 0, r.stdout + r.stderr
    nix_plane_intact()
    assert onix_json("status", "--root", machine)["nix"]["daemon"] == "healthy"


# -- the harness itself ----------------------------------------------------------------------


def test_harness_leaves_no_process_behind(machine: Path) -> None:
    p = NixPlane(machine).start()
    p.start_supervision()
    p.wait_ready(10)
    # a stray background process of a test does not outlive the plane either
    p.sh("sleep 600 >/dev/null 2>&1 &", timeout=5)
    assert any(x["comm"] == "sleep" for x in p.processes())
    host_pid, pidns = p.host_pid, p.pidns
    p.close()
    assert not Path(f"/proc/{host_pid}").exists()
    assert pidns_members(pidns) == []
    with pytest.raises(HarnessError, match="not running"):
        p.sh("true")


# -- review findings: new defaults reach the daemon; onix's GC roots hold --------------------


def test_new_declared_nix_conf_restarts_the_daemon(plane: NixPlane, machine: Path,
                                                   tmp_path: Path) -> None:
    from nixkit import DATA, INTEGRATION

    pid = plane.wait_ready(10)
    conf = ((INTEGRATION / "usr/share/factory/etc/nix/nix.conf").read_text()
            + (DATA / "nix-test.conf").read_text() + "max-jobs = 3\n")
    stone = integration_stone(tmp_path, version="2.0",
                              extra={"share/factory/etc/nix/nix.conf": conf})
    r = onix("install", "--root", machine, stone, check=True)
    assert "warning" not in r.stdout + r.stderr, r.stdout + r.stderr
    assert plane.wait_ready(10, not_pid=pid) != pid  # restarted for the new nix.conf
    shown = plane.run(["nix", "show-config"], user="alice").stdout
    assert "max-jobs = 3" in shown


@pytest.mark.slow
def test_onix_gc_roots_keep_what_a_state_links_to(plane: NixPlane, machine: Path,
                                                  make_stone) -> None:
    alice(plane, "nix profile install nixpkgs#ripgrep", timeout=60)
    rg = alice(plane, "readlink -f $(command -v rg)").stdout.strip()
    path = "/".join(rg.split("/")[:4])
    # A machine state that links into the store (as a Mesa built by Nix might).
    onix("install", "--root", machine,
         make_stone("uses-rg", {"bin/rg": ("symlink", rg)}), check=True)
    roots = machine / "nix/var/nix/gcroots/onix/states"
    assert path in {os.readlink(p) for p in roots.iterdir()}, list(roots.iterdir())
    alice(plane, "nix profile remove 0")
    alice(plane, "nix profile wipe-history")  # no old generation holds it any more
    plane.run(["nix", "store", "gc"], timeout=60)
    assert (machine / path.lstrip("/")).exists()  # onix's root holds it
    onix("remove", "--root", machine, "uses-rg", check=True)
    onix("prune", "--keep", "1", "--root", machine, check=True)
    plane.run(["nix", "store", "gc"], timeout=60)
    assert not (machine / path.lstrip("/")).exists()  # pruned state, root gone, collected
    store_verify(plane)


def test_nix_seed_that_rewrites_nix_conf_restarts_the_daemon(plane: NixPlane,
                                                             machine: Path) -> None:
    """Deleting /etc/nix/nix.conf is how a user gets the defaults back; seed rewrites it
    and restarts the daemon, which reads nix.conf only when it starts."""
    pid = plane.wait_ready(10)
    (machine / "etc/nix/nix.conf").unlink()
    r = onix_json("nix", "seed", "--root", machine)
    assert "/etc/nix/nix.conf" in r["changed"] and r["warnings"] == []
    assert plane.wait_ready(10, not_pid=pid) != pid
    clean = {"overrides": [], "errors": [], "missing": [], "conflicts": []}
    assert nix_seed.drift(RootPaths.of(machine)).as_dict() == clean
