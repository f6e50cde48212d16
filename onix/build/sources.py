"""Upstream sources: fetched into a cache, verified by sha256, placed for a build.

Cache layout (onix.build.builder passes ``<cache root>/sources``, default
``~/.cache/onix/sources``; ``ONIX_SOURCE_CACHE`` overrides it)::

    <cache>/<sha256>/<file name>     a verified download; re-hashed before every use
    <cache>/.dl-XXXX/                a download in progress (removed afterwards)
    <cache>/apt/                     the private apt state for Debian *source* packages:
        sources.list.d/onix.sources    Types: deb-src, the machine's Debian mirror
        lists/, cache/                 apt-get update's lists and package caches
    <cache>/apt-binary/<suite>/      the private apt state for Debian *binary* packages of
                                     a suite the machine's lists lack (`suite:` on a
                                     debian-binary upstream, e.g. bookworm-backports):
        sources.list.d/onix.sources    Types: deb, the machine's mirror, the base suite,
                                       its -updates and -security, and <suite>
        lists/, cache/
    <cache>/apt.lock                 flock: one apt-get update at a time

A download is written under a temporary name in the cache, hashed, and renamed into
place only when it matches the recipe's pin; a mismatch deletes it. Nothing of the
host's apt configuration or state is written: the source lists live in the cache, and
binary packages are fetched with ``apt-get download`` from the machine's own lists, or,
for an upstream with `suite:`, from a private binary list in the cache (the same
technique as the source list; `closure_apt()` gives the closure the same list).
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import tempfile
from pathlib import Path

from onix.build.recipe import TARBALL_SUFFIXES, Recipe, Upstream, is_tarball, upstream_path
from onix.core import proc, tools
from onix.core.errors import OnixError
from onix.core.fsutil import sha256_file

DEFAULT_MIRROR = "http://deb.debian.org/debian"
SKIP = ("__pycache__",)  # never part of a `path` upstream (see place())
DEFAULT_SUITE = "bookworm"
KEYRING = tools.host_file("/usr/share/keyrings/debian-archive-keyring.gpg")


def _mismatch(what: Path | str, *, expected: str, actual: str, recipe: Recipe,
              u: Upstream) -> OnixError:
    return OnixError(f"sha256 mismatch: expected {expected}, got {actual}", path=what,
                     hint="the upstream changed or the pin is wrong: check, then update sha256 "
                     f"in {recipe.where(u.sha256_line or u.line)}")


def fetch(upstream: Upstream, *, cache: Path, recipe: Recipe) -> Path:
    """The verified local file (or directory, for a `path` upstream) of an upstream."""
    if upstream.kind == "path":
        return _fetch_path(upstream, recipe)
    assert upstream.sha256 is not None  # the recipe loader requires it for Debian upstreams
    slot = cache / upstream.sha256
    if slot.is_dir():
        for cached in sorted(slot.iterdir()):
            if cached.name.startswith("."):
                continue
            actual = sha256_file(cached)
            if actual != upstream.sha256:
                cached.unlink()
                raise OnixError(f"the cached file is corrupt (sha256 {actual}, expected "
                                f"{upstream.sha256}); it was removed", path=cached,
                                hint="run the build again to download it afresh, and check "
                                "the disk holding the cache")
            if upstream.file is None or cached.name == upstream.file:
                return cached
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".dl-") as tmp:
        if upstream.kind == "debian-source":
            got = _download_source(upstream, cache=cache, into=Path(tmp), recipe=recipe)
        elif upstream.kind == "pypi":
            got = _download_wheel(upstream, into=Path(tmp), recipe=recipe)
        else:
            got = _download_binary(upstream, cache=cache, into=Path(tmp), recipe=recipe)
        actual = sha256_file(got)
        if actual != upstream.sha256:
            got.unlink()
            raise _mismatch(f"{upstream.describe()}: {got.name}", expected=upstream.sha256,
                            actual=actual, recipe=recipe, u=upstream)
        slot.mkdir(exist_ok=True)
        final = slot / got.name
        os.replace(got, final)
    return final


def _fetch_path(u: Upstream, recipe: Recipe) -> Path:
    p = upstream_path(recipe, u)
    if not p.exists():
        raise OnixError("the path upstream does not exist", path=p,
                        hint=f"fix `path:` in {recipe.where(u.line)}")
    if u.sha256 is not None:
        if not p.is_file():
            raise OnixError("sha256 pins files only, and this path upstream is a directory",
                            path=p, hint=f"drop sha256 in {recipe.where(u.sha256_line)}")
        actual = sha256_file(p)
        if actual != u.sha256:
            raise _mismatch(p, expected=u.sha256, actual=actual, recipe=recipe, u=u)
    return p


# -- Debian ----------------------------------------------------------------------


def machine_mirror(etc_apt: Path = Path("/etc/apt")) -> tuple[str, str]:
    """(mirror URI, suite) of the machine's main Debian archive, or the defaults.

    Read from deb822 `.sources` files first, then one-line `sources.list` entries; the
    security archive (a suite with "-security") is skipped: source packages come from the
    main archive.
    """
    for uri, suite in _machine_entries(etc_apt):
        if "/debian" in uri and "security" not in uri and "-" not in suite:
            return uri.rstrip("/"), suite
    return DEFAULT_MIRROR, DEFAULT_SUITE


def machine_security(etc_apt: Path = Path("/etc/apt")) -> str | None:
    """The URI of the machine's Debian security archive, if it has one."""
    for uri, suite in _machine_entries(etc_apt):
        if suite.endswith("-security"):
            return uri.rstrip("/")
    return None


