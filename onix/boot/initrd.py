"""The ONIX initrd: a small, deterministic cpio archive that onix writes itself.

Why our own: the initrd has one job on an ONIX machine — find the root disk, and if
the boot entry names an older state (`onix.fstx=`), make that state live with the
same `renameat2(RENAME_EXCHANGE)` that `onix state activate` does, before anything
runs from /usr. That needs a shell, a handful of kernel modules and one static
helper, not a general initramfs generator. Building it from the state's own /usr in
Python keeps it reproducible: one state always gives the same bytes, so an initrd
can be named by its digest and shared between states.

(About 600 lines on purpose: the archive's layout, the newc writer and reader, its
compression and its cache key are one on-disk format, documented here beside the code
that writes it; the module and firmware lookups live in kmod.py and core/safepath.py.)

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

    init                          onix/boot/data/init (or the state's
                                  usr/lib/onix/initrd/init), 0755
    bin/busybox                   the state's usr/bin/busybox, a static ELF
    bin/<applet> -> busybox       the applets init uses (APPLETS below)
    bin/onix-exchange             the state's usr/lib/onix/exchange, a static ELF
    lib/modules/<kver>/<rel>.ko   the resolved modules (onix.kmod), always plain .ko
    lib/modules/<kver>/onix.modules   their paths, one a line, in load order
    lib/firmware/<name>[.xz|.zst] firmware those modules declare: the bytes of the file
                                  (or of a link's target), .xz/.zst as shipped
    etc/onix-initrd               key=value lines, lists comma-separated: format, kver,
                                  modules, builtin, absent, firmware (names as stored
                                  under lib/firmware), firmware_missing (declared, not
                                  included)
    dev/console (c 5 1), dev/null (c 1 3)   the kernel opens dev/console before init
    dev proc sys run sysroot tmp etc        empty directories, mount points

onix follows no symlink while it reads a state. The state's usr tree sits in a root
that is only a directory on the host, so a link like `usr/bin/busybox -> /etc/shadow`
would be resolved against the host. busybox, the exchange helper, the state's init and
modules list, the kernel config, modules.dep, modules.builtin and every module are
reached with safepath.read_regular(): one component at a time with O_NOFOLLOW, and a
symlink anywhere below usr is an OnixError naming it. Firmware is the exception,
because Debian's firmware packages are full of symlinks: onix resolves a firmware
symlink itself, relative to its directory and only inside usr/lib/firmware (absolute
targets only if they start with /usr/lib/firmware/ or /lib/firmware/, at most
FIRMWARE_MAX_LINKS links), and stores the target's bytes under the requested name. A
link that leads anywhere else leaves that firmware out: it is listed in
firmware_missing, with the reason in Initrd.firmware_reasons, and the build goes on.

The whole archive is compressed with zstd if the kernel's config has
CONFIG_RD_ZSTD=y (level 19, one thread, content size written, window at most 8 MiB:
the kernel's decompressor refuses larger windows), else gzip if CONFIG_RD_GZIP=y
(mtime 0, no file name), else left as it is. `read()` takes any of the three.

The cache (`build(cache_dir=...)`) names an image by a blake3 key over the format
version, the compression and every entry (name, type, mode, rdev, link target, and
the blake3 of its input bytes: the very bytes, read once, that go into the image), so
a state whose inputs did not change reuses the image.
The same inputs give the same bytes; the compressed bytes also depend on the zstd
(or zlib) library version, which is why the key is over the inputs, not the image.
"""

from __future__ import annotations

import dataclasses
import gzip
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

from onix.boot import kmod
from onix.core import fsutil, safepath
from onix.core.errors import OnixError
from onix.core.safepath import is_directory, is_regular, read_regular

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

# The busybox applets the init script runs. Listing them (rather than `busybox --install`
# at boot) keeps the archive a fixed, reviewable set; onix.shell installs the rest.
APPLETS = ("cat", "echo", "findfs", "grep", "insmod", "ls", "mkdir", "mount", "mv", "od",
           "poweroff", "reboot", "rm", "sed", "sh", "sleep", "switch_root", "sync", "tr",
           "umount", "uname")

