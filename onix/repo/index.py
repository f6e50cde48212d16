"""Stone repositories: signed indexes, their configuration in a root, fetching stones.

A repository is a directory of stones with a signed index beside them, reached as a
local directory, a file:// URL or over http(s).

On-disk formats
---------------
    <dir>/index.json       canonical JSON (sorted keys, no spaces, UTF-8, no trailing
                           newline), written by `onix index`; no timestamps, so indexing
                           the same stones twice gives identical bytes:
        {"format": 1, "name": <repository name>,
         "stones": [{"name", "version", "release", "arch", "summary", "license",
                     "provides": [...], "depends": [...],
                     "file": <stone file name, relative to index.json>,
                     "sha256": <hex of the whole stone file>, "size": <bytes>}, ...]}
        stones sorted by (name, version, release, file)
    <dir>/index.json.sig   keys.py signature over the exact bytes of index.json

    <root>/etc/onix/repos/<NAME>.conf      one repository, `key = value` lines
                                           (# comments and blank lines ignored):
        uri = <absolute directory | file://… | http(s)://…>
        key = onix-ed25519 <base64> <comment>     the public key its index must verify with
        priority = <int, higher wins, default 0>
    <root>/.onix/repos/<NAME>/index.json   the last fetched index and its signature,
    <root>/.onix/repos/<NAME>/index.json.sig   verified before they were put in place (the
                                           whole directory is swapped in with one
                                           renameat2 exchange, so the pair never mixes
                                           two fetches) and verified again on every load
    <root>/.onix/cache/downloads/<sha256>.stone   fetched stones, by the sha256 the index
                                           gives; written to `.<sha256>.stone.<pid>.tmp`,
                                           checked, then renamed

NAME is [a-z0-9][a-z0-9._-]*. Nothing here follows a symlink among the directories it
writes under the root (a scratch root's etc -> /etc must not put files in the host's
/etc). Every failure is one OnixError naming the file or URL, raised before anything
is written, or after what was written has been taken away again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from onix.core import safepath
from onix.core.errors import OnixError
from onix.core.fsutil import atomic_write, exchange, fsync_dir, read_nofollow, remove_tree
from onix.core.paths import RootPaths
from onix.repo import keys
from onix.repo.versions import Available, compare_evr

INDEX_FILE = "index.json"
SIG_FILE = "index.json.sig"
INDEX_FORMAT = 1
NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]*\Z")
CONFIG_DIR = "etc/onix/repos"
CACHE_DIR = ".onix/repos"
DOWNLOADS_DIR = ".onix/cache/downloads"
TIMEOUT = 30.0  # seconds without progress before a network read gives up
MAX_INDEX = 64 << 20  # an index of 100k stones is ~50 MiB; refuse to buffer more
CHUNK = 1 << 20
ENTRY_KEYS = ("name", "version", "release", "arch", "summary", "license", "provides",
              "depends", "file", "sha256", "size")
CONFIG_KEYS = ("uri", "key", "priority")


def _canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# -- data the CLI prints -------------------------------------------------------------


@dataclass(frozen=True)
class RepoConfig:
    name: str
    uri: str
    key: keys.PublicKey
    priority: int
    path: Path


@dataclass(frozen=True)
class RepoInfo:
    name: str
    uri: str
    priority: int
    key_id: str
    public_key: str
    config: Path
    stones: int | None  # in the verified cached index; None when it is missing or refused
    status: str  # "ok", or why the cached index cannot be used

    def as_dict(self) -> dict:
        return {"name": self.name, "uri": self.uri, "priority": self.priority,
                "key_id": self.key_id, "public_key": self.public_key,
                "config": str(self.config), "stones": self.stones, "status": self.status}


@dataclass(frozen=True)
class UpdateResult:
    name: str
    uri: str
    stones: int
    changed: bool  # the fetched index differs from the cached one

    def as_dict(self) -> dict:
        return {"name": self.name, "uri": self.uri, "stones": self.stones,
                "changed": self.changed}


@dataclass(frozen=True)
class IndexResult:
    directory: Path
    name: str
    key_id: str
    index_path: Path
    sig_path: Path
    index: dict

    def as_dict(self) -> dict:
        return {"directory": str(self.directory), "name": self.name, "key_id": self.key_id,
                "index": str(self.index_path), "signature": str(self.sig_path),
                "stones": len(self.index["stones"])}


# -- names, paths and directories under the root ------------------------------------


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise OnixError(f"{name!r} is not a valid repository name", path=name,
                        hint="use lowercase letters, digits, '.', '_' and '-', starting with a "
                        "letter or digit")
    return name


def _real_dir(root: Path, rel: str) -> Path | None:
    """root/rel if it is a directory reached through no symlink, None if it is missing."""
    return _root_dir(root, rel, created=None)


def _make_dirs(root: Path, rel: str, created: list[Path]) -> Path:
    """mkdir root/rel one part at a time (no symlinks); new dirs go on `created`."""
    p = _root_dir(root, rel, created=created)
    assert p is not None
    return p


def _root_dir(root: Path, rel: str, *, created: list[Path] | None) -> Path | None:
    """root/rel through safepath's walk, refusals worded for repositories; with
    `created`, what is missing is made (and recorded), else a missing part is None."""
    try:
        os.close(safepath.open_dirs(root, rel, create=None if created is None else 0o755,
                                    created=created))
    except FileNotFoundError:
        if created is not None:
            raise
        return None
    except safepath.SymlinkError as e:
        raise OnixError("is a symlink; onix keeps what it writes inside the root",
                        path=e.where, hint="replace it with a real directory") from None
    except NotADirectoryError as e:
        raise OnixError("is not a directory", path=e.filename, hint="move it away") from None
    return root / rel


def _undo_dirs(created: list[Path]) -> None:
    for p in reversed(created):
        with contextlib.suppress(OSError):
            p.rmdir()


def config_path(paths: RootPaths, name: str) -> Path:
    return paths.root / CONFIG_DIR / f"{check_name(name)}.conf"


# -- URIs ----------------------------------------------------------------------------


def normalize_uri(uri: str) -> str:
    """An absolute directory path, file:// URL or http(s) URL, without a trailing slash."""
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    if parts.scheme in ("http", "https"):
        if not parts.netloc:
            raise OnixError("URL has no host", path=uri, hint="write it as http://host/path")
        return uri.rstrip("/")
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise OnixError("file:// URLs must name a local path", path=uri,
                            hint="write it as file:///absolute/path")
        return "file://" + (parts.path.rstrip("/") or "/")
    if parts.scheme:
        raise OnixError(f"unsupported URI scheme {parts.scheme}://", path=uri,
                        hint="use a directory, a file:// URL or an http(s):// URL")
    if not uri:
        raise OnixError("empty repository URI", hint="give a directory or an http(s) URL")
    return os.path.abspath(uri)


