"""The `onix` entry point. The commands scripts poll are answered here without typer or rich.

Typer (with the pydantic it pulls in) and rich cost ~0.1 s to import, which
alone would break status's 0.15 s budget. `status`, `list updates` and a `sync`
that finds nothing to do (with --yes, --dry-run or --json: no question to ask)
skip them in their plain forms. Anything else — other commands, --help, unknown
options, a sync with work to do — goes to the typer app.
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


def _options(args: list[str], flags: tuple[str, ...]) -> dict | None:
    """--root DIR / --root=DIR and the given flags; None for anything else (typer's job)."""
    out: dict = {"--root": "/"}
    it = iter(args)
    for a in it:
        if a in flags:
            out[a] = True
        elif a == "--root":
            out["--root"] = next(it, None)
            if out["--root"] is None:
                return None
        elif a.startswith("--root="):
            out["--root"] = a.split("=", 1)[1]
        else:
            return None
    return out


def _fast_list_updates(args: list[str]) -> int | None:
    opts = _options(args, ("--json",))
    if opts is None:
        return None
    from onix.api import list_updates
    from onix.cli.output import run
    from onix.cli.preview import print_preview

    run(lambda: list_updates(opts["--root"]), print_preview, as_json="--json" in opts,
        markup=False)
    return 0


class _HasWork(Exception):
    """The sync has a plan to apply: the full CLI shows its progress."""


def _fast_sync(args: list[str]) -> int | None:
    opts = _options(args, ("--json", "--yes", "-y", "--dry-run", "--no-refresh", "-v",
                           "--verbose"))
    if opts is None or not ({"--yes", "-y", "--dry-run"} & opts.keys()):
        return None
    from onix.api import sync
    from onix.cli.output import print_lines, run
    from onix.cli.preview import print_preview

    def confirm(_plan) -> bool:
        raise _HasWork

    def human(r: dict) -> None:
        if r.get("dry_run"):
            print_preview(r, verbose=bool({"-v", "--verbose"} & opts.keys()))
        else:
            print_lines([f"nothing to do ({r['summary']})", *(f"warning: {w}"
                                                              for w in r["warnings"])])

    try:
        # run() turns exceptions into exit codes; _HasWork must get past it.
        result = sync(opts["--root"], refresh="--no-refresh" not in opts,
                      dry_run="--dry-run" in opts, confirm=confirm)
    except _HasWork:
        return None
    except Exception:  # the full CLI says it in its one line
        return None
    run(lambda: result, human, as_json="--json" in opts, markup=False)
    return 0


FAST = {("status",): _fast_status, ("list", "updates"): _fast_list_updates,
        ("sync",): _fast_sync}


def main() -> None:
    try:
        for words, fast in FAST.items():
            if tuple(sys.argv[1:1 + len(words)]) == words:
                code = fast(sys.argv[1 + len(words):])
                if code is not None:
                    sys.exit(code)
        from onix.cli.app import app

        app()
    except BrokenPipeError:
        sys.exit(1)


if __name__ == "__main__":
    main()
