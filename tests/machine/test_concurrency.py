"""Two onix processes on one root are serialized by the root lock."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO, onix_json

from onix import api
from onix.core.paths import read_state_id


def test_two_installs_are_serialized(root: Path, make_stone) -> None:
    api.install(root, [make_stone("base", {"bin/base": "b"})])
    a = make_stone("aaa", {f"share/a/{i}": f"a{i}" * 50 for i in range(3000)})
    b = make_stone("bbb", {f"share/b/{i}": f"b{i}" * 50 for i in range(3000)})
    # Hold the lock ourselves so both processes are certainly contending, then let go.
    fd = os.open(root / ".onix/lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    procs = [subprocess.Popen([sys.executable, "-m", "onix", "install", str(s), "--root",
                               str(root)], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for s in (a, b)]
    try:
        for p in procs:
            assert "waiting for another onix" in p.stderr.readline()
    finally:
        os.close(fd)
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    listed = onix_json("state", "list", "--root", root)
    assert [s["id"] for s in listed] == [3, 2, 1]
    # the second transaction built on the first: both stones are in the final state
    assert (root / "usr/share/a/0").exists() and (root / "usr/share/b/0").exists()
    assert read_state_id(root / "usr") == 3
    assert api.verify(root).clean
