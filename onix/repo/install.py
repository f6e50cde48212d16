"""Install by name: what the user asks for → stones from repositories → one transaction.

`onix install` takes stone files, stone names, or provider strings (`binary(rg)`),
mixed. Names are resolved against the configured repositories (onix.repo, verified
indexes) with onix.resolve, which also pulls in what they depend on — by name or by
provider — and fails with one clear line, before anything is fetched or written, when
something has no provider. The chosen stones are downloaded and checked against the
index's sha256 (`fetch`); api.install then hands them to transaction.install with the
pulled-in ones marked as dependencies, so `onix remove` can later drop them as orphans.

The live selection is read without the root lock (resolution and downloads can take a
while); the transaction re-reads it under the lock and checks every dependency again,
so a change in between is refused, not half-applied.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from onix.core.errors import OnixError
from onix.core.paths import RootPaths
from onix.core.progress import SILENT, Progress
from onix.machine.reader import live_selection
from onix.repo.resolve import Resolution

# soname(…), binary(…), interpreter(/usr/lib/ld….so(x86_64)): the last has slashes
PROVIDER_RE = re.compile(r"[a-z][a-z0-9_-]*\(.+\)\Z")


def is_file_target(target: str) -> bool:
    """A command-line target that names a stone file rather than a stone (a provider
    string is never one, slashes and all, unless a file of that name exists)."""
    if PROVIDER_RE.match(target) and not os.path.exists(target):
        return False
    return target.endswith(".stone") or os.sep in target


@dataclass
class Fetched:
    """What installing names needs: stone files downloaded and verified, the names pulled
    in as dependencies, and the named stones that are installed already."""

    fetched: list[Path] = field(default_factory=list)
    dependencies: set[str] = field(default_factory=set)
    already: list[str] = field(default_factory=list)


def fetch(paths: RootPaths, names: list[str], *, files: Sequence[Path] = (),
          progress: Progress = SILENT) -> Fetched:
    """Resolve `names` (beside the stone `files` of the same command) and download what
    the plan installs. Nothing is fetched when a name has no provider."""
    from onix.repo import fetch as downloads

    if not names:
        return Fetched()
    plan = plan_install(paths, names, files=files)
    out = Fetched(dependencies=set(plan.dependencies), already=sorted(set(plan.already)))
    for i, entry in enumerate(sorted(plan.install, key=lambda a: a.name)):
        progress.note(f"fetching {entry.name} {entry.evr} from {entry.repo} "
                      f"({i + 1}/{len(plan.install)})")
        out.fetched.append(downloads.fetch(paths, entry))
    return out


def plan_install(paths: RootPaths, names: list[str], *,
                 files: Sequence[Path] = ()) -> Resolution:
    """The resolver's plan for names against the live selection and the repositories.

    Stone `files` installed in the same transaction count as installed already: what
    they provide is not fetched, and a repository's stone of the same name is never
    chosen over the file the user gave.
    """
    from onix.machine.stone import Stone
    from onix.repo import config, resolve

    if not config.configs(paths):
        raise OnixError(f"{names[0]} is not a stone file and no repository is configured",
                        path=names[0], hint="give a path to a .stone file, or add a repository "
                        "with onix repo add NAME URI --key PUBKEY")
    installed, explicit = live_selection(paths)
    installed = dict(installed)
    given: set[str] = set()
    for f in files:
        with Stone(Path(f)) as s:
            installed[s.meta.name] = s.meta.as_dict()
            given.add(s.meta.name)
    available = [a for a in config.available(paths) if a.name not in given]
    return resolve.resolve(requested=names, installed=installed, available=available,
                           explicit=explicit)


def _compared(a, row: dict | None) -> str:
    """How an offered version stands to the installed one: upgrade, installed, downgrade
    ("" when nothing is installed)."""
    if row is None:
        return ""
    from onix.repo.resolve import vs_installed

    return {1: "upgrade", 0: "installed", -1: "downgrade"}[vs_installed(a, row)]


@dataclass
class StoneInfo:
    name: str
    installed: dict | None
    available: list[dict]

    def as_dict(self) -> dict:
        return {"name": self.name, "installed": self.installed, "available": self.available}


def info(paths: RootPaths, name: str) -> StoneInfo:
    """What the live state has of `name` and what the repositories offer."""
    import json

    from onix.repo import config

    installed, explicit = live_selection(paths)
    row = installed.get(name)
    mine = None
    if row is not None:
        mine = {k: row[k] for k in ("name", "version", "release", "arch", "summary", "license")}
        mine.update(provides=json.loads(row["provides"]), depends=json.loads(row["depends"]),
                    explicit=name in explicit)
    offered: list[dict] = []
    if config.configs(paths):
        try:
            offered = [{**a.as_dict(), "compared": _compared(a, row)}
                       for a in config.info(paths, name)]
        except OnixError:
            if mine is None:
                raise
    elif mine is None:
        raise OnixError(f"{name} is not installed and no repository is configured",
                        path=name, hint="add one with onix repo add NAME URI --key PUBKEY")
    return StoneInfo(name=name, installed=mine, available=offered)


def preview(paths: RootPaths, names: list[str], *, files: Sequence[Path] = ()):
    """`onix install --dry-run`: the resolver's plan and the stone files' changes, with
    nothing fetched, locked or written."""
    from onix.machine.preview import (
        DEPENDENCY,
        NEW,
        REINSTALL,
        StoneChange,
        selection_change,
    )
    from onix.machine.stone import Stone
    from onix.repo.resolve import vs_installed
    from onix.repo.sync import evr_of
    from onix.repo.versions import compare_version_release

    installed, _ = live_selection(paths)
    changes: list[StoneChange] = []
    layouts = {}
    notes: list[str] = []

    def kind_of(name: str, cmp: int, *, asked: bool) -> str:
        if name not in installed:
            return NEW if asked else DEPENDENCY
        return "upgrade" if cmp > 0 else "downgrade" if cmp < 0 else REINSTALL

    for f in files:
        with Stone(Path(f)) as s:
            meta, layout = s.meta.as_dict(), s.layout
        old = installed.get(meta["name"])
        cmp = 0
        if old is not None:
            cmp = compare_version_release(meta["version"], meta["release"], old["version"],
                                          old["release"])
        changes.append(StoneChange(name=meta["name"], kind=kind_of(meta["name"], cmp, asked=True),
                                   old=evr_of(old) if old else None,
                                   new=f"{meta['version']}-{meta['release']}"))
        layouts[meta["name"]] = layout
    if names:
        plan = plan_install(paths, names, files=files)
        for a in sorted(plan.install, key=lambda a: a.name):
            old = installed.get(a.name)
            changes.append(StoneChange(
                name=a.name, kind=kind_of(a.name, vs_installed(a, old) if old else 1,
                                          asked=a.name not in plan.dependencies),
                old=evr_of(old) if old else None, new=a.evr, repo=a.repo, download=a.size))
        notes += [f"{n} is installed already" for n in sorted(set(plan.already))]
    return selection_change(paths, kind="install", current=installed, changes=changes,
                            new_layouts=layouts, notes=notes)
