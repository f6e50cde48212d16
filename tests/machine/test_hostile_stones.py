"""Hostile stones: a damaged or crafted stone is one clear error line naming it, a non-zero
exit, and the root byte-identical (the reader, the layout checks, pack and inspect)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import assert_clean_failure, craft, file_rec, onix

from onix import api
from onix.machine import stone as stonefmt


def test_wrong_magic(installed: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.stone"
    bad.write_bytes(b"PK\x03\x04 not a stone at all" * 4)
    line = assert_clean_failure(installed, ["install", bad], match="wrong magic")
    assert str(bad) in line


def test_truncated_stone(installed: Path, tmp_path: Path, make_stone) -> None:
    good = make_stone("big", {"share/blob": os.urandom(200_000)})
    data = good.read_bytes()
    for cut in (10, 60, len(data) // 2, len(data) - 1):
        t = tmp_path / f"trunc-{cut}.stone"
        t.write_bytes(data[:cut])
        assert_clean_failure(installed, ["install", t], match=str(t))


@pytest.mark.parametrize("which", ["meta", "layout", "index", "content"])
def test_corrupt_payload(installed: Path, tmp_path: Path, make_stone, which: str) -> None:
    good = make_stone("big", {"share/blob": os.urandom(50_000), "share/b2": "x" * 3000})
    data = bytearray(good.read_bytes())
    with stonefmt.Stone(good) as s:
        kind = {v: k for k, v in stonefmt.KIND_NAMES.items()}[which]
        h = s.payloads[kind]
    data[h.offset + h.stored_size // 2] ^= 0xFF
    bad = tmp_path / f"corrupt-{which}.stone"
    bad.write_bytes(bytes(data))
    assert_clean_failure(installed, ["install", bad], match="corrupt")


def test_content_lies_about_digest(installed: Path, tmp_path: Path) -> None:
    rec = file_rec("share/x", b"claimed")
    rec[-1] = "0" * 64
    bad = craft(tmp_path / "liar.stone", layout=[rec], blobs=[b"claimed"])
    assert_clean_failure(installed, ["install", bad], match="liar.stone")


@pytest.mark.parametrize("path", ["../etc/passwd", "/etc/passwd", "bin/../../etc/x", "bin//x",
                                  "./bin/x", ".stateID", "lib/os-release"])
def test_path_traversal_rejected(installed: Path, tmp_path: Path, path: str) -> None:
    bad = craft(tmp_path / "trav.stone", layout=[file_rec(path, b"pwned")], blobs=[b"pwned"])
    assert_clean_failure(installed, ["install", bad], match="trav.stone")
    assert not (installed / "etc").exists()


def test_symlink_escape_rejected(installed: Path, tmp_path: Path) -> None:
    # One stone makes /usr/share a link out of /usr, another writes below it.
    link = craft(tmp_path / "link.stone", meta={"name": "link"},
                 layout=[["share", "symlink", 0o777, 0, 0, 0, "../../etc"]], blobs=[])
    payload = craft(tmp_path / "payload.stone", meta={"name": "payload"},
                    layout=[file_rec("share/shadow", b"root::0:0")], blobs=[b"root::0:0"])
    line = assert_clean_failure(installed, ["install", link, payload], match="symlink")
    assert "/usr/share" in line
    # and within one stone
    both = craft(tmp_path / "both.stone", layout=[["share", "symlink", 0o777, 0, 0, 0, "/etc"],
                                                  file_rec("share/x", b"x")], blobs=[b"x"])
    assert_clean_failure(installed, ["install", both], match="symlink")


@pytest.mark.parametrize("digest", ["../../../../../PWNED".ljust(64, "a"), "A" * 64, "g" * 64])
def test_hostile_digest_rejected(installed: Path, tmp_path: Path, digest: str) -> None:
    """A digest names a file in the store; anything but lowercase hex must never reach it."""
    rec = ["share/x", "file", 0o644, 0, 0, 5, digest]
    bad = craft(tmp_path / "digest.stone", layout=[rec], blobs=[])
    assert_clean_failure(installed, ["install", bad], match="digest.stone")
    assert not list(tmp_path.parent.glob("**/PWNED*"))


def test_lib_symlink_rejected(installed: Path, tmp_path: Path) -> None:
    """onix writes usr/lib/os-release; a stone must not turn usr/lib into a way out."""
    bad = craft(tmp_path / "lib.stone", layout=[["lib", "symlink", 0o777, 0, 0, 0, "/etc"]],
                blobs=[])
    assert_clean_failure(installed, ["install", bad], match="must be a directory")


@pytest.mark.parametrize("rec", [
    ["share/x", "file", "0644", 0, 0, 1, None],
    ["share/x", "file", 0o644, -1, 0, 1, None],
    ["share/x", "file", 0o644, 0, 0, 999, None],  # size disagrees with the content index
    ["share/x", "file", 0o644, 0, 0],
    "share/x",
])
def test_malformed_layout_records(installed: Path, tmp_path: Path, rec) -> None:
    import blake3

    if isinstance(rec, list) and len(rec) == 7:
        rec[6] = blake3.blake3(b"x").hexdigest()
    bad = craft(tmp_path / "rec.stone", layout=[rec], blobs=[b"x"])
    assert_clean_failure(installed, ["install", bad], match="rec.stone")


@pytest.mark.parametrize("rec", [
    ["share/l", "symlink", 0o777, 0, 0, 0, 42],
    ["share/l", "symlink", 0o777, 0, 0, 0, ["x"]],
    ["share/d", "dir", 0o755, 0, 0, 0, "smuggled"],
])
def test_bad_symlink_or_dir_records(installed: Path, tmp_path: Path, rec) -> None:
    bad = craft(tmp_path / "odd.stone", layout=[rec], blobs=[])
    assert_clean_failure(installed, ["install", bad], match="odd.stone")


@pytest.mark.parametrize("what", ["huge-plain", "huge-release", "markup"])
def test_hostile_headers_are_one_line(root: Path, tmp_path: Path, make_stone, what) -> None:
    api.install(root, [make_stone("base", {"bin/base": "b"})])
    if what == "huge-plain":
        good = make_stone("big", {"share/x": "x"})
        data = bytearray(good.read_bytes())
        with stonefmt.Stone(good) as s:
            h = s.payloads[stonefmt.LAYOUT]
        at = h.offset - stonefmt.PAYLOAD_HEADER.size + 16  # plain_size field
        data[at:at + 8] = (2**64 - 1).to_bytes(8, "little")
        bad = tmp_path / "huge.stone"
        bad.write_bytes(bytes(data))
        args = [["stone", "inspect", bad], ["install", bad, "--root", root]]
    elif what == "huge-release":
        bad = craft(tmp_path / "rel.stone", meta={"release": 2**63}, layout=[], blobs=[])
        args = [["install", bad, "--root", root]]
    else:
        src = tmp_path / "m"
        (src / "usr/bin").mkdir(parents=True)
        (src / "usr/bin/m").write_text("m")
        bad = tmp_path / "markup.stone"
        onix("stone", "pack", src, "-o", bad, "--name", "m", "--version", "1[/b]",
             "--summary", "evil [/x]", check=True)
        onix("install", bad, "--root", root, check=True)
        out = onix("state", "list", "--root", root, check=True).stdout
        assert "1[/b]" in out
        assert "evil [/x]" in onix("stone", "inspect", bad, check=True).stdout
        return
    for a in args:
        r = onix(*a)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_inspect_checks_content(tmp_path: Path, make_stone) -> None:
    good = make_stone("big", {"share/blob": os.urandom(50_000)})
    data = bytearray(good.read_bytes())
    data[-100] ^= 0xFF
    bad = tmp_path / "flipped.stone"
    bad.write_bytes(bytes(data))
    r = onix("stone", "inspect", bad)
    assert r.returncode != 0 and "flipped.stone" in r.stderr
    assert onix("stone", "inspect", good).returncode == 0


def test_pack_refuses_non_usr(tmp_path: Path) -> None:
    d = tmp_path / "destdir"
    (d / "usr/bin").mkdir(parents=True)
    (d / "etc").mkdir()
    r = onix("stone", "pack", d, "-o", tmp_path / "x.stone", "--name", "x", "--version", "1")
    assert r.returncode != 0 and "may only hold /usr" in r.stderr
    assert not (tmp_path / "x.stone").exists()
