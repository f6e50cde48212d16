"""On a terminal, mutating commands show their plan and ask; `n` changes nothing."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

from conftest import REPO, onix, snapshot


def on_terminal(args: list, answer: str) -> tuple[int, str]:
    """Run the CLI with a pseudo-terminal as stdin and stdout, type `answer`."""
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "ONIX_FAULT"}
    p = subprocess.Popen([sys.executable, "-m", "onix", *map(str, args)], stdin=slave,
                         stdout=slave, stderr=slave, cwd=REPO, env={**env, "COLUMNS": "200"})
    os.close(slave)
    os.write(master, answer.encode() + b"\n")
    out = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    code = p.wait(timeout=60)
    os.close(master)
    return code, out.decode(errors="replace")


def test_remove_on_a_terminal_asks_and_no_keeps_the_root(root: Path, make_stone) -> None:
    onix("install", make_stone("a", {"bin/a": "a"}), make_stone("b", {"bin/b": "b"}),
         "--root", root, check=True)
    before = snapshot(root)
    code, out = on_terminal(["remove", "a", "--root", root], "n")
    assert code == 1 and "Apply this plan?" in out and "not confirmed" in out
    assert "- /usr/bin/a" in out
    assert {k: v for k, v in snapshot(root).items() if not k.endswith(("-shm", "-wal"))} == \
        {k: v for k, v in before.items() if not k.endswith(("-shm", "-wal"))}
    code, out = on_terminal(["remove", "a", "--root", root], "y")
    assert code == 0, out
    assert not (root / "usr/bin/a").exists() and (root / "usr/bin/b").exists()
    # --yes does not ask
    code, out = on_terminal(["remove", "b", "--yes", "--root", root], "")
    assert code == 0 and "Apply this plan?" not in out
