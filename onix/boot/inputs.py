"""A state's boot inputs, read from its tree and never through a symlink.

The kernel (`usr/lib/kernel/<kver>/vmlinuz`), the kernel command line (root=, the
snippets in usr/lib/kernel/cmdline.d and etc/kernel/cmdline.d, onix.fstx=), the
entry's title from os-release, and content digests for the files onix copies to the
ESP. The plane (plane.py) and the checks (checks.py) read them the same way.
"""

from __future__ import annotations

import os
import re
from contextlib import suppress
from pathlib import Path

from onix.core import fsutil, safepath
from onix.core.errors import BootError, OnixError
from onix.core.paths import RootPaths

KERNEL_DIR = "lib/kernel"  # relative to usr/
CMDLINE_DIRS = ("usr/lib/kernel/cmdline.d", "etc/kernel/cmdline.d")  # relative to the root


def state_usr(paths: RootPaths, state_id: int, live: int | None) -> Path:
    return paths.usr if state_id == live else paths.state_tree(state_id)


def version_key(v: str) -> list[tuple[int, object]]:
    """Order kernel versions the way humans do: numbers numerically."""
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", v) if p]


def _regular(base: Path, rel: str) -> Path | None:
    """base/rel as a real file reached without a symlink (safepath), or None if absent.

    A state's tree sits inside a root that may be a scratch directory on a host: a
    stone's `vmlinuz -> /etc/shadow` must not put the host's file on the ESP.
    """
    return base / rel if safepath.is_regular(base, rel) else None


def find_kernel(usr: Path) -> str | None:
    """The kernel a state boots: the highest version under usr/lib/kernel with a vmlinuz."""
    if not safepath.is_directory(usr, KERNEL_DIR):
        return None
    names = sorted(d.name for d in (usr / KERNEL_DIR).iterdir())
    kvers = [k for k in names if _regular(usr, f"{KERNEL_DIR}/{k}/vmlinuz") is not None]
    return max(kvers, key=version_key) if kvers else None


def conf_files(base: Path, rel_dir: str) -> dict[str, Path]:
    d = base / rel_dir
    try:
        names = sorted(p.name for p in d.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return {}
    out = {}
    for name in names:
        if name.endswith(".conf"):
            p = _regular(base, f"{rel_dir}/{name}")
            if p is not None:
                out[name] = p
    return out


def _snippets(root: Path, usr: Path, kver: str | None = None) -> list[str]:
    """Kernel command-line tokens: the kernel's own usr/lib/kernel/<kver>/*.cmdline, then
    cmdline.d from /usr and /etc (a file in /etc overrides the one of its name in /usr)."""
    tokens: list[str] = []
    if kver is not None:
        with suppress(FileNotFoundError, NotADirectoryError):
            for name in sorted(p.name for p in (usr / KERNEL_DIR / kver).iterdir()):
                p = _regular(usr, f"{KERNEL_DIR}/{kver}/{name}") \
                    if name.endswith(".cmdline") else None
                if p is not None:
                    tokens.extend(cmdline_tokens(p))
    files = {**conf_files(usr, "lib/kernel/cmdline.d"),
             **conf_files(root, "etc/kernel/cmdline.d")}
    for name in sorted(files):
        tokens.extend(cmdline_tokens(files[name]))
    return tokens


def cmdline_tokens(path: Path) -> list[str]:
    out: list[str] = []
    for line in fsutil.read_nofollow(path).decode(errors="replace").splitlines():
        out.extend(line.split("#", 1)[0].split())
    return out


def root_device() -> str | None:
    """root= for the running system: the UUID of what is mounted on /, if it has one."""
    try:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            left, _, right = line.partition(" - ")
            if left.split()[4] == "/":
                source = right.split()[1]
                break
        else:
            return None
    except (OSError, IndexError):
        return None
    by_uuid = Path("/dev/disk/by-uuid")
    with suppress(OSError):
        real = os.path.realpath(source)
        for link in by_uuid.iterdir():
            if os.path.realpath(link) == real:
                return f"UUID={link.name}"
    return source if source.startswith("/dev/") else None


def kernel_options(*, root: Path, usr: Path, fstx: str, kver: str | None = None) -> str:
    """root= first, then rw, the snippets in order (see _snippets), onix.fstx= last."""
    tokens = [t for t in _snippets(root, usr, kver) if not t.startswith("onix.fstx=")]
    roots = [t for t in tokens if t.startswith(("root=", "onix.root="))]
    rest = [t for t in tokens if t not in roots]
    if not roots:
        dev = root_device() if root == Path("/") else None
        if dev is None:
            raise BootError("no root= for the boot entries", path=root / CMDLINE_DIRS[1],
                            hint="write a .conf there with e.g. root=UUID=… (or LABEL=…)")
        roots = [f"root={dev}"]
    if "ro" not in rest and "rw" not in rest:
        rest.insert(0, "rw")  # the initrd exchanges /usr on the root for an older entry
    return " ".join([*roots, *rest, f"onix.fstx={fstx}"])


def pretty_name(usr: Path, fstx: str) -> str:
    name = "ONIX"
    with suppress(OSError, OnixError):
        text = safepath.read_regular(usr, "lib/os-release").decode(errors="replace")
        for line in text.splitlines():
            if line.startswith("PRETTY_NAME="):
                name = line.partition("=")[2].strip().strip('"') or name
    return name if fstx in name else f"{name} ({fstx})"


def content_digest(path: Path) -> str:
    import blake3

    return blake3.blake3(fsutil.read_nofollow(path)).hexdigest()
