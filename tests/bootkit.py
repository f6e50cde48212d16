"""Boot test kit: a real kernel, busybox and exchange helper as stones, and QEMU to boot them.

Shared by the initrd and boot tests; the API below is stable.

Everything is fetched by Debian package name (apt-get download, never a URL) and
cached under REPO/.cache/bootkit/ (not in git). Every cache entry is built in a
private temporary name and renamed into place, so two test processes racing to build
it both end up with the same, complete result.

    kernel_tree(*, depmod=False) -> (tree_dir, kver)
        The Debian cloud kernel (the package linux-image-cloud-amd64 depends on) as a
        stone source tree: tree_dir/usr/lib/kernel/<kver>/{vmlinuz,config,System.map}
        and tree_dir/usr/lib/modules/<kver>/. Trimmed to the module trees in
        KEEP_MODULES (block, SCSI, ATA, NVMe and virtio drivers, fat/nls, lib/, crypto/)
        plus what those need from elsewhere (their onix.kmod closure: cdrom, configfs,
        ib_core...): ~18 of 91 MB, so stones and root images stay small, and every
        module in the tree resolves. depmod is not run, so onix.kmod reads
        .modinfo itself; depmod=True gives a second tree with modules.dep written by
        busybox depmod, to test that path.
    busybox_static() -> Path
        /bin/busybox from Debian's busybox-static. It is a static glibc build standing
        in for the musl busybox the builder will produce.
    exchange_helper() -> Path
        onix/boot/data/onix-exchange.c built with musl-gcc -static -Os (gcc -static if
        musl-tools is missing).
    stone_trees(*, depmod=False) -> dict[name, Path]
        Source trees (each holds only usr/) for onix.stone.pack: "linux-cloud" (the
        kernel), "busybox" (usr/bin/busybox), "onix-initrd-tools"
        (usr/lib/onix/exchange).
    pack_boot_stones(dest, *, depmod=False) -> dict[name, Path]
        Those three packed as stones (packed once per input, cached), copied into dest.
    qemu_accel() -> "kvm" | "tcg"
        kvm only if /dev/kvm is writable, the CPU has vmx/svm and the KVM is not the
        nested paravirtual kvm_pvm (which fails here); else tcg.
    make_ext4(*, src, img, size="512M", label=ROOT_LABEL) -> Path
        An ext4 image of a directory without mounting anything (mkfs.ext4 -d).
    make_gpt_disk(*, src, img, size="512M", label=ROOT_LABEL) -> (partuuid, offset)
        The same on a GPT disk (one partition at 1 MiB), to boot with PARTUUID=.
    debugfs_cat(img, path, *, offset=0) -> bytes
        A file's bytes from an ext4 image (debugfs); FileNotFoundError if absent.
    run_qemu_direct(*, kernel, initrd, append, disk, timeout=120, log=None) -> str
        Direct kernel boot of one virtio disk with the serial console captured; returns
        the serial log once the guest powers off or reboots (-no-reboot). Raises
        BootError with the log's tail if QEMU times out or fails.

Debian packages used: qemu-system-x86 e2fsprogs musl-tools busybox-static (the host
copy is not used: the .deb is downloaded) and apt/dpkg themselves.
"""

from __future__ import annotations

import functools
import glob
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from importlib.resources import as_file, files
from pathlib import Path

from onix.core import proc
from onix.core.errors import OnixError
from onix.machine.stone import StoneMeta, pack

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "bootkit"
KERNEL_META = "linux-image-cloud-amd64"
ROOT_LABEL = "onixroot"
# Module trees kept from the kernel package: what reaches a root disk in a VM or on
# common hardware, plus the libraries and crypto those modules use. Bump TRIM when
# this changes, so cached trees are rebuilt.
KEEP_MODULES = ("kernel/drivers/virtio", "kernel/drivers/block", "kernel/drivers/scsi",
                "kernel/drivers/ata", "kernel/drivers/nvme", "kernel/fs/fat", "kernel/fs/nls",
                "kernel/lib", "kernel/crypto", "kernel/arch/x86/crypto")
TRIM = "t2"


class BootError(AssertionError):
    """QEMU did not finish a boot; the message carries the serial log's tail."""


# -- cache plumbing ------------------------------------------------------------