STATE_INIT = "lib/onix/initrd/init"  # relative to usr/: a state's own init wins
STATE_MODULES = "lib/onix/initrd/modules"  # extra module names, one a line
BUSYBOX = "bin/busybox"
EXCHANGE = "lib/onix/exchange"
FIRMWARE = "lib/firmware"
# Debian's firmware trees nest links a level or two (a generic name to a versioned
# one); more than this is a loop or something odd, and that firmware is left out.
FIRMWARE_MAX_LINKS = 8
# absolute firmware link targets that mean "inside the firmware tree"; others escape
FIRMWARE_ABSOLUTE = ("/usr/lib/firmware/", "/lib/firmware/")
DIRS = ("bin", "dev", "etc", "lib", "lib/firmware", "lib/modules", "proc", "run", "sys",
        "sysroot", "tmp")


def packaged_init() -> Traversable:
    """The init script shipped in this package (onix/boot/data/init).

    Package data, not a path into a source checkout: an installed onix (a wheel, the
    onix stone) has no checkout to read it from."""
    return files("onix.boot") / "data" / "init"


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
    try:
        text = read_regular(Path(usr), f"lib/kernel/{kver}/config")
    except FileNotFoundError:
        return {}
    out = {}
    for line in text.decode(errors="replace").splitlines():
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


def check_static(path: Path, *, rel: str, what: str, data: bytes | None = None) -> None:
    """Refuse a missing, non-ELF or dynamically linked helper: the initrd has no libc.

    `data` is the file's bytes when the caller has read them (from a state, that is
    with read_regular, and the same bytes then go into the image); without it `path`
    is opened as it is, which is for trusted files only, such as a build output.
    """
    import io

    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    hint = f"install a stone that ships {what} at usr/{rel}"
    if data is None:
        if not Path(path).is_file():
            raise OnixError(f"the initrd needs {what}, and this state has none", path=path,
                            hint=hint)
        data = Path(path).read_bytes()
    try:
        with io.BytesIO(data) as f:
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
    try:
        text = read_regular(Path(usr), STATE_MODULES).decode("utf-8", "replace")
    except FileNotFoundError:
        text = ""
    for line in text.splitlines():
        word = line.split("#", 1)[0].strip()
        if word:
            names.append(word)
    return names


@dataclass(frozen=True)
class Source:
    """One planned entry and its input bytes.

    File-backed entries carry `raw`, read once when planned (from the state with
    read_regular), so that the cache key and the image describe the same bytes;
    `origin` names the file (its suffix says how to decompress). Entries made here
    have raw None and their bytes in entry.data.
    """

    entry: CpioEntry
    raw: bytes | None = None
    origin: str = ""
    decompress: bool = False

    @property
    def from_file(self) -> bool:
        return self.raw is not None

    def input(self) -> bytes:
        return self.entry.data if self.raw is None else self.raw

    def content(self) -> bytes:
        """What goes in the archive: the input, decompressed for a compressed module."""
        data = self.input()
        return kmod.decompress(data, name=self.origin) if self.decompress else data


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
    firmware_reasons: dict[str, str] = field(default_factory=dict)  # missing name → why
    path: Path | None = None
    cached: bool = False  # True when the image came from the cache unchanged

    def write(self, dest: Path) -> Path:
        """Write the image to dest atomically and durably."""
        _atomic_write(Path(dest), self.data)
        return Path(dest)


def _resolve_firmware(usr: Path, rel: str) -> tuple[str | None, str | None]:
    """Where lib/firmware/<rel> really is, its symlinks followed by hand (safepath).

    (path below lib/firmware of the regular file, None), or (None, None) if there is
    nothing at rel, or (None, why) if something is there but cannot be used: a link
    that leaves lib/firmware, a loop, something that is not a regular file. A target is
    only ever looked at inside usr/lib/firmware.
    """
    base = Path(usr) / FIRMWARE
    got = safepath.follow_links(base, rel, max_links=FIRMWARE_MAX_LINKS, absolute=lambda t: next(
        (t[len(p):] for p in FIRMWARE_ABSOLUTE if t.startswith(p)), None))
    if got.problem == "up":
        return None, f"a symlink on the way to {rel} leads out of usr/{FIRMWARE}"
    if got.problem == "outside":
        return None, (f"usr/{FIRMWARE}/{got.link} is a symlink to {got.target}, "
                      f"outside usr/{FIRMWARE}")
    if got.problem == "loop":
        return None, f"{rel}: more than {FIRMWARE_MAX_LINKS} symlinks (a loop?)"
    if got.problem == "missing":
        return None, None if not got.links else f"{rel} is a dangling symlink"
    if got.problem == "notdir":
        return None, None
    if not got.path or not stat.S_ISREG(base.joinpath(got.path).lstat().st_mode):
        return None, f"{rel} is not a regular file"
    return got.path, None


