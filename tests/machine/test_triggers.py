"""Transaction triggers (onix/machine/triggers.py, docs/triggers.md).

The trigger program is real and lives in the test root's new /usr: Debian's static
busybox (bootkit.busybox_static(), the boot tests' copy) packed into a stone with the
declarations, run as `/usr/bin/busybox sh -c '…'` inside the private namespace.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
from pathlib import Path

import pytest
from conftest import onix, onix_json, snapshot
from test_crash import check_consistent, crash

from onix import api
from onix.core.errors import OnixError
from onix.core.paths import read_state_id
from onix.machine import triggers
from onix.machine.store import hash_file

INDEX = {"paths": ["share/things/*"],
         "run": ["/usr/bin/busybox", "sh", "-c", "ls /usr/share/things > /usr/share/things.index"],
         "outputs": ["share/things.index"]}


@functools.cache
def _busybox() -> bytes:
    import bootkit

    return bootkit.busybox_static().read_bytes()


@pytest.fixture
def busybox() -> bytes:
    if os.geteuid() != 0:
        pytest.skip("triggers run in a mount namespace: needs root")
    if "overlay" not in Path("/proc/filesystems").read_text():
        pytest.skip("this kernel has no overlayfs")
    try:
        return _busybox()
    except OnixError as e:
        pytest.skip(f"no static busybox: {e}")


@pytest.fixture
def tool(make_stone, busybox):
    """tool(declarations) → a stone 'bb' with busybox and usr/share/onix/triggers/*.json."""

    def make(decls: dict[str, object], *, version: str = "1") -> Path:
        files: dict[str, object] = {"bin/busybox": (busybox, 0o755)}
        for name, decl in decls.items():
            files[f"share/onix/triggers/{name}.json"] = (
                decl if isinstance(decl, str) else json.dumps(decl))
        return make_stone("bb", files, version=version)

    return make


def things(make_stone, *names: str, version: str = "1") -> Path:
    return make_stone("things", {f"share/things/{n}": n for n in names}, version=version)


def sh(script: str, outputs: list[str] | None = None) -> dict:
    return {"paths": ["share/things/*"], "run": ["/usr/bin/busybox", "sh", "-c", script],
            "outputs": outputs or ["share/things.index"]}


def db_rows(root: Path) -> dict[str, list]:
    """Every table's rows (the journal apart), for a failure that must change nothing."""
    con = sqlite3.connect(f"file:{root}/.onix/db/onix.db?mode=ro", uri=True)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: sorted(map(repr, con.execute(f"SELECT * FROM {t}")))
                for t in tables if t != "transactions"}
    finally:
        con.close()


def journal(root: Path) -> list[tuple]:
    con = sqlite3.connect(f"file:{root}/.onix/db/onix.db?mode=ro", uri=True)
    try:
        return list(con.execute("SELECT id, kind, status FROM transactions ORDER BY id"))
    finally:
        con.close()


def assert_failed_cleanly(root: Path, args: list, *, match: str) -> str:
    """One error line containing `match`; the tree (database files apart) byte-identical,
    every table but the journal identical, and the journal's one new row `undone`."""
    files = {k: v for k, v in snapshot(root).items() if not k.startswith(".onix/db/")}
    rows, tx = db_rows(root), journal(root)
    r = onix(*args, "--root", root)
    assert r.returncode == 1, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], r.stderr
    assert {k: v for k, v in snapshot(root).items() if not k.startswith(".onix/db/")} == files
    assert db_rows(root) == rows
    after = journal(root)
    assert after[:len(tx)] == tx and [row[1:] for row in after[len(tx):]] in (
        [], [("install", "undone")])
    return lines[0]


# -- declarations (no root needed) ------------------------------------------------


@pytest.mark.parametrize(("glob", "yes", "no"), [
    ("lib/modules/*/kernel/**", ["lib/modules/6.1/kernel/a.ko", "lib/modules/6.1/kernel/x/y"],
     ["lib/modules/6.1/kernel", "lib/modules/6.1/a.ko", "lib/modules/a/b/kernel/c"]),
    ("share/**/*.xml", ["share/a.xml", "share/mime/packages/b.xml"], ["share/a.xmlx", "a.xml"]),
    ("lib/?.so", ["lib/a.so"], ["lib/ab.so", "lib/a/so"]),
])
def test_globs_are_relative_to_usr_and_star_stays_in_a_component(glob, yes, no) -> None:
    import re

    rx = re.compile(triggers.glob_regex(glob))
    assert all(rx.fullmatch(p) for p in yes), glob
    assert not any(rx.fullmatch(p) for p in no), glob


