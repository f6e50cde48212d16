"""The shared-library closure of a Debian repack, found by our own ELF analysis.

A recipe that repacks Debian binaries (nix-daemon, s6, Python: too big to compile in
CI) says `closure: debian`. Its stones then need libraries nothing of ours provides
yet: glibc, libstdc++, libsqlite3, … Rather than a hand-kept list, the builder asks:

1. what do the recipe's own files need?  `onix.build.elf.analyse` → `soname(…)` and
   `interpreter(…)` dependencies the tree does not meet;
2. who might provide it?  Debian's `Depends`/`Pre-Depends` of the packages seen so
   far *propose* candidates (first alternative of each); for a need none of them
   meets, the build host's dpkg database proposes the packages that ship a file of
   that name (`dpkg-query -S '*/libgcc_s.so.1'`);
3. who does?  each candidate is downloaded (`apt-get download`, by name, through the
   machine's signed package lists; the .deb's sha256 is checked against the list),
   unpacked into a merged-usr tree and analysed. A candidate is **kept only if it
   provides something still needed**; what it needs in turn joins the search.

A recipe whose upstreams come from another suite (`suite: bookworm-backports`) resolves
against that suite's private list (onix.build.sources.closure_apt, passed as `apt`), with the
suite as the default release: a library only the suite has (libdrm2 >= 2.4.121 for mesa
25) is found, and where both have it the suite's version wins, as `apt-get -t` would.

Debian's declarations only propose: `perl`, `curl` or `lsb-base` in nix-bin's Depends
are dropped because no ELF file asks for them. A need nothing proposes is an error
naming the soname and the file that needs it. Each kept package becomes its own stone
(name = the Debian package, version = its Debian version without epoch, release 1), so
two recipes needing glibc produce the same, byte-identical libc6 stone.

Versions: Debian's versioned relations between the packages of the closure become
constraints on the stones (`constraints()`): a kept package's Depends/Pre-Depends on
another kept one, and the seeds' on kept ones (those go on the recipe's main stone, where
the seeds' files are). Of alternatives `a | b` the first that the closure kept counts.
`libdrm2 (>= 2.4.121)` becomes `libdrm2 >= 2.4.121`; `<<`/`>>` become `<`/`>`. The epoch
is dropped as it is from the stone's version; a version with a Debian revision
(`2.4.123-1`) gets the stone release `-1` appended (`libdrm2 >= 2.4.123-1-1`), so the
revision stays part of the compared version instead of reading as a release. Each
constraint is checked against the version the closure kept; one Debian itself says is
unmet is an error, one only the dropped epoch breaks is left out (and logged).

This is scaffolding, like every Debian repack: it is how the quarry gets a runnable
guest before these libraries are built from source.

Tree mapping (merged /usr): top-level bin, sbin, lib, lib64 → usr/bin, usr/sbin,
usr/lib, usr/lib64; anything else outside usr/ (etc/, var/) is dropped and listed.
Documentation is dropped except each package's usr/share/doc/<pkg>/copyright.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from onix.build.elf import analyse
from onix.core import proc
from onix.core.errors import OnixError
from onix.core.fsutil import sha256_file

log = logging.getLogger("onix.closure")

MERGED = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}
DROP_DOCS = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/lintian",
             "usr/share/bug")
NEEDS = ("soname(", "interpreter(")


@dataclass
class DebPackage:
    """One Debian binary package, downloaded, verified and unpacked as a /usr tree."""

    name: str
    version: str          # Debian version as apt prints it (epoch included)
    sha256: str
    tree: Path            # holds usr/ only
    depends: list[str]    # Debian Depends + Pre-Depends, first alternative, names only
    dropped: list[str] = field(default_factory=list)
    relations: str = ""   # Debian Pre-Depends and Depends as the package list has them
    constraints: list[str] = field(default_factory=list)  # on other kept packages' stones

    @property
    def stone_version(self) -> str:
        return self.version.split(":", 1)[-1]


@dataclass
class Closure:
    packages: list[DebPackage]                       # kept, sorted by name
    rejected: list[str]                              # proposed by Depends, not needed
    satisfied: dict[str, str]                        # need → package providing it
    seed_constraints: list[str] = field(default_factory=list)  # seeds' on kept stones


def package_info(name: str, *, version: str | None = None,
                 apt: Sequence[str] = ()) -> dict[str, str]:
    """The package list's stanza for name (=version): Version, Depends, SHA256, …

    `apt` are extra apt options: a private list (onix.build.sources.closure_apt) instead of
    the machine's own; without a version, the stanza is the candidate's.
    """
    spec = f"{name}={version}" if version else name
    r = proc.run(["apt-cache", *apt, "show", "--no-all-versions", spec], check=False)
    if r.returncode != 0 or not r.stdout.strip():
        raise OnixError(f"Debian package {spec} is not in this machine's package lists",
                        path=spec, hint="run apt-get update, or fix the name/version")
    fields: dict[str, str] = {}
    key = None
    for line in r.stdout.decode(errors="replace").splitlines():
        if not line.strip():
            break  # first stanza only
        if line[0].isspace() and key:
            fields[key] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def _first_alternatives(relation: str) -> list[str]:
    out = []
    for part in relation.split(","):
        first = part.split("|")[0].strip()
        name = re.split(r"[\s(:]", first, maxsplit=1)[0]
        if name:
            out.append(name)
    return out


def download(name: str, *, version: str | None, cache: Path,
             apt: Sequence[str] = ()) -> tuple[Path, dict[str, str]]:
    """apt-get download into cache/debs/, checked against the list's SHA256."""
    info = package_info(name, version=version, apt=apt)
    version = info["Version"]
    want = info.get("SHA256", "")
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    fname = f"{name}_{version.replace(':', '%3a')}_{info.get('Architecture', 'amd64')}.deb"
    dest = debs / fname
    if dest.exists() and sha256_file(dest) == want:
        return dest, info
    with tempfile.TemporaryDirectory(dir=debs, prefix=".dl-") as tmp:
        proc.run(["apt-get", *apt, "download", "-q", f"{name}={version}"], cwd=Path(tmp))
        got = list(Path(tmp).glob("*.deb"))
        if len(got) != 1:
            raise OnixError(f"apt-get download {name}={version} gave {len(got)} files",
                            path=name, hint="run apt-get update and retry")
        actual = sha256_file(got[0])
        if actual != want:
            raise OnixError(f"sha256 {actual} of the download is not the list's {want}",
                            path=f"{name}={version}", hint="run apt-get update and retry")
        os.replace(got[0], dest)
    return dest, info


