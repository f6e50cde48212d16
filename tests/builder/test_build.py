"""The builder: source verification, real builds with gcc and musl-gcc into stones (splits,
debug info, analysis), reproducibility, clean environment, file names that are not UTF-8,
stripping (recipe parsing and its errors: builder/test_recipe.py)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import onix
from test_recipe import BASE, RECIPE, error_of, write

from onix.build import sources
from onix.build.builder import BuildError, build
from onix.build.recipe import load
from onix.core.errors import LockedError, OnixError
from onix.machine.stone import Stone

REPO = Path(__file__).resolve().parents[2]
HAVE_MUSL = shutil.which("musl-gcc") is not None
needs_musl = pytest.mark.skipif(not HAVE_MUSL, reason="musl-gcc (Debian musl-tools) missing")


# -- sources -------------------------------------------------------------------------


def test_path_upstream_checksum_mismatch(tmp_path):
    (tmp_path / "x.c").write_text("int main(void){return 0;}\n")
    wrong = "ab" * 32
    r = write(tmp_path / "r.yaml", BASE + f"upstreams:\n  - path: x.c\n    sha256: {wrong}\n"
              "install: |\n  mkdir -p %(installroot)/usr\n")
    with pytest.raises(OnixError) as e:
        build(r, out=tmp_path / "out", cache=tmp_path / "cache")
    actual = hashlib.sha256((tmp_path / "x.c").read_bytes()).hexdigest()
    assert e.value.path == str(tmp_path / "x.c")
    assert wrong in e.value.message and actual in e.value.message
    assert f"update sha256 in {r}:8" in e.value.hint
    assert not (tmp_path / "out").exists()  # nothing was built


def test_corrupt_cached_download_is_refused_and_removed(tmp_path):
    good = "cd" * 32
    r = write(tmp_path / "r.yaml", BASE + "upstreams:\n  - debian-source: busybox\n"
              f"    file: busybox_1.35.0.orig.tar.bz2\n    sha256: {good}\n")
    recipe = load(r)
    cached = tmp_path / "cache" / good / "busybox_1.35.0.orig.tar.bz2"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not the tarball")
    with pytest.raises(OnixError) as e:
        sources.fetch(recipe.upstreams[0], cache=tmp_path / "cache", recipe=recipe)
    assert e.value.path == str(cached) and good in e.value.message
    assert not cached.exists()


def test_machine_mirror_reads_deb822_and_skips_security(tmp_path):
    d = tmp_path / "apt" / "sources.list.d"
    write(d / "debian.sources", """\
        Types: deb
        URIs: http://security.debian.org/debian-security
        Suites: bookworm-security
        Components: main

        Types: deb
        URIs: http://mirror.example/debian/
        Suites: bookworm bookworm-updates
        Components: main
        """)
    assert sources.machine_mirror(tmp_path / "apt") == ("http://mirror.example/debian",
                                                        "bookworm")
    assert sources.machine_mirror(tmp_path / "none") == (sources.DEFAULT_MIRROR,
                                                         sources.DEFAULT_SUITE)


# -- real builds -----------------------------------------------------------------------

LIB_C = "const char *greeting(void) { return \"hello\"; }\n"
GREET_C = ("#include <stdio.h>\nconst char *greeting(void);\n"
           "int main(void) { puts(greeting()); return 0; }\n")
HELLO_C = "#include <stdio.h>\nint main(void) { puts(\"static hello\"); return 0; }\n"

DEMO = BASE + """\
upstreams:
  - path: src
builddeps: [musl-tools, gcc, binutils]
environment:
  CFLAGS: -O2 -g -Wl,--build-id -ffile-prefix-map=%(sourcedir)=/usr/src/demo
build: |
  cd %(builddir)
  musl-gcc -static $CFLAGS -o hello %(sourcedir)/src/hello.c
  gcc -shared -fPIC $CFLAGS -Wl,-soname,libgreet.so.1 -o libgreet.so.1 %(sourcedir)/src/greet-lib.c
  gcc $CFLAGS -o greet %(sourcedir)/src/greet.c -L. -l:libgreet.so.1 -Wl,-rpath,'$ORIGIN/../lib'
