"""The one way onix runs another program.

Every subprocess goes through run() so that failures read the same everywhere: one
OnixError naming the program, its exit status and the last lines it printed.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

from onix.core import tools
from onix.core.errors import OnixError

log = logging.getLogger("onix.proc")


def which(program: str) -> str:
    """Full path of a program declared in onix.core.tools, or an error naming its package."""
    package = tools.package_of(program)
    found = shutil.which(program)
    if found is None:
        raise OnixError(f"{program} is not installed",
                        hint=f"install the Debian package {package} (./scripts/bootstrap does)")
    return found


def run(argv: Sequence[str | Path], *, check: bool = True, capture: bool = True,
        input: bytes | None = None, env: Mapping[str, str] | None = None,
        cwd: Path | None = None, timeout: float | None = None,
        output: BinaryIO | None = None, umask: int | None = None,
        ) -> subprocess.CompletedProcess:
    """Run argv (no shell). With check, a non-zero exit raises OnixError with its tail.

    With `output`, stdout and stderr both go to that open file as the program writes them
    (nothing is captured: a compiler's output is large, and a log must survive a crash),
    and stdin is /dev/null, since nobody is there to answer. `umask` sets the program's.
    """
    args = [str(a) for a in argv]
    if "/" not in args[0]:  # a bare name: declared, installed, and named in the error if not
        args[0] = which(args[0])
    log.debug("run: %s", " ".join(args))
    streams: dict[str, object] = {"capture_output": capture}
    if output is not None:
        streams = {"stdout": output, "stderr": subprocess.STDOUT}
        if input is None:
            streams["stdin"] = subprocess.DEVNULL
    try:
        r = subprocess.run(args, input=input, env=env, cwd=cwd, timeout=timeout, check=False,
                           umask=-1 if umask is None else umask, **streams)
    except FileNotFoundError as e:
        raise OnixError(f"cannot run {args[0]}: not found",
                        hint="install it (./scripts/bootstrap installs what onix needs)") from e
    except subprocess.TimeoutExpired as e:
        raise OnixError(f"{args[0]} did not finish within {timeout:.0f} s") from e
    if check and r.returncode != 0:
        if output is not None:
            detail = f"its output is in {getattr(output, 'name', 'the file it was given')}"
        else:
            tail = ((r.stderr or b"").strip() or (r.stdout or b"").strip()) if capture else b""
            last = tail.decode(errors="replace").splitlines()[-3:]
            detail = "; ".join(last) if last else "no output"
        raise OnixError(f"{Path(args[0]).name} failed with exit status {r.returncode}: {detail}")
    return r
