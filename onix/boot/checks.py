"""Checks before anything is written: would the planned state boot?

`preflight` (every mutating command: boot.conf and the boot directories are sane),
`check_layout` (an install or remove, on the merged layout before import: a kernel,
root=, busybox and the exchange helper where a bootable state needs them) and
`check_state` (the state's tree before the exchange; it also builds the initrd into
the cache, so the sync after the exchange is quick). Each refusal is one BootError
naming the file, with the root exactly as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from onix.boot import esp
from onix.boot.inputs import (
    CMDLINE_DIRS,
    KERNEL_DIR,
    cmdline_tokens,
    conf_files,
    find_kernel,
    kernel_options,
    root_device,
    version_key,
)
from onix.core.errors import BootError
from onix.core.paths import RootPaths
from onix.machine.session import Session

if TYPE_CHECKING:
    from onix.machine.layout import Entry

# Directories onix writes on the ESP and $BOOT; any of them being a symlink is refused.
BOOT_DIRS = ("loader", "loader/entries", "onix")
ESP_DIRS = ("loader", "EFI", "EFI/systemd", "EFI/BOOT")


def check_dirs(dirs: esp.BootDirs) -> None:
    """Refuse boot directories that are symlinks: cleanup would delete through them."""
    for base, rels in ((dirs.boot, BOOT_DIRS), (dirs.esp, ESP_DIRS)):
        for rel in ("", *rels):
            p = base / rel if rel else base
            if p.is_symlink():
                raise BootError("is a symlink; onix writes boot files only into real "
                                "directories", path=p, hint="replace it with a directory")


def dirs_for(paths: RootPaths, *, esp_dir: Path | None = None,
             xbootldr: Path | None = None) -> tuple[esp.BootDirs | None, esp.BootConfig]:
    cfg = esp.read_config(paths.root)
    dirs = esp.find(paths.root, esp=esp_dir, xbootldr=xbootldr, config=cfg)
    if dirs is not None:
        check_dirs(dirs)
    return dirs, cfg


def preflight(s: Session) -> None:
    """Before a command changes anything: boot.conf and the boot directories are sane."""
    dirs_for(s.paths)


def check_layout(s: Session, entries: list[Entry], *,
                 read: Callable[[Entry], bytes]) -> None:
    """Before anything is written: would the planned state boot?

    Works from the planned layout; `read(entry) -> bytes` fetches a file's content (from
    the store, or from a stone not imported yet), so bad boot input is refused with the
    root byte-identical. check_state() repeats the full check on the built tree.
    """
    from onix.boot import initrd
    from onix.machine.layout import DIR, FILE, SYMLINK

    dirs, _ = dirs_for(s.paths)
    if dirs is None:
        return
    by_path = {e.path: e for e in entries}

    def symlink_on_the_way(rel: str) -> str | None:
        parts = rel.split("/")
        for i in range(1, len(parts) + 1):
            e = by_path.get("/".join(parts[:i]))
            if e is not None and e.kind == SYMLINK:
                return e.path
        return None

    def file_entry(rel: str):
        bad = symlink_on_the_way(rel)
        if bad is not None:
            raise BootError("is a symlink; boot inputs must be real files inside the state",
                            path=f"usr/{bad}", hint="ship the file itself in the stone")
        e = by_path.get(rel)
        return e if e is not None and e.kind == FILE else None

    def content(rel: str) -> bytes | None:
        e = file_entry(rel)
        if e is None:
            return None
        return read(e) if e.size else b""

    kvers = sorted({e.path.split("/")[2] for e in entries
                    if e.path.startswith(f"{KERNEL_DIR}/") and e.path.count("/") == 3
                    and e.path.endswith("/vmlinuz")}, key=version_key)
    kvers = [k for k in kvers if file_entry(f"{KERNEL_DIR}/{k}/vmlinuz") is not None]
    if not kvers:
        if s.live_state() is not None and find_kernel(s.paths.usr) is not None:
            raise BootError("the new state would have no kernel, so this machine could not "
                            "boot it", path=s.paths.usr / KERNEL_DIR,
                            hint="keep a kernel stone installed (or replace it in the same "
                            "command)")
        return
    kver = kvers[-1]
    def words(data: bytes | None) -> list[str]:
        return [w for line in (data or b"").decode(errors="replace").splitlines()
                for w in line.split("#", 1)[0].split()]

    # The same sources and precedence as _snippets(): the kernel's *.cmdline, then
    # cmdline.d by file name, a file in /etc replacing the one of its name in /usr.
    tokens: list[str] = []
    for rel in sorted(e.path for e in entries if e.kind != DIR and
                      e.path.startswith(f"{KERNEL_DIR}/{kver}/") and
                      e.path.endswith(".cmdline")):
        tokens += words(content(rel))
    by_name: dict[str, list[str]] = {
        e.path.rsplit("/", 1)[1]: words(content(e.path)) for e in entries
        if e.kind != DIR and e.path.startswith("lib/kernel/cmdline.d/")
        and e.path.endswith(".conf") and e.path.count("/") == 3}
    for name, path in conf_files(s.paths.root, "etc/kernel/cmdline.d").items():
        by_name[name] = cmdline_tokens(path)
    for name in sorted(by_name):
        tokens += by_name[name]
    if not any(t.startswith(("root=", "onix.root=")) for t in tokens) and \
            not (s.paths.root == Path("/") and root_device()):
        raise BootError("no root= for the boot entries", path=s.paths.root / CMDLINE_DIRS[1],
                        hint="write a .conf there with e.g. root=UUID=… (or LABEL=…)")
    for rel, what in ((initrd.BUSYBOX, "a static busybox"),
                      (initrd.EXCHANGE, "the static onix exchange helper")):
        data = content(rel)
        if data is None:
            raise BootError(f"the initrd needs {what}, and the new state has none",
                            path=f"usr/{rel}", hint=f"install a stone that ships usr/{rel}")
        initrd.check_static(Path(f"usr/{rel}"), rel=rel, what=what, data=data)


def check_state(s: Session, *, usr: Path, fstx: str) -> None:
    """Before a state becomes live: can it boot? Bad boot input is refused while the root
    is still as it was (prepare → verify → execute), not found after the exchange.

    Builds its initrd into the cache, so the sync after the exchange is quick.
    """
    from onix.boot import initrd

    dirs, _ = dirs_for(s.paths)
    if dirs is None:
        return
    kver = find_kernel(usr)
    if kver is None:
        live = s.live_state()
        if live is not None and find_kernel(s.paths.usr) is not None:
            raise BootError("the new state would have no kernel, so this machine could not "
                            "boot it", path=usr / KERNEL_DIR,
                            hint="keep a kernel stone installed (or replace it in the same "
                            "command)")
        return
    kernel_options(root=s.paths.root, usr=usr, fstx=fstx, kver=kver)
    built = initrd.build(usr=usr, kver=kver, cache_dir=s.paths.initrd_cache)
    if not built.cached:
        s.progress.note(f"built the initrd for kernel {kver} "
                        f"({len(built.data) >> 10} KiB, {built.compression})")
