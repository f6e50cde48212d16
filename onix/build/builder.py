"""The builder: a recipe in, stones and a manifest out (`onix build RECIPE`).

Steps (build() calls them in this order): load the recipe (recipe.py) → check its
builddeps are installed → fetch and verify the upstreams (sources.py) → wipe and fill
the work dir → run setup, build, install in a clean environment → keep only
installroot/usr → strip, debug info into a -dbginfo stone (strip.py) → check → split
into packages by glob, ELF analysis per stone (splits.py, elf.py) → with `closure:
debian`, one more stone per Debian package providing a library those stones need
(closure.py) → pack → manifest.

Work dir, one per recipe name, at a fixed path so that paths compiled into binaries
are the same every build (``<cache>/work/<name>``, flock ``<cache>/work/<name>.lock``,
wiped at the start of each build, removed after a successful one unless --keep)::

    src/       %(sourcedir): upstreams placed here (tarballs unpacked)
    build/     %(builddir): empty, for out-of-tree builds
    install/   %(installroot): the DESTDIR; only usr/ is kept
    debug/     split-off debug info (usr/lib/debug/.build-id/xx/….debug)
    stage/     one DESTDIR per stone, hard links into install/ and debug/
    home/      HOME for the steps (empty)
    log/       <step>.sh (the expanded script) and <step>.log (its output)

Steps run as ``bash -euo pipefail log/<step>.sh`` with umask 022, cwd %(workdir), and
exactly this environment: PATH=/usr/sbin:/usr/bin:/sbin:/bin, HOME=<work>/home,
LANG=LC_ALL=C.UTF-8, TZ=UTC, TERM=dumb, SOURCE_DATE_EPOCH (recipe's
`source-date-epoch`, default 1700000000), MAKEFLAGS=-j<jobs>, plus the recipe's
`environment`.

Output, in the `-o` directory (each written under a temporary name, then renamed):

    <name>-<version>-<release>-x86_64.stone           the main stone
    <split>-<version>-<release>-x86_64.stone          one per non-empty package split
    <name>-dbginfo-<version>-<release>-x86_64.stone   when any debug info was split off
    <debpkg>-<debversion>-1-x86_64.stone              `closure: debian`: one per library
                                                      package (Debian version, no epoch)
    <name>-<version>-<release>.manifest.json          canonical JSON (sorted keys, compact):
        {"format": 1, "name", "version", "release", "source_date_epoch",
         "upstreams": [{"kind", "ref", "version", "file", "sha256"}]  (closure packages
                       as kind "debian-closure"),
         "dropped": [paths outside usr/ that install wrote, removed],
         "debug": {"written": […], "no_build_id": […]},
         "stones": [{"name", "file", "sha256", "size", "summary", "provides",
                     "depends": {dependency: [why: paths needing it, or "rundeps"]},
                     "files": [{"path", "type", "mode", "sha256" | "target"}]}]}
    No timestamps and no host paths: the same recipe gives byte-identical output.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from onix.build import sources
from onix.build.recipe import ARCH, TARGET, Recipe, expand, load
from onix.build.splits import Planned, closure_stones, plan, walk
from onix.build.strip import split_debug
from onix.core import fsutil, proc
from onix.core.errors import LockedError, OnixError
from onix.core.fsutil import atomic_write, remove_tree
from onix.machine.stone import pack

PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
# zstd level for stones. 19 packs busybox (1 MiB) in well under a second; above
# LEVEL_BIG_AT bytes of content (a kernel's modules) level 19 would cost minutes for a
# few percent, so big stones use BIG_LEVEL. The choice depends only on the content, so
# it stays deterministic.
LEVEL = 19
BIG_LEVEL = 10
LEVEL_BIG_AT = 64 << 20
TAIL_LINES = 5
WORK_DIRS = ("src", "build", "install", "debug", "stage", "home", "log")

Progress = Callable[[str], None]


class BuildError(OnixError):
    """A recipe step failed; `path` is its log, `tail` its last lines."""

    def __init__(self, message: str, *, path: Path | str | None = None, hint: str | None = None,
                 tail: list[str] | None = None):
        super().__init__(message, path=path, hint=hint)
        self.tail = tail or []


@dataclass
class StoneResult:
    name: str
    file: Path
    sha256: str
    size: int
    provides: list[str]
    depends: list[str]

    def as_dict(self) -> dict:
        return {"name": self.name, "file": str(self.file), "sha256": self.sha256,
                "size": self.size, "provides": self.provides, "depends": self.depends}


@dataclass
class BuildResult:
    name: str
    version: str
    release: int
    stones: list[StoneResult]
    manifest: Path
    dropped: list[str] = field(default_factory=list)
    work: Path | None = None                  # kept work dir (--keep), else None
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per step

    def as_dict(self) -> dict:
        return {"name": self.name, "version": self.version, "release": self.release,
                "stones": [s.as_dict() for s in self.stones], "manifest": str(self.manifest),
                "dropped": self.dropped, "work": str(self.work) if self.work else None,
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()}}


def default_cache_root() -> Path:
    env = os.environ.get("ONIX_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "onix"


def build(recipe_path: Path, *, out: Path, cache: Path | None = None, jobs: int | None = None,
          keep: bool = False, progress: Progress | None = None) -> BuildResult:
    """Build a recipe into stones in `out` (see the module docstring for every step)."""
    clock = _Clock(progress)
    with clock.step("load"):
        recipe = load(Path(recipe_path))
    root = Path(cache) if cache is not None else default_cache_root()
    source_cache = _source_cache(root)
    with clock.step("builddeps"):
        check_builddeps(recipe)
    with clock.step("fetch"):
        fetched = _fetch(recipe=recipe, cache=source_cache, say=clock.say)
    with _work_dir(root=root, name=recipe.name) as work:
        with clock.step("place"):
            cwd = _place(recipe=recipe, fetched=fetched, work=work)
        shell = _Shell.of(recipe=recipe, work=work, cwd=cwd, jobs=jobs or os.cpu_count() or 1)
        for step in ("setup", "build", "install"):
            if step in recipe.steps:
                with clock.step(step):
                    _run_step(recipe=recipe, step=step, shell=shell)
        dropped = _keep_usr(recipe=recipe, work=work)
        entries = _installed(work=work, step="install")
        debug: dict[str, list[str]] = {"written": [], "no_build_id": []}
        if recipe.strip:
            with clock.step("strip"):
                debug = _strip(work=work, entries=entries)
        if "check" in recipe.steps:
            with clock.step("check"):
                _run_step(recipe=recipe, step="check", shell=shell)
            entries = _installed(work=work, step="check")  # what check adds goes in a stone
        with clock.step("analyse"):
            stones = plan(recipe=recipe, install=work.install, entries=entries,
                          debug_tree=work.debug if debug["written"] else None)
        closure_records: list[dict] = []
        if recipe.closure:
            with clock.step("closure"):
                more, closure_records = closure_stones(
                    recipe=recipe, install=work.install, cache=source_cache,
                    work=work.root / "closure", say=clock.say, own=stones)
            stones += more
        with clock.step("pack"):
            results, manifest = _pack(
                recipe=recipe, stones=stones, out=Path(out), work=work, say=clock.say,
                upstreams=[*_upstream_records(recipe=recipe, fetched=fetched), *closure_records],
                dropped=dropped, debug=debug)
        if not keep:
            remove_tree(work.root)
    return BuildResult(name=recipe.name, version=recipe.version, release=recipe.release,
                       stones=results, manifest=manifest, dropped=dropped,
                       work=work.root if keep else None, seconds=clock.seconds)


# -- the steps, in the order build() takes them ---------------------------------------


class _Clock:
    """Says each step as it starts and keeps its wall time (BuildResult.seconds)."""

    def __init__(self, progress: Progress | None):
        self.say: Progress = progress or (lambda _step: None)
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        self.say(name)
        yield
        self.seconds[name] = time.monotonic() - start


def _source_cache(root: Path) -> Path:
    """Where fetched upstreams are kept: ONIX_SOURCE_CACHE lets builds share one."""
    if os.environ.get("ONIX_SOURCE_CACHE"):
        return Path(os.environ["ONIX_SOURCE_CACHE"])
    return root / "sources"


def _fetch(*, recipe: Recipe, cache: Path, say: Progress) -> list[Path]:
    """Every upstream fetched and verified, in the recipe's order."""
    fetched = []
    for u in recipe.upstreams:
        say(f"fetch {u.describe()}")
        fetched.append(sources.fetch(u, cache=cache, recipe=recipe))
    return fetched


