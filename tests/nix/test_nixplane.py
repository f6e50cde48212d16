"""onix-nix-integration on scratch roots: accounts, /etc defaults and drift, /nix runtime dirs,
the graphics bridge, GC roots, daemon health, and the status lines.

The real nix-daemon is in tests/nix/test_nix_real.py; here a socket that nobody answers (a
fault the real daemon cannot be made to produce on demand) stands in where a test says so.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
from pathlib import Path

import pytest
from conftest import REPO, onix, onix_json, snapshot

from onix import api
from onix.core.errors import StateError
from onix.core.paths import NIX_DAEMON_SERVICE, NIX_DAEMON_SOCKET, RootPaths
from onix.nix import accounts as nix_accounts
from onix.nix import bridge as nix_bridge
from onix.nix import daemon as nix_daemon
from onix.nix import seed as nix_seed

FACTORY = REPO / "stones/onix-nix-integration/usr/share/factory/etc"


@pytest.fixture
def nix_stone(make_stone):
    def make(*, conf: str | None = None, version: str = "1.0") -> Path:
        return make_stone("onix-nix-integration", {
            "share/factory/etc/nix/nix.conf": conf if conf is not None else
            (FACTORY / "nix/nix.conf").read_text(),
            "share/factory/etc/profile.d/nix.sh": (FACTORY / "profile.d/nix.sh").read_text()},
            version=version)
    return make


@pytest.fixture
def mesa_stone(make_stone):
    """A Mesa-shaped tree (the files a real Mesa stone ships in these places)."""
    def make(version: str, *, icd_lib: str = "libvulkan_lvp.so") -> Path:
        lib = "lib/x86_64-linux-gnu"
        return make_stone("mesa", {
            f"{lib}/dri/swrast_dri.so": f"mesa {version}",
            f"{lib}/libEGL_mesa.so.0": f"egl {version}",
            f"{lib}/{icd_lib.split('/')[-1]}": f"vk {version}",
            "share/glvnd/egl_vendor.d/50_mesa.json": json.dumps(
                {"file_format_version": "1.0.0", "ICD": {"library_path": "libEGL_mesa.so.0"}}),
            "share/vulkan/icd.d/lvp_icd.x86_64.json": json.dumps(
                {"file_format_version": "1.0.0", "ICD": {"library_path": icd_lib}}),
        }, version=version)
    return make


def test_seed_accounts_fixed_ids_and_other_lines_kept(root: Path) -> None:
    etc = root / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n"
                                "alice:x:1000:1000::/home/a:/bin/sh\n")
    (etc / "group").write_text("root:x:0:\nalice:x:1000:\n")
    (etc / "shadow").write_text("root:*:1::::::\n")
    os.chmod(etc / "shadow", 0o640)
    r = nix_seed.seed(RootPaths.of(root), runtime=False)
    assert sorted(r["changed"]) == ["/etc/group", "/etc/passwd", "/etc/shadow"]
    passwd = (etc / "passwd").read_text().splitlines()
    assert passwd[:2] == ["root:x:0:0:root:/root:/bin/sh", "alice:x:1000:1000::/home/a:/bin/sh"]
    users = [ln.split(":") for ln in passwd if ln.startswith("nixbld")]
    assert [(u[0], u[2], u[3], u[5], u[6]) for u in users] == [
        (f"nixbld{i}", str(30000 + i), "30000", "/var/empty", "/usr/sbin/nologin")
        for i in range(1, 33)]
    group = (etc / "group").read_text().splitlines()
    assert group[-1] == "nixbld:x:30000:" + ",".join(f"nixbld{i}" for i in range(1, 33))
    assert all(ln.split(":")[1] == "!" for ln in (etc / "shadow").read_text().splitlines()
               if ln.startswith("nixbld"))
    assert stat.S_IMODE((etc / "shadow").stat().st_mode) == 0o640
    assert nix_accounts.check_accounts(root) == []
    before = snapshot(root)
    assert nix_seed.seed(RootPaths.of(root), runtime=False)["changed"] == []  # idempotent
    assert snapshot(root) == before


def test_seed_refuses_a_conflicting_nixbld_and_changes_nothing(root: Path) -> None:
    (root / "etc").mkdir()
    (root / "etc/group").write_text("nixbld:x:1234:\n")
    before = snapshot(root)
    with pytest.raises(StateError, match="gid 1234, not 30000"):
        nix_seed.seed(RootPaths.of(root), runtime=False)
    assert snapshot(root) == before
    assert nix_accounts.check_accounts(root) == [
        "group nixbld has gid 1234, not 30000",
        "32 of the 32 nixbld users are missing from /etc/passwd"]


def test_runtime_dirs_have_the_installers_modes(root: Path) -> None:
    made = nix_seed.seed(RootPaths.of(root), runtime=True)["changed"]
    assert "/nix/store" in made and "/nix/var/nix/profiles/per-user" in made
    st = (root / "nix/store").stat()
    assert stat.S_IMODE(st.st_mode) == 0o1775 and (st.st_uid, st.st_gid) == (0, 30000)
    for rel in ("nix/var/nix/profiles/per-user", "nix/var/nix/gcroots/per-user",
                "nix/var/nix/daemon-socket"):
        assert stat.S_IMODE((root / rel).stat().st_mode) == 0o755
    assert not (root / "nix/var/nix/db").exists()  # Nix makes its database itself


def test_declared_defaults_materialised_edits_kept_and_reported(root: Path, nix_stone) -> None:
    api.install(root, [nix_stone()])
    conf = root / "etc/nix/nix.conf"
    assert conf.read_text() == (FACTORY / "nix/nix.conf").read_text()  # verbatim, no header
    assert (root / "etc/profile.d/nix.sh").read_text() == \
        (FACTORY / "profile.d/nix.sh").read_text()
    assert nix_seed.drift(RootPaths.of(root)).overrides == []
    assert not (root / "nix").exists()  # a transaction never writes inside /nix
    # New defaults replace an unedited file ...
    api.install(root, [nix_stone(conf="build-users-group = nixbld\nsandbox = false\n"
                                         "max-jobs = 4\n", version="2.0")])
    assert conf.read_text() == "build-users-group = nixbld\nsandbox = false\nmax-jobs = 4\n"
    # ... a local edit is kept, merged per key: sandbox was not touched here, so it
    # follows the new default; max-jobs was, and the new default drops it: a conflict.
    conf.write_text(conf.read_text().replace("max-jobs = 4", "max-jobs = 16") + "cores = 2\n")
    r = api.install(root, [nix_stone(conf="build-users-group = nixbld\nsandbox = true\n",
                                     version="3.0")])
    assert conf.read_text() == "build-users-group = nixbld\nsandbox = true\nmax-jobs = 16\n" \
        "cores = 2\n"
    assert (root / "etc/nix/nix.conf.onix-new").read_text() == \
        "build-users-group = nixbld\nsandbox = true\n"
    assert "etc: /etc/nix/nix.conf: 1 key changed beside your edit; 1 conflict (max-jobs) " \
        "→ /etc/nix/nix.conf.onix-new" in r.warnings
    d = nix_seed.drift(RootPaths.of(root))
    assert (d.overrides, d.conflicts) == (["cores"], ["max-jobs"])
    st = onix_json("status", "--root", root)
    assert st["nix"]["drift"]["overrides"] == ["cores"]
    assert st["etc"]["conflicts"] == ["/etc/nix/nix.conf: max-jobs"]
    lines = onix("status", "--root", root, check=True).stdout.splitlines()
    assert "etc drift: 1 local override, 1 conflict" in lines
    verbose = onix("status", "--root", root, "--verbose", check=True).stdout.splitlines()
    assert "  /etc/nix/nix.conf: cores (local override)" in verbose


def test_syntax_error_in_nix_conf_is_reported_with_its_line(root: Path, nix_stone) -> None:
    api.install(root, [nix_stone()])
    conf = root / "etc/nix/nix.conf"
    conf.write_text(conf.read_text() + "this line is not a setting\nmax-jobs=4\n"
                    "include a b\n")
    n = len(conf.read_text().splitlines())
    out = onix("status", "--root", root, check=True).stdout
    assert f"  error: /etc/nix/nix.conf line {n - 2}: illegal configuration line" in out
    # `max-jobs=4` is fatal to Nix 2.8 (it wants spaces around =): an error here too.
    assert f"  error: /etc/nix/nix.conf line {n - 1}: illegal configuration line " \
           "'max-jobs=4'" in out
    assert f"  error: /etc/nix/nix.conf line {n}: include takes exactly one path" in out


def test_status_lines_in_product_order(root: Path, nix_stone, mesa_stone) -> None:
    r = api.install(root, [nix_stone(), mesa_stone("22.3.6")])
    nix_seed.seed(RootPaths.of(root), runtime=True)
    lines = onix("status", "--root", root, check=True).stdout.splitlines()
    assert lines[0] == f"active fstx: {r.fstx}"
    assert lines[1].startswith("nix daemon: down (no socket at ")
    assert lines[2] == "etc drift: none"
    assert lines[3] == "opengl: coherent"


def test_missing_nixbld_group_is_a_status_note(root: Path, nix_stone) -> None:
    api.install(root, [nix_stone()])
    group = root / "etc/group"
    group.write_text("".join(ln + "\n" for ln in group.read_text().splitlines()
                             if not ln.startswith("nixbld:")))
    notes = onix_json("status", "--root", root)["notes"]
    assert "nix: group nixbld is missing from /etc/group (onix nix seed adds it)" in notes


def test_daemon_health_stale_socket_and_silent_daemon(root: Path) -> None:
    nix_seed.seed(RootPaths.of(root), runtime=True)
    sock_path = root / NIX_DAEMON_SOCKET
    assert nix_daemon.daemon_health(RootPaths.of(root)) == ("down", f"no socket at {sock_path}")
    # A daemon that died leaves its socket file: connecting is refused.
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(sock_path))
    srv.close()
    state, reason = nix_daemon.daemon_health(RootPaths.of(root))
    assert state == "down" and reason.startswith("stale socket")
    # Fault injection: a listener that accepts and never answers (a hung daemon).
    sock_path.unlink()
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(sock_path))
    srv.listen(1)
    conns = []
    t = threading.Thread(target=lambda: conns.append(srv.accept()), daemon=True)
    t.start()
    try:
        state, reason = nix_daemon.daemon_health(RootPaths.of(root))
        assert state == "not ready" and "did not answer" in reason
        line = onix("status", "--root", root).stdout
        assert line == "" or "nix daemon" not in line or "not ready" in line
    finally:
        srv.close()
        for c, _ in conns:
            c.close()


def test_opengl_bridge_follows_rollback_and_reports_stale(root: Path, nix_stone,
                                                          mesa_stone) -> None:
    one = api.install(root, [nix_stone(), mesa_stone("22.3.6")])
    bridge = root / "run/opengl-driver"
    assert os.readlink(bridge) == f"/run/onix/opengl-driver-{one.fstx}"
    driver = root / "run/onix" / f"opengl-driver-{one.fstx}"
    assert os.readlink(driver / "lib/dri") == "/usr/lib/x86_64-linux-gnu/dri"
    assert os.readlink(driver / "share/vulkan/icd.d") == "/usr/share/vulkan/icd.d"
    assert nix_bridge.opengl_status(RootPaths.of(root), fstx=one.fstx) == "coherent"
    two = api.install(root, [mesa_stone("25.0.7")])
    assert os.readlink(bridge) == f"/run/onix/opengl-driver-{two.fstx}"
    dri = root / "usr/lib/x86_64-linux-gnu/dri/swrast_dri.so"
    assert dri.read_text() == "mesa 25.0.7"
    api.rollback(root)
    assert os.readlink(bridge) == f"/run/onix/opengl-driver-{one.fstx}"
    assert dri.read_text() == "mesa 22.3.6"  # what a Nix app's loader finds through the bridge
    assert sorted(p.name for p in (root / "run/onix").iterdir()) == \
        [f"opengl-driver-{one.fstx}"]
    # Stale: the bridge names another state (e.g. a /run restored from elsewhere).
    os.unlink(bridge)
    os.symlink(f"/run/onix/opengl-driver-{two.fstx}", bridge)
    assert nix_bridge.opengl_status(RootPaths.of(root), fstx=one.fstx).startswith(
        "stale: /run/opengl-driver points at")
    onix("nix", "seed", "--root", root, check=True)
    assert onix_json("status", "--root", root)["nix"]["opengl"] == "coherent"
    # Stale: an ICD file that names a library the state does not have.
    api.install(root, [mesa_stone("25.0.8", icd_lib="/usr/lib/nope/libvk.so")])
    assert "names /usr/lib/nope/libvk.so, which does not exist" in \
        onix_json("status", "--root", root)["nix"]["opengl"]


def test_gc_roots_for_store_links_follow_the_states(root: Path, make_stone) -> None:
    nix_seed.seed(RootPaths.of(root), runtime=True)
    (root / "nix/store/aaaa-ripgrep-14.1/bin").mkdir(parents=True)
    link = make_stone("uses-nix", {"bin/rg": ("symlink", "/nix/store/aaaa-ripgrep-14.1/bin/rg")})
    r1 = api.install(root, [link])
    roots = root / "nix/var/nix/gcroots/onix/states"
    assert {p.name: os.readlink(p) for p in roots.iterdir()} == \
        {"1-0": "/nix/store/aaaa-ripgrep-14.1"}
    assert r1.nix == "untouched"  # onix's own roots are its seam, not Nix's
    api.remove(root, ["uses-nix"])
    assert {p.name for p in roots.iterdir()} == {"1-0"}  # state 1 still retained
    api.prune(root, keep=1)
    assert list(roots.iterdir()) == []


def test_nix_seed_cli_and_json(root: Path, nix_stone) -> None:
    api.install(root, [nix_stone()])
    r = onix_json("nix", "seed", "--root", root)
    assert "/nix/store" in r["changed"]
    assert onix_json("nix", "seed", "--root", root)["changed"] == []


def test_a_daemon_that_will_not_start_is_reported_with_what_s6_says(root: Path,
                                                                    nix_stone) -> None:
    """A real s6-svscan supervising a nix-daemon service whose run script fails."""
    import shutil
    import subprocess
    import time

    if shutil.which("s6-svscan") is None:
        pytest.fail("s6 is not installed: run ./scripts/bootstrap")
    api.install(root, [nix_stone()])
    nix_seed.seed(RootPaths.of(root), runtime=True)
    svc = root / NIX_DAEMON_SERVICE
    svc.mkdir(parents=True)
    (svc / "run").write_text("#!/bin/sh\necho 'nix-daemon: cannot start' >&2\nexit 1\n")
    os.chmod(svc / "run", 0o755)
    scan = subprocess.Popen(["s6-svscan", str(svc.parent)], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            state, reason = nix_daemon.daemon_health(RootPaths.of(root))
            if "s6: down" in reason:
                break
            time.sleep(0.1)
        assert state == "down" and "s6: down" in reason and "exit 1" in reason, reason
        line = next(ln for ln in onix("status", "--root", root, check=True).stdout.splitlines()
                    if ln.startswith("nix daemon:"))
        assert line.startswith("nix daemon: down (no socket at ") and "exit 1" in line
    finally:
        subprocess.run(["s6-svscanctl", "-t", str(svc.parent)], check=False)
        try:
            scan.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(scan.pid, 9)
            scan.wait()


@pytest.mark.parametrize("rel", ["etc", "etc/nix", "run/onix", "nix/var"])
def test_symlinked_directories_are_never_written_through(root: Path, nix_stone, mesa_stone,
                                                         tmp_path: Path, rel: str) -> None:
    """The root is a scratch dir on a host: a symlink there must not lead onix outside."""
    api.install(root, [nix_stone(), mesa_stone("22.3.6")])
    outside = tmp_path / "outside"
    outside.mkdir()
    target = root / rel
    if target.exists():
        import shutil

        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(outside)
    r = onix("nix", "seed", "--root", root)
    assert r.returncode == 1 and "is a symlink" in r.stderr and rel in r.stderr, r.stderr
    assert list(outside.iterdir()) == []


def test_services_sync_lays_the_services_down_again_after_a_reboot(root: Path,
                                                                   tmp_path: Path) -> None:
    """/run starts empty at boot; `onix services --sync` (a boot service) lays the live
    state's services down again. No s6-svscan runs here, so they are laid, not started."""
    import shutil

    from onix.machine.stone import StoneMeta, pack

    stone = tmp_path / "integration.stone"
    pack(REPO / "stones/onix-nix-integration", stone,
         StoneMeta(name="onix-nix-integration", version="1"))
    api.install(root, [stone])
    assert (root / "run/service/nix-daemon/run").exists()
    shutil.rmtree(root / "run")  # the reboot
    rows = onix_json("services", "--sync", "--root", root)
    row = next(r for r in rows if r["name"] == "nix-daemon")
    assert row["in_state"] and row["live"] and row["hash_match"]
    assert (root / "run/service/nix-daemon/data/check").exists()


