"""Reading a validation disk back, and writing a file into it, nothing mounted.

The harness reads a scenario's results off the disk after every boot and writes the
plan onto it before the first (onix/validate/scenarios.py); the tests check the ESP's
boot counting the same way.

    read_file(disk, path) -> bytes          a file of the root (debugfs, at the offset)
    list_dir(disk, path) -> list[str]       the names in a directory of the root
    write_file(disk, path, data)            put a file into the root (debugfs -w)
    needs_recovery(disk) -> bool            the guest left a journal to replay
    replay_journal(disk) -> bool            replay it (e2fsck on a copy)
    esp_files(disk) -> list[str]            every file on the ESP (mtools, -i disk@@off)
    esp_read(disk, path) -> bytes           one file of the ESP

Debian packages: e2fsprogs (debugfs, e2fsck, dumpe2fs), mtools, coreutils (dd).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from onix.core import proc
from onix.core.errors import OnixError
from onix.validate.disk import ESP_TYPE, ROOT_TYPE, mtools_env, partition_of


def _debugfs(disk: Path, request: str, *, write: bool = False) -> subprocess.CompletedProcess:
    debugfs = proc.which("debugfs")
    off = partition_of(disk, ROOT_TYPE).start
    return proc.run([debugfs, *(["-w"] if write else []), "-R", request,
                     f"{disk}?offset={off}"], timeout=120)


def read_file(disk: Path, path: str) -> bytes:
    """The bytes of `path` on the image's root file system; FileNotFoundError if absent.

    debugfs does not replay the journal: read a disk whose guest shut down cleanly (the
    guest's shutdown remounts / read-only first)."""
    debugfs = proc.which("debugfs")
    off = partition_of(Path(disk), ROOT_TYPE).start
    stat = proc.run([debugfs, "-R", f"stat {path}", f"{disk}?offset={off}"], timeout=120)
    err = stat.stderr.decode(errors="replace")
    if "not found" in err or "File not found" in err or not stat.stdout:
        raise FileNotFoundError(f"{path} is not on {disk}")
    if b"Type: directory" in stat.stdout:
        raise IsADirectoryError(f"{path} is a directory on {disk}")
    return proc.run([debugfs, "-R", f"cat {path}", f"{disk}?offset={off}"],
                    timeout=120).stdout


def list_dir(disk: Path, path: str) -> list[str]:
    """Names in a directory of the root file system (without . and ..)."""
    r = _debugfs(Path(disk), f"ls -p {path}")
    if b"File not found" in r.stderr or b"not found" in r.stderr:
        raise FileNotFoundError(f"{path} is not on {disk}")
    names = []
    for line in r.stdout.decode(errors="replace").splitlines():
        f = line.split("/")
        if len(f) >= 6 and f[5] not in (".", ".."):
            names.append(f[5])
    return names


def needs_recovery(disk: Path) -> bool:
    """True if the root file system has a journal to replay (its guest was stopped
    without the clean shutdown of onix/validate/guest/shutdown)."""
    dumpe2fs = proc.which("dumpe2fs")
    off = partition_of(Path(disk), ROOT_TYPE).start
    r = proc.run([dumpe2fs, "-h", f"{disk}?offset={off}"], check=False, timeout=60)
    for line in r.stdout.decode(errors="replace").splitlines():
        if line.startswith("Filesystem features:"):
            return "needs_recovery" in line.split()
    return False


def replay_journal(disk: Path) -> bool:
    """Replay the root file system's journal if the guest left one; True if it did.

    debugfs neither replays a journal nor sees what is only in it, and a file written
    by debugfs -w would be overwritten by the replay at the next mount. e2fsck cannot
    replay at an offset (it re-opens the device without it), so the partition is
    copied out, replayed, and the 1 MiB chunks that changed are written back."""
    disk = Path(disk)
    if not needs_recovery(disk):
        return False
    e2fsck = proc.which("e2fsck")
    part = partition_of(disk, ROOT_TYPE)
    tmp = disk.with_name(f".{disk.name}.replay.{os.getpid()}")
    chunk = 1 << 20
    try:
        proc.run(["dd", f"if={disk}", f"of={tmp}", f"bs={chunk}", f"skip={part.start}",
                  f"count={part.size}", "iflag=skip_bytes,count_bytes", "conv=sparse",
                  "status=none"], timeout=600)
        r = proc.run([e2fsck, "-y", "-E", "journal_only", tmp], check=False, timeout=600)
        if r.returncode not in (0, 1):  # 1: the file system was changed (the replay)
            out = (r.stdout + r.stderr).decode(errors="replace").strip().splitlines()[-3:]
            raise OnixError(f"e2fsck could not replay the journal (exit {r.returncode}): "
                            + " | ".join(out), path=disk, hint="check the disk with e2fsck")
        with open(tmp, "rb") as new, open(disk, "r+b") as old:
            pos = 0
            while pos < part.size:
                a = new.read(chunk)
                if not a:
                    break
                old.seek(part.start + pos)
                if old.read(len(a)) != a:
                    old.seek(part.start + pos)
                    old.write(a)
                pos += len(a)
            old.flush()
            os.fsync(old.fileno())
    finally:
        tmp.unlink(missing_ok=True)
    return True


def write_file(disk: Path, path: str, data: bytes, *, mode: int = 0o644) -> None:
    """Put a file into the root file system (debugfs -w), making its directories.

    For a disk whose guest is not running. The file is owned by root. A journal the
    guest left is replayed first."""
    import tempfile

    disk = Path(disk)
    replay_journal(disk)
    parts = [p for p in path.strip("/").split("/") if p]
    if not parts or ".." in parts or any(c in path for c in "\n\"'"):
        raise OnixError(f"{path!r} is not a plain absolute path", hint="name a file like /a/b")
    with tempfile.NamedTemporaryFile(dir=disk.parent, prefix=".write-") as tmp:
        tmp.write(data)
        tmp.flush()
        requests = []
        for i in range(1, len(parts)):
            requests.append(f"mkdir /{'/'.join(parts[:i])}")
        target = "/" + "/".join(parts)
        requests += [f"rm {target}", f"write {tmp.name} {target}",
                     f"sif {target} mode 0{0o100000 | mode:o}",
                     f"sif {target} uid 0", f"sif {target} gid 0"]
        debugfs = proc.which("debugfs")
        off = partition_of(disk, ROOT_TYPE).start
        script = Path(tmp.name + ".cmds")
        script.write_text("\n".join(requests) + "\n")
        try:
            proc.run([debugfs, "-w", "-f", script, f"{disk}?offset={off}"], timeout=120)
        finally:
            script.unlink(missing_ok=True)
    if read_file(disk, target) != data:
        raise OnixError(f"debugfs did not write {target}", path=disk)


def esp_files(disk: Path) -> list[str]:
    """Every file on the image's ESP, as /-paths (mtools, nothing mounted)."""
    mdir = proc.which("mdir")
    off = partition_of(Path(disk), ESP_TYPE).start
    r = proc.run([mdir, "-i", f"{disk}@@{off}", "-/", "-b", "::/"], env=mtools_env(),
                 timeout=60)
    out = []
    for line in r.stdout.decode(errors="replace").splitlines():
        line = line.strip()
        if line.startswith("::/") and not line.endswith("/"):
            out.append(line[2:])
    return sorted(out)


def esp_read(disk: Path, path: str) -> bytes:
    """One file of the ESP."""
    mtype = proc.which("mtype")
    off = partition_of(Path(disk), ESP_TYPE).start
    r = proc.run([mtype, "-i", f"{disk}@@{off}", "::" + path], env=mtools_env(),
                 check=False, timeout=60)
    if r.returncode != 0:
        raise FileNotFoundError(f"{path} is not on the ESP of {disk}")
    return r.stdout