def _find_firmware(usr: Path, name: str) -> tuple[str, bytes] | str:
    """(name as stored, bytes) for firmware `name`, or why it is left out."""
    # a firmware name is a plain relative path below lib/firmware; anything else
    # (absolute, "..", "./x", "a//b") is never found rather than put at an odd name
    if not safepath.clean_rel(name):
        return f"{name!r} is not a plain path below usr/{FIRMWARE}"
    try:
        if not is_directory(usr, FIRMWARE):
            return f"not in usr/{FIRMWARE} (there is none)"
    except OnixError as e:  # usr/lib/firmware itself a symlink: no firmware, not fatal
        return e.message
    why = None
    for candidate in (name, f"{name}.zst", f"{name}.xz"):
        real, problem = _resolve_firmware(usr, candidate)
        if real is None:
            why = why or problem
            continue
        try:
            data = read_regular(usr, f"{FIRMWARE}/{real}")
        except (OnixError, FileNotFoundError) as e:  # changed under us since we looked
            why = why or getattr(e, "message", str(e))
            continue
        # the kernel looks for <name>, <name>.zst, <name>.xz and decompresses by that
        # suffix, so the stored name carries the compression of the bytes it holds
        suffix = next((s for s in (".zst", ".xz") if real.endswith(s) and not
                       name.endswith(s)), "")
        return name + suffix, data
    return why or f"not in usr/{FIRMWARE} (as {name}, {name}.zst or {name}.xz)"


def _init_script(usr: Path, init: Path | None) -> tuple[bytes, str]:
    """The initrd's /init and where it came from: the state's own, the caller's, or the
    one packaged with onix."""
    if init is None and is_regular(usr, STATE_INIT):  # a symlink there is an error
        return read_regular(usr, STATE_INIT), f"usr/{STATE_INIT}"
    # the caller's own file or onix's packaged init, not the state's: read as given
    script: Traversable = packaged_init() if init is None else Path(init)
    if not script.is_file():
        raise OnixError("no init script for the initrd", path=str(script),
                        hint="reinstall onix (its package data onix/boot/data/init) "
                        f"or ship usr/{STATE_INIT} in a stone")
    return script.read_bytes(), str(script)


def _helpers(usr: Path) -> dict[str, bytes]:
    """busybox and the exchange helper from the state, each checked to be static."""
    helpers = {}
    exchange = "the static onix-exchange helper (onix/boot/data/onix-exchange.c)"
    for rel, what in ((BUSYBOX, "a static busybox"), (EXCHANGE, exchange)):
        try:
            helpers[rel] = read_regular(usr, rel)
        except FileNotFoundError:
            raise OnixError(f"the initrd needs {what}, and this state has none",
                            path=usr / rel,
                            hint=f"install a stone that ships {what} at usr/{rel}") from None
        check_static(usr / rel, rel=rel, what=what, data=helpers[rel])
    return helpers


