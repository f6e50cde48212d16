"""Repositories configured in a root, their cached indexes, and what they offer.

On-disk formats
---------------
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

NAME is [a-z0-9][a-z0-9._-]*. Nothing here follows a symlink among the directories it
writes under the root (a scratch root's etc -> /etc must not put files in the host's
/etc). Every failure is one OnixError naming the file or URL, raised before anything
is written, or after what was written has been taken away again.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from onix.core import safepath
from onix.core.errors import OnixError
from onix.core.fsutil import atomic_write, exchange, fsync_dir, read_nofollow, remove_tree
from onix.core.paths import REPO_CACHE_DIR, REPO_CONFIG_DIR, RootPaths
from onix.repo import index, keys, transport
from onix.repo.index import check_name
from onix.repo.versions import Available, compare_evr

CONFIG_KEYS = ("uri", "key", "priority")


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


# -- names, paths and directories under the root ------------------------------------


def _real_dir(root: Path, rel: str) -> Path | None:
    """root/rel if it is a directory reached through no symlink, None if it is missing."""
    return _root_dir(root, rel, created=None)


def make_dirs(root: Path, rel: str, created: list[Path]) -> Path:
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


def undo_dirs(created: list[Path]) -> None:
    for p in reversed(created):
        with contextlib.suppress(OSError):
            p.rmdir()


def config_path(paths: RootPaths, name: str) -> Path:
    return paths.root / REPO_CONFIG_DIR / f"{check_name(name)}.conf"


def _store_cache(root: Path, name: str, data: bytes, sig: bytes, created: list[Path]) -> None:
    """Put a verified index pair in place as one unit (a directory swapped in)."""
    parent = make_dirs(root, REPO_CACHE_DIR, created)
    final = parent / name
    new = parent / f".{name}.new"
    remove_tree(new)  # debris of an interrupted update
    new.mkdir(mode=0o755)
    try:
        atomic_write(new / index.INDEX_FILE, data)
        atomic_write(new / index.SIG_FILE, sig)
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
    d = _real_dir(root, f"{REPO_CACHE_DIR}/{conf.name}")
    if d is None:
        raise OnixError(f"repository {conf.name} has no fetched index",
                        path=root / REPO_CACHE_DIR / conf.name, hint=_cache_hint(conf.name))
    try:
        data = read_nofollow(d / index.INDEX_FILE)
        sig = read_nofollow(d / index.SIG_FILE)
    except OSError as e:
        raise OnixError(f"cannot read the fetched index of repository {conf.name} "
                        f"({e.strerror})", path=e.filename or d,
                        hint=_cache_hint(conf.name)) from None
    where = str(d / index.INDEX_FILE)
    keys.verify(data, sig, public=conf.key, where=where,
                whose=f"the key configured for repository {conf.name}",
                hint=f"the cached copy was changed or the key was reconfigured: "
                f"{_cache_hint(conf.name)}")
    return data, index.parse_index(data, where=where)


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
    return RepoConfig(name=name, uri=transport.normalize_uri(values["uri"]), key=key,
                      priority=priority, path=path)


def _format_config(conf: RepoConfig) -> bytes:
    return (f"# onix repository {conf.name} (written by onix repo add)\n"
            f"uri = {conf.uri}\nkey = {conf.key.line()}\npriority = {conf.priority}\n").encode()


def configs(paths: RootPaths) -> list[RepoConfig]:
    """Every configured repository, by name."""
    return _configs(paths.root)


def _configs(root: Path) -> list[RepoConfig]:
    d = _real_dir(root, REPO_CONFIG_DIR)
    if d is None:
        return []
    out = []
    for p in sorted(d.iterdir()):
        if p.name.startswith(".") or not p.name.endswith(".conf"):
            continue  # atomic_write's temp files, editor backups
        name = p.name[: -len(".conf")]
        if not index.NAME_RE.match(name):
            raise OnixError(f"{name!r} is not a valid repository name", path=p,
                            hint="rename or remove the file")
        out.append(_parse_config(p, name))
    return out


def _config(root: Path, name: str) -> RepoConfig:
    check_name(name)
    for conf in _configs(root):
        if conf.name == name:
            return conf
    raise OnixError(f"no repository named {name}", path=root / REPO_CONFIG_DIR / f"{name}.conf",
                    hint="see onix repo list")


def _info(root: Path, conf: RepoConfig) -> RepoInfo:
    try:
        _data, idx = _load_cached(root, conf)
        stones: int | None = len(idx["stones"])
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
    path = root / REPO_CONFIG_DIR / f"{name}.conf"
    _real_dir(root, REPO_CONFIG_DIR)  # a symlinked etc/onix is refused before any network
    if path.exists() or path.is_symlink():
        existing = ""
        with contextlib.suppress(OnixError):
            existing = f" (uri {_parse_config(path, name).uri})"
        raise OnixError(f"repository {name} already exists{existing}", path=path,
                        hint=f"choose another name, or onix repo remove {name} first")
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise OnixError(f"priority {priority!r} is not an integer", path=path,
                        hint="pass e.g. --priority 10")
    conf = RepoConfig(name=name, uri=transport.normalize_uri(uri), key=keys.load_public(public_key),
                      priority=priority, path=path)
    data, sig, _index = index.fetch_index(conf.uri, name=name, key=conf.key)
    with lock() if lock else contextlib.nullcontext():
        if path.exists() or path.is_symlink():  # added by another onix meanwhile
            raise OnixError(f"repository {name} already exists", path=path,
                            hint=f"choose another name, or onix repo remove {name} first")
        created: list[Path] = []
        cache = root / REPO_CACHE_DIR / name
        had_cache = cache.exists() or cache.is_symlink()
        try:
            make_dirs(root, REPO_CONFIG_DIR, created)
            _store_cache(root, name, data, sig, created)  # replaces a stale cache of that name
            atomic_write(path, _format_config(conf))
        except BaseException:
            if not had_cache:
                remove_tree(cache)
            undo_dirs(created)
            raise
        return _info(root, conf)


def remove(paths: RootPaths, *, name: str) -> RepoInfo:
    """Forget a repository: its config and its cached index (downloaded stones stay)."""
    root = paths.root
    conf = _config(root, name)
    info = _info(root, conf)
    conf.path.unlink()
    fsync_dir(conf.path.parent)
    cache = _real_dir(root, REPO_CACHE_DIR)
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
                raise OnixError(f"no repository named {n}", hint="see onix repo list",
                                path=root / REPO_CONFIG_DIR / f"{n}.conf")
        confs = [by_name[n] for n in dict.fromkeys(names)]
    else:
        confs = all_confs
    fetched = []
    for conf in confs:
        data, sig, fresh = index.fetch_index(conf.uri, name=conf.name, key=conf.key)
        try:
            old, _ = _load_cached(root, conf)
        except OnixError:
            old = None
        fetched.append((conf, data, sig, fresh, old != data))
    results = []
    created: list[Path] = []
    with lock() if lock else contextlib.nullcontext():
        for conf, data, sig, fresh, changed in fetched:
            _store_cache(root, conf.name, data, sig, created)
            results.append(UpdateResult(name=conf.name, uri=conf.uri,
                                        stones=len(fresh["stones"]), changed=changed))
    return results


def available(paths: RootPaths, *, fetch: bool = False) -> list[Available]:
    """Every stone of every configured repository's cached index (each index verified);
    with `fetch`, of each index fetched now and verified, without touching the cache
    (what `onix sync --dry-run` plans from: a preview writes nothing)."""
    root = paths.root
    out = []
    for conf in _configs(root):
        if fetch:
            _data, _sig, idx = index.fetch_index(conf.uri, name=conf.name, key=conf.key)
        else:
            _data, idx = _load_cached(root, conf)
        out.extend(Available(repo=conf.name, priority=conf.priority, uri=conf.uri,
                             name=e["name"], version=e["version"], release=e["release"],
                             arch=e["arch"], summary=e["summary"], license=e["license"],
                             provides=tuple(e["provides"]), depends=tuple(e["depends"]),
                             file=e["file"], sha256=e["sha256"], size=e["size"],
                             installed_size=e.get("installed_size", 0),
                             location=transport.join(conf.uri, e["file"]))
                   for e in idx["stones"])
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