@dataclass(frozen=True)
class _Work:
    """The recipe's work dir and its subdirectories (the layout is in the module docstring)."""

    root: Path
    src: Path
    build: Path
    install: Path
    debug: Path
    stage: Path
    home: Path
    log: Path

    @classmethod
    def at(cls, root: Path) -> _Work:
        return cls(root=root, **{d: root / d for d in WORK_DIRS})


@contextlib.contextmanager
def _work_dir(*, root: Path, name: str) -> Iterator[_Work]:
    """The recipe's work dir, locked and wiped; left behind on error for a look inside."""
    parent = root / "work"
    parent.mkdir(parents=True, exist_ok=True)
    work = _Work.at(parent / name)
    with _locked(parent / f"{name}.lock", name):
        remove_tree(work.root)
        for d in WORK_DIRS:
            (work.root / d).mkdir(parents=True)
        yield work


def _place(*, recipe: Recipe, fetched: list[Path], work: _Work) -> Path:
    """Put the upstreams into src/; returns %(workdir), the first tarball's directory."""
    first_tarball = None
    for u, f in zip(recipe.upstreams, fetched, strict=True):
        placed = sources.place(u, f, sourcedir=work.src)
        if first_tarball is None and f.is_file() and u.wants_unpack(f.name):
            first_tarball = placed
    return first_tarball if first_tarball is not None else work.src


