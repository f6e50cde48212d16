"""What stones a build makes, and what each provides and needs.

The installed files are assigned to the recipe's splits (first matching glob wins, the
main stone takes the rest); each split is analysed on its own files (onix.build.elf),
and a need another split meets becomes a dependency on that split. Debug info split off
by the strip step makes a -dbginfo stone; `closure: debian` adds one stone per Debian
package providing a library the recipe's files need (onix.build.closure).

A tree's entries are (path relative to the tree, "dir" | "file" | "symlink"), sorted.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from onix.build import closure, sources
from onix.build.elf import analyse
from onix.build.recipe import ARCH, Recipe
from onix.machine.stone import StoneMeta


def walk(tree: Path, *, top: str = "usr") -> list[tuple[str, str]]:
    """(rel path, "dir"|"file"|"symlink") of everything below tree/top, sorted."""
    out: list[tuple[str, str]] = []
    base = tree / top
    if not base.is_dir():
        return out
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        d = Path(dirpath)
        for name in [*dirnames, *filenames]:
            p = d / name
            rel = p.relative_to(tree).as_posix()
            mode = p.lstat().st_mode
            kind = ("symlink" if stat.S_ISLNK(mode) else "dir" if stat.S_ISDIR(mode)
                    else "file")
            out.append((rel, kind))
    return sorted(out)


def _matches(rel: str, globs: tuple[str, ...]) -> bool:
    """A glob matches a path, or one of the directories above it."""
    parts = rel.split("/")
    candidates = ["/".join(parts[:i]) for i in range(2, len(parts) + 1)]
    return any(fnmatch.fnmatchcase(c, g) for c in candidates for g in globs)


def assign(recipe: Recipe, entries: list[tuple[str, str]]) -> dict[str, list[tuple[str, str]]]:
    """Stone name → its entries. Splits in order, first match wins, main takes the rest.

    Files and symlinks go by glob; each stone also gets the directories above its files;
    a directory nothing lands in goes by glob too (so empty dirs are kept somewhere).
    """
    owners: dict[str, list[tuple[str, str]]] = {recipe.name: []}
    for pkg in recipe.packages:
        owners[pkg.name] = []
    kinds = dict(entries)
    placed: dict[str, set[str]] = {n: set() for n in owners}

    def owner(rel: str) -> str:
        for pkg in recipe.packages:
            if _matches(rel, pkg.paths):
                return pkg.name
        return recipe.name

    has_child: set[str] = set()
    for rel, _kind in entries:
        parent = rel.rsplit("/", 1)[0]
        has_child.add(parent)
    for rel, kind in entries:
        if kind == "dir" and rel in has_child:
            continue  # placed with whatever is inside it
        name = owner(rel)
        placed[name].add(rel)
        parts = rel.split("/")
        for i in range(2, len(parts)):
            placed[name].add("/".join(parts[:i]))
    for name in owners:
        owners[name] = sorted((rel, kinds[rel]) for rel in placed[name])
    return owners


@dataclass
class Planned:
    meta: StoneMeta
    tree: Path
    entries: list[tuple[str, str]]
    reasons: dict[str, list[str]]


def _split_stones(recipe: Recipe, install: Path,
             owners: dict[str, list[tuple[str, str]]]) -> list[Planned]:
    """One planned stone per non-empty split (main always), with provides and depends.

    Each split is analysed on its own files; a need another split of this recipe
    provides becomes a dependency on that split by name.
    """
    splits: list[tuple[str, str, tuple[str, ...]]] = [(recipe.name, recipe.summary,
                                                       tuple(recipe.rundeps))]
    splits += [(p.name, p.summary, p.rundeps) for p in recipe.packages]
    analyses = {}
    for name, _summary, _rundeps in splits:
        paths = [rel for rel, kind in owners[name] if kind != "dir"]
        if name != recipe.name and not paths:
            continue
        analyses[name] = analyse(install, paths=paths, arch=ARCH)
    planned = []
    for name, summary, rundeps in splits:
        if name not in analyses:
            continue
        a = analyses[name]
        reasons: dict[str, set[str]] = {}
        for dep in a.depends:
            by = next((other for other, oa in analyses.items()
                       if other != name and dep in oa.provides), None)
            target = by or dep
            if target != name:
                reasons.setdefault(target, set()).update(a.reasons.get(dep, []))
        for dep in rundeps:
            if dep != name:
                reasons.setdefault(dep, set()).add("rundeps")
        meta = StoneMeta(name=name, version=recipe.version, release=recipe.release, arch=ARCH,
                         summary=summary, license=recipe.license,
                         provides=sorted(set(a.provides)), depends=sorted(reasons))
        planned.append(Planned(meta=meta, tree=install, entries=owners[name],
                                reasons={d: sorted(v) for d, v in reasons.items()}))
    return planned


def closure_stones(*, recipe: Recipe, install: Path, cache: Path, work: Path,
                   say: Callable[[str], None],
                   own: Sequence[Planned] = ()) -> tuple[list[Planned], list[dict]]:
    """`closure: debian`: one stone per Debian package that provides a library the
    recipe's files need (onix.build.closure decides, by ELF analysis), and manifest records.
    Debian's versioned relations become constraints: between the closure's stones, and
    the seeds' on the recipe's main stone among `own` (closure.constraints)."""
    seeds = [u.ref for u in recipe.upstreams if u.kind == "debian-binary"]
    suite = next((u.suite for u in recipe.upstreams if u.suite), None)  # one at most
    apt = sources.closure_apt(cache, suite) if suite else ()
    found = closure.resolve(tree=install, seeds=seeds, cache=cache, work=work, apt=apt,
                            progress=say)
    planned, records = [], []
    for p in found.packages:
        a = analyse(p.tree, arch=ARCH)
        meta = StoneMeta(name=p.name, version=p.stone_version, release=1, arch=ARCH,
                         summary=f"Debian's {p.name} {p.version}, repacked: a library "
                         f"{recipe.name} needs (scaffolding)",
                         license=f"see /usr/share/doc/{p.name}/copyright",
                         provides=sorted(a.provides),
                         depends=sorted({*(d for d in a.depends if d not in a.provides),
                                         *p.constraints}))
        planned.append(Planned(meta=meta, tree=p.tree, entries=walk(p.tree),
                                reasons={d: sorted(a.reasons.get(d, []) or
                                                   [f"debian: {p.name} Depends"])
                                         for d in meta.depends}))
        records.append({"kind": "debian-closure", "ref": p.name, "version": p.version,
                        "file": None, "sha256": p.sha256})
    for main in (o for o in own if o.meta.name == recipe.name):
        main.meta.depends = sorted({*main.meta.depends, *found.seed_constraints})
        for c in found.seed_constraints:
            main.reasons.setdefault(c, ["debian: the seeds' Depends"])
    return planned, records


def plan(*, recipe: Recipe, install: Path, entries: list[tuple[str, str]],
         debug_tree: Path | None) -> list[Planned]:
    """The recipe's own stones: one per split, analysed, and -dbginfo from debug_tree
    when the strip step wrote debug info there."""
    stones = _split_stones(recipe, install, assign(recipe, entries))
    if debug_tree is not None:
        stones.append(Planned(
            meta=StoneMeta(name=f"{recipe.name}-dbginfo", version=recipe.version,
                           release=recipe.release, arch=ARCH,
                           summary=f"{recipe.summary} (debug info)", license=recipe.license),
            tree=debug_tree, entries=walk(debug_tree), reasons={}))
    return stones
