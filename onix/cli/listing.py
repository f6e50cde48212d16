"""`onix list installed|available|updates` and `onix history`: what is here, what is
offered, what a sync would do, and what was done."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from onix import api
from onix.cli.options import Json, Root
from onix.cli.output import console, human_bytes, print_table, run
from onix.cli.preview import print_preview

group = typer.Typer(help="Installed stones, what the repositories offer, pending updates.",
                    no_args_is_help=True)
commands = typer.Typer()


@group.command("installed")
def list_installed(root: Root = Path("/"), json: Json = False) -> None:
    """Stones of the live state: version, explicit or dependency, repository."""
    run(lambda: api.list_installed(root), lambda rows: print_table(
        ("stone", "version", "reason", "repository", "size"),
        [(r["name"], f"{r['version']}-{r['release']}",
          "explicit" if r["explicit"] else "dependency", r["repo"] or "-",
          human_bytes(r["installed_size"])) for r in rows]), as_json=json)


@group.command("available")
def list_available(root: Root = Path("/"), json: Json = False) -> None:
    """Every stone the cached repository indexes offer; the installed version beside it."""
    run(lambda: api.list_available(root), lambda rows: print_table(
        ("stone", "version", "repository", "installed", "summary"),
        [(r["name"], f"{r['version']}-{r['release']}", r["repo"], r["installed"] or "",
          r["summary"]) for r in rows]), as_json=json)


@group.command("updates")
def list_updates(root: Root = Path("/"), json: Json = False) -> None:
    """What `onix sync` would do, from the cached indexes (onix repo update refreshes)."""
    run(lambda: api.list_updates(root), print_preview, as_json=json)


@commands.command()
def history(limit: Annotated[int | None, typer.Option("--limit", "-n",
                                                      help="Newest N only.")] = None,
            root: Root = Path("/"), json: Json = False) -> None:
    """Transactions, newest first: what was asked, what changed, when, how long, result."""

    def human(rows: list[dict]) -> None:
        if not rows:
            console().print("no transactions yet")
            return
        print_table(("tx", "when", "asked", "change", "took", "result"),
                    [(str(r["id"]), r["started"].replace("T", " ")[:19],
                      r["command"] or r["kind"],
                      (f"{r['from_state'] if r['from_state'] is not None else '-'} → "
                       f"{r['to_state']}"
                       + (" (staged)" if r["staged"] else "")
                       if r["to_state"] is not None else "") + f"  {r['summary']}",
                      f"{r['seconds']:.2f}s" if r["seconds"] is not None else "",
                      r["result"]) for r in rows])

    run(lambda: api.history(root, limit=limit), human, as_json=json)
