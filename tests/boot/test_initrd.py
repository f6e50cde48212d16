"""The initrd builder (onix.initrd), module resolution (onix.kmod) and its init, no QEMU.

Small fake kernels are made here: tiny ELF objects with a .modinfo section (gcc -c),
static stand-in helpers (gcc -static). The real Debian cloud kernel comes from
tests/bootkit.py and is cached after the first download.
"""

from __future__ import annotations

import gzip
import lzma
import os
import re
import shlex
import shutil
import stat
import struct
import subprocess
import sys
import uuid
from pathlib import Path

import bootkit
import pytest
import zstandard

from onix.boot import initrd, kmod
from onix.core import safepath
from onix.core.errors import OnixError

KVER = "6.9.0-test"
# The package's init (onix/boot/data/init); onix runs from this checkout, so it is a file.
INIT = Path(str(initrd.packaged_init()))

# name → (relative path, modinfo strings). A fake kernel shaped like a real one.
FAKE_MODULES = {
    "a": ("kernel/drivers/a.ko", ["depends=b,c"]),
    "b": ("kernel/drivers/b.ko", ["depends=c"]),
    "c": ("kernel/lib/c.ko", ["depends="]),
    "d": ("kernel/drivers/d.ko", ["depends=", "softdep=pre: e nosuchmod post: f"]),
    "e": ("kernel/drivers/e.ko", []),
    "f": ("kernel/drivers/f.ko", []),
    "g": ("kernel/drivers/g.ko", ["depends=gone"]),
    "h": ("kernel/drivers/h.ko", ["firmware=vendor/h.bin", "firmware=h2.bin",
                                  "firmware=absent.bin"]),
    "dash_name": ("kernel/drivers/dash-name.ko", ["depends=c"]),
    "xzmod": ("kernel/fs/xzmod.ko.xz", ["depends=c"]),
    "zstmod": ("kernel/fs/zstmod.ko.zst", ["depends=xzmod"]),
    "gzmod": ("kernel/fs/gzmod.ko.gz", []),
    "other": ("kernel/drivers/other.ko", ["vermagic=5.10.0-other SMP mod_unload"]),
    "virtio_blk": ("kernel/drivers/block/virtio_blk.ko", ["depends=c"]),
    # firmware reached through symlinks (see test_firmware_symlinks)
    "fw": ("kernel/drivers/fw.ko", [f"firmware=fw/{n}" for n in (
        "rel.bin", "abs.bin", "dirlink/x.bin", "compressed.bin", "escape.bin",
        "escape-abs.bin", "escape-dir/x.bin", "loop.bin", "dangling.bin")]),
}


def module_object(path: Path, strings: list[str]) -> bytes:
    """A relocatable ELF whose .modinfo holds `strings` (what modpost leaves in a .ko)."""
    lines = [f'__attribute__((section(".modinfo"), used, aligned(1))) '
             f'static const char m{i}[] = "{s}";' for i, s in enumerate(
                 [*strings, f"vermagic={KVER} SMP mod_unload"] if not any(
                     s.startswith("vermagic=") for s in strings) else strings)]
    src = path.with_suffix(".c")
    src.write_text("\n".join(lines) + "\nint onix_test_symbol;\n")
    subprocess.run(["gcc", "-c", "-o", path, src], check=True)
    src.unlink()
    return path.read_bytes()


@pytest.fixture(scope="session")
def fake_objects(tmp_path_factory) -> dict[str, bytes]:
    """The plain ELF bytes of every fake module (compiled once per session)."""
    d = tmp_path_factory.mktemp("modobjs")
    return {name: module_object(d / f"{name}.o", strings)
            for name, (_rel, strings) in FAKE_MODULES.items()}


@pytest.fixture(scope="session")
def static_tools(tmp_path_factory) -> dict[str, Path]:
    """Tiny static and dynamic ELF executables to stand in for busybox and the helper."""
    d = tmp_path_factory.mktemp("tools")
    src = d / "t.c"
    src.write_text("int main(void) { return 0; }\n")
    subprocess.run(["gcc", "-static", "-Os", "-o", d / "static", src], check=True)
    subprocess.run(["gcc", "-Os", "-o", d / "dynamic", src], check=True)
    subprocess.run(["gcc", "-static-pie", "-Os", "-o", d / "static-pie", src], check=True)
    return {"static": d / "static", "dynamic": d / "dynamic", "static-pie": d / "static-pie"}


def make_usr(root: Path, objects: dict[str, bytes], tools: dict[str, Path], *,
             config: str | None = "CONFIG_RD_ZSTD=y\nCONFIG_RD_GZIP=y\n") -> Path:
    """A state's usr tree with a fake kernel, a static busybox and exchange helper."""
    usr = root / "usr"
    moddir = usr / "lib" / "modules" / KVER
    for name, (rel, _strings) in FAKE_MODULES.items():
        p = moddir / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        data = objects[name]
        if rel.endswith(".xz"):
            data = lzma.compress(data)
        elif rel.endswith(".zst"):
            data = zstandard.ZstdCompressor().compress(data)
        elif rel.endswith(".gz"):
            data = gzip.compress(data)
        p.write_bytes(data)
    (moddir / "modules.builtin").write_text("kernel/fs/ext4/ext4.ko\nkernel/drivers/nvme.ko\n")
    kdir = usr / "lib" / "kernel" / KVER
    kdir.mkdir(parents=True)
    (kdir / "vmlinuz").write_bytes(b"not really a kernel")
    if config is not None:
        (kdir / "config").write_text(config)
    (usr / "bin").mkdir()
    shutil.copyfile(tools["static"], usr / "bin" / "busybox")
    (usr / "lib" / "onix").mkdir()
    shutil.copyfile(tools["static"], usr / "lib" / "onix" / "exchange")
    fw = usr / "lib" / "firmware"
    (fw / "vendor").mkdir(parents=True)
    (fw / "vendor" / "h.bin").write_bytes(b"firmware one")
    (fw / "h2.bin.zst").write_bytes(zstandard.ZstdCompressor().compress(b"firmware two"))
    return usr