def _machine_entries(etc_apt: Path) -> list[tuple[str, str]]:
    """(URI, suite) of every `deb` entry of the machine's apt sources, in file order."""
    entries: list[tuple[str, str]] = []
    parts = etc_apt / "sources.list.d"
    for f in sorted(parts.glob("*.sources")) if parts.is_dir() else []:
        try:
            text = f.read_text(errors="replace")
        except OSError:
            continue
        for stanza in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line:
                    continue
                k, _, v = line.partition(":")
                fields[k.strip().lower()] = v.strip()
            if "deb" not in fields.get("types", "").split():
                continue
            for uri in fields.get("uris", "").split():
                for suite in fields.get("suites", "").split():
                    entries.append((uri, suite))
    lists = [etc_apt / "sources.list"]
    lists += sorted(parts.glob("*.list")) if parts.is_dir() else []
    for f in lists:
        try:
            lines = f.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb":
                entries.append((words[1], words[2]))
    return entries


def _apt_options(state: Path) -> list[str]:
    # Every apt directory that update or source would write points into our cache:
    # the host's lists, pkgcache.bin and archives stay as they are.
    return ["-o", "Dir::Etc::SourceList=/dev/null",
            "-o", f"Dir::Etc::SourceParts={state / 'sources.list.d'}",
            "-o", f"Dir::State::Lists={state / 'lists'}",
            "-o", f"Dir::Cache={state / 'cache'}",
            "-o", "APT::Get::List-Cleanup=false",
            "-q"]


