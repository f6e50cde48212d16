"""Property: any sequence of install/remove/rollback/prune keeps verify clean and /nix untouched."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from conftest import fake_nix, snapshot, write_tree
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onix import api
from onix.core.errors import OnixError
from onix.core.paths import read_state_id
from onix.machine.stone import StoneMeta, pack

NAMES = ("alpha", "beta", "gamma")


def _stones(base: Path) -> dict[tuple[str, int], Path]:
    """Two versions of three stones; versions share some content and move files around."""
    out = {}
    for name in NAMES:
        for ver in (1, 2):
            src = base / f"{name}-{ver}"
            files = {f"bin/{name}": (f"{name} v{ver}", 0o755),
                     f"lib/lib{name}.so": f"{name} shared",  # same in both versions
                     f"share/{name}/v{ver}.txt": f"only in {ver}",
                     f"share/{name}/empty": b""}
            if ver == 2:
                files[f"lib/{name}/plugin"] = ("symlink", f"../lib{name}.so")
            write_tree(src, files)
            out[(name, ver)] = base / f"{name}-{ver}.stone"
            pack(src, out[(name, ver)], StoneMeta(name=name, version=str(ver)))
    return out


_STONE_DIR = Path(tempfile.mkdtemp(prefix="onix-prop-stones-"))
STONES = _stones(_STONE_DIR)

ops = st.lists(st.one_of(
    st.tuples(st.just("install"), st.sampled_from(NAMES), st.sampled_from((1, 2))),
    st.tuples(st.just("remove"), st.sampled_from(NAMES)),
    st.tuples(st.just("rollback")),
    st.tuples(st.just("prune"), st.integers(min_value=1, max_value=3)),
    st.tuples(st.just("pin")),
), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_random_sequences_keep_root_sound(sequence: list[tuple]) -> None:
    root = Path(tempfile.mkdtemp(prefix="onix-prop-root-"))
    try:
        fake_nix(root)
        nix_before = snapshot(root / "nix")
        for op in sequence:
            try:
                if op[0] == "install":
                    api.install(root, [STONES[(op[1], op[2])]])
                elif op[0] == "remove":
                    api.remove(root, [op[1]])
                elif op[0] == "rollback":
                    api.rollback(root)
                elif op[0] == "prune":
                    r = api.prune(root, keep=op[1])
                    assert r.nix == "untouched"
                elif op[0] == "pin" and read_state_id(root / "usr") is not None:
                    api.set_pinned(root, read_state_id(root / "usr"), True)
            except OnixError:
                pass  # refused operations (nothing to remove, no older state) are fine
            if read_state_id(root / "usr") is not None:
                report = api.verify(root)
                assert report.clean, (op, report.problems)
                assert report.unreferenced_objects == 0 or op[0] != "prune"
        assert snapshot(root / "nix") == nix_before
    finally:
        shutil.rmtree(root)


CRASH_POINTS = {
    "install": ("import", "admit", "record", "journal", "blit", "stateid", "sync", "exchange",
                "archive", "links", "activate", "done"),
    "remove": ("journal", "blit", "sync", "exchange", "archive", "links", "activate", "done"),
    "rollback": ("journal", "exchange", "archive", "links", "activate", "done"),
    "prune": ("journal", "forget", "trash", "gc", "done"),
}

crashing_ops = st.lists(st.one_of(
    st.tuples(st.just("install"), st.sampled_from(NAMES), st.sampled_from((1, 2))),
    st.tuples(st.just("remove"), st.sampled_from(NAMES)),
    st.tuples(st.just("rollback")),
    st.tuples(st.just("prune"), st.integers(min_value=1, max_value=2)),
).flatmap(lambda op: st.tuples(st.just(op), st.one_of(
    st.none(), st.sampled_from(CRASH_POINTS[op[0]])))), min_size=1, max_size=6)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(crashing_ops)
def test_random_sequences_with_crashes(sequence: list[tuple]) -> None:
    """The real CLI, killed (ONIX_FAULT → os._exit) at random steps of random operations:
    after each, status recovers to the old or the new state and verify is clean."""
    from conftest import onix, onix_json

    root = Path(tempfile.mkdtemp(prefix="onix-prop-crash-"))
    try:
        fake_nix(root)
        nix_before = snapshot(root / "nix")
        for op, fault in sequence:
            if op[0] == "install":
                args = ["install", STONES[(op[1], op[2])]]
            elif op[0] == "remove":
                args = ["remove", op[1]]
            elif op[0] == "rollback":
                args = ["rollback"]
            else:
                args = ["prune", "--keep", str(op[1])]
            before = read_state_id(root / "usr")
            ids_before = ({s["id"] for s in onix_json("state", "list", "--root", root)}
                          if (root / ".onix/db/onix.db").exists() else set())
            env = {"ONIX_FAULT": f"{op[0]}:{fault}"} if fault else None
            r = onix(*args, "--root", root, env=env)
            assert r.returncode in (0, 1, 86), (op, fault, r.stderr)
            if r.returncode == 1:
                assert len([ln for ln in r.stderr.splitlines() if ln.strip()]) == 1, r.stderr
            if not (root / ".onix/db/onix.db").exists():
                continue
            st_ = onix_json("status", "--root", root)
            live = read_state_id(root / "usr")
            assert st_["active_state"] == live
            assert not any("pending" in n for n in st_["notes"]), st_["notes"]
            ids_after = {s["id"] for s in onix_json("state", "list", "--root", root)}
            if op[0] in ("install", "remove"):
                new = ids_after - ids_before  # at most the one state this command built
                assert len(new) <= 1 and live in {before, *new}, (op, fault, before, live)
            elif op[0] == "rollback":
                older = [i for i in ids_before if before is not None and i < before]
                assert live in {before, max(older, default=before)}, (op, fault, live)
            else:
                assert live == before  # prune never moves /usr, nor removes the live state
                assert before is None or before in ids_after
            if live is not None:
                report = onix_json("verify", "--root", root)
                assert report["clean"], (op, fault, report["problems"])
        assert snapshot(root / "nix") == nix_before
    finally:
        shutil.rmtree(root)
