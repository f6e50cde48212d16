"""Property: machine transactions and Nix operations interleaved in any order leave each
plane as its own operations say — the real nix-daemon under s6, in a scratch root.

hypothesis picks sequences of onix install / rollback / prune and Nix profile install /
remove / store gc (as a non-root user, through the daemon). After every step: onix
reports /nix untouched for its own operations, the user's profile holds exactly what
the Nix operations put there, `nix store verify --all` and `onix verify` are clean, the
daemon is healthy, and the live machine state is the one the model expects.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nixkit import NixPlane, available, base_accounts, integration_stone

from onix import api
from onix.core.paths import RootPaths, read_state_id
from onix.machine.stone import StoneMeta, pack
from onix.nix import daemon as nix_daemon
from onix.nix import seed as nix_seed

pytestmark = pytest.mark.slow

OPS = ("onix-install", "onix-rollback", "onix-prune", "nix-install", "nix-remove", "nix-gc")
PROFILE = ". /etc/profile.d/nix.sh && "


def _stone(dest: Path, version: int) -> Path:
    src = dest / f"src-{version}"
    (src / "usr/bin").mkdir(parents=True)
    (src / "usr/bin/hello").write_text(f"#!/bin/sh\necho {version}\n")
    os.chmod(src / "usr/bin/hello", 0o755)
    out = dest / f"hello-{version}.stone"
    pack(src, out, StoneMeta(name="hello", version=str(version)))
    return out


@pytest.fixture(scope="module")
def ready() -> None:
    why = available()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"the real-Nix tests cannot run: {why}")
        pytest.skip(why)


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.sampled_from(OPS), min_size=4, max_size=8))
def test_interleaved_onix_and_nix_operations(ready, tmp_path_factory, ops: list[str]) -> None:
    work = tmp_path_factory.mktemp("interleave")
    root = work / "root"
    root.mkdir()
    base_accounts(root)
    api.install(root, [integration_stone(work)])
    nix_seed.seed(RootPaths.of(root))
    version = 0
    installed = False  # the model: is ripgrep in alice's profile?
    with NixPlane(root) as plane:
        plane.start_supervision()
        plane.wait_ready(10)

        def alice(cmd: str, **kw):
            return plane.sh(PROFILE + cmd, user="alice", timeout=60, **kw)

        for op in ops:
            if op == "onix-install":
                version += 1
                r = api.install(root, [_stone(work, version)])
                assert r.nix == "untouched", r.nix
            elif op == "onix-rollback":
                live = read_state_id(root / "usr")
                if any(st["id"] < live for st in api.list_states(root)):
                    assert api.rollback(root).nix == "untouched"
            elif op == "onix-prune":
                assert api.prune(root, keep=1).nix == "untouched"
            elif op == "nix-install" and not installed:
                alice("nix profile install nixpkgs#ripgrep")
                installed = True
            elif op == "nix-remove" and installed:
                alice("nix profile remove 0")
                installed = False
            elif op == "nix-gc":
                plane.run(["nix", "store", "gc"], timeout=60)
            # the invariants, after every step
            has_rg = alice("command -v rg", check=False).returncode == 0
            assert has_rg == installed, (op, ops)
            if installed:
                assert alice("rg x").stdout.strip().endswith("x")
            r = plane.run(["nix", "store", "verify", "--all"], check=False, timeout=60)
            assert r.returncode == 0, r.stderr
            assert api.verify(root).clean
            assert nix_daemon.daemon_health(RootPaths.of(root))[0] == "healthy"