def _local_base(uri: str) -> Path | None:
    from urllib.parse import urlsplit
    from urllib.request import url2pathname

    if uri.startswith("file://"):
        return Path(url2pathname(urlsplit(uri).path))
    if "://" not in uri:
        return Path(uri)
    return None


def _join(uri: str, file: str) -> str:
    from urllib.parse import quote

    base = _local_base(uri)
    if base is not None and not uri.startswith("file://"):
        return str(base / file)
    return f"{uri.rstrip('/')}/{quote(file)}"


class _NotFound(Exception):
    pass


_NET_HINT = "check the URI and that the server is up, then retry (onix repo update NAME)"


def _open(uri: str, file: str) -> BinaryIO:
    """A stream of `file` in the repository at `uri`; _NotFound for a missing file."""
    import urllib.error
    import urllib.request

    where = _join(uri, file)
    base = _local_base(uri)
    if base is not None:
        if not base.is_dir():
            raise OnixError("no such repository directory", path=base,
                            hint="check the path (a repository is a directory of stones with "
                            "an index.json made by onix index)")
        try:
            return open(base / file, "rb")  # the caller closes it
        except (FileNotFoundError, IsADirectoryError):
            raise _NotFound(where) from None
        except OSError as e:
            raise OnixError(f"cannot read: {e.strerror}", path=where,
                            hint="check the file's permissions") from None
    try:
        # only http(s) gets here: normalize_uri refused every other scheme
        return urllib.request.urlopen(where, timeout=TIMEOUT)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code in (404, 410):
            raise _NotFound(where) from None
        raise OnixError(f"HTTP {e.code} {e.reason}", path=where, hint=_NET_HINT) from None
    except urllib.error.URLError as e:
        raise OnixError(f"cannot reach the server ({e.reason})", path=where,
                        hint=_NET_HINT) from None
    except (TimeoutError, OSError) as e:
        raise OnixError(f"cannot reach the server ({e})", path=where, hint=_NET_HINT) from None