def unpack_usr(deb: Path, *, dest: Path) -> list[str]:
    """dpkg-deb -x, then fold into dest/usr (merged /usr); returns what was dropped."""
    dropped: list[str] = []
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".x-") as tmp:
        raw = Path(tmp)
        proc.run(["dpkg-deb", "-x", deb, raw])
        (dest / "usr").mkdir(parents=True, exist_ok=True)
        for top in sorted(raw.iterdir()):
            target = "usr" if top.name == "usr" else MERGED.get(top.name)
            if target is None:
                dropped.append(top.name + "/")
                continue
            _merge_into(top, dest / target)
    for doc in DROP_DOCS:
        d = dest / doc
        if not d.is_dir() or d.is_symlink():
            continue
        if doc == "usr/share/doc":  # keep licences: redistribution needs them
            for sub in sorted(d.iterdir()):
                keep = sub / "copyright"
                for p in sorted(sub.iterdir()) if sub.is_dir() and not sub.is_symlink() else []:
                    if p != keep:
                        _rm(p)
                if sub.is_symlink() or not any(sub.iterdir()):
                    _rm(sub)
            if not any(d.iterdir()):
                d.rmdir()
        else:
            shutil.rmtree(d)
            dropped.append(doc + "/")
    return dropped


def _rm(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink()


def _merge_into(src: Path, dst: Path) -> None:
    """Move src's contents under dst; a path both sides hold must be the same kind."""
    if src.is_symlink() or not src.is_dir():
        if dst.exists() or dst.is_symlink():
            raise OnixError("both /usr and the merged-usr alias hold this path", path=dst,
                            hint="this package is not merged-usr clean; repack it by hand")
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.rename(src, dst)
        return
    if dst.is_symlink():
        raise OnixError("a directory would merge into a symlink", path=dst,
                        hint="this package is not merged-usr clean; repack it by hand")
    dst.mkdir(parents=True, exist_ok=True)
    os.chmod(dst, src.stat().st_mode & 0o7777)
    for child in sorted(src.iterdir()):
        _merge_into(child, dst / child.name)


def resolve(*, tree: Path, seeds: Iterable[str], cache: Path, work: Path,
            exclude: Iterable[str] = (), apt: Sequence[str] = (),
            progress: Callable[[str], None] | None = None) -> Closure:
    """The Debian packages providing what `tree`'s ELF files need (see module doc).

    `seeds` are the recipe's Debian binary packages (their Depends propose the first
    candidates); `exclude` names packages never to take (the seeds themselves); `apt`
    are extra apt options for every look-up and download (a recipe fetched from
    bookworm-backports resolves against that private list: onix.build.sources.closure_apt).
    """
    mine = analyse(tree)
    needs: dict[str, list[str]] = {d: mine.reasons.get(d, [])
                                   for d in mine.depends if d.startswith(NEEDS)}
    provided: dict[str, str] = {}
    seen = set(exclude) | set(seeds)
    queue: list[str] = []
    seed_relations = []
    for seed in seeds:
        seed_relations.append((seed, _relations(package_info(seed, apt=apt))))
        queue += _first_alternatives(seed_relations[-1][1])
    kept: list[DebPackage] = []
    offers: dict[str, set[str]] = {}  # kept package → what it provides
    rejected: list[str] = []
    work.mkdir(parents=True, exist_ok=True)
    asked: set[str] = set()  # needs already looked up in the dpkg database
    while any(n not in provided for n in needs):
        if not queue:
            # Nothing Debian's Depends proposed meets these: ask which package ships a file
            # of that name (the build host's dpkg database) — PyPI wheels, for one, name
            # libgcc_s.so.1 without any Debian relation pointing at libgcc-s1.
            open_needs = [n for n in needs if n not in provided and n not in asked]
            asked.update(open_needs)
            queue = [p for n in sorted(open_needs) for p in shipping(_file_of(n))
                     if p not in seen]
            if not queue:
                break
        name = queue.pop(0)
        if name in seen:
            continue
        seen.add(name)
        if progress:
            progress(f"closure: {name}")
        deb, info = download(name, version=None, cache=cache, apt=apt)
        ptree = work / name
        if ptree.exists():
            shutil.rmtree(ptree)
        ptree.mkdir(parents=True)
        dropped = unpack_usr(deb, dest=ptree)
        found = analyse(ptree)
        useful = [n for n in needs if n not in provided and n in found.provides]
        if not useful:
            rejected.append(name)
            shutil.rmtree(ptree)
            continue
        pkg = DebPackage(name=name, version=info["Version"], sha256=info["SHA256"], tree=ptree,
                         depends=_first_alternatives(_relations(info)), dropped=dropped,
                         relations=_relations(info))
        kept.append(pkg)
        offers[name] = set(found.provides)
        for d in found.depends:
            if d.startswith(NEEDS) and d not in needs:
                needs[d] = [f"{name}:{p}" for p in found.reasons.get(d, [])]
        for n in needs:  # this package, or one kept earlier, may meet the new needs
            for k in kept:
                if n not in provided and n in offers[k.name]:
                    provided[n] = k.name
        queue += pkg.depends
    missing = sorted(n for n in needs if n not in provided)
    if missing:
        who = ", ".join(needs[missing[0]][:2]) or "the recipe's files"
        raise OnixError(f"no Debian package found provides {missing[0]} "
                        f"(needed by {who})" + (f" and {len(missing) - 1} more"
                                                 if len(missing) > 1 else ""),
                        path=str(tree), hint="add the package that ships it as a "
                        "debian-binary upstream of the recipe, or build it as a stone")
    versions = {k.name: k.version for k in kept}
    for k in kept:
        k.constraints = constraints(k.relations, versions, who=f"{k.name} {k.version}")
    seed_constraints = sorted({c for seed, rel in seed_relations
                               for c in constraints(rel, versions, who=seed)})
    return Closure(packages=sorted(kept, key=lambda p: p.name), rejected=sorted(rejected),
                   satisfied=dict(sorted(provided.items())),
                   seed_constraints=_tightest(seed_constraints))


DEB_OPS = {">=": ">=", "<=": "<=", "=": "=", ">>": ">", "<<": "<", ">": ">=", "<": "<="}
_RELATION = re.compile(r"(?P<name>[a-z0-9][a-z0-9+.-]*)(?::[a-z0-9-]+)?\s*"
                       r"(?:\(\s*(?P<op>>=|<=|>>|<<|=|>|<)\s*(?P<version>[^)\s]+)\s*\))?"
                       r"\s*(?:\[[^]]*\])?\s*(?:<[^>]*>)?\s*\Z")


def stone_constraint(name: str, op: str, debian_version: str) -> str:
    """Debian's `name (op version)` as an onix constraint on the repacked stone (module
    doc: epoch dropped, `-1` appended to a version with a Debian revision)."""
    version = debian_version.split(":", 1)[-1]
    if "-" in version:
        version += "-1"
    return f"{name} {DEB_OPS[op]} {version}"


def constraints(relation: str, kept: dict[str, str], *, who: str) -> list[str]:
    """The versioned relations of `relation` (Depends text) on packages the closure kept
    (name → Debian version), as onix constraints, sorted; the first kept alternative of
    `a | b` counts. Raises OnixError when Debian's own relation is unmet by what was kept."""
    from onix.repo.versions import compare_versions, parse_dep

    out = set()
    for part in relation.split(","):
        for alt in part.split("|"):
            m = _RELATION.match(alt.strip())
            if m is None or m["name"] not in kept:
                continue
            if m["op"]:
                have = kept[m["name"]]
                c = compare_versions(have, m["version"])
                op = DEB_OPS[m["op"]]
                if not {"=": c == 0, "<": c < 0, "<=": c <= 0, ">": c > 0, ">=": c >= 0}[op]:
                    raise OnixError(f"{who} needs {m['name']} ({m['op']} {m['version']}) but "
                                    f"the closure found {m['name']} {have}", path=who,
                                    hint="the package lists mix suites: run apt-get update, or "
                                    "set the recipe's suite so the closure reads that list")
                text = stone_constraint(m["name"], m["op"], m["version"])
                if parse_dep(text, where=who).allows(have.split(":", 1)[-1], 1):
                    out.add(text)
                else:  # only the dropped epoch orders these two: no constraint is better
                    log.info("%s: %s left out (it depends on the epoch)", who, text)
            break
    return sorted(out)


def _tightest(deps: list[str]) -> list[str]:
    """Of several `NAME >= V` on one name (several seeds say it), the highest only."""
    from onix.repo.versions import compare_versions, parse_dep

    best: dict[str, tuple[str, str]] = {}
    rest = []
    for text in deps:
        d = parse_dep(text, where="closure")
        if d.op != ">=" or d.version is None:
            rest.append(text)
        elif d.name not in best or compare_versions(d.version, best[d.name][0]) > 0:
            best[d.name] = (d.version, text)
    return sorted(rest + [t for _, t in best.values()])


def _file_of(need: str) -> str:
    """soname(libgcc_s.so.1(x86_64)) → libgcc_s.so.1; interpreter(/usr/lib64/x(…)) → x."""
    inner = need[need.index("(") + 1:need.rindex("(")]
    return inner.rsplit("/", 1)[-1]


def shipping(filename: str) -> list[str]:
    """Debian packages the build host's dpkg database says ship */filename."""
    r = proc.run(["dpkg-query", "-S", f"*/{filename}"], check=False)
    out = []
    for line in r.stdout.decode(errors="replace").splitlines():
        pkgs, _, path = line.partition(": ")
        if path.rsplit("/", 1)[-1] != filename:
            continue
        for p in pkgs.split(","):
            name = p.strip().split(":", 1)[0]
            if name and name not in out:
                out.append(name)
    return out


def _relations(info: dict[str, str]) -> str:
    return ", ".join(v for v in (info.get("Pre-Depends", ""), info.get("Depends", "")) if v)