# -- review findings: each seam on its own, crashes after the journal, odd /etc files -----


def test_a_broken_etc_never_leaves_store_links_unrooted(root: Path, nix_stone,
                                                        make_stone) -> None:
    nix_seed.seed(RootPaths.of(root), runtime=True)
    (root / "etc/group").write_text("nixbld:x:1234:\n")  # seed will refuse this
    (root / "nix/store/abcd-firefox/bin").mkdir(parents=True)
    r = api.install(root, [nix_stone(), make_stone(
        "ff", {"bin/firefox": ("symlink", "/nix/store/abcd-firefox/bin/firefox")})])
    assert any("nix plane (seed)" in w and "gid 1234" in w for w in r.warnings), r.warnings
    roots = root / "nix/var/nix/gcroots/onix/states"
    assert {os.readlink(p) for p in roots.iterdir()} == {"/nix/store/abcd-firefox"}
    notes = onix_json("status", "--root", root)["notes"]
    assert any("lag behind the live state" in n for n in notes), notes


def test_a_crash_after_the_journal_closed_is_caught_up(root: Path, make_stone) -> None:
    from conftest import onix as cli

    nix_seed.seed(RootPaths.of(root), runtime=True)
    (root / "nix/store/bbbb-tool/bin").mkdir(parents=True)
    api.install(root, [make_stone("a", {"bin/a": "a"})])
    s = make_stone("tool", {"bin/tool": ("symlink", "/nix/store/bbbb-tool/bin/tool")})
    r = cli("install", "--root", root, s, env={"ONIX_FAULT": "install:done"})
    assert r.returncode == 86
    roots = root / "nix/var/nix/gcroots/onix/states"
    assert not roots.exists() or not list(roots.iterdir())  # the crash came before the seams
    cli("state", "pin", "1", "--root", root, check=True)  # any mutating command catches up
    assert {os.readlink(p) for p in roots.iterdir()} == {"/nix/store/bbbb-tool"}


