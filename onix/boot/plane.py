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
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from onix.boot import bls, bootloader, esp
from onix.core import faults, fsutil, safepath
from onix.core.errors import DiskFullError, OnixError, StateError
from onix.core.paths import RootPaths, read_state_id
from onix.machine.session import Session

log = logging.getLogger("onix.boot")

STEPS = ("files", "bootloader", "entries", "loader", "cleanup", "done")
USER_KINDS = ("install", "remove", "activate", "rollback")  # they set the boot default
KERNEL_DIR = "lib/kernel"  # relative to usr/
CMDLINE_DIRS = ("usr/lib/kernel/cmdline.d", "etc/kernel/cmdline.d")  # relative to the root
META_DEFAULT = "boot_default"  # state id the user chose to boot by default
META_SYNCED = "boot_synced_tx"  # last transaction id the ESP reflects ("" = redo the sync)
META_FALLBACK = "boot_fallback"  # JSON: the automatic rollback status explains
META_RESET = "boot_reset"  # state id whose bad entry gets a fresh count (set-default)
META_OWNED = "boot_owned"  # JSON {"entries": [fstx], "files": [rel]}: what this root wrote
# Directories onix writes on the ESP and $BOOT; any of them being a symlink is refused.
BOOT_DIRS = ("loader", "loader/entries", "onix")
ESP_DIRS = ("loader", "EFI", "EFI/systemd", "EFI/BOOT")


class BootError(OnixError):
    """The boot files could not be brought in line with the states."""


@dataclass
class Planned:
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
class Plan:
    dirs: esp.BootDirs
    entries: list[Planned]
    default: Planned | None
    skipped: dict[int, str] = field(default_factory=dict)  # state id → why it has no entry
    fallback: dict | None = None
    owned: dict = field(default_factory=dict)  # META_OWNED before this sync


# -- reading a state's boot inputs (never through a symlink) ---------------------------


def state_usr(paths: RootPaths, state_id: int, live: int | None) -> Path:
    return paths.usr if state_id == live else paths.state_tree(state_id)


def version_key(v: str) -> list[tuple[int, object]]:
    """Order kernel versions the way humans do: numbers numerically."""
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", v) if p]


def _regular(base: Path, rel: str) -> Path | None:
    """base/rel as a real file reached without a symlink (safepath), or None if absent.

    A state's tree sits inside a root that may be a scratch directory on a host: a
    stone's `vmlinuz -> /etc/shadow` must not put the host's file on the ESP.
    """
    return base / rel if safepath.is_regular(base, rel) else None


def find_kernel(usr: Path) -> str | None:
    """The kernel a state boots: the highest version under usr/lib/kernel with a vmlinuz."""
    if not safepath.is_directory(usr, KERNEL_DIR):
        return None
    names = sorted(d.name for d in (usr / KERNEL_DIR).iterdir())
    kvers = [k for k in names if _regular(usr, f"{KERNEL_DIR}/{k}/vmlinuz") is not None]
    return max(kvers, key=version_key) if kvers else None


