"""A real full file system (a small tmpfs, root only): importing a stone and writing the
database each fail with one line and the documented exit code, and work once there
is room again."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import assert_clean_failure, onix

from onix import api


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                       capture_output=True)
    return r.returncode == 0


def test_full_disk_during_import(tmp_path: Path, make_stone) -> None:
    """A real full file system: a 4 MiB tmpfs root, a stone with 8 MiB of content."""
    root = tmp_path / "small"
    if os.geteuid() != 0 or not _mount_tmpfs(root, "4m"):
        pytest.skip("needs root to mount a small tmpfs")
    try:
        api.install(root, [make_stone("hello", {"bin/hello": ("hi", 0o755)})])
        big = make_stone("big", {f"share/b{i}": os.urandom(1 << 20) for i in range(8)})
        line = assert_clean_failure(root, ["install", big], match="no space left", code=4)
        assert ".onix/store" in line
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


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
