"""Shared test helpers: make stones from dicts, snapshot roots, run the real CLI."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import settings

from onix.machine.stone import StoneMeta, pack

# CI runs the same examples every time (a red CI must be reproducible); local runs explore.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

REPO = Path(__file__).resolve().parent.parent


def write_tree(dest: Path, files: dict[str, object]) -> None:
    """files: path under usr/ → bytes | str | ("symlink", target) | ("dir",) | (bytes, mode)."""
    usr = dest / "usr"
    usr.mkdir(parents=True, exist_ok=True)
    for rel, spec in files.items():
        p = usr / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(spec, tuple) and spec[0] == "symlink":
            os.symlink(spec[1], p)
        elif isinstance(spec, tuple) and spec[0] == "dir":
            p.mkdir(exist_ok=True)
        else:
            data, mode = (spec if isinstance(spec, tuple) else (spec, 0o644))
            p.write_bytes(data.encode() if isinstance(data, str) else data)
            os.chmod(p, mode)


@pytest.fixture
def make_stone(tmp_path: Path):
    counter = iter(range(10**6))

    def make(name: str, files: dict[str, object], *, version: str = "1.0", release: int = 1,
             depends: list[str] | None = None, provides: list[str] | None = None) -> Path:
        n = next(counter)
        src = tmp_path / f"src-{name}-{n}"
        write_tree(src, files)
        out = tmp_path / f"{name}-{version}-{release}-{n}.stone"
        pack(src, out, StoneMeta(name=name, version=version, release=release,
                                 summary=f"{name} test stone", depends=depends or [],
                                 provides=provides or []))
        return out

    return make


@pytest.fixture(scope="module")
def module_work(request: pytest.FixtureRequest,
                tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch directory shared by a module's tests, for modules that build something
    big once (an image, a stone set) from what this machine may lack: the module's
    skip_reason() names what is missing, and then every test that uses it skips."""
    reason = request.module.skip_reason()
    if reason:
        pytest.skip(reason)
    return tmp_path_factory.mktemp(request.module.__name__)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    return r


def snapshot(root: Path) -> dict[str, tuple]:
    """Everything about a tree that a byte-identical comparison should see (not times)."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in [*dirnames, *filenames, ""]:
            p = Path(dirpath) / name if name else Path(dirpath)
            rel = p.relative_to(root).as_posix()
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                what: object = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                what = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                what = None
            out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid,
                        st.st_gid, what)
    return out


def onix(*args: str, env: dict | None = None, check: bool = False,
         timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess (crashes and exit codes must be real)."""
    base = {k: v for k, v in os.environ.items() if k != "ONIX_FAULT"}
    full_env = {**base, "COLUMNS": "200", **(env or {})}
    r = subprocess.run([sys.executable, "-m", "onix", *map(str, args)], capture_output=True,
                       text=True, env=full_env, timeout=timeout, cwd=REPO)
    if check and r.returncode != 0:
        raise AssertionError(f"onix {' '.join(map(str, args))} failed ({r.returncode}):\n"
                             f"{r.stdout}\n{r.stderr}")
    return r


def onix_json(*args: str, env: dict | None = None) -> object:
    r = onix(*args, "--json", env=env, check=True)
    return json.loads(r.stdout)


def fake_nix(root: Path) -> None:
    """A small /nix tree shaped like Nix's: store paths, profiles, gcroots, db."""
    store = root / "nix" / "store"
    for h in ("aaaa-hello-2.12", "bbbb-glibc-2.38", "cccc-ripgrep-14.1"):
        (store / h / "bin").mkdir(parents=True)
        (store / h / "bin" / "x").write_text(h)
    prof = root / "nix" / "var" / "nix" / "profiles"
    prof.mkdir(parents=True)
    os.symlink("/nix/store/cccc-ripgrep-14.1", prof / "default-1-link")
    os.symlink("default-1-link", prof / "default")
    gc = root / "nix" / "var" / "nix" / "gcroots"
    gc.mkdir(parents=True)
    os.symlink("/nix/var/nix/profiles", gc / "profiles")
    db = root / "nix" / "var" / "nix" / "db"
    db.mkdir(parents=True)
    (db / "db.sqlite").write_bytes(b"SQLite format 3\0fake")
