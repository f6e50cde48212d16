"""Real file-system limits: ext4's link limit (EMLINK) and running out of inodes mid-blit.

Both need root to mount a small ext4 image or tmpfs; they skip elsewhere.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import onix, snapshot, write_tree

from onix import api
from onix.core.paths import read_state_id
from onix.machine.stone import StoneMeta, pack


def _mount(args: list[str], where: Path) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", *args, str(where)], capture_output=True).returncode == 0


@pytest.fixture
def ext4_root(tmp_path: Path):
    image = tmp_path / "fs.img"
    subprocess.run(["truncate", "-s", "96M", str(image)], check=True)
    if subprocess.run(["mkfs.ext4", "-q", "-F", "-N", "4096", str(image)],
                      capture_output=True).returncode != 0:
        pytest.skip("mkfs.ext4 is not available")
    root = tmp_path / "ext4"
    if not _mount(["-o", "loop", str(image)], root):
        pytest.skip("needs root to loop-mount an ext4 image")
    yield root
    subprocess.run(["umount", "-l", str(root)], check=False)


def test_emlink_falls_back_to_copies(ext4_root: Path, tmp_path: Path) -> None:
    """65,010 paths with one content: ext4 allows 65,000 links to an inode (moss #372)."""
    files = {f"share/many/d{i // 1000}/f{i}": "same content" for i in range(65_010)}
    write_tree(tmp_path / "src", files)
    stone = tmp_path / "many.stone"
    pack(tmp_path / "src", stone, StoneMeta(name="many", version="1"))
    r = api.install(ext4_root, [stone])
    assert r.to_state == 1
    counts: dict[int, int] = {}
    for p in files:
        n = os.lstat(ext4_root / "usr" / p).st_nlink
        counts[n] = counts.get(n, 0) + 1
    # The store's name plus 64,999 tree paths fill the inode; the other 11 paths are copies.
    assert counts == {65_000: 64_999, 1: 11}, counts
    assert api.verify(ext4_root).clean


def test_out_of_inodes_during_blit(tmp_path: Path, make_stone) -> None:
    root = tmp_path / "tiny"
    if not _mount(["-t", "tmpfs", "-o", "size=64m,nr_inodes=400", "tmpfs"], root):
        pytest.skip("needs root to mount a tmpfs")
    try:
        api.install(root, [make_stone("hello", {"bin/hello": ("hi", 0o755)})])
        empties = make_stone("empties", {f"share/e/{i}": b"" for i in range(600)}
                             | {"share/e/data": "new content"})
        before = snapshot(root)
        r = onix("install", empties, "--root", root)
        assert r.returncode == 4, (r.stdout, r.stderr)
        assert "no space left while building the new /usr" in r.stderr
        assert read_state_id(root / "usr") == 1
        assert not (root / ".onix/staging/usr").exists()
        assert api.verify(root).clean
        st = onix("status", "--root", root, "--json", check=True).stdout
        assert '"states": 1' in st
        # The import is taken back too: only the database file's bytes may differ.
        after = snapshot(root)
        db = {k for k in before | after if k.startswith(".onix/db/")}
        assert {k: v for k, v in after.items() if k not in db} == \
            {k: v for k, v in before.items() if k not in db}
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)
