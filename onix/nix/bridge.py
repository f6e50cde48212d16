"""The graphics bridge: /run/opengl-driver, where Nix GUI apps meet the machine's Mesa.

<root>/run/opengl-driver is a symlink to /run/onix/opengl-driver-<fstx>, a directory
of symlinks into the active state's Mesa (lib/dri, lib/gbm, share/glvnd/egl_vendor.d,
share/vulkan/icd.d, the Mesa libraries), the layout NixOS uses. The links name /usr
paths, so they follow /usr through every exchange; the per-fstx directory is rebuilt
after every transaction in case a state moves its Mesa. It never points into /nix/store
(Nix's GC would delete an unrooted target). `opengl_status` says whether it is coherent.
"""

from __future__ import annotations

import json
import os
from contextlib import suppress
from pathlib import Path

from onix.core import fsutil, safepath
from onix.core.errors import OnixError
from onix.core.paths import OPENGL_BRIDGE, OPENGL_DIRS, RootPaths

MESA_LIBDIRS = ("lib/x86_64-linux-gnu", "lib64", "lib")
MESA_LINKS = {"lib/dri": "{libdir}/dri", "lib/gbm": "{libdir}/gbm",
              "share/glvnd/egl_vendor.d": "share/glvnd/egl_vendor.d",
              "share/vulkan/icd.d": "share/vulkan/icd.d"}
MESA_REQUIRED = ("lib/dri", "share/glvnd/egl_vendor.d", "share/vulkan/icd.d")
MESA_LIBS = ("libEGL_mesa.so.0", "libGLX_mesa.so.0", "libgbm.so.1", "libglapi.so.0")




def mesa_libdir(usr: Path) -> str | None:
    for d in MESA_LIBDIRS:
        if (usr / d / "dri").is_dir():
            return d
    return None


def bridge(paths: RootPaths, *, fstx: str, usr: Path | None = None) -> dict:
    """Point /run/opengl-driver at the active state's Mesa (see the module docstring)."""
    root = paths.root
    usr = usr or paths.usr
    safepath.check_dirs(root, OPENGL_DIRS)
    libdir = mesa_libdir(usr)
    if libdir is None:
        with suppress(FileNotFoundError):
            if (root / OPENGL_BRIDGE).is_symlink():
                (root / OPENGL_BRIDGE).unlink()
            for old in (root / OPENGL_DIRS).iterdir():
                if old.name.startswith(("opengl-driver-", ".opengl-driver-")):
                    fsutil.remove_tree(old)
        return {"bridge": None, "reason": "the active state has no Mesa (no lib/*/dri)"}
    target = root / OPENGL_DIRS / f"opengl-driver-{fstx}"
    tmp = target.with_name(f".{target.name}.new")
    if tmp.exists() or tmp.is_symlink():
        fsutil.remove_tree(tmp)
    for link, rel in MESA_LINKS.items():
        src = rel.format(libdir=libdir)
        if (usr / src).exists():
            fsutil.mkdirs((tmp / link).parent)
            os.symlink(f"/usr/{src}", tmp / link)
    for lib in MESA_LIBS:
        if (usr / libdir / lib).exists():
            fsutil.mkdirs(tmp / "lib")
            os.symlink(f"/usr/{libdir}/{lib}", tmp / "lib" / lib)
    if target.exists() or target.is_symlink():
        fsutil.remove_tree(target)
    os.rename(tmp, target)
    fsutil.atomic_symlink(f"/{OPENGL_DIRS}/{target.name}", root / OPENGL_BRIDGE)
    for old in (root / OPENGL_DIRS).iterdir():
        if old.name.startswith("opengl-driver-") and old.name != target.name:
            fsutil.remove_tree(old)
    return {"bridge": f"/{OPENGL_DIRS}/{target.name}", "libdir": libdir}


def _inside(root: Path, path: str, base: Path) -> Path:
    """Resolve a path as the root's own system would: absolute links start at the root."""
    p = Path(path)
    cur = root if p.is_absolute() else base
    for _ in range(40):
        parts = p.parts[1:] if p.is_absolute() else p.parts
        out = cur
        for i, part in enumerate(parts):
            if part == "..":
                out = out.parent if out != root else root
                continue
            nxt = out / part
            if nxt.is_symlink():
                target = os.readlink(nxt)
                rest = Path(*parts[i + 1:]) if i + 1 < len(parts) else Path()
                p = Path(target) / rest
                cur = root if Path(target).is_absolute() else out
                break
            out = nxt
        else:
            return out
    raise OnixError("too many levels of symlinks", path=root / path)


def opengl_status(paths: RootPaths, *, fstx: str | None, usr: Path | None = None) -> str:
    """`coherent`, or what is stale or missing (one line)."""
    root = paths.root
    usr = usr or paths.usr
    if mesa_libdir(usr) is None:
        return "no Mesa in the active state"
    link = root / OPENGL_BRIDGE
    if not link.is_symlink() and not link.exists():
        return "missing: /run/opengl-driver (run onix nix seed)"
    try:
        base = _inside(root, f"/{OPENGL_BRIDGE}", root)
    except OnixError:
        return "stale: /run/opengl-driver loops"
    if fstx is not None and link.is_symlink() and \
            not os.readlink(link).endswith(f"opengl-driver-{fstx}"):
        return f"stale: /run/opengl-driver points at {os.readlink(link)}, not state {fstx}"
    problems = []
    for rel in MESA_REQUIRED:
        p = base / rel
        try:
            real = _inside(root, str(p.relative_to(root)), root) if p.is_symlink() else p
        except OnixError:
            real = p
        if not real.is_dir():
            problems.append(f"{rel} is missing")
            continue
        if not str(real).startswith(str(usr)):
            problems.append(f"{rel} is not in the active /usr")
        if rel == "lib/dri" and not any(real.glob("*.so")):
            problems.append("lib/dri has no drivers")
        for icd in sorted(real.glob("*.json")):
            lib = _icd_library(icd)
            if lib and not _library_exists(root, usr, lib):
                problems.append(f"{rel}/{icd.name} names {lib}, which does not exist")
    return "coherent" if not problems else "stale: " + "; ".join(problems)


def _icd_library(path: Path) -> str | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    for key in ("ICD", "ICD_FILE"):
        if isinstance(data.get(key), dict):
            return data[key].get("library_path")
    return None


def _library_exists(root: Path, usr: Path, lib: str) -> bool:
    if lib.startswith("/"):
        try:
            return _inside(root, lib, root).exists()
        except OnixError:
            return False
    return any((usr / d / lib).exists() for d in MESA_LIBDIRS)