def _chunks(stream: BinaryIO, where: str) -> Iterable[bytes]:
    while True:
        try:
            chunk = stream.read(CHUNK)
        except (TimeoutError, OSError) as e:
            raise OnixError(f"the transfer broke off ({e})", path=where,
                            hint=_NET_HINT) from None
        except Exception as e:  # http.client.IncompleteRead and friends: a short response
            raise OnixError(f"the transfer broke off ({e.__class__.__name__})", path=where,
                            hint=_NET_HINT) from None
        if not chunk:
            return
        yield chunk


def _read(uri: str, file: str, *, limit: int) -> bytes:
    where = _join(uri, file)
    with _open(uri, file) as stream:
        out = bytearray()
        for chunk in _chunks(stream, where):
            out += chunk
            if len(out) > limit:
                raise OnixError(f"larger than {limit} bytes; not a repository index", path=where,
                                hint="check the URI")
    return bytes(out)


# -- the index -----------------------------------------------------------------------


def _sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def write_index(*, directory: Path, key: Path, name: str | None = None) -> IndexResult:
    """Index and sign every `*.stone` in `directory` (each one fully checked first)."""
    from onix.machine.stone import Stone

    directory = Path(directory)
    if not directory.is_dir():
        raise OnixError("no such directory of stones", path=directory, hint="check the path")
    if name is None:
        name = Path(os.path.abspath(directory)).name
        if not NAME_RE.match(name):
            raise OnixError(f"the directory name {name!r} is not a valid repository name",
                            path=directory, hint="pass --name NAME ([a-z0-9][a-z0-9._-]*)")
    check_name(name)
    signer = keys.public_of(Path(key))  # a bad key fails before any stone is read
    stones = []
    seen: dict[tuple, str] = {}
    for p in sorted(directory.iterdir()):
        # dot files are temp names of a pack or a download in progress
        if p.name.startswith(".") or not p.name.endswith(".stone") or not p.is_file():
            continue
        with Stone(p) as s:
            s.check_content()  # a corrupt stone must not get a signed sha256
            meta = s.meta
        ident = (meta.name, meta.version, meta.release, meta.arch)
        if ident in seen:
            raise OnixError(f"{seen[ident]} and {p.name} are both {meta.name} "
                            f"{meta.evr} ({meta.arch})", path=p,
                            hint="keep one of them in the directory (onix would not know which "
                            "to install)")
        seen[ident] = p.name
        sha256, size = _sha256_file(p)
        stones.append({"name": meta.name, "version": meta.version, "release": meta.release,
                       "arch": meta.arch, "summary": meta.summary, "license": meta.license,
                       "provides": sorted(set(meta.provides)),
                       "depends": sorted(set(meta.depends)),
                       "file": p.name, "sha256": sha256, "size": size})
    stones.sort(key=lambda e: (e["name"], e["version"], e["release"], e["file"]))
    index = {"format": INDEX_FORMAT, "name": name, "stones": stones}
    data = _canonical(index)
    sig = keys.sign(data, key=Path(key))
    index_path, sig_path = directory / INDEX_FILE, directory / SIG_FILE
    # index first, then its signature: a reader between the two renames sees a pair that
    # does not verify and is refused (retry), never an unsigned index it would accept
    atomic_write(index_path, data)
    atomic_write(sig_path, sig)
    return IndexResult(directory=directory, name=name, key_id=signer.key_id,
                       index_path=index_path, sig_path=sig_path, index=index)


def _bad_index(where: str, what: str) -> OnixError:
    return OnixError(f"is not a valid repository index: {what}", path=where,
                     hint=f"re-index the repository with onix index (this onix reads index "
                     f"format {INDEX_FORMAT})")


