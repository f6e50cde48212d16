"""Is nix-daemon there? The worker protocol's first bytes, and what s6 says.

A dead daemon leaves a stale socket behind, so `daemon_health` speaks the first bytes
of the Nix worker protocol over the socket (standard library only: `onix status` must
start fast) and, only when that fails, asks s6 about the nix-daemon service.
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path

from onix.core.errors import OnixError
from onix.core.paths import NIX_DAEMON_SERVICE, NIX_DAEMON_SOCKET, RootPaths
from onix.services import s6

WORKER_MAGIC_1 = 0x6E697863
WORKER_MAGIC_2 = 0x6478696F
STDERR_LAST = 0x616C7473


def handshake(sock_path: Path, *, timeout: float = 0.25) -> tuple[str, str]:
    """(state, reason) from the opening of the Nix worker protocol.

    The client sends WORKER_MAGIC_1 (a little-endian u64); a live daemon answers with
    WORKER_MAGIC_2 and its protocol version. The client then sends its own version and
    the two flags old daemons expect (no CPU affinity, no reserved space), and the daemon
    ends its setup with STDERR_LAST; closing after that is an ordinary disconnect, not
    an "unexpected end-of-file" in the daemon's log. Connecting alone proves nothing: a
    dead daemon leaves its socket file behind (ECONNREFUSED).
    """
    if not sock_path.exists():
        return "down", f"no socket at {sock_path}"
    import time

    deadline = time.monotonic() + timeout  # one budget for the whole exchange
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)

    def recv(n: int) -> bytes:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        s.settimeout(left)
        return s.recv(n)

    def read(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = recv(n - len(data))
            if not chunk:
                break
            data += chunk
        return data

    try:
        s.connect(str(sock_path))
        s.sendall(struct.pack("<Q", WORKER_MAGIC_1))
        data = read(16)
        if len(data) < 16:
            return "not ready", "the daemon closed the connection during the handshake"
        magic, version = struct.unpack("<QQ", data)
        if magic != WORKER_MAGIC_2:
            return "down", f"{sock_path} does not speak the Nix worker protocol"
        minor = version & 0xFF
        reply = struct.pack("<Q", version)
        if minor >= 14:
            reply += struct.pack("<Q", 0)  # no CPU affinity
        if minor >= 11:
            reply += struct.pack("<Q", 0)  # no reserved space
        s.sendall(reply)
        # Setup ends with STDERR_LAST (newer daemons send their version string first).
        tail = b""
        while struct.pack("<Q", STDERR_LAST) not in tail and len(tail) < 4096:
            chunk = recv(4096)
            if not chunk:
                break
            tail += chunk
    except ConnectionRefusedError:
        return "down", f"stale socket {sock_path}: nothing listens on it"
    except TimeoutError:
        return "not ready", "the daemon accepted the connection but did not answer in time"
    except OSError as e:
        return "down", f"{sock_path}: {e.strerror}"
    finally:
        s.close()
    return "healthy", f"protocol {version >> 8}.{minor}"


def _svstat(root: Path) -> str | None:
    """What s6 says about the nix-daemon service (None when it is not supervised)."""
    svc = root / NIX_DAEMON_SERVICE
    if not (svc / "supervise").is_dir():
        return None
    try:
        st = s6.fields(svc, timeout=2)
    except OnixError:  # not installed, or hung: the handshake's reason stands alone
        return None
    if st is None:
        return None
    secs = st["updownfor"]
    if st["up"] == "true":
        return f"up {secs} s, pid {st['pid']}" + ("" if st["ready"] == "true" else ", not ready")
    sig = st["signal"]
    why = f"killed by {sig}" if sig not in ("NA", "-1") else f"exit {st['exitcode']}"
    return f"down {secs} s ({why})"


def daemon_health(paths: RootPaths) -> tuple[str, str]:
    """healthy / down / not ready, with the reason (the handshake, then what s6 says)."""
    root = paths.root
    state, reason = handshake(root / NIX_DAEMON_SOCKET)
    if state != "healthy":
        supervised = _svstat(root)  # only then: s6-svstat is a process per status call
        if supervised:
            reason = f"{reason}; s6: {supervised}"
    return state, reason


