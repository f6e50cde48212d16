"""`onix nix ...` (the Nix plane's seams) and `onix services` (the live state's s6 services):
what the machine plane lays down around the live state."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from onix import api
from onix.cli.options import Json, NoWait, Root
from onix.cli.output import console, run, warn

group = typer.Typer(help="The Nix plane's machine-side seams (onix-nix-integration).",
                    no_args_is_help=True)
commands = typer.Typer()


@group.command("seed")
def nix_seed(root: Root = Path("/"), json: Json = False, no_wait: NoWait = False) -> None:
    """nixbld users, /etc/nix defaults, the shell hook, /nix runtime dirs, the GL bridge."""

    def human(r: dict) -> None:
        out = console()
        for line in r["changed"] or ["nothing to do: already seeded"]:
            out.print(line)
        if r.get("opengl", {}).get("bridge"):
            out.print(f"/run/opengl-driver → {r['opengl']['bridge']}")

    run(lambda: api.nix_seed(root, wait=not no_wait), human, as_json=json)


@group.command("check")
def nix_check(user: Annotated[str, typer.Option("--user", help="Build as this user.")] = "nobody",
              json: Json = False) -> None:
    """Self-test: build a trivial derivation through the daemon as a non-root user."""
    run(lambda: api.nix_check(user=user),
        lambda r: console().print(f"nix daemon built {r['path']} as {user} "
                                  f"in {r['seconds']:.1f} s: ok"), as_json=json)


@commands.command("services")
def services_cmd(root: Root = Path("/"), json: Json = False,
                 sync: Annotated[bool, typer.Option(
                     "--sync", help="First reconcile the scan directory with the live state "
                     "(what a boot runs before s6-svscan: /run starts empty).")] = False,
                 up: Annotated[bool, typer.Option(
                     "--up", help="Stage 2 of a boot: wait for s6-svscan, then start the "
                     "services laid down before it ran, in dependency order.")] = False,
                 no_wait: NoWait = False) -> None:
    """The live state's s6 services and what s6-svstat says of each."""

    def human(rows: list) -> None:
        out = console()
        if not rows:
            out.print("no services in the live state")
        for r in rows:
            where = "" if r.get("in_state") else " (not in the live state)"
            state = r.get("error") or r.get("text") or r.get("state")
            if r.get("status") in ("failed", "held", "laid") and not r.get("error"):
                why = f": {r['reason']}" if r.get("reason") else ""
                state = f"{state} [{r['status']}{why}]"
            out.print(f"{r['name']:20} {state}{where}", markup=False)

    run(lambda: api.services(root, sync=sync, up=up, wait=not no_wait, warn=warn), human,
        as_json=json)
