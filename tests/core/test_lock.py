"""The root lock (.onix/lock): --no-wait refuses while another onix holds it, and a
queued onix relocks a lock file that was replaced while it waited."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO, assert_clean_failure

from onix.core.paths import read_state_id


def test_lock_held_no_wait(installed: Path, make_stone) -> None:
    import fcntl

    extra = make_stone("extra", {"share/extra": "e"})
    fd = os.open(installed / ".onix/lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert_clean_failure(installed, ["install", "--no-wait", extra],
                             match="another onix is working", code=3)
    finally:
        os.close(fd)


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
