"""Stripping for the builder: binaries lose their debug info, which is kept by build-id.

split_debug() strips binaries and keeps their debug info, by build-id, in a separate tree:

    <debug_tree>/usr/lib/debug/.build-id/<first 2 hex>/<rest of the hex>.debug   mode 0644

(the layout gdb and debuginfod look up), and adds a .gnu_debuglink naming that file to the
stripped binary. Executables (PIE ones are ET_DYN) and shared libraries get --strip-unneeded
(they need only .dynsym at run time); relocatable objects (.ko, .o) and the dynamic loader get
--strip-debug (modules need .symtab to load; valgrind and debuggers want the loader's). A file
with nothing to strip is not touched, nor is a signed kernel module (stripping would drop its
signature), nor an ELF file for a machine other than x86_64/i386. A file with debug info but
no build-id is stripped and its debug info dropped (reported in `no_build_id`). Each file is
rewritten in place (same inode, mode and times), so every hard link to it sees the stripped
bytes, and each inode is stripped once — unless the inode also has a link outside `paths` (a
build step hard-linked it from elsewhere on the disk): then the tree's paths get a new inode
with the stripped bytes and the file outside is never written.
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path

from onix.build.elf import ElfFile, is_loader, listed_files, read_elf
from onix.core.errors import OnixError
from onix.core.proc import run, which

log = logging.getLogger("onix.strip")

# Machines whose objects this host's binutils strips; others (firmware for some other
# processor) are left byte for byte.
_STRIPPABLE = frozenset({"x86_64", "i386"})

# Appended by the kernel's sign-file; stripping a signed module would drop the signature.
_MODULE_SIG_MAGIC = b"~Module signature appended~\n"

class DebugSplit(list):
    """What split_debug() did. As a list it is `written` (the spec's list[str] result)."""

    def __init__(self, *, written: list[str], no_build_id: list[str], stripped: list[str],
                 skipped: list[str]):
        super().__init__(written)
        self.written = written          # rel paths written into debug_tree, sorted
        self.no_build_id = no_build_id  # stripped, but their debug info had nowhere to go
        self.stripped = stripped        # every rel path rewritten in the tree (one per inode)
        self.skipped = skipped          # left alone on purpose (signed kernel modules)


def _signed_module(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size < len(_MODULE_SIG_MAGIC):
            return False
        f.seek(size - len(_MODULE_SIG_MAGIC))
        return f.read() == _MODULE_SIG_MAGIC


def _strip_mode(info: ElfFile) -> str | None:
    """The strip option that keeps this file working, or None when there is nothing to do."""
    if info.elf_type in ("EXEC", "DYN") and not is_loader(info):
        # Executables (PIE ones are DYN) and shared libraries need only .dynsym at run time.
        return "--strip-unneeded" if (info.has_debug or info.has_symtab) else None
    # Relocatable objects (.ko, .o) need their .symtab to be linked or loaded, and the
    # dynamic loader keeps it for valgrind and debuggers: only debug info goes.
    return "--strip-debug" if info.has_debug else None


def _rewrite_in_place(path: Path, data: bytes) -> None:
    """Replace a file's bytes keeping its inode (so hard links follow), mode and times."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise OnixError("changed into something other than a file while being stripped",
                        path=path, hint="retry the build")
    mode = stat.S_IMODE(st.st_mode)
    if not mode & stat.S_IWUSR:
        os.chmod(path, mode | stat.S_IWUSR)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    finally:
        os.chmod(path, mode)  # also restores setuid bits, which a write clears
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _rewrite_detached(tree: Path, rels: list[str], data: bytes) -> None:
    """Give the paths `rels` of one inode new bytes in a new inode (mode and times kept,
    still hard links of each other); the old inode, linked from elsewhere, is untouched."""
    first = tree / rels[0]
    st = os.lstat(first)
    fd, tmp = tempfile.mkstemp(dir=first.parent, prefix=".onix-strip-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, stat.S_IMODE(st.st_mode))
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        for rel in rels[1:]:
            other = tree / rel
            link = other.with_name(f".onix-strip-{other.name}")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)
            os.link(tmp, link)
            os.replace(link, other)
        os.replace(tmp, first)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def split_debug(*, tree: Path, debug_tree: Path, paths: Iterable[str]) -> DebugSplit:
    """Strip the ELF files among `paths` and keep their debug info in debug_tree by build-id.

    Deterministic: the same input files give the same stripped files and debug files.
    """
    tree, debug_tree = Path(tree), Path(debug_tree)
    objcopy = which("objcopy")
    strip = which("strip")
    written: set[str] = set()
    no_build_id: list[str] = []
    stripped: list[str] = []
    skipped: list[str] = []
    # inode -> its paths among `paths`: a file is stripped once, for all its hard links
    inodes: dict[tuple[int, int], list[str]] = {}
    nlink: dict[tuple[int, int], int] = {}
    for rel in listed_files(tree, paths):
        st = os.lstat(tree / rel)
        if stat.S_ISREG(st.st_mode):
            inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
            nlink[(st.st_dev, st.st_ino)] = st.st_nlink
    for ino, rels in inodes.items():
        rel = rels[0]
        src = tree / rel
        info = read_elf(src, rel=rel)
        if info is None or info.machine not in _STRIPPABLE:
            continue
        mode = _strip_mode(info)
        if mode is None:
            continue
        if info.elf_type == "REL" and _signed_module(src):
            log.info("%s: signed kernel module, not stripped (the signature would go)", rel)
            skipped.append(rel)
            continue
        with tempfile.TemporaryDirectory(prefix="onix-strip-") as tmp:
            out = Path(tmp) / "stripped"
            debug: Path | None = None
            debug_rel = None
            if info.has_debug and info.build_id:
                bid = info.build_id
                debug_rel = f"usr/lib/debug/.build-id/{bid[:2]}/{bid[2:]}.debug"
                debug = Path(tmp) / posixpath.basename(debug_rel)
                run([objcopy, "--only-keep-debug", src, debug])
            elif info.has_debug:
                log.info("%s: no build-id, its debug info is dropped", rel)
                no_build_id.append(rel)
            run([strip, mode, "-o", out, src])
            if debug is not None and debug_rel is not None:
                run([objcopy, f"--add-gnu-debuglink={debug}", out])
                dest = debug_tree / debug_rel
                for d in reversed(dest.relative_to(debug_tree).parents):
                    with contextlib.suppress(FileExistsError):
                        (debug_tree / d).mkdir()
                        os.chmod(debug_tree / d, 0o755)  # not whatever the umask says
                dest.write_bytes(debug.read_bytes())
                os.chmod(dest, 0o644)
                written.add(debug_rel)
            if nlink[ino] > len(rels):
                # a hard link outside the tree shares this inode (an install step's `ln`
                # or `cp -al` from elsewhere): that file must not change, so the tree's
                # paths get a new inode instead
                _rewrite_detached(tree, rels, out.read_bytes())
            else:
                _rewrite_in_place(src, out.read_bytes())
        stripped.append(rel)
    return DebugSplit(written=sorted(written), no_build_id=no_build_id, stripped=stripped,
                      skipped=skipped)