def test_latin1_passwd_and_odd_lines_survive_seeding(root: Path) -> None:
    etc = root / "etc"
    etc.mkdir()
    passwd = (b"root:x:0:0:root:/root:/bin/sh\n#old:x:30001:30000::/:/bin/false\n"
              b"jose:x:1001:1001:Jos\xe9:/home/jose:/bin/sh\n+::::::\n")
    (etc / "passwd").write_bytes(passwd)
    (etc / "group").write_text("root:x:0:\nshort:x\nnixbld:x:30000:\n")
    (etc / "gshadow").write_text("root:*::\n")
    r = nix_seed.seed(RootPaths.of(root), runtime=False)
    assert "/etc/gshadow" in r["changed"]
    out = (etc / "passwd").read_bytes()
    assert b"Jos\xe9" in out and out.endswith(b"+::::::\n")  # NIS line stays last
    assert b"#old:x:30001" in out and b"nixbld1:x:30001:30000" in out
    group = (etc / "group").read_text().splitlines()
    assert group[2] == "nixbld:x:30000:" + ",".join(f"nixbld{i}" for i in range(1, 33))
    assert "short:x" in group
    assert nix_accounts.check_accounts(root) == []
    st = onix_json("status", "--root", root) if (root / ".onix").exists() else None
    assert st is None


