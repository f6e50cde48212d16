"""Boot Loader Specification Type #1 files as onix writes and reads them.

Stdlib only: `onix status` reads loader.conf and the entries on its fast path.

Entry files — `$BOOT/loader/entries/<name>.conf`, one per retained state:

    # Written by onix boot sync for state 6 (6-a17c). The next sync rewrites it.
    title ONIX (6-a17c)
    version 12
    sort-key onix
    linux /onix/vmlinuz-6.1.0-56-cloud-amd64-3f2a9c0d1e2b4a5c
    initrd /onix/initrd-6.1.0-56-cloud-amd64-9ab0c1d2e3f4a5b6.img
    options root=LABEL=onixroot rw onix.fstx=6-a17c

Names carry the UAPI boot-assessment counter while a state is unproven:

    onix-6-a17c+3.conf      never booted, 3 tries left
    onix-6-a17c+2-1.conf    systemd-boot renamed it at a boot: 2 left, 1 done
    onix-6-a17c+0-3.conf    no tries left: systemd-boot sorts it last ("bad")
    onix-6-a17c.conf        blessed (onix boot mark-good): counting is over

systemd-boot 252 uses the whole file name, counter included, as the entry id
(checked in QEMU: `default onix-1+3.conf` stops matching once the file is renamed
to `onix-1+2-1.conf` at boot, and the top-sorted entry is booted instead). So
loader.conf names the file as it is now, and onix renames and rewrites both.

loader.conf — `$ESP/loader/loader.conf`: onix owns the `default` line only and
keeps every other line the user wrote; it adds `timeout 3` when there is none.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

PREFIX = "onix-"
NAME_RE = re.compile(r"^onix-(?P<fstx>\d+-[0-9a-f]+)(?:\+(?P<left>\d+)(?:-(?P<done>\d+))?)?\.conf$")


@dataclass(frozen=True)
class EntryName:
    """A parsed entry file name: the state's fstx and its boot counter, if any."""

    fstx: str
    tries_left: int | None = None  # None: blessed, no counting
    tries_done: int = 0

    @classmethod
    def parse(cls, name: str) -> EntryName | None:
        m = NAME_RE.match(name)
        if m is None:
            return None
        left = m.group("left")
        return cls(fstx=m.group("fstx"), tries_left=int(left) if left is not None else None,
                   tries_done=int(m.group("done") or 0))

    @property
    def file(self) -> str:
        if self.tries_left is None:
            return f"{PREFIX}{self.fstx}.conf"
        done = f"-{self.tries_done}" if self.tries_done else ""
        return f"{PREFIX}{self.fstx}+{self.tries_left}{done}.conf"

    @property
    def state_id(self) -> int:
        return int(self.fstx.split("-", 1)[0])

    @property
    def bad(self) -> bool:
        """systemd-boot has given up on it (sorted last, never picked on its own)."""
        return self.tries_left == 0

    @property
    def blessed(self) -> bool:
        return self.tries_left is None


def render_entry(*, state_id: int, fstx: str, title: str, version: str, linux: str,
                 initrd: str, options: str) -> str:
    return (f"# Written by onix boot sync for state {state_id} ({fstx}). "
            "The next sync rewrites it.\n"
            f"title {title}\nversion {version}\nsort-key onix\nlinux {linux}\n"
            f"initrd {initrd}\noptions {options}\n")


def parse_entry(text: str) -> dict[str, str]:
    """Key → value of a Type #1 entry (first occurrence; `initrd` may repeat, joined by space)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, value = _kv(line)
        if key == "initrd" and key in out:
            out[key] += " " + value
        else:
            out.setdefault(key, value)
    return out


def _kv(line: str) -> tuple[str, str]:
    """`key value` as systemd-boot reads it: split at the first run of spaces or tabs."""
    parts = line.strip().split(None, 1)
    return (parts[0], parts[1].strip()) if len(parts) == 2 else ((parts or [""])[0], "")


def entries_dir(boot: Path) -> Path:
    return boot / "loader" / "entries"


def loader_conf(esp: Path) -> Path:
    return esp / "loader" / "loader.conf"


def list_entries(boot: Path) -> dict[str, EntryName]:
    """Our entries on $BOOT by fstx (other files in loader/entries are not ours)."""
    out: dict[str, EntryName] = {}
    try:
        names = sorted(p.name for p in entries_dir(boot).iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return out
    for name in names:
        parsed = EntryName.parse(name)
        if parsed is not None:
            # Two files for one state (a crash between writing a renamed copy and deleting the
            # old one): the blessed or the one with more tries left wins; sync removes the other.
            cur = out.get(parsed.fstx)
            if cur is None or _rank(parsed) > _rank(cur):
                out[parsed.fstx] = parsed
    return out


def _rank(n: EntryName) -> tuple[int, int]:
    return (1, 0) if n.tries_left is None else (0, n.tries_left)


def read_default(esp: Path) -> str | None:
    """The `default` of loader.conf, exactly as written (None without one)."""
    try:
        text = loader_conf(esp).read_text(errors="replace")
    except OSError:
        return None
    value = None
    for line in text.splitlines():
        key, rest = _kv(line)
        if key == "default":
            value = rest  # systemd-boot: the last one wins
    return value


LOADER_HEADER = (
    "# Written by onix boot sync: it owns the default line (exact file name; systemd-boot",
    "# boots the top entry for a name that does not match). Other lines are yours.",
)


def update_loader_conf(old: str | None, *, default: str, timeout: int) -> str:
    """loader.conf with our default line; the user's other lines kept as they were."""
    lines = [] if old is None else old.splitlines()
    def key(line: str) -> str:
        return _kv(line)[0]

    kept = [ln for ln in lines if key(ln) != "default" and ln not in LOADER_HEADER]
    body = [f"default {default}"]
    if not any(key(ln) == "timeout" for ln in kept):
        body.append(f"timeout {timeout}")
    return "\n".join([*LOADER_HEADER, *body, *kept]).rstrip("\n") + "\n"
