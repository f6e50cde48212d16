"""Install, remove, rollback, activate, pin, prune and verify on real scratch roots."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest
from conftest import fake_nix, onix, onix_json, snapshot

from onix import api
from onix.core.errors import ConflictError, StateError
from onix.core.paths import RootPaths, read_state_id
from onix.machine.store import Store


def base_files(tag: str = "1") -> dict:
    return {
        "bin/hello": (f"#!/bin/sh\necho hello {tag}\n", 0o755),
        "bin/hi": ("symlink", "hello"),
        "lib/libhello.so.1": f"ELF {tag}" * 100,
        "lib/empty-a": b"",
        "lib/empty-b": b"",
        "share/doc/hello/README": "read me",
    }


def test_install_builds_state_from_store(root: Path, make_stone) -> None:
    s1 = make_stone("hello", base_files())
    r = api.install(root, [s1])
    assert r.to_state == 1 and r.from_state is None
    assert re.fullmatch(r"1-[0-9a-f]{4}", r.fstx)
    usr = root / "usr"
    assert read_state_id(usr) == 1
    assert (usr / "bin/hello").read_text().endswith("hello 1\n")
    assert os.readlink(usr / "bin/hi") == "hello"
    # hardlinked from the store, write bits stripped
    st = (usr / "bin/hello").stat()
    assert stat.S_IMODE(st.st_mode) == 0o555
    store = Store(RootPaths.of(root))
    objs = {p.stat().st_ino for _k, p in store.objects()}
    assert st.st_ino in objs and st.st_nlink >= 2
    # empty files are fresh inodes, never store objects
    a, b = (usr / "lib/empty-a").stat(), (usr / "lib/empty-b").stat()
    assert a.st_ino != b.st_ino and a.st_nlink == 1
    # generated files and root links
    assert "ONIX_FSTX=" + r.fstx in (usr / "lib/os-release").read_text()
    for name in ("bin", "sbin", "lib", "lib64"):
        assert os.readlink(root / name) == f"usr/{name}"
    assert api.verify(root).clean


def test_upgrade_replaces_by_name_and_rollback(root: Path, make_stone) -> None:
    fake_nix(root)
    api.install(root, [make_stone("hello", base_files("1"), version="1.0")])
    r2 = api.install(root, [make_stone("hello", base_files("2"), version="2.0")])
    assert r2.summary == "install hello 1.0-1 → 2.0-1"
    assert (root / "usr/bin/hello").read_text().endswith("hello 2\n")
    show = api.show_state(root, 2)
    assert [(s["name"], s["version"]) for s in show["stones"]] == [("hello", "2.0")]
    # rollback through the real CLI prints the product page's lines
    out = onix("rollback", "--root", root, check=True).stdout
    assert "plane: machine" in out and "/nix: untouched" in out
    assert read_state_id(root / "usr") == 1
    assert (root / "usr/bin/hello").read_text().endswith("hello 1\n")
    assert (root / ".onix/states/2/usr/.stateID").read_text() == "2\n"
    assert api.verify(root).clean
    # activate forward again
    api.activate(root, 2)
    assert read_state_id(root / "usr") == 2 and api.verify(root).clean


def test_same_stone_again_is_a_no_op(root: Path, make_stone) -> None:
    s1 = make_stone("hello", base_files())
    api.install(root, [s1])
    before = snapshot(root)
    r = api.install(root, [s1])
    assert not r.changed
    assert snapshot(root) == before


def test_remove_and_diff(root: Path, make_stone) -> None:
    api.install(root, [make_stone("hello", base_files())])
    api.install(root, [make_stone("extra", {"share/extra/x": "x", "bin/extra": "e"})])
    r = api.remove(root, ["extra"])
    assert r.to_state == 3
    assert not (root / "usr/share/extra").exists()
    d = api.diff_states(root, 2, 3)
    assert d["stones"] == [{"name": "extra", "from": "1.0-1", "to": None, "kind": "removed"}]
    assert "/usr/bin/extra" in d["files"]["removed"]
    assert d["files"]["added"] == []
    d = api.diff_states(root, 1, 2)
    assert "/usr/share/extra/x" in d["files"]["added"]
    with pytest.raises(StateError, match="not installed: nope"):
        api.remove(root, ["nope"])


def test_file_conflict_names_both_stones(root: Path, make_stone) -> None:
    api.install(root, [make_stone("hello", base_files())])
    clash = make_stone("clash", {"bin/hello": "not hello"})
    with pytest.raises(ConflictError) as e:
        api.install(root, [clash])
    assert "hello" in e.value.message and "clash" in e.value.message
    assert "/usr/bin/hello" in e.value.message


def test_dependencies_are_checked(root: Path, make_stone) -> None:
    app = make_stone("app", {"bin/app": "a"}, depends=["libfoo"])
    with pytest.raises(ConflictError, match="app needs libfoo"):
        api.install(root, [app])
    lib = make_stone("foo", {"lib/libfoo.so": "f"}, provides=["libfoo"])
    api.install(root, [app, lib])
    with pytest.raises(ConflictError, match="would break"):
        api.remove(root, ["foo"])


def test_state_ids_never_reused_and_list_order(root: Path, make_stone) -> None:
    for i in range(4):
        api.install(root, [make_stone("hello", base_files(str(i)), version=f"{i}.0")])
    listed = api.list_states(root)
    assert [s["id"] for s in listed] == [4, 3, 2, 1]
    assert [s["active"] for s in listed] == [True, False, False, False]
    api.rollback(root)
    api.prune(root, keep=1)  # keeps 4 (newest) and 3 (active)
    assert [s["id"] for s in api.list_states(root)] == [4, 3]
    api.install(root, [make_stone("hello", base_files("x"), version="9.0")])
    assert read_state_id(root / "usr") == 5


def test_prune_respects_active_pinned_and_frees_store(root: Path, make_stone) -> None:
    fake_nix(root)
    for i in range(5):
        api.install(root, [make_stone("hello", base_files(str(i)), version=f"{i}.0")])
    api.set_pinned(root, 1, True)
    api.activate(root, 2)
    store = Store(RootPaths.of(root))
    before = {k.digest for k, _ in store.objects()}
    r = api.prune(root, keep=2)  # keep 5, 4 (newest), 2 (active), 1 (pinned)
    assert r.detail["states"] == [3]
    assert r.nix == "untouched"
    assert r.detail["bytes_freed"] > 0 and r.detail["objects"] > 0
    assert not (root / ".onix/states/3").exists()
    after = {k.digest for k, _ in store.objects()}
    assert after < before
    assert [s["id"] for s in api.list_states(root)] == [5, 4, 2, 1]
    assert api.verify(root).clean
    # every remaining archived state can still be activated and verifies clean
    for sid in (5, 4, 1):
        api.activate(root, sid)
        assert api.verify(root).clean


def test_prune_cli_prints_bytes_and_nix(root: Path, make_stone) -> None:
    fake_nix(root)
    for i in range(3):
        api.install(root, [make_stone("hello", base_files(str(i)), version=f"{i}.0")])
    out = onix("prune", "--keep", "1", "--root", root, check=True).stdout
    assert "removed states: 1, 2" in out
    assert re.search(r"freed \d", out)
    assert "/nix: untouched" in out


def test_state_remove_refuses_active_and_pinned(root: Path, make_stone) -> None:
    api.install(root, [make_stone("hello", base_files("1"))])
    api.install(root, [make_stone("hello", base_files("2"), version="2")])
    with pytest.raises(StateError, match="active"):
        api.remove_states(root, [2])
    api.set_pinned(root, 1, True)
    with pytest.raises(StateError, match="pinned"):
        api.remove_states(root, [1])
    api.set_pinned(root, 1, False)
    api.remove_states(root, [1])
    assert [s["id"] for s in api.list_states(root)] == [2]


def test_verify_detects_and_fixes(root: Path, make_stone) -> None:
    api.install(root, [make_stone("hello", base_files())])
    usr = root / "usr"
    # a stray write through the hardlink corrupts the store object too (OSTree's hazard)
    os.chmod(usr / "lib/libhello.so.1", 0o644)
    (usr / "lib/libhello.so.1").write_text("tampered")
    os.chmod(usr / "lib/libhello.so.1", 0o444)
    (usr / "share/doc/hello/README").unlink()
    (usr / "bin/stray").write_text("no stone owns me")
    os.unlink(usr / "bin/hi")
    os.symlink("elsewhere", usr / "bin/hi")
    report = api.verify(root)
    problems = {(p.path, p.problem) for p in report.problems}
    assert ("/usr/share/doc/hello/README", "missing") in problems
    assert ("/usr/bin/stray", "extra") in problems
    assert ("/usr/bin/hi", "target") in problems
    assert ("/usr/lib/libhello.so.1", "corrupt") in problems
    assert any(p.problem == "corrupt" and p.path.startswith(".onix/store") for p in
               report.problems)
    # the CLI exits non-zero when not clean
    assert onix("verify", "--root", root).returncode == 1
    fixed = api.verify(root, fix=True)
    assert fixed.clean, fixed.problems
    assert (usr / "lib/libhello.so.1").read_text().startswith("ELF 1")
    assert not (usr / "bin/stray").exists()


def test_status_and_json(root: Path, make_stone) -> None:
    r = onix("status", "--root", root, check=True)
    assert "not an ONIX root yet" in r.stdout
    api.install(root, [make_stone("hello", base_files())])
    st = onix_json("status", "--root", root)
    assert st["active_state"] == 1 and st["states"] == 1 and st["store_bytes"] > 0
    out = onix("status", "--root", root, check=True).stdout
    assert f"active fstx: {st['active_fstx']}" in out
    listed = onix_json("state", "list", "--root", root)
    assert listed[0]["fstx"] == st["active_fstx"] and listed[0]["active"] is True
    own = onix_json("ownership", "--root", root)
    assert {"surface": "/nix", "owner": "Nix",
            "reason": "persistent store, daemon, profiles"} in own


def test_status_does_not_import_sqlalchemy(root: Path, make_stone) -> None:
    api.install(root, [make_stone("hello", base_files())])
    code = ("import sys; from onix.cli.main import main; sys.argv=['onix','status','--root',"
            f"{str(root)!r}]\ntry:\n main()\nexcept SystemExit: pass\n"
            "heavy = {'sqlalchemy', 'zstandard', 'typer', 'rich', 'pydantic'} & set(sys.modules)\n"
            "assert not heavy, heavy")
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_verify_fix_two_problems_one_path_and_archived_trees(root: Path, make_stone) -> None:
    api.install(root, [make_stone("hello", base_files("1"))])
    api.install(root, [make_stone("extra", {"share/e": "e"})])  # state 1 archived
    lib = root / "usr/lib/libhello.so.1"
    os.chmod(lib, 0o644)
    lib.write_text("tampered")  # corrupts the store object and state 1's archived copy too
    r = onix("verify", "--root", root, "--json")
    assert r.returncode == 1
    problems = {(p["path"], p["problem"]) for p in json.loads(r.stdout)["problems"]}
    assert ("/usr/lib/libhello.so.1", "mode") in problems
    assert ("/usr/lib/libhello.so.1", "corrupt") in problems
    assert (".onix/states/1/usr/lib/libhello.so.1", "corrupt") in problems
    fixed = api.verify(root, fix=True)
    assert fixed.clean, fixed.problems
    assert not list((root / "usr/lib").glob(".*onix-fix"))
    api.rollback(root)
    assert (root / "usr/lib/libhello.so.1").read_text().startswith("ELF 1")
    assert api.verify(root).clean


def test_status_does_not_wait_for_a_running_transaction(root: Path, make_stone) -> None:
    import fcntl

    api.install(root, [make_stone("hello", base_files())])
    s2 = make_stone("hello", base_files("2"), version="2")
    crashed = onix("install", s2, "--root", root, env={"ONIX_FAULT": "install:blit"})
    assert crashed.returncode == 86
    fd = os.open(root / ".onix/lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as if that install were still running
    try:
        st = onix_json("status", "--root", root)
        assert any("in progress" in n for n in st["notes"]), st["notes"]
        assert st["active_state"] == 1
    finally:
        os.close(fd)
    st = onix_json("status", "--root", root)  # now nobody holds it: status recovers
    assert any("undid interrupted install" in n for n in st["notes"]), st["notes"]


def test_ownership_reads_the_root(root: Path, make_stone) -> None:
    import sqlite3

    api.install(root, [make_stone("hello", base_files())])
    con = sqlite3.connect(root / ".onix/db/onix.db")
    con.execute("UPDATE ownership SET reason = 'edited' WHERE surface = '/boot'")
    con.commit()
    con.close()
    rows = onix_json("ownership", "--root", root)
    assert {"surface": "/boot", "owner": "machine", "reason": "edited"} in rows
    assert rows[0]["surface"] == "/usr"


def test_verify_fix_archived_mode_and_lib_symlink(root: Path, make_stone, tmp_path: Path) -> None:
    api.install(root, [make_stone("hello", base_files("1"))])
    api.install(root, [make_stone("extra", {"share/e": "e"})])
    hello = root / "usr/bin/hello"
    os.chmod(hello, 0o755)  # through the hardlink: store object and archived copy change too
    usr_lib = root / "usr/lib"
    outside = tmp_path / "outside"
    outside.mkdir()
    os.rename(usr_lib, root / "usr/lib.moved")
    os.symlink(str(outside), usr_lib)  # a tampered /usr/lib pointing out of the root
    report = api.verify(root)
    where = {(p.path, p.problem) for p in report.problems}
    assert ("/usr/lib", "type") in where
    assert (".onix/states/1/usr/bin/hello", "mode") in where
    fixed = api.verify(root, fix=True)
    assert fixed.clean, fixed.problems
    assert list(outside.iterdir()) == []  # nothing was written through the link
    assert not usr_lib.is_symlink() and (usr_lib / "libhello.so.1").exists()
    api.rollback(root)
    assert api.verify(root).clean


def test_state_made_live_outside_onix_is_reconciled(root: Path, make_stone) -> None:
    """What the initrd does for onix.fstx= (issue 3): exchange an archived state into /usr
    with renameat2, outside onix and without a journal. The next onix follows the disk."""
    from onix.core import fsutil

    fake_nix(root)
    api.install(root, [make_stone("hello", base_files("1"))])
    api.install(root, [make_stone("hello", base_files("2"), version="2")])
    fsutil.exchange(root / ".onix/states/1/usr", root / "usr")  # the "initrd"
    st = onix_json("status", "--root", root)
    assert st["active_state"] == 1 and st["active_fstx"].startswith("1-")
    assert any("outside onix" in n for n in st["notes"]), st["notes"]
    assert read_state_id(root / ".onix/states/2/usr") == 2
    assert not (root / ".onix/states/1").exists()
    listed = api.list_states(root)
    assert [s["id"] for s in listed if s["active"]] == [1]
    assert api.verify(root).clean
    api.activate(root, 2)  # and onix carries on from there
    assert api.verify(root).clean


def test_root_link_debris_does_not_wedge_the_root(root: Path, make_stone) -> None:
    api.install(root, [make_stone("hello", base_files("1"))])
    os.unlink(root / "bin")
    (root / ".bin.next").mkdir()  # debris where the next link is staged
    (root / ".bin.next/x").write_text("x")
    r = api.install(root, [make_stone("hello", base_files("2"), version="2")])
    assert r.to_state == 2 and os.readlink(root / "bin") == "usr/bin"
    assert api.verify(root).clean
