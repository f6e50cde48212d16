"""What onix takes from the host: every program it runs and every file it reads, each with
the Debian package that provides it.

This table is the contract between the code and `scripts/bootstrap`, the one list of
what the project installs. `proc.which` and `proc.run` accept only programs named here
(a program missing from the table is a bug, found the first time the code path runs),
and tests/core/test_tools.py reads every place in onix/ and tests/ that names a program and
fails when it is not in this table, or when its package is not in the bootstrap's list.
`scripts/fresh-check` installs the bootstrap into a minimal Debian and runs
`python -m onix.core.tools` there: every program and file below must then be found.

PROGRAMS are what the onix package itself runs (the builder, images, validation, the Nix
self-test, s6). FOR_TESTS are what only the test suite, its harnesses and the benchmarks
run; they live here too so that there is one table to keep true, not two.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

PROGRAMS: dict[str, str] = {
    # the builder: recipe steps, Debian sources and their library closure, ELF splitting
    "bash": "bash",
    "tar": "tar",
    "gzip": "gzip",  # tar runs these for the tarball suffixes recipe.TARBALL_SUFFIXES knows
    "bzip2": "bzip2",
    "xz": "xz-utils",
    "zstd": "zstd",
    "lzip": "lzip",
    "apt-get": "apt",
    "apt-cache": "apt",
    "dpkg-deb": "dpkg",
    "dpkg-query": "dpkg",
    "objcopy": "binutils",
    "strip": "binutils",
    # images and the validation's VMs
    "sh": "dash",
    "cp": "coreutils",
    "dd": "coreutils",
    "chmod": "coreutils",
    "sfdisk": "fdisk",
    "mformat": "mtools",
    "mcopy": "mtools",
    "mdir": "mtools",
    "mtype": "mtools",
    "mkfs.ext4": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "dumpe2fs": "e2fsprogs",
    "e2fsck": "e2fsprogs",
    "qemu-system-x86_64": "qemu-system-x86",
    "gcc": "gcc",  # the validation's EGL app (onix/validate/fixtures/gui-app/build.sh)
    # the Nix plane: the self-test as another user, the store of a validation image
    "setpriv": "util-linux",
    "nix-build": "nix-bin",
    "nix-store": "nix-bin",
    # transaction triggers (machine/triggers.py): a private mount and PID namespace, the
    # overlay over the new /usr, the chroot into it
    "unshare": "util-linux",
    "mount": "mount",
    "chroot": "coreutils",
    "timeout": "coreutils",
    # s6: the services of the live state
    "s6-svc": "s6",
    "s6-svstat": "s6",
    "s6-svwait": "s6",
    "s6-svscanctl": "s6",
}

FOR_TESTS: dict[str, str] = {
    "musl-gcc": "musl-tools",
    "ld": "binutils",
    "cpio": "cpio",
    "bootctl": "systemd-boot",
    "truncate": "coreutils",
    "cat": "coreutils",
    "id": "coreutils",
    "rm": "coreutils",
    "find": "findutils",
    "xargs": "findutils",
    "umount": "mount",
    "kill": "procps",
    "getent": "libc-bin",
    "nix": "nix-bin",
    "nix-daemon": "nix-bin",
    "s6-svscan": "s6",
    "s6-supervise": "s6",
    "s6-log": "s6",
    "s6-notifyoncheck": "s6",
    "ostree": "ostree",  # the benchmarks' peers
    "b3sum": "b3sum",
    "debootstrap": "debootstrap",  # scripts/fresh-check, with a git clone of the checkout
    "git": "git",
}

# Files onix reads from Debian packages (not from a state or a stone).
FILES: dict[str, str] = {
    "/usr/share/OVMF/OVMF_CODE_4M.fd": "ovmf",
    "/usr/share/OVMF/OVMF_VARS_4M.fd": "ovmf",
    "/usr/share/keyrings/debian-archive-keyring.gpg": "debian-archive-keyring",
    "/usr/lib/systemd/boot/efi/systemd-bootx64.efi": "systemd-boot-efi",  # the boot tests
    "/usr/lib/x86_64-linux-musl/libc.so": "musl",  # the ELF tests' host musl
}


def package_of(program: str) -> str:
    """The Debian package that provides `program`; ValueError for an undeclared one."""
    try:
        return PROGRAMS.get(program) or FOR_TESTS[program]
    except KeyError:
        raise ValueError(f"{program} is not declared in onix/core/tools.py: add it with its "
                         "Debian package, and the package to scripts/bootstrap") from None


def host_file(path: str) -> Path:
    """A file onix reads from a Debian package; ValueError for an undeclared one."""
    if path not in FILES:
        raise ValueError(f"{path} is not declared in onix/core/tools.py FILES: add it with its "
                         "Debian package, and the package to scripts/bootstrap")
    return Path(path)


def missing() -> list[tuple[str, str]]:
    """(program or file, package) for everything declared that this machine lacks."""
    gone = [(p, pkg) for p, pkg in {**PROGRAMS, **FOR_TESTS}.items() if shutil.which(p) is None]
    gone += [(f, pkg) for f, pkg in FILES.items() if not Path(f).is_file()]
    return gone


def packages() -> set[str]:
    """Every Debian package named above."""
    return set(PROGRAMS.values()) | set(FOR_TESTS.values()) | set(FILES.values())


if __name__ == "__main__":  # scripts/fresh-check runs this inside the fresh machine
    lost = missing()
    for what, pkg in lost:
        print(f"missing: {what} (Debian package {pkg})")
    total = len(PROGRAMS) + len(FOR_TESTS) + len(FILES)
    print(f"{total - len(lost)} of {total} programs and files found")
    sys.exit(1 if lost else 0)
