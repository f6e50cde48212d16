"""The Debian-repack library closure: merged-usr unpacking, and a real closure that runs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from onix.build import closure
from onix.core.errors import OnixError


def _deb(tmp: Path, files: dict[str, str], *, name: str = "libdemo1") -> Path:
    root = tmp / f"deb-{name}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: 1.0-1\nArchitecture: amd64\nMaintainer: t <t@t>\n"
        "Description: test\n")
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if text.startswith("->"):
            os.symlink(text[2:], p)
        else:
            p.write_text(text)
    out = tmp / f"{name}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", root, out], check=True,
                   capture_output=True)
    return out


def test_unpack_folds_into_usr_and_keeps_only_licences(tmp_path):
    deb = _deb(tmp_path, {
        "lib/x86_64-linux-gnu/libdemo.so.1": "lib",
        "lib64/ld-demo.so.2": "->/lib/x86_64-linux-gnu/libdemo.so.1",
        "usr/bin/demo": "bin",
        "sbin/demod": "sbin",
        "etc/demo.conf": "conf",
        "usr/share/doc/libdemo1/copyright": "GPL",
        "usr/share/doc/libdemo1/changelog.Debian.gz": "log",
        "usr/share/man/man1/demo.1.gz": "man",
    })
    dest = tmp_path / "tree"
    dropped = closure.unpack_usr(deb, dest=dest)
    assert sorted(p.name for p in dest.iterdir()) == ["usr"]
    usr = dest / "usr"
    assert (usr / "lib/x86_64-linux-gnu/libdemo.so.1").read_text() == "lib"
    assert os.readlink(usr / "lib64/ld-demo.so.2") == "/lib/x86_64-linux-gnu/libdemo.so.1"
    assert (usr / "sbin/demod").exists() and (usr / "bin/demo").exists()
    assert (usr / "share/doc/libdemo1/copyright").read_text() == "GPL"
    assert not (usr / "share/doc/libdemo1/changelog.Debian.gz").exists()
    assert not (usr / "share/man").exists()
    assert "etc/" in dropped and "usr/share/man/" in dropped


def test_a_package_holding_one_path_twice_is_refused(tmp_path):
    deb = _deb(tmp_path, {"lib/libdup.so": "a", "usr/lib/libdup.so": "b"}, name="dup")
    with pytest.raises(OnixError, match="both /usr and the merged-usr alias"):
        closure.unpack_usr(deb, dest=tmp_path / "tree")


def test_relations_take_the_first_alternative_and_drop_versions():
    got = closure._first_alternatives(
        "libc6 (>= 2.34), libfoo1 | libfoo-alt1, perl:any, debconf (>= 0.5) | debconf-2.0")
    assert got == ["libc6", "libfoo1", "perl", "debconf"]


def _apt_reaches_the_mirror() -> bool:
    r = subprocess.run(["apt-cache", "show", "--no-all-versions", "s6"], capture_output=True)
    return r.returncode == 0 and b"SHA256:" in r.stdout


@pytest.mark.skipif(shutil.which("apt-get") is None or not _apt_reaches_the_mirror(),
                    reason="needs apt package lists that know s6 (./scripts/bootstrap)")
@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")
def test_s6_closure_is_found_by_elf_analysis_and_runs_in_a_chroot(tmp_path):
    cache = tmp_path / "cache"
    deb, _ = closure.download("s6", version=None, cache=cache)
    tree = tmp_path / "tree"
    closure.unpack_usr(deb, dest=tree)
    found = closure.resolve(tree=tree, seeds=["s6"], cache=cache, work=tmp_path / "work")
    names = [p.name for p in found.packages]
    # s6's Debian Depends, kept because ELF files need them — not because Debian says so
    assert {"libc6", "libskarnet2.13", "libs6-2.11"} <= set(names)
    assert found.satisfied["soname(libc.so.6(x86_64))"] == "libc6"
    # Assemble a root the way a state is laid out (merged /usr) and run a binary in it.
    run_root = tmp_path / "root"
    shutil.copytree(tree / "usr", run_root / "usr", symlinks=True)
    for p in found.packages:
        shutil.copytree(p.tree / "usr", run_root / "usr", symlinks=True, dirs_exist_ok=True)
    for link, target in (("lib", "usr/lib"), ("lib64", "usr/lib64"), ("bin", "usr/bin")):
        os.symlink(target, run_root / link)
    r = subprocess.run(["chroot", run_root, "/usr/bin/s6-svscan", "-h"], capture_output=True)
    # 100 is s6's usage exit; a missing library would be 127 from the dynamic loader
    assert r.returncode == 100, r.stderr
    assert b"usage" in r.stderr.lower()


def test_a_need_no_relation_proposes_is_looked_up_by_file_name():
    # PyPI wheels need libgcc_s.so.1 with no Debian relation naming libgcc-s1
    assert closure._file_of("soname(libgcc_s.so.1(x86_64))") == "libgcc_s.so.1"
    assert closure._file_of("interpreter(/usr/lib64/ld-linux-x86-64.so.2(x86_64))") == \
        "ld-linux-x86-64.so.2"
    assert closure.shipping("libgcc_s.so.1") == ["libgcc-s1"]
    assert closure.shipping("no-such-library.so.42") == []


# -- Debian's versioned relations as constraints on the repacked stones ----------------


KEPT = {"libdrm2": "2.4.123-1~bpo12+1", "libc6": "2.36-9+deb12u10",
        "libxau6": "1:1.0.9-1", "libllvm15": "1:15.0.6-4+b1"}


def test_versioned_relations_on_kept_packages_become_constraints():
    got = closure.constraints(
        "libc6 (>= 2.34), libdrm2 (>= 2.4.121), libxau6 (>= 1:1.0.9), perl (>= 5), "
        "libfoo1 | libllvm15 (>= 1:15.0.0), libdrm-amdgpu1 (>= 2.4.121), libc6:any (<< 2.37), "
        "libdrm2", KEPT, who="mesa")
    # the first alternative the closure kept counts; packages it dropped give nothing;
    # epochs go as they go from the stone versions; << and >> are onix's < and >
    assert got == ["libc6 < 2.37", "libc6 >= 2.34", "libdrm2 >= 2.4.121",
                   "libllvm15 >= 15.0.0", "libxau6 >= 1.0.9"]


def test_a_constraint_compares_right_against_the_repacked_stone_version():
    from onix.repo.versions import parse_dep

    stone = KEPT["libdrm2"]  # the stone's version: Debian's without the epoch, release 1
    # a Debian revision stays part of the compared version (the stone release is appended)
    assert closure.stone_constraint("libdrm2", ">=", "2.4.123-1~bpo12+1") == \
        "libdrm2 >= 2.4.123-1~bpo12+1-1"
    assert parse_dep("libdrm2 >= 2.4.123-1~bpo12+1-1", where="t").allows(stone, 1)
    assert not parse_dep(closure.stone_constraint("libdrm2", ">=", "2.4.123-1"),
                         where="t").allows(stone, 1)  # 1~bpo12+1 is older than 1
    assert parse_dep(closure.stone_constraint("libdrm2", "=", "1:2.4.123-1~bpo12+1"),
                     where="t").allows(stone, 1)
    assert not parse_dep("libdrm2 >= 2.4.121", where="t").allows("2.4.114-1+b1", 1)


def test_a_relation_the_closure_does_not_meet_is_an_error_naming_it():
    with pytest.raises(OnixError) as e:
        closure.constraints("libdrm2 (>= 2.4.124)", KEPT, who="libgl1-mesa-dri")
    assert e.value.message == ("libgl1-mesa-dri needs libdrm2 (>= 2.4.124) but the closure "
                               "found libdrm2 2.4.123-1~bpo12+1")


def test_one_constraint_per_name_from_several_seeds():
    assert closure._tightest(["libdrm2 >= 2.4.99", "libdrm2 >= 2.4.121", "libc6 >= 2.34",
                              "libc6 < 3"]) == ["libc6 < 3", "libc6 >= 2.34",
                                                "libdrm2 >= 2.4.121"]


def test_a_relation_only_the_epoch_orders_is_left_out():
    # Debian: 1:0.9 >= 5 (the epoch wins); without epochs 0.9 < 5, so no constraint
    assert closure.constraints("oldlib (>= 5)", {"oldlib": "1:0.9-1"}, who="x") == []
