"""Signed indexes and repositories: real files, a real HTTP server on loopback (keys:
repo/test_keys.py; the entry checks of a fetched stone: repo/test_fetch.py)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import re
import shutil
import socket
import threading
from pathlib import Path

import pytest
from conftest import index_entry, onix, snapshot

from onix import api
from onix.core.errors import OnixError, StoneError
from onix.core.paths import RootPaths
from onix.machine.stone import Stone
from onix.repo import config as repo_config
from onix.repo import fetch as repo_fetch
from onix.repo import index as repo_index
from onix.repo import keys
from onix.repo.resolve import resolve

SONAME = "soname(libgreet.so.1(x86_64))"


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    # urllib honours proxy variables; the loopback server must be reached directly
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
                "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


# signer and other_signer (fresh repository keys) come from conftest.py


def _place(stone: Path, directory: Path) -> Path:
    with Stone(stone) as s:
        m = s.meta
    dest = directory / f"{m.name}-{m.version}-{m.release}-{m.arch}.stone"
    shutil.move(stone, dest)
    return dest


@pytest.fixture
def stones(tmp_path: Path, make_stone, signer) -> Path:
    """A signed repository directory: hello needs libgreet's soname; plus a dbginfo stone."""
    d = tmp_path / "stones"
    d.mkdir()
    _place(make_stone("libgreet", {"lib/libgreet.so.1": "greet"}, provides=[SONAME]), d)
    _place(make_stone("hello", {"bin/hello": "hello"}, version="2.1",
                      depends=[SONAME], provides=["binary(hello)"]), d)
    _place(make_stone("hello-dbginfo", {"lib/debug/.build-id/ab/cd.debug": "dbg"},
                      version="2.1"), d)
    (d / "README.txt").write_text("not a stone; ignored\n")
    repo_index.write_index(directory=d, key=signer[0], name="test")
    return d




def _pub(signer) -> str:
    return signer[1].read_text()


# -- index ---------------------------------------------------------------------------


def test_index_is_canonical_sorted_and_deterministic(stones, signer):
    data = (stones / "index.json").read_bytes()
    index = json.loads(data)
    assert data == json.dumps(index, sort_keys=True, separators=(",", ":")).encode()
    assert index["format"] == 1 and index["name"] == "test"
    assert [e["name"] for e in index["stones"]] == ["hello", "hello-dbginfo", "libgreet"]
    hello = index["stones"][0]
    assert hello["file"] == "hello-2.1-1-x86_64.stone"
    assert hello["depends"] == [SONAME] and hello["provides"] == ["binary(hello)"]
    raw = (stones / hello["file"]).read_bytes()
    assert hello["sha256"] == hashlib.sha256(raw).hexdigest() and hello["size"] == len(raw)
    sig = (stones / "index.json.sig").read_bytes()
    keys.verify(data, sig, public=keys.load_public(signer[1]), where="index")
    result = repo_index.write_index(directory=stones, key=signer[0], name="test")
    assert (stones / "index.json").read_bytes() == data  # ed25519 is deterministic too
    assert (stones / "index.json.sig").read_bytes() == sig
    assert result.as_dict()["stones"] == 3 and result.key_id == keys.load_public(signer[1]).key_id


def test_index_name_defaults_to_the_directory(stones, signer):
    assert repo_index.write_index(directory=stones, key=signer[0]).name == "stones"
    assert json.loads((stones / "index.json").read_bytes())["name"] == "stones"


def test_index_refuses_a_corrupt_stone_and_writes_nothing(stones, signer, tmp_path):
    victim = stones / "libgreet-1.0-1-x86_64.stone"
    data = bytearray(victim.read_bytes())
    data[-3] ^= 0xFF  # inside the content payload: only a full check finds it
    victim.write_bytes(bytes(data))
    before = snapshot(stones)
    with pytest.raises(StoneError) as e:
        repo_index.write_index(directory=stones, key=signer[0], name="test")
    assert e.value.path == str(victim)
    assert snapshot(stones) == before


def test_index_refuses_two_stones_of_one_version(stones, signer):
    shutil.copy(stones / "libgreet-1.0-1-x86_64.stone", stones / "copy.stone")
    before = snapshot(stones)
    with pytest.raises(OnixError, match=re.escape("are both libgreet 1.0-1")):
        repo_index.write_index(directory=stones, key=signer[0], name="test")
    assert snapshot(stones) == before


def test_index_with_a_bad_key_writes_nothing(stones, signer):
    before = snapshot(stones)
    with pytest.raises(OnixError, match="not an onix private key") as e:
        repo_index.write_index(directory=stones, key=signer[1], name="test")
    assert e.value.path == str(signer[1])
    with pytest.raises(OnixError, match="not a valid repository name"):
        repo_index.write_index(directory=stones, key=signer[0], name="Bad Name")
    assert snapshot(stones) == before


