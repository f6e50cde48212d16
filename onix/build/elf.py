"""ELF analysis for the builder: what a built tree provides and needs.

analyse() reads a DESTDIR (a tree holding usr/) and answers in moss-style provider strings:

    provides  soname(libfoo.so.1(x86_64))      DT_SONAME of an ELF library
              binary(ls) / sysbinary(mount)    a file or symlink directly in usr/bin / usr/sbin
              interpreter(/usr/lib64/ld-linux-x86-64.so.2(x86_64))
                                               a dynamic loader, under every path of the tree
                                               (file or symlink) that resolves to it
              pkgconfig(zlib)                  usr/lib/pkgconfig/*.pc, usr/lib/*/pkgconfig/*.pc,
                                               usr/lib64/pkgconfig/*.pc, usr/share/pkgconfig/*.pc
    depends   soname(libc.so.6(x86_64))        a DT_NEEDED not found inside the tree
              interpreter(/usr/...(x86_64))    a PT_INTERP not found inside the tree
              pkgconfig(x)                     `Requires:` / `Requires.private:` of a .pc file
                                               (pkg-config reads the private ones for --cflags
                                               too, so a missing one breaks every user)

A DT_NEEDED is looked up the way ld.so would, but inside the tree: DT_RUNPATH (or DT_RPATH when
there is no RUNPATH) with $ORIGIN expanded to the file's own directory, then usr/lib/x86_64-
linux-gnu, usr/lib64, usr/lib, usr/lib/x86_64-linux-musl. Absolute paths (in RUNPATH, in a
symlink's target, in PT_INTERP) are taken relative to the tree, as they will be once the tree is
the root, with merged-usr applied (/lib64/x is /usr/lib64/x). Symlinks are resolved one
component at a time with lstat/readlink; one that leads out of the tree (`..` above it) resolves
to nothing, so nothing outside the tree is ever read.

`paths` restricts the analysis to one package split: only those files count as provided, and a
need is met only when the file it resolves to, and every symlink on the way, are among `paths`.
A need met by another split's file is left as a soname() dependency, which the caller turns into
a dependency on that split (its provides hold the soname).

Only ELF files of the stone's machine (`arch`) take part: firmware blobs are sometimes ELF for
other processors, and their needs are not ours. A file with the ELF magic that pyelftools cannot
parse is logged and treated as not ELF.

Reading is cheap by design: the ELF header, the section and program headers, the dynamic
entries and the build-id note are read from the file; no section's contents are loaded, so a
100 MB library costs what a small one does.

Stripping, which reads files with read_elf(), is onix/build/strip.py.
"""

from __future__ import annotations

import errno
import fnmatch
import logging
import os
import posixpath
import re
import stat
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from elftools.elf.dynamic import DynamicSection, DynamicSegment
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import NoteSection
from elftools.elf.segments import NoteSegment

from onix.core import safepath
from onix.core.errors import OnixError
from onix.core.safepath import clean_rel

log = logging.getLogger("onix.elf")

ELF_MAGIC = b"\x7fELF"

# Where ld.so (glibc and musl, Debian multiarch and plain) looks when RUNPATH does not say.
DEFAULT_LIB_DIRS = ("usr/lib/x86_64-linux-gnu", "usr/lib64", "usr/lib",
                    "usr/lib/x86_64-linux-musl")

# Top-level directories that merged-usr turns into symlinks into usr/.
_MERGED = frozenset({"bin", "sbin", "lib", "lib32", "lib64", "libx32"})

_LOADER_PREFIXES = ("ld-linux", "ld-musl")

_PC_GLOBS = ("usr/lib/pkgconfig/*.pc", "usr/lib/*/pkgconfig/*.pc", "usr/lib64/pkgconfig/*.pc",
             "usr/share/pkgconfig/*.pc")

_MAX_LINKS = 40  # what the kernel allows on one path (ELOOP)


