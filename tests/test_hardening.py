"""Holes a review found, each reproduced here first: unknown live states, symlinks in the
root, setuid bits, implicit directories, the stone cache, hostile headers, a full
database disk, and a lock file replaced under a queued onix."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, onix, snapshot
from test_bad_input import craft, file_rec

from onix import api
from onix.core.paths import read_state_id
from onix.machine import stone as stonefmt


def two_states(root: Path, make_stone) -> None:
    api.install(root, [make_stone("hello", {"bin/hello": ("v1", 0o755)})])
    api.install(root, [make_stone("hello", {"bin/hello": ("v2", 0o755)}, version="2")])


@pytest.mark.parametrize("state_id", ["99\n", "garbage\n", "1\u00b2\n", ""])
@pytest.mark.parametrize("args", [["verify", "--fix"], ["prune", "--keep", "1"],
                                  ["state", "activate", "1"], ["install"]])
def test_unknown_live_state_is_refused(root: Path, make_stone, state_id: str, args) -> None:
    two_states(root, make_stone)
    sid = root / "usr/.stateID"
    os.chmod(sid, 0o644)
    sid.write_text(state_id)
    if args == ["install"]:
        args = ["install", make_stone("other", {"bin/other": "o"})]
    before = snapshot(root)
    r = onix(*args, "--root", root)
    assert r.returncode == 1, r.stdout
    assert ".stateID" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert snapshot(root) == before  # nothing deleted, archived or "fixed"
    if state_id == "99\n":
        st = onix("status", "--root", root, "--json", check=True).stdout
        assert "which the database does not know" in st


@pytest.mark.parametrize("which", [".onix", "usr"])
def test_symlinks_in_the_root_are_refused(root: Path, tmp_path: Path, make_stone,
                                          which: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    if which == "usr":
        two_states(root, make_stone)
        os.rename(root / "usr", outside / "usr")
        os.symlink(outside / "usr", root / "usr")
        (outside / "usr/bin/precious").write_text("not onix's")
        args = ["verify", "--fix"]
    else:
        os.symlink(outside, root / ".onix")
        args = ["install", make_stone("x", {"bin/x": "x"})]
    before = snapshot(outside)
    r = onix(*args, "--root", root)
    assert r.returncode == 1 and "is a symlink" in r.stderr, r.stderr
    assert snapshot(outside) == before


def test_setuid_and_setgid_survive_install_and_verify(root: Path, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can install files owned by others")
    wall = file_rec("bin/wall", b"#!wall", 0o2755)
    wall[4] = 5  # gid tty
    su = file_rec("bin/su", b"#!su", 0o4755)
    empty = ["bin/empty-setgid", "file", 0o2755, 0, 5, 0,
             "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"]
    stone = craft(tmp_path / "suid.stone", layout=[wall, su, empty], blobs=[b"#!wall", b"#!su"])
    api.install(root, [stone])
    assert (root / "usr/bin/wall").stat().st_mode & 0o7777 == 0o2555
    assert (root / "usr/bin/su").stat().st_mode & 0o7777 == 0o4555
    assert (root / "usr/bin/empty-setgid").stat().st_mode & 0o7777 == 0o2555
    assert (root / "usr/bin/wall").stat().st_gid == 5
    assert api.verify(root).clean


def test_undeclared_parent_between_declared_dirs(root: Path, tmp_path: Path) -> None:
    layout = [["share", "dir", 0o755, 0, 0, 0, ""], ["share/a/b", "dir", 0o755, 0, 0, 0, ""],
              file_rec("share/a/b/f", b"f")]
    api.install(root, [craft(tmp_path / "gap.stone", layout=layout, blobs=[b"f"])])
    assert (root / "usr/share/a/b/f").read_bytes() == b"f"
    assert api.verify(root).clean


def test_stone_cache_is_a_copy_and_a_bad_one_does_not_stop_fix(root: Path, make_stone,
                                                               tmp_path: Path) -> None:
    mine = tmp_path / "mine.stone"
    os.link(make_stone("hello", {"bin/hello": ("hi", 0o755)}), mine)
    api.install(root, [mine])
    mine.write_bytes(b"overwritten by the user later")  # same inode as before
    cached = list((root / ".onix/cache/stones").glob("*.stone"))
    assert len(cached) == 1 and cached[0].stat().st_ino != mine.stat().st_ino
    api.install(root, [make_stone("greet", {"bin/greet": ("g", 0o755)})])
    # damage one cached stone, corrupt the other stone's object: fix still works
    cached[0].write_bytes(cached[0].read_bytes()[:100])
    greet = root / "usr/bin/greet"
    os.chmod(greet, 0o755)
    greet.write_text("tampered")
    os.chmod(greet, 0o555)
    fixed = api.verify(root, fix=True)
    assert fixed.clean, fixed.problems
    assert greet.read_text() == "g"


def test_owner_change_through_the_hardlink_is_fixed_without_debris(root: Path, make_stone):
    if os.geteuid() != 0:
        pytest.skip("needs root to chown")
    api.install(root, [make_stone("hello", {"bin/hello": ("hi", 0o755)})])
    os.chown(root / "usr/bin/hello", 1000, 1000)
    assert not api.verify(root).clean
    fixed = api.verify(root, fix=True)
    assert fixed.clean, fixed.problems
    assert not list((root / "usr/bin").glob(".*"))
    assert (root / "usr/bin/hello").stat().st_uid == 0


def test_generated_file_replaced_by_a_directory(root: Path, make_stone) -> None:
    api.install(root, [make_stone("hello", {"bin/hello": "hi"})])
    (root / "usr/lib/os-release").unlink()
    (root / "usr/lib/os-release").mkdir()
    assert ("/usr/lib/os-release", "type") in {(p.path, p.problem)
                                               for p in api.verify(root).problems}
    assert api.verify(root, fix=True).clean


@pytest.mark.parametrize("what", ["huge-plain", "huge-release", "markup"])
def test_hostile_headers_are_one_line(root: Path, tmp_path: Path, make_stone, what) -> None:
    api.install(root, [make_stone("base", {"bin/base": "b"})])
    if what == "huge-plain":
        good = make_stone("big", {"share/x": "x"})
        data = bytearray(good.read_bytes())
        with stonefmt.Stone(good) as s:
            h = s.payloads[stonefmt.LAYOUT]
        at = h.offset - stonefmt.PAYLOAD_HEADER.size + 16  # plain_size field
        data[at:at + 8] = (2**64 - 1).to_bytes(8, "little")
        bad = tmp_path / "huge.stone"
        bad.write_bytes(bytes(data))
        args = [["stone", "inspect", bad], ["install", bad, "--root", root]]
    elif what == "huge-release":
        bad = craft(tmp_path / "rel.stone", meta={"release": 2**63}, layout=[], blobs=[])
        args = [["install", bad, "--root", root]]
    else:
        src = tmp_path / "m"
        (src / "usr/bin").mkdir(parents=True)
        (src / "usr/bin/m").write_text("m")
        bad = tmp_path / "markup.stone"
        onix("stone", "pack", src, "-o", bad, "--name", "m", "--version", "1[/b]",
             "--summary", "evil [/x]", check=True)
        onix("install", bad, "--root", root, check=True)
        out = onix("state", "list", "--root", root, check=True).stdout
        assert "1[/b]" in out
        assert "evil [/x]" in onix("stone", "inspect", bad, check=True).stdout
        return
    for a in args:
        r = onix(*a)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_database_on_a_full_disk(tmp_path: Path, make_stone) -> None:
    root = tmp_path / "full"
    root.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs",
                                            str(root)], capture_output=True).returncode:
        pytest.skip("needs root to mount a tmpfs")
    try:
        api.install(root, [make_stone("hello", {"bin/hello": "hi"})])
        subprocess.run(["dd", "if=/dev/zero", f"of={root}/filler", "bs=64k"],
                       capture_output=True)
        r = onix("state", "pin", "1", "--root", root)
        assert r.returncode == 4, (r.returncode, r.stderr)
        assert "restore" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
        (root / "filler").unlink()
        onix("state", "pin", "1", "--root", root, check=True)
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


def test_a_replaced_lock_file_is_relocked(root: Path, make_stone) -> None:
    """A failed first command moves its .onix aside while holding the lock; whoever was
    queued on that lock file must notice and lock the new one, never run unlocked."""
    (root / ".onix").mkdir()
    (root / ".onix/lock").touch()
    fd = os.open(root / ".onix/lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    stone = make_stone("hello", {"bin/hello": "hi"})
    p = subprocess.Popen([sys.executable, "-m", "onix", "install", str(stone), "--root",
                          str(root)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        assert "waiting" in p.stderr.readline()
        os.rename(root / ".onix", root / ".onix.gone")  # what the failed command does
        time.sleep(0.2)
    finally:
        os.close(fd)
    _out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert read_state_id(root / "usr") == 1 and (root / ".onix/db/onix.db").exists()
