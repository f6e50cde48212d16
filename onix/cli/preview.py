"""Printing a plan (`--dry-run`, and what `onix sync` shows before it asks), and asking."""

from __future__ import annotations

import sys

from onix.cli.output import console, human_bytes, print_table

VERB = {"upgrade": "upgrade", "downgrade": "downgrade", "new": "install",
        "dependency": "new dependency", "removed": "remove", "reinstall": "reinstall",
        "added": "add", "rebuilt": "rebuilt"}
SHOWN_FILES = 20  # past this many paths a kind of file change is counted, not listed


def _signed(n: int) -> str:
    return ("+" if n > 0 else "-" if n < 0 else "") + human_bytes(abs(n))


def print_preview(p: dict, *, verbose: bool = False) -> None:
    """The plan in a table, then states, files and bytes; `verbose` lists every path."""
    out = console()
    if p["empty"]:
        out.print("nothing to do")
    if p["stones"]:
        print_table(("stone", "from", "to", "change", "download", "size"),
                    [(c["name"], c["from"] or "-", c["to"] or "-", VERB.get(c["kind"], c["kind"]),
                      human_bytes(c["download"]) if c["download"] else "",
                      _signed(c["size_change"]) if c["size_change"] else "")
                     for c in p["stones"]])
    if p["switch_to"] is not None:
        out.print(f"state {p['switch_to']} becomes live (was {p['live']})")
    if p["creates_state"]:
        out.print("a new state is built" + (
            " and staged: the next boot's default, /usr unchanged until then" if p["staged"]
            else f" and made live (was {p['live']})"))
    if p["states_removed"]:
        out.print("states removed: " + ", ".join(str(i) for i in p["states_removed"]))
    files = p["files"]
    if files is not None and not p["empty"]:
        out.print("files in /usr: " + ", ".join(
            f"{len(files[k])} {k}" for k in ("added", "removed", "changed")))
        for k, sign in (("added", "+"), ("removed", "-"), ("changed", "~")):
            shown = files[k] if verbose else files[k][:SHOWN_FILES]
            for path in shown:
                out.print(f"  {sign} {path}", markup=False)
            if len(files[k]) > len(shown):
                out.print(f"  [dim]… {len(files[k]) - len(shown)} more {k} (-v lists all)[/]")
    if p["fetch_bytes"]:
        out.print(f"to fetch: {human_bytes(p['fetch_bytes'])}")
    if p["free_bytes"]:
        out.print(f"to free: {human_bytes(p['free_bytes'])}")
    for note in p["notes"]:
        out.print(f"[dim]note:[/] {note}")


def ask(question: str) -> bool:
    """y/N on the terminal; anything but y or yes is no."""
    out = console(stderr=True)
    out.print(f"{question} [y/N] ", end="")
    try:
        answer = sys.stdin.readline()
    except KeyboardInterrupt:
        return False
    return answer.strip().lower() in ("y", "yes")


def is_terminal() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()