def _publish(final: Path, make: Callable[[Path], None]) -> Path:
    """Build `final` (a file or directory) via make(tmp) under a private name, rename it in."""
    if final.exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        make(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.exists():  # not a lost race: a real failure
                raise
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists() or tmp.is_symlink():
            tmp.unlink()
    return final


def _download(package: str) -> Path:
    """The cached .deb of a Debian package (apt-get download on first use)."""
    debs = CACHE / "debs"
    have = sorted(glob.glob(str(debs / f"{glob.escape(package)}_*.deb")))
    if have:
        return Path(have[-1])
    debs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=debs, prefix=".dl-") as tmp:
        proc.run([proc.which("apt-get"), "download", "-q", package],
                 cwd=Path(tmp), timeout=600)
        got = sorted(Path(tmp).glob(f"{package}_*.deb"))
        if not got:
            raise OnixError(f"apt-get download {package} produced no .deb", path=tmp,
                            hint="check the apt sources (apt-get update)")
        final = debs / got[0].name
        try:
            os.rename(got[0], final)
        except OSError:
            if not final.exists():
                raise
        return final


def _extract(deb: Path, dest: Path) -> None:
    dest.mkdir(parents=True)
    proc.run([proc.which("dpkg-deb"), "-x", deb, dest], timeout=300)


# -- kernel --------------------------------------------------------------------


@functools.cache
def kernel_package() -> str:
    """The versioned package linux-image-cloud-amd64 depends on right now."""
    try:
        out = proc.run([proc.which("apt-cache"), "depends", KERNEL_META],
                       timeout=60).stdout.decode()
    except OnixError:
        out = ""
    for line in out.splitlines():
        word = line.strip().removeprefix("Depends:").strip()
        if line.strip().startswith("Depends:") and word.startswith("linux-image-"):
            return word
    # offline or no apt lists: whatever kernel an earlier run cached
    have = sorted(glob.glob(str(CACHE / "debs" / "linux-image-*-cloud-amd64_*.deb")))
    if have:
        return Path(have[-1]).name.split("_", 1)[0]
    raise OnixError(f"cannot resolve {KERNEL_META} with apt-cache",
                    hint="run apt-get update (the boot tests download Debian's cloud kernel)")


def _build_kernel_tree(deb: Path, kver: str, dest: Path) -> None:
    x = dest.parent / f"{dest.name}.x"
    try:
        _extract(deb, x)
        usr = dest / "usr"
        kdir = usr / "lib" / "kernel" / kver
        kdir.mkdir(parents=True)
        for src, name in ((f"vmlinuz-{kver}", "vmlinuz"), (f"config-{kver}", "config"),
                          (f"System.map-{kver}", "System.map")):
            os.rename(x / "boot" / src, kdir / name)
        mods = x / "lib" / "modules" / kver
        out = usr / "lib" / "modules" / kver
        out.mkdir(parents=True)
        for f in sorted(mods.iterdir()):
            if f.is_file():
                os.rename(f, out / f.name)
        # the kept trees plus every module they need from elsewhere (onix.kmod's closure)
        from onix.boot import kmod

        full = kmod.ModuleTree(usr=x, kver=kver)
        wanted = sorted(n for n, rel in full.files.items()
                        if rel.startswith(tuple(f"{k}/" for k in KEEP_MODULES)))
        for m in kmod.resolve(usr=x, kver=kver, wanted=wanted).modules:
            (out / m.rel).parent.mkdir(parents=True, exist_ok=True)
            os.rename(m.path, out / m.rel)
    finally:
        shutil.rmtree(x, ignore_errors=True)


def kernel_tree(*, depmod: bool = False) -> tuple[Path, str]:
    """(tree_dir, kver) of the trimmed Debian cloud kernel; see the module docstring."""
    package = kernel_package()
    kver = package.removeprefix("linux-image-")
    deb = _download(package)
    base = CACHE / "kernel" / f"{deb.stem}-{TRIM}"
    plain = _publish(base / "plain", lambda d: _build_kernel_tree(deb, kver, d))
    if not depmod:
        return plain, kver

    def with_depmod(d: Path) -> None:
        shutil.copytree(plain, d, symlinks=True)
        # busybox depmod -b BASE looks in BASE/lib/modules/<kver>: BASE is the tree's usr
        proc.run([busybox_static(), "depmod", "-b", d / "usr", kver], timeout=300)

    return _publish(base / "depmod", with_depmod), kver


# -- busybox and the exchange helper ---------------------------------------------


def busybox_static() -> Path:
    """Debian's static busybox (glibc), standing in for the builder's musl busybox."""
    deb = _download("busybox-static")

    def make(d: Path) -> None:
        _extract(deb, d / "x")
        os.rename(d / "x" / "bin" / "busybox", d / "busybox")
        shutil.rmtree(d / "x")

    return _publish(CACHE / "busybox" / deb.stem, make) / "busybox"


