"""Crash matrix: kill onix at every named step, then status and verify must see old-or-new.

The kill is ONIX_FAULT=<kind>:<step>, which makes the engine call os._exit()
at that point (see onix/faults.py): no cleanup handlers run, as in a crash.
A real power cut cannot be injected on demand; that is what issue 6's VM
tests are for.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import fake_nix, onix, onix_json

from onix import api
from onix.core.faults import CRASH_EXIT
from onix.core.paths import read_state_id
from onix.machine.ownership import nix_fingerprint
from onix.machine.prune import PRUNE_STEPS
from onix.machine.transaction import ACTIVATE_STEPS, BUILD_STEPS

IMPORT_POINTS = ("admit", "record")  # inside the import step


def v(tag: str) -> dict:
    return {"bin/hello": (f"hello {tag}", 0o755), "lib/libhello.so": f"lib {tag}" * 300,
            "share/doc/hello": f"doc {tag}", "lib/empty": b"", "bin/hi": ("symlink", "hello")}


def setup_root(root: Path, make_stone) -> dict:
    fake_nix(root)
    stones = {
        "v1": make_stone("hello", v("1"), version="1"),
        "v2": make_stone("hello", v("2"), version="2"),
        "extra": make_stone("extra", {"share/extra/data": "extra" * 100}),
        "v3": make_stone("hello", v("3"), version="3"),
    }
    api.install(root, [stones["v1"]])
    api.install(root, [stones["v2"], stones["extra"]])
    api.install(root, [stones["v1"]])  # state 3: hello 1 + extra
    return stones


def check_consistent(root: Path, allowed: set[int]) -> int:
    """status recovers; verify is clean; trees on disk match the state log."""
    st = onix_json("status", "--root", root)
    assert not any("pending" in n for n in st["notes"]), st["notes"]
    live = read_state_id(root / "usr")
    assert live in allowed, f"live state {live}, expected one of {allowed}"
    assert st["active_state"] == live
    rep = onix_json("verify", "--root", root)
    assert rep["clean"], rep["problems"]
    listed = onix_json("state", "list", "--root", root)
    ids = {s["id"] for s in listed}
    assert [s["id"] for s in listed if s["active"]] == [live]
    for sid in ids - {live}:
        assert read_state_id(root / ".onix/states" / str(sid) / "usr") == sid
    on_disk = {int(p.name) for p in (root / ".onix/states").iterdir()}
    assert on_disk == ids - {live}, (on_disk, ids)
    assert not (root / ".onix/staging/usr").exists()
    assert not any((root / ".onix/store/.tmp").iterdir())
    assert not list((root / ".onix/cache/stones").glob(".*"))
    return live


def crash(root: Path, args: list, fault: str) -> None:
    r = onix(*args, "--root", root, env={"ONIX_FAULT": fault})
    assert r.returncode == CRASH_EXIT, (fault, r.returncode, r.stdout, r.stderr)


BUILD_POINTS = [*BUILD_STEPS[:1], *IMPORT_POINTS, *BUILD_STEPS[1:]]


@pytest.mark.parametrize("step", BUILD_POINTS)
def test_crash_install(root: Path, make_stone, step: str) -> None:
    stones = setup_root(root, make_stone)
    nix = nix_fingerprint(root)
    crash(root, ["install", stones["v3"]], f"install:{step}")
    committed = BUILD_POINTS.index(step) > BUILD_POINTS.index("exchange")
    live = check_consistent(root, {4} if committed else {3})
    if live == 4:
        assert (root / "usr/bin/hello").read_text() == "hello 3"
    else:
        assert (root / "usr/bin/hello").read_text() == "hello 1"
    assert nix_fingerprint(root) == nix
    # the root keeps working: the same install now completes (or is already done)
    onix("install", stones["v3"], "--root", root, check=True)
    assert (root / "usr/bin/hello").read_text() == "hello 3"
    check_consistent(root, {4, 5})


@pytest.mark.parametrize("step", BUILD_STEPS)
def test_crash_remove(root: Path, make_stone, step: str) -> None:
    setup_root(root, make_stone)  # state 3: hello 1 + extra
    crash(root, ["remove", "extra"], f"remove:{step}")
    committed = BUILD_STEPS.index(step) > BUILD_STEPS.index("exchange")
    live = check_consistent(root, {4} if committed else {3})
    assert (root / "usr/share/extra").exists() == (live == 3)


@pytest.mark.parametrize("kind", ["activate", "rollback"])
@pytest.mark.parametrize("step", ACTIVATE_STEPS)
def test_crash_activate(root: Path, make_stone, kind: str, step: str) -> None:
    setup_root(root, make_stone)
    nix = nix_fingerprint(root)
    args = ["state", "activate", "2"] if kind == "activate" else ["rollback"]
    crash(root, args, f"{kind}:{step}")
    committed = ACTIVATE_STEPS.index(step) > ACTIVATE_STEPS.index("exchange")
    live = check_consistent(root, {2} if committed else {3})
    assert (root / "usr/bin/hello").read_text() == ("hello 2" if live == 2 else "hello 1")
    assert nix_fingerprint(root) == nix


@pytest.mark.parametrize("step", PRUNE_STEPS)
def test_crash_prune(root: Path, make_stone, step: str) -> None:
    setup_root(root, make_stone)
    nix = nix_fingerprint(root)
    crash(root, ["prune", "--keep", "1"], f"prune:{step}")
    onix("status", "--root", root, check=True)
    live = check_consistent(root, {3})
    assert live == 3
    listed = [s["id"] for s in onix_json("state", "list", "--root", root)]
    # a prune journalled before the crash is finished; one that never journalled left all
    assert listed == ([3, 2, 1] if step == "journal" else [3])
    assert nix_fingerprint(root) == nix
    # nothing the remaining states need was collected
    out = json.loads(onix("verify", "--root", root, "--json").stdout)
    assert out["clean"] and out["unreferenced_objects"] == (0 if step != "journal" else
                                                             out["unreferenced_objects"])


def test_boot_into_a_doomed_state_between_prune_crash_and_recovery(root: Path,
                                                                    make_stone) -> None:
    """A prune journalled to remove state 1 crashes; the machine then boots state 1 (the
    initrd exchanges it into /usr). Recovery must keep the live state, not finish blindly."""
    from onix.core import fsutil

    setup_root(root, make_stone)
    crash(root, ["prune", "--keep", "1"], "prune:forget")  # journalled: remove 1 and 2
    fsutil.exchange(root / ".onix/states/1/usr", root / "usr")  # the "initrd"
    live = check_consistent(root, {1})
    assert live == 1
    listed = [s["id"] for s in onix_json("state", "list", "--root", root)]
    assert 1 in listed and 2 not in listed
    assert (root / "usr/bin/hello").read_text() == "hello 1"


SYNC_POINTS = ["plan", "fetch", *BUILD_POINTS]
# The steps before the exchange are shared with a live sync (above); these are its own.
STAGE_POINTS = ["sync", "stage", "activate", "done"]


def sync_root(root: Path, make_stone, tmp_path: Path) -> Path:
    """A root at state 1 (hello 1 from a signed local repository) whose repository now
    offers hello 2."""
    fake_nix(root)
    repo, key = tmp_path / "repo", tmp_path / "key"
    repo.mkdir()
    v1 = make_stone("hello", v("1"), version="1")
    (repo / v1.name).write_bytes(v1.read_bytes())
    api.generate_key(out=key, comment="crash tests")
    api.write_index(directory=repo, key=Path(f"{key}.key"), name="local")
    api.repo_add(root, name="local", uri=str(repo),
                 public_key=Path(f"{key}.pub").read_text().strip())
    api.install(root, ["hello"])
    (repo / v1.name).unlink()
    v2 = make_stone("hello", v("2"), version="2")
    (repo / v2.name).write_bytes(v2.read_bytes())
    api.write_index(directory=repo, key=Path(f"{key}.key"), name="local")
    return repo


@pytest.mark.parametrize("step", SYNC_POINTS)
def test_crash_sync(root: Path, make_stone, tmp_path: Path, step: str) -> None:
    sync_root(root, make_stone, tmp_path)
    nix = nix_fingerprint(root)
    # the import's points are shared by every kind that imports (importer.py)
    crash(root, ["sync", "--yes"], f"{'*' if step in IMPORT_POINTS else 'sync'}:{step}")
    committed = step in BUILD_POINTS and \
        BUILD_POINTS.index(step) > BUILD_POINTS.index("exchange")
    live = check_consistent(root, {2} if committed else {1})
    assert (root / "usr/bin/hello").read_text() == ("hello 2" if live == 2 else "hello 1")
    assert nix_fingerprint(root) == nix
    onix("sync", "--yes", "--root", root, check=True)  # the next run gets there
    assert (root / "usr/bin/hello").read_text() == "hello 2"
    check_consistent(root, {2, 3})


@pytest.mark.parametrize("step", STAGE_POINTS)
def test_crash_sync_boot(root: Path, make_stone, tmp_path: Path, step: str) -> None:
    sync_root(root, make_stone, tmp_path)
    crash(root, ["sync", "--yes", "--boot"],
          f"{'*' if step in IMPORT_POINTS else 'sync'}:{step}")
    check_consistent(root, {1})  # /usr is never touched by a staged sync
    assert (root / "usr/bin/hello").read_text() == "hello 1"
    staged = onix_json("status", "--root", root)["staged"]
    assert (staged is not None) == (step == "done"), staged
    if staged:
        assert read_state_id(root / f".onix/states/{staged['state']}/usr") == staged["state"]