def _plan(*, usr: Path, kver: str,
          init: Path | None = None) -> tuple[list[Source], kmod.Resolution, dict]:
    """Every entry of the archive (sorted, inode-numbered) and what it was made from."""
    usr = Path(usr)
    init_data, init_origin = _init_script(usr, init)
    helpers = _helpers(usr)
    wanted = wanted_modules(usr=usr)
    if is_directory(usr, f"lib/modules/{kver}"):
        res = kmod.resolve(usr=usr, kver=kver, wanted=wanted)
    else:  # a kernel with everything built in (or nothing): no module is loadable
        res = kmod.Resolution(kver=kver, absent=list(dict.fromkeys(map(kmod.normalize, wanted))))

    sources: dict[str, Source] = {}

    def add(entry: CpioEntry, raw: bytes | None = None, origin: str = "",
            decompress: bool = False) -> None:
        sources[entry.name] = Source(entry, raw, origin, decompress)

    for d in DIRS:
        add(directory(d))
    add(chardev("dev/console", 5, 1))
    add(chardev("dev/null", 1, 3, 0o666))
    add(regular("init", b"", 0o755), init_data, init_origin)
    add(regular("bin/busybox", b"", 0o755), helpers[BUSYBOX], f"usr/{BUSYBOX}")
    for applet in APPLETS:
        add(symlink(f"bin/{applet}", "busybox"))
    add(regular("bin/onix-exchange", b"", 0o755), helpers[EXCHANGE], f"usr/{EXCHANGE}")

    moddir = f"lib/modules/{kver}"
    for m in res.modules:
        add(regular(f"{moddir}/{m.initrd_rel}", b""), m.raw(), m.rel, m.rel != m.initrd_rel)
    add(regular(f"{moddir}/onix.modules",
                "".join(f"{m.initrd_rel}\n" for m in res.modules).encode()))

    firmware: list[str] = []
    missing: list[str] = []
    reasons: dict[str, str] = {}
    for name in res.firmware:
        found = _find_firmware(usr, name)
        if isinstance(found, str):
            missing.append(name)
            reasons[name] = found
            continue
        shipped, data = found
        firmware.append(shipped)
        add(regular(f"{FIRMWARE}/{shipped}", b""), data, f"usr/{FIRMWARE}/{shipped}")

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
    return ordered, res, {"firmware": firmware, "firmware_missing": missing,
                          "firmware_reasons": reasons}


def cache_key(sources: list[Source], compression: str) -> str:
    """blake3 over everything that decides the image's bytes, file contents by digest.

    The bytes hashed are the sources' own, the ones the image is packed from, so the
    key cannot describe a file other than the one included."""
    import blake3

    h = blake3.blake3()
    h.update(f"onix-initrd\0{FORMAT}\0{compression}\0".encode())
    for s in sources:
        e = s.entry
        # the input bytes plus whether we decompress them: cheaper than decompressing
        what = f"{blake3.blake3(s.input()).hexdigest()}:{int(s.decompress)}"
        kind = "file" if s.from_file else "data"
        h.update(f"{e.name}\0{e.mode:o}\0{e.rdevmajor}:{e.rdevminor}\0{kind}\0{what}\n"
                 .encode())
    return h.hexdigest()


def _atomic_write(dest: Path, data: bytes) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fsutil.atomic_write(dest, data, mode=0o644)


def build(*, usr: Path, kver: str, cache_dir: Path | None = None,
          init: Path | None = None) -> Initrd:
    """Build (or fetch from cache_dir) the initrd for kernel `kver` of the state at `usr`."""
    import blake3

    usr = Path(usr)
    if not kver or "/" in kver or kver in (".", ".."):
        raise OnixError(f"{kver!r} is not a kernel version", path=usr / "lib" / "kernel",
                        hint="name a directory of usr/lib/kernel, e.g. 6.1.0-56-cloud-amd64")
    if not (is_directory(usr, f"lib/kernel/{kver}") or is_directory(usr, f"lib/modules/{kver}")):
        raise OnixError(f"this state has no kernel {kver}", path=usr / "lib" / "kernel" / kver,
                        hint="install the kernel stone first")
    sources, res, fw = _plan(usr=usr, kver=kver, init=init)
    compression = choose_compression(kernel_config(usr=usr, kver=kver))
    key = cache_key(sources, compression)
    result = dict(key=key, compression=compression, kver=kver, modules=res.names,
                  builtin=res.builtin, absent=res.absent, firmware=fw["firmware"],
                  firmware_missing=fw["firmware_missing"],
                  firmware_reasons=fw["firmware_reasons"])
    cached = Path(cache_dir) / f"{key}.img" if cache_dir is not None else None
    if cached is not None and cached.is_file():
        data = cached.read_bytes()
        return Initrd(data=data, digest=blake3.blake3(data).hexdigest(), path=cached,
                      cached=True, **result)
    cpio = pack_cpio(dataclasses.replace(s.entry, data=s.content()) for s in sources)
    data = compress(cpio, compression)
    if cached is not None:
        _atomic_write(cached, data)
    return Initrd(data=data, digest=blake3.blake3(data).hexdigest(), path=cached, **result)