def exchange_helper() -> Path:
    """onix/boot/data/onix-exchange.c compiled static (musl-gcc, else gcc), cached by source."""
    import blake3

    source = files("onix.boot") / "data" / "onix-exchange.c"
    try:
        cc, flavour = proc.which("musl-gcc"), "musl"
    except OnixError:
        cc, flavour = proc.which("gcc"), "glibc"
    key = blake3.blake3(source.read_bytes() + flavour.encode()).hexdigest()[:16]

    def make(d: Path) -> None:
        d.mkdir()
        with as_file(source) as c:
            proc.run([cc, "-static", "-Os", "-s", "-Wall", "-o", d / "onix-exchange", c],
                     timeout=120)

    return _publish(CACHE / "exchange" / f"{flavour}-{key}", make) / "onix-exchange"


# -- stones --------------------------------------------------------------------


def _file_tree(name: str, rel: str, src: Path) -> Path:
    """A stone source tree holding one executable at usr/<rel>, cached by the file's path."""
    def make(d: Path) -> None:
        target = d / "usr" / rel
        target.parent.mkdir(parents=True)
        shutil.copyfile(src, target)
        os.chmod(target, 0o755)

    return _publish(CACHE / "trees" / f"{name}-{src.parent.name}", make)


def stone_trees(*, depmod: bool = False) -> dict[str, Path]:
    """Stone source trees (each holds only usr/) for the kernel, busybox and exchange."""
    kernel, _kver = kernel_tree(depmod=depmod)
    return {
        "linux-cloud": kernel,
        "busybox": _file_tree("busybox", "bin/busybox", busybox_static()),
        "onix-initrd-tools": _file_tree("onix-initrd-tools", "lib/onix/exchange",
                                        exchange_helper()),
    }


def pack_boot_stones(dest: Path, *, depmod: bool = False) -> dict[str, Path]:
    """The three boot stones, packed once per input into the cache and copied into dest."""
    _tree, kver = kernel_tree(depmod=depmod)
    summaries = {"linux-cloud": f"Debian cloud kernel {kver} (trimmed modules)",
                 "busybox": "static busybox (Debian busybox-static)",
                 "onix-initrd-tools": "onix-exchange, the initrd's atomic exchange helper"}
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for name, tree in stone_trees(depmod=depmod).items():
        version = kver.split("-cloud")[0] if name == "linux-cloud" else "1"
        meta = StoneMeta(name=name, version=version, summary=summaries[name])
        # the tree's cache name already says which input it was built from
        cached = CACHE / "stones" / f"{name}-{tree.parent.name}-{tree.name}.stone"

        if not cached.exists():
            # pack() uses a fixed temporary name next to its output: give it a private dir
            work = CACHE / "stones" / f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
            work.parent.mkdir(parents=True, exist_ok=True)
            try:
                work.mkdir()
                pack(tree, work / "s.stone", meta)
                os.replace(work / "s.stone", cached)
            finally:
                shutil.rmtree(work, ignore_errors=True)
        out[name] = dest / f"{name}.stone"
        shutil.copyfile(cached, out[name])
    return out


# -- images and QEMU -------------------------------------------------------------


def qemu_accel() -> str:
    """kvm only where it works: writable /dev/kvm, vmx/svm, and not the kvm_pvm device."""
    if not os.access("/dev/kvm", os.W_OK) or Path("/sys/module/kvm_pvm").exists():
        return "tcg"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "tcg"
    words = set(flags.split())
    return "kvm" if {"vmx", "svm"} & words else "tcg"


def make_ext4(*, src: Path, img: Path, size: str = "512M", label: str = ROOT_LABEL) -> Path:
    """An ext4 image holding the tree at src, made without mounting (mkfs.ext4 -d)."""
    mkfs = proc.which("mkfs.ext4")
    img = Path(img)
    img.unlink(missing_ok=True)
    proc.run([mkfs, "-q", "-F", "-d", src, "-L", label, img, size], timeout=300)
    return img


def _size_bytes(size: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)