@pytest.fixture
def usr(tmp_path: Path, fake_objects, static_tools) -> Path:
    return make_usr(tmp_path / "state", fake_objects, static_tools)


# -- cpio newc ------------------------------------------------------------------


def sample_entries() -> list[initrd.CpioEntry]:
    return [
        initrd.CpioEntry("bin", stat.S_IFDIR | 0o755, nlink=2, ino=1),
        initrd.CpioEntry("bin/a", stat.S_IFREG | 0o755, b"x" * 5, ino=2),
        initrd.CpioEntry("bin/sh", stat.S_IFLNK | 0o777, b"a", ino=3),
        initrd.CpioEntry("dev", stat.S_IFDIR | 0o755, nlink=2, ino=4),
        initrd.CpioEntry("dev/console", stat.S_IFCHR | 0o600, ino=5, rdevmajor=5, rdevminor=1),
        initrd.CpioEntry("empty", stat.S_IFREG | 0o644, b"", ino=6),
        initrd.CpioEntry("odd-name-len", stat.S_IFREG | 0o600, b"1234567", ino=7),
    ]


def test_cpio_round_trip_and_bounds() -> None:
    entries = sample_entries()
    data = initrd.pack_cpio(entries)
    assert len(data) % 512 == 0 and data.startswith(b"070701")
    assert initrd.unpack_cpio(data) == entries
    assert initrd.read(data) == entries
    assert initrd.read(gzip.compress(data)) == entries
    assert initrd.read(zstandard.ZstdCompressor().compress(data)) == entries
    with pytest.raises(OnixError, match=r"truncated|runs past|ends inside"):
        initrd.unpack_cpio(data[:150])
    with pytest.raises(OnixError, match="magic"):
        initrd.unpack_cpio(b"070707" + data[6:])
    # a name size that points past the end is refused, not read out of bounds
    bad = bytearray(data)
    bad[94:102] = b"FFFFFFF0"
    with pytest.raises(OnixError):
        initrd.unpack_cpio(bytes(bad))


def test_image_unpacks_with_gnu_cpio_and_zstd(tmp_path: Path, usr: Path) -> None:
    img = initrd.build(usr=usr, kver=KVER)
    assert img.compression == "zstd" and img.data.startswith(initrd.ZSTD_MAGIC)
    (tmp_path / "i.img").write_bytes(img.data)
    cpio = subprocess.run(["zstd", "-d", "-c", tmp_path / "i.img"], check=True,
                          capture_output=True).stdout
    assert cpio == initrd.decompress(img.data)
    out = tmp_path / "x"
    out.mkdir()
    # device nodes need root to mknod; they are checked through the listing instead
    subprocess.run(["cpio", "-idm", "--quiet", "--no-absolute-filenames", "--nonmatching",
                    "dev/*"], input=cpio, cwd=out, check=True)
    entries = initrd.read(img.data)
    for e in entries:
        p = out / e.name
        if e.name.startswith("dev/"):
            continue
        st = p.lstat()
        assert st.st_mode == e.mode, e.name
        if e.is_file:
            assert p.read_bytes() == e.data, e.name
        elif e.is_symlink:
            assert os.readlink(p) == e.target
    listing = subprocess.run(["cpio", "-tv", "--quiet"], input=cpio, check=True,
                             capture_output=True).stdout.decode().splitlines()
    devs = sorted(line.split()[-1] for line in listing if line.startswith("c"))
    assert devs == ["dev/console", "dev/null"]
    console = next(line for line in listing if line.endswith("dev/console"))
    assert "5," in console and "root" in console


def test_archive_layout(usr: Path) -> None:
    img = initrd.build(usr=usr, kver=KVER)
    entries = initrd.read(img.data)
    names = [e.name for e in entries]
    assert names == sorted(names) and len(set(names)) == len(names)
    assert [e.ino for e in entries] == list(range(1, len(entries) + 1))
    assert all(e.uid == 0 and e.gid == 0 and e.mtime == 0 for e in entries)
    by = {e.name: e for e in entries}
    for name in names:  # every parent is an entry, and comes first
        parent = name.rpartition("/")[0]
        assert not parent or (by[parent].is_dir and names.index(parent) < names.index(name))
    assert by["init"].mode == stat.S_IFREG | 0o755
    assert by["init"].data == INIT.read_bytes()
    assert by["bin/sh"].target == "busybox" and by["bin/switch_root"].target == "busybox"
    assert by["bin/onix-exchange"].mode == stat.S_IFREG | 0o755
    assert (by["dev/console"].rdevmajor, by["dev/console"].rdevminor) == (5, 1)
    assert (by["dev/null"].rdevmajor, by["dev/null"].rdevminor) == (1, 3)
    for d in ("dev", "proc", "sys", "run", "sysroot", "tmp", "etc"):
        assert by[d].is_dir
    order = by[f"lib/modules/{KVER}/onix.modules"].data.decode().split()
    assert order == ["kernel/lib/c.ko", "kernel/drivers/block/virtio_blk.ko"]
    for rel in order:
        assert f"lib/modules/{KVER}/{rel}" in by
    info = dict(line.split("=", 1) for line in by["etc/onix-initrd"].data.decode().splitlines())
    assert info["format"] == "1" and info["kver"] == KVER
    assert info["modules"] == "c,virtio_blk" and info["builtin"] == "nvme,ext4"
    assert "virtio_pci" in info["absent"].split(",")
    assert img.modules == ["c", "virtio_blk"] and img.builtin == ["nvme", "ext4"]


