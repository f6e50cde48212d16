"""Commands the machine plane refuses: one `error:` line, a non-zero exit, nothing changed
(file conflicts, unknown or active states, a /usr onix did not make, symlinks in the
root, a read-only root)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import assert_clean_failure, onix, snapshot, two_states


def test_file_conflict(installed: Path, make_stone) -> None:
    clash = make_stone("clash", {"bin/hello": "other"})
    line = assert_clean_failure(installed, ["install", clash], match="/usr/bin/hello")
    assert "hello" in line and "clash" in line


def test_failed_first_install_leaves_nothing(root: Path, tmp_path: Path, make_stone) -> None:
    a = make_stone("a", {"bin/x": "a"})
    clash = make_stone("b", {"bin/x": "b"})
    assert_clean_failure(root, ["install", a, clash], match="/usr/bin/x")
    assert list(root.iterdir()) == []


def test_foreign_usr_is_not_swapped(root: Path, make_stone) -> None:
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/precious").write_text("not ours")
    s = make_stone("hello", {"bin/hello": "hi"})
    assert_clean_failure(root, ["install", s], match="not made by onix")


def test_unknown_state(installed: Path) -> None:
    assert_clean_failure(installed, ["state", "activate", "42"], match="state 42 does not exist")
    assert_clean_failure(installed, ["state", "show", "42"], match="state 42 does not exist")
    assert_clean_failure(installed, ["rollback", "--to", "42"], match="state 42")
    assert_clean_failure(installed, ["rollback"], match="no older state")


def test_removing_active_state(installed: Path) -> None:
    assert_clean_failure(installed, ["state", "remove", "1"], match="active state")
    assert_clean_failure(installed, ["state", "activate", "1"], match="already active")


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


def test_unwritable_root_is_one_line(tmp_path: Path, make_stone) -> None:
    """A read-only file system (a real ro bind mount) instead of a permission check."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs",
                                            str(ro)], capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a read-only tmpfs")
    try:
        r = onix("install", make_stone("x", {"bin/x": "x"}), "--root", ro)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 1 and len(lines) == 1, r.stderr
        assert str(ro) in lines[0] and "Read-only file system" in lines[0]
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)
