"""Bootable disk images composed with onix's own transactions, and reading them back.

`build_image` makes a raw GPT disk from stones of a signed repository, without
mounting anything and without copying a single file of /usr by hand:

1. An image root is composed in a private directory: /etc basics (below), the kernel
   command line in etc/kernel/cmdline.d/image.conf, etc/onix/boot.conf, and an empty
   ESP directory `boot/` (onix/esp.py takes ROOT/boot for a root that has no ROOT/efi,
   and a running guest finds the ESP mounted on /boot). Then the library does what
   `onix repo add` and `onix install` do (api.repo_add, api.install): one
   transaction makes state 1, and its boot sync writes the BLS entry, the kernel, the
   initrd and systemd-boot into boot/. Last, what `onix nix seed` does
   (nixplane.seed_session, runtime dirs included), so the image's /nix is ready for
   nix-daemon even when the image has no onix of its own to run it at boot.
2. The disk: an ESP (FAT32 labelled ONIXESP, made with mformat and filled with mcopy
   from boot/) and the root (ext4 labelled onixroot, made with mkfs.ext4 -d from the
   root directory), each made as a file of its own and written into the disk file at
   its offset, data extents only (like dd conv=notrunc,sparse, without reading the
   holes); the partition table is written by sfdisk on the disk file. The GUIDs are
   derived from the input hash, so one input gives one disk.

/etc basics: passwd, group and shadow with root (uid 0) and alice (uid 1000, home
/home/alice, for the Nix profile scenarios; both without a password), hostname,
/etc/profile (sources /etc/profile.d/*.sh, where onix-nix-integration's nix.sh is
materialised). The nixbld group and users are added by the transaction's Nix seam.

The kernel command line (image.conf): root=LABEL=onixroot console=ttyS0 panic=-1
init=/usr/lib/onix/guest/init (when the image has the onix-guest stone) and the
caller's extra words. panic=-1 turns a kernel panic into a reboot, which ends QEMU's
-no-reboot boot at once.

Cache: the result is kept under `work`/<key>/ (root/ and disk.img), where key is a
hash of every input: the repository's signed index and signature, the public key, the
stone list, the sizes, the command line, boot.conf, the hostname and this module's
source. A second build with the same inputs copies the cached disk (sparse) to `out`.
The cache is bounded: after a build, only the CACHE_KEEP most recently used entries
are kept (use is the mtime of an entry's result.json, touched by every build that takes
it); older ones (a stone set or an image.py that changed) are removed.
The cached root/ is read-only by convention: to change an image, clone it
(`clone_root`), change the clone with onix (api.install...), and `make_disk`.

Reading a disk back, nothing mounted:
    read_file(disk, path) -> bytes          a file of the root (debugfs, at the offset)
    write_file(disk, path, data)            put a file into the root (debugfs -w)
    esp_files(disk) -> list[str]            every file on the ESP (mtools, -i disk@@off)
    esp_read(disk, path) -> bytes           one file of the ESP
    partitions(disk) -> list[Partition]     the GPT (sfdisk --json)

Debian packages: e2fsprogs (mkfs.ext4, debugfs, e2fsck, dumpe2fs), mtools, fdisk (sfdisk),
coreutils (dd, cp).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from onix.core import proc
from onix.core.errors import OnixError

FORMAT = 1
ROOT_LABEL = "onixroot"
ESP_LABEL = "ONIXESP"
SECTOR = 512
ALIGN = 1 << 20  # partitions start on MiB boundaries
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
ROOT_TYPE = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"  # Linux root (x86-64), UAPI DPS
GUEST_INIT = "/usr/lib/onix/guest/init"
# What a validation image holds: the boot chain, s6 and Nix through the integration
# stone, and the guest's init and runner. `onix` (with python) joins when it is built.
DEFAULT_STONES = ("busybox", "linux", "firmware", "systemd-boot", "onix-exchange",
                  "onix-nix-integration", "onix-guest")
OPTIONAL_STONES = ("onix",)  # added by default_stones() when the repository has them
USERS = (("root", 0, "/root"), ("alice", 1000, "/home/alice"))
CACHE_KEEP = 3  # image cache entries kept (most recently used first)

# Validation fixtures (build_image(fixtures=True)), for the scenarios of onix/validate.py.
# Package data (onix/validate/fixtures), not the checkout's: an installed onix builds them.
FIXTURES = resources.files("onix.validate") / "fixtures"
NIX_FIXTURES = FIXTURES / "nix"
NIX_FIXTURES_AT = "srv/onix-nix"  # the local flake `nixpkgs` and its registry.json
TEST_REPO_AT = "srv/onix-repo"  # a signed repository of the tiny TEST_STONES
TEST_REPO_NAME = "test"
# Scenario 4 (mesa-rollback), only when the repository holds both Mesa sets (their
# manifests and every stone they list): each set's stone files in /srv/onix-mesa/<dir>/
# (with a `files` list), and the "GUI app" (fixtures/gui-app) as a registered store
# path in the image's /nix/store, GC-rooted by /nix/var/nix/gcroots/onix-egl-frame; its
# store path is in /srv/onix-mesa/app.
MESA_AT = "srv/onix-mesa"
MESA_SETS = {"22": "22.3.6", "25": "25.0.7"}  # dir -> Mesa version (manifest mesa-V-1)
GUI_APP = FIXTURES / "gui-app"
GUI_APP_NAME = "egl-frame-1.0"
# Offline Nix for the guest (no network): a local edit of /etc/nix/nix.conf, which onix
# keeps and reports as drift (docs/nix-plane.md); the same words fixtures/nix/nix-test.conf
# appends in the namespace tests.
NIX_OFFLINE = ("\n# -- onix image build (fixtures): offline Nix for validation --\n"
               "substituters =\n"
               f"flake-registry = /{NIX_FIXTURES_AT}/registry.json\n")
# name -> (summary, {path below the stone's root: text})
TEST_STONES: dict[str, tuple[str, dict[str, str]]] = {
    "onix-test-hello": ("a marker file: a second machine state to boot",
                        {"usr/share/onix-test/hello": "hello from onix-test-hello\n"}),
    "onix-test-extra": ("another marker file: a third machine state",
                        {"usr/share/onix-test/extra": "extra\n"}),
    # A state that cannot finish booting: its kernel command-line snippet names an init
    # that does not exist, so the initrd stops ("no ... in the root file system") and
    # reboots; systemd-boot counts the try and falls back (docs/boot.md).
    "onix-test-broken-init": ("a state that cannot boot: init= names a missing file",
                              {"usr/lib/kernel/cmdline.d/zz-onix-test-broken.conf":
                               "init=/usr/lib/onix-test/no-such-init\n"}),
}


@dataclass
class Partition:
    number: int
    start: int  # bytes
    size: int  # bytes
    type: str
    uuid: str
    name: str


@dataclass
class ImageResult:
    disk: Path  # the image at `out`
    root: Path  # the cached image root (read-only by convention; see clone_root)
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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _size(size: str | int) -> int:
    if isinstance(size, int):
        return size
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    s = size.strip().upper().removesuffix("B").removesuffix("I")
    try:
        return int(s[:-1]) * units[s[-1]] if s[-1] in units else int(s)
    except (ValueError, IndexError):
        raise OnixError(f"size {size!r} is not a size",
                        hint="write e.g. 2G, 512M or bytes") from None


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
    repo = Path(repo)
    check_repo(repo, key)
    parts = {"format": FORMAT, "index": _sha256(repo / "index.json"),
             "sig": _sha256(repo / "index.json.sig"), "key": Path(key).read_text().strip(),
             "stones": list(stones), "size": size, "esp_size": esp_size,
             "cmdline": list(cmdline), "boot_conf": boot_conf, "hostname": hostname,
             "code": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
             "fixtures": _fixtures_hash() if fixtures else None}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _fixtures_hash() -> str:
    h = hashlib.sha256(json.dumps(TEST_STONES, sort_keys=True).encode())
    for fixture in (NIX_FIXTURES, GUI_APP):
        with resources.as_file(fixture) as top:
            for p in sorted(top.rglob("*")):
                if p.is_file():
                    h.update(str(p.relative_to(top.parent)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def mesa_sets(repo: Path) -> dict[str, list[str]] | None:
    """{dir: [stone file, ...]} of both Mesa sets (MESA_SETS) when the repository holds
    their manifests and every stone they list; None otherwise."""
    out: dict[str, list[str]] = {}
    for d, v in MESA_SETS.items():
        m = Path(repo) / f"mesa-{v}-1.manifest.json"
        try:
            files = [s["file"] for s in json.loads(m.read_text())["stones"]]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not files or not all((Path(repo) / f).is_file() for f in files):
            return None
        out[d] = files
    return out


def _glvnd_from_stone(stone: Path, dest: Path) -> None:
    """glvnd's libEGL.so.1 and libGLdispatch.so.0 (symlinks followed) out of a mesa stone."""
    from onix.machine.layout import FILE, SYMLINK
    from onix.machine.stone import Stone

    libdir = "lib/x86_64-linux-gnu/"
    want = {"libEGL.so.1", "libGLdispatch.so.0"}
    with Stone(stone) as s:
        by = {e.path: e for e in s.layout}
        digests: dict[str, str] = {}
        for name in want:
            e = by.get(libdir + name)
            for _ in range(8):
                if e is None or e.kind != SYMLINK:
                    break
                t = e.target
                e = by.get(t.lstrip("/").removeprefix("usr/") if t.startswith("/")
                           else libdir + t)
            if e is None or e.kind != FILE:
                raise OnixError(f"the mesa stone has no {name}", path=stone)
            digests[e.digest] = name
        dest.mkdir(parents=True, exist_ok=True)
        for digest, _n, chunks in s.contents():
            data = b"".join(chunks)
            if digest in digests:
                (dest / digests[digest]).write_bytes(data)
    if not all((dest / n).is_file() for n in want):
        raise OnixError("could not read glvnd out of the mesa stone", path=stone)


