"""verify and verify --fix beyond the basics (machine/test_transaction.py): special mode
bits, implicit directories, a damaged stone cache, an owner changed through the
hardlink, a generated file replaced by a directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import craft, file_rec

from onix import api


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
