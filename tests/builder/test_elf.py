"""ELF analysis and debug splitting on real objects compiled here with gcc and musl-gcc."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import zlib
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from onix.build.elf import Analysis, analyse, read_elf
from onix.build.strip import split_debug
from onix.core import tools
from onix.core.proc import run

X = "x86_64"
LIBC = f"soname(libc.so.6({X}))"
GLIBC_LOADER = "/usr/lib64/ld-linux-x86-64.so.2"

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")
needs_musl = pytest.mark.skipif(shutil.which("musl-gcc") is None,
                                reason="musl-gcc is not installed (Debian package musl-tools)")

LIB_C = """#include <stdlib.h>
int foo(void) { return getenv("ONIX_TEST_NOPE") ? 1 : 42; }
"""
MAIN_C = """#include <stdio.h>
int foo(void);
int main(void) { printf("foo=%d\\n", foo()); return 0; }
"""
HELLO_C = """#include <stdio.h>
int main(void) { puts("hello"); return 0; }
"""


def cc(tmp: Path, source: str, out: Path, *args: str, compiler: str = "gcc") -> Path:
    src = tmp / f"{out.name}.c"
    src.write_text(source)
    out.parent.mkdir(parents=True, exist_ok=True)
    run([compiler, "-O1", "-o", out, src, *args])  # libraries after the source
    return out


def make_lib(tmp: Path, tree: Path, *, soname: str = "libfoo.so.1",
             extra: tuple[str, ...] = ()) -> Path:
    """usr/lib/libfoo.so.1.0.0 with its soname, plus the libfoo.so.1 and libfoo.so links."""
    lib = cc(tmp, LIB_C, tree / "usr/lib" / f"{soname}.0.0", "-g", "-shared", "-fPIC",
             f"-Wl,-soname,{soname}", *extra)
    os.symlink(lib.name, tree / "usr/lib" / soname)
    os.symlink(soname, tree / "usr/lib" / (soname.split(".so")[0] + ".so"))
    return lib


def make_main(tmp: Path, tree: Path, libdir: Path, *, name: str = "usefoo",
              extra: tuple[str, ...] = ()) -> Path:
    """usr/bin/<name>: a glibc PIE linking libfoo, RUNPATH $ORIGIN/../lib."""
    return cc(tmp, MAIN_C, tree / "usr/bin" / name, "-g", f"-L{libdir}", "-lfoo",
              "-Wl,--enable-new-dtags", "-Wl,-rpath,$ORIGIN/../lib", *extra)


@pytest.fixture
def foo_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    make_lib(tmp_path, tree)
    make_main(tmp_path, tree, tree / "usr/lib")
    return tree


# --- read_elf ---------------------------------------------------------------------------

@needs_gcc
def test_read_elf_library_and_binary(foo_tree: Path) -> None:
    lib = read_elf(foo_tree / "usr/lib/libfoo.so.1.0.0", rel="usr/lib/libfoo.so.1.0.0")
    assert lib is not None
    assert (lib.path, lib.elf_type, lib.machine, lib.soname) == (
        "usr/lib/libfoo.so.1.0.0", "DYN", X, "libfoo.so.1")
    assert lib.interp is None and lib.has_debug and lib.has_symtab
    assert lib.build_id is not None and len(lib.build_id) == 40
    assert "libc.so.6" in lib.needed and not lib.static

    exe = read_elf(foo_tree / "usr/bin/usefoo", rel="usr/bin/usefoo")
    assert exe is not None
    assert exe.soname is None
    assert exe.needed[0] == "libfoo.so.1" and "libc.so.6" in exe.needed
    assert exe.runpath == ("$ORIGIN/../lib",) and exe.rpath == ()
    assert exe.interp == "/lib64/ld-linux-x86-64.so.2"
    assert exe.build_id != lib.build_id and not exe.static


@needs_gcc
def test_read_elf_rpath_without_new_dtags(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    make_lib(tmp_path, tree)
    make_main(tmp_path, tree, tree / "usr/lib", extra=("-Wl,--disable-new-dtags",))
    exe = read_elf(tree / "usr/bin/usefoo", rel="usr/bin/usefoo")
    assert exe is not None
    assert exe.rpath == ("$ORIGIN/../lib",) and exe.runpath == ()
    # DT_RPATH is searched when there is no DT_RUNPATH: libfoo is found in the tree.
    assert f"soname(libfoo.so.1({X}))" not in analyse(tree).depends


def test_read_elf_not_elf(tmp_path: Path) -> None:
    (tmp_path / "script").write_text("#!/bin/sh\necho hi\n")
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "garbage").write_bytes(b"\x7fELF" + b"\xff" * 60)  # magic, then nonsense
    os.mkfifo(tmp_path / "fifo")  # opening it must not hang
    os.symlink("script", tmp_path / "link")
    (tmp_path / "dir").mkdir()
    for name in ("script", "empty", "garbage", "fifo", "link", "dir"):
        assert read_elf(tmp_path / name, rel=name) is None, name


# --- analyse ----------------------------------------------------------------------------

@needs_gcc
def test_runpath_origin_resolves_inside_tree(foo_tree: Path) -> None:
    a = analyse(foo_tree)
    assert isinstance(a, Analysis)
    assert f"soname(libfoo.so.1({X}))" in a.provides
    assert "binary(usefoo)" in a.provides
    # libfoo is met by the tree through $ORIGIN/../lib: no dependency on it
    assert f"soname(libfoo.so.1({X}))" not in a.depends
    assert a.depends == sorted(set(a.depends))
    assert LIBC in a.depends
    assert f"interpreter({GLIBC_LOADER}({X}))" in a.depends
    assert a.reasons[LIBC] == ["usr/bin/usefoo", "usr/lib/libfoo.so.1.0.0"]
    assert a.reasons[f"interpreter({GLIBC_LOADER}({X}))"] == ["usr/bin/usefoo"]
    assert set(a.files) == {"usr/bin/usefoo", "usr/lib/libfoo.so.1.0.0"}  # symlinks are not
    assert set(a.reasons) == set(a.depends)


@needs_gcc
@pytest.mark.parametrize("runpath", ["$ORIGIN/../../lib/onix-private",
                                     "${ORIGIN}/../../lib/onix-private",
                                     "/nowhere:/usr/lib/onix-private",
                                     "/lib/onix-private"])  # merged-usr: /usr/lib/...
def test_runpath_forms_resolve_in_private_dir(tmp_path: Path, runpath: str) -> None:
    # The library is outside every default directory: only RUNPATH can find it.
    tree = tmp_path / "tree"
    private = tree / "usr/lib/onix-private"
    cc(tmp_path, LIB_C, private / "libfoo.so.1", "-shared", "-fPIC", "-Wl,-soname,libfoo.so.1")
    cc(tmp_path, MAIN_C, tree / "usr/libexec/onix/tool", f"-L{private}", "-l:libfoo.so.1",
       "-Wl,--enable-new-dtags", f"-Wl,-rpath,{runpath}")
    a = analyse(tree)
    assert a.files["usr/libexec/onix/tool"].runpath == tuple(runpath.split(":"))
    assert f"soname(libfoo.so.1({X}))" in a.provides
    assert f"soname(libfoo.so.1({X}))" not in a.depends

    # Same binary, RUNPATH pointing where the library is not: a dependency.
    cc(tmp_path, MAIN_C, tree / "usr/libexec/onix/lost", f"-L{private}", "-l:libfoo.so.1",
       "-Wl,--enable-new-dtags", "-Wl,-rpath,$ORIGIN/../lib")
    lost = analyse(tree, paths=["usr/libexec/onix/lost", "usr/lib/onix-private/libfoo.so.1"])
    # provided by the same split, so not a dependency ...
    assert lost.depends == [f"interpreter({GLIBC_LOADER}({X}))", LIBC]
    lost = analyse(tree, paths=["usr/libexec/onix/lost"])
    assert f"soname(libfoo.so.1({X}))" in lost.depends  # ... and unmet without it


@needs_gcc
def test_missing_library_becomes_soname_dependency(tmp_path: Path) -> None:
    build = tmp_path / "build"
    make_lib(tmp_path, build)
    tree = tmp_path / "tree"
    make_main(tmp_path, tree, build / "usr/lib")  # linked against libfoo, not shipping it
    a = analyse(tree)
    dep = f"soname(libfoo.so.1({X}))"
    assert dep in a.depends
    assert a.reasons[dep] == ["usr/bin/usefoo"]
    assert a.provides == ["binary(usefoo)"]


@needs_gcc
def test_default_dirs_resolve_without_runpath(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    lib = make_lib(tmp_path, tree)
    multiarch = tree / "usr/lib/x86_64-linux-gnu"
    multiarch.mkdir()
    os.rename(lib, multiarch / lib.name)
    os.symlink(lib.name, multiarch / "libfoo.so.1")
    cc(tmp_path, MAIN_C, tree / "usr/bin/plain", f"-L{multiarch}", "-l:libfoo.so.1")
    assert read_elf(tree / "usr/bin/plain", rel="usr/bin/plain").runpath == ()
    assert f"soname(libfoo.so.1({X}))" not in analyse(tree).depends
    # The dangling usr/lib/libfoo.so.1 (its target moved) is skipped, not an error.


@needs_gcc
def test_paths_limit_analysis_to_one_split(foo_tree: Path) -> None:
    lib_paths = ["usr/lib/libfoo.so.1.0.0", "usr/lib/libfoo.so.1", "usr/lib/libfoo.so"]
    libs = analyse(foo_tree, paths=lib_paths)
    assert libs.provides == [f"soname(libfoo.so.1({X}))"]
    assert set(libs.files) == {"usr/lib/libfoo.so.1.0.0"}
    assert libs.depends == [LIBC]

    main = analyse(foo_tree, paths=["usr/bin/usefoo", "usr/bin"])  # a directory is skipped
    # The library is in another split: its soname stays a dependency (that split provides it).
    assert f"soname(libfoo.so.1({X}))" in main.depends
    assert main.provides == ["binary(usefoo)"]

    # The link libfoo.so.1 on the way belongs to the split as well, or the need is not met.
    partial = analyse(foo_tree, paths=["usr/bin/usefoo", "usr/lib/libfoo.so.1.0.0"])
    assert f"soname(libfoo.so.1({X}))" not in partial.depends  # provided by the split itself


@needs_gcc
def test_paths_must_be_in_the_tree(foo_tree: Path) -> None:
    from onix.core.errors import OnixError
    with pytest.raises(OnixError) as e:
        analyse(foo_tree, paths=["usr/bin/nope"])
    assert e.value.path == str(foo_tree / "usr/bin/nope")
    with pytest.raises(OnixError, match="plain relative path"):
        analyse(foo_tree, paths=["usr/../etc/passwd"])


@needs_gcc
def test_glibc_binary_depends_on_libc_and_loader_which_a_tree_can_provide(
        tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    cc(tmp_path, HELLO_C, tree / "usr/bin/hello")
    a = analyse(tree)
    assert a.depends == [f"interpreter({GLIBC_LOADER}({X}))", LIBC]
    assert not a.files["usr/bin/hello"].static

    # Ship the host's loader and libc the Debian way: the loader in the multiarch dir, and
    # /lib64/ld-linux-x86-64.so.2 an absolute symlink through /lib (merged-usr: /usr/lib).
    loader = Path(os.path.realpath("/lib64/ld-linux-x86-64.so.2"))
    libc = Path(os.path.realpath("/lib/x86_64-linux-gnu/libc.so.6"))
    if not loader.is_file() or not libc.is_file():
        pytest.skip("this host has no glibc loader at the Debian path")
    multiarch = tree / "usr/lib/x86_64-linux-gnu"
    multiarch.mkdir(parents=True)
    shutil.copy(loader, multiarch / "ld-linux-x86-64.so.2")
    shutil.copy(libc, multiarch / "libc.so.6")
    (tree / "usr/lib64").mkdir()
    os.symlink("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
               tree / "usr/lib64/ld-linux-x86-64.so.2")
    a = analyse(tree)
    assert f"interpreter({GLIBC_LOADER}({X}))" in a.provides
    assert f"interpreter(/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2({X}))" in a.provides
    assert LIBC in a.provides
    assert a.depends == []  # libc needs only the loader, which the tree has too

    # A split without the usr/lib64 link does not provide the loader under that path, though
    # the link's target is in it: every link on the way must belong to the split.
    split = analyse(tree, paths=["usr/bin/hello", "usr/lib/x86_64-linux-gnu/libc.so.6",
                                 "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"])
    assert f"interpreter({GLIBC_LOADER}({X}))" not in split.provides
    assert split.depends == [f"interpreter({GLIBC_LOADER}({X}))"]


@needs_musl
def test_musl_static_binary_has_no_dependencies(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    exe = cc(tmp_path, HELLO_C, tree / "usr/bin/shello", "-static", compiler="musl-gcc")
    info = read_elf(exe, rel="usr/bin/shello")
    assert info is not None
    assert info.static and info.interp is None and info.needed == ()
    a = analyse(tree)
    assert a.depends == [] and a.reasons == {}
    assert a.provides == ["binary(shello)"]
    assert subprocess.run([exe], capture_output=True, check=True).stdout == b"hello\n"


@needs_musl
def test_musl_dynamic_binary_and_musl_loader_symlink(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    cc(tmp_path, HELLO_C, tree / "usr/bin/mhello", compiler="musl-gcc")
    a = analyse(tree)
    assert a.files["usr/bin/mhello"].interp == "/lib/ld-musl-x86_64.so.1"
    assert f"interpreter(/usr/lib/ld-musl-x86_64.so.1({X}))" in a.depends  # merged-usr
    assert f"soname(libc.so({X}))" in a.depends

    # musl's loader is libc.so itself (no ld-musl soname), reached through a symlink.
    host_libc = tools.host_file("/usr/lib/x86_64-linux-musl/libc.so")
    if not host_libc.is_file():
        pytest.skip("no musl libc.so on this host")
    (tree / "usr/lib/x86_64-linux-musl").mkdir(parents=True)
    shutil.copy(host_libc, tree / "usr/lib/x86_64-linux-musl/libc.so")
    os.symlink("x86_64-linux-musl/libc.so", tree / "usr/lib/ld-musl-x86_64.so.1")
    a = analyse(tree)
    assert f"interpreter(/usr/lib/ld-musl-x86_64.so.1({X}))" in a.provides
    assert a.depends == []


def test_pkgconfig_provides_and_requires(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    files = {
        "usr/lib/pkgconfig/foo.pc": (
            "prefix=/usr\nbarver=2.0\n# Requires: commented\nName: foo\n"
            "Requires: bar >= ${barver}, baz,qux<3 \\\n  glib-2.0\n"
            "Requires.private: zlib = 1.2\nLibs: -lfoo\n"),
        "usr/share/pkgconfig/bar.pc": "Name: bar\n",
        "usr/lib/x86_64-linux-gnu/pkgconfig/multi.pc": "Name: multi\nRequires:\n",
        "usr/lib64/pkgconfig/sixty.pc": "Name: sixty\n",
        "usr/share/doc/notpc/x.pc": "Requires: ignored\n",
    }
    for rel, text in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(text)
    a = analyse(tree)
    assert a.provides == ["pkgconfig(bar)", "pkgconfig(foo)", "pkgconfig(multi)",
                          "pkgconfig(sixty)"]
    # bar is required but provided by the same tree: no dependency on it
    assert a.depends == ["pkgconfig(baz)", "pkgconfig(glib-2.0)", "pkgconfig(qux)",
                         "pkgconfig(zlib)"]
    assert a.reasons["pkgconfig(zlib)"] == ["usr/lib/pkgconfig/foo.pc"]
    assert a.files == {}


def test_bin_and_sbin_entries(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "usr/bin/sub").mkdir(parents=True)
    (tree / "usr/sbin").mkdir(parents=True)
    (tree / "usr/bin/script").write_text("#!/bin/sh\n")
    (tree / "usr/bin/sub/deeper").write_text("#!/bin/sh\n")  # not directly in usr/bin
    (tree / "usr/sbin/mount.onix").write_text("#!/bin/sh\n")
    os.symlink("../bin/script", tree / "usr/sbin/scriptlink")
    os.symlink("/nonexistent", tree / "usr/bin/dangling")
    a = analyse(tree)
    assert a.provides == ["binary(dangling)", "binary(script)", "sysbinary(mount.onix)",
                          "sysbinary(scriptlink)"]
    assert a.depends == [] and a.files == {}


@needs_gcc
def test_symlinks_out_of_the_tree_are_never_followed(tmp_path: Path) -> None:
    # A real libbar.so.1 and a .pc file exist OUTSIDE the tree; links in the tree point at
    # them (relative with too many '..', and absolute): neither may satisfy a need.
    outside = tmp_path / "outside"
    make_lib(tmp_path, outside, soname="libbar.so.1")
    (outside / "evil.pc").write_text("Requires: leaked\n")
    tree = tmp_path / "tree"
    (tree / "usr/lib/pkgconfig").mkdir(parents=True)
    depth = "../" * (len(tree.parts) + 3)
    os.symlink(depth + str(outside / "usr/lib/libbar.so.1").lstrip("/"),
               tree / "usr/lib/libbar.so.1")
    os.symlink(str(outside / "evil.pc"), tree / "usr/lib/pkgconfig/evil.pc")
    os.symlink("libloop.so.1", tree / "usr/lib/libloop.so.1")  # a loop
    os.symlink("../../usr/lib/libfar.so", tree / "usr/lib/libfar.so")
    cc(tmp_path, "int foo(void); int main(void) { return foo(); }\n", tree / "usr/bin/usebar",
       f"-L{outside / 'usr/lib'}", "-lbar")
    assert os.path.exists(tree / "usr/lib/libbar.so.1")  # the host would follow it
    a = analyse(tree)
    assert f"soname(libbar.so.1({X}))" in a.depends
    assert "pkgconfig(leaked)" not in a.depends
    assert "pkgconfig(evil)" in a.provides  # the entry exists; its contents are not read
    assert set(a.files) == {"usr/bin/usebar"}


@needs_gcc
def test_foreign_machine_elf_is_recorded_but_not_analysed(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    make_lib(tmp_path, tree)
    lib = tree / "usr/lib/libfoo.so.1.0.0"
    data = bytearray(lib.read_bytes())
    data[18:20] = (183).to_bytes(2, "little")  # e_machine = EM_AARCH64: firmware-like blob
    lib.write_bytes(bytes(data))
    a = analyse(tree)
    assert a.files["usr/lib/libfoo.so.1.0.0"].machine == "aarch64"
    assert a.provides == [] and a.depends == []


# --- split_debug ------------------------------------------------------------------------

def sections(path: Path) -> set[str]:
    with open(path, "rb") as f:
        return {s.name for s in ELFFile(f).iter_sections()}


def tree_bytes(root: Path) -> dict[str, tuple[bytes, int]]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(root))] = (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
    return out


@pytest.fixture
def debug_src(tmp_path: Path) -> Path:
    """A pristine tree: libfoo and usefoo with -g, a hard link, a no-build-id binary, a .o."""
    src = tmp_path / "pristine"
    make_lib(tmp_path, src)
    exe = make_main(tmp_path, src, src / "usr/lib")
    os.chmod(exe, 0o4555)  # read-only and setuid: both must survive the rewrite
    os.link(exe, src / "usr/bin/usefoo-again")
    cc(tmp_path, HELLO_C, src / "usr/bin/noid", "-g", "-Wl,--build-id=none")
    # a relocatable object with a build-id, like a kernel module (ld -r --build-id)
    obj = cc(tmp_path, LIB_C, tmp_path / "plain.o", "-g", "-c")
    (src / "usr/lib/onix").mkdir(parents=True)
    run(["ld", "-r", "--build-id=sha1", "-o", src / "usr/lib/onix/obj.o", obj])
    (src / "usr/share").mkdir(parents=True)
    (src / "usr/share/readme").write_text("not ELF\n")
    return src


def all_paths(tree: Path) -> list[str]:
    return sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))


@needs_gcc
def test_split_debug_strips_and_keeps_debug_by_build_id(tmp_path: Path, debug_src: Path) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(debug_src, tree, symlinks=True)
    # copytree does not keep hard links: make the pair again
    os.unlink(tree / "usr/bin/usefoo-again")
    os.link(tree / "usr/bin/usefoo", tree / "usr/bin/usefoo-again")
    before = {rel: read_elf(tree / rel, rel=rel) for rel in
              ("usr/bin/usefoo", "usr/lib/libfoo.so.1.0.0", "usr/lib/onix/obj.o")}
    debug_tree = tmp_path / "dbg"

    result = split_debug(tree=tree, debug_tree=debug_tree, paths=all_paths(tree))

    expected = sorted(f"usr/lib/debug/.build-id/{b.build_id[:2]}/{b.build_id[2:]}.debug"
                      for b in before.values())
    assert list(result) == expected == result.written
    assert result.no_build_id == ["usr/bin/noid"]
    assert set(result.stripped) == {"usr/bin/noid", "usr/bin/usefoo",
                                    "usr/lib/libfoo.so.1.0.0", "usr/lib/onix/obj.o"}
    for rel in result.written:
        dbg = debug_tree / rel
        assert stat.S_IMODE(dbg.stat().st_mode) == 0o644
        assert ".debug_info" in sections(dbg)
    for rel, info in before.items():
        after = read_elf(tree / rel, rel=rel)
        assert after is not None and not after.has_debug
        assert after.build_id == info.build_id  # the build-id note stays
        assert ".gnu_debuglink" in sections(tree / rel)
    exe = tree / "usr/bin/usefoo"
    assert not read_elf(exe, rel="x").has_symtab  # --strip-unneeded on executables
    assert read_elf(tree / "usr/lib/onix/obj.o", rel="x").has_symtab  # objects keep symbols
    # the hard link was handled once and still shares the stripped inode; mode kept
    assert os.path.samefile(exe, tree / "usr/bin/usefoo-again")
    assert stat.S_IMODE(exe.stat().st_mode) == 0o4555
    assert (tree / "usr/share/readme").read_text() == "not ELF\n"
    # the stripped binary still runs, finding libfoo through $ORIGIN/../lib
    out = subprocess.run([exe], capture_output=True, check=True).stdout
    assert out == b"foo=42\n"
    assert subprocess.run([tree / "usr/bin/noid"], capture_output=True,
                          check=True).stdout == b"hello\n"
    # the debuglink names the build-id file
    bid = before["usr/bin/usefoo"].build_id
    with open(exe, "rb") as f:
        link = ELFFile(f).get_section_by_name(".gnu_debuglink").data()
    assert link[:link.index(b"\0")] == f"{bid[2:]}.debug".encode()
    # ... and its CRC is that of the debug file as written (what gdb checks)
    crc = int.from_bytes(link[-4:], "little")
    assert crc == zlib.crc32((debug_tree / f"usr/lib/debug/.build-id/{bid[:2]}/{bid[2:]}.debug")
                             .read_bytes())


@needs_gcc
def test_split_debug_is_deterministic(tmp_path: Path, debug_src: Path) -> None:
    results = []
    for n in (1, 2):
        tree = tmp_path / f"tree{n}"
        shutil.copytree(debug_src, tree, symlinks=True)
        r = split_debug(tree=tree, debug_tree=tmp_path / f"dbg{n}", paths=all_paths(tree))
        results.append((list(r), tree_bytes(tree), tree_bytes(tmp_path / f"dbg{n}")))
    assert results[0] == results[1]
    assert results[0][1]["usr/bin/usefoo"] != tree_bytes(debug_src)["usr/bin/usefoo"]
    # running it again on a stripped tree changes nothing and writes no debug file
    again = split_debug(tree=tmp_path / "tree1", debug_tree=tmp_path / "dbg3",
                        paths=all_paths(tmp_path / "tree1"))
    assert list(again) == [] and again.stripped == []
    assert tree_bytes(tmp_path / "tree1") == results[0][1]


@needs_gcc
def test_split_debug_only_touches_given_paths_and_leaves_signed_modules(
        tmp_path: Path, debug_src: Path) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(debug_src, tree, symlinks=True)
    module = tree / "usr/lib/modules/6.1.0/kernel/x.ko"
    module.parent.mkdir(parents=True)
    module.write_bytes((tree / "usr/lib/onix/obj.o").read_bytes()
                       + b"\0sig\0~Module signature appended~\n")
    untouched = (tree / "usr/lib/libfoo.so.1.0.0").read_bytes()
    signed = module.read_bytes()
    r = split_debug(tree=tree, debug_tree=tmp_path / "dbg",
                    paths=["usr/bin/usefoo", "usr/lib/modules/6.1.0/kernel/x.ko"])
    assert r.skipped == ["usr/lib/modules/6.1.0/kernel/x.ko"]
    assert module.read_bytes() == signed
    assert (tree / "usr/lib/libfoo.so.1.0.0").read_bytes() == untouched
    assert r.stripped == ["usr/bin/usefoo"] and len(r) == 1