def test_state_extras_init_modules_and_firmware(usr: Path, fake_objects) -> None:
    (usr / "lib/onix/initrd").mkdir(parents=True)
    (usr / "lib/onix/initrd/init").write_text("#!/bin/sh\necho state init\n")
    (usr / "lib/onix/initrd/modules").write_text("# extra\nh\nzstmod  # compressed\ngzmod\n")
    img = initrd.build(usr=usr, kver=KVER)
    by = {e.name: e for e in initrd.read(img.data)}
    assert by["init"].data == b"#!/bin/sh\necho state init\n"
    # compressed modules go in plain, as the ELF they were compressed from
    m = f"lib/modules/{KVER}/kernel/fs"
    assert by[f"{m}/zstmod.ko"].data == fake_objects["zstmod"]
    assert by[f"{m}/xzmod.ko"].data == fake_objects["xzmod"]
    assert by[f"{m}/gzmod.ko"].data == fake_objects["gzmod"]
    assert not any(n.endswith((".xz", ".zst", ".gz")) for n in by if "/modules/" in n)
    assert img.modules == ["c", "virtio_blk", "h", "xzmod", "zstmod", "gzmod"]
    # firmware: included as shipped (the .zst stays compressed), missing ones listed
    assert img.firmware == ["h2.bin.zst", "vendor/h.bin"]
    assert img.firmware_missing == ["absent.bin"]
    assert by["lib/firmware/vendor/h.bin"].data == b"firmware one"
    assert "lib/firmware/h2.bin.zst" in by and by["lib/firmware/vendor"].is_dir


def test_deterministic_and_cached(tmp_path: Path, usr: Path, fake_objects,
                                  static_tools) -> None:
    one = initrd.build(usr=usr, kver=KVER)
    two = initrd.build(usr=usr, kver=KVER)
    assert one.data == two.data and one.digest == two.digest and one.key == two.key
    # another path, other mtimes: the same bytes (nothing records where or when)
    other = make_usr(tmp_path / "elsewhere", fake_objects, static_tools)
    os.utime(other / "bin" / "busybox", (1, 1))
    assert initrd.build(usr=other, kver=KVER).data == one.data

    cache = tmp_path / "cache"
    first = initrd.build(usr=usr, kver=KVER, cache_dir=cache)
    assert not first.cached and first.path == cache / f"{first.key}.img"
    assert first.path.read_bytes() == one.data
    again = initrd.build(usr=usr, kver=KVER, cache_dir=cache)
    assert again.cached and again.path == first.path and again.data == one.data
    assert [p.name for p in cache.iterdir()] == [first.path.name]  # no temp files left

    # one byte of one included module changes the key, the image and its digest
    mod = usr / "lib" / "modules" / KVER / "kernel" / "lib" / "c.ko"
    data = bytearray(mod.read_bytes())
    data[-1] ^= 0xFF
    mod.write_bytes(bytes(data))
    changed = initrd.build(usr=usr, kver=KVER, cache_dir=cache)
    assert not changed.cached and changed.key != first.key and changed.digest != first.digest


def test_compression_follows_kernel_config(tmp_path: Path, fake_objects, static_tools) -> None:
    cases = {"gzip": "CONFIG_RD_GZIP=y\n# CONFIG_RD_ZSTD is not set\n",
             "none": "CONFIG_RD_LZ4=y\n", "none-noconfig": None}
    for name, config in cases.items():
        u = make_usr(tmp_path / name, fake_objects, static_tools, config=config)
        img = initrd.build(usr=u, kver=KVER)
        if name == "gzip":
            assert img.compression == "gzip" and img.data[:2] == initrd.GZIP_MAGIC
            assert img.data[4:8] == bytes(4)  # gzip mtime 0
            assert not img.data[3] & 0x08  # FNAME not set: no file name recorded
            assert gzip.decompress(img.data)[:6] == b"070701"
        else:
            assert img.compression == "none" and img.data[:6] == b"070701"


def test_zstd_window_fits_the_kernel() -> None:
    data = os.urandom(1 << 16) * 300  # ~19 MiB: zstd would pick a larger window
    frame = zstandard.get_frame_parameters(initrd.compress(data, "zstd"))
    assert frame.window_size <= 8 << 20 and frame.content_size == len(data)
    assert frame.has_checksum


def test_helpers_must_be_static(usr: Path, static_tools) -> None:
    bb = usr / "bin" / "busybox"
    bb.unlink()
    with pytest.raises(OnixError) as e:
        initrd.build(usr=usr, kver=KVER)
    assert e.value.path == str(bb) and "static busybox" in e.value.message
    assert "usr/bin/busybox" in e.value.hint
    shutil.copyfile(static_tools["dynamic"], bb)
    with pytest.raises(OnixError, match="dynamically linked") as e:
        initrd.build(usr=usr, kver=KVER)
    assert e.value.path == str(bb)
    bb.write_text("#!/bin/sh\n")
    with pytest.raises(OnixError, match="not an ELF"):
        initrd.build(usr=usr, kver=KVER)
    shutil.copyfile(static_tools["static-pie"], bb)  # static-pie: ET_DYN, but no loader
    initrd.build(usr=usr, kver=KVER)
    (usr / "lib/onix/exchange").unlink()
    with pytest.raises(OnixError, match="onix-exchange") as e:
        initrd.build(usr=usr, kver=KVER)
    assert e.value.path == str(usr / "lib/onix/exchange")


def test_kernel_without_modules_and_bad_kver(usr: Path) -> None:
    shutil.rmtree(usr / "lib" / "modules")
    img = initrd.build(usr=usr, kver=KVER)
    assert img.modules == [] and img.absent == list(initrd.DEFAULT_MODULES)
    by = {e.name: e for e in initrd.read(img.data)}
    assert by[f"lib/modules/{KVER}/onix.modules"].data == b""
    for bad in ("", "..", "a/b"):
        with pytest.raises(OnixError, match="not a kernel version"):
            initrd.build(usr=usr, kver=bad)
    with pytest.raises(OnixError, match=r"no kernel 1\.2\.3"):
        initrd.build(usr=usr, kver="1.2.3")
    with pytest.raises(OnixError, match="no modules for kernel"):
        kmod.resolve(usr=usr, kver=KVER, wanted=["a"])


