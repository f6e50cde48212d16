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


kargs_group = typer.Typer(help="Kernel arguments of the boot entries: list, add, remove.",
                          no_args_is_help=True)
group.add_typer(kargs_group, name="kargs")

KArgs = Annotated[list[str], typer.Argument(
    metavar="ARG", help="Kernel arguments, each one word (console=ttyS0 quiet).")]
KDryRun = Annotated[bool, typer.Option(
    "--dry-run", help="Show each entry's options before and after; change nothing.")]


@kargs_group.command("list")
def kargs_list(root: Root = Path("/"), json: Json = False) -> None:
    """The live state's kernel arguments, each with the file it comes from."""

    def human(r: dict) -> None:
        out = console()
        state = f"state {r['state']} ({r['fstx']})" if r["fstx"] else "no live state"
        out.print(f"{state}, entry {r['entry'] or 'none'}")
        width = max([len(a["arg"]) for a in (*r["args"], *r["removed"])] or [0])
        for a in r["args"]:
            where = f"onix: {a['why']}" if a["source"] == "onix" else a["source"]
            out.print(f"  {a['arg']:{width}}  {where}" + (" (added)" if a["managed"] else ""))
        if r["removed"]:
            out.print(f"removed by {r['file']}:")
            for a in r["removed"]:
                out.print(f"  {a['arg']:{width}}  {a['source'] or '(matches nothing now)'}")
        if r["root_missing"]:
            out.print("[yellow]no root=: the boot entries cannot be written[/] (onix boot "
                      "kargs add root=UUID=…)")
        elif r["in_sync"] is False:
            out.print(f"[yellow]the entry on $BOOT says otherwise[/] (onix boot sync writes "
                      f"the above): {r['entry_options']}")

    run(lambda: api.boot_kargs(root), human, as_json=json)


def _print_kargs(r: dict) -> None:
    out = console()
    would = "would " if r["dry_run"] else ""
    for key, verb in (("added", "add"), ("removed", "remove")):
        if r[key]:
            out.print(f"{would}{verb if would else key} {' '.join(r[key])}")
    for u in r["unchanged"]:
        out.print(f"nothing to do: {u['arg']} is {u['why']}")
    if not r["changed"]:
        return
    for e in r["entries"]:
        out.print(f"  {e['entry']} (state {e['state']})")
        out.print(f"    [red]- {e['before']}[/]")
        out.print(f"    [green]+ {e['after']}[/]")
    if r["entries_unchanged"]:
        n = r["entries_unchanged"]
        out.print(f"  {n} other entr{'y' if n == 1 else 'ies'} unchanged")
    if r["dry_run"]:
        out.print(f"[dim]dry run: {r['file']} and the entries are as they were[/]")
    elif r["sync"] is None:
        out.print(f"[dim]{r['file']} written; no ESP found, the next onix boot sync writes "
                  "the entries[/]")
    else:
        s = r["sync"]
        out.print(f"[dim]{r['file']} written; boot sync: {len(s['written'])} written, "
                  f"{len(s['removed'])} removed[/]")


@kargs_group.command("add")
def kargs_add(args: KArgs, dry_run: KDryRun = False, root: Root = Path("/"),
              json: Json = False, no_wait: NoWait = False) -> None:
    """Add kernel arguments to every boot entry (etc/kernel/cmdline.d/onix-kargs.conf)."""
    run(lambda: api.boot_kargs_change(root, add=args, dry_run=dry_run, wait=not no_wait),
        _print_kargs, as_json=json)


@kargs_group.command("remove")
def kargs_remove(args: KArgs, dry_run: KDryRun = False, root: Root = Path("/"),
                 json: Json = False, no_wait: NoWait = False) -> None:
    """Remove kernel arguments from every boot entry, wherever they come from."""
    run(lambda: api.boot_kargs_change(root, remove=args, dry_run=dry_run, wait=not no_wait),
        _print_kargs, as_json=json)