def test_an_index_file_name_with_a_nul_byte_is_a_bad_index_not_a_traceback(root, hostile,
                                                                          signer):
    d, edit = hostile
    edit(lambda i: index_entry(i, "evil").update(file="evil\0.stone"))
    before = snapshot(root)
    r = onix("repo", "add", "test", d, "--key", signer[1], "--root", root)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert "index.json" in r.stderr and "malformed" in r.stderr
    assert snapshot(root) == before


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


# -- add / list / remove -------------------------------------------------------------


def test_add_a_local_directory(root, stones, signer):
    info = api.repo_add(root, name="main", uri=str(stones), public_key=_pub(signer), priority=5)
    assert info.status == "ok" and info.stones == 3 and info.priority == 5
    conf = (root / "etc/onix/repos/main.conf").read_text()
    assert f"uri = {stones}\n" in conf and "priority = 5\n" in conf
    assert f"key = {_pub(signer).strip()}\n" in conf
    cache = root / ".onix/repos/main"
    assert (cache / "index.json").read_bytes() == (stones / "index.json").read_bytes()
    assert (cache / "index.json.sig").read_bytes() == (stones / "index.json.sig").read_bytes()
    [listed] = api.repo_list(root)
    assert listed.as_dict()["name"] == "main" and listed.stones == 3
    names = sorted(a.name for a in repo_config.available(RootPaths.of(root)))
    assert names == ["hello", "hello-dbginfo", "libgreet"]
    assert [a.name for a in api.search(root, "libgreet.so")] == ["libgreet"]  # by provider
    assert [a.name for a in api.search(root, "HELLO")] == ["hello", "hello-dbginfo"]
    [hello] = repo_config.info(RootPaths.of(root), "hello")
    assert hello.evr == "2.1-1" and hello.repo == "main" and hello.priority == 5
    assert hello.location == str(stones / "hello-2.1-1-x86_64.stone")
    with pytest.raises(OnixError, match="no repository has a stone named nope"):
        repo_config.info(RootPaths.of(root), "nope")


def test_add_a_file_url_and_a_public_key_file(root, stones, signer):
    api.repo_add(root, name="f", uri=f"file://{stones}/", public_key=str(signer[1]))
    assert api.repo_list(root)[0].uri == f"file://{stones}"
    path = repo_fetch.fetch(RootPaths.of(root), repo_config.info(RootPaths.of(root), "libgreet")[0])
    with Stone(path) as s:
        assert s.meta.name == "libgreet"


def _tamper(stones: Path) -> None:
    data = bytearray((stones / "index.json").read_bytes())
    i = data.index(b"2.1")
    data[i] = ord("9")  # one byte: hello 2.1 becomes 9.1
    (stones / "index.json").write_bytes(bytes(data))


BAD_ADDS = {
    "unsigned": (lambda s: (s / "index.json.sig").unlink(), "is not signed"),
    "tampered": (_tamper, "signature does not match the key configured for repository main"),
    "missing index": (lambda s: (s / "index.json").unlink(), "no repository index here"),
}


@pytest.mark.parametrize("case", sorted(BAD_ADDS))
@pytest.mark.parametrize("transport", ["dir", "http"])
def test_add_refuses_a_bad_index_and_writes_nothing(case, transport, root, stones, signer,
                                                    serve):
    spoil, message = BAD_ADDS[case]
    spoil(stones)
    uri = str(stones) if transport == "dir" else serve(stones)
    before = snapshot(root)
    with pytest.raises(OnixError, match=message) as e:
        api.repo_add(root, name="main", uri=uri, public_key=_pub(signer))
    assert e.value.path == (f"{stones}/index.json" if transport == "dir"
                            else f"{uri}/index.json")
    assert e.value.hint
    assert snapshot(root) == before


def test_add_refuses_the_wrong_key(root, stones, other_signer, serve):
    uri = serve(stones)
    before = snapshot(root)
    with pytest.raises(OnixError, match=re.escape("signature does not match the key configured for "
                                            "repository main (signed by key")) as e:
        api.repo_add(root, name="main", uri=uri, public_key=_pub(other_signer))
    assert e.value.line().startswith(f"{uri}/index.json: signature does not match")
    assert snapshot(root) == before


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("case", ["bad name", "no dir", "404", "unreachable", "scheme",
                                  "bad key", "duplicate"])
