"""Dependency resolution: which available stones `onix install NAME…` needs.

Pure functions over plain data (no I/O), so they are tested without any repository.

A dependency string (versions.parse_dep) is a stone name (every stone provides its own
name) or a provider such as soname(libz.so.1(x86_64)), binary(ls) or pkgconfig(zlib); a
stone satisfies it when its name equals it or its `provides` lists it. A dependency with
a version constraint (`libdrm2 >= 2.4.120`) is satisfied only by a stone *named* so whose
version meets it: provides carry no version.

Versions, as the resolver decides them:
- a request `NAME`, `NAME=VERSION`, `NAME>=VERSION`… picks the best candidate (priority,
  then version, then release) that meets the request and every constraint the other
  chosen stones put on NAME;
- an installed stone is never replaced by an older one (the installed one is kept)
  unless `allow_downgrade`, or unless the request itself names versions the installed
  one does not meet (`hello=1.0`, `'hello<2'`): that is the user choosing a version;
- when a chosen stone's constraint is not met by an installed (kept) stone, the best
  candidate of that name that meets it replaces it (a dependency moves forward); when no
  candidate does, one ConflictError line names the chain, what the repositories offer
  and what is installed — before anything is fetched.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cmp_to_key

from onix.core.errors import ConflictError, OnixError
from onix.repo.versions import (
    Available,
    Dep,
    compare_evr,
    compare_version_release,
    compare_versions,
    parse_dep,
)

MISSING_HINT = ("add a repository that has it (onix repo add) or install a stone file that "
                "provides it")


def vs_installed(cand: Available, meta: dict) -> int:
    """-1, 0, 1 as `cand` is older than, the same as or newer than the installed stone
    (0 when the installed one has no version to compare with: keep it)."""
    version, release = meta.get("version"), meta.get("release")
    if not isinstance(version, str):
        return 0
    if not isinstance(release, int):
        return compare_versions(cand.version, version)
    return compare_version_release(cand.version, cand.release, version, release)


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
    downgrades: dict[str, str] = field(default_factory=dict)  # the same, for older picks

    @property
    def dependencies(self) -> set[str]:
        """Names in `install` pulled in for another stone (transaction.install's
        `dependencies`: recorded as not explicit, so `onix remove` may drop them)."""
        return {a.name for a in self.install} - self.explicit

    def as_dict(self) -> dict:
        return {"install": [{**a.as_dict(), "reason": self.reasons.get(a.name, ""),
                             "explicit": a.name in self.explicit,
                             "upgrade_from": self.upgrades.get(a.name),
                             "downgrade_from": self.downgrades.get(a.name)}
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


def _meets(dep: Dep, meta: dict) -> bool:
    """Whether an installed stone (its meta) meets a versioned dependency on its name."""
    return dep.allows(meta.get("version"), meta.get("release"))


def resolve(*, requested: list[str], installed: dict[str, dict], available: list[Available],
            explicit: set[str], arch: str = "x86_64",
            allow_downgrade: bool = False) -> Resolution:
    """Choose the stones to install for `requested` (stone names, provider strings, or
    constraints such as `hello=2.0`, `hello>=2`).

    `installed` is the live selection (name -> meta with provides/depends, and version/
    release when known); installed stones stay unless a requested name has a newer
    version available, or a chosen stone needs a newer one (then it moves forward). With
    `allow_downgrade`, a request for an installed name takes the best candidate even when
    it is older than the installed stone (what `onix sync --allow-downgrade` asks); without
    it an older candidate replaces an installed stone only for a request that names the
    version (`NAME=VERSION`, `NAME<VERSION`). Raises OnixError for an unknown or unparsable
    request and ConflictError for a dependency nothing can satisfy, before anything is
    fetched.
    """
    reqs = [(req, parse_dep(req, where=req)) for req in dict.fromkeys(requested)]
    r = _Resolver(pool=[a for a in available if a.arch == arch], installed=installed,
                  explicit_before=set(explicit), allow_downgrade=allow_downgrade)
    while True:
        try:
            r.run(reqs)
            break
        except _Again:
            # a constraint learnt on the way changes an earlier choice: choose again with
            # it known (constraints only accumulate, so this ends)
            continue
    return Resolution(install=list(r.chosen.values()), explicit=r.explicit, reasons=r.reasons,
                      already=r.already, upgrades=r.upgrades, downgrades=r.downgrades)


def _provided_by(selection: dict[str, dict]) -> dict[str, str]:
    """provider string (or name) → the stone of `selection` that provides it."""
    out: dict[str, str] = {}
    for name, meta in sorted(selection.items()):
        out.setdefault(name, name)
        for p in _strings(meta.get("provides")):
            out.setdefault(p, name)
    return out


class _Again(Exception):
    """A new constraint or a kept stone that must move: resolve again from the start."""


@dataclass(frozen=True)
class _Need:
    dep: Dep
    who: str  # "" for the request itself, else the chain to the stone that needs it


@dataclass
class _Resolver:
    """One resolution's working state; `run` takes its steps in order and is run again
    (from scratch, keeping `needs` and `forced`) when one of them learns something."""

    pool: list[Available]
    installed: dict[str, dict]
    explicit_before: set[str]
    allow_downgrade: bool = False
    needs: dict[str, list[_Need]] = field(default_factory=dict)  # versioned needs per name
    forced: dict[str, str] = field(default_factory=dict)  # kept name that must move -> why

    def __post_init__(self) -> None:
        by_name: dict[str, list[Available]] = {}
        for a in self.pool:
            by_name.setdefault(a.name, []).append(a)
        self.by_name = {n: _best_first(c) for n, c in by_name.items()}
        self.inst_provided = _provided_by(self.installed)

    def run(self, reqs: list[tuple[str, Dep]]) -> None:
        self.explicit = set(self.explicit_before)
        self.chosen: dict[str, Available] = {}
        self.reasons: dict[str, str] = {}
        self.upgrades: dict[str, str] = {}
        self.downgrades: dict[str, str] = {}
        self.already: list[str] = []
        self.parent: dict[str, str] = {}  # chosen as a dependency -> the stone needing it
        for text, dep in reqs:
            self.request(text, dep)
        for name, why in sorted(self.forced.items()):
            if name not in self.chosen:
                self._choose(name, self._pick_or_fail(name), why)
        self.pull_dependencies()
        self.check_kept()

    # -- choosing --------------------------------------------------------------------

    def _was(self, name: str) -> str:
        meta = self.installed[name]
        return f"{meta.get('version')}-{meta.get('release')}"

    def _choose(self, name: str, pick: Available, why: str) -> None:
        self.chosen[name] = pick
        self.reasons[name] = why
        if name in self.installed:
            c = vs_installed(pick, self.installed[name])
            if c > 0:
                self.upgrades[name] = self._was(name)
            elif c < 0:
                self.downgrades[name] = self._was(name)

    def _candidates(self, name: str, *, older_ok: bool = False) -> list[Available]:
        """Stones named `name` meeting every versioned need known, best first; never
        older than the installed one unless downgrades are allowed."""
        cands = [c for c in self.by_name.get(name, [])
                 if all(n.dep.allows(c.version, c.release) for n in self.needs.get(name, []))]
        if name in self.installed and not (older_ok or self.allow_downgrade):
            cands = [c for c in cands if vs_installed(c, self.installed[name]) >= 0]
        return cands

    def _pick_or_fail(self, name: str, *, older_ok: bool = False) -> Available:
        cands = self._candidates(name, older_ok=older_ok)
        if not cands:
            raise self._unsatisfiable(name, older_ok=older_ok)
        return cands[0]

    def _learn(self, name: str, need: _Need) -> bool:
        """Record a versioned need; False when it was known already."""
        known = self.needs.setdefault(name, [])
        if any(n.dep == need.dep for n in known):
            return False
        known.append(need)
        return True

    def _chain(self, a: Available) -> str:
        """`motd → hello 2.0`: who pulled the stone in, back to what was requested."""
        names = [a.name]
        while names[-1] in self.parent and len(names) < 50:
            names.append(self.parent[names[-1]])
        return " → ".join([*reversed(names[1:]), f"{a.name} {a.version}"])

    def _unsatisfiable(self, name: str, *, older_ok: bool = False) -> ConflictError:
        needs = self.needs.get(name, [])
        said = " and ".join(f"{n.who} needs {n.dep}" if n.who else f"{n.dep} was asked for"
                            for n in needs) or f"{name} was asked for"
        offered = self.by_name.get(name, [])
        exact = any(n.dep.release is not None for n in needs)
        versions = list(dict.fromkeys(
            (c.evr if exact else c.version) for c in sorted(
                offered, key=cmp_to_key(compare_evr))))
        if versions:
            what = f"the repositories offer {', '.join(versions)}"
        else:
            what = f"no repository has a stone named {name}"
            if any(_provides(a, name) for a in self.pool):
                what += " (a version constraint is met only by a stone of that name)"
        hint = "add a repository that offers it (onix repo add), or onix repo update"
        if name in self.installed:
            what += f"; {name} {self._was(name)} is installed"
            meets = [c for c in offered if all(n.dep.allows(c.version, c.release)
                                               for n in needs)]
            if meets and not (older_ok or self.allow_downgrade):
                what += " and onix does not replace it with an older version"
                hint = (f"ask for the version by name ({name}={meets[0].version}), or allow "
                        "downgrades")
        return ConflictError(f"{said}; {what}", path=name, hint=hint)

    def request(self, text: str, dep: Dep) -> None:
        """One request: chosen, upgraded, or already there."""
        name = dep.name
        if dep.constrained:
            self._learn(name, _Need(dep, ""))
            inst = self.installed.get(name)
            # naming versions the installed stone does not meet is choosing a version,
            # older or not
            older_ok = inst is not None and not _meets(dep, inst)
            self.explicit.add(name)
            if name in self.chosen:
                return
            cands = self._candidates(name, older_ok=older_ok)
            if inst is not None and not older_ok and (
                    not cands or vs_installed(cands[0], inst) <= 0):
                self.already.append(name)
                return
            if not cands:
                raise self._unsatisfiable(name, older_ok=older_ok)
            self._choose(name, cands[0], self._requested(name, cands[0]))
            return
        if name in self.by_name or name in self.installed:
            self.explicit.add(name)
            if name in self.chosen:
                return
            cands = self._candidates(name)
            if name in self.installed and (
                    not cands or vs_installed(cands[0], self.installed[name]) == 0
                    or name not in self.by_name):
                self.already.append(name)
                return
            if not cands:
                raise self._unsatisfiable(name)
            self._choose(name, cands[0], self._requested(name, cands[0]))
            return
        if name in self.inst_provided:  # a provider string an installed stone satisfies
            self.explicit.add(self.inst_provided[name])
            self.already.append(self.inst_provided[name])
            return
        providers = _provider_order(name, (a for a in self.pool if _provides(a, name)))
        if not providers:
            raise OnixError(f"no repository has a stone named or providing {text}", path=text,
                            hint="try onix search, or onix repo update to refresh the indexes")
        pick = self.chosen.get(providers[0].name, providers[0])
        self.explicit.add(pick.name)
        if pick.name not in self.chosen:
            self._choose(pick.name, pick, f"requested as {text}")

    def _requested(self, name: str, pick: Available) -> str:
        if name not in self.installed:
            return "requested"
        c = vs_installed(pick, self.installed[name])
        return f"requested ({'upgrade' if c > 0 else 'downgrade'} from {self._was(name)})"

    # -- dependencies ------------------------------------------------------------------

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
            for raw in a.depends:
                dep = parse_dep(raw, where=f"{a.name} {a.evr} ({a.repo})")
                pick = (self._versioned(dep, a) if dep.constrained
                        else self._unversioned(dep, a))
                if pick is None:
                    continue
                self.parent[pick.name] = a.name
                self._choose(pick.name, pick, f"needed by {a.name}" if str(dep) == pick.name
                             else f"needed by {a.name} ({dep})")
                self._add_provides(pick)
                queue.append(pick)

    def _unversioned(self, dep: Dep, a: Available) -> Available | None:
        if dep.name in self.provided:
            return None
        return self._provider_for(dep.name, needed_by=a)

    def _versioned(self, dep: Dep, a: Available) -> Available | None:
        """The stone to add for `NAME OP VERSION`, or None when the selection meets it."""
        name = dep.name
        learnt = self._learn(name, _Need(dep, self._chain(a)))
        if name in self.chosen:
            if dep.allows(self.chosen[name].version, self.chosen[name].release):
                return None
            if learnt:
                raise _Again  # choose `name` again, knowing this constraint
            raise self._unsatisfiable(name)
        if name in self.kept:
            if _meets(dep, self.kept[name]):
                return None
            # a kept stone too old (or too new) for this: the repositories' version moves in
            if not self._candidates(name):
                raise self._unsatisfiable(name)
            self.forced[name] = f"needed by {a.name} ({dep})"
            raise _Again
        return self._pick_or_fail(name)

    def _provider_for(self, dep: str, *, needed_by: Available) -> Available:
        cands = [c for c in self.pool if _provides(c, dep)]
        # kept and chosen stones are fixed: another version of one cannot come too
        free = [c for c in cands if c.name not in self.kept and c.name not in self.chosen
                and c in self._candidates(c.name)]
        if free:
            return _provider_order(dep, free)[0]
        if dep in self.needs and dep not in self.kept and dep not in self.chosen:
            raise self._unsatisfiable(dep)  # the stone of that name, at no version that fits
        if not cands:
            raise ConflictError(f"nothing provides {dep} needed by {needed_by.name}",
                                path=needed_by.name, hint=MISSING_HINT)
        fixed = sorted({c.name for c in cands})
        what = ", ".join(
            f"{n} {self.chosen[n].evr} (chosen)" if n in self.chosen else
            f"{n} {self.kept[n].get('version', '?')}-{self.kept[n].get('release', '?')} "
            "(installed)" if n in self.kept else
            f"{n} (no version meets {' and '.join(str(x.dep) for x in self.needs[n])})"
            for n in fixed)
        raise ConflictError(
            f"{dep} needed by {needed_by.name} is provided only by other versions of "
            f"{', '.join(fixed)}, but {what} does not provide it", path=needed_by.name,
            hint=f"install {' '.join(fixed)} explicitly to upgrade, or install "
            "another stone that provides it")

    def check_kept(self) -> None:
        """An upgrade may drop something an installed stone relied on, or move a stone
        out of the versions an installed one accepts."""
        for name, meta in sorted(self.kept.items()):
            for raw in _strings(meta.get("depends")):
                dep = parse_dep(raw, where=f"installed stone {name}")
                if dep.constrained:
                    was = dep.name
                    if (was in self.chosen and was in self.installed
                            and _meets(dep, self.installed[was])
                            and not dep.allows(self.chosen[was].version,
                                               self.chosen[was].release)):
                        raise ConflictError(
                            f"moving {was} to {self.chosen[was].evr} would leave {name} "
                            f"without {dep}", path=name,
                            hint=f"upgrade {name} too, or keep {was} as it is")
                    continue
                if dep.name in self.inst_provided and dep.name not in self.provided:
                    was = self.inst_provided[dep.name]
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
        for raw in _strings(selection[name].get("depends")):
            # a versioned dependency reaches the stone of its name only (whatever its
            # version: an unmet one is the transaction's check, not a reason to drop it)
            dep = parse_dep(raw, where=f"installed stone {name}")
            reach = ({dep.name} & set(selection) if dep.constrained
                     else providers.get(dep.name, ()))
            for p in reach:
                if p not in reached:
                    reached.add(p)
                    todo.append(p)
    return set(selection) - reached