def _conf_files(base: Path, rel_dir: str) -> dict[str, Path]:
    d = base / rel_dir
    try:
        names = sorted(p.name for p in d.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return {}
    out = {}
    for name in names:
        if name.endswith(".conf"):
            p = _regular(base, f"{rel_dir}/{name}")
            if p is not None:
                out[name] = p
    return out


def _snippets(root: Path, usr: Path, kver: str | None = None) -> list[str]:
    """Kernel command-line tokens: the kernel's own usr/lib/kernel/<kver>/*.cmdline, then
    cmdline.d from /usr and /etc (a file in /etc overrides the one of its name in /usr)."""
    tokens: list[str] = []
    if kver is not None:
        with suppress(FileNotFoundError, NotADirectoryError):
            for name in sorted(p.name for p in (usr / KERNEL_DIR / kver).iterdir()):
                p = _regular(usr, f"{KERNEL_DIR}/{kver}/{name}") \
                    if name.endswith(".cmdline") else None
                if p is not None:
                    tokens.extend(_tokens(p))
    files = {**_conf_files(usr, "lib/kernel/cmdline.d"),
             **_conf_files(root, "etc/kernel/cmdline.d")}
    for name in sorted(files):
        tokens.extend(_tokens(files[name]))
    return tokens


def _tokens(path: Path) -> list[str]:
    out: list[str] = []
    for line in fsutil.read_nofollow(path).decode(errors="replace").splitlines():
        out.extend(line.split("#", 1)[0].split())
    return out


def _root_device() -> str | None:
    """root= for the running system: the UUID of what is mounted on /, if it has one."""
    try:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            left, _, right = line.partition(" - ")
            if left.split()[4] == "/":
                source = right.split()[1]
                break
        else:
            return None
    except (OSError, IndexError):
        return None
    by_uuid = Path("/dev/disk/by-uuid")
    with suppress(OSError):
        real = os.path.realpath(source)
        for link in by_uuid.iterdir():
            if os.path.realpath(link) == real:
                return f"UUID={link.name}"
    return source if source.startswith("/dev/") else None


def kernel_options(*, root: Path, usr: Path, fstx: str, kver: str | None = None) -> str:
    """root= first, then rw, the snippets in order (see _snippets), onix.fstx= last."""
    tokens = [t for t in _snippets(root, usr, kver) if not t.startswith("onix.fstx=")]
    roots = [t for t in tokens if t.startswith(("root=", "onix.root="))]
    rest = [t for t in tokens if t not in roots]
    if not roots:
        dev = _root_device() if root == Path("/") else None
        if dev is None:
            raise BootError("no root= for the boot entries", path=root / CMDLINE_DIRS[1],
                            hint="write a .conf there with e.g. root=UUID=… (or LABEL=…)")
        roots = [f"root={dev}"]
    if "ro" not in rest and "rw" not in rest:
        rest.insert(0, "rw")  # the initrd exchanges /usr on the root for an older entry
    return " ".join([*roots, *rest, f"onix.fstx={fstx}"])


def _pretty_name(usr: Path, fstx: str) -> str:
    name = "ONIX"
    with suppress(OSError, OnixError):
        text = safepath.read_regular(usr, "lib/os-release").decode(errors="replace")
        for line in text.splitlines():
            if line.startswith("PRETTY_NAME="):
                name = line.partition("=")[2].strip().strip('"') or name
    return name if fstx in name else f"{name} ({fstx})"


def _digest(path: Path) -> str:
    import blake3

    return blake3.blake3(fsutil.read_nofollow(path)).hexdigest()


def check_dirs(dirs: esp.BootDirs) -> None:
    """Refuse boot directories that are symlinks: cleanup would delete through them."""
    for base, rels in ((dirs.boot, BOOT_DIRS), (dirs.esp, ESP_DIRS)):
        for rel in ("", *rels):
            p = base / rel if rel else base
            if p.is_symlink():
                raise BootError("is a symlink; onix writes boot files only into real "
                                "directories", path=p, hint="replace it with a directory")


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
              version: str) -> Planned | str:
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
    kernel_rel = f"onix/vmlinuz-{kver}-{_digest(kernel)[:16]}"
    initrd_rel = f"onix/initrd-{kver}-{built.digest[:16]}.img"
    text = bls.render_entry(
        state_id=sid, fstx=fstx, title=_pretty_name(usr, fstx), version=version,
        linux=f"/{kernel_rel}", initrd=f"/{initrd_rel}",
        options=kernel_options(root=s.paths.root, usr=usr, fstx=fstx, kver=kver))
    return Planned(state_id=sid, fstx=fstx, name=name, text=text, kver=kver, kernel_src=kernel,
                   kernel_rel=kernel_rel, initrd_src=built.path, initrd_rel=initrd_rel)


def plan(s: Session, *, dirs: esp.BootDirs, cfg: esp.BootConfig,
         exclude: set[int] | frozenset[int] = frozenset()) -> Plan:
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
    out = Plan(dirs=dirs, entries=[], default=None, owned=r["owned"])
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


def _owned_files(p: Plan, boot: Path) -> set[str]:
    """$BOOT/onix files this root wrote (all of onix/ before onix kept a list)."""
    if "files" in p.owned:
        return set(p.owned["files"])
    with suppress(FileNotFoundError, NotADirectoryError):
        return {f"onix/{f.name}" for f in (boot / "onix").iterdir()}
    return set()


def _owned_entries(p: Plan, boot: Path) -> set[str]:
    if "entries" in p.owned:
        return set(p.owned["entries"])
    return set(bls.list_entries(boot))


