"""Mesa through the graphics bridge, across a rollback (validation scenario 4, without a VM).

Two stone sets, each a local signed repository: recipes/mesa.yaml (Mesa 22.3.6,
bookworm) and recipes/mesa-25.yaml (Mesa 25.0.7, bookworm-backports), each with its
Debian library closure (glibc, libLLVM-15, libdrm, …). Into one scratch root, by name,
as a user would (api.install with names: the resolver picks the versions):

  state 1: with the bookworm repository configured, `mesa`: Mesa 22.3.6 and bookworm's
           libdrm2; `onix nix seed --root R` makes /run/opengl-driver
  state 2: the backports repository added too, `mesa=25.0.7` alone: its constraint
           (`libdrm2 >= …`, from Debian's Depends through closure: debian) moves the
           installed libdrm2 (and the other libdrm libraries) to the backports versions;
           without versioned dependencies Mesa 25 kept bookworm's libdrm2
  rollback to state 1

A Nix-style "GUI app" (onix/validate/fixtures/gui-app: egl-frame, with glvnd's dispatcher
in its own store path, the driver only from /run/opengl-driver) runs in `chroot R` after
each step and must report the Mesa of the live state; `onix status --root R` must say
`opengl: coherent` each time. llvmpipe only (LIBGL_ALWAYS_SOFTWARE=1): no GPU needed.

The stones come from stones/ (or $ONIX_MESA_STONES) when ./scripts/stones built them,
else they are built here into a temporary directory (downloads shared through the usual
build cache; ~3 minutes for both).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from importlib.resources import as_file
from pathlib import Path

import pytest
from conftest import onix, snapshot

from onix import api
from onix.core import tools
from onix.core.errors import ConflictError
from onix.core.paths import RootPaths
from onix.repo import config as repo_config
from onix.repo import index as repo_index
from onix.repo import keys
from onix.validate.compose import GUI_APP

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SETS = {"22.3.6": "mesa.yaml", "25.0.7": "mesa-25.yaml"}
LIBDIR = "usr/lib/x86_64-linux-gnu"
STORE_NAME = "0c6kzph7l0dcbyaxyx8n2qcpmh4a1ify-egl-frame-1.0"  # a Nix-shaped store path


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "chroot into the scratch root needs root"
    for tool in ("gcc", "chroot"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (Debian package {tools.package_of(tool)})"
    return None


def _manifests(out: Path) -> dict[str, Path]:
    return {v: out / f"mesa-{v}-1.manifest.json" for v in SETS}


@pytest.fixture(scope="module")
def mesa_repo(module_work: Path) -> tuple[dict[str, Path], Path,
                                         dict[str, list[tuple[str, str]]]]:
    """({mesa version: repository dir}, public key, {mesa version: [(stone name,
    version), …]})."""
    out = Path(os.environ.get("ONIX_MESA_STONES", REPO / "stones"))
    if not all(m.is_file() for m in _manifests(out).values()):
        import urllib.request

        from onix.build import sources
        from onix.build.builder import build

        mirror, suite = sources.machine_mirror()
        try:
            urllib.request.urlopen(f"{mirror}/dists/{suite}/Release", timeout=10).close()
        except OSError as e:
            pytest.skip(f"no built Mesa stones in stones/ and the Debian mirror is not "
                        f"reachable ({e})")
        out = module_work / "out"
        for v, recipe in SETS.items():
            t = time.monotonic()
            build(REPO / "recipes" / recipe, out=out)
            print(f"\nbuilt {recipe} (Mesa {v}) in {time.monotonic() - t:.0f} s")
    key, pub = keys.generate(out=module_work / "key", comment="mesa test repository")
    repodirs: dict[str, Path] = {}
    sets: dict[str, list[tuple[str, str]]] = {}
    for v, manifest in _manifests(out).items():
        repodir = repodirs[v] = module_work / f"repo-{v}"
        repodir.mkdir()
        m = json.loads(manifest.read_text())
        sets[v] = []
        for s in m["stones"]:
            dest = repodir / s["file"]
            if not dest.exists():
                try:
                    os.link(out / s["file"], dest)
                except OSError:
                    shutil.copy2(out / s["file"], dest)
            version = s["file"][len(s["name"]) + 1:].rsplit("-", 2)[0]
            sets[v].append((s["name"], version))
        repo_index.write_index(directory=repodir, key=key, name=f"mesa-{v}")
    return repodirs, pub, sets


def _installed(root: Path) -> dict[str, str]:
    """name → version of the live state's stones."""
    from onix.repo.install import live_selection

    rows, _explicit = live_selection(RootPaths.of(root))
    return {n: r["version"] for n, r in rows.items()}


