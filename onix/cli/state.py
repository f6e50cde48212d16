"""`onix state ...`: list, inspect, switch to, pin and remove states."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from onix import api
from onix.cli.machine import print_switch
from onix.cli.options import DryRun, Json, NoWait, Root, StateId
from onix.cli.output import console, human_bytes, print_table, run

group = typer.Typer(help="List, inspect, switch, pin and remove states.", no_args_is_help=True)

@group.command("list")
def state_list(root: Root = Path("/"), json: Json = False) -> None:
    """States, newest first; * marks the active one."""
    run(lambda: api.list_states(root), lambda rows: print_table(
        ("", "id", "fstx", "created", "stones", "pinned", "summary"),
        [("*" if r["active"] else "", str(r["id"]), r["fstx"], r["created"], str(r["stones"]),
          "pinned" if r["pinned"] else "", r["summary"]) for r in rows]), as_json=json)


@group.command("show")
def state_show(state_id: StateId, root: Root = Path("/"), json: Json = False) -> None:
    """One state: its fstx, stones and size."""

    def human(r: dict) -> None:
        out = console()
        out.print(f"state {r['id']} [bold]{r['fstx']}[/]" + (" (active)" if r["active"] else "")
                  + (" (pinned)" if r["pinned"] else ""))
        out.print(f"created {r['created']}; {r['summary']}")
        out.print(f"{r['files']} files, {human_bytes(r['bytes'])}")
        for s in r["stones"]:
            out.print(f"  {s['name']} {s['version']}-{s['release']}"
                      + ("" if s["explicit"] else " [dim](dependency)[/]")
                      + f"  [dim]{s['summary']}[/]")

    run(lambda: api.show_state(root, state_id), human, as_json=json)


@group.command("diff")
def state_diff(a: int, b: int, root: Root = Path("/"), json: Json = False) -> None:
    """Stones and files added, removed and changed from state A to state B."""

    def human(r: dict) -> None:
        out = console()
        sign = {"added": "+", "removed": "-"}
        for c in r["stones"]:
            out.print(f"{sign.get(c['kind'], '~')} {c['name']} "
                      + (f"{c['from']} → {c['to']} ({c['kind']})" if c["from"] and c["to"]
                         else c["to"] or c["from"]))
        for change, mark in (("added", "+"), ("removed", "-"), ("changed", "~")):
            for item in r["files"][change]:
                out.print(f"{mark} {item}")
        if not r["stones"] and not any(r["files"].values()):
            out.print("no differences")

    run(lambda: api.diff_states(root, a, b), human, as_json=json)


@group.command("activate")
def state_activate(state_id: StateId, dry_run: DryRun = False, root: Root = Path("/"),
                   json: Json = False, no_wait: NoWait = False) -> None:
    """Make an archived state live."""
    run(lambda: api.activate(root, state_id, dry_run=dry_run, wait=not no_wait), print_switch,
        as_json=json)


def _pin(state_id: int, pinned: bool, root: Path, json: bool, no_wait: bool) -> None:
    run(lambda: api.set_pinned(root, state_id, pinned, wait=not no_wait),
        lambda r: console().print(f"state {r['id']} {'pinned' if r['pinned'] else 'unpinned'}"),
        as_json=json)


@group.command("pin")
def state_pin(state_id: StateId, root: Root = Path("/"), json: Json = False,
              no_wait: NoWait = False) -> None:
    """Keep a state through every prune."""
    _pin(state_id, True, root, json, no_wait)


@group.command("unpin")
def state_unpin(state_id: StateId, root: Root = Path("/"), json: Json = False,
                no_wait: NoWait = False) -> None:
    """Let prune remove a state again."""
    _pin(state_id, False, root, json, no_wait)


@group.command("remove")
def state_remove(ids: Annotated[list[int], typer.Argument(metavar="ID...")],
                 root: Root = Path("/"), json: Json = False, no_wait: NoWait = False) -> None:
    """Remove archived states (never the active one) and store content only they used."""
    run(lambda: api.remove_states(root, ids, wait=not no_wait),
        lambda r: console().print(r["summary"]), as_json=json)
