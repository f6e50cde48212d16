"""The signed repository index: `onix index` writes it, every reader verifies it.

On-disk format
--------------
    <dir>/index.json       canonical JSON (sorted keys, no spaces, UTF-8, no trailing
                           newline), written by `onix index`; no timestamps, so indexing
                           the same stones twice gives identical bytes:
        {"format": 1, "name": <repository name>,
         "stones": [{"name", "version", "release", "arch", "summary", "license",
                     "provides": [...], "depends": [...],
                     "file": <stone file name, relative to index.json>,
                     "sha256": <hex of the whole stone file>, "size": <bytes>,
                     "installed_size": <bytes of the stone's files once installed>}, ...]}
        stones sorted by (name, version, release, file); depends are canonical
        dependency strings (versions.parse_dep: `libdrm2 >= 2.4.120`), each parsed on
        every read; an index without installed_size (older onix) reads as 0
    <dir>/index.json.sig   keys.py signature over the exact bytes of index.json
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from onix.core.errors import OnixError
from onix.core.fsutil import atomic_write, sha256_file
from onix.repo import keys, transport
from onix.repo.versions import canonical_deps, parse_dep

INDEX_FILE = "index.json"
SIG_FILE = "index.json.sig"
INDEX_FORMAT = 1
MAX_INDEX = 64 << 20  # an index of 100k stones is ~50 MiB; refuse to buffer more
NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]*\Z")
ENTRY_KEYS = ("name", "version", "release", "arch", "summary", "license", "provides",
              "depends", "file", "sha256", "size")


def _canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()



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
            installed_size = s.describe()["installed_size"]
        ident = (meta.name, meta.version, meta.release, meta.arch)
        if ident in seen:
            raise OnixError(f"{seen[ident]} and {p.name} are both {meta.name} "
                            f"{meta.evr} ({meta.arch})", path=p,
                            hint="keep one of them in the directory (onix would not know which "
                            "to install)")
        seen[ident] = p.name
        sha256, size = sha256_file(p), p.stat().st_size
        stones.append({"name": meta.name, "version": meta.version, "release": meta.release,
                       "arch": meta.arch, "summary": meta.summary, "license": meta.license,
                       "provides": sorted(set(meta.provides)),
                       "depends": canonical_deps(meta.depends, where=str(p)),
                       "file": p.name, "sha256": sha256, "size": size,
                       "installed_size": installed_size})
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


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise OnixError(f"{name!r} is not a valid repository name", path=name,
                        hint="use lowercase letters, digits, '.', '_' and '-', starting with a "
                        "letter or digit")
    return name


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
        size = e.get("installed_size", 0) if ok else 0
        if not ok or not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise _bad_index(where, f"stone entry {i} is malformed")
        for d in e["depends"]:
            try:
                parse_dep(d, where=where)
            except OnixError:
                raise _bad_index(where, f"stone entry {i} ({e['name']} {e['version']}-"
                                 f"{e['release']}) has a dependency that does not parse: "
                                 f"{d!r}") from None
    return index


def fetch_index(uri: str, *, name: str, key: keys.PublicKey) -> tuple[bytes, bytes, dict]:
    """Fetch index.json and its signature into memory and verify them; nothing is written."""
    where = transport.join(uri, INDEX_FILE)
    try:
        data = transport.read(uri, INDEX_FILE, limit=MAX_INDEX)
    except transport.NotFound:
        raise OnixError("no repository index here", path=where,
                        hint="check the URI, or make the index with onix index DIR --key "
                        "KEY.key") from None
    try:
        sig = transport.read(uri, SIG_FILE, limit=1 << 16)
    except transport.NotFound:
        raise OnixError(f"is not signed (no {SIG_FILE} beside it); onix refuses unsigned "
                        "repository indexes", path=where,
                        hint="sign it: onix index DIR --key KEY.key") from None
    keys.verify(data, sig, public=key, where=where,
                whose=f"the key configured for repository {name}")
    return data, sig, parse_index(data, where=where)