# -- symlinks in a state tree ------------------------------------------------------
#
# The state's usr tree is a directory on the host while onix builds: a symlink in it
# resolves against the host, so onix must never follow one into its inputs.

_opened: list[str] | None = None  # paths passed to open() while recording, see opens()


def _audit(event: str, args: tuple) -> None:
    if _opened is not None and event == "open" and isinstance(args[0], (str, bytes, Path)):
        _opened.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)  # audit hooks cannot be removed; it records only inside opens()


class opens:
    """Record every path this process opens (builtins.open, os.open) inside the block."""

    def __enter__(self) -> list[str]:
        global _opened
        _opened = []
        return _opened

    def __exit__(self, *exc) -> None:
        global _opened
        _opened = None


def host_file(tmp_path: Path, static_tools) -> Path:
    """A file outside the state that would pass every check if it were followed."""
    secret = tmp_path / "host" / "secret"
    secret.parent.mkdir(exist_ok=True)
    shutil.copyfile(static_tools["static"], secret)
    return secret


def test_busybox_symlink_to_a_host_file_is_refused(tmp_path: Path, usr: Path,
                                                   static_tools) -> None:
    secret = host_file(tmp_path, static_tools)  # a valid static ELF: following would pass
    bb = usr / "bin" / "busybox"
    bb.unlink()
    bb.symlink_to(secret)
    cache = tmp_path / "cache"
    with opens() as opened, pytest.raises(OnixError) as e:
        initrd.build(usr=usr, kver=KVER, cache_dir=cache)
    assert e.value.message.startswith(f"usr/bin/busybox is a symlink to {secret};")
    assert e.value.path == str(bb)
    assert e.value.hint == "ship usr/bin/busybox as a regular file, not a symlink"
    # nothing was read through the link, and nothing was written
    assert not [o for o in opened if os.path.realpath(o) == str(secret)]
    assert not cache.exists()
    # a relative link inside usr is refused too: onix follows none at all
    bb.unlink()
    shutil.copyfile(static_tools["static"], usr / "bin" / "busybox.real")
    bb.symlink_to("busybox.real")
    with pytest.raises(OnixError, match=r"usr/bin/busybox is a symlink to busybox\.real;"):
        initrd.build(usr=usr, kver=KVER)


@pytest.mark.parametrize("rel", [
    "lib/onix/exchange", initrd.STATE_INIT, initrd.STATE_MODULES, f"lib/kernel/{KVER}/config",
    f"lib/modules/{KVER}/modules.dep", f"lib/modules/{KVER}/modules.builtin",
    f"lib/modules/{KVER}/kernel/lib/c.ko", f"lib/modules/{KVER}/kernel/fs/zstmod.ko.zst"])
def test_every_input_symlink_is_refused(tmp_path: Path, usr: Path, static_tools,
                                        rel: str) -> None:
    secret = host_file(tmp_path, static_tools)
    (usr / initrd.STATE_MODULES).parent.mkdir(parents=True, exist_ok=True)
    (usr / initrd.STATE_MODULES).write_text("zstmod\n")
    link = usr / rel
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(secret)
    with opens() as opened, pytest.raises(OnixError) as e:
        initrd.build(usr=usr, kver=KVER, cache_dir=tmp_path / "cache")
    assert e.value.message.startswith(f"usr/{rel} is a symlink to {secret};")
    assert e.value.path == str(link)
    assert e.value.hint == f"ship usr/{rel} as a regular file, not a symlink"
    assert not [o for o in opened if os.path.realpath(o) == str(secret)]


@pytest.mark.parametrize("rel", ["lib/kernel", f"lib/kernel/{KVER}", "lib/onix", "bin",
                                 "lib/modules", f"lib/modules/{KVER}/kernel"])
def test_symlinked_directory_on_the_way_is_refused(tmp_path: Path, usr: Path,
                                                   rel: str) -> None:
    host_dir = tmp_path / "host" / rel.replace("/", "_")
    host_dir.parent.mkdir(parents=True)
    shutil.move(usr / rel, host_dir)  # the same files, now outside the state
    (usr / rel).symlink_to(host_dir)
    with pytest.raises(OnixError) as e:
        initrd.build(usr=usr, kver=KVER)
    # the kernel's own directory is the last part checked; the others are on the way
    on_the_way = "" if rel == f"lib/kernel/{KVER}" else " (on the way to "
    assert e.value.message.startswith(f"usr/{rel} is a symlink to {host_dir}{on_the_way}")
    assert e.value.path == str(usr / rel)
    assert e.value.hint == f"ship usr/{rel} as a real directory, not a symlink"


def test_read_regular(tmp_path: Path) -> None:
    usr = tmp_path / "usr"
    (usr / "d").mkdir(parents=True)
    (usr / "d" / "f").write_bytes(b"bytes")
    os.mkfifo(usr / "d" / "fifo")
    assert safepath.read_regular(usr, "d/f") == b"bytes"
    assert safepath.is_regular(usr, "d/f") and safepath.is_directory(usr, "d")
    assert not safepath.is_regular(usr, "d") and not safepath.is_regular(usr, "d/nope")
    assert not safepath.is_directory(usr, "d/f/x") and safepath.lstat_below(usr, "nope/x") is None
    for missing in ("d/nope", "nope/f", "d/f/x"):  # gone, or a file where a dir should be
        with pytest.raises(FileNotFoundError):
            safepath.read_regular(usr, missing)
    for other in ("d", "d/fifo"):  # the FIFO is refused before it is opened (no hang)
        with pytest.raises(OnixError, match=f"usr/{other} is not a regular file"):
            safepath.read_regular(usr, other)
    for bad in ("", "/d/f", "d/../d/f", "d//f", "./d/f"):
        with pytest.raises(ValueError):
            safepath.read_regular(usr, bad)
    (usr / "l").symlink_to("d")
    for fn in (safepath.read_regular, safepath.is_regular, safepath.is_directory):
        with pytest.raises(OnixError, match="usr/l is a symlink to d"):
            fn(usr, "l/f")


