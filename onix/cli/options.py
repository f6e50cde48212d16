"""The options most commands take, declared once so every --help says the same."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Root = Annotated[Path, typer.Option("--root", help="Operate on this root instead of /.",
                                    file_okay=False)]
Json = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
NoWait = Annotated[bool, typer.Option("--no-wait",
                                      help="Fail at once if another onix holds the lock.")]
StateId = Annotated[int, typer.Argument(metavar="ID")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Print the plan; change nothing.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="List every path.")]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Go ahead without showing the plan "
                                   "and asking (on a terminal).")]