@dataclass(frozen=True)
class ElfFile:
    path: str                  # relative to the tree root, posix, e.g. "usr/bin/foo"
    elf_type: str              # "EXEC" | "DYN" | "REL" | "CORE" | ...
    machine: str               # "x86_64", "i386", "aarch64", ...
    soname: str | None
    needed: tuple[str, ...]
    runpath: tuple[str, ...]   # DT_RUNPATH entries, raw (may contain $ORIGIN)
    rpath: tuple[str, ...]     # DT_RPATH entries, raw
    interp: str | None         # PT_INTERP, as written in the file
    build_id: str | None       # hex of NT_GNU_BUILD_ID
    has_debug: bool            # has .debug_* / .zdebug_* sections (strippable)
    static: bool               # no PT_INTERP, and no PT_DYNAMIC or no DT_NEEDED
    has_symtab: bool = False   # has a .symtab (strip --strip-unneeded would shrink it)


@dataclass
class Analysis:
    provides: list[str] = field(default_factory=list)       # sorted, unique
    depends: list[str] = field(default_factory=list)        # sorted, unique, none provided
    files: dict[str, ElfFile] = field(default_factory=dict)  # rel path -> info, ELF only
    reasons: dict[str, list[str]] = field(default_factory=dict)  # depends -> rel paths


def _machine(name: object) -> str:
    names = {"EM_X86_64": "x86_64", "EM_386": "i386", "EM_AARCH64": "aarch64",
             "EM_ARM": "arm", "EM_RISCV": "riscv"}
    if isinstance(name, str):
        return names.get(name, name.removeprefix("EM_").lower())
    return str(name)


def _split_paths(value: str) -> list[str]:
    return [p for p in value.split(":") if p]


def read_elf(path: Path, *, rel: str) -> ElfFile | None:
    """What analysis needs of one file; None when it is not a regular ELF file.

    A symlink is not followed (None): the file it leads to is read under its own path.
    """
    try:
        # O_NONBLOCK: opening a FIFO someone left in the tree must not hang the build.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    with os.fdopen(fd, "rb") as f:
        if f.read(4) != ELF_MAGIC:
            return None
        f.seek(0)
        try:
            return _parse(ELFFile(f), rel)
        except OSError:
            raise
        except Exception as e:  # pyelftools raises many kinds on a malformed file
            log.warning("%s: has the ELF magic but cannot be parsed (%s); treated as not ELF",
                        path, e)
            return None


# Section and program header tables are scanned with struct in one read each: building a
# pyelftools object per section costs a millisecond on a kernel module (it parses hash tables
# and string tables eagerly), and a kernel has thousands of modules. pyelftools still parses
# the few parts that are read: the file header, the dynamic entries, the notes, PT_INTERP.
_SHDR = {32: ("IIIIIIIIII", 40), 64: ("IIQQQQIIQQ", 64)}  # name type flags addr off size link..
_PHDR = {32: ("IIIIIIII", 32), 64: ("IIQQQQQQ", 56)}
_SHT_SYMTAB, _SHT_DYNAMIC, _SHT_NOTE = 2, 6, 7
_PT_DYNAMIC, _PT_INTERP, _PT_NOTE = 2, 3, 4


def _table(elf: ELFFile, offset: int, count: int, entsize: int, layout: tuple[str, int]) -> list:
    fmt, size = layout
    if count == 0 or offset == 0 or entsize < size:
        return []
    elf.stream.seek(offset)
    raw = elf.stream.read(count * entsize)
    if len(raw) < count * entsize:
        raise ValueError("header table runs past the end of the file")
    unpack = struct.Struct(("<" if elf.little_endian else ">") + fmt).unpack_from
    return [unpack(raw, i * entsize) for i in range(count)]