def test_firmware_symlinks(tmp_path: Path, usr: Path) -> None:
    """Links inside lib/firmware are followed by onix itself; ones that leave it are not."""
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"the host's own file")
    fw = usr / "lib" / "firmware"
    (fw / "real").mkdir()
    (fw / "real" / "a.bin").write_bytes(b"real a")
    (fw / "real" / "x.bin").write_bytes(b"real x")
    (fw / "real" / "c.bin.zst").write_bytes(zstandard.ZstdCompressor().compress(b"c"))
    links = {
        "rel.bin": "../real/a.bin",
        "abs.bin": "/lib/firmware/real/a.bin",  # absolute: read inside usr/lib/firmware
        "dirlink": "/usr/lib/firmware/real",
        "compressed.bin": "../real/c.bin.zst",  # stored as fw/compressed.bin.zst
        "escape.bin": os.path.relpath(secret, fw / "fw"),  # a real path to the host file
        "escape-abs.bin": str(secret),
        "escape-dir": str(secret.parent),
        "loop.bin": "loop2.bin", "loop2.bin": "loop.bin",
        "dangling.bin": "../real/nope.bin",
    }
    (fw / "fw").mkdir()
    for name, target in links.items():
        (fw / "fw" / name).symlink_to(target)
    assert (fw / "fw" / "escape.bin").read_bytes() == secret.read_bytes()  # a real escape
    (usr / "lib/onix/initrd").mkdir(parents=True)
    (usr / "lib/onix/initrd/modules").write_text("fw\n")
    with opens() as opened:
        img = initrd.build(usr=usr, kver=KVER, cache_dir=tmp_path / "cache")
    assert not [o for o in opened if os.path.realpath(o) == str(secret)]
    assert img.firmware == ["fw/abs.bin", "fw/compressed.bin.zst", "fw/dirlink/x.bin",
                            "fw/rel.bin"]
    assert img.firmware_missing == ["fw/dangling.bin", "fw/escape-abs.bin",
                                    "fw/escape-dir/x.bin", "fw/escape.bin", "fw/loop.bin"]
    why = img.firmware_reasons
    assert set(why) == set(img.firmware_missing)
    assert why["fw/escape-abs.bin"] == (f"usr/lib/firmware/fw/escape-abs.bin is a symlink to "
                                        f"{secret}, outside usr/lib/firmware")
    assert why["fw/escape-dir/x.bin"].startswith("usr/lib/firmware/fw/escape-dir is a symlink")
    assert "leads out of usr/lib/firmware" in why["fw/escape.bin"]
    assert "more than 8 symlinks" in why["fw/loop.bin"]
    assert "dangling" in why["fw/dangling.bin"]
    cpio = initrd.decompress(img.data)
    assert secret.read_bytes() not in cpio
    by = {e.name: e for e in initrd.read(img.data)}
    # the target's bytes under the requested name, as a plain file (never a link)
    assert by["lib/firmware/fw/rel.bin"].data == b"real a" and by["lib/firmware/fw/rel.bin"].is_file
    assert by["lib/firmware/fw/abs.bin"].data == b"real a"
    assert by["lib/firmware/fw/dirlink/x.bin"].data == b"real x"
    assert by["lib/firmware/fw/compressed.bin.zst"].data == (fw / "real/c.bin.zst").read_bytes()
    assert not [e for e in by.values() if e.is_symlink and e.name.startswith("lib/firmware")]
    info = dict(line.split("=", 1) for line in by["etc/onix-initrd"].data.decode().splitlines())
    assert info["firmware_missing"].split(",") == img.firmware_missing
    # the key covers the bytes included: retargeting a link changes it
    (fw / "fw" / "rel.bin").unlink()
    (fw / "fw" / "rel.bin").symlink_to("../real/x.bin")
    again = initrd.build(usr=usr, kver=KVER, cache_dir=tmp_path / "cache")
    assert not again.cached and again.key != img.key
    assert {e.name: e for e in initrd.read(again.data)}["lib/firmware/fw/rel.bin"].data == \
        b"real x"
    # a symlinked firmware directory is left out as a whole, and the build goes on
    shutil.move(fw, tmp_path / "fw-elsewhere")
    fw.symlink_to(tmp_path / "fw-elsewhere")
    img = initrd.build(usr=usr, kver=KVER)
    assert img.firmware == [] and "fw/rel.bin" in img.firmware_missing
    assert img.firmware_reasons["fw/rel.bin"].startswith("usr/lib/firmware is a symlink")


# -- kmod ------------------------------------------------------------------------


def test_kmod_depends_softdeps_builtin_absent(usr: Path) -> None:
    r = kmod.resolve(usr=usr, kver=KVER, wanted=["a", "d", "ext4", "nosuch", "dash-name", "a"])
    # dependencies first; pre: softdeps before the module; post: ones and missing ones left out
    assert r.names == ["c", "b", "a", "e", "d", "dash_name"]
    assert r.builtin == ["ext4"] and r.absent == ["nosuch"]
    assert r.modules[-1].rel == "kernel/drivers/dash-name.ko"
    # firmware is what the included modules declare
    assert kmod.resolve(usr=usr, kver=KVER, wanted=["h"]).firmware == [
        "absent.bin", "h2.bin", "vendor/h.bin"]


def test_kmod_missing_dependency_is_an_error(usr: Path) -> None:
    with pytest.raises(OnixError, match="g depends on gone") as e:
        kmod.resolve(usr=usr, kver=KVER, wanted=["g"])
    assert e.value.path.endswith("kernel/drivers/g.ko")


