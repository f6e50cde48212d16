"""`onix boot ...`: the boot plane's entries, default and boot counting."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from onix import api
from onix.cli.options import Json, NoWait, Root, StateId
from onix.cli.output import console, run

group = typer.Typer(help="Boot entries, the initrd, systemd-boot: the boot plane.",
                    no_args_is_help=True)

Esp = Annotated[Path | None, typer.Option("--esp", help="The ESP (default: found).",
                                          file_okay=False)]
Xbootldr = Annotated[Path | None, typer.Option("--xbootldr", help="The XBOOTLDR partition.",
                                               file_okay=False)]


def _print_sync(r: dict) -> None:
    out = console()
    out.print(f"ESP {r['esp']}" + (f", entries on {r['boot']}" if r["boot"] != r["esp"] else ""))
    out.print(f"default entry: [bold]{r['default']}[/]")
    for e in r["entries"]:
        out.print(f"  {e}")
    for sid, why in (r.get("skipped") or {}).items():
        out.print(f"[yellow]no entry for state {sid}:[/] {why}")
    if r.get("fallback"):
        fb = r["fallback"]
        out.print(f"[yellow]state {fb['failed']} failed to boot; state {fb['booted']} is the "
                  "default now[/]")
    changed = len(r["written"]) + len(r["removed"]) + len(r["bootloader"])
    out.print(f"[dim]{len(r['written'])} written, {len(r['removed'])} removed"
              + (f", systemd-boot updated ({', '.join(r['bootloader'])})" if r["bootloader"]
                 else "") + ("" if changed else " (already in sync)") + "[/]")


@group.command("sync")
def boot_sync(root: Root = Path("/"), esp: Esp = None, xbootldr: Xbootldr = None,
              json: Json = False, no_wait: NoWait = False) -> None:
    """Write entries, kernels and initrds for the retained states; drop stale ones."""
    run(lambda: api.boot_sync(root, esp_dir=esp, xbootldr=xbootldr, wait=not no_wait),
        _print_sync, as_json=json)


@group.command("status")
def boot_status(root: Root = Path("/"), esp: Esp = None, xbootldr: Xbootldr = None,
                json: Json = False) -> None:
    """ESP, bootloader, default entry, and every entry with its state and tries left."""

    def human(r: dict) -> None:
        out = console()
        if r["esp"] is None:
            out.print("no ESP found (mount it, create ROOT/boot, or pass --esp)")
            return
        out.print(f"ESP:        {r['esp']}")
        out.print(f"XBOOTLDR:   {r['xbootldr'] or '-'}")
        out.print(f"bootloader: {r['bootloader']}")
        out.print(f"default:    [bold]{r['default'] or 'none'}[/]")
        for k, v in (r.get("efi") or {}).items():
            if v:
                out.print(f"{k}: {v}")
        for e in r["entries"]:
            marks = [m for m, on in (("default", e["default"]), ("live", e["live"]),
                                     ("gone", not e["state_exists"]), ("bad", e["bad"])) if on]
            tries = "blessed" if e["blessed"] else f"{e['tries_left']} tries left"
            out.print(f"  {e['file']:34} state {e['state']:<5} {tries:14} "
                      f"{' '.join(marks)}")
            for f in e["missing_files"]:
                out.print(f"    [red]missing {f}[/]")
        out.print(f"kernels and initrds: {len(r['kernels'])}")

    run(lambda: api.boot_status(root, esp_dir=esp, xbootldr=xbootldr), human, as_json=json)


@group.command("mark-good")
def boot_mark_good(root: Root = Path("/"), esp: Esp = None, xbootldr: Xbootldr = None,
                   json: Json = False, no_wait: NoWait = False) -> None:
    """Bless the booted entry: boot counting is over for it."""
    run(lambda: api.boot_mark_good(root, esp_dir=esp, xbootldr=xbootldr, wait=not no_wait),
        lambda r: console().print(f"{r['entry']} is blessed" if r["changed"]
                                  else f"{r['entry']} was already blessed"), as_json=json)


@group.command("set-default")
def boot_set_default(state_id: StateId,
                     once: Annotated[bool, typer.Option(
                         "--once", help="Only the next boot (EFI LoaderEntryOneShot).")] = False,
                     root: Root = Path("/"), esp: Esp = None, xbootldr: Xbootldr = None,
                     json: Json = False, no_wait: NoWait = False) -> None:
    """Boot state ID by default from now on, or with --once for the next boot only."""

    def human(r: dict) -> None:
        when = "the next boot" if r["once"] else "every boot from now on"
        console().print(f"state {r['state']} ({r['entry']}) boots {when}")

    run(lambda: api.boot_set_default(root, state_id, once=once, esp_dir=esp, xbootldr=xbootldr,
                                     wait=not no_wait), human, as_json=json)
