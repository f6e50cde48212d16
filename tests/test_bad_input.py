"""Bad input: one clear error line naming the path, non-zero exit, root byte-identical."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import onix, snapshot

from onix import api
from onix.machine import stone as stonefmt


def craft(path: Path, *, meta: dict | None = None, layout: list, blobs: list[bytes]) -> Path:
    """Write a stone by hand, bypassing pack()'s checks, to feed the reader hostile input."""
    import blake3
    import zstandard

    m = {"name": "evil", "version": "1", "release": 1, "arch": "x86_64", "summary": "",
         "license": "", "provides": [], "depends": [], **(meta or {})}
    cctx = zstandard.ZstdCompressor(level=3)
    blobs = sorted(blobs, key=lambda b: blake3.blake3(b).hexdigest())
    index, off = [], 0
    for b in blobs:
        index.append([blake3.blake3(b).hexdigest(), off, len(b)])
        off += len(b)

    def payload(kind: int, plain: bytes, records: int) -> bytes:
        stored = cctx.compress(plain)
        return stonefmt.PAYLOAD_HEADER.pack(kind, stonefmt.ZSTD, 0, records, len(stored),
                                            len(plain), blake3.blake3(stored).digest()) + stored

    import json

    data = stonefmt.FILE_HEADER.pack(stonefmt.MAGIC, stonefmt.VERSION, 4, bytes(20))
    data += payload(stonefmt.META, json.dumps(m).encode(), 1)
    data += payload(stonefmt.LAYOUT, json.dumps(layout).encode(), len(layout))
    data += payload(stonefmt.INDEX, json.dumps(index).encode(), len(index))
    data += payload(stonefmt.CONTENT, b"".join(blobs), len(index))
    path.write_bytes(data)
    return path


def file_rec(path: str, content: bytes, mode: int = 0o644) -> list:
    import blake3

    return [path, "file", mode, 0, 0, len(content), blake3.blake3(content).hexdigest()]


@pytest.fixture
def installed(root: Path, make_stone) -> Path:
    api.install(root, [make_stone("hello", {"bin/hello": ("hi", 0o755),
                                                    "lib/libc.so": "c" * 5000})])
    return root


def assert_clean_failure(root: Path, args: list, *, match: str, env: dict | None = None,
                         code: int | None = None) -> str:
    before = snapshot(root)
    r = onix(*args, "--root", root, env=env)
    assert r.returncode != 0, r.stdout
    if code is not None:
        assert r.returncode == code
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") and match in lines[0], lines[0]
    assert snapshot(root) == before
    return lines[0]


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


def test_file_conflict(installed: Path, make_stone) -> None:
    clash = make_stone("clash", {"bin/hello": "other"})
    line = assert_clean_failure(installed, ["install", clash], match="/usr/bin/hello")
    assert "hello" in line and "clash" in line


def test_pack_refuses_non_usr(tmp_path: Path) -> None:
    d = tmp_path / "destdir"
    (d / "usr/bin").mkdir(parents=True)
    (d / "etc").mkdir()
    r = onix("stone", "pack", d, "-o", tmp_path / "x.stone", "--name", "x", "--version", "1")
    assert r.returncode != 0 and "may only hold /usr" in r.stderr
    assert not (tmp_path / "x.stone").exists()


def test_unknown_state(installed: Path) -> None:
    assert_clean_failure(installed, ["state", "activate", "42"], match="state 42 does not exist")
    assert_clean_failure(installed, ["state", "show", "42"], match="state 42 does not exist")
    assert_clean_failure(installed, ["rollback", "--to", "42"], match="state 42")
    assert_clean_failure(installed, ["rollback"], match="no older state")


def test_removing_active_state(installed: Path) -> None:
    assert_clean_failure(installed, ["state", "remove", "1"], match="active state")
    assert_clean_failure(installed, ["state", "activate", "1"], match="already active")


