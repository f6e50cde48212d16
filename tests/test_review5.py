"""Adversarial review of the builder, repositories and install by name (issue 5):
each test here failed before the fix it names."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import onix, snapshot

from onix.core.paths import RootPaths
from onix.machine.stone import Stone
from onix.repo import config as repo_config
from onix.repo import fetch as repo_fetch
from onix.repo import index as repo_index
from onix.repo import keys
from onix.repo import versions as repo_versions


@pytest.fixture
def signer(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "keys").mkdir()
    return keys.generate(out=tmp_path / "keys" / "test", comment="test key")


def _resign(directory: Path, key: Path, edit) -> None:
    """Rewrite a signed index with `edit(index)` applied and sign it again: what a
    repository owner (or a stolen key) can publish."""
    index = json.loads((directory / "index.json").read_bytes())
    edit(index)
    data = repo_index._canonical(index)
    (directory / "index.json").write_bytes(data)
    (directory / "index.json.sig").write_bytes(keys.sign(data, key=key))


@pytest.fixture
def hostile(tmp_path: Path, make_stone, signer):
    """A signed repository with stones `evil` and `loner`; edit(fn) re-signs it changed."""
    d = tmp_path / "stones"
    d.mkdir()
    for name in ("evil", "loner"):
        s = make_stone(name, {f"bin/{name}": name})
        shutil.move(s, d / f"{name}.stone")
    repo_index.write_index(directory=d, key=signer[0], name="test")

    def edit(fn) -> Path:
        _resign(d, signer[0], fn)
        return d

    return d, edit


def _entry(index: dict, name: str) -> dict:
    return next(e for e in index["stones"] if e["name"] == name)


def test_a_stone_whose_metadata_differs_from_its_index_entry_is_refused(root, hostile, signer):
    # The index says `app`, the file it points at is `evil`: installing `app` must not
    # install (and record as explicit) a stone of another name.
    d, edit = hostile
    edit(lambda i: _entry(i, "evil").update(name="app"))
    onix("repo", "add", "test", d, "--key", signer[1], "--root", root, check=True)
    before = snapshot(root)
    r = onix("install", "app", "--root", root)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if not ln.startswith("fetching ")]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert "evil.stone" in lines[0] and "app" in lines[0] and "evil" in lines[0]
    assert not (root / "usr/bin/evil").exists()
    after = snapshot(root)
    assert {k: v for k, v in after.items() if "cache/downloads" not in k} == \
        {k: v for k, v in before.items() if "cache/downloads" not in k}
    assert not [k for k in after if k.endswith(".stone")]  # the lying stone is not kept


def test_an_index_entry_whose_version_differs_from_the_stone_is_refused(root, hostile, signer):
    d, edit = hostile
    edit(lambda i: _entry(i, "evil").update(version="9.9"))
    onix("repo", "add", "test", d, "--key", signer[1], "--root", root, check=True)
    r = onix("install", "evil", "--root", root)
    assert r.returncode != 0 and "9.9" in r.stderr and "1.0" in r.stderr
    assert not (root / "usr/bin/evil").exists()


def test_an_index_file_name_with_a_nul_byte_is_a_bad_index_not_a_traceback(root, hostile,
                                                                          signer):
    d, edit = hostile
    edit(lambda i: _entry(i, "evil").update(file="evil\0.stone"))
    before = snapshot(root)
    r = onix("repo", "add", "test", d, "--key", signer[1], "--root", root)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert "index.json" in r.stderr and "malformed" in r.stderr
    assert snapshot(root) == before


def test_fetch_checks_the_stone_against_its_entry_on_a_cache_hit_too(root, hostile, signer):
    d, _edit = hostile
    onix("repo", "add", "test", d, "--key", signer[1], "--root", root, check=True)
    entry = next(a for a in repo_config.available(RootPaths.of(root)) if a.name == "evil")
    got = repo_fetch.fetch(RootPaths.of(root), entry)  # a truthful entry: fetched and kept
    with Stone(got) as s:
        assert s.meta.name == "evil"
    lying = repo_versions.Available(**{**entry.__dict__, "name": "app"})
    with pytest.raises(repo_index.OnixError, match="app"):
        repo_fetch.fetch(RootPaths.of(root), lying)


# -- recipes ---------------------------------------------------------------------------

RECIPE = """\
name: demo
version: "1.0"
release: {release}
summary: a demo
license: MIT
"""


@pytest.mark.parametrize("release", ["010", "1:30", "0x10", "0b1"])
def test_a_release_that_is_no_plain_decimal_is_one_error_line(tmp_path, release):
    # YAML 1.1 reads 010 as octal and 1:30 as base 60; int(…, 0) then raised ValueError,
    # a traceback instead of recipe.yaml:3
    from onix.build.recipe import RecipeError, load

    p = tmp_path / "r.yaml"
    p.write_text(RECIPE.format(release=release))
    with pytest.raises(RecipeError) as e:
        load(p)
    assert e.value.path == f"{p}:3" and "release" in e.value.message


def test_a_nul_in_a_recipe_is_one_error_line_with_its_line(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_bytes(RECIPE.format(release=1).encode() + b"homepage: a\0b\n")
    r = onix("build", p, "-o", tmp_path / "out", "--cache", tmp_path / "cache")
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if not ln.endswith(": load")]
    assert len(lines) == 1, r.stderr
    assert f"{p}:6" in lines[0]


# -- the builder -----------------------------------------------------------------------

STEPS = RECIPE.format(release=1) + "install: |\n  mkdir -p %(installroot)/usr/bin\n"


def _build(tmp_path: Path, install: str):
    p = tmp_path / "r.yaml"
    p.write_text(STEPS + "".join(f"  {ln}\n" for ln in install.splitlines()))
    return onix("build", p, "-o", tmp_path / "out", "--cache", tmp_path / "cache", "--json")


def test_a_file_name_that_is_not_utf8_is_one_error_naming_it(tmp_path):
    # It crashed with UnicodeEncodeError while packing (a stone's layout is UTF-8 JSON).
    r = _build(tmp_path, "touch %(installroot)/usr/bin/ok %(installroot)/usr/bin/$'a\\xff'")
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    err = json.loads(r.stdout)
    assert "usr/bin/a\\xff" in err["error"] + str(err["path"]) and "UTF-8" in err["error"]
    assert not list((tmp_path / "out").glob("*.stone"))


def test_a_dropped_file_name_that_is_not_utf8_does_not_break_the_manifest(tmp_path):
    # Only usr/ is kept; the manifest lists what went, and could not encode this name.
    r = _build(tmp_path, "touch %(installroot)/usr/bin/ok\n"
               "mkdir %(installroot)/etc; touch %(installroot)/etc/$'b\\xff'")
    assert r.returncode == 0, r.stdout + r.stderr
    manifest = json.loads(Path(json.loads(r.stdout)[0]["manifest"]).read_text())
    assert manifest["dropped"] == ["etc/", "etc/b\\xff"]


def test_a_path_upstream_directory_with_a_non_utf8_name_is_recorded(tmp_path):
    # The manifest records a directory upstream by a sha256 over its entries; encoding a
    # non-UTF-8 name for that hash crashed the build at the very end.
    src = tmp_path / "src"
    src.mkdir()
    (src / os.fsdecode(b"n\xff")).write_text("x")
    p = tmp_path / "r.yaml"
    p.write_text(STEPS + "upstreams:\n  - path: src\n"
                 "  - path: src2\n")
    (tmp_path / "src2").mkdir()
    (tmp_path / "src2" / "ok").write_text("y")
    r = onix("build", p, "-o", tmp_path / "out", "--cache", tmp_path / "cache", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    manifest = json.loads(Path(json.loads(r.stdout)[0]["manifest"]).read_text())
    assert [len(u["sha256"]) for u in manifest["upstreams"]] == [64, 64]


# -- install by name -------------------------------------------------------------------


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


def test_a_deeply_nested_index_is_a_bad_index_not_a_traceback(root, hostile, signer):
    d, _edit = hostile
    data = b'{"format":1,"name":"test","stones":[' + b"[" * 100000 + b"]" * 100000 + b"]}"
    (d / "index.json").write_bytes(data)
    (d / "index.json.sig").write_bytes(keys.sign(data, key=signer[0]))
    before = snapshot(root)
    r = onix("repo", "add", "test", d, "--key", signer[1], "--root", root)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "index.json" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert snapshot(root) == before


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")
def test_stripping_never_rewrites_a_file_hard_linked_from_outside_the_build(tmp_path):
    # Stripping rewrote each ELF file in place (same inode). An install step that
    # hard-links a file from elsewhere on the disk — `cp -al`, `ln` from the host's own
    # /usr — had that file stripped too: the build modified the machine it ran on.
    import hashlib
    import subprocess

    outside = tmp_path / "elsewhere" / "tool"
    outside.parent.mkdir()
    (tmp_path / "t.c").write_text("int main(void) { return 0; }\n")
    subprocess.run(["gcc", "-g", "-Wl,--build-id", "-o", outside, tmp_path / "t.c"], check=True)
    before = hashlib.sha256(outside.read_bytes()).hexdigest()
    r = _build(tmp_path, f"ln {outside} %(installroot)/usr/bin/tool\n"
               "ln %(installroot)/usr/bin/tool %(installroot)/usr/bin/tool2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert hashlib.sha256(outside.read_bytes()).hexdigest() == before
    stones = {s["name"]: s for s in json.loads(r.stdout)[0]["stones"]}
    assert "demo-dbginfo" in stones  # it was stripped, in the build's own copy
    with Stone(Path(stones["demo"]["file"])) as s:
        sizes = {e.path: e.size for e in s.layout if e.path.startswith("bin/")}
    assert sizes["bin/tool"] == sizes["bin/tool2"] < outside.stat().st_size


# -- repositories over HTTP ------------------------------------------------------------


def test_repo_update_does_not_hold_the_root_lock_while_the_server_answers(root, hostile,
                                                                          signer):
    # `onix repo update` held the root lock for the whole fetch: a slow or stalled server
    # (30 s per read, no bound on the whole) held every install, remove and rollback up.
    import functools
    import http.server
    import threading

    from onix.core.lock import lock_held
    from onix.core.paths import RootPaths

    d, _edit = hostile
    onix("repo", "add", "test", d, "--key", signer[1], "--root", root, check=True)
    paths = RootPaths.of(root)
    assert paths.onix.is_dir()
    seen: list[bool] = []

    class Watch(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            if self.path.endswith("index.json"):
                seen.append(lock_held(paths))
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(Watch, directory=str(d)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        conf = paths.root / "etc/onix/repos/test.conf"
        conf.write_text(conf.read_text().replace(f"uri = {d}", f"uri = {url}"))
        r = onix("repo", "update", "--root", root, "--json", "--no-wait",
                 env={"http_proxy": "", "HTTP_PROXY": ""})
        assert r.returncode == 0, r.stderr
        onix("repo", "add", "again", url, "--key", signer[1], "--root", root, check=True,
             env={"http_proxy": "", "HTTP_PROXY": ""})
    finally:
        server.shutdown()
        server.server_close()
    assert seen == [False, False]


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