def add_mesa(root: Path, repo: Path, sets: dict[str, list[str]]) -> str:
    """Scenario 4's fixtures (see MESA_AT); returns the app's store path."""
    root, repo = Path(root), Path(repo)
    srv = root / MESA_AT
    for d, files in sets.items():
        (srv / d).mkdir(parents=True, exist_ok=True)
        for f in files:
            other = next((srv / o / f for o in sets if (srv / o / f).is_file()), None)
            if other is not None:  # in both sets (libLLVM-15...): one copy, linked
                os.link(other, srv / d / f)
            else:
                shutil.copyfile(repo / f, srv / d / f)
                os.chmod(srv / d / f, 0o644)
        (srv / d / "files").write_text("".join(f"{f}\n" for f in files))
    scratch = root.parent / ".gui-app"
    try:
        mesa22 = next(f for f in sets["22"] if f.startswith("mesa-"))
        _glvnd_from_stone(repo / mesa22, scratch / "glvnd")
        app = scratch / GUI_APP_NAME
        with resources.as_file(GUI_APP) as src:  # build.sh finds egl-frame.c beside itself
            proc.run([proc.which("sh"), str(src / "build.sh"), str(app),
                      str(scratch / "glvnd")], timeout=300)
        nix_store = proc.which("nix-store")
        r = proc.run([nix_store, "--store", f"local?root={root}", "--add", str(app)],
                     timeout=300)
        path = r.stdout.decode().strip().splitlines()[-1]
    finally:
        if scratch.exists():
            proc.run(["chmod", "-R", "u+w", str(scratch)], check=False)
            shutil.rmtree(scratch, ignore_errors=True)
    if not path.startswith("/nix/store/") or not (root / path.lstrip("/")).is_dir():
        raise OnixError(f"nix-store --add gave {path!r}", path=root)
    gcroots = root / "nix/var/nix/gcroots"
    gcroots.mkdir(parents=True, exist_ok=True)
    (gcroots / "onix-egl-frame").unlink(missing_ok=True)
    os.symlink(path, gcroots / "onix-egl-frame")
    (srv / "app").write_text(path + "\n")
    return path


