"""Kernel modules: which files an initrd needs to reach the root disk, in load order.

No kmod tools run at build time: a state's /usr must be enough. Given the tree of
one kernel,

    usr/lib/modules/<kver>/
        kernel/**/<name>.ko[.xz|.zst|.gz]   the modules
        modules.builtin                     modules compiled into the kernel (optional)
        modules.dep                         depmod's dependency list (optional)

resolve() takes the module names wanted (for example virtio_blk, ext4) and answers
with the files to load, dependencies first; which wanted names are built into this
kernel (nothing to load); which are not built for it at all (a report, not an error:
one default list serves many kernels); and the firmware the loaded modules declare.

Where dependencies come from:

* `modules.dep` when present (`kernel/a.ko: kernel/b.ko kernel/c.ko`, the whole
  transitive list as depmod computed it from symbols);
* otherwise the module's own `.modinfo` ELF section, `depends=a,b` (what modpost
  wrote at build time; depmod derives the same edges from symbols).

`.modinfo` is read in both cases, and only for modules that are needed (a kernel has
1000+), because softdeps (`softdep=pre: crc32c post: x`) and `firmware=` exist only
there. `pre:` softdeps are loaded before the module; a softdep that is not on disk is
skipped silently, as modprobe does; names that only an alias would resolve
(`crypto-crc32c`) are skipped too, since we keep no alias index. `post:` softdeps are
left out: nothing on the way to the root disk needs them.

A dependency that modules.dep or `depends=` names but that is neither on disk nor
built in is an error: the kernel stone is broken, and an initrd without it would
fail at boot, far from the cause.

Compressed modules (.ko.xz, .ko.zst, .ko.gz) are decompressed to read them, and
Module.read() hands out the plain ELF: the initrd stores them as plain .ko, which
busybox insmod loads on any kernel, whatever its CONFIG_MODULE_DECOMPRESS.

Every file of the tree (modules.dep, modules.builtin, each module) is read with
read_regular(), which follows no symlink below usr: see "Reading a state's files". A
symlinked directory in the tree is an error (its modules would be missed, or come from
outside the state), except `build` and `source` at the top, the kernel-headers links.
"""

from __future__ import annotations

import gzip
import io
import lzma
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from onix.core import safepath
from onix.core.errors import OnixError
from onix.core.safepath import clean_rel, is_directory, is_regular, read_regular

SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


def normalize(name: str) -> str:
    """Module names treat '-' and '_' alike (the kernel does); we keep '_'."""
    return name.replace("-", "_")


def module_name(path: str) -> str | None:
    """The module name of a file name, or None if it is not a module file."""
    base = path.rpartition("/")[2]
    for suffix in SUFFIXES:
        if base.endswith(suffix):
            return normalize(base[: -len(suffix)])
    return None


def plain_relpath(rel: str) -> str:
    """kernel/fs/fat/vfat.ko.zst → kernel/fs/fat/vfat.ko (what the initrd stores)."""
    for suffix in SUFFIXES[1:]:
        if rel.endswith(suffix):
            return rel[: -len(suffix) + 3]
    return rel


def decompress(data: bytes, *, name: str) -> bytes:
    """The plain bytes of a module or firmware file, by its suffix."""
    try:
        if name.endswith(".xz"):
            return lzma.decompress(data)
        if name.endswith(".zst"):
            import zstandard

            # stream_reader: a frame without a content size still decompresses
            with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)) as r:
                return r.read()
        if name.endswith(".gz"):
            return gzip.decompress(data)
    except (lzma.LZMAError, OSError, EOFError, ValueError) as e:
        raise OnixError(f"cannot decompress ({e})", path=name,
                        hint="the kernel stone is damaged; rebuild or reinstall it") from e
    return data


@dataclass(frozen=True)
class Module:
    """One module file to load. `rel` is relative to lib/modules/<kver>/, as shipped."""

    name: str
    rel: str
    path: Path  # usr/lib/modules/<kver>/<rel>, for messages; reads go through usr_rel
    usr: Path
    kver: str

    @property
    def usr_rel(self) -> str:
        """The file relative to usr, as read_regular() takes it."""
        return f"lib/modules/{self.kver}/{self.rel}"

    @property
    def initrd_rel(self) -> str:
        """Where it goes below /lib/modules/<kver>/ in the initrd (always plain .ko)."""
        return plain_relpath(self.rel)

    def raw(self) -> bytes:
        """The file's bytes as shipped (maybe compressed), following no symlink."""
        return read_regular(self.usr, self.usr_rel)

    def read(self) -> bytes:
        return decompress(self.raw(), name=self.rel)


