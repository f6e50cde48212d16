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
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from onix import bls, bootloader, esp, faults, fsutil
from onix.errors import DiskFullError, OnixError, StateError
from onix.paths import RootPaths, read_state_id

log = logging.getLogger("onix.boot")

STEPS = ("files", "bootloader", "entries", "loader", "cleanup", "done")
USER_KINDS = ("install", "remove", "activate", "rollback")  # they set the boot default
KERNEL_DIR = "lib/kernel"  # relative to usr/
CMDLINE_DIRS = ("usr/lib/kernel/cmdline.d", "etc/kernel/cmdline.d")  # relative to the root
META_DEFAULT = "boot_default"
META_SYNCED = "boot_synced_tx"
META_FALLBACK = "boot_fallback"


class BootError(OnixError):
    """The boot files could not be brought in line with the states."""


@dataclass
class Planned:
    state_id: int
    fstx: str
    name: bls.EntryName
    text: str
    kver: str
    kernel_src: Path
    kernel_rel: str
    initrd_src: Path
    initrd_rel: str


@dataclass
class Plan:
    dirs: esp.BootDirs
    entries: list[Planned]
    default: Planned | None
    skipped: dict[int, str] = field(default_factory=dict)  # state id → why it has no entry
    fallback: dict | None = None


# -- reading the state log ---------------------------------------------------------


def state_usr(paths: RootPaths, state_id: int, live: int | None) -> Path:
    return paths.usr if state_id == live else paths.state_tree(state_id)


def version_key(v: str) -> list[tuple[int, object]]:
    """Order kernel versions the way humans do: numbers numerically."""
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", v) if p]


def find_kernel(usr: Path) -> str | None:
    """The kernel a state boots: the highest version under usr/lib/kernel with a vmlinuz."""
    try:
        kvers = [d.name for d in (usr / KERNEL_DIR).iterdir() if (d / "vmlinuz").is_file()]
    except (FileNotFoundError, NotADirectoryError):
        return None
    return max(kvers, key=version_key) if kvers else None


def _snippets(root: Path, usr: Path, kver: str | None = None) -> list[str]:
    """Kernel command-line tokens: the kernel's own usr/lib/kernel/<kver>/*.cmdline, then
    cmdline.d from /usr and /etc (a file in /etc overrides the one of its name in /usr)."""
    tokens: list[str] = []
    if kver is not None:
        with suppress(FileNotFoundError, NotADirectoryError):
            for p in sorted((usr / KERNEL_DIR / kver).glob("*.cmdline")):
                tokens.extend(_tokens(p))
    files: dict[str, Path] = {}
    for d in (usr / "lib/kernel/cmdline.d", root / "etc/kernel/cmdline.d"):
        with suppress(FileNotFoundError, NotADirectoryError):
            for p in d.iterdir():
                if p.name.endswith(".conf"):
                    files[p.name] = p
    for name in sorted(files):
        tokens.extend(_tokens(files[name]))
    return tokens


