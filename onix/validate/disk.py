"""The GPT disk of an image root, made without mounting anything.

make_disk writes an ESP (FAT32 labelled ONIXESP, made with mformat and filled with
mcopy from the root's boot/) and the root (ext4 labelled onixroot, made with mkfs.ext4
-d from the root directory), each made as a file of its own and written into the disk
file at its offset, data extents only (like dd conv=notrunc,sparse, without reading the
holes); the partition table is written by sfdisk on the disk file. The GUIDs are
derived from a seed (build_image gives its input hash), so one input gives one disk.

    make_disk(root, out, *, size, esp_size, seed) -> (esp, root)
    partitions(disk) -> list[Partition]     the GPT (sfdisk --json)
    partition_of(disk, type) -> Partition   the first partition of that type

Debian packages: mtools, e2fsprogs (mkfs.ext4), fdisk (sfdisk).
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from onix.core import proc
from onix.core.errors import OnixError

ROOT_LABEL = "onixroot"
ESP_LABEL = "ONIXESP"
SECTOR = 512
ALIGN = 1 << 20  # partitions start on MiB boundaries
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
ROOT_TYPE = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"  # Linux root (x86-64), UAPI DPS


@dataclass
class Partition:
    number: int
    start: int  # bytes
    size: int  # bytes
    type: str
    uuid: str
    name: str


def parse_size(size: str | int) -> int:
    """Bytes of a size given as bytes or as 2G, 512M, 64K (a trailing B or iB is fine)."""
    if isinstance(size, int):
        return size
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    s = size.strip().upper().removesuffix("B").removesuffix("I")
    try:
        return int(s[:-1]) * units[s[-1]] if s[-1] in units else int(s)
    except (ValueError, IndexError):
        raise OnixError(f"size {size!r} is not a size",
                        hint="write e.g. 2G, 512M or bytes") from None


def _guid(seed: str, what: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"onix-image:{seed}:{what}")).upper()


def mtools_env() -> dict[str, str]:
    """mtools on an image file: no geometry check (it is not a floppy), long names."""
    return {**os.environ, "MTOOLS_SKIP_CHECK": "1", "MTOOLS_NO_VFAT": "0"}


def make_esp(src: Path, img: Path, *, size: int) -> Path:
    """A FAT32 file system holding src's files (mformat + mcopy: nothing mounted)."""
    mformat = proc.which("mformat")
    mcopy = proc.which("mcopy")
    img.unlink(missing_ok=True)
    with open(img, "wb") as f:
        f.truncate(size)
    env = mtools_env()
    proc.run([mformat, "-i", img, "-F", "-v", ESP_LABEL, "::"], env=env, timeout=120)
    children = sorted(Path(src).iterdir()) if Path(src).is_dir() else []
    if children:
        proc.run([mcopy, "-i", img, "-s", "-p", "-Q", *children, "::/"], env=env, timeout=300)
    return img


def make_ext4(src: Path, img: Path, *, size: int) -> Path:
    """An ext4 file system holding the tree at src (mkfs.ext4 -d: nothing mounted)."""
    mkfs = proc.which("mkfs.ext4")
    img.unlink(missing_ok=True)
    proc.run([mkfs, "-q", "-F", "-L", ROOT_LABEL, "-E", "root_owner=0:0,nodiscard",
              "-d", src, img, f"{size // 1024}K"], timeout=600)
    return img


def _write_at(src: Path, disk: Path, offset: int) -> None:
    """Write the file system image src into disk at offset (what dd conv=notrunc,sparse
    seek=offset does), copying only src's data extents (SEEK_DATA/SEEK_HOLE): the
    region was a hole of a new disk file, so src's holes are zeros there already. dd
    reads the holes too, which took 5 s for a 2 GiB root."""
    with open(src, "rb") as fin, open(disk, "r+b") as fout:
        i, o = fin.fileno(), fout.fileno()
        end = os.fstat(i).st_size
        pos = 0
        while pos < end:
            try:
                data = os.lseek(i, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after pos
                break
            hole = os.lseek(i, data, os.SEEK_HOLE)
            while data < hole:
                n = os.copy_file_range(i, o, hole - data, data, offset + data)
                if n <= 0:
                    raise OnixError("short copy into the disk image", path=disk)
                data += n
            pos = hole
        os.fsync(o)


def make_disk(root: Path, out: Path, *, size: int | str = "2G", esp_size: int | str = "128M",
              seed: str | None = None, scratch: Path | None = None) -> tuple[Partition, Partition]:
    """The GPT disk of an image root: ESP from root/boot, ext4 root from the rest.

    Returns (esp, root) partitions. `seed` fixes the GUIDs (default: the out file name).
    """
    size, esp_size = parse_size(size), parse_size(esp_size)
    root, out = Path(root), Path(out)
    seed = seed or out.name
    esp_start = ALIGN
    root_start = esp_start + esp_size
    root_size = size - root_start - ALIGN  # the backup GPT needs the last 33 sectors
    if root_size < 64 << 20:
        raise OnixError(f"size {size} leaves no room for the root file system",
                        hint="give a bigger size")
    scratch = Path(scratch or out.parent)
    scratch.mkdir(parents=True, exist_ok=True)
    esp_img = scratch / f".{out.name}.esp.{os.getpid()}"
    root_img = scratch / f".{out.name}.root.{os.getpid()}"
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        tmp.unlink(missing_ok=True)
        with open(tmp, "wb") as f:
            f.truncate(size)
        sfdisk = proc.which("sfdisk")
        table = (f"label: gpt\nlabel-id: {_guid(seed, 'disk')}\nunit: sectors\n"
                 f"start={esp_start // SECTOR}, size={esp_size // SECTOR}, type={ESP_TYPE}, "
                 f"uuid={_guid(seed, 'esp')}, name=\"ESP\"\n"
                 f"start={root_start // SECTOR}, size={root_size // SECTOR}, type={ROOT_TYPE}, "
                 f"uuid={_guid(seed, 'root')}, name=\"onix-root\"\n")
        proc.run([sfdisk, "--quiet", "--no-reread", "--no-tell-kernel", tmp],
                 input=table.encode(), timeout=60)
        make_esp(root / "boot", esp_img, size=esp_size)
        _write_at(esp_img, tmp, esp_start)
        esp_img.unlink()
        make_ext4(root, root_img, size=root_size)
        _write_at(root_img, tmp, root_start)
        root_img.unlink()
        os.replace(tmp, out)
    finally:
        for f in (esp_img, root_img, tmp):
            f.unlink(missing_ok=True)
    parts = partitions(out)
    return parts[0], parts[1]


def partitions(disk: Path) -> list[Partition]:
    """The disk's GPT partitions, in table order (sfdisk --json)."""
    sfdisk = proc.which("sfdisk")
    r = proc.run([sfdisk, "--json", disk], timeout=60)
    table = json.loads(r.stdout)["partitiontable"]
    ss = int(table.get("sectorsize", SECTOR))
    out = []
    for i, p in enumerate(table.get("partitions", []), 1):
        out.append(Partition(number=i, start=int(p["start"]) * ss, size=int(p["size"]) * ss,
                             type=p.get("type", ""), uuid=p.get("uuid", ""),
                             name=p.get("name", "")))
    return out


def partition_of(disk: Path, type_: str) -> Partition:
    """The disk's first partition of GPT type `type_` (ESP_TYPE, ROOT_TYPE)."""
    for p in partitions(disk):
        if p.type.upper() == type_:
            return p
    raise OnixError(f"no partition of type {type_}", path=disk,
                    hint="is this a disk made by onix image build?")