@dataclass(frozen=True)
class ModInfo:
    depends: tuple[str, ...] = ()
    softdep_pre: tuple[str, ...] = ()
    firmware: tuple[str, ...] = ()
    vermagic: str = ""


def parse_modinfo(raw: bytes) -> ModInfo:
    """The `.modinfo` section: NUL-separated key=value strings, keys may repeat."""
    depends: list[str] = []
    pre: list[str] = []
    firmware: list[str] = []
    vermagic = ""
    for item in raw.split(b"\0"):
        key, sep, value = item.decode("utf-8", "replace").partition("=")
        if not sep:
            continue
        if key == "depends":
            depends += [normalize(d) for d in value.split(",") if d]
        elif key == "softdep":
            # "pre: a b post: c"; a word before any "pre:"/"post:" is ignored, as kmod does
            mode = None
            for word in value.split():
                if word in ("pre:", "post:"):
                    mode = word
                elif mode == "pre:":
                    pre.append(normalize(word))
        elif key == "firmware" and value:
            firmware.append(value)
        elif key == "vermagic":
            vermagic = value
    return ModInfo(tuple(depends), tuple(pre), tuple(firmware), vermagic)


def read_modinfo(data: bytes, *, where: Path) -> ModInfo:
    """Parse the .modinfo section of a plain (decompressed) module."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        section = ELFFile(io.BytesIO(data)).get_section_by_name(".modinfo")
    except ELFError as e:
        raise OnixError(f"not a kernel module ({e})", path=where,
                        hint="the kernel stone is damaged; rebuild or reinstall it") from e
    if section is None:
        return ModInfo()
    return parse_modinfo(section.data())


@dataclass
class Resolution:
    """What resolve() found. Every list is in a deterministic order."""

    kver: str
    modules: list[Module] = field(default_factory=list)  # load order, dependencies first
    builtin: list[str] = field(default_factory=list)  # wanted, compiled into the kernel
    absent: list[str] = field(default_factory=list)  # wanted, not built for this kernel
    firmware: list[str] = field(default_factory=list)  # declared by the modules, sorted

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.modules]


class ModuleTree:
    """The modules of one kernel in a usr tree; modinfo is read on demand and cached."""

    def __init__(self, *, usr: Path, kver: str):
        self.kver = kver
        self.usr = Path(usr)
        self.rel = f"lib/modules/{kver}"
        self.dir = self.usr / self.rel
        # checked without following symlinks: os.walk below then starts in the state's
        # own directory, and it never descends into symlinked directories itself
        if not is_directory(self.usr, self.rel):
            raise OnixError(f"no modules for kernel {kver}", path=self.dir,
                            hint="install the kernel stone that provides this version")
        self.files = self._index()
        self.builtin = self._builtin()
        self.dep = self._modules_dep()
        self._info: dict[str, ModInfo] = {}

    def _index(self) -> dict[str, str]:
        """name → path relative to the modules dir. updates/ wins, as in depmod's search.

        os.walk does not descend into a symlinked directory, so modules behind one
        would silently go missing (or, followed, come from outside the state): such a
        directory is an error. The exceptions are `build` and `source` at the top,
        the links to kernel headers (/usr/src/...) that depmod skips too. A symlinked
        module file is indexed, and refused by read_regular() if it is needed.
        """
        found: dict[str, list[str]] = {}
        for dirpath, dirnames, filenames in os.walk(self.dir):
            dirnames.sort()
            rel_dir = Path(dirpath).relative_to(self.dir).as_posix()
            for d in dirnames:
                if (Path(dirpath) / d).is_symlink() and not (
                        rel_dir == "." and d in ("build", "source")):
                    rel = f"{self.rel}/{d}" if rel_dir == "." else f"{self.rel}/{rel_dir}/{d}"
                    raise OnixError(f"usr/{rel} is a symlink to {os.readlink(self.usr / rel)} "
                                    "(on the way to the modules below it); onix follows no "
                                    "symlink in a state's boot inputs, so that nothing outside "
                                    "the state's usr tree goes into its initrd",
                                    path=self.usr / rel,
                                    hint=f"ship usr/{rel} as {safepath.DIRECTORY}, not a symlink")
            for f in filenames:
                name = module_name(f)
                if name is not None:
                    rel = f if rel_dir == "." else f"{rel_dir}/{f}"
                    found.setdefault(name, []).append(rel)
        return {name: min(rels, key=lambda r: (not r.startswith("updates/"), r))
                for name, rels in found.items()}

    def _read(self, name: str) -> str | None:
        """A file of the modules dir as text, or None if there is none."""
        try:
            return read_regular(self.usr, f"{self.rel}/{name}").decode("utf-8", "replace")
        except FileNotFoundError:
            return None

    def _builtin(self) -> set[str]:
        text = self._read("modules.builtin")
        if text is None:
            return set()
        return {n for line in text.splitlines() if (n := module_name(line.strip()))}

    def _modules_dep(self) -> dict[str, list[str]] | None:
        """modules.dep as name → dependency paths, or None if depmod never ran."""
        text = self._read("modules.dep")
        if text is None:
            return None
        p = self.dir / "modules.dep"
        out: dict[str, list[str]] = {}
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.startswith("#"):
                continue
            head, sep, tail = line.partition(":")
            name = module_name(head.strip())
            bad = [rel for rel in tail.split() if module_name(rel) is None]
            if not sep or name is None or bad:
                raise OnixError(f"line {n} is not 'kernel/a.ko: kernel/b.ko ...'", path=p,
                                hint="run depmod again, or remove modules.dep")
            # busybox depmod may write absolute paths; kmod writes them relative
            prefix = f"/lib/modules/{self.kver}/"
            rels = [rel.split(prefix, 1)[1] if prefix in rel else rel.lstrip("/")
                    for rel in tail.split()]
            if not all(map(clean_rel, rels)):  # "../../etc/x.ko" names no file of the tree
                raise OnixError(f"line {n} names a path outside the modules directory",
                                path=p, hint="run depmod again, or remove modules.dep")
            out[name] = rels
        return out

    def module(self, name: str) -> Module:
        rel = self.files[name]
        return Module(name=name, rel=rel, path=self.dir / rel, usr=self.usr, kver=self.kver)

    def info(self, name: str) -> ModInfo:
        if name not in self._info:
            m = self.module(name)
            info = read_modinfo(m.read(), where=m.path)
            # A module built for another kernel would fail insmod at boot; say so now.
            built_for = info.vermagic.split(" ", 1)[0]
            if built_for and built_for != self.kver:
                raise OnixError(f"module {name} was built for kernel {built_for}, not "
                                f"{self.kver}", path=m.path,
                                hint="the kernel stone mixes two kernels; rebuild it")
            self._info[name] = info
        return self._info[name]

    def depends(self, name: str) -> list[str]:
        """Dependency names; checked only for modules we need, not all 1000+."""
        if self.dep is None or name not in self.dep:
            return list(self.info(name).depends)
        deps = []
        for rel in self.dep[name]:
            dep = module_name(rel)
            # modules.dep names exact files: one that is gone means a broken tree
            if dep not in self.builtin and not is_regular(self.usr, f"{self.rel}/{rel}"):
                raise OnixError(f"{name} needs {dep}, but its file is missing",
                                path=self.dir / rel,
                                hint="the kernel stone is broken; rebuild or reinstall it")
            deps.append(dep)
        return deps


def resolve(*, usr: Path, kver: str, wanted: Iterable[str]) -> Resolution:
    """Modules to load for `wanted`, dependencies first; see the module docstring."""
    tree = ModuleTree(usr=usr, kver=kver)
    res = Resolution(kver=kver)
    order: list[str] = []
    done: set[str] = set()
    active: set[str] = set()

    def visit(name: str, needed_by: str | None) -> None:
        if name in done or name in active:
            return  # a softdep cycle: the first visit already places it
        if name not in tree.files:
            if name in tree.builtin:
                return
            m = tree.module(needed_by)
            raise OnixError(f"{needed_by} depends on {name}, which is neither a module file "
                            f"nor built into kernel {kver}", path=m.path,
                            hint="the kernel stone is broken; rebuild or reinstall it")
        active.add(name)
        info = tree.info(name)
        for dep in sorted(set(tree.depends(name))):
            visit(dep, name)
        # pre: softdeps load before the module; ones this kernel lacks are skipped
        for soft in info.softdep_pre:
            if soft in tree.files:
                visit(soft, name)
        active.discard(name)
        done.add(name)
        order.append(name)

    seen: set[str] = set()
    for raw in wanted:
        name = normalize(raw.strip())
        if not name or name in seen:
            continue
        seen.add(name)
        if name in tree.files:
            visit(name, None)
        elif name in tree.builtin:
            res.builtin.append(name)
        else:
            res.absent.append(name)
    res.modules = [tree.module(n) for n in order]
    res.firmware = sorted({fw for n in order for fw in tree.info(n).firmware})
    return res
