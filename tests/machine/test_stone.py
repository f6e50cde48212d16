"""The stone format: deterministic packing, a faithful round trip, a checked reader."""

from __future__ import annotations

import os
from pathlib import Path

from conftest import onix_json, write_tree

from onix.machine.stone import MAGIC, Stone, StoneMeta, pack


def test_pack_is_deterministic_and_round_trips(tmp_path: Path) -> None:
    files = {"bin/tool": ("#!/bin/sh\n", 0o755), "lib/libz.so.1": os.urandom(70_000),
             "lib/libz.so": ("symlink", "libz.so.1"), "share/empty": b"",
             "share/dup-a": "same", "share/dup-b": "same", "share/dir": ("dir",)}
    a, b = tmp_path / "a", tmp_path / "b"
    write_tree(a, files)
    write_tree(b, files)
    os.utime(b / "usr/bin/tool", (0, 0))  # times must not matter
    meta = StoneMeta(name="z", version="1.3", release=2, summary="zlib", license="Zlib",
                     provides=["soname(libz.so.1)"], depends=["libc"])
    pack(a, tmp_path / "a.stone", meta)
    pack(b, tmp_path / "b.stone", meta)
    assert (tmp_path / "a.stone").read_bytes() == (tmp_path / "b.stone").read_bytes()
    assert (tmp_path / "a.stone").read_bytes().startswith(MAGIC)
    with Stone(tmp_path / "a.stone") as s:
        assert s.meta == meta
        by_path = {e.path: e for e in s.layout}
        assert by_path["bin/tool"].mode == 0o755 and by_path["bin/tool"].kind == "file"
        assert by_path["lib/libz.so"].target == "libz.so.1"
        assert by_path["share/empty"].size == 0
        assert by_path["share/dir"].kind == "dir"
        assert len(s.index) == 3  # tool, libz, "same" once; the empty file has no content
        blobs = {d: b"".join(chunks) for d, _n, chunks in
                 ((d, n, list(c)) for d, n, c in s.contents())}
        assert blobs[by_path["lib/libz.so.1"].digest] == (a / "usr/lib/libz.so.1").read_bytes()
        s.check_content()


def test_inspect_json(tmp_path: Path) -> None:
    write_tree(tmp_path / "d", {"bin/x": "x"})
    pack(tmp_path / "d", tmp_path / "x.stone", StoneMeta(name="x", version="1"))
    info = onix_json("stone", "inspect", tmp_path / "x.stone")
    assert info["meta"]["name"] == "x" and info["content_verified"] is True
    assert set(info["payloads"]) == {"meta", "layout", "index", "content"}
