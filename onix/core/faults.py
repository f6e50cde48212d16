"""Crash injection for tests: ONIX_FAULT=<kind>:<step> kills the process at that step.

A real power cut cannot be produced on demand, so tests set this variable and
the engine calls `point()` at each named step. The process ends with
os._exit() — no exception handlers, no finally blocks, no flushes — which is
as close to a crash as a test can get without a VM. `<kind>` may be `*`.
"""

from __future__ import annotations

import os
import sys

CRASH_EXIT = 86


def point(kind: str, step: str) -> None:
    want = os.environ.get("ONIX_FAULT")
    if not want:
        return
    k, _, s = want.partition(":")
    if s == step and k in (kind, "*"):
        sys.stderr.write(f"onix: injected crash at {kind}:{step}\n")
        sys.stderr.flush()
        os._exit(CRASH_EXIT)
