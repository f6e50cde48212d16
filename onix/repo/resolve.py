"""Dependency resolution: which available stones `onix install NAME…` needs.

Pure functions over plain data (no I/O), so they are tested without any repository.

A dependency string is a stone name (every stone provides its own name) or a provider
such as soname(libz.so.1(x86_64)), binary(ls) or pkgconfig(zlib); a stone satisfies it
when its name equals it or its `provides` lists it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cmp_to_key

from onix.core.errors import ConflictError, OnixError
from onix.repo.versions import Available, compare_evr, compare_versions

MISSING_HINT = ("add a repository that has it (onix repo add) or install a stone file that "
                "provides it")


def _installed_newer_or_same(cand: Available, meta: dict) -> bool:
    version, release = meta.get("version"), meta.get("release")
    if not isinstance(version, str):
        return True  # nothing to compare with: keep what is installed
    c = compare_versions(cand.version, version)
    if c == 0 and isinstance(release, int):
        c = (cand.release > release) - (cand.release < release)
    return c <= 0


# -- plans ---------------------------------------------------------------------------


def _strings(value: object) -> list[str]:
    """provides/depends as the database keeps them (a JSON string) or as a list."""
    if isinstance(value, str):
        value = json.loads(value)
    return list(value or [])


@dataclass
class Resolution:
    install: list[Available]  # stones to fetch and install (new ones and upgrades)
    explicit: set[str]  # the explicit set after the install: old ∪ requested stone names
    reasons: dict[str, str]  # stone name -> why it is in `install`
    already: list[str] = field(default_factory=list)  # requested, installed, nothing newer
    upgrades: dict[str, str] = field(default_factory=dict)  # name -> installed evr it replaces

    @property
    def dependencies(self) -> set[str]:
        """Names in `install` pulled in for another stone (transaction.install's
        `dependencies`: recorded as not explicit, so `onix remove` may drop them)."""
        return {a.name for a in self.install} - self.explicit

    def as_dict(self) -> dict:
        return {"install": [{**a.as_dict(), "reason": self.reasons.get(a.name, ""),
                             "explicit": a.name in self.explicit,
                             "upgrade_from": self.upgrades.get(a.name)}
                            for a in self.install],
                "already_installed": list(self.already),
                "explicit": sorted(self.explicit)}


def _best_first(cands: Iterable[Available]) -> list[Available]:
    """priority desc, version-release desc, then repository name (determinism)."""
    def cmp(x: Available, y: Available) -> int:
        if x.priority != y.priority:
            return -1 if x.priority > y.priority else 1
        c = compare_evr(x, y)
        if c:
            return -c
        return (x.repo > y.repo) - (x.repo < y.repo)
    return sorted(cands, key=cmp_to_key(cmp))


def _provider_order(dep: str, cands: Iterable[Available]) -> list[Available]:
    """A stone named like the dependency first, then priority desc, name, best version."""
    def cmp(x: Available, y: Available) -> int:
        kx, ky = (x.name != dep, -x.priority, x.name), (y.name != dep, -y.priority, y.name)
        if kx != ky:
            return -1 if kx < ky else 1
        c = compare_evr(x, y)
        if c:
            return -c
        return (x.repo > y.repo) - (x.repo < y.repo)
    return sorted(cands, key=cmp_to_key(cmp))


def _provides(a: Available, dep: str) -> bool:
    return a.name == dep or dep in a.provides


def resolve(*, requested: list[str], installed: dict[str, dict], available: list[Available],
            explicit: set[str], arch: str = "x86_64") -> Resolution:
    """Choose the stones to install for `requested` (stone names or provider strings).

    `installed` is the live selection (name -> meta with provides/depends, and version/
    release when known); installed stones stay unless a requested name has a newer
    version available. Raises OnixError for an unknown request and ConflictError for a
    dependency nothing can satisfy, before anything is fetched.
    """
    r = _Resolver(pool=[a for a in available if a.arch == arch], installed=installed,
                  explicit=set(explicit))
    for req in dict.fromkeys(requested):
        r.request(req)
    r.pull_dependencies()
    r.check_kept()
    return Resolution(install=list(r.chosen.values()), explicit=r.explicit, reasons=r.reasons,
                      already=r.already, upgrades=r.upgrades)


def _provided_by(selection: dict[str, dict]) -> dict[str, str]:
    """provider string (or name) → the stone of `selection` that provides it."""
    out: dict[str, str] = {}
    for name, meta in sorted(selection.items()):
        out.setdefault(name, name)
        for p in _strings(meta.get("provides")):
            out.setdefault(p, name)
    return out


@dataclass
class _Resolver:
    """One resolution's working state; `resolve` runs its steps in order."""

    pool: list[Available]
    installed: dict[str, dict]
    explicit: set[str]
    chosen: dict[str, Available] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    upgrades: dict[str, str] = field(default_factory=dict)
    already: list[str] = field(default_factory=list)
    kept: dict[str, dict] = field(default_factory=dict)
    provided: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        by_name: dict[str, list[Available]] = {}
        for a in self.pool:
            by_name.setdefault(a.name, []).append(a)
        self.by_name = {n: _best_first(c) for n, c in by_name.items()}
        self.inst_provided = _provided_by(self.installed)

    def _was(self, name: str) -> str:
        meta = self.installed[name]
        return f"{meta.get('version')}-{meta.get('release')}"

    def request(self, req: str) -> None:
        """One requested name or provider string: chosen, upgraded, or already there."""
        if req in self.by_name or req in self.installed:
            self.explicit.add(req)
            if req in self.chosen:
                return
            cands = self.by_name.get(req, [])
            if req in self.installed:
                if not cands or _installed_newer_or_same(cands[0], self.installed[req]):
                    self.already.append(req)
                    return
                self.upgrades[req] = self._was(req)
                self.reasons[req] = f"requested (upgrade from {self.upgrades[req]})"
            else:
                self.reasons[req] = "requested"
            self.chosen[req] = cands[0]
            return
        if req in self.inst_provided:  # a provider string an installed stone satisfies
            self.explicit.add(self.inst_provided[req])
            self.already.append(self.inst_provided[req])
            return
        providers = _provider_order(req, (a for a in self.pool if _provides(a, req)))
        if not providers:
            raise OnixError(f"no repository has a stone named or providing {req}", path=req,
                            hint="try onix search, or onix repo update to refresh the indexes")
        pick = self.chosen.get(providers[0].name, providers[0])
        self.explicit.add(pick.name)
        if pick.name not in self.chosen:
            self.chosen[pick.name] = pick
            self.reasons[pick.name] = f"requested as {req}"
            if pick.name in self.installed:  # the installed version does not provide it
                self.upgrades[pick.name] = self._was(pick.name)

    def _add_provides(self, a: Available) -> None:
        self.provided.setdefault(a.name, a.name)
        for p in a.provides:
            self.provided.setdefault(p, a.name)

    def pull_dependencies(self) -> None:
        """Everything the chosen stones depend on that the kept ones do not provide."""
        self.kept = {n: m for n, m in self.installed.items() if n not in self.chosen}
        self.provided = _provided_by(self.kept)
        for a in self.chosen.values():
            self._add_provides(a)
        queue = list(self.chosen.values())
        while queue:
            a = queue.pop(0)
            for dep in a.depends:
                if dep in self.provided:
                    continue
                pick = self._provider_for(dep, needed_by=a)
                self.chosen[pick.name] = pick
                self.reasons[pick.name] = (f"needed by {a.name}" if pick.name == dep else
                                           f"needed by {a.name} ({dep})")
                self._add_provides(pick)
                queue.append(pick)

    def _provider_for(self, dep: str, *, needed_by: Available) -> Available:
        cands = [c for c in self.pool if _provides(c, dep)]
        # kept and chosen stones are fixed: another version of one cannot come too
        free = [c for c in cands if c.name not in self.kept and c.name not in self.chosen]
        if free:
            return _provider_order(dep, free)[0]
        if not cands:
            raise ConflictError(f"nothing provides {dep} needed by {needed_by.name}",
                                path=needed_by.name, hint=MISSING_HINT)
        fixed = sorted({c.name for c in cands})
        what = ", ".join(
            f"{n} {self.chosen[n].evr} (chosen)" if n in self.chosen else
            f"{n} {self.kept[n].get('version', '?')}-{self.kept[n].get('release', '?')} "
            "(installed)" for n in fixed)
        raise ConflictError(
            f"{dep} needed by {needed_by.name} is provided only by other versions of "
            f"{', '.join(fixed)}, but {what} does not provide it", path=needed_by.name,
            hint=f"install {' '.join(fixed)} explicitly to upgrade, or install "
            "another stone that provides it")

    def check_kept(self) -> None:
        """An upgrade may drop something an installed stone relied on."""
        for name, meta in sorted(self.kept.items()):
            for dep in _strings(meta.get("depends")):
                if dep in self.inst_provided and dep not in self.provided:
                    was = self.inst_provided[dep]
                    raise ConflictError(f"upgrading {was} to {self.chosen[was].evr} would leave "
                                        f"{name} without {dep}", path=name,
                                        hint=f"upgrade {name} too, or keep {was} as it is")


def orphans(*, selection: dict[str, dict], explicit: set[str]) -> set[str]:
    """Stones of `selection` that no explicit stone reaches through depends -> providers.

    When several stones provide one dependency, all of them count as reached: dropping
    one that is actually in use would break the state, keeping a spare costs only space.
    """
    providers: dict[str, set[str]] = {}
    for name, meta in selection.items():
        providers.setdefault(name, set()).add(name)
        for p in _strings(meta.get("provides")):
            providers.setdefault(p, set()).add(name)
    reached = {n for n in explicit if n in selection}
    todo = list(reached)
    while todo:
        name = todo.pop()
        for dep in _strings(selection[name].get("depends")):
            for p in providers.get(dep, ()):
                if p not in reached:
                    reached.add(p)
                    todo.append(p)
    return set(selection) - reached
