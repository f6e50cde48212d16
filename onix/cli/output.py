"""Terminal output: calm rich text for people, JSON for scripts, progress on stderr.

Every command prints through this module: `run` calls the api and prints its result
(`show`: the `recovered:` lines, the command's own lines, the `warning:` lines) or its
error (`fail`: one `error:` line, the JSON error document with --json, the exit code).
`onix status`'s fast path (cli/main.py) uses it too, so it imports neither typer nor
rich at module level: rich is imported where a human line is printed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from onix.core.errors import OnixError, from_exception
from onix.core.progress import Progress

if TYPE_CHECKING:
    from rich.console import Console

INTERRUPTED = "interrupted; the root holds the old or the new state (onix status tells which)"


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def format_status(r: dict, *, verbose: bool = False) -> list[str]:
    """The human lines of `onix status` (plain text: this path must not import rich)."""
    if not r["initialized"]:
        return [f"{r['root']}: not an ONIX root yet"]
    lines = [f"active fstx: {r['active_fstx'] or 'none'}"]
    staged = r.get("staged")
    if staged:
        lines.append(f"staged: state {staged['state']} {staged['fstx']} for the next boot "
                     f"({staged['summary']})")
    if r["boot"]["esp"] is not None:
        lines.append(f"boot entry: {r['boot_entry'] or 'none (loader.conf names no default)'}")
    nix = r.get("nix")
    etc = r.get("etc")
    if nix is not None:
        daemon = nix["daemon"] if nix["daemon"] == "healthy" else \
            f"{nix['daemon']} ({nix['daemon_reason']})"
        lines.append(f"nix daemon: {daemon}")
    if etc is not None or nix is not None:
        lines.extend(_etc_drift(etc or {"overrides": [], "conflicts": [], "missing": []},
                                verbose=verbose))
    if nix is not None:
        lines.extend(f"  error: {e}" for e in nix["drift"]["errors"])
        lines.append(f"opengl: {nix['opengl']}")
    pinned = f" (pinned: {', '.join(map(str, r['pinned']))})" if r["pinned"] else ""
    lines.append(f"states: {r['states']}{pinned}")
    lines.append(f"store: {human_bytes(r['store_bytes'])}")
    lines.extend(f"note: {n}" for n in r["notes"])
    return lines


def _etc_drift(d: dict, *, verbose: bool) -> list[str]:
    """`etc drift:` counted per key (an edited key = value file is one override per key
    the user changed; any other edited file is one), then with -v each key or file."""
    parts = []
    for kind, word in (("overrides", "local override"), ("conflicts", "conflict")):
        if d[kind]:
            n = len(d[kind])
            parts.append(f"{n} {word}{'s' if n != 1 else ''}")
    what = ", ".join(parts) or "none"
    if d["missing"]:
        what += f"; {', '.join(d['missing'])} missing (the next onix command writes it, " \
            "or onix etc reset PATH)"
    lines = [f"etc drift: {what}"]
    if verbose:
        lines.extend(f"  {k} (local override)" for k in d["overrides"])
        lines.extend(f"  {k} (conflict: the new default is in "
                     f"{k.split(': ')[0]}.onix-new)" for k in d["conflicts"])
    return lines


def console(stderr: bool = False) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def warn(text: str) -> None:
    """A warning that arrives while a command runs, before its result is printed."""
    sys.stderr.write(f"warning: {text}\n")


def fail(exc: BaseException, *, as_json: bool, report: dict | None = None,
         interrupted: str = INTERRUPTED) -> int:
    """Report an exception that ended a command; return the exit code.

    An OnixError, or an environment failure from_exception can name (permissions, a
    full disk, a broken database), is one `error:` line on stderr and, with --json, the
    error document on stdout, laid over `report` for a command whose JSON keeps one shape
    even when it fails. Ctrl-C is exit 130. Anything else is a bug: it is re-raised,
    since its traceback is the useful report.
    """
    if isinstance(exc, KeyboardInterrupt):
        # Only a command with a fixed JSON shape has ever printed a document on Ctrl-C.
        _error(interrupted, as_json=as_json and report is not None,
               data={**(report or {}), "error": "interrupted"})
        return 130
    known = exc if isinstance(exc, OnixError) else from_exception(exc)
    if known is None:
        raise exc
    _error(known.line(), as_json=as_json, data={**(report or {}), **known.as_dict()})
    return known.exit_code


def _error(line: str, *, as_json: bool, data: dict) -> None:
    if as_json:
        print_json(data)
    sys.stderr.write(f"error: {line}\n")


def show(data: Any, human: Callable[[Any], None], *, as_json: bool,
         markup: bool = True) -> None:
    """Print a command's result: JSON, or its human lines between the notes it carries.

    `markup`: `human` prints through rich, so text from stones (a summary such as
    'x [/b]') is escaped first; plain writers get the data as it is.
    """
    if as_json:
        print_json(data)
        return
    if markup:
        data = _escaped(data)
    notes = data if isinstance(data, dict) else {}
    _notes("recovered", notes.get("recovered"))
    human(data)
    _notes("warning", notes.get("warnings"))


def _notes(label: str, lines: list[str] | None) -> None:
    if lines:
        out = console()
        for line in lines:
            out.print(f"[yellow]{label}:[/] {line}")


def _escaped(data: Any) -> Any:
    """Data with rich markup neutralised: a stone's summary like 'x [/b]' is text, not a tag."""
    from rich.markup import escape

    if isinstance(data, str):
        return escape(data)
    if isinstance(data, dict):
        return {k: _escaped(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_escaped(v) for v in data]
    return data


def run(fn: Callable[[], Any], human: Callable[[Any], None], *, as_json: bool,
        markup: bool = True) -> Any:
    """Call the api (`fn`), print its result with `show`, return it as plain data.

    A failure exits (SystemExit, not typer's Exit, so the fast status path can use this
    without typer) with the code `fail` gives.
    """
    try:
        result = fn()
    except (Exception, KeyboardInterrupt) as exc:
        raise SystemExit(fail(exc, as_json=as_json)) from None
    data = result.as_dict() if hasattr(result, "as_dict") else result
    show(data, human, as_json=as_json, markup=markup)
    return data


def progress(as_json: bool) -> Progress:
    """A progress bar on a terminal; none with --json, whose stdout is for the document."""
    p = RichProgress()
    if as_json:
        p.enabled = False
    return p


def print_table(columns: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """Rows under their column names, aligned, no box lines."""
    from rich.table import Table

    t = Table(box=None)
    for col in columns:
        t.add_column(col)
    for row in rows:
        t.add_row(*row)
    console().print(t)


def print_lines(lines: list[str]) -> None:
    """Plain lines on stdout, without rich (the fast status path)."""
    sys.stdout.write("".join(line + "\n" for line in lines))


class RichProgress(Progress):
    """A progress bar on stderr, only when stderr is a terminal."""

    def __init__(self) -> None:
        self._bar = None
        self._task = None
        self.enabled = sys.stderr.isatty()

    def start(self, label: str, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        from rich.progress import BarColumn, TaskProgressColumn, TextColumn
        from rich.progress import Progress as Bar

        self._bar = Bar(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                        console=console(stderr=True), transient=True)
        self._bar.start()
        self._task = self._bar.add_task(label, total=total)

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def note(self, text: str) -> None:
        sys.stderr.write(text + "\n")
