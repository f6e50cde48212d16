"""Sync: move every installed stone to the best candidate the repositories offer.

`onix sync` (moss: `sync -u`; rpm-ostree: `upgrade`) plans one transaction from the
live selection and the cached, verified indexes — nothing is fetched to plan:

    fixed      installed stones no repository offers (installed from a file), and those
               whose best candidate is older than what is installed (never a downgrade
               unless allow_downgrade): they stay as they are
    resolve    the explicit stones are resolved afresh against the repositories with the
               fixed ones kept (resolve.resolve): each moves to its best candidate and
               pulls in what it depends on now
    complete   a fixed stone's dependency the resolution left out is resolved too
    orphans    installed stones the new selection no longer reaches are dropped (a
               fixed one too, unless it was asked for by name)

The plan is pure data (`SyncPlan`); api.sync prints it, asks, fetches and hands it to
transaction.install with `drop=` in one transaction. The transaction re-reads the live
selection under the lock and checks every dependency again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from onix.core import faults
from onix.core.paths import RootPaths
from onix.core.progress import SILENT, Progress
from onix.machine.preview import (
    DEPENDENCY,
    DOWNGRADE,
    NEW,
    REMOVED,
    UPGRADE,
    Preview,
    StoneChange,
)
from onix.machine.reader import live_selection
from onix.repo.resolve import vs_installed
from onix.repo.versions import Available


def evr_of(meta: dict) -> str:
    return f"{meta.get('version')}-{meta.get('release')}"


@dataclass
class SyncPlan:
    fetch: list[Available] = field(default_factory=list)  # stones to download and install
    drop: list[str] = field(default_factory=list)  # installed names the new state leaves out
    dependencies: set[str] = field(default_factory=set)  # names recorded as pulled in
    changes: list[StoneChange] = field(default_factory=list)
    held: list[str] = field(default_factory=list)  # why a stone stays (downgrade refused)

    @property
    def empty(self) -> bool:
        return not self.fetch and not self.drop


def _installed_size(meta: dict) -> int:
    return int(meta.get("installed_size") or 0)


def plan(installed: dict[str, dict], explicit: set[str], available: list[Available], *,
         allow_downgrade: bool = False) -> SyncPlan:
    """The sync of `installed` (name → meta) against `available`; pure, no I/O."""
    from onix.repo.resolve import _best_first, resolve

    by_name: dict[str, list[Available]] = {}
    for a in available:
        by_name.setdefault(a.name, []).append(a)
    out = SyncPlan()
    fixed: dict[str, dict] = {}
    for name, meta in installed.items():
        cands = _best_first(by_name.get(name, []))
        if not cands:
            fixed[name] = meta
        elif vs_installed(cands[0], meta) < 0 and not allow_downgrade:
            fixed[name] = meta
            out.held.append(f"{name} {evr_of(meta)} is newer than anything the repositories "
                            f"offer ({cands[0].evr}); kept (--allow-downgrade to go back)")
    pool = [a for a in available if a.name not in fixed]
    requested = sorted(n for n in explicit if n in installed and n not in fixed)
    chosen: dict[str, Available] = {}
    for _ in range(len(installed) + 1):  # each round can only add names
        res = resolve(requested=requested, installed=fixed, available=pool,
                      explicit=set(explicit))
        chosen = {a.name: a for a in res.install}
        selection = {**fixed, **{n: a.as_dict() for n, a in chosen.items()}}
        missing = _unmet_names(selection)
        if not missing or set(missing) <= set(requested):
            break
        requested = sorted(set(requested) | set(missing))
    # A kept dependency nothing reaches any more (hello 2 no longer needs libgreet) goes too.
    from onix.repo.resolve import orphans

    selection = {**fixed, **{n: a.as_dict() for n, a in chosen.items()}}
    stray = orphans(selection=selection, explicit=set(explicit) & set(selection))
    out.drop = sorted((set(installed) - set(fixed) - set(chosen)) | (stray & set(fixed)))
    for name, a in sorted(chosen.items()):
        meta = installed.get(name)
        if meta is not None and vs_installed(a, meta) == 0:
            continue  # the same version-release: nothing to fetch
        out.fetch.append(a)
        if meta is None:
            kind = NEW if name in explicit else DEPENDENCY
        else:
            kind = UPGRADE if vs_installed(a, meta) > 0 else DOWNGRADE
        size = a.as_dict().get("installed_size") or 0
        out.changes.append(StoneChange(
            name=name, kind=kind, old=evr_of(meta) if meta else None, new=a.evr, repo=a.repo,
            download=a.size, size_change=(size - _installed_size(meta)) if meta else size))
    for name in out.drop:
        meta = installed[name]
        out.changes.append(StoneChange(name=name, kind=REMOVED, old=evr_of(meta), new=None,
                                       size_change=-_installed_size(meta)))
    keep_explicit = set(explicit)
    out.dependencies = {a.name for a in out.fetch if a.name not in keep_explicit}
    return out


def _unmet_names(selection: dict[str, dict]) -> list[str]:
    """Dependencies of `selection` nothing in it provides (the strings as written)."""
    from onix.machine.candidates import unmet_dependencies

    return sorted({line.split(" needs ", 1)[1] for line in unmet_dependencies(selection)})


def plan_sync(paths: RootPaths, *, allow_downgrade: bool = False,
              fetch: bool = False) -> SyncPlan:
    """The sync of the live state against the cached indexes (run `repo update` first),
    or with `fetch` against the indexes as the repositories serve them now."""
    from onix.repo import config

    installed, explicit = live_selection(paths)
    offered = config.available(paths, fetch=fetch) if config.configs(paths) else []
    out = plan(installed, explicit, offered, allow_downgrade=allow_downgrade)
    faults.point("sync", "plan")
    return out


def preview(paths: RootPaths, p: SyncPlan, *, stage: bool = False) -> Preview:
    """The plan as the preview `--dry-run` and the confirmation show."""
    from onix.machine.preview import selection_change

    installed, _ = live_selection(paths)
    return selection_change(paths, kind="sync", current=installed, changes=list(p.changes),
                            new_layouts={}, stage=stage, notes=list(p.held))


def download(paths: RootPaths, p: SyncPlan, *, progress: Progress = SILENT) -> list[Path]:
    """Fetch the plan's stones into the download cache, each checked against its index."""
    from onix.repo import fetch as downloads

    out = []
    for i, entry in enumerate(p.fetch):
        faults.point("sync", "fetch")
        progress.note(f"fetching {entry.name} {entry.evr} from {entry.repo} "
                      f"({i + 1}/{len(p.fetch)})")
        out.append(downloads.fetch(paths, entry))
    return out


def _offered(paths: RootPaths) -> list[Available]:
    from onix.repo import config

    return config.available(paths) if config.configs(paths) else []


def installed(paths: RootPaths) -> list[dict]:
    """`onix list installed`: each stone of the live state, explicit or a dependency, and
    the repository that offers that exact version ("" for one installed from a file or
    no longer offered: the log does not record where a stone came from)."""
    rows, _ = live_selection(paths)
    offered = {(a.name, a.version, a.release): a.repo for a in _offered(paths)}
    return [{"name": n, "version": r["version"], "release": r["release"],
             "explicit": r["explicit"], "summary": r["summary"],
             "installed_size": r["installed_size"],
             "repo": offered.get((n, r["version"], r["release"]), "")}
            for n, r in sorted(rows.items())]


def available(paths: RootPaths) -> list[dict]:
    """`onix list available`: every stone the cached indexes offer, with what is installed."""
    rows, _ = live_selection(paths)
    out = []
    for a in sorted(_offered(paths), key=lambda a: (a.name, a.repo, a.version, a.release)):
        mine = rows.get(a.name)
        out.append({**a.as_dict(), "installed": evr_of(mine) if mine else None})
    return out