def _parse(elf: ELFFile, rel: str) -> ElfFile:
    h = elf.header
    sections = _table(elf, h["e_shoff"], elf.num_sections(), h["e_shentsize"],
                      _SHDR[elf.elfclass])
    segments = _table(elf, h["e_phoff"], elf.num_segments(), h["e_phentsize"],
                      _PHDR[elf.elfclass])

    names = b""
    strndx = elf.get_shstrndx() if sections else 0
    if 0 < strndx < len(sections):
        elf.stream.seek(sections[strndx][4])
        names = elf.stream.read(sections[strndx][5])

    has_debug = has_symtab = False
    dynamic = None
    build_id_notes: list = []
    for i, sh in enumerate(sections):
        name_end = names.find(b"\0", sh[0])
        name = names[sh[0]:name_end if name_end >= 0 else None]
        kind = sh[1]
        if name.startswith((b".debug_", b".zdebug_")):
            has_debug = True
        elif kind == _SHT_SYMTAB:
            has_symtab = True
        elif kind == _SHT_DYNAMIC:
            # The section finds its strings through sh_link, which works on any file that
            # has section headers; the segment is the fallback for files stripped of them.
            dynamic = elf.get_section(i)
        elif kind == _SHT_NOTE and name == b".note.gnu.build-id":
            build_id_notes.append(elf.get_section(i))

    interp: str | None = None
    has_dynamic = dynamic is not None
    for i, ph in enumerate(segments):
        if ph[0] == _PT_INTERP:
            interp = elf.get_segment(i).get_interp_name()
        elif ph[0] == _PT_DYNAMIC:
            has_dynamic = True
            if dynamic is None:
                dynamic = elf.get_segment(i)
        elif ph[0] == _PT_NOTE and not sections:
            build_id_notes.append(elf.get_segment(i))

    soname, needed, runpath, rpath = _dynamic_entries(dynamic)
    etype = h["e_type"]
    return ElfFile(
        path=rel,
        elf_type=etype.removeprefix("ET_") if isinstance(etype, str) else str(etype),
        machine=_machine(h["e_machine"]),
        soname=soname,
        needed=tuple(needed),
        runpath=tuple(runpath),
        rpath=tuple(rpath),
        interp=interp,
        build_id=_build_id(build_id_notes),
        has_debug=has_debug,
        static=interp is None and (not has_dynamic or not needed),
        has_symtab=has_symtab,
    )


def _dynamic_entries(dynamic: object) -> tuple[str | None, list[str], list[str], list[str]]:
    """DT_SONAME, DT_NEEDED, DT_RUNPATH and DT_RPATH of a dynamic section or segment."""
    soname: str | None = None
    needed: list[str] = []
    runpath: list[str] = []
    rpath: list[str] = []
    if isinstance(dynamic, DynamicSection | DynamicSegment):
        for tag in dynamic.iter_tags():
            t = tag.entry.d_tag
            if t == "DT_NEEDED":
                needed.append(tag.needed)
            elif t == "DT_SONAME":
                soname = tag.soname
            elif t == "DT_RUNPATH":
                runpath.extend(_split_paths(tag.runpath))
            elif t == "DT_RPATH":
                rpath.extend(_split_paths(tag.rpath))
    return soname, needed, runpath, rpath


def _build_id(holders: list) -> str | None:
    """Hex of the first NT_GNU_BUILD_ID note among the note sections or segments."""
    build_id: str | None = None
    for holder in holders:
        if not isinstance(holder, NoteSection | NoteSegment):
            continue
        for note in holder.iter_notes():
            if note["n_type"] == "NT_GNU_BUILD_ID" and note["n_name"] == "GNU":
                build_id = str(note["n_desc"])
                break
        if build_id:
            break
    return build_id


def is_loader(info: ElfFile) -> bool:
    """A dynamic loader by its soname (ld-linux-*, ld-musl-*)."""
    return bool(info.soname and info.soname.startswith(_LOADER_PREFIXES))


def _merged_usr(path: str) -> str:
    """/lib64/x -> /usr/lib64/x: where an absolute path lives on a merged-usr root."""
    norm = posixpath.normpath("/" + path.lstrip("/"))
    first = norm.split("/")[1] if norm != "/" else ""
    return "/usr" + norm if first in _MERGED else norm


class _Tree:
    """Symlink resolution inside one tree, never leaving it (cached: many lookups repeat)."""

    def __init__(self, root: Path):
        self.root = str(root)
        self._cache: dict[str, tuple[str, tuple[str, ...]] | None] = {}

    def _lstat(self, rel: str) -> os.stat_result | None:
        try:
            return os.lstat(os.path.join(self.root, rel))
        except (FileNotFoundError, NotADirectoryError):
            return None

    def resolve(self, rel: str) -> tuple[str, tuple[str, ...]] | None:
        """(final path, symlinks passed) for a tree-relative path; None if it does not exist
        in the tree or leads out of it."""
        if rel in self._cache:
            return self._cache[rel]
        result = self._resolve(rel)
        self._cache[rel] = result
        return result

    def _resolve(self, rel: str) -> tuple[str, tuple[str, ...]] | None:
        # an absolute target stays in the tree (it is a sysroot); a root-level lib/ in a
        # merged-usr tree is usr/lib; leaving the tree or a loop finds nothing
        got = safepath.follow_links(Path(self.root), rel, max_links=_MAX_LINKS,
                                    alias=lambda part: f"usr/{part}" if part in _MERGED
                                    else None)
        return (got.path, got.links) if got.path else None

