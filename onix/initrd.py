"""The ONIX initrd: a small, deterministic cpio archive that onix writes itself.

Why our own: the initrd has one job on an ONIX machine — find the root disk, and if
the boot entry names an older state (`onix.fstx=`), make that state live with the
same `renameat2(RENAME_EXCHANGE)` that `onix state activate` does, before anything
runs from /usr. That needs a shell, a handful of kernel modules and one static
helper, not a general initramfs generator. Building it from the state's own /usr in
Python keeps it reproducible: one state always gives the same bytes, so an initrd
can be named by its digest and shared between states.

Format, version 1
-----------------
A cpio "newc" archive (magic `070701`, the format the kernel unpacks), optionally
compressed as a whole:

    header      110 bytes of ASCII: magic and 13 eight-digit hex fields
                (ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor,
                 rdevmajor, rdevminor, namesize, check)
    name        namesize bytes including the trailing NUL; header+name padded to 4
    data        filesize bytes (a symlink's data is its target); padded to 4
    ...
    TRAILER!!!  an empty entry that ends the archive; the whole is padded to 512

Every entry is owned by root:root with mtime 0 and nlink 1 (2 for directories);
entries are sorted by name, so a directory always comes before what it holds, and
inode numbers are their 1-based position in that order. Names have no leading '/'.
Nothing records a time, a host or a build path.

Contents:

    init                          boot/init (or the state's usr/lib/onix/initrd/init), 0755
    bin/busybox                   the state's usr/bin/busybox, a static ELF
    bin/<applet> -> busybox       the applets init uses (APPLETS below)
    bin/onix-exchange             the state's usr/lib/onix/exchange, a static ELF
    lib/modules/<kver>/<rel>.ko   the resolved modules (onix.kmod), always plain .ko
    lib/modules/<kver>/onix.modules   their paths, one a line, in load order
    lib/firmware/<name>[.xz|.zst] firmware those modules declare, as shipped
    etc/onix-initrd               key=value: format, kver, modules, builtin, absent, firmware
    dev/console (c 5 1), dev/null (c 1 3)   the kernel opens dev/console before init
    dev proc sys run sysroot tmp etc        empty directories, mount points

The whole archive is compressed with zstd if the kernel's config has
CONFIG_RD_ZSTD=y (level 19, one thread, content size written, window at most 8 MiB:
the kernel's decompressor refuses larger windows), else gzip if CONFIG_RD_GZIP=y
(mtime 0, no file name), else left as it is. `read()` takes any of the three.

The cache (`build(cache_dir=...)`) names an image by a blake3 key over the format
version, the compression and every entry (name, type, mode, rdev, link target, and
the blake3 of its bytes), so a state whose inputs did not change reuses the image.
The same inputs give the same bytes; the compressed bytes also depend on the zstd
(or zlib) library version, which is why the key is over the inputs, not the image.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import stat
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from onix import kmod
from onix.errors import OnixError

FORMAT = 1
NEWC_MAGIC = b"070701"
TRAILER = "TRAILER!!!"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_LEVEL = 19
ZSTD_MAX_WINDOW_LOG = 23  # 8 MiB: what the kernel's unzstd accepts for an initramfs

# Modules that reach a root disk in the usual VMs and on common hardware. A kernel
# that builds one in, or does not build it at all, is fine: resolve() reports both.
DEFAULT_MODULES = ("virtio_pci", "virtio_blk", "virtio_scsi", "sd_mod", "ahci", "nvme",
                   "ext4", "vfat", "nls_cp437", "nls_iso8859_1")

# The busybox applets boot/init runs. Listing them (rather than `busybox --install`
# at boot) keeps the archive a fixed, reviewable set; onix.shell installs the rest.
APPLETS = ("cat", "echo", "findfs", "grep", "insmod", "ls", "mkdir", "mount", "mv", "od",
           "poweroff", "reboot", "rm", "sed", "sh", "sleep", "switch_root", "sync", "tr",
           "umount", "uname")

STATE_INIT = "lib/onix/initrd/init"  # relative to usr/: a state's own init wins
STATE_MODULES = "lib/onix/initrd/modules"  # extra module names, one a line
BUSYBOX = "bin/busybox"
EXCHANGE = "lib/onix/exchange"
DIRS = ("bin", "dev", "etc", "lib", "lib/firmware", "lib/modules", "proc", "run", "sys",
        "sysroot", "tmp")


def repo_init() -> Path:
    """boot/init in the source tree this onix runs from."""
    import onix

    return Path(onix.__file__).resolve().parent.parent / "boot" / "init"


# -- cpio newc ------------------------------------------------------------------


@dataclass(frozen=True)
class CpioEntry:
    """One archive member. For symlinks `data` is the target; for devices, rdev is set."""

    name: str
    mode: int  # type and permission bits, as st_mode
    data: bytes = b""
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    nlink: int = 1
    ino: int = 0
    rdevmajor: int = 0
    rdevminor: int = 0

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def target(self) -> str:
        return self.data.decode() if self.is_symlink else ""


def directory(name: str, mode: int = 0o755) -> CpioEntry:
    return CpioEntry(name, stat.S_IFDIR | mode, nlink=2)


def regular(name: str, data: bytes, mode: int = 0o644) -> CpioEntry:
    return CpioEntry(name, stat.S_IFREG | mode, data)


def symlink(name: str, target: str) -> CpioEntry:
    return CpioEntry(name, stat.S_IFLNK | 0o777, target.encode())


def chardev(name: str, major: int, minor: int, mode: int = 0o600) -> CpioEntry:
    return CpioEntry(name, stat.S_IFCHR | mode, rdevmajor=major, rdevminor=minor)


def _pad4(n: int) -> bytes:
    return bytes(-n % 4)


def _header(e: CpioEntry, name: bytes) -> bytes:
    fields = (e.ino, e.mode, e.uid, e.gid, e.nlink, e.mtime, len(e.data), 0, 0, e.rdevmajor,
              e.rdevminor, len(name) + 1, 0)
    return NEWC_MAGIC + b"".join(b"%08X" % f for f in fields)


def pack_cpio(entries: Iterable[CpioEntry]) -> bytes:
    """newc bytes for entries exactly as given (order, inode numbers), plus the trailer."""
    out = bytearray()
    for e in [*entries, CpioEntry(TRAILER, 0)]:
        name = e.name.encode()
        if b"\0" in name or not name:
            raise ValueError(f"bad cpio name {e.name!r}")
        head = _header(e, name) + name + b"\0"
        out += head + _pad4(len(head)) + e.data + _pad4(len(e.data))
    out += bytes(-len(out) % 512)
    return bytes(out)


def unpack_cpio(data: bytes) -> list[CpioEntry]:
    """Parse uncompressed newc; every header and size is checked against the buffer."""
    entries: list[CpioEntry] = []
    off = 0
    while True:
        if off + 110 > len(data):
            raise OnixError(f"cpio archive ends inside a header at byte {off}",
                            hint="the initrd is truncated; build it again")
        head = data[off:off + 110]
        if head[:6] != NEWC_MAGIC:
            raise OnixError(f"no cpio newc magic at byte {off}",
                            hint="not an onix initrd (or a damaged one); build it again")
        try:
            f = [int(head[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        except ValueError:
            raise OnixError(f"cpio header at byte {off} has non-hex fields",
                            hint="the initrd is damaged; build it again") from None
        ino, mode, uid, gid, nlink, mtime, size, _dmaj, _dmin, rmaj, rmin, namesize, _ = f
        name_end = off + 110 + namesize
        data_at = name_end + (-(110 + namesize) % 4)
        data_end = data_at + size
        if namesize < 1 or data_end > len(data) or data[name_end - 1] != 0:
            raise OnixError(f"cpio entry at byte {off} runs past the end of the archive",
                            hint="the initrd is truncated; build it again")
        name = data[off + 110:name_end - 1].decode()
        if name == TRAILER:
            return entries
        entries.append(CpioEntry(name, mode, bytes(data[data_at:data_end]), uid, gid, mtime,
                                 nlink, ino, rmaj, rmin))
        off = data_end + (-size % 4)


def decompress(image: bytes) -> bytes:
    """The cpio bytes of an initrd image, by its magic: zstd, gzip or none."""
    if image.startswith(ZSTD_MAGIC):
        import io

        import zstandard

        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(image)) as r:
            return r.read()
    if image.startswith(GZIP_MAGIC):
        return gzip.decompress(image)
    return image


def read(data: bytes) -> list[CpioEntry]:
    """The entries of an initrd image (compressed or not), trailer excluded."""
    return unpack_cpio(decompress(data))


# -- compression ----------------------------------------------------------------


def kernel_config(*, usr: Path, kver: str) -> dict[str, str]:
    """usr/lib/kernel/<kver>/config as CONFIG_X → value; empty if the stone has none."""
    p = Path(usr) / "lib" / "kernel" / kver / "config"
    if not p.exists():
        return {}
    out = {}
    for line in p.read_text(errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep and key.startswith("CONFIG_"):
            out[key] = value
    return out


def choose_compression(config: dict[str, str]) -> str:
    if config.get("CONFIG_RD_ZSTD") == "y":
        return "zstd"
    if config.get("CONFIG_RD_GZIP") == "y":
        return "gzip"
    return "none"


def compress(data: bytes, compression: str) -> bytes:
    if compression == "zstd":
        import zstandard

        params = zstandard.ZstdCompressionParameters.from_level(
            ZSTD_LEVEL, source_size=len(data), threads=0, write_content_size=True,
            write_checksum=True)
        if params.window_log > ZSTD_MAX_WINDOW_LOG:
            params = zstandard.ZstdCompressionParameters.from_level(
                ZSTD_LEVEL, source_size=len(data), threads=0, write_content_size=True,
                write_checksum=True, window_log=ZSTD_MAX_WINDOW_LOG)
        return zstandard.ZstdCompressor(compression_params=params).compress(data)
    if compression == "gzip":
        return gzip.compress(data, compresslevel=9, mtime=0)
    return data


# -- what goes in ---------------------------------------------------------------


def check_static(path: Path, *, rel: str, what: str) -> None:
    """Refuse a missing, non-ELF or dynamically linked helper: the initrd has no libc."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    hint = f"install a stone that ships {what} at usr/{rel}"
    if not path.is_file():
        raise OnixError(f"the initrd needs {what}, and this state has none", path=path,
                        hint=hint)
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            kind = elf["e_type"]
            # a loader (PT_INTERP) or a needed library (DT_NEEDED, e.g. a shared object
            # passed off as a program) both mean it cannot run without a libc beside it
            dynamic = False
            for seg in elf.iter_segments():
                if seg["p_type"] == "PT_INTERP":
                    dynamic = True
                elif seg["p_type"] == "PT_DYNAMIC":
                    dynamic |= any(t.entry.d_tag == "DT_NEEDED" for t in seg.iter_tags())
    except ELFError:
        raise OnixError(f"the initrd needs {what}, but this is not an ELF executable",
                        path=path, hint=hint) from None
    if kind not in ("ET_EXEC", "ET_DYN"):
        raise OnixError(f"the initrd needs {what}, but this ELF file is not an executable",
                        path=path, hint=hint)
    if dynamic:
        raise OnixError(f"the initrd needs {what}, but this one is dynamically linked "
                        "(the initrd has no libc or loader)", path=path, hint=hint)


