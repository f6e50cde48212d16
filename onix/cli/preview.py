"""Printing a plan (`--dry-run`, and what `onix sync` shows before it asks), and asking."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from onix.cli.output import console, human_bytes, print_lines

VERB = {"upgrade": "upgrade", "downgrade": "downgrade", "new": "install",
        "dependency": "new dependency", "removed": "remove", "reinstall": "reinstall",
        "added": "add", "rebuilt": "rebuilt"}
SHOWN_FILES = 20  # past this many paths a kind of file change is counted, not listed


def _signed(n: int) -> str:
    return ("+" if n > 0 else "-" if n < 0 else "") + human_bytes(abs(n))


def format_preview(p: dict, *, verbose: bool = False) -> list[str]:
    """The plan as plain lines (a table of stones, then states, files and bytes); plain
    text so the fast paths of `list updates` and `sync` need not import rich."""
    lines: list[str] = []
    if p["empty"]:
        lines.append("nothing to do")
    if p["stones"]:
        rows = [("stone", "from", "to", "change", "download", "size")]
        rows += [(c["name"], c["from"] or "-", c["to"] or "-", VERB.get(c["kind"], c["kind"]),
                  human_bytes(c["download"]) if c["download"] else "",
                  _signed(c["size_change"]) if c["size_change"] else "") for c in p["stones"]]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
                  for r in rows]
    if p["switch_to"] is not None:
        lines.append(f"state {p['switch_to']} becomes live (was {p['live']})")
    if p["creates_state"]:
        lines.append("a new state is built" + (
            " and staged: the next boot's default, /usr unchanged until then" if p["staged"]
            else f" and made live (was {p['live']})"))
    if p["states_removed"]:
        lines.append("states removed: " + ", ".join(str(i) for i in p["states_removed"]))
    files = p["files"]
    if files is not None and not p["empty"]:
        lines.append("files in /usr: " + ", ".join(
            f"{len(files[k])} {k}" for k in ("added", "removed", "changed")))
        for k, sign in (("added", "+"), ("removed", "-"), ("changed", "~")):
            shown = files[k] if verbose else files[k][:SHOWN_FILES]
            lines += [f"  {sign} {path}" for path in shown]
            if len(files[k]) > len(shown):
                lines.append(f"  … {len(files[k]) - len(shown)} more {k} (-v lists all)")
    if p["fetch_bytes"]:
        lines.append(f"to fetch: {human_bytes(p['fetch_bytes'])}")
    if p["free_bytes"]:
        lines.append(f"to free: {human_bytes(p['free_bytes'])}")
    lines += [f"note: {n}" for n in p["notes"]]
    return lines


def print_preview(p: dict, *, verbose: bool = False) -> None:
    print_lines(format_preview(p, verbose=verbose))


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


def confirm_first(plan: Callable[[], Any], *, yes: bool, as_json: bool) -> None:
    """On a terminal, show the plan a command would carry out and ask before it does
    (moss and apt do); `--yes`, `--json` and a run without a terminal go straight on."""
    if yes or as_json or not is_terminal():
        return
    from onix.cli.output import run

    data = run(plan, print_preview, as_json=False)
    if data.get("empty"):
        raise SystemExit(0)
    if not ask("Apply this plan?"):
        from onix.cli.output import fail
        from onix.core.errors import OnixError

        raise SystemExit(fail(OnixError("not confirmed; nothing changed",
                                        hint="add --yes to go ahead without asking"),
                              as_json=False))
