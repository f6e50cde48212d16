"""/etc that merges: every state's declared defaults, 3-way merged into the root's /etc.

A stone declares a default for `/etc/<path>` by shipping `usr/share/factory/etc/<path>`
(systemd's factory convention). After every change of the live state (install, remove,
rollback, activate, a state made live at boot and reconciled; machine/follow.py) and by
`onix nix seed`, `merge()` brings each such file in line with the live state by a 3-way
merge between

    BASE   the declared default the root's file derives from (recorded, below),
    LOCAL  the file in /etc now,
    NEW    the live state's declared default.

The rules, per file (docs/etc.md has them with examples):

* LOCAL missing → NEW is written (what systemd-tmpfiles' `C` does with a factory file;
  deleting a file is how to get its default back).
* LOCAL == BASE (untouched) → NEW is written: untouched files follow the state, also
  back on rollback. LOCAL == NEW → nothing to write.
* a file no longer declared: removed when untouched; an edited one is kept (and its
  record, so a rollback to a state that declares it again still knows the base).
* LOCAL edited, NEW == BASE → LOCAL is kept.
* key = value files (KEY_VALUE: nix/*.conf, sysctl.conf, sysctl.d/*.conf, environment)
  merge per key: a key whose local value is still BASE's follows NEW (added, changed,
  removed), a key the user changed keeps the user's value. The local file's comments
  and order stay; a new key is appended with the comment lines just above it in NEW.
* a real conflict (one key changed both locally and in NEW to different values, or a
  file that is not key = value changed on both sides; or a file onix has no BASE for
  that differs from NEW) → LOCAL stays, NEW is written beside it as `FILE.onix-new`, and
  the conflict is reported (by the transaction once, by `onix status` while it lasts).
  It lasts until LOCAL agrees with NEW on those keys, `onix etc reset`, or the user
  deletes FILE.onix-new (as with rpm's .rpmnew: "I keep mine"); then its keys count as
  local overrides.

Drift (`drift()`, `onix status`) is counted per key for key = value files.

The record (on disk, below the root; OSTree keeps its base as the deployment's
/usr/etc, onix keeps it here because the state that declared a default may be pruned):

    .onix/etc/base/<path>      BASE: the declared default /etc/<path> derives from, byte
                               for byte (mode: the default's, 0755 directories)
    .onix/etc/next/<path>      only while a merge of <path> is being written: the NEW
                               it applies
    .onix/etc/conflict/<path>  the keys left in conflict, one a line (`*`: the whole
                               file); present exactly while FILE.onix-new is reported

Files, not a database table: the same record works for a root with no database yet
(an image being composed, `onix.nix.seed.seed()` in tests), `onix status` and the
read-only `onix etc` commands read it with plain file reads (no SQLite, no hashing),
and every file is written with fsutil.atomic_write. Content, not hashes: a per-key
merge needs BASE's values.

Crash safety: NEW is recorded as next/<path> before /etc/<path> is written, and
base/<path> replaced only after, so at every instant LOCAL is BASE, NEXT or a user's
edit; a key (or file) whose local value is BASE's or NEXT's is onix's own. The next run
merges again with both (the merge is idempotent) and finishes. Fault points:
`etc:record` (NEXT recorded, /etc not written), `etc:write` (/etc written, BASE not
yet replaced).

Everything is reached through core/safepath without following symlinks: a symlinked
/etc/nix (or .onix/etc) is refused with one line before anything is written. This module
uses the standard library only, so `onix status` can compute drift without the engine.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import stat
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING

from onix.core import faults, fsutil, safepath
from onix.core.errors import OnixError
from onix.core.paths import RootPaths

if TYPE_CHECKING:
    from onix.machine.session import Session

FACTORY = "share/factory/etc"  # below usr/
RECORD = ".onix/etc"  # below the root
BASE, NEXT, CONFLICT = "base", "next", "conflict"
NEW_SUFFIX = ".onix-new"
WHOLE = "*"  # the conflict/override "key" of a file that is not key = value
# States built before nix.conf and nix.sh moved to the factory directory ship them here;
# read only where the state has no factory file for that path (retained older states,
# and rollbacks to them, must keep their Nix configuration).
LEGACY = {"nix/nix.conf": "share/onix/nix/nix.conf",
          "profile.d/nix.sh": "share/onix/nix/nix.sh"}


# -- key = value formats -----------------------------------------------------------------


@dataclass(frozen=True)
class Syntax:
    """How one key = value format writes its lines: `comments` start a comment line;
    with `inline`, `#` starts a comment anywhere (Nix)."""

    name: str
    comments: str = "#"
    inline: bool = False


NIX = Syntax("nix", inline=True)
SYSCTL = Syntax("sysctl", comments="#;")
ENV = Syntax("environment")
# Recognised by path below /etc (a `*` matches within one file name): a format is
# merged per key only where onix knows its comment rules; everything else is whole-file.
KEY_VALUE: tuple[tuple[str, Syntax], ...] = (
    ("nix/*.conf", NIX), ("sysctl.conf", SYSCTL), ("sysctl.d/*.conf", SYSCTL),
    ("environment", ENV))


def syntax(rel: str) -> Syntax | None:
    """The key = value format of /etc/<rel>, or None (merged as a whole file)."""
    rdir, _, rname = rel.rpartition("/")
    for pattern, syn in KEY_VALUE:
        pdir, _, pname = pattern.rpartition("/")
        if pdir == rdir and fnmatchcase(rname, pname):
            return syn
    return None


def _assignment(line: str, syn: Syntax) -> tuple[str, str] | None:
    body = line.split("#", 1)[0] if syn.inline else line
    s = body.strip()
    if not s or s[0] in syn.comments or "=" not in s:
        return None  # blank, comment, or not a setting (Nix's `include x`): kept as is
    key, _, value = s.partition("=")
    key = key.strip()
    if not key or any(c.isspace() for c in key):
        return None
    return key, " ".join(value.split())


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")  # any bytes survive the round trip


def parse_keys(data: bytes, syn: Syntax) -> dict[str, str]:
    """key → value (whitespace-normalised); a later line wins, as in Nix and sysctl."""
    out: dict[str, str] = {}
    for line in _text(data).splitlines():
        a = _assignment(line, syn)
        if a is not None:
            out[a[0]] = a[1]
    return out


def _apply(local: bytes, new: bytes, syn: Syntax, set_keys: list[str],
           remove_keys: list[str]) -> bytes:
    """LOCAL with NEW's lines for set_keys (in place, or appended with their comments)
    and without remove_keys; every other line of LOCAL as it was."""
    lines = _text(local).splitlines(keepends=True)
    new_lines = _text(new).splitlines(keepends=True)
    in_new: dict[str, int] = {}
    for i, line in enumerate(new_lines):
        if (a := _assignment(line, syn)) is not None:
            in_new[a[0]] = i
    in_local: dict[str, list[int]] = {}
    for i, line in enumerate(lines):
        if (a := _assignment(line, syn)) is not None:
            in_local.setdefault(a[0], []).append(i)

    def eol(line: str) -> str:
        return line if line.endswith("\n") else line + "\n"

    for k in set_keys:
        if k in in_local:
            i = in_local[k][-1]  # the line that wins
            lines[i] = eol(new_lines[in_new[k]]) if lines[i].endswith("\n") else \
                new_lines[in_new[k]].rstrip("\n")
    drop = {i for k in remove_keys for i in in_local.get(k, [])}
    out = [line for i, line in enumerate(lines) if i not in drop]
    added = sorted((k for k in set_keys if k not in in_local), key=in_new.__getitem__)
    if added and out and not out[-1].endswith("\n"):
        out[-1] += "\n"
    for k in added:
        i = j = in_new[k]
        while j > 0 and new_lines[j - 1].strip()[:1] in tuple(syn.comments) \
                and new_lines[j - 1].strip():
            j -= 1  # the comment lines just above it travel with it
        out.extend(eol(line) for line in new_lines[j:i + 1])
    return "".join(out).encode("utf-8", "surrogateescape")


# -- what a state declares, what the root records ----------------------------------------


@dataclass(frozen=True)
class Default:
    """A declared default: its bytes and the mode and owner a new /etc file gets."""

    data: bytes
    mode: int
    uid: int
    gid: int
    source: str  # where the state ships it, below usr/


def _files_below(base: Path, top: str, *, strict: bool) -> list[str]:
    """Regular files below base/<top>, relative to it, sorted; reached without following
    symlinks. strict: a symlink or special file there is an error (a state's factory
    tree); otherwise it is skipped (onix's own record, which holds neither)."""
    try:
        fd = safepath.open_dirs(base, top)
    except (FileNotFoundError, NotADirectoryError):
        return []
    out: list[str] = []

    def walk(dfd: int, prefix: str) -> None:
        for name in sorted(os.listdir(dfd)):
            rel = f"{prefix}{name}"
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                sub = safepath.open_dirs(base, f"{top}/{rel}", dir_fd=None)
                try:
                    walk(sub, rel + "/")
                finally:
                    os.close(sub)
            elif stat.S_ISREG(st.st_mode):
                out.append(rel)
            elif strict:
                safepath.lstat_below(base, f"{top}/{rel}", want=safepath.FILE)  # a symlink
                raise OnixError(f"usr/{top}/{rel} is not a regular file", path=base / top / rel,
                                hint="ship regular files under usr/share/factory/etc")

    try:
        walk(fd, "")
    finally:
        os.close(fd)
    return out


def declared(usr: Path) -> dict[str, Default]:
    """The state's declared defaults by path below /etc (factory files, then LEGACY)."""
    out: dict[str, Default] = {}
    sources = {rel: f"{FACTORY}/{rel}" for rel in _files_below(usr, FACTORY, strict=True)}
    for rel, src in LEGACY.items():
        if rel not in sources and safepath.is_regular(usr, src):
            sources[rel] = src
    for rel, src in sorted(sources.items()):
        st = safepath.lstat_below(usr, src, want=safepath.FILE)
        if st is None:
            continue
        # Installed /usr files are read-only; the /etc copy is the owner's to edit.
        out[rel] = Default(safepath.read_regular(usr, src), stat.S_IMODE(st.st_mode) | 0o200,
                           st.st_uid, st.st_gid, src)
    return out


def _read(root: Path, rel: str) -> bytes | None:
    try:
        return safepath.read_regular(root, rel)
    except FileNotFoundError:
        return None


@dataclass
class Record:
    bases: list[bytes]  # [BASE] or [BASE, NEXT] (an interrupted merge); [] if none
    has_next: bool
    conflicts: list[str]


def _record(root: Path, rel: str) -> Record:
    base = _read(root, f"{RECORD}/{BASE}/{rel}")
    nxt = _read(root, f"{RECORD}/{NEXT}/{rel}")
    raw = _read(root, f"{RECORD}/{CONFLICT}/{rel}")
    return Record([b for b in (base, nxt) if b is not None], nxt is not None,
                  _text(raw).split() if raw else [])


def recorded(paths: RootPaths) -> set[str]:
    return {rel for kind in (BASE, NEXT, CONFLICT)
            for rel in _files_below(paths.root, f"{RECORD}/{kind}", strict=False)}


def normalise(path: str) -> str:
    """'/etc/nix/nix.conf', 'etc/nix/nix.conf' or 'nix/nix.conf' → 'nix/nix.conf'."""
    p = path.strip()
    for prefix in ("/etc/", "etc/"):
        if p.startswith(prefix):
            p = p[len(prefix):]
            break
    else:
        if p.startswith("/"):
            raise OnixError("is not below /etc", path=Path(path),
                            hint="name a file below /etc (onix etc status lists them)")
    if not safepath.clean_rel(p):
        raise OnixError("is not a plain path below /etc", path=Path(path),
                        hint="name a file below /etc (onix etc status lists them)")
    return p


# -- the merge of one file ----------------------------------------------------------------


@dataclass
class Plan:
    """What the merge does with one file (also what status shows: a dry run)."""

    rel: str
    kv: bool
    action: str  # create, update, merge, keep, conflict, unchanged, remove, orphan, forget
    result: bytes | None  # what /etc/<rel> is to hold (None: remove it / leave it)
    local: bytes | None
    added: list[str] = field(default_factory=list)  # keys applied beside a local edit
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)  # the user's keys (WHOLE: the file)
    conflicts: list[str] = field(default_factory=list)  # still open (fresh and earlier)
    fresh: list[str] = field(default_factory=list)  # conflicts this merge found