def test_kmod_skips_header_links(tmp_path: Path, usr: Path, fake_objects) -> None:
    """build/ and source/ link to kernel headers (/usr/src/...): not searched, not an error."""
    headers = tmp_path / "host-headers"
    headers.mkdir()
    (headers / "a.ko").write_bytes(fake_objects["e"])  # would shadow module a if followed
    moddir = usr / "lib" / "modules" / KVER
    for name in ("build", "source"):
        (moddir / name).symlink_to(headers)
    assert kmod.resolve(usr=usr, kver=KVER, wanted=["a"]).names == ["c", "b", "a"]
    (moddir / "kernel" / "extra").symlink_to(headers)  # anywhere else: refused
    with pytest.raises(OnixError, match=f"usr/lib/modules/{KVER}/kernel/extra is a symlink"):
        kmod.resolve(usr=usr, kver=KVER, wanted=["a"])


def test_kmod_reads_only_what_it_needs(usr: Path) -> None:
    moddir = usr / "lib" / "modules" / KVER
    (moddir / "kernel" / "junk.ko").write_bytes(b"not an ELF file")
    assert kmod.resolve(usr=usr, kver=KVER, wanted=["a"]).names == ["c", "b", "a"]
    with pytest.raises(OnixError, match="not a kernel module"):
        kmod.resolve(usr=usr, kver=KVER, wanted=["junk"])
    with pytest.raises(OnixError, match=r"built for kernel 5\.10\.0-other"):
        kmod.resolve(usr=usr, kver=KVER, wanted=["other"])


def test_kmod_compressed_modules(usr: Path, fake_objects) -> None:
    r = kmod.resolve(usr=usr, kver=KVER, wanted=["zstmod", "gzmod"])
    assert r.names == ["c", "xzmod", "zstmod", "gzmod"]
    by = {m.name: m for m in r.modules}
    assert by["zstmod"].rel == "kernel/fs/zstmod.ko.zst"
    assert by["zstmod"].initrd_rel == "kernel/fs/zstmod.ko"
    assert by["xzmod"].read() == fake_objects["xzmod"]


def test_kmod_uses_modules_dep(usr: Path) -> None:
    moddir = usr / "lib" / "modules" / KVER
    # modules.dep disagrees with .modinfo on purpose: it is the one that counts
    (moddir / "modules.dep").write_text(
        "kernel/drivers/a.ko: kernel/drivers/e.ko kernel/lib/c.ko\n"
        "kernel/drivers/e.ko:\n"
        "kernel/lib/c.ko:\n"
        f"/lib/modules/{KVER}/kernel/drivers/b.ko: /lib/modules/{KVER}/kernel/drivers/f.ko\n"
        "kernel/drivers/g.ko: kernel/drivers/missing.ko\n")
    assert kmod.resolve(usr=usr, kver=KVER, wanted=["a"]).names == ["c", "e", "a"]
    assert kmod.resolve(usr=usr, kver=KVER, wanted=["b"]).names == ["f", "b"]
    # a module not in modules.dep falls back to its .modinfo
    assert kmod.resolve(usr=usr, kver=KVER, wanted=["dash_name"]).names == ["c", "dash_name"]
    with pytest.raises(OnixError, match="missing") as e:
        kmod.resolve(usr=usr, kver=KVER, wanted=["g"])
    assert e.value.path == str(moddir / "kernel/drivers/missing.ko")


def test_kmod_parse_modinfo() -> None:
    info = kmod.parse_modinfo(b"license=GPL\0depends=a,b-c\0softdep=pre: x y post: z\0"
                              b"softdep=gcm\0firmware=f.bin\0vermagic=6.1 SMP\0\0junk")
    assert info.depends == ("a", "b_c") and info.softdep_pre == ("x", "y")
    assert info.firmware == ("f.bin",) and info.vermagic == "6.1 SMP"


# -- the real Debian cloud kernel -------------------------------------------------


@pytest.mark.parametrize("depmod", [False, True], ids=["modinfo", "modules.dep"])
def test_real_kernel_closure(depmod: bool) -> None:
    tree, kver = bootkit.kernel_tree(depmod=depmod)
    usr = tree / "usr"
    assert (usr / "lib/modules" / kver / "modules.dep").exists() == depmod
    r = kmod.resolve(usr=usr, kver=kver, wanted=initrd.wanted_modules(usr=usr))
    names = r.names
    for need in ("virtio", "virtio_ring", "virtio_pci_modern_dev", "virtio_pci", "virtio_blk",
                 "scsi_mod", "sd_mod", "virtio_scsi", "fat", "vfat"):
        assert need in names
    for mod, dep in (("virtio_pci", "virtio_pci_modern_dev"), ("virtio_blk", "virtio"),
                     ("virtio_blk", "virtio_ring"), ("sd_mod", "scsi_mod"), ("vfat", "fat")):
        assert names.index(dep) < names.index(mod)
    assert "ext4" in r.builtin and "nvme" in r.builtin and "ahci" in r.absent
    cfg = initrd.kernel_config(usr=usr, kver=kver)
    assert initrd.choose_compression(cfg) == "zstd"


def test_real_kernel_same_closure_both_ways() -> None:
    plain, kver = bootkit.kernel_tree()
    dep, _ = bootkit.kernel_tree(depmod=True)
    wanted = initrd.DEFAULT_MODULES
    a = kmod.resolve(usr=plain / "usr", kver=kver, wanted=wanted)
    b = kmod.resolve(usr=dep / "usr", kver=kver, wanted=wanted)
    assert sorted(a.names) == sorted(b.names) and a.builtin == b.builtin


# -- init and onix-exchange.c (onix/boot/data) ------------------------------------------