def wanted_modules(*, usr: Path) -> list[str]:
    """DEFAULT_MODULES plus the state's usr/lib/onix/initrd/modules (# comments allowed)."""
    names = list(DEFAULT_MODULES)
    extra = Path(usr) / STATE_MODULES
    if extra.exists():
        for line in extra.read_text().splitlines():
            word = line.split("#", 1)[0].strip()
            if word:
                names.append(word)
    return names


@dataclass(frozen=True)
class Source:
    """One planned entry: its bytes come from `path` (optionally decompressed) or `data`."""

    entry: CpioEntry
    path: Path | None = None
    decompress: bool = False

    def raw(self) -> bytes:
        return self.entry.data if self.path is None else self.path.read_bytes()

    def content(self, raw: bytes) -> bytes:
        """What goes in the archive, from the bytes raw() gave (read once: key and image
        must describe the same bytes)."""
        return kmod.decompress(raw, name=self.path.name) if self.decompress else raw


@dataclass
class Initrd:
    """A built image. `path` is the cache file when build() had a cache_dir."""

    data: bytes
    digest: str  # blake3 hex of `data`
    key: str  # the cache key (blake3 over the inputs)
    compression: str  # "zstd" | "gzip" | "none"
    kver: str
    modules: list[str] = field(default_factory=list)  # names, load order
    builtin: list[str] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)
    firmware: list[str] = field(default_factory=list)  # included, as shipped names
    firmware_missing: list[str] = field(default_factory=list)
    path: Path | None = None
    cached: bool = False  # True when the image came from the cache unchanged

    def write(self, dest: Path) -> Path:
        """Write the image to dest atomically and durably."""
        _atomic_write(Path(dest), self.data)
        return Path(dest)