@dataclass(frozen=True)
class _Shell:
    """What every step script runs with: its macros, environment and directories."""

    macros: dict[str, str]
    env: dict[str, str]
    cwd: Path
    work: _Work

    @classmethod
    def of(cls, *, recipe: Recipe, work: _Work, jobs: int, cwd: Path) -> _Shell:
        macros = {
            "name": recipe.name, "version": recipe.version, "release": str(recipe.release),
            "installroot": str(work.install), "sourcedir": str(work.src),
            "workdir": str(cwd), "builddir": str(work.build), "jobs": str(jobs),
            "target": TARGET, "prefix": "/usr", "bindir": "/usr/bin", "sbindir": "/usr/sbin",
            "libdir": "/usr/lib", "datadir": "/usr/share", "recipedir": str(recipe.recipedir),
        }
        env = {"PATH": PATH, "HOME": str(work.home), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
               "TZ": "UTC", "SOURCE_DATE_EPOCH": str(recipe.source_date_epoch),
               "TERM": "dumb", "MAKEFLAGS": f"-j{jobs}"}
        for key, value in recipe.environment.items():
            env[key] = expand(value, macros, where=str(recipe.path))
        return cls(macros=macros, env=env, cwd=cwd, work=work)


def _run_step(*, recipe: Recipe, step: str, shell: _Shell) -> None:
    """The step's script, expanded, run by bash with its output in log/<step>.log."""
    first = recipe.step_lines.get(step, 1)
    script = expand(recipe.steps[step], shell.macros, where=recipe.where(first))
    script_path = shell.work.log / f"{step}.sh"
    script_path.write_text(script)
    log_path = shell.work.log / f"{step}.log"
    with open(log_path, "wb") as log:
        log.write(f"# step {step} of {recipe.name} ({recipe.where(first)})\n".encode())
        log.flush()
        r = proc.run(["bash", "--noprofile", "--norc", "-euo", "pipefail", script_path],
                     output=log, env=shell.env, cwd=shell.cwd, umask=0o022, check=False)
    if r.returncode != 0:
        lines = [ln.rstrip() for ln in log_path.read_text(errors="replace").splitlines()[1:]]
        tail = [ln for ln in lines if ln.strip()][-TAIL_LINES:]
        raise BuildError(f"step {step} of {recipe.name} failed (exit {r.returncode}): "
                         + (" | ".join(tail) if tail else "no output"),
                         path=log_path, tail=tail,
                         hint=f"read the whole log {log_path}; the work dir {shell.work.root} "
                         f"is kept (the script is {script_path})")


