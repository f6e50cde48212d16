"""systemd-boot on the ESP, and the EFI variables it shares with the running system.

onix copies the state's `usr/lib/systemd/boot/efi/systemd-bootx64.efi` to
`$ESP/EFI/systemd/systemd-bootx64.efi` and to the removable-media fallback path
`$ESP/EFI/BOOT/BOOTX64.EFI` (what firmware boots without an NVRAM entry), only
when the bytes differ. A BOOTX64.EFI that is not systemd-boot (another OS's
loader) is left alone.

The loader's EFI variables (vendor GUID 4a67b082-…, Boot Loader Interface):
  LoaderEntrySelected  the entry id systemd-boot booted (file name at boot time)
  LoaderEntryDefault   a default set at runtime; overrides loader.conf's
  LoaderEntryOneShot   boot this entry id once (what `onix boot set-default --once` writes)
The directory can be redirected with ONIX_EFIVARS_DIR (images and tests have no
firmware); the real one is /sys/firmware/efi/efivars.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
from pathlib import Path

from onix.core import fsutil, safepath
from onix.core.errors import OnixError

LOADER_GUID = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"
SD_BOOT_IN_STATE = "lib/systemd/boot/efi/systemd-bootx64.efi"  # relative to usr/
SD_BOOT_MAGIC = b"#### LoaderInfo: systemd-boot "
TARGETS = ("EFI/systemd/systemd-bootx64.efi", "EFI/BOOT/BOOTX64.EFI")

_FS_IOC_GETFLAGS = 0x80086601
_FS_IOC_SETFLAGS = 0x40086602
_FS_IMMUTABLE_FL = 0x10
_EFI_ATTRS = 0x7  # non-volatile | boot-service access | runtime access


def _same_bytes(a: Path, b: Path) -> bool:
    try:
        if a.stat().st_size != b.stat().st_size:
            return False
        return a.read_bytes() == b.read_bytes()
    except FileNotFoundError:
        return False


def is_systemd_boot(path: Path) -> bool:
    try:
        return SD_BOOT_MAGIC in path.read_bytes()
    except OSError:
        return False


def install(*, usr: Path, esp: Path) -> list[str]:
    """Copy systemd-boot from the state onto the ESP where it differs. Returns what changed.

    The state's file is read without following symlinks (see safepath.py).
    """
    if not safepath.is_regular(usr, SD_BOOT_IN_STATE):
        return []
    data = safepath.read_regular(usr, SD_BOOT_IN_STATE)
    changed = []
    for rel in TARGETS:
        dest = esp / rel
        if dest.is_symlink():
            raise OnixError("is a symlink; onix writes systemd-boot only as a real file",
                            path=dest, hint="remove the symlink")
        if dest.is_file() and dest.read_bytes() == data:
            continue
        if rel.startswith("EFI/BOOT/") and dest.exists() and not is_systemd_boot(dest):
            continue  # someone else's fallback loader: not ours to replace
        fsutil.replace_file(dest, data)
        changed.append(rel)
    return changed


def status(*, usr: Path | None, esp: Path) -> str:
    target = esp / TARGETS[0]
    if not target.is_file():
        return "not installed" if not (esp / TARGETS[1]).is_file() else "other (EFI/BOOT only)"
    if usr is not None and (usr / SD_BOOT_IN_STATE).is_file():
        same = _same_bytes(usr / SD_BOOT_IN_STATE, target)
        return "systemd-boot (from the active state)" if same else \
            "systemd-boot (differs from the active state's; onix boot sync updates it)"
    return "systemd-boot"


# -- EFI variables ---------------------------------------------------------------


def efivars_dir() -> Path:
    return Path(os.environ.get("ONIX_EFIVARS_DIR", "/sys/firmware/efi/efivars"))


def read_var(name: str) -> str | None:
    """A loader variable as text, or None when unset or there is no EFI here."""
    try:
        raw = (efivars_dir() / f"{name}-{LOADER_GUID}").read_bytes()
    except OSError:
        return None
    return raw[4:].decode("utf-16-le", errors="replace").rstrip("\0") or None


def write_var(name: str, value: str | None) -> None:
    """Set (or with None, delete) a loader variable through efivarfs."""
    d = efivars_dir()
    if not d.is_dir():
        raise OnixError("this system has no EFI variables", path=d,
                        hint="one-shot defaults need a system booted with UEFI")
    path = d / f"{name}-{LOADER_GUID}"
    if path.exists():
        _clear_immutable(path)
        path.unlink()
    if value is None:
        return
    data = struct.pack("<I", _EFI_ATTRS) + (value + "\0").encode("utf-16-le")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)  # efivarfs wants the whole variable in one write
    finally:
        os.close(fd)


def _clear_immutable(path: Path) -> None:
    # efivarfs marks variables immutable so a stray `rm` cannot brick firmware settings.
    fd = os.open(path, os.O_RDONLY)
    try:
        buf = bytearray(struct.pack("i", 0))
        fcntl.ioctl(fd, _FS_IOC_GETFLAGS, buf)
        flags = struct.unpack("i", buf)[0]
        if flags & _FS_IMMUTABLE_FL:
            fcntl.ioctl(fd, _FS_IOC_SETFLAGS, struct.pack("i", flags & ~_FS_IMMUTABLE_FL))
    except OSError as e:
        if e.errno not in (errno.ENOTTY, errno.EOPNOTSUPP, errno.EINVAL):
            raise
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
