"""Where things live under a root. Every path the engine touches comes from here.

    <root>/usr                      the live machine tree (ours)
    <root>/{bin,sbin,lib,lib64}     symlinks into usr/
    <root>/.onix/store/ab/<obj>     content-addressed objects (see store.py)
    <root>/.onix/store/.tmp/        objects being imported, not yet admitted
    <root>/.onix/db/onix.db         SQLite state log (see db.py)
    <root>/.onix/states/<id>/usr    archived trees of inactive states
    <root>/.onix/staging/usr        the next tree while a transaction builds it
    <root>/.onix/cache/stones/      every imported stone, kept for `verify --fix`
    <root>/.onix/trash/             trees being deleted by prune
    <root>/.onix/lock               flock; one mutating onix per root
    <root>/.onix/boot-exchange      the initrd's note: it made an archived state live
    <root>/.onix/txn-running        marker: a journal that may exchange /usr is open
    <root>/.onix/cache/initrd/      initrds by input hash (initrd.py)
    <root>/.onix/cache/downloads/   stones fetched from repositories, by sha256 (repo/fetch.py)
    <root>/.onix/repos/<name>/      a repository's verified index and signature (repo/config.py)
    <root>/etc/onix/repos/<name>.conf   a configured repository (repo/config.py)
    <root>/run/service/             the live s6 scan directory (services/)
    <root>/run/opengl-driver -> /run/onix/opengl-driver-<fstx>   the graphics bridge (nix/bridge.py)
    <root>/nix/var/nix/gcroots/onix/    onix's GC roots, its one seam inside /nix (nix/gcroots.py)
    <root>/nix/var/nix/daemon-socket/socket   where nix-daemon listens (nix/daemon.py)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROOT_LINKS = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}
STATE_ID_FILE = ".stateID"  # relative to usr/
OS_RELEASE_FILE = "lib/os-release"  # relative to usr/
# The other planes' places under the root (relative to it), read and written through the
# confined walker (safepath), so they are plain relative strings.
REPO_CONFIG_DIR = "etc/onix/repos"
REPO_CACHE_DIR = ".onix/repos"
DOWNLOADS_DIR = ".onix/cache/downloads"
SCANDIR = "run/service"
NIX_DAEMON_SERVICE = f"{SCANDIR}/nix-daemon"
NIX_DAEMON_SOCKET = "nix/var/nix/daemon-socket/socket"
NIX_GCROOTS = "nix/var/nix/gcroots/onix"
OPENGL_BRIDGE = "run/opengl-driver"
OPENGL_DIRS = "run/onix"
GENERATED = (STATE_ID_FILE, OS_RELEASE_FILE)


@dataclass(frozen=True)
class RootPaths:
    root: Path

    @classmethod
    def of(cls, root: Path | str) -> RootPaths:
        return cls(Path(root).absolute())

    @property
    def usr(self) -> Path:
        return self.root / "usr"

    @property
    def nix(self) -> Path:
        return self.root / "nix"

    @property
    def onix(self) -> Path:
        return self.root / ".onix"

    @property
    def store(self) -> Path:
        return self.onix / "store"

    @property
    def store_tmp(self) -> Path:
        return self.store / ".tmp"

    @property
    def db_dir(self) -> Path:
        return self.onix / "db"

    @property
    def db(self) -> Path:
        return self.db_dir / "onix.db"

    @property
    def states(self) -> Path:
        return self.onix / "states"

    def state_tree(self, state_id: int) -> Path:
        return self.states / str(state_id) / "usr"

    @property
    def staging(self) -> Path:
        return self.onix / "staging"

    @property
    def staging_usr(self) -> Path:
        return self.staging / "usr"

    @property
    def cache(self) -> Path:
        return self.onix / "cache"

    @property
    def initrd_cache(self) -> Path:
        """Initrds by the hash of their inputs (initrd.py); only retained states' stay."""
        return self.cache / "initrd"

    @property
    def txn_marker(self) -> Path:
        """Exists while a journal row that may exchange /usr is open: the initrd then
        boots /usr as it is rather than exchange under an unfinished transaction."""
        return self.onix / "txn-running"

    @property
    def stone_cache(self) -> Path:
        return self.cache / "stones"

    @property
    def trash(self) -> Path:
        return self.onix / "trash"

    @property
    def boot_note(self) -> Path:
        """Left by the initrd (onix/boot/data/init) when it exchanged an old state into /usr."""
        return self.onix / "boot-exchange"

    @property
    def lock(self) -> Path:
        return self.onix / "lock"

    @property
    def state_id_file(self) -> Path:
        return self.usr / STATE_ID_FILE

    def initialized(self) -> bool:
        return self.db.exists()

    def ensure(self) -> None:
        """Create the .onix skeleton (idempotent); refuse one made of symlinks.

        A symlinked .onix (or part of it) would put the store, the database and
        every write onix makes outside the root.
        """
        from onix.core.errors import StateError

        self.root.mkdir(parents=True, exist_ok=True)
        if not self.onix.exists() and not self.onix.is_symlink():
            self.onix.mkdir(mode=0o755)
        for d in (self.onix, self.store, self.store_tmp, self.db_dir, self.states,
                  self.staging, self.cache, self.stone_cache, self.initrd_cache, self.trash,
                  self.lock, self.usr, self.staging_usr, self.txn_marker, self.boot_note):
            if d.is_symlink():
                raise StateError("is a symlink; onix keeps everything it writes inside the root",
                                 path=d, hint="replace it with the real file or directory")
        for d in (self.store, self.store_tmp, self.db_dir, self.states, self.staging,
                  self.cache, self.stone_cache, self.trash):
            d.mkdir(exist_ok=True)


def read_state_id(usr: Path) -> int | None:
    """The state a /usr tree says it is, from its .stateID (the truth on disk)."""
    try:
        text = (usr / STATE_ID_FILE).read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return int(text) if text.isascii() and text.isdigit() else None