def execute(s: Session, p: Plan, *, cfg: esp.BootConfig) -> dict:
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


def _cleanup(p: Plan, *, chosen: dict[str, str], owned_entries: set[str],
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


def dirs_for(paths: RootPaths, *, esp_dir: Path | None = None,
             xbootldr: Path | None = None) -> tuple[esp.BootDirs | None, esp.BootConfig]:
    cfg = esp.read_config(paths.root)
    dirs = esp.find(paths.root, esp=esp_dir, xbootldr=xbootldr, config=cfg)
    if dirs is not None:
        check_dirs(dirs)
    return dirs, cfg


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


def preflight(s: Session) -> None:
    """Before a command changes anything: boot.conf and the boot directories are sane."""
    dirs_for(s.paths)


def check_layout(s: Session, entries: list, *, read) -> None:
    """Before anything is written: would the planned state boot?

    Works from the planned layout; `read(entry) -> bytes` fetches a file's content (from
    the store, or from a stone not imported yet), so bad boot input is refused with the
    root byte-identical. check_state() repeats the full check on the built tree.
    """
    from onix.boot import initrd
    from onix.machine.layout import DIR, FILE, SYMLINK

    dirs, _ = dirs_for(s.paths)
    if dirs is None:
        return
    by_path = {e.path: e for e in entries}

    def symlink_on_the_way(rel: str) -> str | None:
        parts = rel.split("/")
        for i in range(1, len(parts) + 1):
            e = by_path.get("/".join(parts[:i]))
            if e is not None and e.kind == SYMLINK:
                return e.path
        return None

    def file_entry(rel: str):
        bad = symlink_on_the_way(rel)
        if bad is not None:
            raise BootError("is a symlink; boot inputs must be real files inside the state",
                            path=f"usr/{bad}", hint="ship the file itself in the stone")
        e = by_path.get(rel)
        return e if e is not None and e.kind == FILE else None

    def content(rel: str) -> bytes | None:
        e = file_entry(rel)
        if e is None:
            return None
        return read(e) if e.size else b""

    kvers = sorted({e.path.split("/")[2] for e in entries
                    if e.path.startswith(f"{KERNEL_DIR}/") and e.path.count("/") == 3
                    and e.path.endswith("/vmlinuz")}, key=version_key)
    kvers = [k for k in kvers if file_entry(f"{KERNEL_DIR}/{k}/vmlinuz") is not None]
    if not kvers:
        if s.live_state() is not None and find_kernel(s.paths.usr) is not None:
            raise BootError("the new state would have no kernel, so this machine could not "
                            "boot it", path=s.paths.usr / KERNEL_DIR,
                            hint="keep a kernel stone installed (or replace it in the same "
                            "command)")
        return
    kver = kvers[-1]
    def words(data: bytes | None) -> list[str]:
        return [w for line in (data or b"").decode(errors="replace").splitlines()
                for w in line.split("#", 1)[0].split()]

    # The same sources and precedence as _snippets(): the kernel's *.cmdline, then
    # cmdline.d by file name, a file in /etc replacing the one of its name in /usr.
    tokens: list[str] = []
    for rel in sorted(e.path for e in entries if e.kind != DIR and
                      e.path.startswith(f"{KERNEL_DIR}/{kver}/") and
                      e.path.endswith(".cmdline")):
        tokens += words(content(rel))
    by_name: dict[str, list[str]] = {
        e.path.rsplit("/", 1)[1]: words(content(e.path)) for e in entries
        if e.kind != DIR and e.path.startswith("lib/kernel/cmdline.d/")
        and e.path.endswith(".conf") and e.path.count("/") == 3}
    for name, path in _conf_files(s.paths.root, "etc/kernel/cmdline.d").items():
        by_name[name] = _tokens(path)
    for name in sorted(by_name):
        tokens += by_name[name]
    if not any(t.startswith(("root=", "onix.root=")) for t in tokens) and \
            not (s.paths.root == Path("/") and _root_device()):
        raise BootError("no root= for the boot entries", path=s.paths.root / CMDLINE_DIRS[1],
                        hint="write a .conf there with e.g. root=UUID=… (or LABEL=…)")
    for rel, what in ((initrd.BUSYBOX, "a static busybox"),
                      (initrd.EXCHANGE, "the static onix exchange helper")):
        data = content(rel)
        if data is None:
            raise BootError(f"the initrd needs {what}, and the new state has none",
                            path=f"usr/{rel}", hint=f"install a stone that ships usr/{rel}")
        initrd.check_static(Path(f"usr/{rel}"), rel=rel, what=what, data=data)


def check_state(s: Session, *, usr: Path, fstx: str) -> None:
    """Before a state becomes live: can it boot? Bad boot input is refused while the root
    is still as it was (prepare → verify → execute), not found after the exchange.

    Builds its initrd into the cache, so the sync after the exchange is quick.
    """
    from onix.boot import initrd

    dirs, _ = dirs_for(s.paths)
    if dirs is None:
        return
    kver = find_kernel(usr)
    if kver is None:
        live = s.live_state()
        if live is not None and find_kernel(s.paths.usr) is not None:
            raise BootError("the new state would have no kernel, so this machine could not "
                            "boot it", path=usr / KERNEL_DIR,
                            hint="keep a kernel stone installed (or replace it in the same "
                            "command)")
        return
    kernel_options(root=s.paths.root, usr=usr, fstx=fstx, kver=kver)
    built = initrd.build(usr=usr, kver=kver, cache_dir=s.paths.initrd_cache)
    if not built.cached:
        s.progress.note(f"built the initrd for kernel {kver} "
                        f"({len(built.data) >> 10} KiB, {built.compression})")


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


def booted_entry(s: Session, dirs: esp.BootDirs) -> bls.EntryName | None:
    """The entry this system booted: LoaderEntrySelected if it is the live state's (the
    initrd may have exchanged another state in since), else the live state's entry."""
    entries = bls.list_entries(dirs.boot)
    live = s.live_state()
    with s.db.read() as c:
        st = s.db.maybe_state(c, live)
    if st is None:
        return None
    selected = bootloader.read_var("LoaderEntrySelected") if s.paths.root == Path("/") else None
    n = bls.EntryName.parse(selected) if selected else None
    if n is not None and n.fstx == st["fstx"] and n.fstx in entries:
        return entries[n.fstx]
    return entries.get(st["fstx"])


def mark_good(s: Session, *, esp_dir: Path | None = None, xbootldr: Path | None = None) -> dict:
    """Bless the booted entry: drop its counter, and point loader.conf at the new name.

    Crash-safe order: the blessed copy first, then loader.conf, then the counted file.
    """
    dirs, cfg = dirs_for(s.paths, esp_dir=esp_dir, xbootldr=xbootldr)
    if dirs is None:
        raise BootError("no ESP found for this root", path=s.paths.root / "boot",
                        hint="mount the ESP, or pass --esp DIR")
    cur = booted_entry(s, dirs)
    if cur is None:
        raise BootError("the booted state has no boot entry", path=bls.entries_dir(dirs.boot),
                        hint="run onix boot sync")
    if cur.blessed:
        return {"entry": cur.file, "changed": False}
    blessed = bls.EntryName(fstx=cur.fstx)
    entries = bls.entries_dir(dirs.boot)
    with _guard("could not bless the entry"):
        fsutil.replace_file(entries / blessed.file, fsutil.read_nofollow(entries / cur.file))
        default = bls.EntryName.parse(bls.read_default(dirs.esp) or "")
        if default is not None and default.fstx == cur.fstx:
            _write_loader(dirs.esp, blessed.file, cfg=cfg)
        (entries / cur.file).unlink()
        fsutil.fsync_dir(entries)
    return {"entry": blessed.file, "was": cur.file, "changed": True}


def set_default(s: Session, state_id: int, *, once: bool = False, esp_dir: Path | None = None,
                xbootldr: Path | None = None) -> dict:
    """Boot a state next time (once: LoaderEntryOneShot) or from now on (boot_default)."""
    with s.db.read() as c:
        st = s.db.maybe_state(c, state_id)
    if st is None:
        raise StateError(f"no state {state_id}", path=s.paths.db, hint="see onix state list")
    dirs, _ = dirs_for(s.paths, esp_dir=esp_dir, xbootldr=xbootldr)
    if dirs is None:
        raise BootError("no ESP found for this root", path=s.paths.root / "boot",
                        hint="mount the ESP, or pass --esp DIR")
    usr = state_usr(s.paths, state_id, s.live_state())
    if not usr.is_dir() or find_kernel(usr) is None:
        raise BootError(f"state {state_id} has no kernel, so it cannot boot",
                        path=usr / KERNEL_DIR, hint="onix boot status lists bootable states")
    if once:
        if s.paths.root != Path("/"):
            raise BootError("a one-time default lives in the firmware's variables, which only "
                            "the running system has", path=s.paths.root,
                            hint="run it on the booted machine (without --root)")
        entry = bls.list_entries(dirs.boot).get(st["fstx"])
        if entry is None:
            raise BootError(f"state {state_id} has no boot entry (not retained)",
                            path=bls.entries_dir(dirs.boot),
                            hint="onix boot status lists the entries")
        with _guard("could not set the one-time default"):
            bootloader.write_var("LoaderEntryOneShot", entry.file)
        return {"state": state_id, "entry": entry.file, "once": True}
    with s.db.write() as c:
        s.db.set_meta(c, META_DEFAULT, str(state_id))
        s.db.set_meta(c, META_RESET, str(state_id))
        s.db.set_meta(c, META_SYNCED, "")  # an interrupted sync is redone by the next run
        s.db.delete_meta(c, META_FALLBACK)
    with _guard(f"state {state_id} is the boot default now, but the boot files were not "
                "updated"):
        report = sync(s, esp_dir=esp_dir, xbootldr=xbootldr) or {}
    return {"state": state_id, "entry": report.get("default"), "once": False}


def status(paths: RootPaths, *, esp_dir: Path | None = None,
           xbootldr: Path | None = None) -> dict:
    """Everything `onix boot status` shows; reads only."""
    from onix.machine.db import Database

    dirs, cfg = dirs_for(paths, esp_dir=esp_dir, xbootldr=xbootldr)
    out: dict = {"esp": str(dirs.esp) if dirs else None,
                 "xbootldr": str(dirs.xbootldr) if dirs and dirs.xbootldr else None,
                 "entries": [], "kernels": [], "default": None, "bootloader": None,
                 "config": {"keep_older": cfg.keep_older, "tries": cfg.tries}}
    if dirs is None:
        return out
    live = read_state_id(paths.usr)
    out["default"] = bls.read_default(dirs.esp)
    out["bootloader"] = bootloader.status(usr=paths.usr if live else None, esp=dirs.esp)
    states: dict[str, dict] = {}
    if paths.db.exists():
        db = Database(paths)
        try:
            with db.read() as c:
                states = {st["fstx"]: st for st in db.states(c)}
        finally:
            db.close()
    for fstx, name in sorted(bls.list_entries(dirs.boot).items(),
                             key=lambda kv: -kv[1].state_id):
        path = bls.entries_dir(dirs.boot) / name.file
        fields = bls.parse_entry(path.read_text(errors="replace"))
        st = states.get(fstx)
        missing = [f for f in (fields.get("linux"), *fields.get("initrd", "").split())
                   if f and not (dirs.boot / f.lstrip("/")).is_file()]
        out["entries"].append({
            "file": name.file, "fstx": fstx, "state": name.state_id,
            "state_exists": st is not None, "live": name.state_id == live,
            "default": out["default"] == name.file, "tries_left": name.tries_left,
            "tries_done": name.tries_done, "blessed": name.blessed, "bad": name.bad,
            "version": fields.get("version"), "linux": fields.get("linux"),
            "initrd": fields.get("initrd"), "options": fields.get("options"),
            "missing_files": missing})
    with suppress(FileNotFoundError):
        out["kernels"] = sorted(f.name for f in (dirs.boot / "onix").iterdir())
    out["efi"] = {k: bootloader.read_var(k) for k in
                  ("LoaderEntrySelected", "LoaderEntryDefault", "LoaderEntryOneShot")} \
        if paths.root == Path("/") else {}
    return out


def sync_requested(s: Session, *, esp_dir: Path | None = None,
                   xbootldr: Path | None = None) -> dict:
    """`onix boot sync`: like sync(), but a root without an ESP is an error here."""
    with _guard(""):
        report = sync(s, esp_dir=esp_dir, xbootldr=xbootldr)
        if report is None:
            raise BootError("no ESP found for this root", path=s.paths.root / "boot",
                            hint="create DIR/boot (image mode), mount the ESP, or pass --esp")
        return {**report, "recovered": s.recovered}
