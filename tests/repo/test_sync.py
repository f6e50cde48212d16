"""`onix sync`: a root moves from one signed repository snapshot to the next in one state,
the plan shown first is what then happens, and rollback returns. Also the lists, the
history, previews that change nothing, downgrades, staging for the next boot."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import onix, onix_json, snapshot


@pytest.fixture
def snapshots(tmp_path, make_stone):
    """Two signed snapshots of one repository (same key): `publish("old"|"new")` makes
    the served directory that snapshot."""
    key = tmp_path / "keys" / "test"
    key.parent.mkdir()
    onix("key", "generate", "--out", key, "--comment", "tests", check=True)
    sets = {
        "old": [make_stone("motd", {"share/motd": "m1"}, depends=["hello"]),
                make_stone("hello", {"bin/hello": "h1", "share/hello/a": "a"},
                           depends=["libgreet"]),
                make_stone("libgreet", {"lib/libgreet.so.1": "g1"}),
                make_stone("tool", {"bin/tool": "t1"})],
        "new": [make_stone("motd", {"share/motd": "m2"}, version="1.1", depends=["hello"]),
                make_stone("hello", {"bin/hello": "h2", "share/hello/b": "b"}, version="2.0",
                           depends=["libgreet2"]),
                make_stone("libgreet2", {"lib/libgreet.so.2": "g2"}),
                make_stone("tool", {"bin/tool": "t1"})],
    }
    dirs = {}
    for name, stones in sets.items():
        d = tmp_path / f"snap-{name}"
        d.mkdir()
        for s in stones:
            shutil.copy(s, d / s.name)
        onix("index", d, "--key", f"{key}.key", "--name", "test", check=True)
        dirs[name] = d
    site = tmp_path / "site"
    site.mkdir()

    def publish(name: str) -> None:
        tmp = site / "repo.new"
        shutil.copytree(dirs[name], tmp)
        if (site / "repo").exists():
            shutil.rmtree(site / "repo")
        os.rename(tmp, site / "repo")

    publish("old")
    return site, Path(f"{key}.pub"), publish


def without_wal(snap: dict) -> dict:
    """SQLite may leave its WAL index behind a reader; the database's content is
    compared separately (dump)."""
    return {k: v for k, v in snap.items() if not k.endswith(("-shm", "-wal"))}


def dump(root: Path) -> list[str]:
    import sqlite3

    con = sqlite3.connect(root / ".onix/db/onix.db")
    try:
        return list(con.iterdump())
    finally:
        con.close()


def test_sync_moves_to_the_new_snapshot_in_one_state_as_planned(root, snapshots, serve):
    site, pub, publish = snapshots
    url = serve(site)
    onix("repo", "add", "test", f"{url}/repo", "--key", pub, "--root", root, check=True)
    onix("install", "motd", "tool", "--root", root, check=True)
    assert (root / "usr/bin/hello").read_text() == "h1"
    assert onix_json("list", "updates", "--root", root)["empty"] is True
    before_state = onix_json("status", "--root", root)["active_state"]

    publish("new")
    before, before_db = snapshot(root), dump(root)
    plan = onix_json("sync", "--dry-run", "--root", root)
    assert without_wal(snapshot(root)) == without_wal(before) and dump(root) == before_db
    rows = {c["name"]: (c["from"], c["to"], c["kind"]) for c in plan["stones"]}
    assert rows == {"hello": ("1.0-1", "2.0-1", "upgrade"),
                    "motd": ("1.0-1", "1.1-1", "upgrade"),
                    "libgreet2": (None, "1.0-1", "dependency"),
                    "libgreet": ("1.0-1", None, "removed")}
    assert plan["creates_state"] and plan["fetch_bytes"] > 0
    human = onix("sync", "--dry-run", "--root", root, check=True).stdout
    assert "hello" in human and "1.0-1" in human and "2.0-1" in human and "remove" in human

    # No terminal and no --yes: refused in one line, nothing changed.
    r = onix("sync", "--root", root)
    assert r.returncode != 0 and "--yes" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert without_wal(snapshot(root)) == without_wal(before)

    r = onix_json("sync", "--yes", "--root", root)
    assert r["changed"] and r["kind"] == "sync" and r["to_state"] == before_state + 1
    assert (root / "usr/bin/hello").read_text() == "h2"
    assert (root / "usr/lib/libgreet.so.2").exists()
    assert not (root / "usr/lib/libgreet.so.1").exists()
    assert (root / "usr/share/motd").read_text() == "m2"
    installed = {r["name"]: r for r in onix_json("list", "installed", "--root", root)}
    assert set(installed) == {"hello", "motd", "libgreet2", "tool"}
    assert installed["motd"]["explicit"] and not installed["hello"]["explicit"]
    assert installed["hello"]["version"] == "2.0" and installed["hello"]["repo"] == "test"
    # What the plan said is what the new state is.
    diff = onix_json("state", "diff", str(before_state), str(r["to_state"]), "--root", root)
    assert {c["name"]: (c["from"], c["to"]) for c in diff["stones"]} == \
        {n: (f, t) for n, (f, t, _k) in rows.items()}
    show = onix_json("state", "show", str(r["to_state"]), "--root", root)
    assert {s["name"]: s["explicit"] for s in show["stones"]}["libgreet2"] is False
    assert onix_json("verify", "--root", root)["clean"]

    again = onix_json("sync", "--yes", "--root", root)
    assert not again["changed"] and again["summary"] == "up to date"
    history = onix_json("history", "--root", root)
    assert history[0]["command"] == "sync" and history[0]["result"] == "done"
    assert history[0]["seconds"] is not None

    onix("rollback", "--root", root, check=True)
    assert (root / "usr/bin/hello").read_text() == "h1"
    assert (root / "usr/lib/libgreet.so.1").exists()


def test_a_downgrade_only_repository_changes_nothing_unless_allowed(root, snapshots, serve):
    site, pub, publish = snapshots
    publish("new")
    url = serve(site)
    onix("repo", "add", "test", f"{url}/repo", "--key", pub, "--root", root, check=True)
    onix("install", "motd", "--root", root, check=True)
    publish("old")
    onix("repo", "update", "--root", root, check=True)
    before = snapshot(root)
    r = onix_json("sync", "--yes", "--no-refresh", "--root", root)
    assert not r["changed"]
    assert any("hello 2.0-1 is newer than anything" in w for w in r["warnings"])
    assert without_wal(snapshot(root)) == without_wal(before)
    plan = onix_json("sync", "--dry-run", "--allow-downgrade", "--root", root)
    assert {c["name"]: c["kind"] for c in plan["stones"]}["hello"] == "downgrade"
    onix("sync", "--yes", "--allow-downgrade", "--root", root, check=True)
    assert (root / "usr/bin/hello").read_text() == "h1"


def test_sync_boot_stages_the_new_state_and_leaves_usr(root, snapshots, serve):
    site, pub, publish = snapshots
    url = serve(site)
    onix("repo", "add", "test", f"{url}/repo", "--key", pub, "--root", root, check=True)
    onix("install", "motd", "--root", root, check=True)
    live = onix_json("status", "--root", root)["active_state"]
    publish("new")
    r = onix_json("sync", "--yes", "--boot", "--root", root)
    assert r["detail"]["staged"] and r["to_state"] == live + 1
    assert (root / "usr/bin/hello").read_text() == "h1"  # /usr untouched
    assert (root / f".onix/states/{r['to_state']}/usr/bin/hello").read_text() == "h2"
    st = onix_json("status", "--root", root)
    assert st["active_state"] == live and st["staged"]["state"] == r["to_state"]
    assert "staged: state" in onix("status", "--root", root, check=True).stdout
    assert onix_json("verify", "--root", root)["clean"]
    # What the next boot brings can be made live by hand too.
    onix("state", "activate", str(r["to_state"]), "--root", root, check=True)
    assert (root / "usr/bin/hello").read_text() == "h2"
    assert onix_json("status", "--root", root)["staged"] is None


def test_dry_runs_change_nothing(root, snapshots, serve, make_stone):
    site, pub, _ = snapshots
    url = serve(site)
    onix("repo", "add", "test", f"{url}/repo", "--key", pub, "--root", root, check=True)
    onix("install", "motd", "--root", root, check=True)
    extra = make_stone("extra", {"bin/extra": "x"})
    onix("install", extra, "--root", root, check=True)
    before, before_db = snapshot(root), dump(root)

    p = onix_json("install", "tool", "--dry-run", "--root", root)
    assert [(c["name"], c["kind"]) for c in p["stones"]] == [("tool", "new")]
    assert p["files"] is None and p["fetch_bytes"] > 0  # layout known only once fetched
    newer = make_stone("extra", {"bin/extra": "y", "bin/extra2": "z"}, version="2")
    p = onix_json("install", newer, "--dry-run", "--root", root)
    assert p["files"] == {"added": ["/usr/bin/extra2"], "removed": [],
                          "changed": ["/usr/bin/extra"]}
    p = onix_json("remove", "motd", "--dry-run", "--root", root)
    assert {c["name"] for c in p["stones"]} == {"motd", "hello", "libgreet"}
    assert "/usr/bin/hello" in p["files"]["removed"]
    p = onix_json("rollback", "--dry-run", "--root", root)
    assert p["switch_to"] is not None and p["files"]["removed"] == ["/usr/bin/extra"]
    p = onix_json("state", "activate", "1", "--dry-run", "--root", root)
    assert p["switch_to"] == 1
    p = onix_json("prune", "--keep", "1", "--dry-run", "--root", root)
    assert p["states_removed"] == [1]
    onix("prune", "--keep", "1", "--dry-run", "--root", root, check=True)
    assert without_wal(snapshot(root)) == without_wal(before) and dump(root) == before_db
    r = onix_json("prune", "--keep", "1", "--root", root)
    assert r["detail"]["states"] == [1]


def test_lists_and_history_on_an_empty_root(root):
    assert onix_json("list", "installed", "--root", root) == []
    assert onix_json("history", "--root", root) == []
    r = onix("sync", "--yes", "--root", root)
    assert r.returncode != 0 and "no repository is configured" in r.stderr


def test_history_records_what_was_asked(root, make_stone):
    a = make_stone("a", {"bin/a": "a"})
    onix("install", a, "--root", root, check=True)
    onix("remove", "a", "--root", root, check=True)
    rows = onix_json("history", "--root", root)
    assert [r["kind"] for r in rows] == ["remove", "install"]
    assert rows[0]["command"] == "remove a" and rows[1]["command"].startswith("install ")
    out = onix("history", "--root", root, check=True).stdout
    assert "remove a" in out and "done" in out
    assert json.loads(onix("history", "-n", "1", "--json", "--root", root).stdout)[0]["id"] \
        == rows[0]["id"]