def _walk(tree: Path) -> list[str]:
    """Every non-directory entry and every symlink (to a directory too) below tree, sorted."""
    out: list[str] = []
    root = str(tree)
    for dirpath, dirnames, filenames in os.walk(root):
        base = os.path.relpath(dirpath, root)
        base = "" if base == "." else base.replace(os.sep, "/") + "/"
        out.extend(base + n for n in filenames)
        out.extend(base + n for n in dirnames if os.path.islink(os.path.join(dirpath, n)))
    out.sort()
    return out


def listed_files(tree: Path, paths: Iterable[str]) -> list[str]:
    """The paths that are not directories, each checked to be plain and present."""
    out: set[str] = set()
    for rel in paths:
        rel = rel.strip("/")
        if not clean_rel(rel):
            raise OnixError(f"{rel!r} is not a plain relative path in the tree", path=tree,
                            hint="pass paths relative to the tree root, without '..'")
        try:
            st = os.lstat(tree / rel)
        except FileNotFoundError:
            raise OnixError("is listed for analysis but missing from the tree",
                            path=tree / rel, hint="this is a builder bug; report it") from None
        if not stat.S_ISDIR(st.st_mode):
            out.add(rel)
    return sorted(out)


_REQ_RE = re.compile(r"([^\s,<>=!]+)(?:\s*(?:<=|>=|!=|=|<|>)\s*[^\s,]+)?")
_VAR_RE = re.compile(r"\$\{([A-Za-z0-9_.]+)\}")


def _pc_requires(text: str) -> list[str]:
    """Package names in a .pc file's Requires and Requires.private, versions dropped."""
    variables: dict[str, str] = {}
    names: list[str] = []
    text = text.replace("\\\n", " ")
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.match(r"([A-Za-z0-9_.]+)\s*([:=])\s*(.*)$", line)
        if not m:
            continue
        key, sep, value = m.groups()
        value = _VAR_RE.sub(lambda v: variables.get(v.group(1), ""), value)
        if sep == "=":
            variables[key] = value
        elif key in ("Requires", "Requires.private"):
            names.extend(r.group(1) for r in _REQ_RE.finditer(value))
    return names


def analyse(tree: Path, *, paths: Iterable[str] | None = None,
            arch: str = "x86_64") -> Analysis:
    """Provides and depends of the files `paths` of `tree` (all of it when None)."""
    tree = Path(tree)
    entries = _walk(tree) if paths is None else listed_files(tree, paths)
    result = Analysis()
    for rel in entries:
        info = read_elf(tree / rel, rel=rel)
        if info is not None:
            result.files[rel] = info
    ours = _Ours(tree, files=result.files, in_scope=set(entries), arch=arch)
    needs = _Needs()
    provides = _path_provides(entries)
    for rel in entries:
        if any(fnmatch.fnmatchcase(rel, g) for g in _PC_GLOBS):
            needs.add_all((f"pkgconfig({req})" for req in _pc_requires_of(rel, ours)), rel)
    provides |= {f"soname({f.soname}({arch}))" for f in ours.files.values() if f.soname}
    for rel, f in sorted(ours.files.items()):
        if f.interp and ours.interpreter(f) is None:
            needs.add(f"interpreter({_merged_usr(f.interp)}({arch}))", rel)
        needs.add_all((f"soname({lib}({arch}))" for lib in _unmet_libraries(rel, f, ours)), rel)
    # A loader is provided under every path of ours that resolves to it.
    loaders = _loaders(entries, ours)
    if loaders:  # most trees have none: no need to resolve every path then
        provides |= {f"interpreter({_merged_usr(rel)}({arch}))" for rel in entries
                     if ours.inside(rel) in loaders}
    result.provides = sorted(provides)
    result.depends = sorted(d for d in needs.reasons if d not in provides)
    result.reasons = {d: sorted(needs.reasons[d]) for d in result.depends}
    return result