@pytest.mark.parametrize(("decl", "what"), [
    (b"{", "not JSON"),
    (b"[]", "not a JSON object"),
    (json.dumps({**INDEX, "shell": True}).encode(), "unknown: 'shell'"),
    (json.dumps({"paths": ["a"], "run": ["/usr/bin/x"]}).encode(), "missing: outputs"),
    (json.dumps({**INDEX, "run": "depmod -a"}).encode(), "an argv"),
    (json.dumps({**INDEX, "run": ["busybox", "sh"]}).encode(), "absolute path"),
    (json.dumps({**INDEX, "run": ["/usr/../bin/sh"]}).encode(), "absolute path"),
    (json.dumps({**INDEX, "paths": []}).encode(), "non-empty list"),
    (json.dumps({**INDEX, "outputs": ["/usr/share/x"]}).encode(), "relative to /usr"),
    (json.dumps({**INDEX, "outputs": ["share/../../etc"]}).encode(), "normalised"),
    (json.dumps({**INDEX, "paths": ["share/[ab]"]}).encode(), "only * ? and **"),
    (json.dumps({**INDEX, "paths": ["share/a**"]}).encode(), "whole path component"),
])
def test_a_bad_declaration_is_refused_naming_its_file(decl: bytes, what: str) -> None:
    with pytest.raises(OnixError) as e:
        triggers.parse(decl, name="x", where="/usr/share/onix/triggers/x.json (stone bb)")
    assert what in e.value.message
    assert e.value.path == "/usr/share/onix/triggers/x.json (stone bb)"


# -- running ---------------------------------------------------------------------


def test_output_is_in_the_new_state_in_the_store_and_verified(root: Path, tool,
                                                              make_stone) -> None:
    api.install(root, [tool({"index": INDEX}), things(make_stone, "a", "b")])
    out = root / "usr/share/things.index"
    assert out.read_text() == "a\nb\n"
    # content-addressed: the file is the very inode of a store object
    objects = list((root / ".onix/store").glob(f"*/{hash_file(out)}.*"))
    assert [o.stat().st_ino for o in objects] == [out.stat().st_ino]
    assert oct(out.stat().st_mode & 0o7777) == oct(0o444)
    shown = onix_json("state", "show", "1", "--root", root)
    assert [s["name"] for s in shown["stones"]] == ["bb", "things"]  # not an installed stone
    assert shown["files"] == 5  # busybox, the declaration, a, b and the index
    assert onix_json("state", "list", "--root", root)[0]["stones"] == 2
    # the fstx names the tree with the output in it
    from onix.core.paths import RootPaths
    from onix.machine.db import Database
    from onix.machine.layout import canonical_digest

    db = Database(RootPaths(root))
    try:
        with db.read() as c:
            layout = db.state_layout(c, 1)
    finally:
        db.close()
    assert "share/things.index" in {e.path for e in layout}
    assert shown["layout_digest"] == canonical_digest(layout)
    assert onix_json("verify", "--root", root)["clean"]
    # tampering is seen like for any other file
    out.unlink()
    out.write_text("a\n")
    out.chmod(0o444)
    r = onix("verify", "--root", root, "--json")
    assert r.returncode == 1
    assert {(p["path"], p["problem"]) for p in json.loads(r.stdout)["problems"]} == {
        ("/usr/share/things.index", "corrupt")}


def test_the_count_excludes_nothing_it_should_not(root: Path, tool, make_stone) -> None:
    """files/bytes of the state count the outputs: the row is updated with them."""
    api.install(root, [tool({"index": INDEX}), things(make_stone, "a")])
    shown = onix_json("state", "show", "1", "--root", root)
    assert shown["files"] == 4 and shown["bytes"] == len(_busybox()) + len(
        json.dumps(INDEX)) + 1 + 2


