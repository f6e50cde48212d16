"""The boot plane: keep $BOOT consistent with the states on disk.

`sync()` derives what the ESP should hold from the state log and converges to it.
It is idempotent, so every command that changes states ends with it, and the
first mutating command after a crash (or after a boot that made another state
live) runs it again on its own (see `sync_if_needed`).

What it writes (see bls.py for the file formats, esp.py for where):

    $BOOT/onix/vmlinuz-<kver>-<blake3:16>       kernels, stored once by content
    $BOOT/onix/initrd-<kver>-<blake3:16>.img    our initrds (initrd.py), by content
    $BOOT/loader/entries/onix-<fstx>[+N[-M]].conf   one per retained state
    $ESP/loader/loader.conf                     `default` = the default entry, exactly
    $ESP/EFI/systemd/systemd-bootx64.efi, $ESP/EFI/BOOT/BOOTX64.EFI   when they differ

Steps, in this order so that a crash anywhere leaves an ESP that boots a state
that exists (each is a fault point `boot:<step>` for the crash tests):

    files       new kernels and initrds: temp name, fsync, rename, fsync the dir
    bootloader  systemd-boot from the active state, where its bytes differ
    entries     new and changed entry files, the same way; counters are kept
    loader      loader.conf names the default entry (old entries all still exist)
    cleanup     only now: entries of states that are gone or no longer retained,
                kernels and initrds no entry uses, temp debris
    done        remember which transaction the ESP reflects

Which states get entries: the live one, the boot default, and up to `keep-older`
(boot.conf, default 4) others, most recently activated first. The entry
`version` is the id of the transaction that last activated the state, so
systemd-boot lists the default first and, below it, what was live before it.
When a new, never-blessed entry runs out of tries, systemd-boot sorts it last
and boots the next one — the state that was live before — whose initrd
exchanges that state back into /usr: automatic rollback.

The boot default: the state the user last chose (install, remove, activate,
rollback, or `onix boot set-default`), kept in the meta table as `boot_default`.
A state made live at boot by an older entry (reconcile) does not move it: a
one-time boot of an older entry is followed by the default again.

Beside this module: inputs.py reads a state's kernel and command line, checks.py
refuses what would not boot before anything is written, menu.py blesses the booted
entry, sets the default and reports `onix boot status`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from onix.boot import bls, bootloader, esp
from onix.boot.checks import check_dirs, dirs_for
from onix.boot.inputs import (
    KERNEL_DIR,
    content_digest,
    find_kernel,
    kernel_options,
    pretty_name,
    state_usr,
)
from onix.core import faults, fsutil
from onix.core.errors import BootError, DiskFullError, OnixError
from onix.machine.session import Session

log = logging.getLogger("onix.boot")

STEPS = ("files", "bootloader", "entries", "loader", "cleanup", "done")
USER_KINDS = ("install", "remove", "sync", "activate", "rollback")  # they set the boot default
META_DEFAULT = "boot_default"  # state id the user chose to boot by default
META_SYNCED = "boot_synced_tx"  # last transaction id the ESP reflects ("" = redo the sync)
META_FALLBACK = "boot_fallback"  # JSON: the automatic rollback status explains
META_RESET = "boot_reset"  # state id whose bad entry gets a fresh count (set-default)
META_OWNED = "boot_owned"  # JSON {"entries": [fstx], "files": [rel]}: what this root wrote


@dataclass
class PlannedEntry:
    state_id: int
    fstx: str
    name: bls.EntryName  # the name it has on disk now, or the one a new entry gets
    text: str
    kver: str
    kernel_src: Path
    kernel_rel: str
    initrd_src: Path
    initrd_rel: str
    reset: bool = False  # give it a fresh try counter (the user chose it again)


@dataclass
class BootPlan:
    dirs: esp.BootDirs
    entries: list[PlannedEntry]
    default: PlannedEntry | None
    skipped: dict[int, str] = field(default_factory=dict)  # state id → why it has no entry
    fallback: dict | None = None
    owned: dict = field(default_factory=dict)  # META_OWNED before this sync


# -- planning --------------------------------------------------------------------------


def _meta_int(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def _retained(s: Session, cfg: esp.BootConfig, exclude: set[int]) -> dict:
    live = s.live_state()
    with s.db.read() as c:
        states = {st["id"]: st for st in s.db.states(c) if st["id"] not in exclude}
        order = s.db.activations(c, USER_KINDS)
        want = _meta_int(s.db.get_meta(c, META_DEFAULT))
        reset = _meta_int(s.db.get_meta(c, META_RESET))
        owned = s.db.get_meta(c, META_OWNED)
    if want not in states:
        want = live
    keep: list[int] = [i for i in (live, want) if i is not None]
    others = sorted((i for i in states if i not in keep),
                    key=lambda i: (order.get(i, 0), i), reverse=True)
    keep += others[:cfg.keep_older]
    return {"states": [states[i] for i in dict.fromkeys(keep)], "want": want, "order": order,
            "reset": reset, "owned": json.loads(owned) if owned else {}}


def _plan_one(s: Session, *, st: dict, usr: Path, name: bls.EntryName,
              version: str) -> PlannedEntry | str:
    from onix.boot import initrd

    sid, fstx = st["id"], st["fstx"]
    if not usr.is_dir() or usr.is_symlink():
        return "its tree is missing (onix verify)"
    kver = find_kernel(usr)
    if kver is None:
        return f"it has no kernel (usr/{KERNEL_DIR}/<kver>/vmlinuz)"
    built = initrd.build(usr=usr, kver=kver, cache_dir=s.paths.initrd_cache)
    if not built.cached:
        s.progress.note(f"built the initrd for state {sid} (kernel {kver}, "
                        f"{len(built.data) >> 10} KiB, {built.compression})")
    kernel = usr / KERNEL_DIR / kver / "vmlinuz"
    kernel_rel = f"onix/vmlinuz-{kver}-{content_digest(kernel)[:16]}"
    initrd_rel = f"onix/initrd-{kver}-{built.digest[:16]}.img"
    text = bls.render_entry(
        state_id=sid, fstx=fstx, title=pretty_name(usr, fstx), version=version,
        linux=f"/{kernel_rel}", initrd=f"/{initrd_rel}",
        options=kernel_options(root=s.paths.root, usr=usr, fstx=fstx, kver=kver))
    return PlannedEntry(state_id=sid, fstx=fstx, name=name, text=text, kver=kver, kernel_src=kernel,
                   kernel_rel=kernel_rel, initrd_src=built.path, initrd_rel=initrd_rel)


def plan(s: Session, *, dirs: esp.BootDirs, cfg: esp.BootConfig,
         exclude: set[int] | frozenset[int] = frozenset()) -> BootPlan:
    """What $BOOT should hold. Builds (or takes from the cache) each state's initrd.

    The live state and the boot default must get entries (their failures are errors);
    any other retained state that cannot is skipped and says why.
    """
    r = _retained(s, cfg, set(exclude))
    live, want, order = s.live_state(), r["want"], r["order"]
    existing = bls.list_entries(dirs.boot)

    def fresh(fstx: str) -> bls.EntryName:
        return bls.EntryName(fstx=fstx, tries_left=cfg.tries or None)

    # The default sorts first: systemd-boot falls back to the top entry whenever the
    # default line does not match (a counted entry renamed at boot; newer systemd-boot
    # versions drop the counter from ids), so the top entry must be the default.
    top = max([order.get(st["id"], st["id"]) for st in r["states"]] or [0])
    out = BootPlan(dirs=dirs, entries=[], default=None, owned=r["owned"])
    for st in r["states"]:
        sid = st["id"]
        version = order.get(sid, sid)
        if sid == want and version < top:
            version = top + 1
        try:
            planned = _plan_one(s, st=st, usr=state_usr(s.paths, sid, live),
                                name=existing.get(st["fstx"]) or fresh(st["fstx"]),
                                version=str(version))
        except (OnixError, OSError) as e:
            if sid in (live, want):
                raise
            planned = e.line() if isinstance(e, OnixError) else f"{e.filename}: {e.strerror}"
        if isinstance(planned, str):
            out.skipped[sid] = planned
        else:
            out.entries.append(planned)
    by_id = {p.state_id: p for p in out.entries}
    default = by_id.get(want) if want is not None else None
    if default is not None and default.name.bad:
        if want == live or want == r["reset"]:
            # The user chose this state again (activate, rollback, set-default, the menu):
            # a fresh count, rather than a default systemd-boot would skip.
            default.name, default.reset = fresh(default.fstx), True
        elif live in by_id:
            # systemd-boot gave up on the default and booted an older entry, whose initrd
            # made its state live: the automatic rollback. That state is the default now.
            out.fallback = {"failed": want, "failed_fstx": default.fstx, "booted": live,
                            "entry": default.name.file}
            default = by_id[live]
    out.default = default or (by_id.get(live) if live is not None else None)
    return out


# -- writing ---------------------------------------------------------------------------


def _same_size(src: Path, dest: Path) -> bool:
    try:
        return dest.lstat().st_size == src.lstat().st_size and not dest.is_symlink()
    except FileNotFoundError:
        return False


def _referenced(boot: Path) -> set[str]:
    """$BOOT-relative files that entry files on disk (ours or not) point at."""
    refs: set[str] = set()
    entries = bls.entries_dir(boot)
    with suppress(FileNotFoundError, NotADirectoryError):
        for f in entries.iterdir():
            if f.name.endswith(".conf") and f.is_file() and not f.is_symlink():
                fields = bls.parse_entry(f.read_text(errors="replace"))
                for v in (fields.get("linux", ""), *fields.get("initrd", "").split()):
                    if v:
                        refs.add(v.lstrip("/"))
    return refs


def _owned_files(p: BootPlan, boot: Path) -> set[str]:
    """$BOOT/onix files this root wrote (all of onix/ before onix kept a list)."""
    if "files" in p.owned:
        return set(p.owned["files"])
    with suppress(FileNotFoundError, NotADirectoryError):
        return {f"onix/{f.name}" for f in (boot / "onix").iterdir()}
    return set()


def _owned_entries(p: BootPlan, boot: Path) -> set[str]:
    if "entries" in p.owned:
        return set(p.owned["entries"])
    return set(bls.list_entries(boot))


def execute(s: Session, p: BootPlan, *, cfg: esp.BootConfig) -> dict:
    """Converge $BOOT to the plan, step by step (see the module docstring)."""
    boot, esp_dir = p.dirs.boot, p.dirs.esp
    check_dirs(p.dirs)
    report: dict = {"written": [], "removed": [], "bootloader": []}
    planned_files = {e.kernel_rel for e in p.entries} | {e.initrd_rel for e in p.entries}
    owned_files = _owned_files(p, boot)
    owned_entries = _owned_entries(p, boot)
    # Record what this sync is about to write before writing it, so a crash cannot leave
    # a file of ours that a later cleanup would not know to remove.
    with s.db.write() as c:
        s.db.set_meta(c, META_OWNED, json.dumps({
            "entries": sorted(owned_entries | {e.fstx for e in p.entries}),
            "files": sorted(owned_files | planned_files)}))
    faults.point("boot", "files")
    # Room first (an earlier sync that failed for space may have left the ESP full):
    # entries of ours that no plan keeps, except the one loader.conf names, and then the
    # kernels and initrds that no entry on disk and no planned entry uses.
    current = bls.read_default(esp_dir)
    planned_fstx = {e.fstx for e in p.entries}
    for fstx, n in bls.list_entries(boot).items():
        if fstx in owned_entries and fstx not in planned_fstx and n.file != current:
            with suppress(FileNotFoundError):
                (bls.entries_dir(boot) / n.file).unlink()
                report["removed"].append(f"loader/entries/{n.file}")
    unused = owned_files - planned_files - _referenced(boot)
    for rel in sorted(unused):
        with suppress(FileNotFoundError):
            (boot / rel).unlink()
            report["removed"].append(rel)
    for e in p.entries:
        for src, rel in ((e.kernel_src, e.kernel_rel), (e.initrd_src, e.initrd_rel)):
            if not _same_size(src, boot / rel):
                fsutil.replace_file(boot / rel, fsutil.read_nofollow(src))
                report["written"].append(rel)
    faults.point("boot", "bootloader")
    if s.live_state() is not None:
        report["bootloader"] = bootloader.install(usr=s.paths.usr, esp=esp_dir)
    faults.point("boot", "entries")
    entries = bls.entries_dir(boot)
    on_disk = bls.list_entries(boot)  # again: systemd-bless-boot may have renamed one
    chosen: dict[str, str] = {}
    for e in p.entries:
        cur = on_disk.get(e.fstx)
        name = e.name.file if (e.reset or cur is None) else cur.file
        chosen[e.fstx] = name
        dest = entries / name
        try:
            same = dest.read_text() == e.text
        except (FileNotFoundError, UnicodeDecodeError):
            same = False
        if not same:
            fsutil.replace_file(dest, e.text.encode())
            report["written"].append(f"loader/entries/{name}")
    faults.point("boot", "loader")
    if p.default is not None and _write_loader(esp_dir, chosen[p.default.fstx], cfg=cfg):
        report["written"].append("loader/loader.conf")
    faults.point("boot", "cleanup")
    report["removed"] += _cleanup(p, chosen=chosen, owned_entries=owned_entries,
                                  owned_files=owned_files | planned_files, cfg=cfg)
    faults.point("boot", "done")
    keep_cache = {e.initrd_src.name for e in p.entries}
    with suppress(FileNotFoundError):
        for f in s.paths.initrd_cache.iterdir():
            if f.name.endswith(".img") and f.name not in keep_cache:
                f.unlink()  # initrds of states that have no entry any more
    with s.db.write() as c:
        s.db.set_meta(c, META_SYNCED, str(s.db.last_done_tx(c)))
        s.db.set_meta(c, META_OWNED, json.dumps({
            "entries": sorted(chosen), "files": sorted(planned_files)}))
        s.db.delete_meta(c, META_RESET)
        if p.fallback is not None:
            s.db.set_meta(c, META_DEFAULT, str(p.fallback["booted"]))
            s.db.set_meta(c, META_FALLBACK, json.dumps(p.fallback))
    return report


def _write_loader(esp_dir: Path, default: str, *, cfg: esp.BootConfig) -> bool:
    conf = bls.loader_conf(esp_dir)
    try:
        old: str | None = fsutil.read_nofollow(conf).decode(errors="replace")
    except FileNotFoundError:
        old = None
    new = bls.update_loader_conf(old, default=default, timeout=cfg.timeout)
    if new == old:
        return False
    fsutil.replace_file(conf, new.encode())
    return True


def _cleanup(p: BootPlan, *, chosen: dict[str, str], owned_entries: set[str],
             owned_files: set[str], cfg: esp.BootConfig) -> list[str]:
    """Delete what no planned entry needs — only things this root wrote (a shared ESP
    keeps another root's entries) and never the file loader.conf names."""
    boot = p.dirs.boot
    entries = bls.entries_dir(boot)
    removed: list[str] = []
    try:
        names = sorted(f.name for f in entries.iterdir())
    except FileNotFoundError:
        names = []
    # One file per planned state: the one written now, unless systemd-bless-boot has
    # blessed it meanwhile (a blessed file outranks a counted one).
    keep: dict[str, str] = dict(chosen)
    for name in names:
        n = bls.EntryName.parse(name)
        if n is not None and n.fstx in chosen and n.blessed and name != chosen[n.fstx]:
            keep[n.fstx] = name
    default = bls.EntryName.parse(bls.read_default(p.dirs.esp) or "")
    if default is not None and default.fstx in keep and keep[default.fstx] != default.file:
        _write_loader(p.dirs.esp, keep[default.fstx], cfg=cfg)  # before its old name goes
    current = bls.read_default(p.dirs.esp)
    for name in names:
        n = bls.EntryName.parse(name)
        debris = name.endswith(".onix-tmp")
        stale = n is not None and n.fstx in owned_entries and keep.get(n.fstx) != name
        if (stale or debris) and name != current:
            (entries / name).unlink()
            removed.append(f"loader/entries/{name}")
    needed = {e.kernel_rel for e in p.entries} | {e.initrd_rel for e in p.entries}
    with suppress(FileNotFoundError):
        for f in sorted((boot / "onix").iterdir()):
            rel = f"onix/{f.name}"
            if (rel in owned_files and rel not in needed) or f.name.endswith(".onix-tmp"):
                if f.is_dir() and not f.is_symlink():
                    fsutil.remove_tree(f)
                else:
                    f.unlink()
                removed.append(rel)
    for d in (entries, boot / "onix"):
        with suppress(FileNotFoundError):
            fsutil.fsync_dir(d)
    for d in (p.dirs.esp / "loader", p.dirs.esp / "EFI/systemd", p.dirs.esp / "EFI/BOOT"):
        with suppress(FileNotFoundError):
            for f in d.iterdir():
                if f.name.endswith(".onix-tmp"):
                    f.unlink()
    return removed


# -- the library API the CLI and the transactions call ------------------------------------


@contextmanager
def _guard(what: str) -> Iterator[None]:
    """Turn an OSError on the ESP into one BootError (or DiskFullError) naming the file;
    with `what`, an OnixError from inside is prefixed with it."""
    try:
        yield
    except OnixError as e:
        if what:
            raise BootError(f"{what}: {e.line()}",
                            hint="fix that, then run onix boot sync") from e
        raise
    except OSError as e:
        full = fsutil.disk_full(e)
        cls = DiskFullError if full else BootError
        msg = f"{what}: {e.strerror}" if what else e.strerror or str(e)
        raise cls(msg, path=e.filename, hint="make room on the ESP, then run onix boot "
                  "sync" if full else "fix that, then run onix boot sync") from e


def sync(s: Session, *, esp_dir: Path | None = None, xbootldr: Path | None = None,
                 exclude: set[int] | frozenset[int] = frozenset()) -> dict | None:
    """Bring $BOOT in line with the states; None when this root has no ESP."""
    dirs, cfg = dirs_for(s.paths, esp_dir=esp_dir, xbootldr=xbootldr)
    if dirs is None or s.live_state() is None:
        return None
    p = plan(s, dirs=dirs, cfg=cfg, exclude=exclude)
    report = execute(s, p, cfg=cfg)
    report.update(esp=str(dirs.esp), boot=str(dirs.boot),
                  default=bls.read_default(dirs.esp) if p.default else None,
                  entries=sorted(bls.list_entries(dirs.boot)[e.fstx].file for e in p.entries),
                  skipped={str(k): v for k, v in p.skipped.items()},
                  fallback=p.fallback)
    return report


def after_change(s: Session) -> dict | None:
    """End of a command that changed states: sync, or fail with what to do."""
    with _guard(f"state {s.live_state()} is live, but the boot files were not updated"):
        return sync(s)


def sync_if_needed(s: Session) -> list[str]:
    """Start of a mutating command: redo a sync that a crash or a boot left undone."""
    dirs, _ = dirs_for(s.paths)
    if dirs is None or s.live_state() is None:
        return []
    with s.db.read() as c:
        if not s.db.behind(c, META_SYNCED):
            return []
    try:
        with _guard(""):
            sync(s)
    except OnixError as e:
        return [f"boot files are out of date and could not be updated: {e.line()}"]
    return ["brought the boot files up to date with the state log"]


def prune_entries(s: Session, doomed: list[int]) -> None:
    """Prune, before it forgets states and deletes their trees: their entries go first.

    A full sync without them (it also moves loader.conf off them); if that cannot be
    done (a full ESP, say), at least delete their entry files — but never the one
    loader.conf names, and never the last one: an entry whose tree is gone still boots
    (its initrd finds no archived tree and boots /usr), no entry at all does not.
    """
    dirs, _ = dirs_for(s.paths)
    if dirs is None or not doomed:
        return
    try:
        with _guard(""):
            sync(s, exclude=set(doomed))
        return
    except OnixError as e:
        s.progress.note(f"boot: {e.line()}; removing the pruned states' entries only")
    gone = set(doomed)
    entries = bls.entries_dir(dirs.boot)
    default = bls.read_default(dirs.esp)
    ours = bls.list_entries(dirs.boot)
    with suppress(OSError):
        for f in sorted(entries.iterdir()):
            n = bls.EntryName.parse(f.name)
            if n is None or n.state_id not in gone or f.name == default:
                continue
            if len([x for x in ours.values() if x.state_id not in gone]) == 0 and \
                    n.fstx == max(ours.values(), key=lambda x: x.state_id).fstx:
                continue  # the last entry stays
            f.unlink()
        fsutil.fsync_dir(entries)


def sync_requested(s: Session, *, esp_dir: Path | None = None,
                   xbootldr: Path | None = None) -> dict:
    """`onix boot sync`: like sync(), but a root without an ESP is an error here."""
    with _guard(""):
        report = sync(s, esp_dir=esp_dir, xbootldr=xbootldr)
        if report is None:
            raise BootError("no ESP found for this root", path=s.paths.root / "boot",
                            hint="create DIR/boot (image mode), mount the ESP, or pass --esp")
        return {**report, "recovered": s.recovered}