def plan(rel: str, *, new: Default | None, local: bytes | None, record: Record,
         new_file: bool) -> Plan:
    """The 3-way merge of one file (see the module docstring), nothing written.

    new_file: FILE.onix-new exists (an earlier conflict still stands while it does).
    """
    syn = syntax(rel)
    bases = record.bases
    p = Plan(rel, syn is not None, "unchanged", local, local)
    if new is None:
        p.result = None
        p.action = "forget" if local is None else "remove" if local in bases else "orphan"
        if p.action == "orphan":
            p.result, p.overrides = local, [WHOLE]
        return p
    if local is None:
        p.action, p.result = "create", new.data
        return p
    if local == new.data or local in bases:
        p.action = "unchanged" if local == new.data else "update"
        p.result = new.data
        return p
    base0 = bases[0] if bases else None
    carried = record.conflicts if new_file else []
    if syn is None:
        if base0 is not None and new.data == base0 and WHOLE not in carried:
            p.action, p.overrides = "keep", [WHOLE]
        else:
            p.action, p.conflicts = "conflict", [WHOLE]
            p.fresh = [] if base0 is not None and new.data == base0 else [WHOLE]
        return p
    lk, nk = parse_keys(local, syn), parse_keys(new.data, syn)
    bks = [parse_keys(b, syn) for b in bases]
    b0 = bks[0] if bks else None
    set_keys: list[str] = []
    remove_keys: list[str] = []
    for k in sorted(set(lk) | set(nk) | set(b0 or {})):
        mine, theirs = lk.get(k), nk.get(k)
        if mine == theirs:
            continue
        untouched = any(b.get(k) == mine for b in bks) if bks else mine is None
        if untouched:
            if theirs is None:
                remove_keys.append(k)
                p.removed.append(k)
            else:
                set_keys.append(k)
                (p.changed if mine is not None else p.added).append(k)
        elif b0 is None or theirs == b0.get(k):
            p.overrides.append(k)  # no BASE to tell, or NEW did not change it: the user's
        else:
            p.fresh.append(k)
    p.conflicts = sorted(set(p.fresh) | {k for k in carried if k in p.overrides})
    p.overrides = [k for k in p.overrides if k not in p.conflicts]
    p.result = _apply(local, new.data, syn, set_keys, remove_keys) if set_keys or remove_keys \
        else local
    p.action = "merge" if p.result != local else "conflict" if p.conflicts else "keep"
    return p