# -- the image root --------------------------------------------------------------------


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)


def write_etc(root: Path, *, hostname: str, cmdline: list[str], boot_conf: str) -> None:
    """The /etc basics, the kernel command line and boot.conf (see the module docstring)."""
    etc = root / "etc"
    _write(etc / "passwd", "".join(f"{u}:x:{i}:{i}:{u}:{home}:/bin/sh\n"
                                   for u, i, home in USERS))
    _write(etc / "group", "".join(f"{u}:x:{i}:\n" for u, i, _ in USERS))
    _write(etc / "shadow", "".join(f"{u}::19000:0:99999:7:::\n" for u, _, _ in USERS), 0o600)
    _write(etc / "hostname", f"{hostname}\n")
    _write(etc / "hosts", f"127.0.0.1 localhost\n127.0.1.1 {hostname}\n")
    _write(etc / "profile", "# ONIX image: login shells\n"
           "export PATH=/usr/local/bin:/usr/bin:/usr/sbin\n"
           "for f in /etc/profile.d/*.sh; do [ -r \"$f\" ] && . \"$f\"; done\nunset f\n")
    _write(etc / "kernel" / "cmdline.d" / "image.conf",
           "# Written by onix image build\n" + " ".join(cmdline) + "\n")
    _write(etc / "onix" / "boot.conf", "# Written by onix image build\n" + boot_conf)
    for u, i, home in USERS:
        d = root / home.lstrip("/")
        d.mkdir(parents=True, exist_ok=True)
        os.chown(d, i, i)
        os.chmod(d, 0o700 if u == "root" else 0o755)


