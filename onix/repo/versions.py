"""What a repository offers, how its versions order, and what a dependency asks for.

`Available` is one stone one repository's verified index describes; `compare_versions`
orders version strings by Debian's rules and `compare_evr` orders stones by version,
then release. The index (index.py) makes Available rows, the resolver (resolve.py) and
the CLI read them.

A dependency (`Dep`, parsed by `parse_dep` wherever one is written: a recipe's
rundeps, a stone's meta, an index row, `onix stone pack --depends`, `onix install`):

    NAME                          any version; NAME may be a provider string
                                  (soname(libz.so.1(x86_64)), binary(ls), pkgconfig(zlib))
    NAME OP VERSION               OP one of = < <= > >=, spaces around OP optional
    NAME OP VERSION-RELEASE       RELEASE all digits: compared too

A constraint with a VERSION only compares the stone's version (any release); with
`-RELEASE` (the part after the last `-` when it is all digits) the release breaks a
tie of versions. Only stone names carry versions: a provider string takes no
constraint, and `NAME OP VERSION` is met only by a stone *named* NAME (a stone's
`provides` entries have no version of their own). Canonical text: `name >= 1.2`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from onix.core.errors import OnixError


@dataclass(frozen=True)
class Available:
    """One stone one repository offers, as its verified index describes it."""

    repo: str
    priority: int
    uri: str
    name: str
    version: str
    release: int
    arch: str
    summary: str
    license: str
    provides: tuple[str, ...]
    depends: tuple[str, ...]
    file: str
    sha256: str
    size: int
    location: str = ""  # where the stone is fetched from (a path or a URL)
    installed_size: int = 0  # bytes of its files once installed (0: an index without it)

    @property
    def evr(self) -> str:
        return f"{self.version}-{self.release}"

    def as_dict(self) -> dict:
        return {"repo": self.repo, "priority": self.priority, "name": self.name,
                "version": self.version, "release": self.release, "arch": self.arch,
                "summary": self.summary, "license": self.license,
                "provides": list(self.provides), "depends": list(self.depends),
                "file": self.file, "sha256": self.sha256, "size": self.size,
                "location": self.location, "installed_size": self.installed_size}


def _order(c: str) -> int:
    """dpkg's character order: '~' before the end of the string, letters before others."""
    if c == "~":
        return -1
    if c.isascii() and c.isalpha():
        return ord(c)
    return ord(c) + 256


def _verrevcmp(a: str, b: str) -> int:
    """dpkg's verrevcmp: alternate non-digit runs (by _order) and digit runs (numerically)."""
    i = j = 0
    la, lb = len(a), len(b)
    while i < la or j < lb:
        while (i < la and not a[i].isdigit()) or (j < lb and not b[j].isdigit()):
            ac = _order(a[i]) if i < la and not a[i].isdigit() else 0
            bc = _order(b[j]) if j < lb and not b[j].isdigit() else 0
            if ac != bc:
                return -1 if ac < bc else 1
            i += 1
            j += 1
        while i < la and a[i] == "0":
            i += 1
        while j < lb and b[j] == "0":
            j += 1
        first_diff = 0
        while i < la and a[i].isdigit() and j < lb and b[j].isdigit():
            if not first_diff and a[i] != b[j]:
                first_diff = -1 if a[i] < b[j] else 1
            i += 1
            j += 1
        if i < la and a[i].isdigit():
            return 1
        if j < lb and b[j].isdigit():
            return -1
        if first_diff:
            return first_diff
    return 0


