"""An installed onix works without the source checkout.

`pip wheel .` builds the wheel, a new virtualenv outside the checkout installs it (its
dependencies from the package index, as a user's pip would), and from a directory that is
not the checkout the installed `onix` runs the demo's flow on a scratch root: pack two
versions of a stone, install, upgrade, roll back, upgrade again, prune, status, verify.
Then the installed library builds an initrd for a small state (fake kernel, static
busybox and exchange helper), whose `init` must be the one shipped inside the package.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from onix.boot import initrd

REPO = Path(__file__).resolve().parent.parent
KVER = "6.1.0-onixwheel"

pytestmark = pytest.mark.slow


def _run(argv: list, *, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ONIX_FAULT")}
    r = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, f"{argv} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return r


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A virtualenv with the wheel of this checkout installed (not editable)."""
    work = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", work / "dist", REPO],
         cwd=work)
    wheel = next((work / "dist").glob("onix-*.whl"))
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=work)
    _run([venv / "bin/pip", "install", "-q", "--disable-pip-version-check", wheel], cwd=work)
    return venv


def _tree(dest: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = dest / "usr" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        p.chmod(0o755 if rel.startswith("bin/") else 0o644)
    return dest


def test_the_installed_package_is_not_the_checkout(installed: Path, tmp_path: Path) -> None:
    r = _run([installed / "bin/python", "-c", "import onix; print(onix.__file__)"], cwd=tmp_path)
    where = Path(r.stdout.strip()).resolve()
    assert installed.resolve() in where.parents and REPO not in where.parents


def test_the_demo_flow_runs_from_the_wheel(installed: Path, tmp_path: Path) -> None:
    onix = installed / "bin/onix"
    root = tmp_path / "root"
    for v in ("1.0", "2.0"):
        src = _tree(tmp_path / f"hello-{v}", {"bin/hello": f"#!/bin/sh\necho hello {v}\n"})
        _run([onix, "stone", "pack", src, "-o", tmp_path / f"hello-{v}.stone", "--name", "hello",
              "--version", v], cwd=tmp_path)
    _run([onix, "install", "--root", root, tmp_path / "hello-1.0.stone"], cwd=tmp_path)
    _run([onix, "install", "--root", root, tmp_path / "hello-2.0.stone"], cwd=tmp_path)
    assert (root / "usr/bin/hello").read_text().endswith("hello 2.0\n")
    back = _run([onix, "rollback", "--root", root], cwd=tmp_path).stdout
    assert "/nix: untouched" in back
    assert (root / "usr/bin/hello").read_text().endswith("hello 1.0\n")
    _run([onix, "install", "--root", root, tmp_path / "hello-2.0.stone"], cwd=tmp_path)
    pruned = _run([onix, "prune", "--keep", "1", "--root", root], cwd=tmp_path).stdout
    assert "removed states: 1, 2" in pruned and "/nix: untouched" in pruned
    status = json.loads(_run([onix, "status", "--root", root, "--json"], cwd=tmp_path).stdout)
    assert status["active_state"] == 3 and status["states"] == 1
    verify = json.loads(_run([onix, "verify", "--root", root, "--json"], cwd=tmp_path).stdout)
    assert verify["clean"]


def test_the_installed_library_builds_an_initrd(installed: Path, tmp_path: Path) -> None:
    tool = tmp_path / "static"
    (tmp_path / "t.c").write_text("int main(void) { return 0; }\n")
    subprocess.run(["gcc", "-static", "-Os", "-o", tool, tmp_path / "t.c"], check=True)
    usr = tmp_path / "state/usr"
    kdir = usr / "lib/kernel" / KVER
    kdir.mkdir(parents=True)
    (kdir / "vmlinuz").write_bytes(b"not really a kernel")
    (kdir / "config").write_text("CONFIG_RD_ZSTD=y\n")
    (usr / "lib/modules" / KVER).mkdir(parents=True)
    (usr / "lib/modules" / KVER / "modules.builtin").write_text("")
    (usr / "bin").mkdir()
    (usr / "lib/onix").mkdir()
    (usr / "bin/busybox").write_bytes(tool.read_bytes())
    (usr / "lib/onix/exchange").write_bytes(tool.read_bytes())
    out = tmp_path / "initrd.img"
    code = ("import sys; from pathlib import Path; from onix.boot import initrd; "
            f"img = initrd.build(usr=Path({str(usr)!r}), kver={KVER!r}); "
            f"Path({str(out)!r}).write_bytes(img.data)")
    _run([installed / "bin/python", "-c", code], cwd=tmp_path)
    entries = {e.name: e for e in initrd.read(out.read_bytes())}
    assert entries["init"].data == initrd.packaged_init().read_bytes()
    assert entries["init"].data.startswith(b"#!")
