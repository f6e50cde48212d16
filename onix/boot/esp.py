"""Where the boot files go: the ESP, an optional XBOOTLDR partition, and boot.conf.

Stdlib only (`onix status` uses it). The rules, in order:

1. `--esp` / `--xbootldr` given on the command line (or `esp =` / `xbootldr =` in
   boot.conf, paths inside the root): used as they are.
2. `--root DIR` other than `/`: `DIR/efi` if it exists, else `DIR/boot`, as plain
   directories (image mode and tests; a mounted FAT image works the same).
   An XBOOTLDR is used only when named: two plain directories cannot say which
   one the firmware reads.
3. The running system (`--root /`): the vfat mounted at /efi, /boot/efi or /boot
   (in that order) is the ESP; a vfat /boot on another mount is the XBOOTLDR.

$BOOT — where entries, kernels and initrds go — is the XBOOTLDR when there is
one, else the ESP. loader.conf and systemd-boot itself always live on the ESP.

boot.conf — `<root>/etc/onix/boot.conf`, `key = value` lines, `#` comments:

    keep-older = 4     retained states besides the active one that get entries
    tries = 3          boot-counting tries for a new entry (0: no counting)
    timeout = 3        menu timeout written to a new loader.conf
    esp = /efi         fixed ESP (inside the root)
    xbootldr = /boot   fixed XBOOTLDR (inside the root)
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from onix.core.errors import OnixError

INT_KEYS = ("keep-older", "tries", "timeout")
KNOWN = (*INT_KEYS, "esp", "xbootldr")


@dataclass(frozen=True)
class BootDirs:
    esp: Path
    xbootldr: Path | None = None

    @property
    def boot(self) -> Path:
        """$BOOT: entries, kernels and initrds."""
        return self.xbootldr or self.esp


@dataclass(frozen=True)
class BootConfig:
    keep_older: int = 4
    tries: int = 3
    timeout: int = 3
    esp: str | None = None
    xbootldr: str | None = None


def config_path(root: Path) -> Path:
    return root / "etc" / "onix" / "boot.conf"


def read_config(root: Path) -> BootConfig:
    path = config_path(root)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return BootConfig()
    except OSError as e:
        raise OnixError(f"cannot read: {e.strerror}", path=path) from e
    values: dict[str, object] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        key, sep, value = (part.strip() for part in line.partition("="))
        if not sep or key not in KNOWN:
            raise OnixError(f"line {n}: expected one of {', '.join(KNOWN)} = value",
                            path=path, hint="fix or remove the line")
        if key in INT_KEYS:
            if not value.isdigit():
                raise OnixError(f"line {n}: {key} must be a whole number", path=path)
            values[key.replace("-", "_")] = int(value)
        else:
            values[key] = value
    return BootConfig(**values)  # type: ignore[arg-type]


def _inside(root: Path, p: str, key: str) -> Path:
    rel = os.path.normpath(p.lstrip("/"))
    if rel == ".." or rel.startswith("../"):
        raise OnixError(f"{key} = {p} points outside the root", path=config_path(root),
                        hint="name a directory inside the root, like /efi or /boot")
    return root / rel


def _is_mount_point(p: Path) -> bool:
    try:
        return os.path.ismount(p)
    except OSError:
        return False


def _vfat_mounts() -> dict[str, str]:
    """mount point → device id for vfat mounts of this machine."""
    out: dict[str, str] = {}
    try:
        text = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        f = left.split()
        fstype = right.split()[0] if right else ""
        if len(f) >= 5 and fstype in ("vfat", "msdos"):
            out[f[4].replace("\\040", " ")] = f[2]
    return out


def find(root: Path, *, esp: Path | None = None, xbootldr: Path | None = None,
         config: BootConfig | None = None) -> BootDirs | None:
    """The boot directories for this root, or None when it has none (no boot plane)."""
    root = Path(root).absolute()
    cfg = config or read_config(root)
    named: list[tuple[str, Path]] = []
    if esp is None and cfg.esp:
        esp = _inside(root, cfg.esp, "esp")
        named.append(("esp (boot.conf)", esp))
    elif esp is not None:
        named.append(("--esp", esp))
    if xbootldr is None and cfg.xbootldr:
        xbootldr = _inside(root, cfg.xbootldr, "xbootldr")
        named.append(("xbootldr (boot.conf)", xbootldr))
    elif xbootldr is not None:
        named.append(("--xbootldr", xbootldr))
    for what, p in named:
        if not p.is_dir():
            raise OnixError(f"{what} is not a directory", path=p,
                            hint="mount the partition or create the directory")
        if root == Path("/") and not _is_mount_point(p):
            # An unmounted /boot is a plain directory on the root file system: entries
            # written there are never read by the firmware, which keeps booting the old one.
            raise OnixError(f"{what} is not a mount point", path=p,
                            hint="mount the partition there first")
    if esp is not None:
        return BootDirs(esp=esp, xbootldr=xbootldr)
    if root != Path("/"):
        for name in ("efi", "boot"):
            d = root / name
            if d.is_dir() and not d.is_symlink():
                return BootDirs(esp=d, xbootldr=xbootldr)
        return None
    for candidate in ("/efi", "/boot/efi", "/boot"):
        with contextlib.suppress(OSError):
            os.stat(candidate + "/.")  # lets an automount (systemd-gpt-auto) mount it
    mounts = _vfat_mounts()
    found = next((m for m in ("/efi", "/boot/efi", "/boot") if m in mounts), None)
    if found is None:
        return None
    xb = xbootldr
    if xb is None and found != "/boot" and "/boot" in mounts and \
            mounts["/boot"] != mounts[found]:
        xb = Path("/boot")
    return BootDirs(esp=Path(found), xbootldr=xb)
