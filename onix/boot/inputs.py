"""A state's boot inputs, read from its tree and never through a symlink.

The kernel (`usr/lib/kernel/<kver>/vmlinuz`), the kernel command line (root=, the
snippets in usr/lib/kernel/cmdline.d and etc/kernel/cmdline.d, the words
`onix boot kargs` adds or drops in etc/kernel/cmdline.d/onix-kargs.conf, onix.fstx=), the
entry's title from os-release, and content digests for the files onix copies to the
ESP. The plane (plane.py) and the checks (checks.py) read them the same way.
"""

from __future__ import annotations

import os
import re
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from onix.core import fsutil, safepath
from onix.core.errors import BootError, OnixError
from onix.core.paths import RootPaths

KERNEL_DIR = "lib/kernel"  # relative to usr/
CMDLINE_DIRS = ("usr/lib/kernel/cmdline.d", "etc/kernel/cmdline.d")  # relative to the root
# `onix boot kargs add|remove` writes this one file (see kargs.py), read last.
KARGS_FILE = "onix-kargs.conf"
KARGS_REL = f"{CMDLINE_DIRS[1]}/{KARGS_FILE}"
ONIX = "onix"  # the source of the words onix adds itself


@dataclass(frozen=True)
class Arg:
    """One word of a kernel command line and the file it comes from, as the state sees it
    (`/usr/lib/kernel/cmdline.d/50-os.conf`), or ONIX with why onix adds it itself."""

    word: str
    source: str
    why: str = ""
    managed: bool = False  # onix-kargs.conf's: `onix boot kargs remove` takes it out again


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


def _snippet_args(root: Path, usr: Path, kver: str | None,
                  own: str | None) -> tuple[list[Arg], list[Arg]]:
    """The snippets' words with their files, and the words onix-kargs.conf drops.

    In order: the kernel's own usr/lib/kernel/<kver>/*.cmdline, then cmdline.d from /usr
    and /etc (a file in /etc overrides the one of its name in /usr), sorted by file name,
    then the words onix-kargs.conf adds. Its `-WORD` lines drop WORD from all the others.
    `own` stands in for onix-kargs.conf's text (None: read it from the root).
    """
    args: list[Arg] = []
    if kver is not None:
        with suppress(FileNotFoundError, NotADirectoryError):
            for name in sorted(p.name for p in (usr / KERNEL_DIR / kver).iterdir()):
                p = _regular(usr, f"{KERNEL_DIR}/{kver}/{name}") \
                    if name.endswith(".cmdline") else None
                if p is not None:
                    args += [Arg(w, f"/usr/{KERNEL_DIR}/{kver}/{name}") for w in cmdline_tokens(p)]
    files = {name: (f"/usr/lib/kernel/cmdline.d/{name}", path)
             for name, path in conf_files(usr, "lib/kernel/cmdline.d").items()}
    # onix-kargs.conf is not a snippet: it edits the others, and masks no /usr file.
    files.update({name: (f"/{CMDLINE_DIRS[1]}/{name}", path)
                  for name, path in conf_files(root, CMDLINE_DIRS[1]).items()
                  if name != KARGS_FILE})
    for name in sorted(files):
        source, path = files[name]
        args += [Arg(w, source) for w in cmdline_tokens(path)]
    added, dropped = parse_kargs(read_kargs(root) if own is None else own)
    gone = set(dropped)
    return ([a for a in args if a.word not in gone]
            + [Arg(w, f"/{KARGS_REL}", managed=True) for w in added],
            [a for a in args if a.word in gone])


def parse_kargs(text: str | None) -> tuple[list[str], list[str]]:
    """onix-kargs.conf as (words it adds, words it drops): `-WORD` drops WORD."""
    added: list[str] = []
    dropped: list[str] = []
    for line in (text or "").splitlines():
        for w in line.split("#", 1)[0].split():
            if w.startswith("-") and len(w) > 1:
                dropped.append(w[1:])
            elif w != "-":
                added.append(w)
    return added, dropped


def read_kargs(root: Path) -> str | None:
    """The text of <root>/etc/kernel/cmdline.d/onix-kargs.conf, None without one."""
    p = _regular(root, KARGS_REL)
    return None if p is None else fsutil.read_nofollow(p).decode(errors="replace")


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


def command_line(*, root: Path, usr: Path, fstx: str | None, kver: str | None = None,
                 own: str | None = None, need_root: bool = True) -> tuple[list[Arg], list[Arg]]:
    """An entry's words with where each comes from, and the words onix-kargs.conf drops.

    root= first, then rw, the snippets in order (see _snippet_args), onix.fstx= last
    (none when fstx is None). Without a root= anywhere: the running system's root device,
    else a BootError, or (need_root=False, for listing) no root= at all.
    """
    kept, dropped = _snippet_args(root, usr, kver, own)
    kept = [a for a in kept if not a.word.startswith("onix.fstx=")]
    roots = [a for a in kept if a.word.startswith(("root=", "onix.root="))]
    rest = [a for a in kept if not a.word.startswith(("root=", "onix.root="))]
    if not roots:
        dev = root_device() if root == Path("/") else None
        if dev is not None:
            roots = [Arg(f"root={dev}", ONIX, why="the device mounted on /")]
        elif need_root:
            raise BootError("no root= for the boot entries", path=root / CMDLINE_DIRS[1],
                            hint="write a .conf there with e.g. root=UUID=… (or LABEL=…)")
    if not any(a.word in ("ro", "rw") for a in rest):
        # the initrd exchanges /usr on the root for an older entry
        rest.insert(0, Arg("rw", ONIX, why="neither ro nor rw is given"))
    tail = [] if fstx is None else [Arg(f"onix.fstx={fstx}", ONIX,
                                        why="the state this entry boots")]
    return [*roots, *rest, *tail], dropped


def kernel_options(*, root: Path, usr: Path, fstx: str, kver: str | None = None,
                   own: str | None = None) -> str:
    """An entry's `options` line (see command_line); `own` stands in for onix-kargs.conf."""
    return " ".join(a.word for a in command_line(root=root, usr=usr, fstx=fstx, kver=kver,
                                                 own=own)[0])


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
