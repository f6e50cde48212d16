"""The content-addressed store (onix/machine/store.py): an object is named by its content's
blake3 digest, its mode and its owner; content that does not hash to the digest it
claims is never admitted; a failed batch leaves nothing behind."""

from __future__ import annotations

import os
from pathlib import Path

import blake3
import pytest

from onix import api
from onix.core.paths import RootPaths
from onix.machine.store import DigestMismatch, ObjectKey, Store


def digest(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


@pytest.fixture
def store(root: Path) -> Store:
    paths = RootPaths.of(root)
    paths.store.mkdir(parents=True)
    return Store(paths)


def test_an_object_name_is_digest_mode_and_owner() -> None:
    d = digest(b"x")
    key = ObjectKey(d, 0o555, 0, 5)
    assert key.name == f"{d}.0555.0.5"
    assert ObjectKey.parse(key.name) == key == (d, 0o555, 0, 5)
    for bad in (f"{d}.0555.0", f"{d[:-1]}.0555.0.0", f"{d}.09.0.0", f"{d}.0555.x.0",
                f"{d.upper()}.0555.0.0"):
        assert ObjectKey.parse(bad) is None, bad


def test_one_content_with_two_modes_is_two_objects_in_one_shard(store: Store) -> None:
    data = b"identical content"
    d = digest(data)
    batch = store.batch()
    batch.write(d, [data[:5], data[5:]], mode=0o555)
    keys = [ObjectKey(d, 0o555, os.geteuid(), os.getegid()),
            ObjectKey(d, 0o444, os.geteuid(), os.getegid())]
    admitted = batch.admit(keys)
    batch.close()
    assert sorted(admitted) == sorted(store.path(k) for k in keys)
    assert {p.parent.name for p in admitted} == {d[:2]}
    assert sorted(k for k, _ in store.objects()) == sorted(keys)
    for k in keys:
        st = store.path(k).stat()
        assert store.path(k).read_bytes() == data and (st.st_mode & 0o7777) == k.mode
    assert store.path(keys[0]).stat().st_ino != store.path(keys[1]).stat().st_ino
    assert store.size_bytes() == 2 * len(data)
    assert store.remove(keys[0]) == len(data) and store.remove(keys[0]) == 0
    assert not store.has(keys[0]) and store.has(keys[1])


def test_content_that_lies_about_its_digest_is_never_admitted(store: Store) -> None:
    claimed = digest(b"what the layout says")
    batch = store.batch()
    with pytest.raises(DigestMismatch) as e:
        batch.write(claimed, [b"what the stone holds"])
    assert e.value.expected == claimed and e.value.actual == digest(b"what the stone holds")
    with pytest.raises(KeyError):
        batch.admit([ObjectKey(claimed, 0o444)])
    batch.close()
    assert list(store.objects()) == []
    assert not list(store.paths.store_tmp.iterdir())


@pytest.mark.parametrize("bad", ["../../etc/passwd".ljust(64, "a"), "A" * 64, "0" * 63])
def test_a_name_that_is_no_digest_is_refused_before_any_file(store: Store, bad: str) -> None:
    batch = store.batch()
    with pytest.raises(ValueError, match="not a blake3 digest"):
        batch.write(bad, [b"x"])
    assert list(batch.tmp.iterdir()) == []
    batch.close()


def test_undo_removes_what_a_batch_admitted_and_its_new_shards(store: Store) -> None:
    data = b"undone"
    d = digest(data)
    batch = store.batch()
    batch.write(d, [data])
    [path] = batch.admit([ObjectKey(d, 0o444, os.geteuid(), os.getegid())])
    assert path.exists()
    batch.undo()
    assert not path.exists() and not path.parent.exists()
    assert list(store.dir.iterdir()) == [store.paths.store_tmp]
    assert not list(store.paths.store_tmp.iterdir())


def test_store_objects_keyed_by_mode(root: Path, make_stone) -> None:
    same = "identical content"
    api.install(root, [make_stone("hello", {"bin/x": (same, 0o755),
                                                    "share/x": (same, 0o644)})])
    keys = [k for k, _ in Store(RootPaths.of(root)).objects()]
    assert sorted(k.mode for k in keys) == [0o444, 0o555]
    assert len({k.digest for k in keys}) == 1
    assert isinstance(keys[0], ObjectKey)