def compose_root(root: Path, *, repo: Path, key: Path, stones: list[str], hostname: str,
                 cmdline: list[str], boot_conf: str, fixtures: bool = False,
                 fixtures_keydir: Path | None = None) -> object:
    """A fresh image root with state 1 installed from the repository; returns the
    transaction's Result."""
    from onix import api
    from onix.nix import plane as nixplane

    root = Path(root)
    root.mkdir(parents=True)
    for d in ("boot", "dev", "proc", "sys", "run", "tmp", "var/lib", "var/log", "home"):
        (root / d).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    write_etc(root, hostname=hostname, cmdline=cmdline, boot_conf=boot_conf)
    api.repo_add(root, name="local", uri=str(Path(repo).absolute()), public_key=str(key))
    result = api.install(root, list(stones))
    with api.session(root, create=False) as s:
        nixplane.seed_session(s, runtime=True)
    if fixtures:
        add_fixtures(root, keydir=Path(fixtures_keydir or root.parent))
        sets = mesa_sets(repo)
        if sets:
            add_mesa(root, repo, sets)
    return result


def add_fixtures(root: Path, *, keydir: Path) -> None:
    """The validation fixtures in an image root (what the scenarios use in the guest):

    * /srv/onix-repo: TEST_STONES packed and indexed, the index signed with a key made
      for this image (the private half stays in `keydir`, outside the image), configured
      as the repository `test` with onix repo add (onix.repo.add), its uri then set to
      the path the guest sees;
    * /srv/onix-nix: fixtures/nix (the flake `nixpkgs` whose ripgrep is a tiny script,
      and registry.json naming it), the global flake registry of the guest's Nix;
    * /etc/nix/nix.conf: NIX_OFFLINE appended (a local edit: onix keeps it).
    """
    from onix import api
    from onix.core.paths import RootPaths
    from onix.machine.stone import StoneMeta, pack
    from onix.repo import index as repos
    from onix.repo import keys

    root = Path(root)
    srv = root / TEST_REPO_AT
    srv.mkdir(parents=True)
    keydir.mkdir(parents=True, exist_ok=True)
    priv = keydir / "test-repo.key"
    if not priv.exists():
        keys.generate(out=keydir / "test-repo", comment="onix validation test repository")
    src = root.parent / ".stone-src"
    for name, (summary, files) in sorted(TEST_STONES.items()):
        tree = src / name
        for rel, text in files.items():
            _write(tree / rel, text)
        pack(tree, srv / f"{name}-1-1-x86_64.stone",
             StoneMeta(name=name, version="1", summary=summary, license="MPL-2.0"))
    shutil.rmtree(src)
    repos.write_index(directory=srv, key=priv, name=TEST_REPO_NAME)
    api.repo_add(root, name=TEST_REPO_NAME, uri=str(srv),
                 public_key=str(keydir / "test-repo.pub"))
    conf = repos.config_path(RootPaths.of(root), TEST_REPO_NAME)
    conf.write_text("".join(f"uri = /{TEST_REPO_AT}\n" if ln.startswith("uri =") else ln
                            for ln in conf.read_text().splitlines(keepends=True)))
    dest = root / NIX_FIXTURES_AT
    with resources.as_file(NIX_FIXTURES) as src:
        shutil.copytree(src, dest, ignore=shutil.ignore_patterns("*.conf"))
    for p in [dest, *dest.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    nixconf = root / "etc/nix/nix.conf"
    nixconf.write_text(nixconf.read_text() + NIX_OFFLINE)


def clone_root(src: Path, dest: Path) -> Path:
    """A copy of an image root to change (hard links, owners, modes kept: cp -a)."""
    dest = Path(dest)
    if dest.exists():
        raise OnixError("already exists", path=dest, hint="clone into a new directory")
    dest.parent.mkdir(parents=True, exist_ok=True)
    proc.run(["cp", "-a", "--", str(src), str(dest)], timeout=600)
    return dest


def live_state(root: Path) -> tuple[int, str]:
    from onix.core.paths import read_state_id

    state = read_state_id(Path(root) / "usr")
    text = (Path(root) / "usr/lib/os-release").read_text()
    fstx = next((ln.split("=", 1)[1] for ln in text.splitlines()
                 if ln.startswith("ONIX_FSTX=")), "")
    if state is None or not fstx:
        raise OnixError("has no live onix state", path=root, hint="install stones into it first")
    return state, fstx


# -- the disk --------------------------------------------------------------------------


def _guid(seed: str, what: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"onix-image:{seed}:{what}")).upper()


