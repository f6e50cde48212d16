"""The `onix` command: the root typer app and its command groups, one module each.

Commands that act on one root's machine plane (install, remove, rollback, ...) sit at the
top level with the services, build, index and validate commands; the rest are groups
(`onix state ...`, `onix boot ...`). The order of the add_typer calls is the order
`onix --help` lists them in.
"""

from __future__ import annotations

import typer

from onix.cli import boot, etc, listing, machine, nix, repo, state, stone, validate

app = typer.Typer(help="ONIX machine plane: stones, states, rollback.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
for commands in (machine.commands, listing.commands, nix.commands, repo.commands,
                 validate.commands):
    app.add_typer(commands)
app.add_typer(state.group, name="state")
app.add_typer(listing.group, name="list")
app.add_typer(stone.group, name="stone")
app.add_typer(boot.group, name="boot")
app.add_typer(nix.group, name="nix")
app.add_typer(etc.group, name="etc")
app.add_typer(repo.key_group, name="key")
app.add_typer(repo.repo_group, name="repo")
app.add_typer(validate.image_group, name="image")
app.add_typer(validate.vm_group, name="vm")