def test_bad_add_names_what_and_writes_nothing(case, root, stones, signer, serve, tmp_path):
    name, uri, key = "main", str(stones), _pub(signer)
    where = None
    if case == "bad name":
        name, where = "../evil", "../evil"
    elif case == "no dir":
        uri = where = str(tmp_path / "nowhere")
    elif case == "404":
        empty = tmp_path / "empty"
        empty.mkdir()
        uri = serve(empty)
        where = f"{uri}/index.json"
    elif case == "unreachable":
        uri = f"http://127.0.0.1:{_closed_port()}/repo"
        where = f"{uri}/index.json"
    elif case == "scheme":
        uri = where = "ftp://example.org/stones"
    elif case == "bad key":
        key = "onix-ed25519 bm90IGEga2V5 comment"
    elif case == "duplicate":
        api.repo_add(root, name="main", uri=uri, public_key=key)
        where = str(root / "etc/onix/repos/main.conf")
    before = snapshot(root)
    with pytest.raises(OnixError) as e:
        api.repo_add(root, name=name, uri=uri, public_key=key)
    if where is not None:
        assert e.value.path == where
    assert e.value.hint
    assert snapshot(root) == before


def test_a_symlinked_etc_is_refused(root, stones, signer, tmp_path):
    elsewhere = tmp_path / "host-etc"
    elsewhere.mkdir()
    os.symlink(elsewhere, root / "etc")
    with pytest.raises(OnixError, match="is a symlink") as e:
        api.repo_add(root, name="main", uri=str(stones), public_key=_pub(signer))
    assert e.value.path == str(root / "etc")
    assert list(elsewhere.iterdir()) == []


def test_remove(root, stones, signer):
    api.repo_add(root, name="main", uri=str(stones), public_key=_pub(signer))
    assert api.repo_remove(root, name="main").name == "main"
    assert not (root / "etc/onix/repos/main.conf").exists()
    assert not (root / ".onix/repos/main").exists()
    assert api.repo_list(root) == [] and repo_config.available(RootPaths.of(root)) == []
    before = snapshot(root)
    with pytest.raises(OnixError, match="no repository named main"):
        api.repo_remove(root, name="main")
    assert snapshot(root) == before


# -- update and the cached index -----------------------------------------------------


def test_tampered_update_keeps_the_previous_cache(root, stones, signer, serve, make_stone):
    uri = serve(stones)
    api.repo_add(root, name="main", uri=uri, public_key=_pub(signer))
    assert api.repo_update(root)[0].changed is False
    _place(make_stone("extra", {"share/extra": "x"}), stones)
    repo_index.write_index(directory=stones, key=signer[0], name="test")
    good_new = (stones / "index.json").read_bytes()
    _tamper(stones)
    before = snapshot(root)
    with pytest.raises(OnixError, match="signature does not match") as e:
        api.repo_update(root, names=["main"])
    assert e.value.path == f"{uri}/index.json"
    assert snapshot(root) == before
    assert "extra" not in {a.name for a in repo_config.available(RootPaths.of(root))}
    (stones / "index.json").write_bytes(good_new)
    [result] = api.repo_update(root, names=["main"])
    assert result.changed and result.stones == 4
    assert "extra" in {a.name for a in repo_config.available(RootPaths.of(root))}
    assert not list((root / ".onix/repos").glob(".*"))  # no swap debris


def test_update_checks_every_repository_before_writing_any(root, stones, signer, serve,
                                                            tmp_path, make_stone):
    second = tmp_path / "second"
    second.mkdir()
    _place(make_stone("other", {"share/o": "o"}), second)
    repo_index.write_index(directory=second, key=signer[0], name="second")
    api.repo_add(root, name="a", uri=str(stones), public_key=_pub(signer))
    api.repo_add(root, name="b", uri=serve(second), public_key=_pub(signer))
    repo_index.write_index(directory=stones, key=signer[0], name="changed")  # a would change
    (second / "index.json.sig").unlink()  # b is broken
    before = snapshot(root)
    with pytest.raises(OnixError, match="is not signed"):
        api.repo_update(root)
    assert snapshot(root) == before
    with pytest.raises(OnixError, match="no repository named zzz"):
        api.repo_update(root, names=["zzz"])


def test_a_tampered_cache_is_refused_on_load(root, stones, signer):
    api.repo_add(root, name="main", uri=str(stones), public_key=_pub(signer))
    _tamper(root / ".onix/repos/main")
    with pytest.raises(OnixError, match="signature does not match the key configured") as e:
        repo_config.available(RootPaths.of(root))
    assert e.value.path == str(root / ".onix/repos/main/index.json")
    assert "onix repo update main" in e.value.hint
    [info] = api.repo_list(root)
    assert info.stones is None and "signature does not match" in info.status
    api.repo_update(root)  # a good fetch repairs it
    assert len(repo_config.available(RootPaths.of(root))) == 3


