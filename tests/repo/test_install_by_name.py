"""The whole path a user takes, through the real CLI: key → index → repo add (HTTP on
loopback) → install by name with dependencies → info/search → remove with orphans."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import onix, onix_json, snapshot

from onix.machine.stone import Stone
from onix.repo import index as repo_index


@pytest.fixture
def signed_repo(tmp_path, make_stone):
    """A stones dir: app → soname(libcore) ← libcore → busybox-ish base; plus a loner."""
    repo = tmp_path / "repo"
    repo.mkdir()
    stones = [
        make_stone("libcore", {"lib/libcore.so.1": "core"},
                   provides=["soname(libcore.so.1(x86_64))"], depends=["base"]),
        make_stone("base", {"bin/sh": "sh"}, provides=["binary(sh)"]),
        make_stone("app", {"bin/app": "app"}, provides=["binary(app)"],
                   depends=["soname(libcore.so.1(x86_64))"]),
        make_stone("loner", {"bin/loner": "l"}),
        make_stone("broken", {"bin/broken": "b"}, depends=["soname(libgone.so.9(x86_64))"]),
    ]
    for s in stones:
        shutil.copy(s, repo / s.name)
    key = tmp_path / "keys" / "test"
    key.parent.mkdir()
    onix("key", "generate", "--out", key, "--comment", "tests", check=True)
    onix("index", repo, "--key", f"{key}.key", "--name", "test", check=True)
    return repo, Path(f"{key}.pub")


def test_install_by_name_over_http_pulls_dependencies_and_remove_drops_orphans(
        root, signed_repo, serve):
    repo, pub = signed_repo
    url = serve(repo)
    onix("repo", "add", "test", url, "--key", pub, "--root", root, check=True)
    listed = onix_json("repo", "list", "--root", root)
    assert listed[0]["status"] == "ok" and listed[0]["stones"] == 5

    r = onix_json("install", "app", "--root", root)
    assert r["changed"] and "app" in r["summary"] and "libcore" in r["summary"]
    assert (root / "usr/bin/app").read_text() == "app"
    assert (root / "usr/bin/sh").exists()  # base: a dependency of a dependency
    # downloads are dropped once imported: the store holds the content
    assert not list((root / ".onix/cache/downloads").glob("*.stone"))

    info = onix_json("info", "libcore", "--root", root)
    assert info["installed"]["explicit"] is False
    assert info["available"][0]["location"].startswith(url)
    assert onix_json("info", "app", "--root", root)["installed"]["explicit"] is True
    assert [a["name"] for a in onix_json("search", "core", "--root", root)] == ["libcore"]

    onix("install", "loner", "--root", root, check=True)
    r = onix_json("remove", "app", "--root", root)
    assert "orphans base, libcore" in r["summary"]
    assert not (root / "usr/bin/sh").exists()
    assert (root / "usr/bin/loner").exists()


def test_provider_strings_and_the_human_output(root, signed_repo):
    repo, pub = signed_repo
    onix("repo", "add", "local", repo, "--key", pub, "--root", root, check=True)
    r = onix("install", "binary(app)", "--root", root, check=True)
    assert "app" in r.stdout
    assert (root / "usr/bin/app").exists()


def test_missing_provider_is_one_line_and_nothing_changes(root, signed_repo, make_stone):
    repo, pub = signed_repo
    onix("repo", "add", "local", repo, "--key", pub, "--root", root, check=True)
    onix("install", "loner", "--root", root, check=True)
    before = snapshot(root)
    r = onix("install", "broken", "--root", root)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "nothing provides soname(libgone.so.9(x86_64)) needed by broken" in lines[0]
    assert snapshot(root) == before
    r = onix("install", "nosuchthing", "--root", root)
    assert r.returncode != 0 and "nosuchthing" in r.stderr
    assert snapshot(root) == before


def test_tampered_index_is_refused_at_add_and_leaves_the_root_as_it_was(root, signed_repo):
    repo, pub = signed_repo
    index = repo / "index.json"
    data = json.loads(index.read_bytes())
    data["stones"][0]["summary"] = "evil"
    index.write_bytes(json.dumps(data, sort_keys=True, separators=(",", ":")).encode())
    before = snapshot(root)
    r = onix("repo", "add", "local", repo, "--key", pub, "--root", root)
    assert r.returncode != 0
    assert "signature does not match" in r.stderr and "index.json" in r.stderr
    assert snapshot(root) == before


def test_a_stone_file_and_a_name_in_one_command(root, signed_repo, make_stone):
    repo, pub = signed_repo
    onix("repo", "add", "local", repo, "--key", pub, "--root", root, check=True)
    extra = make_stone("extra", {"bin/extra": "x"})
    onix("install", "app", str(extra), "--root", root, check=True)
    assert (root / "usr/bin/extra").exists() and (root / "usr/bin/app").exists()
    assert onix_json("info", "extra", "--root", root)["installed"]["explicit"] is True


# -- stone files and names in one command, provider strings --------------------------


@pytest.fixture
def deps_repo(tmp_path: Path, make_stone, signer):
    """app needs libcore (by soname); extra is a stone file outside any repository."""
    d = tmp_path / "deps"
    d.mkdir()
    for s in (make_stone("libcore", {"lib/libcore.so.1": "c"},
                         provides=["soname(libcore.so.1(x86_64))"]),
              make_stone("app", {"bin/app": "a"}, depends=["soname(libcore.so.1(x86_64))"])):
        with Stone(s) as st:
            name = st.meta.name
        shutil.move(s, d / f"{name}.stone")
    repo_index.write_index(directory=d, key=signer[0], name="deps")
    return d


def test_naming_an_installed_dependency_with_a_stone_file_makes_it_explicit(
        root, deps_repo, signer, make_stone):
    # `onix install libcore extra.stone`: libcore is installed as app's dependency, so the
    # plan fetches nothing and only the file was installed, forgetting that libcore was
    # now asked for by name: removing app then dropped it as an orphan.
    onix("repo", "add", "deps", deps_repo, "--key", signer[1], "--root", root, check=True)
    onix("install", "app", "--root", root, check=True)
    extra = make_stone("extra", {"bin/extra": "x"})
    onix("install", "libcore", str(extra), "--root", root, check=True)
    info = json.loads(onix("info", "libcore", "--root", root, "--json", check=True).stdout)
    assert info["installed"]["explicit"] is True
    r = onix("remove", "app", "--root", root, "--json", check=True)
    assert "orphans" not in json.loads(r.stdout)["summary"]
    assert (root / "usr/lib/libcore.so.1").exists()


def test_a_stone_file_meets_the_dependency_of_a_name_in_the_same_command(
        root, deps_repo, signer, make_stone):
    # `onix install app ./libcore.stone` (a local build of the dependency): resolution did
    # not see the file, fetched the repository's libcore too, and the transaction refused
    # "two stones named libcore" after both downloads.
    onix("repo", "add", "deps", deps_repo, "--key", signer[1], "--root", root, check=True)
    mine = make_stone("libcore", {"lib/libcore.so.1": "mine"}, version="0.9",
                      provides=["soname(libcore.so.1(x86_64))"])
    r = onix("install", "app", str(mine), "--root", root)
    assert r.returncode == 0, r.stderr
    assert (root / "usr/lib/libcore.so.1").read_text() == "mine"
    assert "fetching libcore" not in r.stderr
    info = json.loads(onix("info", "libcore", "--root", root, "--json", check=True).stdout)
    assert info["installed"]["version"] == "0.9" and info["installed"]["explicit"] is True


def test_a_provider_string_with_a_slash_is_not_taken_for_a_file(root, tmp_path, make_stone,
                                                                 signer):
    # interpreter(/usr/lib/ld-musl-x86_64.so.1(x86_64)) has slashes: it was read as a
    # path to a stone file ("no such file") instead of being resolved.
    d = tmp_path / "musl"
    d.mkdir()
    interp = "interpreter(/usr/lib/ld-musl-x86_64.so.1(x86_64))"
    shutil.move(make_stone("musl", {"lib/ld-musl-x86_64.so.1": "ld"}, provides=[interp]),
                d / "musl.stone")
    repo_index.write_index(directory=d, key=signer[0], name="musl")
    onix("repo", "add", "musl", d, "--key", signer[1], "--root", root, check=True)
    r = onix("install", interp, "--root", root)
    assert r.returncode == 0, r.stderr
    assert (root / "usr/lib/ld-musl-x86_64.so.1").exists()


# -- versioned dependencies, written on the command line -----------------------------


def test_a_versioned_depends_round_trips_and_install_honours_it(root, tmp_path, signer):
    """`onix stone pack --depends 'hello >= 1'` stores the constraint (not a name), the
    index carries it, and install by name picks a hello that meets it; `hello=1.0`
    downgrades on request; a bad constraint is refused with the value in the message."""
    d = tmp_path / "vers"
    d.mkdir()
    for version in ("0.9", "1.0", "2.0"):
        src = tmp_path / f"hello-{version}"
        (src / "usr/bin").mkdir(parents=True)
        (src / "usr/bin/hello").write_text(version)
        onix("stone", "pack", src, "-o", d / f"hello-{version}.stone", "--name", "hello",
             "--version", version, check=True)
    src = tmp_path / "motd"
    (src / "usr/bin").mkdir(parents=True)
    (src / "usr/bin/motd").write_text("motd")
    onix("stone", "pack", src, "-o", d / "motd.stone", "--name", "motd", "--version", "1",
         "--depends", "hello>=1", "--depends", "binary(sh)", check=True)
    meta = onix_json("stone", "inspect", d / "motd.stone")["meta"]
    assert meta["depends"] == ["binary(sh)", "hello >= 1"]  # canonical, sorted

    r = onix("stone", "pack", src, "-o", tmp_path / "bad.stone", "--name", "motd",
             "--version", "1", "--depends", "hello >>= 1")
    assert r.returncode != 0 and not (tmp_path / "bad.stone").exists()
    [line] = r.stderr.strip().splitlines()
    assert "--depends" in line and "'hello >>= 1'" in line and "does not parse" in line

    src = tmp_path / "sh"
    (src / "usr/bin").mkdir(parents=True)
    (src / "usr/bin/sh").write_text("sh")
    onix("stone", "pack", src, "-o", d / "sh.stone", "--name", "sh", "--version", "1",
         "--provides", "binary(sh)", check=True)
    repo_index.write_index(directory=d, key=signer[0], name="vers")
    entry = next(e for e in json.loads((d / "index.json").read_bytes())["stones"]
                 if e["name"] == "motd")
    assert entry["depends"] == ["binary(sh)", "hello >= 1"] and entry["installed_size"] == 4

    onix("repo", "add", "vers", d, "--key", signer[1], "--root", root, check=True)
    onix("install", "hello=0.9", "--root", root, check=True)
    assert (root / "usr/bin/hello").read_text() == "0.9"
    # motd needs hello >= 1: the installed 0.9 moves forward to the best that meets it
    r = onix_json("install", "motd", "--root", root)
    assert r["changed"] and (root / "usr/bin/hello").read_text() == "2.0"
    assert onix_json("info", "motd", "--root", root)["installed"]["depends"] == [
        "binary(sh)", "hello >= 1"]
    # an explicit NAME=VERSION may go back, as long as what is installed still fits
    onix("install", "hello=1.0", "--root", root, check=True)
    assert (root / "usr/bin/hello").read_text() == "1.0"
    before = snapshot(root)
    r = onix("install", "hello=0.9", "--root", root)
    assert r.returncode != 0
    [line] = r.stderr.strip().splitlines()
    assert "moving hello to 0.9-1 would leave motd without hello >= 1" in line
    r = onix("install", "hello>=3", "--root", root)
    assert r.returncode != 0
    [line] = r.stderr.strip().splitlines()
    assert "hello >= 3 was asked for; the repositories offer 0.9, 1.0, 2.0" in line
    assert snapshot(root) == before


def test_an_index_dependency_that_does_not_parse_is_refused_naming_the_index(
        root, deps_repo, signer):
    from conftest import resign

    from onix.core.paths import RootPaths
    from onix.repo import config

    def old_format(index):  # an index an older onix wrote: no installed_size
        for e in index["stones"]:
            del e["installed_size"]

    resign(deps_repo, signer[0], old_format)
    onix("repo", "add", "deps", deps_repo, "--key", signer[1], "--root", root, check=True)
    assert {a.installed_size for a in config.available(RootPaths.of(root))} == {0}

    def bad(index):
        index["stones"][0]["depends"] = ["libcore >>= 1"]

    resign(deps_repo, signer[0], bad)
    before = snapshot(root)
    r = onix("repo", "update", "--root", root)
    assert r.returncode != 0
    [line] = r.stderr.strip().splitlines()
    assert f"{deps_repo}/index.json" in line and "'libcore >>= 1'" in line
    assert snapshot(root) == before
