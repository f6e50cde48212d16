"""The boot menu's choices: which entry booted, blessing it, and the default.

`mark_good` blesses the booted entry (what a late-boot service runs once the machine
is up: systemd-boot's counter is dropped), `set_default` makes a state the default
from now on or for the next boot only (LoaderEntryOneShot), and `status` is
everything `onix boot status` shows.
"""

from __future__ import annotations

from contextlib import suppress
from pathlib import Path

from onix.boot import bls, bootloader, esp
from onix.boot.checks import dirs_for
from onix.boot.inputs import KERNEL_DIR, find_kernel, state_usr
from onix.boot.plane import (
    META_DEFAULT,
    META_FALLBACK,
    META_RESET,
    META_SYNCED,
    _guard,
    _write_loader,
    sync,
)
from onix.core import fsutil
from onix.core.errors import BootError, StateError
from onix.core.paths import RootPaths, read_state_id
from onix.machine.session import Session


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
