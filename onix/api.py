"""The onix library's front door: the only layer that takes a root.

Every operation a person or a script can ask for is one function here, a few lines
each: resolve the root (`RootPaths`), open a session when the operation writes
(`recovery.opened`: the root lock, recovery, boot and seam catch-up), and call the
plane module that does the work with that typed Session. Below this module nothing
takes a bare root; the CLI (onix/cli/) calls only this module and prints.

Heavy modules (SQLAlchemy, zstandard, pyelftools) are imported inside the functions
that need them, so `onix status` and the other read commands start fast.

The validation harness (onix/validate/) sits above this module, not below it: it
composes images with api.install like a user would, and the CLI's `image` and
`validate` commands call it directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onix.core.errors import OnixError
from onix.core.paths import RootPaths, read_state_id
from onix.core.progress import SILENT, Progress

if TYPE_CHECKING:
    from onix.machine.preview import Preview
    from onix.machine.session import Session
    from onix.machine.transaction import Result

Root = Path | str


@contextmanager
def session(root: Root, *, wait: bool = True, progress: Progress = SILENT,
            create: bool = True) -> Iterator[Session]:
    """The root locked and in a known state (see machine/recovery.py)."""
    from onix.machine import recovery

    with recovery.opened(RootPaths.of(root), wait=wait, progress=progress,
                         create=create) as s:
        yield s


# -- transactions ------------------------------------------------------------------------


def install(root: Root, targets: Sequence[str | Path], *, dependencies: Iterable[str] = (),
            dry_run: bool = False, wait: bool = True,
            progress: Progress = SILENT) -> Result | Preview:
    """Install stone files and/or stones by name from repositories: one new state.

    Paths (and strings that name .stone files) are installed as they are; names and
    provider strings are resolved against the repositories first (repo/install.py).
    Names in `dependencies` are recorded as pulled in, so `remove` may drop them later.
    With dry_run, the plan, and nothing fetched or written.
    """
    from onix.repo import install as by_name

    if not targets:
        raise OnixError("nothing to install", hint="name stones, or .stone files")
    paths = RootPaths.of(root)
    files: list[Path] = []
    names: list[str] = []
    for t in targets:
        if isinstance(t, Path) or by_name.is_file_target(t):
            files.append(Path(t))
        else:
            names.append(t)
    if dry_run:
        return by_name.preview(paths, names, files=files)
    command = "install " + " ".join(str(t) for t in targets)
    plan = by_name.fetch(paths, names, files=files, progress=progress)
    result = None
    if files or plan.fetched:
        result = _install_files(paths, files + plan.fetched,
                                dependencies={*dependencies, *plan.dependencies},
                                command=command, wait=wait, progress=progress)
        for f in plan.fetched:  # imported now (store + stone cache): one copy is enough
            f.unlink(missing_ok=True)
    if plan.already:  # named stones already installed: asked for by name from now on
        from onix.machine import transaction

        with session(paths.root, wait=wait, create=False) as s:
            promoted = transaction.mark_explicit(s, plan.already)
        result = result or promoted
    return result


def _install_files(paths: RootPaths, files: list[Path], *, dependencies: set[str], command: str,
                   wait: bool, progress: Progress, drop: Iterable[str] = (),
                   kind: str = "install", stage: bool = False) -> Result:
    from onix.machine import candidates, transaction

    # Every stone is read and checked before the root is locked or anything written.
    with candidates.open_candidates(files) as cands:
        candidates.check_usr_is_ours(paths)
        with session(paths.root, wait=wait, progress=progress) as s:
            s.command = command
            return transaction.install(s, cands, dependencies=dependencies, drop=drop,
                                       kind=kind, stage=stage)


def sync(root: Root, *, refresh: bool = True, allow_downgrade: bool = False,
         boot: bool = False, dry_run: bool = False,
         confirm: Callable[[Preview], bool] | None = None, wait: bool = True,
         progress: Progress = SILENT) -> Result | Preview:
    """Move every installed stone to the best candidate the repositories offer and drop
    orphans, in one transaction (repo/sync.py); with boot, staged for the next boot.

    The plan is made before anything is fetched; `confirm` sees it and may decline.
    """
    from onix.machine.transaction import Result
    from onix.repo import config
    from onix.repo import sync as syncing

    paths = RootPaths.of(root)
    if not config.configs(paths):
        raise OnixError("no repository is configured", path=paths.root / config.REPO_CONFIG_DIR,
                        hint="add one with onix repo add NAME URI --key PUBKEY")
    if refresh and not dry_run:
        progress.note("refreshing the repository indexes")
        config.update(paths, lock=lambda: _repo_lock(paths, wait))
    # A dry run plans from the indexes as served now, but caches nothing.
    plan = syncing.plan_sync(paths, allow_downgrade=allow_downgrade,
                             fetch=refresh and dry_run)
    preview = syncing.preview(paths, plan, stage=boot)
    if dry_run:
        return preview
    if plan.empty:
        return Result(kind="sync", changed=False, summary="up to date", warnings=plan.held)
    if confirm is not None and not confirm(preview):
        raise OnixError("not confirmed; nothing changed", hint="run onix sync --yes to "
                        "apply the plan without asking")
    fetched = syncing.download(paths, plan, progress=progress)
    result = _install_files(paths, fetched, dependencies=plan.dependencies, drop=plan.drop,
                            command="sync" + (" --boot" if boot else ""), kind="sync",
                            stage=boot, wait=wait, progress=progress)
    for f in fetched:
        f.unlink(missing_ok=True)
    result.warnings += plan.held
    return result


def remove(root: Root, names: list[str], *, orphans: bool = True, dry_run: bool = False,
           wait: bool = True, progress: Progress = SILENT) -> Result | Preview:
    from onix.machine import transaction

    if not names:
        raise OnixError("nothing to remove", hint="name one or more installed stones")
    if dry_run:
        from onix.machine import preview

        return preview.removal(RootPaths.of(root), names, orphans=orphans)
    with session(root, wait=wait, progress=progress, create=False) as s:
        s.command = "remove " + " ".join(names)
        return transaction.remove(s, names, orphans=orphans)


def activate(root: Root, state_id: int, *, dry_run: bool = False, wait: bool = True,
             progress: Progress = SILENT) -> Result | Preview:
    from onix.machine import transaction

    if dry_run:
        from onix.machine import preview

        return preview.switch(RootPaths.of(root), kind="activate", to=state_id)
    with session(root, wait=wait, progress=progress, create=False) as s:
        s.command = f"state activate {state_id}"
        return transaction.activate(s, state_id)


def rollback(root: Root, *, to: int | None = None, dry_run: bool = False, wait: bool = True,
             progress: Progress = SILENT) -> Result | Preview:
    from onix.machine import transaction

    if dry_run:
        from onix.machine import preview

        return preview.switch(RootPaths.of(root), kind="rollback", to=to)
    with session(root, wait=wait, progress=progress, create=False) as s:
        s.command = "rollback" + (f" --to {to}" if to is not None else "")
        return transaction.rollback(s, to=to)


def prune(root: Root, *, keep: int = 3, dry_run: bool = False, wait: bool = True,
          progress: Progress = SILENT) -> Result | Preview:
    from onix.machine import prune as pruning

    pruning.check_keep(keep)
    if dry_run:
        return pruning.preview(RootPaths.of(root), keep=keep)
    with session(root, wait=wait, progress=progress, create=False) as s:
        return pruning.prune(s, keep=keep)


def remove_states(root: Root, ids: list[int], *, wait: bool = True,
                  progress: Progress = SILENT) -> Result:
    from onix.machine import prune as pruning

    with session(root, wait=wait, progress=progress, create=False) as s:
        return pruning.remove_states(s, ids)


def verify(root: Root, *, fix: bool = False, wait: bool = True,
           progress: Progress = SILENT) -> Any:
    from onix.machine import verify as checking

    with session(root, wait=wait, progress=progress, create=False) as s:
        return checking.verify(s, fix=fix)


# -- reading the machine -------------------------------------------------------------------


def status(root: Root) -> dict:
    from onix.machine import status as st

    return st.status(RootPaths.of(root))


def list_states(root: Root) -> list[dict]:
    from onix.machine import state_log

    return state_log.list_states(RootPaths.of(root))


def show_state(root: Root, state_id: int) -> dict:
    from onix.machine import state_log

    return state_log.show_state(RootPaths.of(root), state_id)


def diff_states(root: Root, a: int, b: int) -> dict:
    from onix.machine import state_log

    return state_log.diff_states(RootPaths.of(root), a, b)


def history(root: Root, *, limit: int | None = None) -> list[dict]:
    from onix.machine import state_log

    return state_log.history(RootPaths.of(root), limit=limit)


def list_installed(root: Root) -> list[dict]:
    from onix.repo import sync as syncing

    return syncing.installed(RootPaths.of(root))


def list_available(root: Root) -> list[dict]:
    from onix.repo import sync as syncing

    return syncing.available(RootPaths.of(root))


def list_updates(root: Root, *, allow_downgrade: bool = False) -> Preview:
    """What `onix sync --no-refresh` would do, from the cached indexes."""
    from onix.repo import sync as syncing

    paths = RootPaths.of(root)
    return syncing.preview(paths, syncing.plan_sync(paths, allow_downgrade=allow_downgrade))


def set_pinned(root: Root, state_id: int, pinned: bool, *, wait: bool = True) -> dict:
    from onix.machine import state_log

    with session(root, wait=wait, create=False) as s:
        return state_log.set_pinned(s, state_id, pinned)


def ownership(root: Root) -> list[dict]:
    from onix.machine import ownership as table

    return table.table(RootPaths.of(root))


# -- the boot plane ------------------------------------------------------------------------


def boot_sync(root: Root, *, esp_dir: Path | None = None, xbootldr: Path | None = None,
              wait: bool = True) -> dict:
    from onix.boot import plane as boot

    with session(root, wait=wait, create=False) as s:
        return boot.sync_requested(s, esp_dir=esp_dir, xbootldr=xbootldr)


def boot_status(root: Root, *, esp_dir: Path | None = None,
                xbootldr: Path | None = None) -> dict:
    from onix.boot import menu

    return menu.status(RootPaths.of(root), esp_dir=esp_dir, xbootldr=xbootldr)


def boot_mark_good(root: Root, *, esp_dir: Path | None = None, xbootldr: Path | None = None,
                   wait: bool = True) -> dict:
    from onix.boot import menu

    with session(root, wait=wait, create=False) as s:
        return menu.mark_good(s, esp_dir=esp_dir, xbootldr=xbootldr)


def boot_set_default(root: Root, state_id: int, *, once: bool = False,
                     esp_dir: Path | None = None, xbootldr: Path | None = None,
                     wait: bool = True) -> dict:
    from onix.boot import menu

    with session(root, wait=wait, create=False) as s:
        return menu.set_default(s, state_id, once=once, esp_dir=esp_dir, xbootldr=xbootldr)


def boot_kargs(root: Root) -> dict:
    """The live state's kernel arguments, each with the file it comes from (reads only)."""
    from onix.boot import kargs

    return kargs.listing(RootPaths.of(root))


