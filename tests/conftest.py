"""Shared test helpers: make stones from dicts (or by hand, hostile), snapshot roots, run
the real CLI, signing keys and a signed repository a test can rewrite.

The test directories mirror the packages of onix/ (tests/machine, tests/repo, …); this is
the only conftest.py, and pytest's default "prepend" import mode puts tests/ on sys.path,
so every test module can `from conftest import …` (and `import bootkit`, `import nixkit`)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import settings

from onix import api
from onix.machine import stone as stonefmt
from onix.machine.stone import StoneMeta, pack
from onix.repo import index as repo_index
from onix.repo import keys

# CI runs the same examples every time (a red CI must be reproducible); local runs explore.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

REPO = Path(__file__).resolve().parent.parent  # the checkout


def write_tree(dest: Path, files: dict[str, object]) -> None:
    """files: path under usr/ → bytes | str | ("symlink", target) | ("dir",) | (bytes, mode)."""
    usr = dest / "usr"
    usr.mkdir(parents=True, exist_ok=True)
    for rel, spec in files.items():
        p = usr / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(spec, tuple) and spec[0] == "symlink":
            os.symlink(spec[1], p)
        elif isinstance(spec, tuple) and spec[0] == "dir":
            p.mkdir(exist_ok=True)
        else:
            data, mode = (spec if isinstance(spec, tuple) else (spec, 0o644))
            p.write_bytes(data.encode() if isinstance(data, str) else data)
            os.chmod(p, mode)


@pytest.fixture
def make_stone(tmp_path: Path):
    counter = iter(range(10**6))

    def make(name: str, files: dict[str, object], *, version: str = "1.0", release: int = 1,
             depends: list[str] | None = None, provides: list[str] | None = None) -> Path:
        n = next(counter)
        src = tmp_path / f"src-{name}-{n}"
        write_tree(src, files)
        out = tmp_path / f"{name}-{version}-{release}-{n}.stone"
        pack(src, out, StoneMeta(name=name, version=version, release=release,
                                 summary=f"{name} test stone", depends=depends or [],
                                 provides=provides or []))
        return out

    return make


@pytest.fixture(scope="module")
def module_work(request: pytest.FixtureRequest,
                tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch directory shared by a module's tests, for modules that build something
    big once (an image, a stone set) from what this machine may lack: the module's
    skip_reason() names what is missing, and then every test that uses it skips."""
    reason = request.module.skip_reason()
    if reason:
        pytest.skip(reason)
    return tmp_path_factory.mktemp(request.module.__name__)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    return r


def snapshot(root: Path) -> dict[str, tuple]:
    """Everything about a tree that a byte-identical comparison should see (not times)."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in [*dirnames, *filenames, ""]:
            p = Path(dirpath) / name if name else Path(dirpath)
            rel = p.relative_to(root).as_posix()
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                what: object = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                what = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                what = None
            out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid,
                        st.st_gid, what)
    return out


def onix(*args: str, env: dict | None = None, check: bool = False,
         timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess (crashes and exit codes must be real)."""
    base = {k: v for k, v in os.environ.items() if k != "ONIX_FAULT"}
    full_env = {**base, "COLUMNS": "200", **(env or {})}
    r = subprocess.run([sys.executable, "-m", "onix", *map(str, args)], capture_output=True,
                       text=True, env=full_env, timeout=timeout, cwd=REPO)
    if check and r.returncode != 0:
        raise AssertionError(f"onix {' '.join(map(str, args))} failed ({r.returncode}):\n"
                             f"{r.stdout}\n{r.stderr}")
    return r


def onix_json(*args: str, env: dict | None = None) -> object:
    r = onix(*args, "--json", env=env, check=True)
    return json.loads(r.stdout)


def fake_nix(root: Path) -> None:
    """A small /nix tree shaped like Nix's: store paths, profiles, gcroots, db."""
    store = root / "nix" / "store"
    for h in ("aaaa-hello-2.12", "bbbb-glibc-2.38", "cccc-ripgrep-14.1"):
        (store / h / "bin").mkdir(parents=True)
        (store / h / "bin" / "x").write_text(h)
    prof = root / "nix" / "var" / "nix" / "profiles"
    prof.mkdir(parents=True)
    os.symlink("/nix/store/cccc-ripgrep-14.1", prof / "default-1-link")
    os.symlink("default-1-link", prof / "default")
    gc = root / "nix" / "var" / "nix" / "gcroots"
    gc.mkdir(parents=True)
    os.symlink("/nix/var/nix/profiles", gc / "profiles")
    db = root / "nix" / "var" / "nix" / "db"
    db.mkdir(parents=True)
    (db / "db.sqlite").write_bytes(b"SQLite format 3\0fake")


# -- hand-made stones, for feeding the reader hostile input ------------------------------


