"""`onix etc ...`: the live state's declared /etc defaults (usr/share/factory/etc) and the
local edits beside them (machine/etc.py's 3-way merge): show them, diff them, reset one."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from onix import api
from onix.cli.options import Json, NoWait, Root
from onix.cli.output import run

group = typer.Typer(help="Declared /etc defaults and the local edits beside them.",
                    no_args_is_help=True)

EtcPath = Annotated[str, typer.Argument(metavar="PATH",
                                        help="A file below /etc, e.g. /etc/nix/nix.conf.")]


def _row(r: dict) -> str:
    what = r["state"]
    if r["overrides"] and r["overrides"] != ["*"]:
        what += f" ({', '.join(r['overrides'])})"
    if r["conflicts"]:
        keys = "" if r["conflicts"] == ["*"] else f" ({', '.join(r['conflicts'])})"
        what = f"conflict{keys} → {r['new_file']}"
        if r["overrides"] and r["overrides"] != ["*"]:
            what += f"; edited ({', '.join(r['overrides'])})"
    if r["pending"]:
        what += f"; the next merge applies {', '.join(r['pending'])}"
    return f"{r['path']}: {what}"


@group.command("status")
def etc_status(root: Root = Path("/"), json: Json = False) -> None:
    """Every declared /etc file: clean, edited (which keys), conflict, missing."""

    def human(rows: list) -> None:
        if not rows:
            sys.stdout.write("no declared /etc files in the live state\n")
        for r in rows:
            sys.stdout.write(_row(r) + "\n")

    run(lambda: api.etc_status(root), human, as_json=json, markup=False)


@group.command("diff")
def etc_diff(path: Annotated[str | None, typer.Argument(
                 metavar="[PATH]", help="Only this file below /etc.")] = None,
             root: Root = Path("/"), json: Json = False) -> None:
    """The local files against the declared defaults: per key for key = value files,
    then a unified diff (local → default)."""

    def human(files: list) -> None:
        if not files:
            sys.stdout.write("no differences from the declared defaults\n")
        for f in files:
            for k in f["keys"]:
                local = "(unset)" if k["local"] is None else repr(k["local"])
                default = "(unset)" if k["default"] is None else repr(k["default"])
                sys.stdout.write(f"{f['path']}: {k['key']}: {local} here, {default} by "
                                 f"default ({k['status']})\n")
            sys.stdout.write(f["diff"])

    run(lambda: api.etc_diff(root, path), human, as_json=json, markup=False)


@group.command("reset")
def etc_reset(path: EtcPath, root: Root = Path("/"), json: Json = False,
              no_wait: NoWait = False) -> None:
    """Throw the local edit away: write the declared default, remove FILE.onix-new."""

    def human(r: dict) -> None:
        said = {"reset": "is the declared default again",
                "unchanged": "was already the declared default",
                "removed": "removed (no state declares it any more)"}
        sys.stdout.write(f"{r['path']} {said.get(r['action'], r['action'])}\n")

    run(lambda: api.etc_reset(root, path, wait=not no_wait), human, as_json=json, markup=False)