def test_group_without_members_is_reported_and_fixed(root: Path) -> None:
    nix_seed.seed(RootPaths.of(root), runtime=False)
    group = root / "etc/group"
    group.write_text("nixbld:x:30000:\n")
    assert nix_accounts.check_accounts(root) == [
        "group nixbld is missing 32 of its 32 members (Nix builds need them)"]
    assert nix_seed.seed(RootPaths.of(root), runtime=False)["changed"] == ["/etc/group"]
    assert nix_accounts.check_accounts(root) == []


def test_directories_are_0755_whatever_the_umask(root: Path, nix_stone, mesa_stone) -> None:
    old = os.umask(0o027)
    try:
        api.install(root, [nix_stone(), mesa_stone("22.3.6")])
        nix_seed.seed(RootPaths.of(root), runtime=True)
    finally:
        os.umask(old)
    for rel in ("etc/nix", "etc/profile.d", "run", "run/onix", "nix", "nix/var/nix/profiles"):
        assert stat.S_IMODE((root / rel).stat().st_mode) == 0o755, rel


def test_bad_declared_defaults_or_service_cycle_never_become_live(root: Path, nix_stone,
                                                                  make_stone) -> None:
    api.install(root, [nix_stone()])
    live = (root / "usr/.stateID").read_text()
    conf = root / "etc/nix/nix.conf"
    before = conf.read_bytes()
    r = onix("install", "--root", root, nix_stone(conf="max-jobs=4\n", version="2.0"))
    assert r.returncode == 1 and "illegal configuration line" in r.stderr, r.stderr
    cycle = make_stone("svc", {"lib/onix/services/a/run": ("#!/bin/sh\nexec sleep 9\n", 0o755),
                               "lib/onix/services/a/dependencies": "b\n",
                               "lib/onix/services/b/run": ("#!/bin/sh\nexec sleep 9\n", 0o755),
                               "lib/onix/services/b/dependencies": "a\n"})
    r = onix("install", "--root", root, cycle)
    assert r.returncode == 1 and "cycle" in r.stderr.lower(), r.stderr
    assert (root / "usr/.stateID").read_text() == live and conf.read_bytes() == before