class _Needs:
    """What the analysed files need, each with the paths that need it (Analysis.reasons)."""

    def __init__(self) -> None:
        self.reasons: dict[str, set[str]] = {}

    def add(self, dep: str, rel: str) -> None:
        self.reasons.setdefault(dep, set()).add(rel)

    def add_all(self, deps: Iterable[str], rel: str) -> None:
        for dep in deps:
            self.add(dep, rel)


class _Ours:
    """The analysed ELF files of the stone's machine, and lookups that count only paths
    within the analysed scope (a need met by another split's file stays a need)."""

    def __init__(self, tree: Path, *, files: dict[str, ElfFile], in_scope: set[str],
                 arch: str):
        self.tree = tree
        self.fs = _Tree(tree)
        self.in_scope = in_scope
        self.files = {rel: f for rel, f in files.items() if f.machine == arch}
        self._inside: dict[str, str | None] = {}

    def inside(self, rel: str) -> str | None:
        """The ELF of ours that rel resolves to through paths that are all ours."""
        if rel not in self._inside:
            found = self.fs.resolve(rel)
            final = None
            if found is not None and found[0] in self.files and all(
                    lk in self.in_scope for lk in found[1]):
                final = found[0]
            self._inside[rel] = final
        return self._inside[rel]

    def interpreter(self, f: ElfFile) -> str | None:
        """The file of ours f's PT_INTERP names, or None."""
        return self.inside(_merged_usr(f.interp).lstrip("/")) if f.interp else None

    def is_dyn(self, rel: str) -> bool:
        return self.files[rel].elf_type == "DYN"


def _path_provides(entries: list[str]) -> set[str]:
    """What a file provides by where it is: a command, or a pkg-config module."""
    provides: set[str] = set()
    for rel in entries:
        parent, name = posixpath.split(rel)
        if parent == "usr/bin":
            provides.add(f"binary({name})")
        elif parent == "usr/sbin":
            provides.add(f"sysbinary({name})")
        if any(fnmatch.fnmatchcase(rel, g) for g in _PC_GLOBS):
            provides.add(f"pkgconfig({name.removesuffix('.pc')})")
    return provides


def _pc_requires_of(rel: str, ours: _Ours) -> list[str]:
    """The Requires of the .pc file rel, when it and the links to it are in scope."""
    found = ours.fs.resolve(rel)
    if not found or found[0] not in ours.in_scope or any(
            lk not in ours.in_scope for lk in found[1]):
        return []
    real = ours.tree / found[0]
    if not stat.S_ISREG(os.lstat(real).st_mode):
        return []
    return _pc_requires(real.read_bytes().decode("utf-8", errors="replace"))


def _unmet_libraries(rel: str, f: ElfFile, ours: _Ours) -> list[str]:
    """The DT_NEEDED of f that no file of ours meets, looked up the way ld.so would."""
    if not f.needed:
        return []
    origin = posixpath.dirname(rel)
    dirs: list[str] = []
    for entry in f.runpath or f.rpath:
        entry = entry.replace("${ORIGIN}", "$ORIGIN")
        if entry.startswith("$ORIGIN"):
            entry = origin + entry.removeprefix("$ORIGIN")
        elif entry.startswith("/"):
            entry = entry.lstrip("/")
        else:
            continue  # relative to the working directory, or $LIB/$PLATFORM: unknowable
        if "$" not in entry:
            dirs.append(entry)
    dirs.extend(DEFAULT_LIB_DIRS)
    unmet = []
    for lib in f.needed:
        if "/" in lib:
            candidates = [lib.lstrip("/")] if lib.startswith("/") else []
        else:
            candidates = [f"{d}/{lib}" for d in dirs]
        if not any(ours.inside(cand) is not None for cand in candidates):
            unmet.append(lib)
    return unmet


def _loaders(entries: list[str], ours: _Ours) -> set[str]:
    """Our dynamic loaders: by soname, as some binary's PT_INTERP, or by name (Debian's
    /lib64/ld-linux-x86-64.so.2 is a symlink; musl's loader is a symlink to libc.so)."""
    loaders = {rel for rel, f in ours.files.items() if is_loader(f) and f.elf_type == "DYN"}
    targets = [ours.interpreter(f) for f in ours.files.values()]
    targets += [ours.inside(rel) for rel in entries
                if posixpath.basename(rel).startswith(_LOADER_PREFIXES)]
    loaders.update(t for t in targets if t is not None and ours.is_dyn(t))
    return loaders