def make_gpt_disk(*, src: Path, img: Path, size: str = "512M",
                  label: str = ROOT_LABEL) -> tuple[str, int]:
    """A GPT disk with one ext4 partition holding src; returns (PARTUUID, byte offset).

    The partition table is written here (protective MBR, primary and backup GPT with
    their CRCs; no sfdisk needed); mkfs.ext4 -E offset= fills the partition. The
    PARTUUID is derived from the image's name, so one name gives one id.
    """
    import struct
    import zlib

    sector, first = 512, 2048  # the partition starts at 1 MiB, as partitioners do
    fs_sectors = _size_bytes(size) // sector
    total = first + fs_sectors + 2048
    disk_guid = uuid.uuid5(uuid.NAMESPACE_URL, f"onix-disk:{Path(img).name}")
    part_guid = uuid.uuid5(uuid.NAMESPACE_URL, f"onix-part:{Path(img).name}")
    linux_fs = uuid.UUID("0fc63daf-8483-4772-8e79-3d69d8477de4")
    entry = struct.pack("<16s16sQQQ72s", linux_fs.bytes_le, part_guid.bytes_le, first,
                        first + fs_sectors - 1, 0, "onix root".encode("utf-16-le"))
    entries = entry + bytes(128 * 128 - len(entry))

    def header(current: int, backup: int, entries_lba: int) -> bytes:
        fields = [b"EFI PART", 0x00010000, 92, 0, 0, current, backup, 34, total - 34,
                  disk_guid.bytes_le, entries_lba, 128, 128, zlib.crc32(entries)]
        fmt = "<8sIIIIQQQQ16sQIII"
        crc = zlib.crc32(struct.pack(fmt, *fields))
        fields[3] = crc
        raw = struct.pack(fmt, *fields)
        return raw + bytes(sector - len(raw))

    mbr = bytearray(sector)
    mbr[446:462] = struct.pack("<B3sB3sII", 0, b"\0\2\0", 0xEE, b"\xff\xff\xff", 1,
                               min(total - 1, 0xFFFFFFFF))
    mbr[510:512] = b"\x55\xaa"
    img = Path(img)
    img.unlink(missing_ok=True)
    with open(img, "wb") as f:
        f.truncate(total * sector)
        f.write(bytes(mbr) + header(1, total - 1, 2) + entries)
        f.seek((total - 33) * sector)
        f.write(entries + header(total - 1, 1, total - 33))
    mkfs = proc.which("mkfs.ext4")
    offset = first * sector
    proc.run([mkfs, "-q", "-F", "-E", f"offset={offset},nodiscard", "-d", src, "-L", label,
              img, f"{fs_sectors // 2}K"], timeout=300)
    return str(part_guid), offset


def debugfs_cat(img: Path, path: str, *, offset: int = 0) -> bytes:
    """The bytes of `path` inside an ext4 image (at byte `offset` of a disk image);
    FileNotFoundError if it is not there."""
    debugfs = proc.which("debugfs")
    where = f"{img}?offset={offset}" if offset else str(img)  # e2fsprogs' io option syntax
    r = proc.run([debugfs, "-R", f"cat {path}", where], timeout=60)
    err = r.stderr.decode(errors="replace")
    if "not found" in err or "File not found" in err:
        raise FileNotFoundError(f"{path} is not in {img}")
    return r.stdout


def run_qemu_direct(*, kernel: Path, initrd: Path, append: str, disk: Path,
                    timeout: float = 120, log: Path | None = None, memory: int = 512) -> str:
    """Boot kernel+initrd with `disk` as a virtio disk; return the serial log.

    The guest's serial console (append adds console=ttyS0) goes to `log` (default
    next to the disk). -no-reboot makes a reboot or power-off end QEMU, so a guest
    that finishes (or fails and reboots) returns; one that hangs is killed at timeout.
    """
    qemu = proc.which("qemu-system-x86_64")
    log = Path(log) if log is not None else Path(disk).with_suffix(".serial.log")
    log.unlink(missing_ok=True)
    argv = [qemu, "-accel", qemu_accel(), "-machine", "pc", "-m", str(memory), "-smp", "1",
            "-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none",
            "-serial", f"file:{log}", "-no-reboot", "-kernel", kernel, "-initrd", initrd,
            "-append", f"console=ttyS0 {append}",
            "-drive", f"file={disk},format=raw,if=virtio"]

    def tail() -> str:
        text = log.read_text(errors="replace") if log.exists() else ""
        return "\n".join(text.splitlines()[-40:]) or "(no serial output)"

    try:
        r = proc.run(argv, check=False, input=b"", timeout=timeout)
    except OnixError as e:
        raise BootError(f"QEMU: {e.message}\n--- serial log tail ({log}) ---\n{tail()}") from e
    if r.returncode != 0:
        err = (r.stderr or b"").decode(errors="replace").strip()
        raise BootError(f"QEMU exited with status {r.returncode}: {err}\n"
                        f"--- serial log tail ({log}) ---\n{tail()}")
    return log.read_text(errors="replace")
