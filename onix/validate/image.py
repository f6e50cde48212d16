"""Bootable disk images composed with onix's own transactions (`onix image build`).

`build_image` makes a raw GPT disk from stones of a signed repository, without
mounting anything and without copying a single file of /usr by hand: the image root
is composed with onix's own transactions (onix/validate/compose.py), then written as
an ESP and an ext4 root (onix/validate/disk.py). Reading a disk back after a boot is
onix/validate/readback.py.

The kernel command line (image.conf): root=LABEL=onixroot console=ttyS0 panic=-1
init=/usr/lib/onix/guest/init (when the image has the onix-guest stone) and the
caller's extra words. panic=-1 turns a kernel panic into a reboot, which ends QEMU's
-no-reboot boot at once.

Cache: the result is kept under `work`/<key>/ (root/ and disk.img), where key is a
hash of every input: the repository's signed index and signature, the public key, the
stone list, the sizes, the command line, boot.conf, the hostname, the fixtures and the
source of the modules that shape the disk (CODE). A second build with the same inputs
copies the cached disk (sparse) to `out`. The cache is bounded: after a build, only the
CACHE_KEEP most recently used entries are kept (use is the mtime of an entry's
result.json, touched by every build that takes it); older ones (a stone set or code
that changed) are removed. The cached root/ is read-only by convention (see
compose.clone_root).

Debian packages: coreutils (cp); those of compose.py, disk.py and readback.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from onix.core import proc
from onix.core.errors import OnixError
from onix.core.fsutil import sha256_file
from onix.validate.compose import compose_root, fixtures_hash, live_state
from onix.validate.disk import (
    ESP_TYPE,
    ROOT_LABEL,
    ROOT_TYPE,
    Partition,
    make_disk,
    parse_size,
    partition_of,
)

FORMAT = 1
GUEST_INIT = "/usr/lib/onix/guest/init"
# What a validation image holds: the boot chain, s6 and Nix through the integration
# stone, and the guest's init and runner. `onix` (with python) joins when it is built.
DEFAULT_STONES = ("busybox", "linux", "firmware", "systemd-boot", "onix-exchange",
                  "onix-nix-integration", "onix-guest")
OPTIONAL_STONES = ("onix",)  # added by default_stones() when the repository has them
CACHE_KEEP = 3  # image cache entries kept (most recently used first)
# The modules whose code decides what lands on the disk: a change to one is a new image.
CODE = ("image.py", "compose.py", "disk.py")


@dataclass
class ImageResult:
    disk: Path  # the image at `out`
    root: Path  # the cached image root (read-only by convention; see compose.clone_root)
    key: str  # the input hash, the cache entry's name
    state: int  # the image's live state id
    fstx: str  # its fstx, what the guest's ready marker prints
    esp: Partition
    rootfs: Partition
    cached: bool  # True: the disk came from the cache
    seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["disk"], d["root"] = str(self.disk), str(self.root)
        return d


def default_work() -> Path:
    from onix.build.builder import default_cache_root

    return default_cache_root() / "images"


def default_stones(repo: Path) -> list[str]:
    """DEFAULT_STONES, plus OPTIONAL_STONES that the repository's index holds."""
    names = set()
    try:
        index = json.loads((Path(repo) / "index.json").read_text())
        names = {s.get("name") for s in index.get("stones", []) if isinstance(s, dict)}
    except (OSError, ValueError, AttributeError):
        pass
    return [*DEFAULT_STONES, *(n for n in OPTIONAL_STONES if n in names)]


def check_repo(repo: Path, key: Path) -> None:
    """One clear line when the repository has no signed index or the key is missing."""
    repo = Path(repo)
    for f in ("index.json", "index.json.sig"):
        if not (repo / f).is_file():
            raise OnixError(f"no {f}: not a signed onix repository", path=repo,
                            hint="build it with ./scripts/stones (just stones)")
    if not Path(key).is_file():
        raise OnixError("no such public key", path=key,
                        hint="give the repository's key with --key, or build the stones "
                             "with ./scripts/stones (just stones), which makes it")


def input_key(*, repo: Path, key: Path, stones: list[str], size: int, esp_size: int,
              cmdline: list[str], boot_conf: str, hostname: str,
              fixtures: bool = False) -> str:
    """The cache key of an image: a hash of every input (see the module docstring)."""
    repo = Path(repo)
    check_repo(repo, key)
    parts = {"format": FORMAT, "index": sha256_file(repo / "index.json"),
             "sig": sha256_file(repo / "index.json.sig"), "key": Path(key).read_text().strip(),
             "stones": list(stones), "size": size, "esp_size": esp_size,
             "cmdline": list(cmdline), "boot_conf": boot_conf, "hostname": hostname,
             "code": _code_hash(),
             "fixtures": fixtures_hash() if fixtures else None}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _code_hash() -> str:
    h = hashlib.sha256()
    for name in CODE:
        h.update((resources.files("onix.validate") / name).read_bytes())
    return h.hexdigest()