def _tokens(path: Path) -> list[str]:
    out: list[str] = []
    for line in path.read_text(errors="replace").splitlines():
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
    with suppress(OSError):
        for line in (usr / "lib/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                name = line.partition("=")[2].strip().strip('"') or name
    return name if fstx in name else f"{name} ({fstx})"


def _digest(path: Path) -> str:
    import blake3

    h = blake3.blake3()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# -- planning --------------------------------------------------------------------------


def _retained(s, cfg: esp.BootConfig) -> tuple[list[dict], int | None, dict[int, int], dict]:
    live = s.live_state()
    with s.db.read() as c:
        states = {st["id"]: st for st in s.db.states(c)}
        order = s.db.activations(c, USER_KINDS)
        default = s.db.get_meta(c, META_DEFAULT)
        fallback = s.db.get_meta(c, META_FALLBACK)
    want = int(default) if default and default.isdigit() and int(default) in states else live
    keep: list[int] = [i for i in (live, want) if i is not None]
    others = sorted((i for i in states if i not in keep),
                    key=lambda i: (order.get(i, 0), i), reverse=True)
    keep += others[:cfg.keep_older]
    return ([states[i] for i in dict.fromkeys(keep)], want, order,
            json.loads(fallback) if fallback else {})


def plan(s, *, dirs: esp.BootDirs, cfg: esp.BootConfig) -> Plan:
    """What $BOOT should hold. Builds (or takes from the cache) each state's initrd."""
    from onix import initrd

    retained, want, order, _ = _retained(s, cfg)
    live = s.live_state()
    existing = bls.list_entries(dirs.boot)
    out = Plan(dirs=dirs, entries=[], default=None)
    for st in retained:
        sid, fstx = st["id"], st["fstx"]
        usr = state_usr(s.paths, sid, live)
        if not usr.is_dir():
            out.skipped[sid] = "its tree is missing (onix verify)"
            continue
        kver = find_kernel(usr)
        if kver is None:
            out.skipped[sid] = f"it has no kernel (usr/{KERNEL_DIR}/<kver>/vmlinuz)"
            continue
        built = initrd.build(usr=usr, kver=kver, cache_dir=s.paths.cache / "initrd")
        if not built.cached:
            s.progress.note(f"built the initrd for state {sid} (kernel {kver}, "
                            f"{len(built.data) >> 10} KiB, {built.compression})")
        kernel = usr / KERNEL_DIR / kver / "vmlinuz"
        name = existing.get(fstx) or bls.EntryName(
            fstx=fstx, tries_left=cfg.tries if cfg.tries > 0 else None)
        kernel_rel = f"onix/vmlinuz-{kver}-{_digest(kernel)[:16]}"
        initrd_rel = f"onix/initrd-{kver}-{built.digest[:16]}.img"
        text = bls.render_entry(
            state_id=sid, fstx=fstx, title=_pretty_name(usr, fstx),
            version=str(order.get(sid, sid)), linux=f"/{kernel_rel}", initrd=f"/{initrd_rel}",
            options=kernel_options(root=s.paths.root, usr=usr, fstx=fstx, kver=kver))
        out.entries.append(Planned(state_id=sid, fstx=fstx, name=name, text=text, kver=kver,
                                   kernel_src=kernel, kernel_rel=kernel_rel,
                                   initrd_src=built.path, initrd_rel=initrd_rel))
    by_id = {p.state_id: p for p in out.entries}
    default = by_id.get(want) if want is not None else None
    if default is not None and default.name.bad and want != live and live in by_id:
        # systemd-boot gave up on the default and booted an older entry, whose initrd made
        # its state live: that is the automatic rollback. Make it the default, say why.
        out.fallback = {"failed": want, "failed_fstx": default.fstx, "booted": live,
                        "entry": default.name.file}
        default = by_id[live]
    elif default is not None and default.name.bad and want == live:
        # The user chose a state whose entry had run out of tries (activate, rollback, the
        # menu): give it a fresh count rather than a default systemd-boot would skip.
        default.name = bls.EntryName(fstx=default.fstx, tries_left=max(cfg.tries, 1))
    out.default = default or (by_id.get(live) if live is not None else None)
    return out


# -- writing ---------------------------------------------------------------------------


def _write(path: Path, data: bytes) -> None:
    """Whole-file replace that FAT survives: temp name, fsync, rename, fsync the directory.

    No chmod: vfat has no modes to set (and refuses some).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.onix-tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException as e:
        os.close(fd)
        with suppress(OSError):
            tmp.unlink()  # a full ESP must not stay full of our half-written file
        if isinstance(e, OSError) and e.filename is None:
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    os.close(fd)
    os.rename(tmp, path)
    fsutil.fsync_dir(path.parent)


def _copy(src: Path, dest: Path) -> None:
    _write(dest, src.read_bytes())


def _same_size(src: Path, dest: Path) -> bool:
    try:
        return dest.stat().st_size == src.stat().st_size
    except FileNotFoundError:
        return False


def execute(s, p: Plan, *, cfg: esp.BootConfig) -> dict:
    """Converge $BOOT to the plan, step by step (see the module docstring)."""
    boot, esp_dir = p.dirs.boot, p.dirs.esp
    report: dict = {"written": [], "removed": [], "bootloader": []}
    faults.point("boot", "files")
    for e in p.entries:
        for src, rel in ((e.kernel_src, e.kernel_rel), (e.initrd_src, e.initrd_rel)):
            if not _same_size(src, boot / rel):
                _copy(src, boot / rel)
                report["written"].append(rel)
    faults.point("boot", "bootloader")
    live = s.live_state()
    if live is not None:
        report["bootloader"] = bootloader.install(usr=s.paths.usr, esp=esp_dir)
    faults.point("boot", "entries")
    entries = bls.entries_dir(boot)
    on_disk = bls.list_entries(boot)
    for e in p.entries:
        dest = entries / e.name.file
        cur = on_disk.get(e.fstx)
        if cur is not None and cur.file != e.name.file and (entries / cur.file).exists():
            os.rename(entries / cur.file, dest)  # counter reset: same content, new name
            fsutil.fsync_dir(entries)
        try:
            same = dest.read_text() == e.text
        except (FileNotFoundError, UnicodeDecodeError):
            same = False
        if not same:
            _write(dest, e.text.encode())
            report["written"].append(f"loader/entries/{e.name.file}")
    faults.point("boot", "loader")
    if p.default is not None:
        conf = bls.loader_conf(esp_dir)
        try:
            old: str | None = conf.read_text(errors="replace")
        except FileNotFoundError:
            old = None
        new = bls.update_loader_conf(old, default=p.default.name.file, timeout=cfg.timeout)
        if new != old:
            _write(conf, new.encode())
            report["written"].append("loader/loader.conf")
    faults.point("boot", "cleanup")
    report["removed"] = _cleanup(p)
    faults.point("boot", "done")
    with s.db.write() as c:
        s.db.set_meta(c, META_SYNCED, str(s.db.last_done_tx(c)))
        if p.fallback is not None:
            s.db.set_meta(c, META_DEFAULT, str(p.fallback["booted"]))
            s.db.set_meta(c, META_FALLBACK, json.dumps(p.fallback))
    return report


def _cleanup(p: Plan) -> list[str]:
    boot = p.dirs.boot
    keep_entries = {e.name.file for e in p.entries}
    keep_files = {e.kernel_rel for e in p.entries} | {e.initrd_rel for e in p.entries}
    removed: list[str] = []
    entries = bls.entries_dir(boot)
    with suppress(FileNotFoundError):
        for f in sorted(entries.iterdir()):
            ours = bls.EntryName.parse(f.name) is not None
            debris = f.name.startswith(".onix-") or f.name.endswith(".onix-tmp")
            if (ours and f.name not in keep_entries) or debris:
                f.unlink()
                removed.append(f"loader/entries/{f.name}")
    with suppress(FileNotFoundError):
        for f in sorted((boot / "onix").iterdir()):
            if f"onix/{f.name}" not in keep_files:
                if f.is_dir():
                    fsutil.remove_tree(f)
                else:
                    f.unlink()
                removed.append(f"onix/{f.name}")
    for d in (entries, boot / "onix"):
        with suppress(FileNotFoundError):
            fsutil.fsync_dir(d)
    with suppress(FileNotFoundError):
        for f in (p.dirs.esp / "loader").iterdir():
            if f.name.endswith(".onix-tmp"):
                f.unlink()
    return removed


# -- the library API the CLI and the transactions call ------------------------------------


def dirs_for(paths: RootPaths, *, esp_dir: Path | None = None,
             xbootldr: Path | None = None) -> tuple[esp.BootDirs | None, esp.BootConfig]:
    cfg = esp.read_config(paths.root)
    return esp.find(paths.root, esp=esp_dir, xbootldr=xbootldr, config=cfg), cfg


def sync_session(s, *, esp_dir: Path | None = None, xbootldr: Path | None = None) -> dict | None:
    """Bring $BOOT in line with the states; None when this root has no ESP."""
    dirs, cfg = dirs_for(s.paths, esp_dir=esp_dir, xbootldr=xbootldr)
    if dirs is None or s.live_state() is None:
        return None
    p = plan(s, dirs=dirs, cfg=cfg)
    report = execute(s, p, cfg=cfg)
    report.update(esp=str(dirs.esp), boot=str(dirs.boot),
                  default=p.default.name.file if p.default else None,
                  entries=[e.name.file for e in p.entries],
                  skipped={str(k): v for k, v in p.skipped.items()},
                  fallback=p.fallback)
    return report


def after_change(s) -> dict | None:
    """End of a command that changed states: sync, or fail with what to do."""
    try:
        return sync_session(s)
    except OnixError as e:
        raise BootError(f"state {s.live_state()} is live, but the boot files were not "
                        f"updated: {e.line()}", hint="fix that, then run onix boot sync") from e
    except OSError as e:
        cls = DiskFullError if fsutil.disk_full(e) else BootError
        raise cls(f"state {s.live_state()} is live, but the boot files were not "
                  f"updated: {e.strerror}", path=e.filename,
                  hint="make room on the ESP, then run onix boot sync" if cls is DiskFullError
                  else "fix that, then run onix boot sync") from e


def preflight(s) -> None:
    """Before a command changes anything: a boot setup that cannot work is bad input.

    Catches boot.conf mistakes and a missing root= while the root is still as it was,
    rather than after a new state is live without boot files.
    """
    dirs, _ = dirs_for(s.paths)
    if dirs is None:
        return
    live = s.live_state()
    usr = s.paths.usr if live is not None else s.paths.root / "nonexistent"
    kernel_options(root=s.paths.root, usr=usr, fstx="0-0")


def sync_if_needed(s) -> list[str]:
    """Start of a mutating command: redo a sync that a crash or a boot left undone."""
    paths = s.paths
    dirs, _ = dirs_for(paths)
    if dirs is None or s.live_state() is None:
        return []
    with s.db.read() as c:
        synced = s.db.get_meta(c, META_SYNCED)
        last = s.db.last_done_tx(c)
    if synced == str(last):
        return []
    try:
        sync_session(s)
    except (OnixError, OSError) as e:
        msg = e.line() if isinstance(e, OnixError) else str(e)
        return [f"boot files are out of date and could not be updated: {msg}"]
    return ["brought the boot files up to date with the state log"]


def drop_missing(s) -> None:
    """Prune, after forgetting states and before deleting their trees: their entries go first.

    Best effort: the full sync at the end of the command does the rest; an entry that
    survives a failure here still boots (its initrd finds no archived tree and boots /usr).
    """
    dirs, _ = dirs_for(s.paths)
    if dirs is None:
        return
    with s.db.read() as c:
        known = {st["fstx"] for st in s.db.states(c)}
    entries = bls.entries_dir(dirs.boot)
    with suppress(OSError):
        for f in list(entries.iterdir()):
            n = bls.EntryName.parse(f.name)
            if n is not None and n.fstx not in known:
                f.unlink()
        fsutil.fsync_dir(entries)


def booted_entry(s, dirs: esp.BootDirs) -> bls.EntryName | None:
    """The entry this system booted: LoaderEntrySelected, else the live state's entry."""
    entries = bls.list_entries(dirs.boot)
    selected = bootloader.read_var("LoaderEntrySelected") if s.paths.root == Path("/") else None
    if selected:
        n = bls.EntryName.parse(selected)
        if n is not None and n.fstx in entries:
            return entries[n.fstx]
    live = s.live_state()
    with s.db.read() as c:
        st = s.db.maybe_state(c, live)
    return entries.get(st["fstx"]) if st else None


def mark_good(s, *, esp_dir: Path | None = None, xbootldr: Path | None = None) -> dict:
    """Bless the booted entry: drop its counter, and point loader.conf at the new name."""
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
    os.rename(entries / cur.file, entries / blessed.file)
    fsutil.fsync_dir(entries)
    conf = bls.loader_conf(dirs.esp)
    default = bls.EntryName.parse(bls.read_default(dirs.esp) or "")
    if default is not None and default.fstx == cur.fstx:
        old = conf.read_text(errors="replace")
        _write(conf, bls.update_loader_conf(old, default=blessed.file,
                                            timeout=cfg.timeout).encode())
    return {"entry": blessed.file, "was": cur.file, "changed": True}


def set_default(s, state_id: int, *, once: bool = False, esp_dir: Path | None = None,
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
        bootloader.write_var("LoaderEntryOneShot", entry.file)
        return {"state": state_id, "entry": entry.file, "once": True}
    with s.db.write() as c:
        s.db.set_meta(c, META_DEFAULT, str(state_id))
        s.db.delete_meta(c, META_FALLBACK)
    report = sync_session(s, esp_dir=esp_dir, xbootldr=xbootldr) or {}
    return {"state": state_id, "entry": report.get("default"), "once": False}


def status(root: Path | str, *, esp_dir: Path | None = None,
           xbootldr: Path | None = None) -> dict:
    """Everything `onix boot status` shows; reads only."""
    from onix.db import Database

    paths = RootPaths.of(root)
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


# -- entry points that take a root (the CLI and tests call these) --------------------------


def _session(root: Path | str, *, wait: bool):
    from onix.transaction import session

    return session(root, wait=wait, create=False)


def sync(root: Path | str, *, esp_dir: Path | None = None, xbootldr: Path | None = None,
         wait: bool = True) -> dict:
    with _session(root, wait=wait) as s:
        report = sync_session(s, esp_dir=esp_dir, xbootldr=xbootldr)
        if report is None:
            raise BootError("no ESP found for this root", path=s.paths.root / "boot",
                            hint="create DIR/boot (image mode), mount the ESP, or pass --esp")
        return {**report, "recovered": s.recovered}


def mark_good_root(root: Path | str, *, esp_dir: Path | None = None,
                   xbootldr: Path | None = None, wait: bool = True) -> dict:
    with _session(root, wait=wait) as s:
        return mark_good(s, esp_dir=esp_dir, xbootldr=xbootldr)


def set_default_root(root: Path | str, state_id: int, *, once: bool = False,
                     esp_dir: Path | None = None, xbootldr: Path | None = None,
                     wait: bool = True) -> dict:
    with _session(root, wait=wait) as s:
        return set_default(s, state_id, once=once, esp_dir=esp_dir, xbootldr=xbootldr)