install: |
  cd %(builddir)
  install -D -m 0755 hello %(installroot)/usr/bin/hello
  install -D -m 0755 greet %(installroot)/usr/bin/greet
  install -D -m 0755 libgreet.so.1 %(installroot)/usr/lib/libgreet.so.1
  ln -s libgreet.so.1 %(installroot)/usr/lib/libgreet.so
  install -D -m 0644 %(sourcedir)/src/greet.h %(installroot)/usr/include/greet.h
  install -D -m 0644 %(sourcedir)/src/greet.pc %(installroot)/usr/lib/pkgconfig/greet.pc
  install -d %(installroot)/etc/demo %(installroot)/usr/share/demo/empty
  echo conf > %(installroot)/etc/demo/demo.conf
check: |
  test "$(%(installroot)/usr/bin/hello)" = "static hello"
  test "$(%(installroot)/usr/bin/greet)" = hello
packages:
  - name: "%(name)-devel"
    paths: [usr/include, usr/lib/*.so, usr/lib/pkgconfig/*]
  - name: "%(name)-libs"
    summary: the greeting library
    paths: [usr/lib/lib*.so.*]
  - name: "%(name)-docs"
    paths: [usr/share/doc/*]
"""


def demo_recipe(tmp_path: Path, text: str = DEMO) -> Path:
    src = tmp_path / "recipe" / "src"
    write(src / "hello.c", HELLO_C)
    write(src / "greet.c", GREET_C)
    write(src / "greet-lib.c", LIB_C)
    write(src / "greet.h", "const char *greeting(void);\n")
    write(src / "greet.pc", "Name: greet\nDescription: d\nVersion: 1\nRequires: zlib >= 1\n"
          "Libs: -lgreet\n")
    return write(tmp_path / "recipe" / "demo.yaml", text)


def stone(path: Path) -> Stone:
    s = Stone(path)
    s.check_content()
    return s


def debug_sections(path: Path) -> list[str]:
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        return [s.name for s in ELFFile(f).iter_sections() if s.name.startswith(".debug")]


@pytest.fixture(scope="module")
def demo_build(tmp_path_factory):
    if not HAVE_MUSL:
        pytest.skip("musl-gcc (Debian musl-tools) missing")
    tmp = tmp_path_factory.mktemp("demo")
    recipe = demo_recipe(tmp)
    steps: list[str] = []
    result = build(recipe, out=tmp / "out", cache=tmp / "cache", keep=True,
                   progress=steps.append)
    return tmp, recipe, result, steps


@needs_musl
def test_demo_build_stones_and_manifest(demo_build):
    tmp, _recipe, result, steps = demo_build
    out = tmp / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "demo-1.0.0-1-x86_64.stone", "demo-1.0.0-1.manifest.json",
        "demo-dbginfo-1.0.0-1-x86_64.stone", "demo-devel-1.0.0-1-x86_64.stone",
        "demo-libs-1.0.0-1-x86_64.stone"]  # the empty -docs split makes no stone
    assert {"load", "build", "install", "strip", "check", "analyse", "pack"} <= set(steps)
    by_name = {s.name: s for s in result.stones}
    assert result.as_dict()["stones"][0]["name"] == "demo"

    main = stone(out / "demo-1.0.0-1-x86_64.stone")
    paths = {e.path: e for e in main.layout}
    assert {"bin/hello", "bin/greet", "share/demo/empty"} <= set(paths)
    assert not any(p.startswith(("include", "lib/")) for p in paths)
    assert main.meta.provides == ["binary(greet)", "binary(hello)"]
    # the library is in the -libs split: a dependency on that stone, not a soname need
    assert "demo-libs" in main.meta.depends
    assert "soname(libgreet.so.1(x86_64))" not in main.meta.depends
    assert "soname(libc.so.6(x86_64))" in main.meta.depends
    assert any(d.startswith("interpreter(") for d in main.meta.depends)

    libs = stone(out / "demo-libs-1.0.0-1-x86_64.stone")
    assert [e.path for e in libs.layout if e.kind == "file"] == ["lib/libgreet.so.1"]
    assert libs.meta.summary == "the greeting library"
    assert "soname(libgreet.so.1(x86_64))" in libs.meta.provides

    devel = stone(out / "demo-devel-1.0.0-1-x86_64.stone")
    assert {e.path for e in devel.layout if e.kind != "dir"} == {
        "include/greet.h", "lib/libgreet.so", "lib/pkgconfig/greet.pc"}
    assert devel.meta.summary == "a demo (devel)"
    assert "pkgconfig(greet)" in devel.meta.provides
    assert "pkgconfig(zlib)" in devel.meta.depends

    # stripped in the stone, debug info in -dbginfo by build-id
    work_bin = result.work / "install" / "usr" / "bin" / "hello"
    assert debug_sections(work_bin) == []
    dbg = stone(out / "demo-dbginfo-1.0.0-1-x86_64.stone")
    debug_files = [e.path for e in dbg.layout if e.kind == "file"]
    assert len(debug_files) == 3
    assert all(p.startswith("lib/debug/.build-id/") and p.endswith(".debug")
               for p in debug_files)
    assert dbg.meta.provides == [] and dbg.meta.depends == []
    assert by_name["demo-dbginfo"].size == by_name["demo-dbginfo"].file.stat().st_size

    manifest = json.loads(result.manifest.read_text())
    assert manifest["dropped"] == ["etc/", "etc/demo", "etc/demo/demo.conf"]
    assert len(manifest["debug"]["written"]) == 3
    m_main = next(s for s in manifest["stones"] if s["name"] == "demo")
    assert m_main["depends"]["demo-libs"] == ["usr/bin/greet"]
    assert m_main["sha256"] == hashlib.sha256(
        (out / m_main["file"]).read_bytes()).hexdigest()
    hello = next(f for f in m_main["files"] if f["path"] == "usr/bin/hello")
    assert hello["sha256"] == hashlib.sha256(work_bin.read_bytes()).hexdigest()
    text = result.manifest.read_text()
    assert str(tmp) not in text  # no host paths
    # the stripped binaries still run from the work dir
    assert subprocess.run([work_bin], capture_output=True).stdout == b"static hello\n"


@needs_musl
def test_same_recipe_twice_is_byte_identical(demo_build, tmp_path):
    tmp, recipe, first, _steps = demo_build
    second = build(recipe, out=tmp_path / "again", cache=tmp / "cache")
    names = sorted(p.name for p in (tmp / "out").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "again").iterdir())
    for name in names:
        assert (tmp / "out" / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
    assert second.work is None and not (tmp / "cache" / "work" / "demo").exists()
    assert [s.sha256 for s in first.stones] == [s.sha256 for s in second.stones]


def small(tmp_path: Path, steps: str, extra: str = "") -> Path:
    return write(tmp_path / "r.yaml", BASE + extra + steps)


def test_failing_step_shows_log_tail_and_path(tmp_path):
    r = small(tmp_path, "build: |\n  echo compiling foo.c\n  echo 'foo.c:3: error: oops' >&2\n"
              "  exit 2\n")
    with pytest.raises(BuildError) as e:
        build(r, out=tmp_path / "out", cache=tmp_path / "cache")
    log = tmp_path / "cache" / "work" / "demo" / "log" / "build.log"
    assert e.value.path == str(log) and log.is_file()
    assert "step build of demo failed (exit 2)" in e.value.message
    assert "foo.c:3: error: oops" in e.value.message
    assert e.value.tail[-1] == "foo.c:3: error: oops"
    assert str(log) in e.value.hint
    assert not (tmp_path / "out").exists()


def test_steps_see_a_clean_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ONIX_TEST_LEAK", "leaked")
    r = small(tmp_path, "install: |\n  mkdir -p %(installroot)/usr/share/demo\n"
              "  env > %(installroot)/usr/share/demo/env\n"
              "  umask > %(installroot)/usr/share/demo/umask\n  pwd > %(installroot)/pwd\n"
              "  readlink /proc/self/fd/0 > %(installroot)/usr/share/demo/stdin\n",
              extra="environment:\n  DEMO_ROOT: '%(installroot)'\nsource-date-epoch: 1234\n")
    result = build(r, out=tmp_path / "out", cache=tmp_path / "cache", jobs=3, keep=True)
    work = tmp_path / "cache" / "work" / "demo"
    env = dict(line.split("=", 1) for line in
               (work / "install/usr/share/demo/env").read_text().splitlines() if "=" in line)
    assert "ONIX_TEST_LEAK" not in env
    assert env["PATH"] == "/usr/sbin:/usr/bin:/sbin:/bin"
    assert env["HOME"] == str(work / "home") != os.environ.get("HOME")
    assert env["SOURCE_DATE_EPOCH"] == "1234"
    assert env["MAKEFLAGS"] == "-j3"
    assert env["TZ"] == "UTC" and env["LC_ALL"] == "C.UTF-8"
    assert env["DEMO_ROOT"] == str(work / "install")
    assert (work / "install/usr/share/demo/umask").read_text().strip() == "0022"
    assert (work / "install/usr/share/demo/stdin").read_text().strip() == "/dev/null"
    # pwd landed outside usr/, so it was dropped (and the manifest says so)
    assert not (work / "install" / "pwd").exists()
    assert result.dropped == ["pwd"]


def test_install_that_leaves_usr_empty_is_an_error(tmp_path):
    r = small(tmp_path, "install: |\n  mkdir -p %(installroot)/etc\n")
    with pytest.raises(OnixError, match="nothing under usr/"):
        build(r, out=tmp_path / "out", cache=tmp_path / "cache")


def test_missing_builddeps_named_with_apt_hint(tmp_path):
    r = small(tmp_path, "install: |\n  mkdir -p %(installroot)/usr\n",
              extra="builddeps: [bash, onix-no-such-package]\n")
    with pytest.raises(OnixError) as e:
        build(r, out=tmp_path / "out", cache=tmp_path / "cache")
    assert "onix-no-such-package" in e.value.message and "bash" not in e.value.message
    assert e.value.hint == "apt-get install onix-no-such-package"


def test_a_second_build_of_the_same_recipe_is_refused(tmp_path):
    r = small(tmp_path, "install: |\n  mkdir -p %(installroot)/usr\n")
    lock = tmp_path / "cache" / "work" / "demo.lock"
    lock.parent.mkdir(parents=True)
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(LockedError, match="another build of demo"):
            build(r, out=tmp_path / "out", cache=tmp_path / "cache")
    build(r, out=tmp_path / "out", cache=tmp_path / "cache")
    assert (tmp_path / "out" / "demo-1.0.0-1-x86_64.stone").is_file()


def test_closure_of_a_tree_that_needs_no_library_adds_no_stone(tmp_path):
    # nothing to seed from and no ELF file needing anything: no Debian package is asked
    # for (no apt), and the main stone is all there is
    r = small(tmp_path, "install: |\n  mkdir -p %(installroot)/usr/share/demo\n"
              "  echo hi > %(installroot)/usr/share/demo/readme\n", extra="closure: debian\n")
    assert load(r).closure is True
    res = build(r, out=tmp_path / "out", cache=tmp_path / "cache")
    assert [s.name for s in res.stones] == ["demo"]
    manifest = json.loads(res.manifest.read_text())
    assert not [u for u in manifest["upstreams"] if u["kind"] == "debian-closure"]


# -- file names that are not UTF-8, and stripping -------------------------------------

STEPS = RECIPE.format(release=1) + "install: |\n  mkdir -p %(installroot)/usr/bin\n"


def _build(tmp_path: Path, install: str):
    p = tmp_path / "r.yaml"
    p.write_text(STEPS + "".join(f"  {ln}\n" for ln in install.splitlines()))
    return onix("build", p, "-o", tmp_path / "out", "--cache", tmp_path / "cache", "--json")


def test_a_file_name_that_is_not_utf8_is_one_error_naming_it(tmp_path):
    # It crashed with UnicodeEncodeError while packing (a stone's layout is UTF-8 JSON).
    r = _build(tmp_path, "touch %(installroot)/usr/bin/ok %(installroot)/usr/bin/$'a\\xff'")
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    err = json.loads(r.stdout)
    assert "usr/bin/a\\xff" in err["error"] + str(err["path"]) and "UTF-8" in err["error"]
    assert not list((tmp_path / "out").glob("*.stone"))


def test_a_dropped_file_name_that_is_not_utf8_does_not_break_the_manifest(tmp_path):
    # Only usr/ is kept; the manifest lists what went, and could not encode this name.
    r = _build(tmp_path, "touch %(installroot)/usr/bin/ok\n"
               "mkdir %(installroot)/etc; touch %(installroot)/etc/$'b\\xff'")
    assert r.returncode == 0, r.stdout + r.stderr
    manifest = json.loads(Path(json.loads(r.stdout)[0]["manifest"]).read_text())
    assert manifest["dropped"] == ["etc/", "etc/b\\xff"]


def test_a_path_upstream_directory_with_a_non_utf8_name_is_recorded(tmp_path):
    # The manifest records a directory upstream by a sha256 over its entries; encoding a
    # non-UTF-8 name for that hash crashed the build at the very end.
    src = tmp_path / "src"
    src.mkdir()
    (src / os.fsdecode(b"n\xff")).write_text("x")
    p = tmp_path / "r.yaml"
    p.write_text(STEPS + "upstreams:\n  - path: src\n"
                 "  - path: src2\n")
    (tmp_path / "src2").mkdir()
    (tmp_path / "src2" / "ok").write_text("y")
    r = onix("build", p, "-o", tmp_path / "out", "--cache", tmp_path / "cache", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    manifest = json.loads(Path(json.loads(r.stdout)[0]["manifest"]).read_text())
    assert [len(u["sha256"]) for u in manifest["upstreams"]] == [64, 64]


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")
def test_stripping_never_rewrites_a_file_hard_linked_from_outside_the_build(tmp_path):
    # Stripping rewrote each ELF file in place (same inode). An install step that
    # hard-links a file from elsewhere on the disk — `cp -al`, `ln` from the host's own
    # /usr — had that file stripped too: the build modified the machine it ran on.
    import hashlib
    import subprocess

    outside = tmp_path / "elsewhere" / "tool"
    outside.parent.mkdir()
    (tmp_path / "t.c").write_text("int main(void) { return 0; }\n")
    subprocess.run(["gcc", "-g", "-Wl,--build-id", "-o", outside, tmp_path / "t.c"], check=True)
    before = hashlib.sha256(outside.read_bytes()).hexdigest()
    r = _build(tmp_path, f"ln {outside} %(installroot)/usr/bin/tool\n"
               "ln %(installroot)/usr/bin/tool %(installroot)/usr/bin/tool2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert hashlib.sha256(outside.read_bytes()).hexdigest() == before
    stones = {s["name"]: s for s in json.loads(r.stdout)[0]["stones"]}
    assert "demo-dbginfo" in stones  # it was stripped, in the build's own copy
    with Stone(Path(stones["demo"]["file"])) as s:
        sizes = {e.path: e.size for e in s.layout if e.path.startswith("bin/")}
    assert sizes["bin/tool"] == sizes["bin/tool2"] < outside.stat().st_size


# -- the repository's own recipes ------------------------------------------------------


@needs_musl
def test_onix_exchange_recipe_builds_static_and_reproducibly(tmp_path):
    recipe = REPO / "recipes" / "onix-exchange.yaml"
    a = build(recipe, out=tmp_path / "a", cache=tmp_path / "cache")
    b = build(recipe, out=tmp_path / "b", cache=tmp_path / "cache")
    assert [s.sha256 for s in a.stones] == [s.sha256 for s in b.stones]
    main = stone(a.stones[0].file)
    assert [e.path for e in main.layout if e.kind == "file"] == ["lib/onix/exchange"]
    assert main.meta.depends == []  # static: no soname or interpreter
    assert [s.name for s in a.stones] == ["onix-exchange", "onix-exchange-dbginfo"]


def apt_reachable() -> str | None:
    """None when the Debian mirror answers, else why not (the reason a test skips with)."""
    mirror, suite = sources.machine_mirror()
    try:
        import urllib.request

        req = urllib.request.Request(f"{mirror}/dists/{suite}/Release", method="HEAD")
        urllib.request.urlopen(req, timeout=10).close()
    except OSError as e:
        return f"the Debian mirror {mirror} is not reachable ({e})"
    return None


def host_apt_state() -> dict[str, float]:
    """mtimes of the host's apt lists and caches (a private fetch must not touch them)."""
    out = {}
    for d in (Path("/var/lib/apt/lists"), Path("/var/cache/apt"), Path("/etc/apt")):
        for p in [d, *d.glob("*")] if d.is_dir() else []:
            out[str(p)] = p.lstat().st_mtime
    return out


def test_debian_source_fetch_keeps_only_the_pinned_tarball(tmp_path):
    why = apt_reachable()
    if why:
        pytest.skip(why)
    recipe = load(REPO / "recipes" / "busybox.yaml")
    before = host_apt_state()
    got = sources.fetch(recipe.upstreams[0], cache=tmp_path / "cache", recipe=recipe)
    assert host_apt_state() == before
    assert got == tmp_path / "cache" / recipe.upstreams[0].sha256 / "busybox_1.35.0.orig.tar.bz2"
    assert sources.sha256_file(got) == recipe.upstreams[0].sha256
    assert [p.name for p in got.parent.iterdir()] == [got.name]  # .dsc, debian.tar.xz gone
    placed = sources.place(recipe.upstreams[0], got, sourcedir=tmp_path / "src")
    assert placed == tmp_path / "src" / "busybox-1.35.0" and (placed / "Makefile").is_file()


def test_debian_binary_repack_recipe(tmp_path):
    """recipes/firmware.yaml (a 24 kB .deb): apt-get download, verify, dpkg-deb -x, pack."""
    why = apt_reachable()
    if why:
        pytest.skip(why)
    recipe = REPO / "recipes" / "firmware.yaml"
    u = load(recipe).upstreams[0]
    r = subprocess.run(["apt-cache", "show", f"{u.ref}={u.version}"], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"this machine's package lists lack {u.ref}={u.version} (apt-get update)")
    result = build(recipe, out=tmp_path / "out", cache=tmp_path / "cache")
    assert [s.name for s in result.stones] == ["firmware"]  # strip: false, no dbginfo
    main = stone(result.stones[0].file)
    assert any(e.path.startswith("lib/firmware/") and e.kind == "file" for e in main.layout)
    cached = tmp_path / "cache" / "sources" / u.sha256
    assert [p.suffix for p in cached.iterdir()] == [".deb"]


@pytest.mark.slow
@needs_musl
def test_busybox_from_debian_source_is_static_and_reproducible(tmp_path):
    why = apt_reachable()
    if why:
        pytest.skip(why)
    recipe = REPO / "recipes" / "busybox.yaml"
    cache = tmp_path / "cache"
    a = build(recipe, out=tmp_path / "a", cache=cache)
    # a second build re-hashes the cached tarball instead of downloading it
    b = build(recipe, out=tmp_path / "b", cache=cache)
    for x, y in zip(a.stones, b.stones, strict=True):
        assert x.file.read_bytes() == y.file.read_bytes(), x.file.name
    assert a.manifest.read_bytes() == b.manifest.read_bytes()
    main = stone(a.stones[0].file)
    layout = {e.path: e for e in main.layout}
    assert layout["bin/sh"].kind == "symlink" and layout["bin/sh"].target == "busybox"
    assert "binary(busybox)" in main.meta.provides and "sysbinary(switch_root)" in \
        main.meta.provides
    assert main.meta.depends == []
    assert [s.name for s in a.stones] == ["busybox", "busybox-dbginfo"]


# -- pypi upstreams and path upstreams without byte-code caches -----------------------

MDURL = ("mdurl", "0.1.2", "mdurl-0.1.2-py3-none-any.whl")  # a 10 KB pure-Python wheel


def _pypi_reachable() -> bool:
    import urllib.request

    try:
        urllib.request.urlopen("https://pypi.org/simple/mdurl/", timeout=10).close()
    except OSError:
        return False
    return True


def test_pypi_upstream_needs_version_file_and_a_project_name(tmp_path):
    e = error_of(write(tmp_path / "r.yaml", BASE + "upstreams:\n  - pypi: mdurl\n"
                       "    version: '0.1.2'\n    sha256: " + "ab" * 32 + "\n"))
    assert e.path == f"{tmp_path / 'r.yaml'}:7" and "file" in e.message
    e = error_of(write(tmp_path / "s.yaml", BASE + "upstreams:\n  - pypi: 'md url'\n"
                       "    version: '1'\n    file: x.whl\n    sha256: " + "ab" * 32 + "\n"))
    assert "not a PyPI project name" in e.message and e.path.endswith(":7")


@pytest.mark.skipif(not _pypi_reachable(), reason="PyPI is not reachable from here")
def test_pypi_wheel_is_fetched_verified_and_cached(tmp_path):
    import hashlib as h

    name, version, file = MDURL
    good = write(tmp_path / "r.yaml", BASE + f"upstreams:\n  - pypi: {name}\n"
                 f"    version: '{version}'\n    file: {file}\n    sha256: " + "00" * 32 + "\n")
    recipe = load(good)
    with pytest.raises(OnixError) as e:  # a wrong pin: refused, nothing kept
        sources.fetch(recipe.upstreams[0], cache=tmp_path / "cache", recipe=recipe)
    assert "00" * 32 in e.value.message and file in e.value.path
    assert not list((tmp_path / "cache").glob("*/*.whl"))
    # the real pin, read from the refusal, then checked independently below
    real = next(a for a in re.findall(r"[0-9a-f]{64}", e.value.message) if a != "00" * 32)
    ok = write(tmp_path / "ok.yaml", BASE + f"upstreams:\n  - pypi: {name}\n"
               f"    version: '{version}'\n    file: {file}\n    sha256: {real}\n")
    recipe = load(ok)
    got = sources.fetch(recipe.upstreams[0], cache=tmp_path / "cache", recipe=recipe)
    assert got.name == file and h.sha256(got.read_bytes()).hexdigest() == real
    placed = sources.place(recipe.upstreams[0], got, sourcedir=tmp_path / "src")
    assert placed == tmp_path / "src" / file  # a wheel is copied, not unpacked


def test_path_upstream_leaves_out_python_byte_code(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "__pycache__").mkdir(parents=True)
    (pkg / "mod.py").write_text("x = 1\n")
    (pkg / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"machine-specific")
    r = write(tmp_path / "r.yaml", BASE + "upstreams:\n  - path: pkg\ninstall: |\n"
              "  mkdir -p %(installroot)/usr/lib\n"
              "  cp -a %(sourcedir)/pkg %(installroot)/usr/lib/\n")
    first = build(r, out=tmp_path / "a", cache=tmp_path / "cache")
    shutil.rmtree(pkg / "__pycache__")
    second = build(r, out=tmp_path / "b", cache=tmp_path / "cache")
    assert first.manifest.read_bytes() == second.manifest.read_bytes()
    with Stone(first.stones[0].file) as s:
        assert [e.path for e in s.layout if "__pycache__" in e.path] == []


def test_rundeps_take_the_name_macros_and_refuse_others(tmp_path):
    r = write(tmp_path / "r.yaml", BASE + 'rundeps: ["%(name)-data"]\npackages:\n'
              '  - name: "%(name)-tools"\n    paths: [usr/bin/*]\n    rundeps: ["%(name)"]\n')
    recipe = load(r)
    assert recipe.rundeps == ["demo-data"] and recipe.packages[0].rundeps == ("demo",)
    e = error_of(write(tmp_path / "s.yaml", BASE + 'rundeps: ["%(jobs)"]\n'))
    assert e.path == f"{tmp_path / 's.yaml'}:6" and "%(jobs)" in e.message


# -- debian-binary upstreams from another suite (bookworm-backports) ------------------

# libgl1-mesa-dri 25 from bookworm-backports: 46 kB (the drivers live in mesa-libgallium)
BPO = ("libgl1-mesa-dri", "25.0.7-2~bpo12+1",
       "ae1207a5c6c7b6439ed7239783e5eb05202debec9e56b4f834a342e87ab02cdf")
SCAFF = "scaffolding: a test\n"


def test_debian_binary_suite_is_parsed_and_checked(tmp_path):
    name, version, sha = BPO
    r = write(tmp_path / "r.yaml", BASE + SCAFF + f"upstreams:\n  - debian-binary: {name}\n"
              f"    version: '{version}'\n    sha256: {sha}\n    suite: bookworm-backports\n")
    u = load(r).upstreams[0]
    assert (u.kind, u.ref, u.version, u.suite) == ("debian-binary", name, version,
                                                   "bookworm-backports")
    plain = write(tmp_path / "p.yaml", BASE + SCAFF + "upstreams:\n  - debian-binary: s6\n"
                  "    version: '1'\n    sha256: " + "0" * 64 + "\n")
    assert load(plain).upstreams[0].suite is None
    bad = write(tmp_path / "b.yaml", BASE + SCAFF + f"upstreams:\n  - debian-binary: {name}\n"
                f"    version: '1'\n    sha256: {sha}\n    suite: 'bookworm backports'\n")
    e = error_of(bad)
    assert e.path == f"{bad}:11" and "not a Debian suite" in e.message
    # only debian-binary upstreams have a suite
    src = write(tmp_path / "s.yaml", BASE + "upstreams:\n  - debian-source: busybox\n"
                f"    file: b.tar.bz2\n    sha256: {sha}\n    suite: bookworm-backports\n")
    assert "unknown key 'suite'" in error_of(src).message
    two = write(tmp_path / "t.yaml", BASE + SCAFF + "upstreams:\n"
                f"  - debian-binary: a\n    version: '1'\n    sha256: {sha}\n"
                "    suite: bookworm-backports\n"
                f"  - debian-binary: b\n    version: '1'\n    sha256: {sha}\n"
                "    suite: trixie\n")
    e = error_of(two)
    assert "two suites" in e.message and e.path == f"{two}:8"  # the upstreams list


def test_private_binary_list_holds_the_base_suite_and_the_backports(tmp_path):
    d = tmp_path / "apt" / "sources.list.d"
    write(d / "debian.sources", """\
        Types: deb
        URIs: http://mirror.example/debian/
        Suites: bookworm bookworm-updates
        Components: main

        Types: deb
        URIs: http://security.example/debian-security
        Suites: bookworm-security
        Components: main
        """)
    text = sources.binary_sources("bookworm-backports", etc_apt=tmp_path / "apt")
    first, second = text.split("\n\n")
    assert "Types: deb\n" in first and "deb-src" not in text
    assert "URIs: http://mirror.example/debian\n" in first
    assert "Suites: bookworm bookworm-updates bookworm-backports\n" in first
    assert f"Signed-By: {sources.KEYRING}" in first and f"Signed-By: {sources.KEYRING}" in second
    assert "URIs: http://security.example/debian-security\n" in second
    assert "Suites: bookworm-security\n" in second
    # no security archive on the machine: none in the private list either
    assert "security" not in sources.binary_sources("bookworm-backports",
                                                    etc_apt=tmp_path / "none")


def test_backports_binary_is_fetched_through_a_private_list(tmp_path):
    """`suite: bookworm-backports` downloads through <cache>/apt-binary/…, never through
    (or into) the host's apt state; the closure finds backports-only versions there."""
    why = apt_reachable()
    if why:
        pytest.skip(why)
    from onix.build import closure

    name, version, sha = BPO
    r = write(tmp_path / "r.yaml", BASE + SCAFF + f"upstreams:\n  - debian-binary: {name}\n"
              f"    version: '{version}'\n    sha256: {sha}\n    suite: bookworm-backports\n")
    recipe = load(r)
    cache = tmp_path / "cache"
    before = host_apt_state()
    got = sources.fetch(recipe.upstreams[0], cache=cache, recipe=recipe)
    assert got.parent == cache / sha and got.suffix == ".deb"
    assert sources.sha256_file(got) == sha
    state = cache / "apt-binary" / "bookworm-backports"
    listed = (state / "sources.list.d" / "onix.sources").read_text()
    assert "bookworm-backports" in listed and "deb-src" not in listed
    assert any("bookworm-backports" in p.name for p in (state / "lists").iterdir())
    # the closure sees the same list, preferring the suite: libdrm2 from backports
    # (mesa 25 needs >= 2.4.121; bookworm has 2.4.114)
    apt = sources.closure_apt(cache, "bookworm-backports")
    info = closure.package_info("libdrm2", apt=apt)
    assert "bpo12" in info["Version"]
    assert "bpo12" not in closure.package_info("libdrm2")["Version"]  # machine's lists
    assert host_apt_state() == before
    placed = sources.place(recipe.upstreams[0], got, sourcedir=tmp_path / "src")
    assert (placed / "usr" / "share" / "doc" / name).is_dir()
