"""Top-level commands on a root's machine plane: transactions, what is installed, status."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from onix import api
from onix.cli.options import DryRun, Json, NoWait, Root, Verbose, Yes
from onix.cli.output import (
    console,
    format_status,
    human_bytes,
    print_lines,
    print_table,
    progress,
    run,
)
from onix.cli.preview import confirm_first, print_preview

commands = typer.Typer()


def print_result(r: dict) -> None:
    """An install's, a remove's or a sync's new state (or its plan, with --dry-run), or
    why nothing changed."""
    if r.get("dry_run"):
        print_preview(r)
        return
    out = console()
    if r.get("detail", {}).get("staged"):
        out.print(f"state {r['to_state']} [bold]{r['fstx']}[/] staged for the next boot  "
                  f"[dim](live stays {r['from_state']})[/]")
        out.print(r["summary"])
        return
    if not r["changed"]:
        out.print(f"nothing to do ({r['summary']})")
        return
    if r.get("fstx"):
        out.print(f"state {r['to_state']} [bold]{r['fstx']}[/] active  "
                  f"[dim](was {r['from_state'] if r['from_state'] is not None else 'none'})[/]")
    out.print(r["summary"])


def print_switch(r: dict) -> None:
    """A rollback's or an activate's new live state, and what /nix said (or the plan)."""
    if r.get("dry_run"):
        print_preview(r)
        return
    out = console()
    out.print(f"state {r['to_state']} [bold]{r['fstx']}[/] active  [dim](was {r['from_state']})[/]")
    out.print("plane: machine")
    out.print(f"/nix: {r['nix']}")


@commands.command()
def install(targets: Annotated[list[str], typer.Argument(
                metavar="STONE...", help="Stone names (from repositories), provider strings "
                "such as 'binary(rg)', or .stone files.")],
            yes: Yes = False, dry_run: DryRun = False, root: Root = Path("/"),
            json: Json = False, no_wait: NoWait = False) -> None:
    """Install or replace stones, with their dependencies; one transaction, one new state."""
    if not dry_run:
        confirm_first(lambda: api.install(root, targets, dry_run=True), yes=yes, as_json=json)
    run(lambda: api.install(root, targets, dry_run=dry_run, wait=not no_wait,
                            progress=progress(json)), print_result, as_json=json)


@commands.command()
def remove(names: Annotated[list[str], typer.Argument(help="Installed stone names.")],
           keep_orphans: Annotated[bool, typer.Option(
               "--keep-orphans", help="Keep dependencies nothing asked for any more.")] = False,
           yes: Yes = False, dry_run: DryRun = False, root: Root = Path("/"),
           json: Json = False, no_wait: NoWait = False) -> None:
    """Remove stones by name, and dependencies only they needed; one new state."""
    if not dry_run:
        confirm_first(lambda: api.remove(root, names, orphans=not keep_orphans, dry_run=True),
                      yes=yes, as_json=json)
    run(lambda: api.remove(root, names, orphans=not keep_orphans, dry_run=dry_run,
                           wait=not no_wait, progress=progress(json)), print_result, as_json=json)


@commands.command()
def sync(yes: Yes = False,
         dry_run: DryRun = False,
         no_refresh: Annotated[bool, typer.Option("--no-refresh", help="Plan from the cached "
                                                  "indexes; do not fetch them again.")] = False,
         boot: Annotated[bool, typer.Option("--boot", help="Build the new state and make it "
                                            "the next boot's default; /usr stays as it is "
                                            "until then.")] = False,
         allow_downgrade: Annotated[bool, typer.Option(
             "--allow-downgrade", help="Move a stone to an older version when that is what "
             "the repositories offer.")] = False,
         verbose: Verbose = False, root: Root = Path("/"), json: Json = False,
         no_wait: NoWait = False) -> None:
    """Move every installed stone to the best version the repositories offer and drop
    orphans, in one transaction. Shows the plan first and asks (or --yes)."""
    from onix.cli.preview import ask, is_terminal

    if not (yes or dry_run) and (json or not is_terminal()):
        run(_needs_yes, print_result, as_json=json)

    def confirm(plan) -> bool:
        if yes:
            return True
        print_preview(plan.as_dict(), verbose=verbose)
        return ask("Apply this plan?")

    run(lambda: api.sync(root, refresh=not no_refresh, allow_downgrade=allow_downgrade,
                         boot=boot, dry_run=dry_run, confirm=confirm, wait=not no_wait,
                         progress=progress(json)),
        lambda r: print_preview(r, verbose=verbose) if r.get("dry_run") else print_result(r),
        as_json=json)


def _needs_yes() -> None:
    from onix.core.errors import OnixError

    raise OnixError("onix sync asks before it changes anything, and there is no terminal to "
                    "ask on", hint="add --yes to apply the plan, or --dry-run to see it")


@commands.command()
def search(term: Annotated[str, typer.Argument(help="Part of a name, summary or provider.")],
           root: Root = Path("/"), json: Json = False) -> None:
    """Stones the configured repositories offer."""

    def human(rows: list) -> None:
        if not rows:
            console().print(f"no stone matches {term!r}")
        for a in rows:
            console().print(f"{a['name']} {a['version']}-{a['release']}  [dim]{a['repo']}[/]  "
                            f"{a['summary']}")

    run(lambda: [a.as_dict() for a in api.search(root, term)], human, as_json=json)


@commands.command()
def info(name: str, root: Root = Path("/"), json: Json = False) -> None:
    """One stone: what the live state has and what the repositories offer."""

    def human(r: dict) -> None:
        out = console()
        mine = r["installed"]
        if mine:
            out.print(f"[bold]{mine['name']}[/] {mine['version']}-{mine['release']} installed"
                      + (" (explicit)" if mine["explicit"] else " (as a dependency)"))
            if mine["summary"] or mine["license"]:
                out.print(f"  {mine['summary']}  [dim]{mine['license']}[/]".rstrip())
            for k in ("provides", "depends"):
                if mine[k]:
                    out.print(f"  {k}: {', '.join(mine[k])}")
        else:
            out.print(f"[bold]{r['name']}[/] not installed")
        for a in r["available"]:
            mark = {"upgrade": " [green](update: onix sync)[/]", "downgrade": " (older)",
                    "installed": " (installed)"}.get(a.get("compared", ""), "")
            out.print(f"available: {a['version']}-{a['release']} from {a['repo']} "
                      f"({human_bytes(a['size'])}) {a['location']}{mark}")

    run(lambda: api.info(root, name), human, as_json=json)


@commands.command()
def rollback(to: Annotated[int | None, typer.Option("--to", help="State id to go back to.")] = None,
             dry_run: DryRun = False, root: Root = Path("/"), json: Json = False,
             no_wait: NoWait = False) -> None:
    """Go back to the previous state (or --to ID). /nix is checked before and after."""
    run(lambda: api.rollback(root, to=to, dry_run=dry_run, wait=not no_wait), print_switch,
        as_json=json)


@commands.command()
def prune(keep: Annotated[int, typer.Option("--keep", help="Newest states to keep.")] = 3,
          yes: Yes = False, dry_run: DryRun = False, root: Root = Path("/"),
          json: Json = False, no_wait: NoWait = False) -> None:
    """Remove old states (never active or pinned ones) and store content nothing uses."""
    if not dry_run:
        confirm_first(lambda: api.prune(root, keep=keep, dry_run=True), yes=yes, as_json=json)

    def human(r: dict) -> None:
        if r.get("dry_run"):
            print_preview(r)
            return
        out = console()
        d = r["detail"]
        if d["states"]:
            out.print("removed states: " + ", ".join(str(i) for i in d["states"]))
        else:
            out.print("no states to remove")
        out.print(f"removed {d['objects']} store objects, freed {human_bytes(d['bytes_freed'])}")
        out.print("plane: machine")
        out.print(f"/nix: {r['nix']}")

    run(lambda: api.prune(root, keep=keep, dry_run=dry_run, wait=not no_wait,
                          progress=progress(json)), human, as_json=json)


@commands.command()
def verify(fix: Annotated[bool, typer.Option("--fix", help="Restore from the store.")] = False,
           root: Root = Path("/"), json: Json = False, no_wait: NoWait = False) -> None:
    """Re-hash the store; check /usr and every archived state against their layouts."""

    def human(r: dict) -> None:
        out = console()
        for p in r["fixed"]:
            out.print(f"fixed {p['problem']}: {p['path']}")
        for p in r["problems"]:
            out.print(f"[red]{p['problem']}[/]: {p['path']}" + (f" ({p['detail']})"
                                                               if p["detail"] else ""))
        verdict = "[green]clean[/]" if r["clean"] else f"[red]{len(r['problems'])} problems[/]"
        out.print(f"state {r['state']}: {r['objects_checked']} objects, {r['files_checked']} "
                  f"files, {human_bytes(r['bytes_hashed'])} hashed — {verdict}")
        if not r["clean"] and not fix:
            out.print("run onix verify --fix to restore from the store")

    report = run(lambda: api.verify(root, fix=fix, wait=not no_wait, progress=progress(json)),
                 human, as_json=json)
    if not report["clean"]:
        raise typer.Exit(1)


@commands.command()
def status(root: Root = Path("/"), json: Json = False,
           verbose: Annotated[bool, typer.Option("--verbose", "-v",
                                                 help="List drifted keys.")] = False) -> None:
    """What is live: active fstx, boot entry, the Nix plane's seams, states, store size."""
    run(lambda: api.status(root), lambda r: print_lines(format_status(r, verbose=verbose)),
        as_json=json, markup=False)


@commands.command("ownership")
def ownership_cmd(root: Root = Path("/"), json: Json = False) -> None:
    """The ownership contract: which plane owns which surface (as recorded in the root)."""

    run(lambda: api.ownership(root), lambda rows: print_table(
        ("surface", "owner", "reason"), [(r["surface"], r["owner"], r["reason"]) for r in rows]),
        as_json=json)