def _mtools_env() -> dict[str, str]:
    return {**os.environ, "MTOOLS_SKIP_CHECK": "1", "MTOOLS_NO_VFAT": "0"}


def make_esp(src: Path, img: Path, *, size: int) -> Path:
    """A FAT32 file system holding src's files (mformat + mcopy: nothing mounted)."""
    mformat = proc.which("mformat")
    mcopy = proc.which("mcopy")
    img.unlink(missing_ok=True)
    with open(img, "wb") as f:
        f.truncate(size)
    env = _mtools_env()
    proc.run([mformat, "-i", img, "-F", "-v", ESP_LABEL, "::"], env=env, timeout=120)
    children = sorted(Path(src).iterdir()) if Path(src).is_dir() else []
    if children:
        proc.run([mcopy, "-i", img, "-s", "-p", "-Q", *children, "::/"], env=env, timeout=300)
    return img


def make_ext4(src: Path, img: Path, *, size: int) -> Path:
    """An ext4 file system holding the tree at src (mkfs.ext4 -d: nothing mounted)."""
    mkfs = proc.which("mkfs.ext4")
    img.unlink(missing_ok=True)
    proc.run([mkfs, "-q", "-F", "-L", ROOT_LABEL, "-E", "root_owner=0:0,nodiscard",
              "-d", src, img, f"{size // 1024}K"], timeout=600)
    return img