def test_a_broken_config_names_its_line(root, stones, signer):
    api.repo_add(root, name="main", uri=str(stones), public_key=_pub(signer))
    conf = root / "etc/onix/repos/main.conf"
    conf.write_text(conf.read_text() + "mirror = x\n")
    with pytest.raises(OnixError, match="line 5: expected one of uri, key, priority") as e:
        api.repo_list(root)
    assert e.value.path == str(conf)


def test_repo_update_does_not_hold_the_root_lock_while_the_server_answers(root, hostile,
                                                                          signer):
    # `onix repo update` held the root lock for the whole fetch: a slow or stalled server
    # (30 s per read, no bound on the whole) held every install, remove and rollback up.

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


# -- fetching stones -----------------------------------------------------------------


def test_resolve_and_fetch_over_http(root, stones, signer, serve):
    uri = serve(stones)
    api.repo_add(root, name="main", uri=uri, public_key=_pub(signer))
    plan = resolve(requested=["hello"], installed={},
                   available=repo_config.available(RootPaths.of(root)), explicit=set())
    assert sorted(a.name for a in plan.install) == ["hello", "libgreet"]
    assert plan.dependencies == {"libgreet"}
    seen = []
    paths = [repo_fetch.fetch(RootPaths.of(root), a, progress=seen.append) for a in plan.install]
    for a, p in zip(plan.install, paths, strict=True):
        assert p == root / ".onix/cache/downloads" / f"{a.sha256}.stone"
        assert hashlib.sha256(p.read_bytes()).hexdigest() == a.sha256
        with Stone(p) as s:
            assert s.meta.name == a.name
    assert sum(seen) == sum(a.size for a in plan.install)
    # a second fetch is served from the download cache: the server is not needed
    for f in stones.glob("*.stone"):
        f.unlink()
    assert repo_fetch.fetch(RootPaths.of(root), plan.install[0]) == paths[0]


def test_checksum_mismatch_is_refused_and_not_cached(root, stones, signer, serve, make_stone):
    uri = serve(stones)
    api.repo_add(root, name="main", uri=uri, public_key=_pub(signer))
    entry = repo_config.info(RootPaths.of(root), "libgreet")[0]
    # same file name, other bytes: the stone changed after the index was signed
    other = make_stone("libgreet", {"lib/libgreet.so.1": "evil"}, provides=[SONAME])
    shutil.move(other, stones / entry.file)
    before = snapshot(root)
    with pytest.raises(OnixError, match=re.escape(
            "checksum mismatch: the download of libgreet 1.0-1")) as e:
        repo_fetch.fetch(RootPaths.of(root), entry)
    assert e.value.path == f"{uri}/{entry.file}"
    assert "onix repo update main" in e.value.hint
    assert snapshot(root) == before  # not cached, no temp file, no new directories


def test_a_damaged_download_cache_entry_is_fetched_again(root, stones, signer):
    api.repo_add(root, name="main", uri=str(stones), public_key=_pub(signer))
    entry = repo_config.info(RootPaths.of(root), "hello")[0]
    path = repo_fetch.fetch(RootPaths.of(root), entry)
    path.write_bytes(b"rot")
    assert repo_fetch.fetch(RootPaths.of(root), entry) == path
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry.sha256


def test_a_missing_stone_is_a_404_naming_its_url(root, stones, signer, serve):
    uri = serve(stones)
    api.repo_add(root, name="main", uri=uri, public_key=_pub(signer))
    entry = repo_config.info(RootPaths.of(root), "hello")[0]
    (stones / entry.file).unlink()
    before = snapshot(root)
    with pytest.raises(OnixError,
                       match=re.escape("not found (repository main lists hello 2.1-1")) as e:
        repo_fetch.fetch(RootPaths.of(root), entry)
    assert e.value.path == f"{uri}/{entry.file}"
    assert snapshot(root) == before


def test_priority_picks_the_repository(root, stones, signer, tmp_path, make_stone):
    newer = tmp_path / "newer"
    newer.mkdir()
    _place(make_stone("libgreet", {"lib/libgreet.so.1": "v2"}, version="1.5",
                      provides=[SONAME]), newer)
    repo_index.write_index(directory=newer, key=signer[0], name="newer")
    api.repo_add(root, name="base", uri=str(stones), public_key=_pub(signer), priority=10)
    api.repo_add(root, name="newer", uri=str(newer), public_key=_pub(signer))
    assert [(a.repo, a.version) for a in repo_config.info(RootPaths.of(root), "libgreet")] == [
        ("base", "1.0"), ("newer", "1.5")]
    plan = resolve(requested=["libgreet"], installed={},
                   available=repo_config.available(RootPaths.of(root)), explicit=set())
    assert [(a.repo, a.version) for a in plan.install] == [("base", "1.0")]