def craft(path: Path, *, meta: dict | None = None, layout: list, blobs: list[bytes]) -> Path:
    """Write a stone by hand, bypassing pack()'s checks, to feed the reader hostile input."""
    import blake3
    import zstandard

    m = {"name": "evil", "version": "1", "release": 1, "arch": "x86_64", "summary": "",
         "license": "", "provides": [], "depends": [], **(meta or {})}
    cctx = zstandard.ZstdCompressor(level=3)
    blobs = sorted(blobs, key=lambda b: blake3.blake3(b).hexdigest())
    index, off = [], 0
    for b in blobs:
        index.append([blake3.blake3(b).hexdigest(), off, len(b)])
        off += len(b)

    def payload(kind: int, plain: bytes, records: int) -> bytes:
        stored = cctx.compress(plain)
        return stonefmt.PAYLOAD_HEADER.pack(kind, stonefmt.ZSTD, 0, records, len(stored),
                                            len(plain), blake3.blake3(stored).digest()) + stored

    data = stonefmt.FILE_HEADER.pack(stonefmt.MAGIC, stonefmt.VERSION, 4, bytes(20))
    data += payload(stonefmt.META, json.dumps(m).encode(), 1)
    data += payload(stonefmt.LAYOUT, json.dumps(layout).encode(), len(layout))
    data += payload(stonefmt.INDEX, json.dumps(index).encode(), len(index))
    data += payload(stonefmt.CONTENT, b"".join(blobs), len(index))
    path.write_bytes(data)
    return path


def file_rec(path: str, content: bytes, mode: int = 0o644) -> list:
    """A layout record of a regular file with `content`, for craft()."""
    import blake3

    return [path, "file", mode, 0, 0, len(content), blake3.blake3(content).hexdigest()]


# -- a root with something installed, and refusals that must leave it as it was ----------


@pytest.fixture
def installed(root: Path, make_stone) -> Path:
    api.install(root, [make_stone("hello", {"bin/hello": ("hi", 0o755),
                                                    "lib/libc.so": "c" * 5000})])
    return root


def two_states(root: Path, make_stone) -> None:
    """hello 1 then hello 2: state 2 live, state 1 archived."""
    api.install(root, [make_stone("hello", {"bin/hello": ("v1", 0o755)})])
    api.install(root, [make_stone("hello", {"bin/hello": ("v2", 0o755)}, version="2")])


def assert_clean_failure(root: Path, args: list, *, match: str, env: dict | None = None,
                         code: int | None = None) -> str:
    """`onix *args --root root` fails with one `error:` line containing `match` (and exit
    `code`), and the root is byte-identical afterwards. Returns the line."""
    before = snapshot(root)
    r = onix(*args, "--root", root, env=env)
    assert r.returncode != 0, r.stdout
    if code is not None:
        assert r.returncode == code
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") and match in lines[0], lines[0]
    assert snapshot(root) == before
    return lines[0]


# -- signing keys and a signed repository -----------------------------------------------


@pytest.fixture
def signer(tmp_path: Path) -> tuple[Path, Path]:
    """(private key, public key) of a fresh repository key."""
    (tmp_path / "keys").mkdir()
    return keys.generate(out=tmp_path / "keys" / "test", comment="test key")


@pytest.fixture
def other_signer(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "keys2").mkdir()
    return keys.generate(out=tmp_path / "keys2" / "other", comment="someone else")


def resign(directory: Path, key: Path, edit) -> None:
    """Rewrite a signed index with `edit(index)` applied and sign it again: what a
    repository owner (or a stolen key) can publish."""
    index = json.loads((directory / "index.json").read_bytes())
    edit(index)
    data = repo_index._canonical(index)
    (directory / "index.json").write_bytes(data)
    (directory / "index.json.sig").write_bytes(keys.sign(data, key=key))


@pytest.fixture
def hostile(tmp_path: Path, make_stone, signer):
    """A signed repository with stones `evil` and `loner`; edit(fn) re-signs it changed."""
    d = tmp_path / "stones"
    d.mkdir()
    for name in ("evil", "loner"):
        s = make_stone(name, {f"bin/{name}": name})
        shutil.move(s, d / f"{name}.stone")
    repo_index.write_index(directory=d, key=signer[0], name="test")

    def edit(fn) -> Path:
        resign(d, signer[0], fn)
        return d

    return d, edit


def index_entry(index: dict, name: str) -> dict:
    return next(e for e in index["stones"] if e["name"] == name)


@pytest.fixture
def serve():
    """serve(dir) -> base URL of a ThreadingHTTPServer on 127.0.0.1 serving dir."""
    servers = []

    def start(directory: Path) -> str:
        class Quiet(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

        handler = functools.partial(Quiet, directory=str(directory))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        servers.append((server, thread))
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join()