def _find_firmware(usr: Path, name: str) -> Path | None:
    # a firmware name is a plain relative path below lib/firmware; anything else
    # (absolute, "..", "./x", "a//b") is never found rather than put at an odd name
    if name.startswith("/") or ".." in Path(name).parts or Path(name).as_posix() != name:
        return None
    base = Path(usr) / "lib" / "firmware"
    for candidate in (name, f"{name}.zst", f"{name}.xz"):
        if (base / candidate).is_file():
            return base / candidate
    return None


def _plan(*, usr: Path, kver: str,
          init: Path | None = None) -> tuple[list[Source], kmod.Resolution, dict]:
    """Every entry of the archive (sorted, inode-numbered) and what it was made from."""
    usr = Path(usr)
    if init is None:
        state_init = usr / STATE_INIT
        init = state_init if state_init.is_file() else repo_init()
    if not Path(init).is_file():
        raise OnixError("no init script for the initrd", path=init,
                        hint="run onix from its source tree (boot/init) or ship "
                        f"usr/{STATE_INIT} in a stone")
    check_static(usr / BUSYBOX, rel=BUSYBOX, what="a static busybox")
    check_static(usr / EXCHANGE, rel=EXCHANGE, what="the static onix-exchange helper "
                 "(boot/onix-exchange.c)")
    wanted = wanted_modules(usr=usr)
    if (usr / "lib" / "modules" / kver).is_dir():
        res = kmod.resolve(usr=usr, kver=kver, wanted=wanted)
    else:  # a kernel with everything built in (or nothing): no module is loadable
        res = kmod.Resolution(kver=kver, absent=list(dict.fromkeys(map(kmod.normalize, wanted))))

    sources: dict[str, Source] = {}

    def add(entry: CpioEntry, path: Path | None = None, decompress: bool = False) -> None:
        sources[entry.name] = Source(entry, path, decompress)

    for d in DIRS:
        add(directory(d))
    add(chardev("dev/console", 5, 1))
    add(chardev("dev/null", 1, 3, 0o666))
    add(regular("init", b"", 0o755), Path(init))
    add(regular("bin/busybox", b"", 0o755), usr / BUSYBOX)
    for applet in APPLETS:
        add(symlink(f"bin/{applet}", "busybox"))
    add(regular("bin/onix-exchange", b"", 0o755), usr / EXCHANGE)

    moddir = f"lib/modules/{kver}"
    for m in res.modules:
        add(regular(f"{moddir}/{m.initrd_rel}", b""), m.path, m.rel != m.initrd_rel)
    add(regular(f"{moddir}/onix.modules",
                "".join(f"{m.initrd_rel}\n" for m in res.modules).encode()))

    firmware, missing = [], []
    for name in res.firmware:
        p = _find_firmware(usr, name)
        if p is None:
            missing.append(name)
            continue
        shipped = name + p.name[len(Path(name).name):]  # keeps .zst/.xz as shipped
        firmware.append(shipped)
        add(regular(f"lib/firmware/{shipped}", b""), p)

    info = {"format": FORMAT, "kver": kver, "modules": res.names, "builtin": res.builtin,
            "absent": res.absent, "firmware": firmware, "firmware_missing": missing}
    text = "".join(f"{k}={','.join(v) if isinstance(v, list) else v}\n" for k, v in info.items())
    add(regular("etc/onix-initrd", text.encode()))

    # every parent directory is an entry of its own, and sorting puts it first
    for name in list(sources):
        parent = name.rpartition("/")[0]
        while parent and parent not in sources:
            add(directory(parent))
            parent = parent.rpartition("/")[0]
    ordered = [dataclasses.replace(sources[name],
                                   entry=dataclasses.replace(sources[name].entry, ino=ino))
               for ino, name in enumerate(sorted(sources), 1)]
    return ordered, res, {"firmware": firmware, "firmware_missing": missing}