def _keep_usr(*, recipe: Recipe, work: _Work) -> list[str]:
    """Remove what install wrote outside usr/; returns it, sorted (the manifest's `dropped`)."""
    install = work.install
    dropped: list[str] = []
    for top in sorted(install.iterdir()):
        if top.name == "usr" and top.is_dir() and not top.is_symlink():
            continue
        if top.is_dir() and not top.is_symlink():
            dropped.append(top.name + "/")
            dropped += [rel for rel, _ in walk(install, top=top.name)]
        else:
            dropped.append(top.name)
        remove_tree(top)
    if not (install / "usr").is_dir():
        raise OnixError(f"the install step of {recipe.name} put nothing under usr/",
                        path=install, hint="install into %(installroot)/usr/…")
    # the manifest is UTF-8 JSON: a name that is not UTF-8 is listed with \xNN escapes
    return [os.fsencode(rel).decode("utf-8", "backslashreplace") for rel in dropped]


def _installed(*, work: _Work, step: str) -> list[tuple[str, str]]:
    """What install/usr holds after `step`, every name checked (a stone's layout is JSON)."""
    entries = walk(work.install)
    _check_names(work.install, entries, step=step)
    return entries


def _strip(*, work: _Work, entries: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Strip the installed binaries, their debug info into debug/; the manifest's `debug`."""
    split = split_debug(tree=work.install, debug_tree=work.debug,
                        paths=[rel for rel, kind in entries if kind != "dir"])
    return {"written": sorted(split.written), "no_build_id": sorted(split.no_build_id)}


def _pack(*, recipe: Recipe, stones: list[Planned], out: Path, work: _Work, say: Progress,
          upstreams: list[dict], dropped: list[str],
          debug: dict[str, list[str]]) -> tuple[list[StoneResult], Path]:
    """Pack every stone and write the manifest; nothing appears in `out` until all are packed."""
    out.mkdir(parents=True, exist_ok=True)
    staging = out / f".onix-build-{recipe.name}.tmp"
    remove_tree(staging)
    staging.mkdir()
    try:
        packed = [_pack_one(planned, out=out, staging=staging,
                            stage=work.stage / planned.meta.name, say=say)
                  for planned in stones]
        manifest = {
            "format": 1, "name": recipe.name, "version": recipe.version,
            "release": recipe.release, "source_date_epoch": recipe.source_date_epoch,
            "upstreams": upstreams, "dropped": dropped, "debug": debug,
            "stones": [record for _result, record in packed],
        }
        results = [result for result, _record in packed]
        for r in results:
            os.replace(staging / r.file.name, r.file)
        manifest_path = out / f"{recipe.name}-{recipe.version}-{recipe.release}.manifest.json"
        atomic_write(manifest_path, json.dumps(manifest, sort_keys=True, separators=(",", ":"),
                                               ensure_ascii=False).encode() + b"\n")
    finally:
        remove_tree(staging)
    return results, manifest_path


def _pack_one(planned: Planned, *, out: Path, staging: Path, stage: Path,
              say: Progress) -> tuple[StoneResult, dict]:
    """One stone packed into staging/ (it is to go to `out`), and its manifest record."""
    meta = planned.meta
    fname = f"{meta.name}-{meta.version}-{meta.release}-{ARCH}.stone"
    say(f"pack {fname}")
    _stage(planned.tree, stage, planned.entries)
    content = sum((stage / rel).lstat().st_size for rel, kind in planned.entries
                  if kind == "file")
    pack(stage, staging / fname, meta, level=LEVEL if content < LEVEL_BIG_AT else BIG_LEVEL)
    digest = fsutil.sha256_file(staging / fname)
    size = (staging / fname).stat().st_size
    result = StoneResult(name=meta.name, file=out / fname, sha256=digest, size=size,
                         provides=meta.provides, depends=meta.depends)
    return result, {
        "name": meta.name, "file": fname, "sha256": digest, "size": size,
        "summary": meta.summary, "provides": meta.provides,
        "depends": {d: planned.reasons.get(d, []) for d in meta.depends},
        "files": _file_list(stage, planned.entries)}


# -- pieces -----------------------------------------------------------------------


def check_builddeps(recipe: Recipe) -> None:
    """Every Debian package the recipe builds with is installed, or one error naming them."""
    if not recipe.builddeps:
        return
    r = proc.run(["dpkg-query", "-W", "-f=${Package} ${db:Status-Abbrev}\\n",
                  *recipe.builddeps], check=False)
    installed = set()
    for line in r.stdout.decode(errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].startswith("ii"):
            installed.add(parts[0])
    missing = [p for p in recipe.builddeps if p.split(":")[0] not in installed]
    if missing:
        raise OnixError(f"build dependencies not installed: {', '.join(missing)}",
                        path=recipe.path, hint=f"apt-get install {' '.join(missing)}")


class _locked:
    """flock the recipe's work dir: two builds of one recipe would wipe each other's."""

    def __init__(self, path: Path, name: str):
        self.path, self.name = path, name

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise LockedError(f"another build of {self.name} is running", path=self.path,
                              hint="wait for it to finish") from None

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def _check_names(install: Path, entries: list[tuple[str, str]], *, step: str) -> None:
    """Every path (and symlink target) the stones get is UTF-8: a stone's layout is JSON."""
    for rel, kind in entries:
        bad = rel if not _utf8(rel) else None
        if bad is None and kind == "symlink" and not _utf8(os.readlink(install / rel)):
            bad = rel + " (its symlink target)"
        if bad is not None:
            shown = os.fsencode(bad).decode("utf-8", "backslashreplace")
            raise OnixError(f"the {step} step wrote a name that is not UTF-8: {shown}",
                            path=install / os.fsencode(rel).decode("utf-8", "backslashreplace"),
                            hint="stones hold UTF-8 names only: rename it in the recipe's "
                            f"{step} step")


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _stage(tree: Path, stage: Path, entries: list[tuple[str, str]]) -> None:
    """A DESTDIR holding exactly `entries` of tree: dirs made, files hard-linked."""
    (stage / "usr").mkdir(parents=True)
    os.chmod(stage / "usr", 0o755)
    for rel, kind in entries:  # sorted, so a directory comes before what is inside it
        src, dst = tree / rel, stage / rel
        if kind == "dir":
            dst.mkdir()
            os.chmod(dst, stat.S_IMODE(src.lstat().st_mode))
        elif kind == "symlink":
            os.symlink(os.readlink(src), dst)
        else:
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)