def _plain_file_name(file: object) -> bool:
    if (not isinstance(file, str) or not file or file.startswith("/") or "\\" in file
            or not file.isprintable()):  # a NUL or control character is no file name
        return False
    return all(part not in ("", ".", "..") for part in file.split("/"))


def parse_index(data: bytes, *, where: str) -> dict:
    """The index as a dict, with every field's type checked (call after verifying it)."""
    try:
        index = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):  # nested past json's limit
        raise _bad_index(where, "not JSON") from None
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT:
        raise _bad_index(where, "no format 1 object")
    if not isinstance(index.get("name"), str) or not isinstance(index.get("stones"), list):
        raise _bad_index(where, "name or stones missing")
    for i, e in enumerate(index["stones"]):
        ok = (isinstance(e, dict) and all(k in e for k in ENTRY_KEYS)
              and all(isinstance(e[k], str) for k in ("name", "version", "arch", "summary",
                                                         "license", "sha256"))
              and all(isinstance(e[k], int) and not isinstance(e[k], bool) and e[k] >= 0
                      for k in ("release", "size"))
              and all(isinstance(e[k], list) and all(isinstance(x, str) for x in e[k])
                      for k in ("provides", "depends"))
              and e["name"] != "" and e["version"] != ""
              and len(e["sha256"]) == 64 and not e["sha256"].strip("0123456789abcdef")
              and _plain_file_name(e["file"]))
        if not ok:
            raise _bad_index(where, f"stone entry {i} is malformed")
    return index


def _fetch_index(uri: str, *, name: str, key: keys.PublicKey) -> tuple[bytes, bytes, dict]:
    """Fetch index.json and its signature into memory and verify them; nothing is written."""
    where = _join(uri, INDEX_FILE)
    try:
        data = _read(uri, INDEX_FILE, limit=MAX_INDEX)
    except _NotFound:
        raise OnixError("no repository index here", path=where,
                        hint="check the URI, or make the index with onix index DIR --key "
                        "KEY.key") from None
    try:
        sig = _read(uri, SIG_FILE, limit=1 << 16)
    except _NotFound:
        raise OnixError(f"is not signed (no {SIG_FILE} beside it); onix refuses unsigned "
                        "repository indexes", path=where,
                        hint="sign it: onix index DIR --key KEY.key") from None
    keys.verify(data, sig, public=key, where=where,
                whose=f"the key configured for repository {name}")
    return data, sig, parse_index(data, where=where)


def _store_cache(root: Path, name: str, data: bytes, sig: bytes, created: list[Path]) -> None:
    """Put a verified index pair in place as one unit (a directory swapped in)."""
    parent = _make_dirs(root, CACHE_DIR, created)
    final = parent / name
    new = parent / f".{name}.new"
    remove_tree(new)  # debris of an interrupted update
    new.mkdir(mode=0o755)
    try:
        atomic_write(new / INDEX_FILE, data)
        atomic_write(new / SIG_FILE, sig)
        if final.is_symlink() or (final.exists() and not final.is_dir()):
            final.unlink()
        if final.is_dir():
            exchange(new, final)
            remove_tree(new)  # now the old cache
        else:
            os.rename(new, final)
        fsync_dir(parent)
    except BaseException:
        remove_tree(new)
        raise


def _cache_hint(name: str) -> str:
    return f"refetch it: onix repo update {name}"


def _load_cached(root: Path, conf: RepoConfig) -> tuple[bytes, dict]:
    """The cached index of a repository, verified again against its configured key."""
    d = _real_dir(root, f"{CACHE_DIR}/{conf.name}")
    if d is None:
        raise OnixError(f"repository {conf.name} has no fetched index",
                        path=root / CACHE_DIR / conf.name, hint=_cache_hint(conf.name))
    try:
        data = read_nofollow(d / INDEX_FILE)
        sig = read_nofollow(d / SIG_FILE)
    except OSError as e:
        raise OnixError(f"cannot read the fetched index of repository {conf.name} "
                        f"({e.strerror})", path=e.filename or d,
                        hint=_cache_hint(conf.name)) from None
    where = str(d / INDEX_FILE)
    keys.verify(data, sig, public=conf.key, where=where,
                whose=f"the key configured for repository {conf.name}",
                hint=f"the cached copy was changed or the key was reconfigured: "
                f"{_cache_hint(conf.name)}")
    return data, parse_index(data, where=where)