def test_next_state_reruns_rollback_and_forward_and_prune(root: Path, tool,
                                                          make_stone) -> None:
    api.install(root, [tool({"index": INDEX}), things(make_stone, "a")])
    api.install(root, [things(make_stone, "a", "c", version="2")])
    assert (root / "usr/share/things.index").read_text() == "a\nc\n"
    assert (root / ".onix/states/1/usr/share/things.index").read_text() == "a\n"
    diff = onix_json("state", "diff", "1", "2", "--root", root)
    assert diff["files"]["changed"] == ["/usr/share/things.index"]
    # no @triggers row in sight
    assert diff["stones"] == [{"name": "things", "from": "1-1", "to": "2-1", "kind": "upgrade"}]
    onix("rollback", "--root", root, check=True)
    assert (root / "usr/share/things.index").read_text() == "a\n"
    assert onix_json("verify", "--root", root)["clean"]
    onix("state", "activate", "2", "--root", root, check=True)
    assert (root / "usr/share/things.index").read_text() == "a\nc\n"
    assert onix_json("verify", "--root", root)["clean"]
    # removing the stone whose paths it watches: the trigger no longer runs, no output
    api.remove(root, ["things"])
    assert not (root / "usr/share/things.index").exists()
    onix("prune", "--keep", "1", "--root", root, check=True)
    rep = onix_json("verify", "--root", root)
    assert rep["clean"] and rep["unreferenced_objects"] == 0
    con = sqlite3.connect(f"{root}/.onix/db/onix.db")
    assert con.execute("SELECT count(*) FROM stones WHERE name = '@triggers'").fetchone() == (0,)
    con.close()


def test_identical_outputs_share_one_row(root: Path, tool, make_stone) -> None:
    api.install(root, [tool({"index": INDEX}), things(make_stone, "a")])
    api.install(root, [make_stone("other", {"share/other": "x"})])
    con = sqlite3.connect(f"{root}/.onix/db/onix.db")
    rows = con.execute("SELECT s.id, count(ss.state_id) FROM stones s JOIN state_stones ss "
                       "ON ss.stone_id = s.id WHERE s.name = '@triggers' GROUP BY s.id").fetchall()
    con.close()
    assert len(rows) == 1 and rows[0][1] == 2


def test_later_triggers_see_earlier_outputs(root: Path, tool, make_stone) -> None:
    first = sh("ls /usr/share/things > /usr/share/things.index")
    second = {"paths": ["share/things.index"],
              "run": ["/usr/bin/busybox", "sh", "-c",
                      "mkdir -p /usr/share/count && wc -l < /usr/share/things.index "
                      "> /usr/share/count/n"],
              "outputs": ["share/count/n"]}
    api.install(root, [tool({"a-index": first, "b-count": second}),
                       things(make_stone, "a", "b", "c")])
    assert (root / "usr/share/count/n").read_text().strip() == "3"
    assert onix_json("verify", "--root", root)["clean"]


def test_a_failing_trigger_leaves_the_root_byte_identical(root: Path, tool,
                                                          make_stone) -> None:
    api.install(root, [things(make_stone, "a")])
    bad = tool({"boom": sh("echo partial > /usr/share/things.index; echo it broke >&2; "
                           "exit 3")})
    line = assert_failed_cleanly(root, ["install", bad], match="trigger boom failed with "
                                 "exit status 3: it broke")
    assert "/usr/share/onix/triggers/boom.json (stone bb)" in line
    assert "state 1 stays active" in line
    assert read_state_id(root / "usr") == 1
    assert onix_json("verify", "--root", root)["clean"]


def test_a_failing_trigger_on_a_first_install_leaves_nothing(root: Path, tool,
                                                             make_stone) -> None:
    bad = tool({"boom": sh("exit 1")})
    r = onix("install", bad, things(make_stone, "a"), "--root", root)
    assert r.returncode == 1 and "trigger boom failed" in r.stderr
    assert not (root / "usr").exists() and not (root / "bin").exists()
    assert not list((root / ".onix/store").glob("??/*"))


