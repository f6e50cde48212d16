"""The '/nix: untouched' line is a comparison, not a constant: a change is reported."""

from __future__ import annotations

import os
from pathlib import Path

from conftest import fake_nix, onix, onix_json

from onix import api
from onix.machine.ownership import compare, nix_fingerprint, report


def test_fingerprint_sees_each_kind_of_change(root: Path) -> None:
    fake_nix(root)
    before = nix_fingerprint(root)
    assert report(before, nix_fingerprint(root)) == "untouched"
    (root / "nix/store/dddd-new-1.0").mkdir()
    prof = root / "nix/var/nix/profiles"
    os.symlink("/nix/store/dddd-new-1.0", prof / "default-2-link")
    os.unlink(prof / "default")
    os.symlink("default-2-link", prof / "default")
    (root / "nix/var/nix/db/db.sqlite").write_bytes(b"SQLite format 3\0changed!")
    untouched, changes = compare(before, nix_fingerprint(root))
    assert not untouched
    text = "; ".join(changes)
    assert "1 store paths added" in text
    assert "profiles links changed: default, default-2-link" in text
    assert "db.sqlite changed" in text


def test_rollback_reports_a_nix_change_it_saw(root: Path, make_stone) -> None:
    """Nix moving during a rollback is real but cannot be timed on demand, so the rollback is
    stopped (ONIX_FAULT) after its exchange, /nix is changed, and recovery finishes it."""
    fake_nix(root)
    api.install(root, [make_stone("hello", {"bin/hello": "1"})])
    api.install(root, [make_stone("hello", {"bin/hello": "2"}, version="2")])
    r = onix("rollback", "--root", root, env={"ONIX_FAULT": "rollback:links"})
    assert r.returncode == 86
    (root / "nix/store/eeee-gc-survivor").mkdir()
    st = onix_json("status", "--root", root)
    assert st["active_state"] == 1
    assert st["last_nix_check"]["kind"] == "rollback"
    assert st["last_nix_check"]["nix"] == "changed: 1 store paths added"
    # and a clean rollback says untouched, through the same code
    out = onix("state", "activate", "2", "--root", root, check=True).stdout
    assert "/nix: untouched" in out
