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
    pool = [a for a in available if a.arch == arch]
    by_name: dict[str, list[Available]] = {}
    for a in pool:
        by_name.setdefault(a.name, []).append(a)
    by_name = {n: _best_first(c) for n, c in by_name.items()}
    inst_provided: dict[str, str] = {}
    for name, meta in sorted(installed.items()):
        inst_provided.setdefault(name, name)
        for p in _strings(meta.get("provides")):
            inst_provided.setdefault(p, name)

    chosen: dict[str, Available] = {}
    reasons: dict[str, str] = {}
    upgrades: dict[str, str] = {}
    already: list[str] = []
    new_explicit = set(explicit)
    for req in dict.fromkeys(requested):
        if req in by_name or req in installed:
            new_explicit.add(req)
            if req in chosen:
                continue
            cands = by_name.get(req, [])
            if req in installed:
                meta = installed[req]
                if not cands or _installed_newer_or_same(cands[0], meta):
                    already.append(req)
                    continue
                upgrades[req] = f"{meta.get('version')}-{meta.get('release')}"
                reasons[req] = f"requested (upgrade from {upgrades[req]})"
            else:
                reasons[req] = "requested"
            chosen[req] = cands[0]
            continue
        if req in inst_provided:  # a provider string an installed stone satisfies
            new_explicit.add(inst_provided[req])
            already.append(inst_provided[req])
            continue
        providers = _provider_order(req, (a for a in pool if _provides(a, req)))
        if not providers:
            raise OnixError(f"no repository has a stone named or providing {req}", path=req,
                            hint="try onix search, or onix repo update to refresh the indexes")
        pick = chosen.get(providers[0].name, providers[0])
        new_explicit.add(pick.name)
        if pick.name not in chosen:
            chosen[pick.name] = pick
            reasons[pick.name] = f"requested as {req}"
            if pick.name in installed:  # the installed version does not provide it
                meta = installed[pick.name]
                upgrades[pick.name] = f"{meta.get('version')}-{meta.get('release')}"

    kept = {n: m for n, m in installed.items() if n not in chosen}
    provided: dict[str, str] = {}
    for name, meta in sorted(kept.items()):
        provided.setdefault(name, name)
        for p in _strings(meta.get("provides")):
            provided.setdefault(p, name)

    def add_provides(a: Available) -> None:
        provided.setdefault(a.name, a.name)
        for p in a.provides:
            provided.setdefault(p, a.name)

    for a in chosen.values():
        add_provides(a)
    queue = list(chosen.values())
    while queue:
        a = queue.pop(0)
        for dep in a.depends:
            if dep in provided:
                continue
            cands = [c for c in pool if _provides(c, dep)]
            # kept and chosen stones are fixed: another version of one cannot come too
            free = [c for c in cands if c.name not in kept and c.name not in chosen]
            if not free:
                if cands:
                    fixed = sorted({c.name for c in cands})
                    what = ", ".join(
                        f"{n} {chosen[n].evr} (chosen)" if n in chosen else
                        f"{n} {kept[n].get('version', '?')}-{kept[n].get('release', '?')} "
                        "(installed)" for n in fixed)
                    raise ConflictError(
                        f"{dep} needed by {a.name} is provided only by other versions of "
                        f"{', '.join(fixed)}, but {what} does not provide it", path=a.name,
                        hint=f"install {' '.join(fixed)} explicitly to upgrade, or install "
                        "another stone that provides it")
                raise ConflictError(f"nothing provides {dep} needed by {a.name}", path=a.name,
                                    hint=MISSING_HINT)
            pick = _provider_order(dep, free)[0]
            chosen[pick.name] = pick
            reasons[pick.name] = (f"needed by {a.name}" if pick.name == dep else
                                  f"needed by {a.name} ({dep})")
            add_provides(pick)
            queue.append(pick)

    # An upgrade may drop something an installed stone relied on.
    for name, meta in sorted(kept.items()):
        for dep in _strings(meta.get("depends")):
            if dep in inst_provided and dep not in provided:
                was = inst_provided[dep]
                raise ConflictError(f"upgrading {was} to {chosen[was].evr} would leave "
                                    f"{name} without {dep}", path=name,
                                    hint=f"upgrade {name} too, or keep {was} as it is")
    return Resolution(install=list(chosen.values()), explicit=new_explicit, reasons=reasons,
                already=already, upgrades=upgrades)


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