@pytest.mark.parametrize(("script", "match"), [
    ("echo x > /usr/share/elsewhere", "wrote /usr/share/elsewhere, outside its outputs"),
    ("mkdir /usr/share/newdir", "made the directory /usr/share/newdir, outside its outputs"),
    ("echo evil > /usr/share/things/a", "changed /usr/share/things/a, which a stone"),
    ("echo , >> /usr/share/onix/triggers/evil.json",
     "changed /usr/share/onix/triggers/evil.json, which a stone"),
    ("chmod 0755 /usr/share/things/a", "changed /usr/share/things/a"),
    ("rm /usr/share/things/a", "deleted /usr/share/things/a, which a stone ships"),
    ("rm -r /usr/share/things && mkdir /usr/share/things", "/usr/share/things"),
    ("mkfifo /usr/share/things.index", "neither a file, a directory nor a symlink"),
    ("echo x > /usr/.stateID", "outside its outputs"),
    ("echo x > /etc/passwd", "Read-only file system"),
    ("echo x > /nix-escape", "Read-only file system"),
])
def test_a_trigger_may_only_add_its_outputs(root: Path, tool, make_stone, script: str,
                                            match: str) -> None:
    api.install(root, [things(make_stone, "a")])
    store = {p: hash_file(p) for p in (root / ".onix/store").glob("??/*")}
    assert_failed_cleanly(root, ["install", tool({"evil": sh(script)})], match=match)
    # nothing was written through a hardlink: every store object still has its content
    assert {p: hash_file(p) for p in (root / ".onix/store").glob("??/*")} == store
    assert (root / "usr/share/things/a").read_text() == "a"


def test_outputs_may_not_name_generated_files(root: Path, tool, make_stone) -> None:
    api.install(root, [things(make_stone, "a")])
    evil = sh("echo 9 > /usr/.stateID", outputs=[".stateID"])
    assert_failed_cleanly(root, ["install", tool({"evil": evil})], match="generated by onix")


def test_a_bad_declaration_fails_the_install_cleanly(root: Path, tool, make_stone) -> None:
    api.install(root, [things(make_stone, "a")])
    line = assert_failed_cleanly(root, ["install", tool({"bad": '{"paths": ["x"]}'})],
                                 match="is not a valid trigger declaration")
    assert "/usr/share/onix/triggers/bad.json (stone bb)" in line
    missing = {**INDEX, "run": ["/usr/sbin/depmod", "-a"]}
    assert_failed_cleanly(root, ["install", tool({"dep": missing})],
                          match="runs /usr/sbin/depmod, which the new state does not have")


@pytest.mark.parametrize("step", ["trigger", "stateid", "exchange", "archive"])
def test_crash_around_the_trigger_step(root: Path, tool, make_stone, step: str) -> None:
    api.install(root, [tool({"index": INDEX}), things(make_stone, "a")])
    new = things(make_stone, "a", "b", version="2")
    crash(root, ["install", new], f"install:{step}")
    committed = step in ("archive",)
    live = check_consistent(root, {2} if committed else {1})
    index = (root / "usr/share/things.index").read_text()
    assert index == ("a\nb\n" if live == 2 else "a\n")
    onix("install", new, "--root", root, check=True)
    assert (root / "usr/share/things.index").read_text() == "a\nb\n"
    check_consistent(root, {2, 3})


def test_the_busybox_recipe_declares_a_valid_trigger() -> None:
    """The first real user: recipes/busybox.yaml writes depmod.json in its install step."""
    import yaml
    from conftest import REPO

    script = yaml.safe_load((REPO / "recipes/busybox.yaml").read_text())["install"]
    body = script.split("triggers/depmod.json <<'EOF'\n", 1)[1].split("\nEOF\n", 1)[0]
    t = triggers.parse(body.encode(), name="depmod", where="recipes/busybox.yaml")
    assert t.run[0] == "/usr/bin/busybox"
    assert t.watches("lib/modules/6.1.0-56-cloud-amd64/kernel/drivers/block/virtio_blk.ko")
    assert t.may_write("lib/modules/6.1.0-56-cloud-amd64/modules.dep.bb")
    assert not t.may_write("lib/modules/6.1.0-56-cloud-amd64/modules.dep")  # the kernel's