def test_locked_database(installed: Path, make_stone) -> None:
    extra = make_stone("extra", {"share/extra": "e" * 10_000})
    # Another process holds SQLite's write lock (in-process would not do: closing any fd of
    # the file, as snapshot() does, drops this process's POSIX locks).
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sqlite3, sys\n"
         f"c = sqlite3.connect({str(installed / '.onix/db/onix.db')!r})\n"
         "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        # nothing may leak into the store while the DB refuses writes
        assert_clean_failure(installed, ["install", extra], match="database is locked",
                             env={"ONIX_DB_TIMEOUT": "0.3"}, code=3)
    finally:
        holder.communicate("")
    assert onix("install", extra, "--root", installed).returncode == 0


def test_lock_held_no_wait(installed: Path, make_stone) -> None:
    import fcntl

    extra = make_stone("extra", {"share/extra": "e"})
    fd = os.open(installed / ".onix/lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert_clean_failure(installed, ["install", "--no-wait", extra],
                             match="another onix is working", code=3)
    finally:
        os.close(fd)


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                       capture_output=True)
    return r.returncode == 0


def test_full_disk_during_import(tmp_path: Path, make_stone) -> None:
    """A real full file system: a 4 MiB tmpfs root, a stone with 8 MiB of content."""
    root = tmp_path / "small"
    if os.geteuid() != 0 or not _mount_tmpfs(root, "4m"):
        pytest.skip("needs root to mount a small tmpfs")
    try:
        api.install(root, [make_stone("hello", {"bin/hello": ("hi", 0o755)})])
        big = make_stone("big", {f"share/b{i}": os.urandom(1 << 20) for i in range(8)})
        line = assert_clean_failure(root, ["install", big], match="no space left", code=4)
        assert ".onix/store" in line
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


def test_foreign_usr_is_not_swapped(root: Path, make_stone) -> None:
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/precious").write_text("not ours")
    s = make_stone("hello", {"bin/hello": "hi"})
    assert_clean_failure(root, ["install", s], match="not made by onix")


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


def test_failed_first_install_leaves_nothing(root: Path, tmp_path: Path, make_stone) -> None:
    a = make_stone("a", {"bin/x": "a"})
    clash = make_stone("b", {"bin/x": "b"})
    assert_clean_failure(root, ["install", a, clash], match="/usr/bin/x")
    assert list(root.iterdir()) == []


def test_inspect_checks_content(tmp_path: Path, make_stone) -> None:
    good = make_stone("big", {"share/blob": os.urandom(50_000)})
    data = bytearray(good.read_bytes())
    data[-100] ^= 0xFF
    bad = tmp_path / "flipped.stone"
    bad.write_bytes(bytes(data))
    r = onix("stone", "inspect", bad)
    assert r.returncode != 0 and "flipped.stone" in r.stderr
    assert onix("stone", "inspect", good).returncode == 0


@pytest.mark.parametrize("rec", [
    ["share/l", "symlink", 0o777, 0, 0, 0, 42],
    ["share/l", "symlink", 0o777, 0, 0, 0, ["x"]],
    ["share/d", "dir", 0o755, 0, 0, 0, "smuggled"],
])
def test_bad_symlink_or_dir_records(installed: Path, tmp_path: Path, rec) -> None:
    bad = craft(tmp_path / "odd.stone", layout=[rec], blobs=[])
    assert_clean_failure(installed, ["install", bad], match="odd.stone")


def test_corrupt_database_is_one_line(installed: Path) -> None:
    db = installed / ".onix/db/onix.db"
    for suffix in ("-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    db.write_bytes(b"this is not a database" * 100)
    for args in (["status"], ["state", "list"], ["rollback"]):
        r = onix(*args, "--root", installed)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 1 and len(lines) == 1, (args, r.stderr)
        assert "database is unreadable" in lines[0]


def test_unwritable_root_is_one_line(tmp_path: Path, make_stone) -> None:
    """A read-only file system (a real ro bind mount) instead of a permission check."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs",
                                            str(ro)], capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a read-only tmpfs")
    try:
        r = onix("install", make_stone("x", {"bin/x": "x"}), "--root", ro)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 1 and len(lines) == 1, r.stderr
        assert str(ro) in lines[0] and "Read-only file system" in lines[0]
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)
