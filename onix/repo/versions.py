"""What a repository offers, and how its versions order.

`Available` is one stone one repository's verified index describes; `compare_versions`
orders version strings by Debian's rules and `compare_evr` orders stones by version,
then release. The index (index.py) makes Available rows, the resolver (resolve.py) and
the CLI read them.
"""

from __future__ import annotations

from dataclasses import dataclass


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

    @property
    def evr(self) -> str:
        return f"{self.version}-{self.release}"

    def as_dict(self) -> dict:
        return {"repo": self.repo, "priority": self.priority, "name": self.name,
                "version": self.version, "release": self.release, "arch": self.arch,
                "summary": self.summary, "license": self.license,
                "provides": list(self.provides), "depends": list(self.depends),
                "file": self.file, "sha256": self.sha256, "size": self.size,
                "location": self.location}



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
    an optional `epoch:`, digit runs compare as numbers, `~` sorts before everything, even
    the end: 1.0~rc1 < 1.0 < 1.0a < 1.0.1)."""
    ea, va = _epoch(a)
    eb, vb = _epoch(b)
    if ea != eb:
        return -1 if ea < eb else 1
    return _verrevcmp(va, vb)


def compare_evr(a: Available, b: Available) -> int:
    """Order two stones by version, then release."""
    c = compare_versions(a.version, b.version)
    if c:
        return c
    return (a.release > b.release) - (a.release < b.release)