# -- writing ------------------------------------------------------------------------------


def _etc(rel: str) -> str:
    return f"etc/{rel}"


def _parents(rel: str) -> list[str]:
    """The directories below the root a merge of rel may write through."""
    parent = rel.rpartition("/")[0]
    return [f"etc/{parent}" if parent else "etc",
            *(f"{RECORD}/{k}/{parent}" if parent else f"{RECORD}/{k}"
              for k in (BASE, NEXT, CONFLICT))]


def _write(root: Path, rel: str, data: bytes, mode: int,
           owner: tuple[int, int] | None = None) -> None:
    path = root / rel
    fsutil.mkdirs(path.parent)
    fsutil.atomic_write(path, data, mode=mode, owner=owner if os.geteuid() == 0 else None)


def _unlink(root: Path, rel: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        (root / rel).unlink()


def _rec(kind: str, rel: str) -> str:
    return f"{RECORD}/{kind}/{rel}"


def _execute(root: Path, p: Plan, new: Default | None, record: Record) -> None:
    """Carry a plan out in the crash-safe order (module docstring)."""
    if p.action == "orphan":
        return
    if p.action in ("remove", "forget"):
        if p.action == "remove":
            _unlink(root, _etc(p.rel))  # first: a crash leaves the record, the next run ends it
            newfile = _read(root, _etc(p.rel) + NEW_SUFFIX)
            if newfile is not None and newfile in record.bases:
                _unlink(root, _etc(p.rel) + NEW_SUFFIX)
        for kind in (CONFLICT, NEXT, BASE):
            _unlink(root, _rec(kind, p.rel))
        return
    assert new is not None and p.result is not None
    if p.result != p.local:
        _write(root, _rec(NEXT, p.rel), new.data, new.mode)
        faults.point("etc", "record")
        st = safepath.lstat_below(root, _etc(p.rel), want=safepath.FILE)
        mode, owner = ((stat.S_IMODE(st.st_mode), (st.st_uid, st.st_gid)) if st is not None
                       else (new.mode, (new.uid, new.gid)))
        _write(root, _etc(p.rel), p.result, mode, owner)
        faults.point("etc", "write")
    newfile_rel = _etc(p.rel) + NEW_SUFFIX
    if p.conflicts:
        if _read(root, newfile_rel) != new.data:
            _write(root, newfile_rel, new.data, new.mode, (new.uid, new.gid))
        listed = "".join(f"{k}\n" for k in p.conflicts).encode()
        if _read(root, _rec(CONFLICT, p.rel)) != listed:
            _write(root, _rec(CONFLICT, p.rel), listed, 0o644)
    elif record.conflicts or _read(root, newfile_rel) is not None:
        newfile = _read(root, newfile_rel)
        if newfile is not None and (newfile == new.data or newfile in record.bases):
            _unlink(root, newfile_rel)  # ours, and nothing conflicts any more
        _unlink(root, _rec(CONFLICT, p.rel))
    if record.bases[:1] != [new.data]:
        _write(root, _rec(BASE, p.rel), new.data, new.mode)
    if record.has_next:
        _unlink(root, _rec(NEXT, p.rel))


def _check_dirs(root: Path, rels: list[str]) -> None:
    """Every directory a merge may write through, before the first write: a symlink
    among them is refused (SymlinkError names it), nothing written."""
    safepath.check_dirs(root, ".onix", RECORD, *{d for rel in rels for d in _parents(rel)})


@dataclass
class Report:
    changed: list[str] = field(default_factory=list)  # /etc paths written or removed
    files: list[dict] = field(default_factory=list)  # one per file that was not unchanged
    messages: list[str] = field(default_factory=list)  # for the transaction's warnings
    errors: list[str] = field(default_factory=list)  # files that could not be merged

    def as_dict(self) -> dict:
        return {"changed": self.changed, "files": self.files, "messages": self.messages,
                "errors": self.errors}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def _message(p: Plan) -> str | None:
    """The one line a transaction reports for a file, when there is news beside an edit."""
    shown = f"/etc/{p.rel}"
    parts: list[str] = []
    beside = [f"{_plural(len(p.added), 'key')} added" if p.added else "",
              f"{_plural(len(p.changed), 'key')} changed" if p.changed else "",
              f"{_plural(len(p.removed), 'key')} removed" if p.removed else ""]
    if any(beside):
        parts.append(", ".join(b for b in beside if b) + " beside your edit")
    if p.fresh:
        what = "changed here and in the new default" if p.fresh == [WHOLE] else \
            f"{_plural(len(p.fresh), 'conflict')} ({', '.join(p.fresh)})"
        parts.append(f"{what} → {shown}{NEW_SUFFIX}")
    if not parts:
        return None
    return f"etc: {shown}: " + "; ".join(parts)


def _outcome(p: Plan) -> dict:
    return {"path": f"/etc/{p.rel}", "action": p.action, "added": p.added,
            "changed": p.changed, "removed": p.removed, "overrides": p.overrides,
            "conflicts": p.conflicts,
            "new_file": f"/etc/{p.rel}{NEW_SUFFIX}" if p.conflicts else None}


def merge(paths: RootPaths, *, usr: Path | None = None) -> Report:
    """Merge every declared default of the live state (or `usr`) into /etc.

    A symlink on the way to /etc/<dir> or the record is an OnixError before anything is
    written; a file that cannot be merged (say, /etc/<path> is a directory) is listed in
    `errors` and the others are merged.
    """
    root = paths.root
    defaults = declared(usr or paths.usr)
    rels = sorted(set(defaults) | recorded(paths))
    report = Report()
    if not rels:
        return report
    _check_dirs(root, rels)
    for rel in rels:
        try:
            record = _record(root, rel)
            new = defaults.get(rel)
            p = plan(rel, new=new, local=_read(root, _etc(rel)), record=record,
                     new_file=_read(root, _etc(rel) + NEW_SUFFIX) is not None)
            _execute(root, p, new, record)
        except OnixError as e:
            report.errors.append(e.line())
            continue
        except OSError as e:
            report.errors.append(f"/etc/{rel}: {e.strerror or e}")
            continue
        if p.result != p.local:
            report.changed.append(f"/etc/{rel}")
        if p.action not in ("unchanged", "keep", "orphan") or p.conflicts:
            report.files.append(_outcome(p))
        if (line := _message(p)) is not None:
            report.messages.append(line)
    return report


def reset(s: Session, path: str) -> dict:
    """Throw a local edit away: /etc/<path> becomes the declared default again (or goes,
    if no state declares it any more), FILE.onix-new and the conflict go."""
    paths = s.paths
    root = paths.root
    rel = normalise(path)
    new = declared(paths.usr).get(rel)
    if new is None and rel not in recorded(paths):
        raise OnixError("is not a file the live state declares", path=Path(f"/etc/{rel}"),
                        hint="onix etc status lists the files onix merges")
    _check_dirs(root, [rel])
    record = _record(root, rel)
    local = _read(root, _etc(rel))
    if new is None:
        p = Plan(rel, syntax(rel) is not None, "remove" if local is not None else "forget",
                 None, local)
    else:
        p = Plan(rel, syntax(rel) is not None, "unchanged" if local == new.data else "update",
                 new.data, local)
    _execute(root, p, new, record)
    _unlink(root, _etc(rel) + NEW_SUFFIX)
    return {"path": f"/etc/{rel}", "action": "removed" if new is None else
            "reset" if local != new.data else "unchanged"}


# -- reading: status, drift, diff (stdlib only: onix status uses these) -------------------


def _plans(paths: RootPaths, usr: Path | None = None, *,
           only: str | None = None) -> list[tuple[Plan, Default | None, Record]]:
    root = paths.root
    defaults = declared(usr or paths.usr)
    rels = sorted(set(defaults) | recorded(paths)) if only is None else [only]
    out = []
    for rel in rels:
        new = defaults.get(rel)
        try:
            record = _record(root, rel)
            p = plan(rel, new=new, local=_read(root, _etc(rel)), record=record,
                     new_file=_read(root, _etc(rel) + NEW_SUFFIX) is not None)
        except PermissionError:  # a 0600 default, read by a user: shown, not counted
            record = Record([], False, [])
            p = Plan(rel, syntax(rel) is not None, "unreadable", None, None)
        out.append((p, new, record))
    return out


def _row(p: Plan, new: Default | None) -> dict:
    if p.action == "unreadable":
        state = "unreadable"
    elif p.conflicts:
        state = "conflict"
    elif p.action == "create":
        state = "missing"
    elif p.action in ("orphan", "remove"):
        state = "not declared" + (" (edited)" if p.action == "orphan" else "")
    elif p.overrides:
        state = "edited"
    elif p.action in ("update", "merge"):
        state = "pending"  # onix applies it at the next merge
    else:
        state = "clean"
    return {"path": f"/etc/{p.rel}", "state": state, "kv": p.kv,
            "source": f"/usr/{new.source}" if new else None,
            "overrides": p.overrides, "conflicts": p.conflicts,
            "pending": p.added + p.changed + p.removed,
            "new_file": f"/etc/{p.rel}{NEW_SUFFIX}" if p.conflicts else None}


def status(paths: RootPaths, *, usr: Path | None = None) -> list[dict]:
    """Every declared (or recorded) file: clean, edited (its keys), conflict, missing,
    pending, or not declared any more."""
    return [_row(p, new) for p, new, _ in _plans(paths, usr)]


def drift(paths: RootPaths, *, usr: Path | None = None) -> dict:
    """Per key: {"overrides": ["/etc/x: key" | "/etc/x"], "conflicts": [...], "missing":
    [...], "files": n}, for onix status."""
    return drift_of(status(paths, usr=usr))


def drift_of(rows: list[dict]) -> dict:
    """drift() of status() rows already read."""
    out: dict = {"overrides": [], "conflicts": [], "missing": [], "files": 0}
    for row in rows:
        out["files"] += 1
        if row["state"] == "missing":
            out["missing"].append(row["path"])
        for kind in ("overrides", "conflicts"):
            out[kind].extend(row["path"] if k == WHOLE else f"{row['path']}: {k}"
                             for k in row[kind])
    return out


def diff(paths: RootPaths, path: str | None = None, *, usr: Path | None = None) -> list[dict]:
    """Local vs declared default, for every file that differs (or `path`): a unified
    diff, and per key for key = value files."""
    only = normalise(path) if path is not None else None
    out = []
    for p, new, record in _plans(paths, usr, only=only):
        if only is not None and new is None and not record.bases:
            raise OnixError("is not a file the live state declares",
                            path=Path(f"/etc/{p.rel}"),
                            hint="onix etc status lists the files onix merges")
        want = new.data if new else b""
        have = p.local if p.local is not None else b""
        if have == want:
            continue
        shown = f"/etc/{p.rel}"
        text = "".join(difflib.unified_diff(
            _text(have).splitlines(keepends=True), _text(want).splitlines(keepends=True),
            fromfile=f"{shown} (local)",
            tofile=f"/usr/{new.source} (default)" if new else "(not declared)"))
        keys = []
        syn = syntax(p.rel)
        if syn is not None and new is not None and p.local is not None:
            lk, nk = parse_keys(p.local, syn), parse_keys(new.data, syn)
            status_of = {**{k: "override" for k in p.overrides},
                         **{k: "conflict" for k in p.conflicts},
                         **{k: "pending" for k in p.added + p.changed + p.removed}}
            keys = [{"key": k, "local": lk.get(k), "default": nk.get(k),
                     "status": status_of.get(k, "override")}
                    for k in sorted(set(lk) | set(nk)) if lk.get(k) != nk.get(k)]
        out.append({"path": shown, "kv": syn is not None, "keys": keys, "diff": text})
    return out


def adopt(paths: RootPaths, rel: str, base: bytes, *, mode: int = 0o644) -> None:
    """Record `base` as what /etc/<rel> derives from, where nothing is recorded yet (a
    root whose files an older onix wrote; nix/seed.py's migration)."""
    if _read(paths.root, _rec(BASE, rel)) is not None:
        return
    _check_dirs(paths.root, [rel])
    _write(paths.root, _rec(BASE, rel), base, mode)