def _epoch(v: str) -> tuple[int, str]:
    head, sep, rest = v.partition(":")
    if sep and head.isascii() and head.isdigit():
        return int(head), rest
    return 0, v


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as version `a` is older than, equal to or newer than `b` (Debian rules:
    an optional `epoch:`, then the upstream part and the Debian revision after the last
    `-` compared in turn; digit runs compare as numbers, `~` sorts before everything,
    even the end: 1.0~rc1 < 1.0 < 1.0a < 1.0.1, 2.4.123-1~bpo12+1 < 2.4.123-1).

    A repacked Debian library's stone version is its Debian version without the epoch
    (closure.py), so the revision split is what orders two of those correctly."""
    ea, va = _epoch(a)
    eb, vb = _epoch(b)
    if ea != eb:
        return -1 if ea < eb else 1
    ua, _, ra = va.rpartition("-") if "-" in va else (va, "", "")
    ub, _, rb = vb.rpartition("-") if "-" in vb else (vb, "", "")
    return _verrevcmp(ua, ub) or _verrevcmp(ra, rb)


def compare_version_release(version_a: str, release_a: int, version_b: str,
                            release_b: int) -> int:
    """-1, 0 or 1: stone a is older than, the same as or newer than stone b (version by
    Debian's rules, then release)."""
    c = compare_versions(version_a, version_b)
    if c:
        return c
    return (release_a > release_b) - (release_a < release_b)


def compare_evr(a: Available, b: Available) -> int:
    """Order two stones by version, then release."""
    return compare_version_release(a.version, a.release, b.version, b.release)


# -- dependencies ----------------------------------------------------------------------

OPS = ("<=", ">=", "=", "<", ">")
# a stone name (stone.py allows [A-Za-z0-9-_.+]) or a provider string such as
# soname(libz.so.1(x86_64)) — parentheses nest, so the provider is taken whole
_NAME = r"[A-Za-z0-9][A-Za-z0-9._+-]*"
_PROVIDER = re.compile(r"[a-z][a-z0-9_-]*\(.+\)\Z")
_CONSTRAINT = re.compile(rf"(?P<name>{_NAME})\s*(?:(?P<op><=|>=|=|<|>)\s*"
                         r"(?P<version>[0-9][A-Za-z0-9.+~:_-]*))?\Z")
_RELEASE = re.compile(r"(?P<version>.*[^-])-(?P<release>[0-9]+)\Z")
DEP_HINT = ("write NAME, NAME OP VERSION with OP one of = < <= > >= (for example "
            "'libdrm2 >= 2.4.120'), or a provider string such as soname(libz.so.1(x86_64))")


@dataclass(frozen=True)
class Dep:
    """One dependency: a name (or provider string) and, for a name, an optional
    version constraint. `release` is None when the constraint names a version only."""

    name: str
    op: str | None = None
    version: str | None = None
    release: int | None = None

    def __str__(self) -> str:
        if self.op is None:
            return self.name
        rel = "" if self.release is None else f"-{self.release}"
        return f"{self.name} {self.op} {self.version}{rel}"

    @property
    def constrained(self) -> bool:
        return self.op is not None

    def allows(self, version: str | None, release: int | None = None) -> bool:
        """Whether a stone of this version (and release) meets the constraint. An
        unknown version (None) meets only an unconstrained dependency."""
        if self.op is None:
            return True
        if not isinstance(version, str) or self.version is None:
            return False
        c = compare_versions(version, self.version)
        if c == 0 and self.release is not None:
            if not isinstance(release, int):
                return False
            c = (release > self.release) - (release < self.release)
        return {"=": c == 0, "<": c < 0, "<=": c <= 0, ">": c > 0, ">=": c >= 0}[self.op]

    def satisfied_by(self, name: str, provides: tuple[str, ...] | list[str] = (),
                     version: str | None = None, release: int | None = None) -> bool:
        """Whether a stone (its name, provides, version, release) meets this dependency:
        by name or by a `provides` entry when unconstrained, by name and version when
        constrained (provides carry no version)."""
        if self.op is None:
            return name == self.name or self.name in provides
        return name == self.name and self.allows(version, release)


def parse_dep(text: object, *, where: str) -> Dep:
    """One dependency as written; anything else is refused naming `where` it came from
    (a recipe's file:line and field, a stone's path, an index URL, an option)."""
    if not isinstance(text, str):
        raise OnixError(f"dependency {text!r} is not a string", path=where, hint=DEP_HINT)
    t = text.strip()
    if "(" in t or ")" in t:
        if _PROVIDER.match(t) and t.count("(") == t.count(")") and not any(
                op in t[t.rindex(")"):] for op in OPS):
            return Dep(name=t)
        raise OnixError(f"dependency {text!r} does not parse (a provider string takes no "
                        "version constraint: only stone names carry versions)", path=where,
                        hint=DEP_HINT)
    m = _CONSTRAINT.match(t)
    if m is None or (m["version"] and m["version"].endswith(("-", ":"))):
        raise OnixError(f"dependency {text!r} does not parse", path=where, hint=DEP_HINT)
    if m["op"] is None:
        return Dep(name=m["name"])
    version, release = m["version"], None
    r = _RELEASE.match(version)
    if r is not None:
        version, release = r["version"], int(r["release"])
    return Dep(name=m["name"], op=m["op"], version=version, release=release)


def canonical_deps(deps: list[str] | tuple[str, ...], *, where: str) -> list[str]:
    """Dependency strings parsed and written canonically, sorted, duplicates dropped."""
    return sorted({str(parse_dep(d, where=where)) for d in deps})