def _file_list(stage: Path, entries: list[tuple[str, str]]) -> list[dict]:
    out = []
    for rel, kind in entries:
        p = stage / rel
        mode = stat.S_IMODE(p.lstat().st_mode)
        rec: dict = {"path": rel, "type": kind, "mode": f"{mode:04o}"}
        if kind == "file":
            rec["sha256"] = fsutil.sha256_file(p)
        elif kind == "symlink":
            rec["target"] = os.readlink(p)
        out.append(rec)
    return out


def _upstream_records(*, recipe: Recipe, fetched: list[Path]) -> list[dict]:
    """The manifest's record of each upstream, with the sha256 of what was built from."""
    records = []
    for u, f in zip(recipe.upstreams, fetched, strict=True):
        digest = (u.sha256 or fsutil.sha256_file(f)) if f.is_file() else _tree_sha256(f)
        records.append({"kind": u.kind, "ref": u.ref, "version": u.version,
                        "file": u.file or (f.name if u.kind != "path" else None),
                        "sha256": digest})
    return records


def _tree_sha256(top: Path) -> str:
    """sha256 over a directory's sorted (path, type, mode, content or target) records."""
    h = hashlib.sha256()
    for rel, kind in walk(top.parent, top=top.name):
        if any(part in sources.SKIP for part in rel.split("/")):
            continue  # not copied by sources.place either
        p = top.parent / rel
        mode = stat.S_IMODE(p.lstat().st_mode)
        what = (os.readlink(p) if kind == "symlink" else
                fsutil.sha256_file(p) if kind == "file" else "")
        # surrogateescape: a name that is not UTF-8 hashes as its bytes (UTF-8 ones as before)
        h.update(f"{rel}\0{kind}\0{mode:o}\0{what}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()
