"""The `onix` entry point. `onix status` is answered here without loading typer or rich.

Typer (with the pydantic it pulls in) and rich cost ~0.1 s to import, which
alone would break status's 0.15 s budget; status is what scripts and prompts
call most, so its plain form (`status [--root DIR] [--json]`) skips them.
Anything else — other commands, --help, unknown options — goes to the typer app.
"""

from __future__ import annotations

import sys


def _fast_status(args: list[str]) -> int | None:
    root, as_json, verbose = "/", False, False
    it = iter(args)
    for a in it:
        if a == "--json":
            as_json = True
        elif a in ("--verbose", "-v"):
            verbose = True
        elif a == "--root":
            root = next(it, None)
            if root is None:
                return None
        elif a.startswith("--root="):
            root = a.split("=", 1)[1]
        else:
            return None  # let typer handle --help and mistakes
    import os

    if os.path.exists(root) and not os.path.isdir(root):
        return None  # typer reports the usage error, as for every other command
    from onix.api import status
    from onix.cli.output import format_status, print_lines, run

    run(lambda: status(root), lambda r: print_lines(format_status(r, verbose=verbose)),
        as_json=as_json, markup=False)
    return 0


def main() -> None:
    try:
        if sys.argv[1:2] == ["status"]:
            code = _fast_status(sys.argv[2:])
            if code is not None:
                sys.exit(code)
        from onix.cli.app import app

        app()
    except BrokenPipeError:
        sys.exit(1)


if __name__ == "__main__":
    main()