def _write_at(src: Path, disk: Path, offset: int) -> None:
    """Write the file system image src into disk at offset (what dd conv=notrunc,sparse
    seek=offset does), copying only src's data extents (SEEK_DATA/SEEK_HOLE): the
    region was a hole of a new disk file, so src's holes are zeros there already. dd
    reads the holes too, which took 5 s for a 2 GiB root."""
    with open(src, "rb") as fin, open(disk, "r+b") as fout:
        i, o = fin.fileno(), fout.fileno()
        end = os.fstat(i).st_size
        pos = 0
        while pos < end:
            try:
                data = os.lseek(i, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after pos
                break
            hole = os.lseek(i, data, os.SEEK_HOLE)
            while data < hole:
                n = os.copy_file_range(i, o, hole - data, data, offset + data)
                if n <= 0:
                    raise OnixError("short copy into the disk image", path=disk)
                data += n
            pos = hole
        os.fsync(o)


def make_disk(root: Path, out: Path, *, size: int | str = "2G", esp_size: int | str = "128M",
              seed: str | None = None, scratch: Path | None = None) -> tuple[Partition, Partition]:
    """The GPT disk of an image root: ESP from root/boot, ext4 root from the rest.

    Returns (esp, root) partitions. `seed` fixes the GUIDs (default: the out file name).
    """
    size, esp_size = _size(size), _size(esp_size)
    root, out = Path(root), Path(out)
    seed = seed or out.name
    esp_start = ALIGN
    root_start = esp_start + esp_size
    root_size = size - root_start - ALIGN  # the backup GPT needs the last 33 sectors
    if root_size < 64 << 20:
        raise OnixError(f"size {size} leaves no room for the root file system",
                        hint="give a bigger size")
    scratch = Path(scratch or out.parent)
    scratch.mkdir(parents=True, exist_ok=True)
    esp_img = scratch / f".{out.name}.esp.{os.getpid()}"
    root_img = scratch / f".{out.name}.root.{os.getpid()}"
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        tmp.unlink(missing_ok=True)
        with open(tmp, "wb") as f:
            f.truncate(size)
        sfdisk = proc.which("sfdisk")
        table = (f"label: gpt\nlabel-id: {_guid(seed, 'disk')}\nunit: sectors\n"
                 f"start={esp_start // SECTOR}, size={esp_size // SECTOR}, type={ESP_TYPE}, "
                 f"uuid={_guid(seed, 'esp')}, name=\"ESP\"\n"
                 f"start={root_start // SECTOR}, size={root_size // SECTOR}, type={ROOT_TYPE}, "
                 f"uuid={_guid(seed, 'root')}, name=\"onix-root\"\n")
        proc.run([sfdisk, "--quiet", "--no-reread", "--no-tell-kernel", tmp],
                 input=table.encode(), timeout=60)
        make_esp(root / "boot", esp_img, size=esp_size)
        _write_at(esp_img, tmp, esp_start)
        esp_img.unlink()
        make_ext4(root, root_img, size=root_size)
        _write_at(root_img, tmp, root_start)
        root_img.unlink()
        os.replace(tmp, out)
    finally:
        for f in (esp_img, root_img, tmp):
            f.unlink(missing_ok=True)
    parts = partitions(out)
    return parts[0], parts[1]


def partitions(disk: Path) -> list[Partition]:
    """The disk's GPT partitions, in table order (sfdisk --json)."""
    sfdisk = proc.which("sfdisk")
    r = proc.run([sfdisk, "--json", disk], timeout=60)
    table = json.loads(r.stdout)["partitiontable"]
    ss = int(table.get("sectorsize", SECTOR))
    out = []
    for i, p in enumerate(table.get("partitions", []), 1):
        out.append(Partition(number=i, start=int(p["start"]) * ss, size=int(p["size"]) * ss,
                             type=p.get("type", ""), uuid=p.get("uuid", ""),
                             name=p.get("name", "")))
    return out


def _part(disk: Path, type_: str) -> Partition:
    for p in partitions(disk):
        if p.type.upper() == type_:
            return p
    raise OnixError(f"no partition of type {type_}", path=disk,
                    hint="is this a disk made by onix image build?")


# -- reading (and writing) a disk without mounting it ---------------------------------


def _debugfs(disk: Path, request: str, *, write: bool = False) -> subprocess.CompletedProcess:
    debugfs = proc.which("debugfs")
    off = _part(disk, ROOT_TYPE).start
    return proc.run([debugfs, *(["-w"] if write else []), "-R", request,
                     f"{disk}?offset={off}"], timeout=120)


def read_file(disk: Path, path: str) -> bytes:
    """The bytes of `path` on the image's root file system; FileNotFoundError if absent.

    debugfs does not replay the journal: read a disk whose guest shut down cleanly (the
    guest's shutdown remounts / read-only first)."""
    debugfs = proc.which("debugfs")
    off = _part(Path(disk), ROOT_TYPE).start
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
    off = _part(Path(disk), ROOT_TYPE).start
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
    part = _part(disk, ROOT_TYPE)
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
        off = _part(disk, ROOT_TYPE).start
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
    off = _part(Path(disk), ESP_TYPE).start
    r = proc.run([mdir, "-i", f"{disk}@@{off}", "-/", "-b", "::/"], env=_mtools_env(),
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
    off = _part(Path(disk), ESP_TYPE).start
    r = proc.run([mtype, "-i", f"{disk}@@{off}", "::" + path], env=_mtools_env(),
                 check=False, timeout=60)
    if r.returncode != 0:
        raise FileNotFoundError(f"{path} is not on the ESP of {disk}")
    return r.stdout


def esp_copy_out(disk: Path, dest: Path) -> Path:
    """The ESP's files copied into dest (e.g. a root's boot/ after systemd-boot renamed
    entries), replacing what dest held."""
    mcopy = proc.which("mcopy")
    off = _part(Path(disk), ESP_TYPE).start
    dest = Path(dest)
    if dest.exists():
        for child in dest.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    dest.mkdir(parents=True, exist_ok=True)
    proc.run([mcopy, "-i", f"{disk}@@{off}", "-s", "-p", "-n", "-Q", "::/*", dest],
             env=_mtools_env(), timeout=300)
    return dest


# -- build_image -----------------------------------------------------------------------


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
                fixtures: bool = False, progress=None) -> ImageResult:
    """A bootable disk at `out` from `stones` of the signed repository (see the module
    docstring). `cmdline` adds kernel command-line words to the image's defaults."""
    say = progress or (lambda _msg: None)
    out, repo, key = Path(out).absolute(), Path(repo).absolute(), Path(key).absolute()
    stones = list(stones) if stones is not None else default_stones(repo)
    if not stones:
        raise OnixError("no stones for the image", hint="name the stones to install")
    size_b, esp_b = _size(size), _size(esp_size)
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
    esp, rootfs = _part(out, ESP_TYPE), _part(out, ROOT_TYPE)
    return ImageResult(disk=out, root=entry / "root", key=k, state=meta["state"],
                       fstx=meta["fstx"], esp=esp, rootfs=rootfs, cached=cached,
                       seconds=seconds if not cached else {**meta["seconds"], **seconds})