def prune_cache(work: Path, *, keep: int = CACHE_KEEP, spare: str = "") -> list[str]:
    """Remove all but the `keep` most recently used image cache entries (never `spare`,
    the entry in use); returns the removed keys. An entry is renamed away first, so a
    half-removed one is never taken for a cache hit."""
    work = Path(work)
    entries = []
    for d in work.iterdir() if work.is_dir() else ():
        r = d / "result.json"
        if not d.name.startswith(".") and r.is_file():
            entries.append((r.stat().st_mtime, d))
    entries.sort(reverse=True)
    removed = []
    for _, d in entries[keep:]:
        if d.name == spare:
            continue
        gone = work / f".{d.name}.removing.{os.getpid()}"
        try:
            os.rename(d, gone)
        except OSError:
            continue
        shutil.rmtree(gone, ignore_errors=True)
        removed.append(d.name)
    return removed


def build_image(*, out: Path, repo: Path, key: Path, stones: list[str] | None = None,
                size: int | str = "2G", esp_size: int | str = "128M",
                work: Path | None = None, cmdline: list[str] | None = None,
                boot_conf: str = "timeout = 0\n", hostname: str = "onix-guest",
                fixtures: bool = False,
                progress: Callable[[str], None] | None = None) -> ImageResult:
    """A bootable disk at `out` from `stones` of the signed repository (see the module
    docstring). `cmdline` adds kernel command-line words to the image's defaults."""
    say = progress or (lambda _msg: None)
    out, repo, key = Path(out).absolute(), Path(repo).absolute(), Path(key).absolute()
    stones = list(stones) if stones is not None else default_stones(repo)
    if not stones:
        raise OnixError("no stones for the image", hint="name the stones to install")
    size_b, esp_b = parse_size(size), parse_size(esp_size)
    words = [f"root=LABEL={ROOT_LABEL}", "console=ttyS0", "panic=-1"]
    if "onix-guest" in stones:
        words.append(f"init={GUEST_INIT}")
    words += list(cmdline or [])
    k = input_key(repo=repo, key=key, stones=stones, size=size_b, esp_size=esp_b,
                  cmdline=words, boot_conf=boot_conf, hostname=hostname, fixtures=fixtures)
    work = Path(work) if work is not None else default_work()
    entry = work / k
    seconds: dict[str, float] = {}
    cached = (entry / "result.json").is_file()
    if not cached:
        tmp = work / f".{k}.{os.getpid()}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        try:
            t = time.monotonic()
            say(f"composing the image root ({', '.join(stones)})")
            compose_root(tmp / "root", repo=repo, key=key, stones=stones, hostname=hostname,
                         cmdline=words, boot_conf=boot_conf, fixtures=fixtures,
                         fixtures_keydir=tmp / "keys")
            seconds["compose"] = round(time.monotonic() - t, 3)
            t = time.monotonic()
            say("writing the disk (ESP + ext4 root)")
            make_disk(tmp / "root", tmp / "disk.img", size=size_b, esp_size=esp_b, seed=k)
            seconds["disk"] = round(time.monotonic() - t, 3)
            state, fstx = live_state(tmp / "root")
            (tmp / "result.json").write_text(json.dumps(
                {"state": state, "fstx": fstx, "stones": stones, "seconds": seconds}))
            try:
                os.rename(tmp, entry)
            except OSError:
                if not (entry / "result.json").is_file():  # not a lost race: a failure
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    meta = json.loads((entry / "result.json").read_text())
    os.utime(entry / "result.json")  # used now: the cache keeps recently used entries
    prune_cache(work, keep=CACHE_KEEP, spare=k)
    t = time.monotonic()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    proc.run(["cp", "--sparse=always", "--reflink=auto", entry / "disk.img", tmp_out],
             timeout=600)
    os.replace(tmp_out, out)
    seconds["copy"] = round(time.monotonic() - t, 3)
    esp, rootfs = partition_of(out, ESP_TYPE), partition_of(out, ROOT_TYPE)
    return ImageResult(disk=out, root=entry / "root", key=k, state=meta["state"],
                       fstx=meta["fstx"], esp=esp, rootfs=rootfs, cached=cached,
                       seconds=seconds if not cached else {**meta["seconds"], **seconds})