# -- configuration -------------------------------------------------------------------


def _parse_config(path: Path, name: str) -> RepoConfig:
    try:
        text = read_nofollow(path).decode()
    except UnicodeDecodeError:
        raise OnixError("is not UTF-8 text", path=path,
                        hint=f"remove it (onix repo remove {name}) and add it again") from None
    values: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        k, sep, v = line.partition("=")
        k, v = k.strip(), v.strip()
        if not sep or k not in CONFIG_KEYS or k in values:
            raise OnixError(f"line {n}: expected one of {', '.join(CONFIG_KEYS)} as "
                            "`key = value`, each once", path=path,
                            hint="fix the line, or remove and re-add the repository")
        values[k] = v
    if "uri" not in values or "key" not in values:
        raise OnixError("needs both `uri =` and `key =`", path=path,
                        hint=f"remove it (onix repo remove {name}) and add it again")
    try:
        priority = int(values.get("priority", "0"))
    except ValueError:
        raise OnixError(f"priority {values['priority']!r} is not an integer", path=path,
                        hint="write e.g. priority = 10") from None
    key = keys.parse_public(values["key"], where=path)
    return RepoConfig(name=name, uri=normalize_uri(values["uri"]), key=key,
                      priority=priority, path=path)


def _format_config(conf: RepoConfig) -> bytes:
    return (f"# onix repository {conf.name} (written by onix repo add)\n"
            f"uri = {conf.uri}\nkey = {conf.key.line()}\npriority = {conf.priority}\n").encode()


def configs(paths: RootPaths) -> list[RepoConfig]:
    """Every configured repository, by name."""
    return _configs(paths.root)


def _configs(root: Path) -> list[RepoConfig]:
    d = _real_dir(root, CONFIG_DIR)
    if d is None:
        return []
    out = []
    for p in sorted(d.iterdir()):
        if p.name.startswith(".") or not p.name.endswith(".conf"):
            continue  # atomic_write's temp files, editor backups
        name = p.name[: -len(".conf")]
        if not NAME_RE.match(name):
            raise OnixError(f"{name!r} is not a valid repository name", path=p,
                            hint="rename or remove the file")
        out.append(_parse_config(p, name))
    return out


def _config(root: Path, name: str) -> RepoConfig:
    check_name(name)
    for conf in _configs(root):
        if conf.name == name:
            return conf
    raise OnixError(f"no repository named {name}", path=root / CONFIG_DIR / f"{name}.conf",
                    hint="see onix repo list")


def _info(root: Path, conf: RepoConfig) -> RepoInfo:
    try:
        _data, index = _load_cached(root, conf)
        stones: int | None = len(index["stones"])
        status = "ok"
    except OnixError as e:
        stones, status = None, e.line()
    return RepoInfo(name=conf.name, uri=conf.uri, priority=conf.priority,
                    key_id=conf.key.key_id, public_key=conf.key.line(), config=conf.path,
                    stones=stones, status=status)


# -- commands ------------------------------------------------------------------------


