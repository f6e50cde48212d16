"""How long work reports progress without the library knowing about terminals.

The engine calls `start(label, total)`, `advance(n)` and `finish()`; the CLI
passes a rich-backed implementation, tests and --json runs get the silent one.
"""

from __future__ import annotations


class Progress:
    def start(self, label: str, total: int) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def finish(self) -> None:
        pass

    def note(self, text: str) -> None:
        pass


SILENT = Progress()
