"""The root of a validation image, composed with onix's own transactions.

compose_root makes, in a private directory: /etc basics (below), the kernel command
line in etc/kernel/cmdline.d/image.conf, etc/onix/boot.conf, and an empty ESP directory
`boot/` (onix/boot/esp.py takes ROOT/boot for a root that has no ROOT/efi, and a
running guest finds the ESP mounted on /boot). Then the library does what `onix repo
add` and `onix install` do (api.repo_add, api.install): one transaction makes state 1,
and its boot sync writes the BLS entry, the kernel, the initrd and systemd-boot into
boot/. Last, what `onix nix seed` does (nix/seed.py's seed_session, runtime dirs included),
so the image's /nix is ready for nix-daemon even when the image has no onix of its own
to run it at boot. With fixtures, the validation fixtures follow (add_fixtures,
add_mesa).

/etc basics: passwd, group and shadow with root (uid 0) and alice (uid 1000, home
/home/alice, for the Nix profile scenarios; both without a password), hostname,
/etc/profile (sources /etc/profile.d/*.sh, where the /etc merge puts
onix-nix-integration's declared nix.sh). The nixbld group and users are added by the
transaction's Nix seam.

A composed root is read-only by convention once cached (onix/validate/image.py): to
change an image, clone it (`clone_root`), change the clone with onix
(api.install...), and make its disk (onix.validate.disk.make_disk).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from importlib import resources
from pathlib import Path

from onix.core import proc
from onix.core.errors import OnixError

USERS = (("root", 0, "/root"), ("alice", 1000, "/home/alice"))

# Validation fixtures (build_image(fixtures=True)), for the scenarios of scenarios.py.
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
# Offline Nix for the guest (no network): a local edit of /etc/nix/nix.conf, which the
# /etc merge keeps key by key and reports as drift (docs/etc.md); the same words
# fixtures/nix/nix-test.conf appends in the namespace tests.
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
    from onix.nix import seed as nix_seed

    root = Path(root)
    root.mkdir(parents=True)
    for d in ("boot", "dev", "proc", "sys", "run", "tmp", "var/lib", "var/log", "home"):
        (root / d).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    write_etc(root, hostname=hostname, cmdline=cmdline, boot_conf=boot_conf)
    api.repo_add(root, name="local", uri=str(Path(repo).absolute()), public_key=str(key))
    result = api.install(root, list(stones))
    with api.session(root, create=False) as s:
        nix_seed.seed_session(s, runtime=True, etc_files=True)
    if fixtures:
        add_fixtures(root, keydir=Path(fixtures_keydir or root.parent))
        sets = mesa_sets(repo)
        if sets:
            add_mesa(root, repo, sets, keydir=Path(fixtures_keydir or root.parent))
    return result


def add_fixtures(root: Path, *, keydir: Path) -> None:
    """The validation fixtures in an image root (what the scenarios use in the guest):

    * /srv/onix-repo: TEST_STONES packed and indexed, the index signed with a key made
      for this image (the private half stays in `keydir`, outside the image), configured
      as the repository `test` with onix repo add (onix.repo.add), its uri then set to
      the path the guest sees;
    * /srv/onix-nix: fixtures/nix (the flake `nixpkgs` whose ripgrep is a tiny script,
      and registry.json naming it), the global flake registry of the guest's Nix;
    * /etc/nix/nix.conf: NIX_OFFLINE appended (a local edit: the /etc merge keeps its
      keys and applies the image's later defaults beside them).
    """
    from onix import api
    from onix.core.paths import RootPaths
    from onix.machine.stone import StoneMeta, pack
    from onix.repo import config, index, keys

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
    index.write_index(directory=srv, key=priv, name=TEST_REPO_NAME)
    api.repo_add(root, name=TEST_REPO_NAME, uri=str(srv),
                 public_key=str(keydir / "test-repo.pub"))
    conf = config.config_path(RootPaths.of(root), TEST_REPO_NAME)
    conf.write_text("".join(f"uri = /{TEST_REPO_AT}\n" if ln.startswith("uri =") else ln
                            for ln in conf.read_text().splitlines(keepends=True)))
    dest = root / NIX_FIXTURES_AT
    with resources.as_file(NIX_FIXTURES) as src:
        shutil.copytree(src, dest, ignore=shutil.ignore_patterns("*.conf"))
    for p in [dest, *dest.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    nixconf = root / "etc/nix/nix.conf"
    nixconf.write_text(nixconf.read_text() + NIX_OFFLINE)


def fixtures_hash() -> str:
    """A hash of every fixture an image with fixtures gets (part of its cache key)."""
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


def add_mesa(root: Path, repo: Path, sets: dict[str, list[str]], *, keydir: Path) -> str:
    """Scenario 4's fixtures (see MESA_AT); returns the app's store path.

    Each set is a signed repository of its own (signed with the test repository's key,
    whose public half is MESA_AT/key.pub), so the guest installs Mesa by name and its
    versioned dependencies choose the libraries: `mesa22` is configured here with
    priority 10 (above the image's own repository, whose stones the guest cannot fetch);
    the scenario adds `mesa25` itself before `onix install mesa=25.0.7`.
    """
    from onix import api
    from onix.core.paths import RootPaths
    from onix.repo import config, index

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
        index.write_index(directory=srv / d, key=keydir / "test-repo.key", name=f"mesa{d}")
    shutil.copyfile(keydir / "test-repo.pub", srv / "key.pub")
    api.repo_add(root, name="mesa22", uri=str(srv / "22"),
                 public_key=str(keydir / "test-repo.pub"), priority=10)
    conf = config.config_path(RootPaths.of(root), "mesa22")
    conf.write_text("".join(f"uri = /{MESA_AT}/22\n" if ln.startswith("uri =") else ln
                            for ln in conf.read_text().splitlines(keepends=True)))
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