def _download_source(u: Upstream, *, cache: Path, into: Path, recipe: Recipe) -> Path:
    state = cache / "apt"
    (state / "sources.list.d").mkdir(parents=True, exist_ok=True)
    (state / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (state / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    mirror, suite = machine_mirror()
    sources = (f"Types: deb-src\nURIs: {mirror}\nSuites: {suite}\nComponents: main\n"
               f"Signed-By: {KEYRING}\n")
    (state / "sources.list.d" / "onix.sources").write_text(sources)
    opts = _apt_options(state)
    spec = f"{u.ref}={u.version}" if u.version else u.ref
    with open(cache / "apt.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # apt-get update takes its own lock and fails fast
        r = proc.run(["apt-get", *opts, "update"], check=False)
        if r.returncode != 0:
            raise OnixError(f"apt-get update of the private source list failed: "
                            f"{_tail(r)}", path=f"{mirror} {suite} (deb-src)",
                            hint="check the network and that the mirror is reachable")
        r = proc.run(["apt-get", *opts, "source", "--download-only", spec], cwd=into,
                     check=False)
    if r.returncode != 0:
        raise OnixError(f"apt-get source --download-only {spec} failed: {_tail(r)}",
                        path=recipe.where(u.line),
                        hint="check the package name and version (apt-cache showsrc NAME "
                        "lists what the mirror has)")
    got = into / (u.file or "")
    if not u.file or not got.is_file():
        have = ", ".join(sorted(p.name for p in into.iterdir())) or "nothing"
        raise OnixError(f"apt-get source {spec} did not bring {u.file} (it brought {have})",
                        path=recipe.where(u.line), hint="fix `file:` in the recipe")
    return got


_UPDATED: set[Path] = set()  # private binary states apt-get update has run on (per process)


def binary_sources(suite: str, *, etc_apt: Path = Path("/etc/apt")) -> str:
    """The deb822 text of the private binary list for `suite`.

    A suite such as bookworm-backports is not a whole distribution: its packages depend
    on the base suite's, so the list holds the base (bookworm), its -updates, the
    machine's security archive for it (if the machine has one) and the suite itself.
    """
    mirror, _ = machine_mirror(etc_apt)
    base = suite.split("-", 1)[0]
    suites = [base, f"{base}-updates"] + ([suite] if suite != base else [])
    text = (f"Types: deb\nURIs: {mirror}\nSuites: {' '.join(suites)}\nComponents: main\n"
            f"Signed-By: {KEYRING}\n")
    security = machine_security(etc_apt)
    if security:
        text += (f"\nTypes: deb\nURIs: {security}\nSuites: {base}-security\n"
                 f"Components: main\nSigned-By: {KEYRING}\n")
    return text


def binary_apt(cache: Path, suite: str, *, update: bool = True) -> list[str]:
    """apt options for the private binary list of `suite` under the source cache.

    The list is written and `apt-get update` run (once per process and state) under
    the cache's apt.lock; nothing of the host's apt configuration or state is touched.
    """
    state = cache / "apt-binary" / suite
    for d in (state / "sources.list.d", state / "lists" / "partial",
              state / "cache" / "archives" / "partial"):
        d.mkdir(parents=True, exist_ok=True)
    opts = _apt_options(state)
    if not update or state in _UPDATED:
        return opts
    sources = binary_sources(suite)
    with open(cache / "apt.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        f = state / "sources.list.d" / "onix.sources"
        if not f.is_file() or f.read_text() != sources:
            f.write_text(sources)
        r = proc.run(["apt-get", *opts, "update"], check=False)
    if r.returncode != 0:
        raise OnixError(f"apt-get update of the private {suite} list failed: {_tail(r)}",
                        path=state / "sources.list.d" / "onix.sources",
                        hint="check the network and that the mirror is reachable")
    _UPDATED.add(state)
    return opts


def closure_apt(cache: Path, suite: str) -> list[str]:
    """apt options for `closure: debian` of a recipe fetched from `suite`: its private
    list, with the suite as the default release, so that a library the suite carries
    comes from it (mesa 25 in bookworm-backports needs libdrm2 >= 2.4.121, which only
    bookworm-backports has), as `apt-get install -t SUITE` would choose."""
    return [*binary_apt(cache, suite), "-o", f"APT::Default-Release={suite}"]


def _download_binary(u: Upstream, *, cache: Path, into: Path, recipe: Recipe) -> Path:
    spec = f"{u.ref}={u.version}"
    opts = binary_apt(cache, u.suite) if u.suite else ["-q"]
    r = proc.run(["apt-get", *opts, "download", spec], cwd=into, check=False)
    if r.returncode != 0:
        where = f"the private {u.suite} list" if u.suite else "the machine's package lists"
        raise OnixError(f"apt-get download {spec} failed: {_tail(r)}",
                        path=recipe.where(u.line),
                        hint=f"fix the name/version (is it in {where}?), or run apt-get "
                        "update if the machine's lists are stale")
    debs = sorted(into.glob("*.deb"))
    if len(debs) != 1:
        raise OnixError(f"apt-get download {spec} gave {len(debs)} .deb files",
                        path=recipe.where(u.line), hint="run apt-get update and retry")
    return debs[0]


# The guest's Python: CPython 3.11 on glibc x86_64 (recipes/python.yaml). pip picks the
# wheel for that interpreter, not for the one running onix; `file` then names exactly
# which wheel the pin is for.
WHEEL_TARGET = ["--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
                "--abi", "abi3", "--abi", "none",
                *(a for plat in ("manylinux_2_34_x86_64", "manylinux_2_28_x86_64",
                                 "manylinux_2_17_x86_64", "manylinux2014_x86_64", "any")
                  for a in ("--platform", plat))]


def _download_wheel(u: Upstream, *, into: Path, recipe: Recipe) -> Path:
    import sys

    spec = f"{u.ref}=={u.version}"
    r = proc.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                  "--disable-pip-version-check", "--no-cache-dir", "-q", "-d", into,
                  *WHEEL_TARGET, spec], check=False, timeout=600)
    if r.returncode != 0:
        raise OnixError(f"pip download {spec} failed: {_tail(r)}", path=recipe.where(u.line),
                        hint="check the project name and version on PyPI")
    got = into / str(u.file)
    if not got.is_file():
        offered = ", ".join(sorted(p.name for p in into.iterdir())) or "nothing"
        raise OnixError(f"pip download {spec} gave {offered}, not {u.file}",
                        path=recipe.where(u.line), hint="fix `file:` to the wheel for "
                        "CPython 3.11 on manylinux x86_64 (or pure Python)")
    return got


def _tail(r) -> str:
    text = ((r.stderr or b"") + (r.stdout or b"")).decode(errors="replace")
    lines = [ln for ln in text.splitlines() if ln.startswith(("E:", "W:"))] or text.splitlines()
    return "; ".join(lines[-2:]) or f"exit status {r.returncode}"


# -- placing ---------------------------------------------------------------------


def place(upstream: Upstream, fetched: Path, *, sourcedir: Path) -> Path:
    """Put a fetched upstream into sourcedir; returns what it became.

    Tarballs (unless `unpack: false`) are unpacked into sourcedir/<their top directory>
    (a tarball without a single top directory goes to sourcedir/<name without .tar.*>);
    a .deb is extracted with dpkg-deb -x into sourcedir/<package>/; other files and
    directories are copied as sourcedir/<name>, symlinks kept as symlinks.
    """
    sourcedir.mkdir(parents=True, exist_ok=True)
    if upstream.kind == "debian-binary":
        dest = _free(sourcedir / upstream.ref)
        dest.mkdir()
        proc.run(["dpkg-deb", "-x", fetched, dest])
        return dest
    if fetched.is_file() and upstream.wants_unpack(fetched.name):
        return _unpack(fetched, sourcedir=sourcedir)
    dest = _free(sourcedir / fetched.name)
    if fetched.is_dir():
        # Python's byte-code caches are the developer's, not the source: leaving them out
        # keeps a `path` upstream (and the manifest's hash of it) the same on every machine
        shutil.copytree(fetched, dest, symlinks=True, ignore=shutil.ignore_patterns(*SKIP))
    else:
        shutil.copy2(fetched, dest)
    return dest


def _free(dest: Path) -> Path:
    if dest.exists() or dest.is_symlink():
        raise OnixError("two upstreams would be placed at the same path", path=dest,
                        hint="rename one of them")
    return dest


def _unpack(tarball: Path, *, sourcedir: Path) -> Path:
    if not is_tarball(tarball.name):
        raise OnixError("unpack: true on a file that is not a tarball", path=tarball,
                        hint="set unpack: false, or point at a .tar.* file")
    tmp = Path(tempfile.mkdtemp(dir=sourcedir, prefix=".unpack-"))
    try:
        # GNU tar refuses members with `..` and strips leading `/`, so nothing lands
        # outside tmp; no owner or permission bits of the tarball's author are kept
        # beyond what the umask allows.
        proc.run(["tar", "-xf", tarball, "-C", tmp, "--no-same-owner", "--delay-directory-restore"])
        top = sorted(tmp.iterdir())
        if len(top) == 1 and top[0].is_dir() and not top[0].is_symlink():
            dest = _free(sourcedir / top[0].name)
            os.rename(top[0], dest)
        else:
            stem = tarball.name
            for suffix in sorted(TARBALL_SUFFIXES, key=len, reverse=True):
                if stem.endswith(suffix):
                    stem = stem.removesuffix(suffix)
                    break
            dest = _free(sourcedir / stem)
            os.rename(tmp, dest)
            return dest
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return dest
