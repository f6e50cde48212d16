"""Fetching a stone from a repository checks it against its signed index entry: a stone
whose name or version differs from the entry is refused, also on a download-cache hit.
(Fetching over HTTP, checksums and the download cache: repo/test_repo.py.)"""

from __future__ import annotations

import pytest
from conftest import index_entry, onix, snapshot

from onix.core.paths import RootPaths
from onix.machine.stone import Stone
from onix.repo import config as repo_config
from onix.repo import fetch as repo_fetch
from onix.repo import index as repo_index
from onix.repo import versions as repo_versions


def test_a_stone_whose_metadata_differs_from_its_index_entry_is_refused(root, hostile, signer):
    # The index says `app`, the file it points at is `evil`: installing `app` must not
    # install (and record as explicit) a stone of another name.
    d, edit = hostile
    edit(lambda i: index_entry(i, "evil").update(name="app"))
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
    edit(lambda i: index_entry(i, "evil").update(version="9.9"))
    onix("repo", "add", "test", d, "--key", signer[1], "--root", root, check=True)
    r = onix("install", "evil", "--root", root)
    assert r.returncode != 0 and "9.9" in r.stderr and "1.0" in r.stderr
    assert not (root / "usr/bin/evil").exists()


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