def boot_kargs_change(root: Root, *, add: Sequence[str] = (), remove: Sequence[str] = (),
                      dry_run: bool = False, wait: bool = True) -> dict:
    """Add or remove kernel arguments (etc/kernel/cmdline.d/onix-kargs.conf), then sync
    the entries; with dry_run, each entry's options before and after, nothing written."""
    from onix.boot import kargs

    paths = RootPaths.of(root)
    kargs.check_args(paths, add=add, remove=remove)
    if dry_run:
        return kargs.preview(paths, add=add, remove=remove)
    with session(root, wait=wait, create=False) as s:
        return kargs.change(s, add=add, remove=remove)


# -- the Nix plane and services ------------------------------------------------------------


def nix_seed(root: Root, *, wait: bool = True) -> dict:
    from onix.machine import follow

    with session(root, wait=wait, create=False) as s:
        return follow.seed_now(s)


def nix_check(*, user: str = "nobody") -> dict:
    from onix.nix import check

    return check.check(user=user)


def services(root: Root, *, sync: bool = False, up: bool = False, wait: bool = True,
             warn: Callable[[str], None] | None = None) -> list[dict]:
    """The live state's services and what s6 says of each; with sync, first reconcile
    the scan directory with the live state (what a boot runs before s6-svscan); with
    up, first wait for s6-svscan and start what was laid down before it ran, in
    dependency order (stage 2: what the onix-stage2 service runs; no lock)."""
    from onix.services import reconcile as svc

    paths = RootPaths.of(root)
    if up:
        for f in svc.up(root=paths.root).failed:
            if warn:
                warn(f"service {f['name']} did not come up: {f['reason']}")
    if sync:
        with session(paths.root, wait=wait, create=False) as s:
            live = read_state_id(s.paths.usr)
            if live is not None:
                report = svc.reconcile(root=s.paths.root, usr=s.paths.usr, state_id=live)
                for f in report.failed:
                    if warn:
                        warn(f"service {f['name']} did not come up: {f['reason']}")
    return svc.list_services(root=paths.root)