def add(paths: RootPaths, *, name: str, uri: str, public_key: str, priority: int = 0,
        lock: Callable[[], contextlib.AbstractContextManager] | None = None) -> RepoInfo:
    """Configure a repository; its index is fetched and verified first (else nothing is
    written). `public_key` is the key line or a path to the .pub file. `lock()` (the
    root lock) is held from after the fetch until the configuration is written."""
    root = paths.root
    check_name(name)
    path = root / CONFIG_DIR / f"{name}.conf"
    _real_dir(root, CONFIG_DIR)  # a symlinked etc/onix is refused before any network
    if path.exists() or path.is_symlink():
        existing = ""
        with contextlib.suppress(OnixError):
            existing = f" (uri {_parse_config(path, name).uri})"
        raise OnixError(f"repository {name} already exists{existing}", path=path,
                        hint=f"choose another name, or onix repo remove {name} first")
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise OnixError(f"priority {priority!r} is not an integer", path=path,
                        hint="pass e.g. --priority 10")
    conf = RepoConfig(name=name, uri=normalize_uri(uri), key=keys.load_public(public_key),
                      priority=priority, path=path)
    data, sig, _index = _fetch_index(conf.uri, name=name, key=conf.key)
    with lock() if lock else contextlib.nullcontext():
        if path.exists() or path.is_symlink():  # added by another onix meanwhile
            raise OnixError(f"repository {name} already exists", path=path,
                            hint=f"choose another name, or onix repo remove {name} first")
        created: list[Path] = []
        cache = root / CACHE_DIR / name
        had_cache = cache.exists() or cache.is_symlink()
        try:
            _make_dirs(root, CONFIG_DIR, created)
            _store_cache(root, name, data, sig, created)  # replaces a stale cache of that name
            atomic_write(path, _format_config(conf))
        except BaseException:
            if not had_cache:
                remove_tree(cache)
            _undo_dirs(created)
            raise
        return _info(root, conf)


def remove(paths: RootPaths, *, name: str) -> RepoInfo:
    """Forget a repository: its config and its cached index (downloaded stones stay)."""
    root = paths.root
    conf = _config(root, name)
    info = _info(root, conf)
    conf.path.unlink()
    fsync_dir(conf.path.parent)
    cache = _real_dir(root, CACHE_DIR)
    if cache is not None:
        remove_tree(cache / name)
    return info


def list_repos(paths: RootPaths) -> list[RepoInfo]:
    root = paths.root
    return [_info(root, conf) for conf in _configs(root)]


def update(paths: RootPaths, *, names: list[str] | None = None,
           lock: Callable[[], contextlib.AbstractContextManager] | None = None
           ) -> list[UpdateResult]:
    """Refetch and verify the indexes of `names` (default: all); all of them verify
    before any cache is replaced. `lock()` (the root lock) is held only while the
    caches are replaced: a slow or stalled server must not hold every other onix up."""
    root = paths.root
    all_confs = _configs(root)
    if names:
        by_name = {c.name: c for c in all_confs}
        for n in names:
            if check_name(n) not in by_name:
                raise OnixError(f"no repository named {n}",
                                path=root / CONFIG_DIR / f"{n}.conf", hint="see onix repo list")
        confs = [by_name[n] for n in dict.fromkeys(names)]
    else:
        confs = all_confs
    fetched = []
    for conf in confs:
        data, sig, index = _fetch_index(conf.uri, name=conf.name, key=conf.key)
        try:
            old, _ = _load_cached(root, conf)
        except OnixError:
            old = None
        fetched.append((conf, data, sig, index, old != data))
    results = []
    created: list[Path] = []
    with lock() if lock else contextlib.nullcontext():
        for conf, data, sig, index, changed in fetched:
            _store_cache(root, conf.name, data, sig, created)
            results.append(UpdateResult(name=conf.name, uri=conf.uri,
                                        stones=len(index["stones"]), changed=changed))
    return results


def available(paths: RootPaths) -> list[Available]:
    """Every stone of every configured repository's cached index (each index verified)."""
    root = paths.root
    out = []
    for conf in _configs(root):
        _data, index = _load_cached(root, conf)
        out.extend(Available(repo=conf.name, priority=conf.priority, uri=conf.uri,
                             name=e["name"], version=e["version"], release=e["release"],
                             arch=e["arch"], summary=e["summary"], license=e["license"],
                             provides=tuple(e["provides"]), depends=tuple(e["depends"]),
                             file=e["file"], sha256=e["sha256"], size=e["size"],
                             location=_join(conf.uri, e["file"]))
                   for e in index["stones"])
    return out


def _sort_key(a: Available):
    from functools import cmp_to_key

    return (a.name, -a.priority, cmp_to_key(lambda x, y: -compare_evr(x, y))(a), a.repo)


def search(paths: RootPaths, term: str) -> list[Available]:
    """Stones whose name, summary or a provider contains `term` (case-insensitive)."""
    t = term.lower()
    hits = [a for a in available(paths)
            if t in a.name.lower() or t in a.summary.lower()
            or any(t in p.lower() for p in a.provides)]
    return sorted(hits, key=_sort_key)


