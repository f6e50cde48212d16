"""Terminal output: calm rich text for people, JSON for scripts, progress on stderr."""

from __future__ import annotations

import json
import sys
from typing import Any

from onix.core.progress import Progress


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
    if r["boot"]["esp"] is not None:
        lines.append(f"boot entry: {r['boot_entry'] or 'none (loader.conf names no default)'}")
    nix = r.get("nix")
    if nix is not None:
        daemon = nix["daemon"] if nix["daemon"] == "healthy" else \
            f"{nix['daemon']} ({nix['daemon_reason']})"
        lines.append(f"nix daemon: {daemon}")
        d = nix["drift"]
        n = len(d["overrides"])
        what = f"{n} local override{'s' if n != 1 else ''}" if n else "none"
        if d["missing"]:
            what += f"; {', '.join(d['missing'])} missing (onix nix seed)"
        lines.append(f"etc drift: {what}")
        if verbose:
            lines.extend(f"  nix.conf: {k}" for k in d["overrides"])
        lines.extend(f"  error: {e}" for e in d["errors"])
        lines.append(f"opengl: {nix['opengl']}")
    pinned = f" (pinned: {', '.join(map(str, r['pinned']))})" if r["pinned"] else ""
    lines.append(f"states: {r['states']}{pinned}")
    lines.append(f"store: {human_bytes(r['store_bytes'])}")
    lines.extend(f"note: {n}" for n in r["notes"])
    return lines


def console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def error(line: str, *, as_json: bool = False, data: dict | None = None) -> None:
    if as_json:
        print_json(data or {"error": line})
    sys.stderr.write(f"error: {line}\n")


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