def cache_key(sources: list[Source], raws: list[bytes], compression: str) -> str:
    """blake3 over everything that decides the image's bytes, file contents by digest."""
    import blake3

    h = blake3.blake3()
    h.update(f"onix-initrd\0{FORMAT}\0{compression}\0".encode())
    for s, raw in zip(sources, raws, strict=True):
        e = s.entry
        # the input bytes plus whether we decompress them: cheaper than decompressing
        what = f"{blake3.blake3(raw).hexdigest()}:{int(s.decompress)}"
        kind = "file" if s.path is not None else "data"
        h.update(f"{e.name}\0{e.mode:o}\0{e.rdevmajor}:{e.rdevminor}\0{kind}\0{what}\n"
                 .encode())
    return h.hexdigest()


def _atomic_write(dest: Path, data: bytes) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dfd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def build(*, usr: Path, kver: str, cache_dir: Path | None = None,
          init: Path | None = None) -> Initrd:
    """Build (or fetch from cache_dir) the initrd for kernel `kver` of the state at `usr`."""
    import blake3

    usr = Path(usr)
    if not kver or "/" in kver or kver in (".", ".."):
        raise OnixError(f"{kver!r} is not a kernel version", path=usr / "lib" / "kernel",
                        hint="name a directory of usr/lib/kernel, e.g. 6.1.0-56-cloud-amd64")
    if not (usr / "lib" / "kernel" / kver).is_dir() and not (usr / "lib/modules" / kver).is_dir():
        raise OnixError(f"this state has no kernel {kver}", path=usr / "lib" / "kernel" / kver,
                        hint="install the kernel stone first")
    sources, res, fw = _plan(usr=usr, kver=kver, init=init)
    compression = choose_compression(kernel_config(usr=usr, kver=kver))
    raws = [s.raw() for s in sources]
    key = cache_key(sources, raws, compression)
    result = dict(key=key, compression=compression, kver=kver, modules=res.names,
                  builtin=res.builtin, absent=res.absent, firmware=fw["firmware"],
                  firmware_missing=fw["firmware_missing"])
    cached = Path(cache_dir) / f"{key}.img" if cache_dir is not None else None
    if cached is not None and cached.is_file():
        data = cached.read_bytes()
        return Initrd(data=data, digest=blake3.blake3(data).hexdigest(), path=cached,
                      cached=True, **result)
    cpio = pack_cpio(dataclasses.replace(s.entry, data=s.content(raw))
                     for s, raw in zip(sources, raws, strict=True))
    data = compress(cpio, compression)
    if cached is not None:
        _atomic_write(cached, data)
    return Initrd(data=data, digest=blake3.blake3(data).hexdigest(), path=cached, **result)