# -- repositories and installing by name ---------------------------------------------------


def _repo_lock(paths: RootPaths, wait: bool) -> AbstractContextManager:
    """The root lock around repository changes, once the root has a .onix (a first
    `repo add` on a fresh root must leave nothing behind when it is refused)."""
    from onix.core.lock import root_lock

    return root_lock(paths, wait=wait) if paths.onix.is_dir() else nullcontext()


def repo_add(root: Root, *, name: str, uri: str, public_key: str, priority: int = 0,
             wait: bool = True) -> Any:
    from onix.repo import config

    paths = RootPaths.of(root)  # the root lock is taken after the index is fetched
    return config.add(paths, name=name, uri=uri, public_key=public_key, priority=priority,
                     lock=lambda: _repo_lock(paths, wait))


def repo_remove(root: Root, *, name: str, wait: bool = True) -> Any:
    from onix.repo import config

    paths = RootPaths.of(root)
    with _repo_lock(paths, wait):
        return config.remove(paths, name=name)


def repo_list(root: Root) -> list:
    from onix.repo import config

    return config.list_repos(RootPaths.of(root))


def repo_update(root: Root, *, names: list[str] | None = None, wait: bool = True) -> list:
    from onix.repo import config

    paths = RootPaths.of(root)  # the root lock is taken after the indexes are fetched
    return config.update(paths, names=names, lock=lambda: _repo_lock(paths, wait))