def info(paths: RootPaths, name: str) -> list[Available]:
    """Every available version of stone `name`, best first (what install would pick)."""
    hits = sorted((a for a in available(paths) if a.name == name), key=_sort_key)
    if not hits:
        raise OnixError(f"no repository has a stone named {name}", path=name,
                        hint="try onix search, or onix repo update")
    return hits


def fetch(paths: RootPaths, entry: Available, *,
          progress: Callable[[int], None] | None = None) -> Path:
    """The local path of `entry`'s stone, downloaded (or reused) and sha256-verified."""
    root = paths.root
    created: list[Path] = []
    d = _make_dirs(root, DOWNLOADS_DIR, created)
    final = d / f"{entry.sha256}.stone"
    try:
        if final.is_file() and not final.is_symlink():
            if _sha256_file(final) == (entry.sha256, entry.size):
                _check_meta(entry, final)
                if progress:
                    progress(entry.size)
                return final
            final.unlink()  # a damaged cache entry: fetch it again
        # the pid keeps two onix processes fetching one stone from writing one temp file
        tmp = d / f".{entry.sha256}.stone.{os.getpid()}.tmp"
        _download(entry, tmp, progress)
        try:
            _check_meta(entry, tmp)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.rename(tmp, final)
        fsync_dir(d)
        return final
    except BaseException:
        _undo_dirs(created)
        raise


def _check_meta(entry: Available, path: Path) -> None:
    """The stone is the one its index entry describes. Resolution chose it by the
    entry's name, version and provides; a stone that says otherwise (an index written
    by hand, or signed over the wrong file) would install something nobody asked for
    under a name nobody chose, and be recorded as asked for."""
    from onix.core.errors import StoneError
    from onix.machine.stone import Stone

    try:
        with Stone(path) as s:
            m = s.meta
    except StoneError as e:
        raise OnixError(f"is not a valid stone ({e.message}), though its index entry "
                        f"({entry.name} {entry.evr}) verified", path=entry.location,
                        hint=f"ask the owner of repository {entry.repo} to re-index it "
                        "with onix index") from None
    said = (entry.name, entry.version, entry.release, entry.arch,
            sorted(set(entry.provides)), sorted(set(entry.depends)))
    have = (m.name, m.version, m.release, m.arch, sorted(set(m.provides)),
            sorted(set(m.depends)))
    if said != have:
        what = [f"{k} {a!r} (index) vs {b!r} (stone)" for k, a, b in zip(
            ("name", "version", "release", "arch", "provides", "depends"), said, have,
            strict=True) if a != b]
        raise OnixError(f"the stone is not what repository {entry.repo}'s index says "
                        f"({'; '.join(what)})", path=entry.location,
                        hint=f"ask the owner of repository {entry.repo} to re-index it with "
                        "onix index; nothing was installed")


def _download(entry: Available, tmp: Path, progress: Callable[[int], None] | None) -> None:
    where = entry.location
    try:
        stream = _open(entry.uri, entry.file)
    except _NotFound:
        raise OnixError(f"not found (repository {entry.repo} lists {entry.name} {entry.evr})",
                        path=where, hint=f"the repository changed: onix repo update "
                        f"{entry.repo}") from None
    h = hashlib.sha256()
    size = 0
    try:
        with stream, open(tmp, "wb") as out:
            for chunk in _chunks(stream, where):
                size += len(chunk)
                if size > entry.size:
                    break  # a wrong or endless response must not fill the disk
                h.update(chunk)
                out.write(chunk)
                if progress:
                    progress(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        if (h.hexdigest(), size) != (entry.sha256, entry.size):
            if size > entry.size:
                got = f"is larger than the {entry.size} bytes the index gives"
            else:
                got = (f"has sha256 {h.hexdigest()} ({size} bytes), the index says "
                       f"{entry.sha256} ({entry.size} bytes)")
            raise OnixError(f"checksum mismatch: the download of {entry.name} {entry.evr} "
                            f"{got}", path=where,
                            hint=f"the stone changed after indexing or was damaged on the way: "
                            f"onix repo update {entry.repo} and retry, or ask the "
                            "repository's owner to re-index")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
