"""The live state's usr/.stateID: a state the database does not know is refused by every
command that would change the root, and `status` says so."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import onix, snapshot, two_states


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
