"""`onix nix check`: the Nix installers' self-test, through the daemon, as a non-root user.

Nix's multi-user installer ends by building a trivial derivation through the daemon
from a fresh shell; ONIX runs the same test on demand, on the machine it is called on
(a real system, or a test harness's namespace). It proves the whole path a user's build
takes: the client reaches nix-daemon over its socket (NIX_REMOTE=daemon), the daemon
accepts an untrusted user, a nixbld build user runs the builder, and the output lands in
the store readable by everyone.

The derivation's output is fixed, so after the first run it is already in the store and
a plain build would only prove that the daemon answers. A second invocation with
`--check` then builds it again and compares (allowed for untrusted users; nothing is
added to the store), so every check exercises a real build.

The build runs with a private, empty HOME (removed afterwards): the user's own Nix
configuration (~/.config/nix) cannot change the result, and the check leaves nothing in
their home. Only root can run it as another user (setpriv, from util-linux).
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
import time
from pathlib import Path

from onix.core import proc
from onix.core.errors import OnixError

NAME = "onix-nix-check"
EXPR = (f'derivation {{ name = "{NAME}"; system = builtins.currentSystem; '
        'builder = "/bin/sh"; args = ["-c" "echo ok > $out"]; }')
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
TAIL = 5  # lines of the command's output an error carries


def _hint(output: str) -> str:
    """What to do about a failed self-test, from what Nix printed."""
    text = output.lower()
    if "daemon-socket" in text or "cannot connect" in text or "connection refused" in text:
        return ("nix-daemon is not running or not ready: s6-svstat /run/service/nix-daemon "
                "shows its state, onix status its health")
    if "build users" in text or "nixbld" in text or "build-users-group" in text:
        return "the nixbld group or build users are missing: onix nix seed adds them"
    if "permission denied" in text:
        return ("a Nix directory has the wrong owner or mode: onix nix seed recreates the "
                "runtime directories, nix store verify --all checks the store")
    return ("see the daemon's log (/var/log/nix-daemon/current) and /etc/nix/nix.conf "
            "(onix status reports drift from the declared defaults)")


def _tail(r) -> str:
    text = ((r.stderr or b"") + (r.stdout or b"")).decode(errors="replace").strip()
    lines = text.splitlines()[-TAIL:]
    return "; ".join(line.strip() for line in lines) if lines else "no output"


def _as_user(user: str) -> tuple[list[str], pwd.struct_passwd]:
    """The argv prefix that runs a command as `user`, and the user's passwd entry."""
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise OnixError(f"no user {user}", hint="name an existing non-root user with --user") \
            from None
    if os.geteuid() == pw.pw_uid:
        return [], pw
    if os.geteuid() != 0:
        raise OnixError(f"only root can run the Nix self-test as {user}",
                        hint=f"run it as root, or as {user} itself")
    setpriv = proc.which("setpriv")
    return [setpriv, f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--"], pw


def check(*, user: str = "nobody", timeout: float = 60) -> dict:
    """Build a trivial derivation through nix-daemon as `user` and read its output.

    Returns {"ok": True, "path", "seconds", "user", "rebuilt"}; `rebuilt` is True when the
    output was already in the store and `nix-build --check` built it again. Raises
    OnixError with the command's last lines and a hint when anything fails.
    """
    start = time.monotonic()
    prefix, pw = _as_user(user)
    nix_build = proc.which("nix-build")
    home = Path(tempfile.mkdtemp(prefix="onix-nix-check-"))
    try:
        os.chown(home, pw.pw_uid, pw.pw_gid)
        env = {"PATH": os.environ.get("PATH") or DEFAULT_PATH, "HOME": str(home),
               "USER": user, "LOGNAME": user, "NIX_REMOTE": "daemon",
               "XDG_CACHE_HOME": str(home / ".cache"), "XDG_CONFIG_HOME": str(home / ".config"),
               "LANG": "C.UTF-8"}
        for key in ("NIX_CONF_DIR", "NIX_STATE_DIR"):
            if key in os.environ:
                env[key] = os.environ[key]
        build = [*prefix, nix_build, "--no-out-link", "-E", EXPR]
        r = _run(build, env=env, user=user, deadline=start + timeout)
        rebuilt = "will be built" not in r.stderr.decode(errors="replace")
        if rebuilt:  # already in the store: build it once more and compare
            r = _run([*build[:-2], "--check", *build[-2:]], env=env, user=user,
                     deadline=start + timeout)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    lines = r.stdout.decode(errors="replace").split()
    path = lines[-1] if lines else ""
    if not path.startswith("/") or not path.endswith(f"-{NAME}"):
        raise OnixError(f"the Nix self-test printed no store path: {_tail(r)}",
                        hint=_hint(_tail(r)))
    try:
        content = Path(path).read_text()
    except OSError as e:
        raise OnixError(f"the Nix self-test's output cannot be read ({e.strerror})", path=path,
                        hint="nix store verify --all checks the store") from None
    if content != "ok\n":
        raise OnixError(f"the Nix self-test's output holds {content[:40]!r}, not 'ok'",
                        path=path, hint="nix store verify --all checks the store")
    return {"ok": True, "path": path, "seconds": round(time.monotonic() - start, 3),
            "user": user, "rebuilt": rebuilt}


def _run(argv: list[str], *, env: dict, user: str, deadline: float):
    left = deadline - time.monotonic()
    if left <= 0:
        raise OnixError("the Nix self-test ran out of time",
                        hint="nix-daemon may be hung: s6-svc -r /run/service/nix-daemon")
    try:
        r = proc.run(argv, check=False, env=env, timeout=left)
    except OnixError as e:
        if "did not finish" in e.message:
            raise OnixError(f"the Nix self-test as {user} did not finish in time",
                            hint="nix-daemon may be hung: s6-svc -r /run/service/nix-daemon") \
                from e
        raise
    if r.returncode != 0:
        tail = _tail(r)
        raise OnixError(f"the Nix self-test as {user} failed (nix-build exit status "
                        f"{r.returncode}): {tail}", hint=_hint(tail))
    return r
