"""The initrd builder (onix.initrd), module resolution (onix.kmod) and boot/init, no QEMU.

Small fake kernels are made here: tiny ELF objects with a .modinfo section (gcc -c),
static stand-in helpers (gcc -static). The real Debian cloud kernel comes from
tests/bootkit.py and is cached after the first download.
"""

from __future__ import annotations

import gzip
import lzma
import os
import shutil
import stat
import struct
import subprocess
import uuid
from pathlib import Path

import bootkit
import pytest
import zstandard

from onix import initrd, kmod
from onix.errors import OnixError

KVER = "6.9.0-test"
REPO = Path(__file__).resolve().parent.parent

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
    assert by["init"].data == (REPO / "boot" / "init").read_bytes()
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


# -- boot/init and boot/onix-exchange.c ------------------------------------------------


def test_init_is_valid_sh() -> None:
    bb = bootkit.busybox_static()
    subprocess.run([bb, "sh", "-n", REPO / "boot" / "init"], check=True)
    assert os.access(REPO / "boot" / "init", os.X_OK)
    # every applet init calls is in the archive (a missing one fails only at boot)
    text = (REPO / "boot" / "init").read_text()
    for applet in ("findfs", "insmod", "switch_root", "od", "grep", "tr", "umount"):
        assert applet in text and applet in initrd.APPLETS


def applet_path(tmp_path: Path) -> str:
    """A PATH holding only busybox applets, like the initrd's /bin."""
    d = tmp_path / "bin"
    d.mkdir()
    for applet in initrd.APPLETS:
        os.symlink(bootkit.busybox_static(), d / applet)
    return str(d)


def run_init_function(tmp_path: Path, script: str) -> str:
    env = {"PATH": applet_path(tmp_path), "ONIX_INIT_LIB": "1"}
    r = subprocess.run([bootkit.busybox_static(), "sh", "-c",
                        f". {REPO / 'boot' / 'init'}; {script}"], env=env, check=True,
                       capture_output=True, text=True)
    return r.stdout


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
    assert subprocess.run([helper], capture_output=True).returncode == 2
    initrd.check_static(helper, rel="lib/onix/exchange", what="the helper")