def test_init_is_valid_sh() -> None:
    bb = bootkit.busybox_static()
    subprocess.run([bb, "sh", "-n", INIT], check=True)
    assert os.access(INIT, os.X_OK)
    # every applet init calls is in the archive (a missing one fails only at boot)
    text = INIT.read_text()
    for applet in ("findfs", "insmod", "switch_root", "od", "grep", "tr", "umount"):
        assert applet in text and applet in initrd.APPLETS


# Names in command position that are the initrd's own programs, not applets
INITRD_PROGRAMS = ("busybox", "onix-exchange")
SH_KEYWORDS = {"if", "then", "else", "elif", "fi", "for", "in", "do", "done", "case", "esac",
               "while", "until", "!", "{", "}"}


def shell_skeleton(text: str) -> str:
    """The script with comments dropped and quoted or expanded text reduced to `Q`,
    keeping the commands inside $(...), also inside double quotes. A small lexer that is
    enough for the init, not a general sh parser."""
    out: list[str] = []
    stack: list[list] = [["sh", 0]]  # "sh" (a paren depth for $( ... )) or '"'
    i, n = 0, len(text)

    def skip_to_match(i: int, opening: str, closing: str) -> int:
        """From an opening bracket to just past its match: ${...} and $((...))."""
        depth = 0
        while i < n:
            depth += {opening: 1, closing: -1}.get(text[i], 0)
            i += 1
            if depth == 0:
                return i
        return i

    while i < n:
        c, top = text[i], stack[-1]
        two = text[i:i + 2]
        if c == "\\":
            out.append(" " if text[i + 1:i + 2] == "\n" else "Q")
            i += 2
        elif two == "$(" and text[i + 2:i + 3] == "(":
            out.append("Q")
            i = skip_to_match(i + 1, "(", ")")
        elif two == "$(":
            out.append(" $( ")
            stack.append(["sh", 0])
            i += 2
        elif two == "${":
            out.append("Q")
            i = skip_to_match(i + 1, "{", "}")
        elif c == "$":  # $name, or $1 $# $$ $? ...
            out.append("Q")
            m = re.compile(r"[A-Za-z_]\w*|.").match(text, i + 1)
            i = m.end() if m else i + 1
        elif top[0] == '"':
            if c == '"':
                stack.pop()
            i += 1
        elif c == '"':
            out.append("Q")
            stack.append(['"', 0])
            i += 1
        elif c == "'":
            out.append("Q")
            i = text.index("'", i + 1) + 1
        elif c == "#" and (not out or out[-1][-1:] in (" ", "\n", "\t", ";")):
            i = text.find("\n", i) if "\n" in text[i:] else n
        elif c == "(" and len(stack) > 1:
            top[1] += 1
            out.append(c)
            i += 1
        elif c == ")" and len(stack) > 1 and top[1] == 0:
            stack.pop()
            out.append(" ) ")
            i += 1
        else:
            if c == ")" and len(stack) > 1:
                top[1] -= 1
            out.append(c)
            i += 1
    return "".join(out)


def init_commands(text: str) -> tuple[set[str], set[str]]:
    """(names in command position, functions the script defines) of a sh script."""
    skeleton = shell_skeleton(text)
    functions = set(re.findall(r"^\s*([A-Za-z_]\w*)\(\)", skeleton, re.M))
    # words after which a command comes count as command separators (the word itself
    # is then found as a command too: keywords are dropped below, exec is a builtin)
    skeleton = re.sub(r"(?<![^\s;])(then|do|else|elif|if|while|until|exec|!)(?=\s)",
                      r"; \1 ;", skeleton)
    # case patterns (`UUID=*|LABEL=*)`, `ro|rw)`) start a line or follow `in` or `;;`,
    # and end in an unmatched )
    skeleton = re.sub(r"(^|\bin[ \t]|;;)[ \t]*[^\s();|&]+(?:\|[^\s();|&]+)*\)", r"\1;",
                      skeleton, flags=re.M)
    # a command starts a line or follows ; & | { or $(, after any assignments (x=...)
    words = re.findall(r"(?:^|[;&|{]|\$\()[ \t]*(?:\w+=\S*[ \t]+)*"
                       r"([A-Za-z_\[][\w.\[-]*)(?=[\s;)|&]|$)", skeleton, re.M)
    return {w for w in words if w not in SH_KEYWORDS}, functions


def ash_builtins(names: set[str]) -> set[str]:
    """Which names the bootkit busybox's ash runs as builtins (not applets, not PATH)."""
    script = "; ".join(f"type {shlex.quote(n)}" for n in sorted(names))
    out = subprocess.run([bootkit.busybox_static(), "sh", "-c", script],
                         env={"PATH": "/nonexistent"}, capture_output=True, text=True).stdout
    return {line.split(" is ", 1)[0] for line in out.splitlines()
            if line.endswith("shell builtin")}


def test_init_uses_only_builtins_and_applets() -> None:
    """Every command the init runs is an ash builtin, an APPLETS link or our own program:
    anything else exists on the host that runs the tests, but not in the initrd."""
    # the lexer finds commands in $(...), inside "...", after ! && | and in case arms,
    # and not words inside strings, assignments or case patterns
    names, _ = init_commands('x=$(foo "a; b" | bar)\nif ! baz; then qux; fi\n'
                             'y=1 z=2 corge\ncase $x in a|b) quux ;; *) ;; esac\n'
                             'echo "$(grault)" > f && garply || waldo\n')
    assert names == {"foo", "bar", "baz", "qux", "corge", "quux", "echo", "grault", "garply",
                     "waldo"}
    names, functions = init_commands(INIT.read_text())
    assert {"exchange_state", "fatal", "find_partuuid", "find_root", "hexbytes",
            "load_modules", "main", "msg", "partuuid_of"} == functions
    assert functions - {"find_partuuid"} <= names  # called (find_partuuid via find_root)
    commands = names - functions
    assert {"onix-exchange", "switch_root", "findfs", "insmod", "od", "tr", "printf", "[",
            "grep", "mv", "rm", "cat", "sed", "uname", "umount", "mount", "sync", "sh",
            "reboot", "sleep", "read", "set", "exec"} <= commands
    # printf and [ are ash builtins in this busybox, as the init assumes (no applet link)
    builtins = ash_builtins(commands | {"test"})
    assert {"printf", "[", "test", "echo", "read", "cd", "set", "exec"} <= builtins
    unknown = commands - builtins - set(initrd.APPLETS) - set(INITRD_PROGRAMS)
    assert not unknown, f"the init runs {sorted(unknown)}: add them to initrd.APPLETS"