def search(root: Root, term: str) -> list:
    from onix.repo import config

    return config.search(RootPaths.of(root), term)


def info(root: Root, name: str) -> Any:
    from onix.repo import install as by_name

    return by_name.info(RootPaths.of(root), name)


# -- making stones, repositories, images ---------------------------------------------------


def build(recipe: Path, *, out: Path, cache: Path | None = None, jobs: int | None = None,
          keep: bool = False, progress: Callable[[str], None] | None = None) -> Any:
    from onix.build import builder

    return builder.build(recipe, out=out, cache=cache, jobs=jobs, keep=keep, progress=progress)


def generate_key(*, out: Path, comment: str) -> dict:
    from onix.repo import keys

    private, public = keys.generate(out=out, comment=comment)
    return {"private": str(private), "public": str(public),
            "public_key": public.read_text().strip()}


def write_index(*, directory: Path, key: Path, name: str) -> dict:
    from onix.repo import index

    return index.write_index(directory=directory, key=key, name=name)


def pack_stone(src: Path, out: Path, *, name: str, version: str, release: int = 1,
               arch: str = "x86_64", summary: str = "", license: str = "",
               provides: Iterable[str] = (), depends: Iterable[str] = (),
               level: int = 6) -> Any:
    """Pack a DESTDIR (usr/ only) into a stone; the same tree gives the same bytes."""
    from onix.machine.stone import StoneMeta, pack
    from onix.repo.versions import canonical_deps

    meta = StoneMeta(name=name, version=version, release=release, arch=arch, summary=summary,
                     license=license, provides=sorted(provides),
                     depends=canonical_deps(list(depends), where="--depends"))
    return pack(src, out, meta, level=level)


def inspect_stone(path: Path, *, check: bool = True, files: bool = False) -> dict:
    """A stone's metadata and payloads; with check, every content blob is hashed."""
    from onix.machine.stone import Stone

    with Stone(path) as s:
        if check:
            s.check_content()
        d = s.describe()
        d["content_verified"] = check
        if files:
            d["layout"] = [e.as_record() for e in s.layout]
        return d


# -- /etc: the declared defaults and the local edits beside them ---------------------------


def etc_status(root: Root) -> list[dict]:
    """Every file the live state declares below /etc (and every one onix still records):
    clean, edited (its keys), conflict, missing, pending or not declared any more."""
    from onix.machine import etc

    return etc.status(RootPaths.of(root))


def etc_diff(root: Root, path: str | None = None) -> list[dict]:
    """Local /etc files against the declared defaults: per key and a unified diff."""
    from onix.machine import etc

    return etc.diff(RootPaths.of(root), path)


def etc_reset(root: Root, path: str, *, wait: bool = True) -> dict:
    """Write the declared default over a local edit (and drop FILE.onix-new)."""
    from onix.machine import etc

    with session(root, wait=wait, create=False) as s:
        return etc.reset(s, path)
