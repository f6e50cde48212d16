"""/etc that merges (machine/etc.py): declared defaults under usr/share/factory/etc, 3-way
merged into /etc after every activation, per key for key = value files; conflicts beside
the file as FILE.onix-new; `onix etc status|diff|reset`; symlinks refused; crashes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import onix, onix_json, snapshot

from onix import api
from onix.core.errors import OnixError
from onix.core.faults import CRASH_EXIT
from onix.core.paths import RootPaths
from onix.machine import etc

CONF = "share/factory/etc/nix/nix.conf"
V1 = ("# the declared defaults\n"
      "build-users-group = nixbld\n"
      "trusted-users = root\n"
      "max-jobs = 1\n")
# The issue's new state: three keys more.
V2 = V1 + ("# Debian's nix-bin has no sandbox shell\n"
           "sandbox = false\n"
           "connect-timeout = 5\n"
           "fallback = true\n")


@pytest.fixture
def conf_stone(make_stone):
    def make(conf: str, version: str, **more: str) -> Path:
        return make_stone("onix-conf", {CONF: conf, **more}, version=version)
    return make


def nixconf(root: Path) -> Path:
    return root / "etc/nix/nix.conf"


def test_the_issue_new_keys_arrive_beside_one_local_edit(root: Path, conf_stone) -> None:
    api.install(root, [conf_stone(V1, "1")])
    conf = nixconf(root)
    assert conf.read_text() == V1
    conf.write_text(V1.replace("max-jobs = 1", "max-jobs = 8"))
    r = onix_json("install", "--root", root, conf_stone(V2, "2"))
    text = conf.read_text()
    assert "max-jobs = 8" in text and "max-jobs = 1" not in text  # the edit is kept
    for line in ("sandbox = false", "connect-timeout = 5", "fallback = true"):
        assert line in text.splitlines()  # the new keys are applied
    assert text.startswith(V1.replace("max-jobs = 1", "max-jobs = 8"))  # order, comments
    assert "# Debian's nix-bin has no sandbox shell\nsandbox = false\n" in text
    assert r["warnings"] == ["etc: /etc/nix/nix.conf: 3 keys added beside your edit"]
    assert not (root / "etc/nix/nix.conf.onix-new").exists()
    st = onix_json("status", "--root", root)
    assert st["etc"]["overrides"] == ["/etc/nix/nix.conf: max-jobs"]
    assert st["etc"]["conflicts"] == [] and st["etc"]["missing"] == []
    assert st["nix"]["drift"]["overrides"] == ["max-jobs"]  # the shape status always had
    assert st["nix"]["drift"]["conflicts"] == []
    lines = onix("status", "--root", root, check=True).stdout.splitlines()
    assert "etc drift: 1 local override" in lines
    verbose = onix("status", "--root", root, "-v", check=True).stdout.splitlines()
    assert "  /etc/nix/nix.conf: max-jobs (local override)" in verbose
    # A later transaction that changes nothing here says nothing and changes nothing.
    before = conf.read_bytes()
    r = api.install(root, [conf_stone(V2, "3")])
    assert conf.read_bytes() == before and r.warnings == []


def test_a_real_conflict_writes_onix_new_and_is_reported(root: Path, conf_stone,
                                                         make_stone) -> None:
    api.install(root, [conf_stone(V1, "1")])
    conf = nixconf(root)
    conf.write_text(V1.replace("max-jobs = 1", "max-jobs = 8"))
    v2 = V1.replace("max-jobs = 1", "max-jobs = 2").replace("trusted-users = root",
                                                          "trusted-users = root alice")
    r = api.install(root, [conf_stone(v2, "2")])
    assert conf.read_text() == V1.replace("max-jobs = 1", "max-jobs = 8").replace(
        "trusted-users = root", "trusted-users = root alice")  # the untouched key followed
    new = root / "etc/nix/nix.conf.onix-new"
    assert new.read_text() == v2
    assert r.warnings == ["etc: /etc/nix/nix.conf: 1 key changed beside your edit; "
                          "1 conflict (max-jobs) → /etc/nix/nix.conf.onix-new"]
    assert r.detail["etc"]["files"][0]["conflicts"] == ["max-jobs"]
    assert "etc drift: 1 conflict" in onix("status", "--root", root, check=True).stdout
    # It stands through a transaction that does not touch it (reported once, counted on).
    r = api.install(root, [make_stone("other", {"share/other": "x"})])
    assert r.warnings == []
    assert onix_json("status", "--root", root)["etc"]["conflicts"] == \
        ["/etc/nix/nix.conf: max-jobs"]
    rows = onix_json("etc", "status", "--root", root)
    assert [(x["path"], x["state"], x["conflicts"]) for x in rows] == \
        [("/etc/nix/nix.conf", "conflict", ["max-jobs"])]
    keys = onix_json("etc", "diff", "/etc/nix/nix.conf", "--root", root)[0]["keys"]
    assert keys == [{"key": "max-jobs", "local": "8", "default": "2", "status": "conflict"}]
    # Deleting FILE.onix-new keeps the local value: an override from then on.
    new.unlink()
    st = onix_json("status", "--root", root)["etc"]
    assert (st["overrides"], st["conflicts"]) == (["/etc/nix/nix.conf: max-jobs"], [])


def test_rollback_brings_untouched_files_back_and_keeps_edited_ones(root: Path,
                                                                   conf_stone) -> None:
    api.install(root, [conf_stone(V1, "1", **{"share/factory/etc/motd": "one\n"})])
    api.install(root, [conf_stone(V2, "2", **{"share/factory/etc/motd": "two\n",
                                              "share/factory/etc/extra.conf": "x\n",
                                              "share/factory/etc/kept.conf": "k\n"})])
    assert nixconf(root).read_text() == V2 and (root / "etc/motd").read_text() == "two\n"
    (root / "etc/kept.conf").write_text("mine\n")
    r = api.rollback(root)
    assert nixconf(root).read_text() == V1  # untouched: back to the older state's version
    assert (root / "etc/motd").read_text() == "one\n"
    assert not (root / "etc/extra.conf").exists()  # untouched, no longer declared: gone
    assert (root / "etc/kept.conf").read_text() == "mine\n"  # edited: kept
    assert r.warnings == []
    rows = {x["path"]: x["state"] for x in api.etc_status(root)}
    assert rows == {"/etc/motd": "clean", "/etc/nix/nix.conf": "clean",
                    "/etc/kept.conf": "not declared (edited)"}
    api.activate(root, 2)  # forward again: the kept file is still known, nothing conflicts
    assert nixconf(root).read_text() == V2 and (root / "etc/extra.conf").read_text() == "x\n"
    assert (root / "etc/kept.conf").read_text() == "mine\n"


def test_a_whole_file_edited_here_and_upstream_gets_onix_new(root: Path, conf_stone) -> None:
    motd = "share/factory/etc/motd"
    api.install(root, [conf_stone(V1, "1", **{motd: "welcome\n"})])
    (root / "etc/motd").write_text("welcome to my box\n")
    r = api.install(root, [conf_stone(V1, "2", **{motd: "welcome to onix\n"})])
    assert (root / "etc/motd").read_text() == "welcome to my box\n"
    assert (root / "etc/motd.onix-new").read_text() == "welcome to onix\n"
    assert r.warnings == ["etc: /etc/motd: changed here and in the new default → "
                          "/etc/motd.onix-new"]
    st = onix_json("status", "--root", root)["etc"]
    assert st["conflicts"] == ["/etc/motd"]
    d = onix("etc", "diff", "/etc/motd", "--root", root, check=True).stdout
    assert "-welcome to my box\n+welcome to onix\n" in d
    # Edited, but unchanged upstream: kept, one override, nothing new.
    api.install(root, [conf_stone(V1, "3", **{motd: "welcome to onix\n"})])
    assert (root / "etc/motd").read_text() == "welcome to my box\n"


def test_reset_throws_the_local_edit_away(root: Path, conf_stone) -> None:
    motd = "share/factory/etc/motd"
    api.install(root, [conf_stone(V1, "1", **{motd: "a\n"})])
    (root / "etc/motd").write_text("mine\n")
    api.install(root, [conf_stone(V1, "2", **{motd: "b\n"})])
    assert (root / "etc/motd.onix-new").exists()
    r = onix_json("etc", "reset", "/etc/motd", "--root", root)
    assert r == {"path": "/etc/motd", "action": "reset"}
    assert (root / "etc/motd").read_text() == "b\n"
    assert not (root / "etc/motd.onix-new").exists()
    assert onix("etc", "status", "--root", root, check=True).stdout.splitlines() == \
        ["/etc/motd: clean", "/etc/nix/nix.conf: clean"]
    # and it stays the state's: the next default replaces it
    api.install(root, [conf_stone(V1, "3", **{motd: "c\n"})])
    assert (root / "etc/motd").read_text() == "c\n"
    bad = onix("etc", "reset", "/etc/nope", "--root", root)
    assert bad.returncode == 1 and bad.stderr.startswith("error: /etc/nope: is not a file")


def test_a_symlinked_etc_dir_is_refused_and_the_root_unchanged(root: Path, conf_stone,
                                                               tmp_path: Path) -> None:
    api.install(root, [conf_stone(V1, "1")])
    outside = tmp_path / "outside"
    outside.mkdir()
    nixconf(root).unlink()
    (root / "etc/nix").rmdir()
    (root / "etc/nix").symlink_to(outside)
    before = snapshot(root)
    with pytest.raises(OnixError, match="etc/nix is a symlink to"):
        etc.merge(RootPaths.of(root))
    r = onix("etc", "reset", "/etc/nix/nix.conf", "--root", root)
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1
    assert "is a symlink" in r.stderr and "never reads or writes outside the root" in r.stderr
    assert snapshot(root) == before and list(outside.iterdir()) == []
    # A transaction goes on (its state is committed) and says why /etc did not follow.
    res = api.install(root, [conf_stone(V2, "2")])
    assert any(w.startswith("etc: ") and "is a symlink" in w for w in res.warnings)
    assert list(outside.iterdir()) == []
    assert onix("etc", "status", "--root", root).returncode == 1


def test_a_crash_between_record_and_write_is_finished_without_a_false_edit(
        root: Path, conf_stone) -> None:
    api.install(root, [conf_stone(V1, "1")])
    r = onix("install", "--root", root, conf_stone(V2, "2"), env={"ONIX_FAULT": "etc:record"})
    assert r.returncode == CRASH_EXIT, r.stderr
    assert nixconf(root).read_text() == V1  # NEW recorded, /etc not written yet
    assert (root / ".onix/etc/next/nix/nix.conf").read_text() == V2
    onix("state", "pin", "1", "--root", root, check=True)  # the next command finishes it
    assert nixconf(root).read_text() == V2
    assert not (root / ".onix/etc/next/nix/nix.conf").exists()
    assert (root / ".onix/etc/base/nix/nix.conf").read_text() == V2
    assert onix_json("status", "--root", root)["etc"]["overrides"] == []


def test_a_crash_after_the_write_never_makes_onix_s_file_look_edited(
        root: Path, conf_stone) -> None:
    api.install(root, [conf_stone(V1, "1")])
    r = onix("install", "--root", root, conf_stone(V2, "2"), env={"ONIX_FAULT": "etc:write"})
    assert r.returncode == CRASH_EXIT, r.stderr
    assert nixconf(root).read_text() == V2  # written, BASE still V1, NEXT is V2
    assert (root / ".onix/etc/base/nix/nix.conf").read_text() == V1
    # Suppose the next merge is for another state (a boot into the older entry): the file
    # is onix's (it is NEXT), so it follows that state, no conflict.
    state1 = RootPaths.of(root).state_tree(1)
    report = etc.merge(RootPaths.of(root), usr=state1)
    assert nixconf(root).read_text() == V1
    assert report.messages == [] and not (root / "etc/nix/nix.conf.onix-new").exists()
    assert not (root / ".onix/etc/next/nix/nix.conf").exists()
    # And through the CLI: the next command catches the seams up, rollback follows.
    onix("rollback", "--root", root, check=True)
    assert nixconf(root).read_text() == V1
    st = onix_json("status", "--root", root)["etc"]
    assert (st["overrides"], st["conflicts"]) == ([], [])


def test_nix_seeded_by_an_older_onix_is_migrated(root: Path, make_stone) -> None:
    """A root an older onix seeded: nix.conf declared under usr/share/onix/nix, written
    with a header, its blake3 in the meta key nix_seeded. The legacy location is still
    read (retained states ship it); the first merge adopts what onix wrote as the base."""
    import blake3

    from onix.nix.seed import META_SEEDED, _legacy_header

    api.install(root, [make_stone("onix-nix-integration",
                                  {"share/onix/nix/nix.conf": V1, "share/onix/nix/nix.sh": "x\n"},
                                  version="1")])
    conf, hook = nixconf(root), root / "etc/profile.d/nix.sh"
    old_conf = _legacy_header("nix.conf") + V1
    old_hook = _legacy_header("nix.sh") + "x\n"
    conf.write_text(old_conf.replace("max-jobs = 1", "max-jobs = 8"))  # edited by the user
    hook.write_text(old_hook)  # untouched
    seeded = {"etc/nix/nix.conf": [blake3.blake3(old_conf.encode()).hexdigest()],
              "etc/profile.d/nix.sh": [blake3.blake3(old_hook.encode()).hexdigest()]}
    import shutil

    shutil.rmtree(root / ".onix/etc")  # what an older onix left: no record
    with api.session(root, create=False) as s, s.db.write() as c:
        s.db.set_meta(c, META_SEEDED, json.dumps(seeded))
    r = api.install(root, [make_stone("onix-nix-integration", {
        CONF: V2, "share/factory/etc/profile.d/nix.sh": "y\n"}, version="2")])
    assert hook.read_text() == "y\n"  # untouched: follows, header gone
    text = conf.read_text()
    assert text.startswith("# Managed by onix") and "max-jobs = 8" in text  # edit kept
    assert "sandbox = false" in text and "fallback = true" in text  # new keys arrived
    assert r.warnings == ["etc: /etc/nix/nix.conf: 3 keys added beside your edit"]
    with api.session(root, create=False) as s, s.db.read() as c:
        assert s.db.get_meta(c, META_SEEDED) is None
    assert onix_json("status", "--root", root)["etc"]["overrides"] == \
        ["/etc/nix/nix.conf: max-jobs"]