def applet_path(tmp_path: Path) -> str:
    """A PATH holding only busybox applets and onix-exchange, like the initrd's /bin."""
    d = tmp_path / "bin"
    if not d.is_dir():
        d.mkdir()
        for applet in initrd.APPLETS:
            os.symlink(bootkit.busybox_static(), d / applet)
        os.symlink(bootkit.exchange_helper(), d / "onix-exchange")
    return str(d)


def run_init_function(tmp_path: Path, script: str) -> str:
    env = {"PATH": applet_path(tmp_path), "ONIX_INIT_LIB": "1"}
    r = subprocess.run([bootkit.busybox_static(), "sh", "-c",
                        f". {INIT}; {script}"], env=env, check=True,
                       capture_output=True, text=True)
    return r.stdout


FSTX1 = "1-abcd"


def fake_sysroot(top: Path) -> Path:
    """A root with state 2 live and state 1 archived, as the initrd finds it mounted."""
    root = top / "sysroot"
    (root / "usr").mkdir(parents=True)
    (root / "usr" / ".stateID").write_text("2\n")
    old = root / ".onix" / "states" / "1" / "usr"
    (old / "lib").mkdir(parents=True)
    (old / ".stateID").write_text("1\n")
    (old / "lib" / "os-release").write_text(f"ONIX_STATE=1\nONIX_FSTX={FSTX1}\n")
    return root


def exchange(tmp_path: Path, root: Path) -> str:
    return run_init_function(tmp_path, f"sysroot={shlex.quote(str(root))}; fstx={FSTX1}; "
                                       "exchange_state")


def test_init_exchange_state(tmp_path: Path) -> None:
    root = fake_sysroot(tmp_path / "ok")
    assert exchange(tmp_path, root) == "onix: activated state 1 (was 2)\n"
    assert (root / "usr" / ".stateID").read_text() == "1\n"
    assert (root / ".onix" / "boot-exchange").read_text() == f"from=2\nto=1\nfstx={FSTX1}\n"
    assert exchange(tmp_path, root) == ""  # state 1 is live now: nothing to do


def test_init_does_not_exchange_during_an_onix_transaction(tmp_path: Path) -> None:
    root = fake_sysroot(tmp_path)
    (root / ".onix" / "txn-running").write_text("")
    assert exchange(tmp_path, root) == ("onix: an interrupted onix transaction is pending; "
                                        "booting /usr as it is so that onix can finish it\n")
    assert (root / "usr" / ".stateID").read_text() == "2\n"
    assert not (root / ".onix" / "boot-exchange").exists()


@pytest.mark.parametrize("link", ["usr", ".onix", ".onix/states", ".onix/states/1",
                                  ".onix/states/1/usr"])
def test_init_refuses_symlinked_trees(tmp_path: Path, link: str) -> None:
    """The same root as test_init_exchange_state, with one directory moved behind a link."""
    root = fake_sysroot(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    shutil.move(root / link, elsewhere)
    (root / link).symlink_to(elsewhere)
    assert exchange(tmp_path, root) == (f"onix: {root}/{link} is a symlink; onix exchanges only "
                                        "real directories; booting state 2\n")
    assert (root / "usr" / ".stateID").read_text() == "2\n"
    assert (root / link).is_symlink() and (elsewhere / ".stateID").exists() == link.endswith(
        "usr")


def test_init_reads_partuuids(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "usr").mkdir(parents=True)
    gpt = tmp_path / "gpt.img"
    partuuid, offset = bootkit.make_gpt_disk(src=src, img=gpt, size="8M")
    assert offset == 1 << 20
    # an MBR disk signature gives <signature>-<partition number, 2 hex digits>
    mbr = tmp_path / "mbr.img"
    mbr.write_bytes(bytes(440) + struct.pack("<I", 0x3A029C68) + bytes(68))
    out = run_init_function(tmp_path, f"partuuid_of {gpt} 1; partuuid_of {mbr} 2")
    assert out.split() == [partuuid, "3a029c68-02"]
    assert uuid.UUID(partuuid)


def test_exchange_helper(tmp_path: Path) -> None:
    helper = bootkit.exchange_helper()
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "in-a").touch()
    (b / "in-b").touch()
    r = subprocess.run([helper, a, b], capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == ""
    assert (a / "in-b").exists() and (b / "in-a").exists()
    r = subprocess.run([helper, a, tmp_path / "missing"], capture_output=True, text=True)
    assert r.returncode == 1 and "No such file or directory" in r.stderr
    assert (a / "in-b").exists()
    # a symlink (or a file) is never exchanged: /usr would become a link to anywhere
    (tmp_path / "link").symlink_to(b)
    (tmp_path / "file").touch()
    for other, why in (("link", "is a symlink"), ("file", "is not a directory")):
        for args in ([a, tmp_path / other], [tmp_path / other, a]):
            r = subprocess.run([helper, *args], capture_output=True, text=True)
            assert r.returncode == 1 and f"{tmp_path / other} {why}" in r.stderr
    assert (tmp_path / "link").is_symlink() and (a / "in-b").exists()
    assert subprocess.run([helper], capture_output=True).returncode == 2
    initrd.check_static(helper, rel="lib/onix/exchange", what="the helper")