def _add_app(root: Path) -> Path:
    """The app as a store path in the root's /nix/store, glvnd from the live state."""
    dest = root / "nix" / "store" / STORE_NAME
    with as_file(GUI_APP) as app:
        subprocess.run([app / "build.sh", dest, root / LIBDIR], check=True)
    return Path("/nix/store") / STORE_NAME / "bin" / "egl-frame"


def _run_app(root: Path, app: Path) -> dict[str, str]:
    env = {"PATH": "/usr/bin", "LIBGL_ALWAYS_SOFTWARE": "1", "HOME": "/"}
    r = subprocess.run([shutil.which("chroot"), root, app], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, f"egl-frame failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)


def _opengl(root: Path) -> str:
    r = onix("status", "--root", root, check=True)
    lines = [ln for ln in r.stdout.splitlines() if ln.strip().startswith("opengl:")]
    assert lines, r.stdout
    return lines[0].split(":", 1)[1].strip()


def test_the_app_follows_mesa_across_install_and_rollback(mesa_repo, tmp_path):
    repodirs, pub, sets = mesa_repo
    root = tmp_path / "root"
    root.mkdir()
    api.repo_add(root, name="bookworm", uri=str(repodirs["22.3.6"]), public_key=str(pub))

    libdrm = {v: dict(stones)["libdrm2"] for v, stones in sets.items()}
    assert libdrm["22.3.6"] != libdrm["25.0.7"], libdrm  # bookworm's, backports'
    old = api.install(root, ["mesa"])
    assert _installed(root)["mesa"] == "22.3.6"
    assert _installed(root)["libdrm2"] == libdrm["22.3.6"]
    onix("nix", "seed", "--root", root, check=True)
    assert os.readlink(root / "run" / "opengl-driver").startswith("/run/onix/opengl-driver-")
    app = _add_app(root)
    t = time.monotonic()
    first = _run_app(root, app)
    print(f"\nMesa 22.3.6: {first} ({time.monotonic() - t:.2f} s)")
    assert "Mesa 22.3.6" in first["version"], first
    assert first["vendor"].startswith("Mesa") and "llvmpipe" in first["renderer"]
    assert first["driver"] == "/run/opengl-driver/lib/libEGL_mesa.so.0"
    assert first["egl"].startswith(f"/nix/store/{STORE_NAME}/")  # its own glvnd
    assert first["probe"] == "ok"
    assert _opengl(root) == "coherent"

    # Mesa 25 alone, without the backports libraries: one line, before anything is fetched
    only = tmp_path / "mesa-25-only"
    only.mkdir()
    os.link(repodirs["25.0.7"] / "mesa-25.0.7-1-x86_64.stone", only / "mesa.stone")
    repo_index.write_index(directory=only, key=pub.with_suffix(".key"), name="only")
    api.repo_add(root, name="only", uri=str(only), public_key=str(pub))
    def tree() -> dict:  # a read leaves SQLite's -shm and an empty -wal as it likes
        return {k: v for k, v in snapshot(root).items() if not k.endswith(("-shm", "-wal"))}

    before = tree()
    with pytest.raises(ConflictError) as e:
        api.install(root, ["mesa=25.0.7"])
    assert re.fullmatch(r"mesa 25\.0\.7 needs (libdrm[-a-z0-9]*) >= [0-9.]+; the "
                        r"repositories offer [^;]+; \1 \S+ is installed", e.value.message), \
        e.value.line()
    assert tree() == before
    api.repo_remove(root, name="only")

    api.repo_add(root, name="backports", uri=str(repodirs["25.0.7"]), public_key=str(pub))
    mesa25 = next(a for a in repo_config.available(RootPaths.of(root))
                  if a.name == "mesa" and a.version == "25.0.7")
    assert any(d.startswith("libdrm2 >= ") for d in mesa25.depends), mesa25.depends
    new = api.install(root, ["mesa=25.0.7"])  # by name: the constraint brings libdrm2
    assert new.to_state != old.to_state
    now = _installed(root)
    assert now["mesa"] == "25.0.7" and now["libdrm2"] == libdrm["25.0.7"], now
    second = _run_app(root, app)
    print(f"Mesa 25.0.7: {second}")
    assert "Mesa 25.0.7" in second["version"], second
    assert second["probe"] == "ok"
    assert _opengl(root) == "coherent"

    back = api.rollback(root)
    assert back.to_state == old.to_state
    third = _run_app(root, app)
    assert "Mesa 22.3.6" in third["version"], third
    assert third["pixels"] == first["pixels"]  # the same state draws the same frame
    assert _opengl(root) == "coherent"
    # one scene, two Mesas: llvmpipe rasterises these pixel-aligned shapes the same way
    assert second["pixels"] == first["pixels"]
