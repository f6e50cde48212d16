"""`onix boot kargs`: the kernel arguments of the boot entries, listed and edited.

Every entry's `options` line is assembled by inputs.command_line() from the state's
/usr and the root's /etc (see docs/boot.md, "The command line"). onix edits one file of
its own for the user, `<root>/etc/kernel/cmdline.d/onix-kargs.conf`, one word a line:

    quiet            added after the words of every other file
    -splash          dropped wherever else it comes from (a /usr file, another /etc file)

A /usr file is never edited, nor is any other /etc file (they are the stones' and the
user's): removing an argument they give writes `-WORD` here, which keeps working when a
new state ships its file changed. Removing a word onix-kargs.conf added deletes its line
again, so `add X` then `remove X` leaves the file as it was (gone, if it was absent).

Whether an argument is "already there" or "not there" is judged on the live state's
command line, the one `onix boot kargs list` shows. A change writes the file and then
syncs, so every retained entry gets it; `preview` computes the same, per entry, and
writes nothing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from onix.boot import bls
from onix.boot.checks import dirs_for
from onix.boot.inputs import (
    KARGS_REL,
    ONIX,
    Arg,
    command_line,
    find_kernel,
    kernel_options,
    parse_kargs,
    read_kargs,
    state_usr,
)
from onix.boot.plane import META_SYNCED, _guard, sync
from onix.core import fsutil, safepath
from onix.core.errors import BootError, OnixError
from onix.core.paths import RootPaths, read_state_id
from onix.machine.session import Session

HEADER = (
    "# Written by onix boot kargs add|remove. Each word is added to every boot entry,",
    "# after the other cmdline.d files; a line -WORD drops WORD wherever else it comes from.",
    "# Edit it by hand if you like, then run onix boot sync.",
)
RW_HINT = "add ro instead, for a read-only root"
OWN_PREFIX = "onix.fstx="  # each entry names its own state: never the user's to set


@dataclass
class Plan:
    """What a change does: onix-kargs.conf before and after, and each entry's options."""

    path: Path
    old: str | None  # the file's text now (None: absent)
    new: str | None  # what it will hold (None: deleted)
    added: list[str] = field(default_factory=list)  # words the live state's line gains
    removed: list[str] = field(default_factory=list)  # words it loses
    unchanged: list[dict] = field(default_factory=list)  # {"arg", "why"}: nothing to do
    entries: list[dict] = field(default_factory=list)  # {"entry", "state", "before", "after"}

    @property
    def changed(self) -> bool:
        return self.new != self.old

    def as_dict(self, *, dry_run: bool) -> dict:
        return {"dry_run": dry_run, "changed": self.changed, "file": str(self.path),
                "added": self.added, "removed": self.removed, "unchanged": self.unchanged,
                "entries": [e for e in self.entries if e["before"] != e["after"]],
                "entries_unchanged": sum(e["before"] == e["after"] for e in self.entries)}


def check_args(paths: RootPaths, *, add: Sequence[str], remove: Sequence[str]) -> None:
    """Refuse what cannot be one kernel argument in a cmdline.d file, before any lock."""
    where = paths.root / KARGS_REL
    if not add and not remove:
        raise OnixError("no kernel argument given", hint="name one, e.g. onix boot kargs add "
                        "quiet")
    for word in (*add, *remove):
        why = _malformed(word)
        if why:
            raise OnixError(f"{word!r} cannot be a kernel argument: {why}", path=where,
                            hint="give each argument as one word, e.g. console=ttyS0 quiet")
        if word.startswith(OWN_PREFIX):
            raise OnixError(f"{word} is onix's own: each entry names the state it boots",
                            path=where, hint="boot another state with onix boot "
                            "set-default ID")
    both = sorted(set(add) & set(remove))
    if both:
        raise OnixError(f"{both[0]} is both added and removed", path=where,
                        hint="name it once")


def _malformed(word: str) -> str:
    if not word:
        return "it is empty"
    if any(c.isspace() for c in word):
        return "it holds white space"
    if any(c in "\"'" for c in word):
        return "it holds a quote (quoted values are not supported)"
    if "#" in word:
        return "it holds #, which starts a comment in cmdline.d"
    if word.startswith("-"):
        return "it starts with -"
    if not word.isprintable():
        return "it holds a control character"
    return ""


# -- reading ---------------------------------------------------------------------------


def _states(paths: RootPaths) -> dict[str, int]:
    """fstx → state id, read with the standard library (a read leaves the root as it was)."""
    from onix.machine import reader

    if not paths.db.exists():
        return {}
    con = reader.connect(paths.db)
    try:
        return {r["fstx"]: r["id"] for r in
                con.execute("SELECT id, fstx FROM states WHERE status != 'pending'")}
    finally:
        con.close()


def _live(paths: RootPaths) -> tuple[int | None, str | None]:
    live = read_state_id(paths.usr)
    fstx = next((f for f, i in _states(paths).items() if i == live), None)
    return live, fstx


def _live_line(paths: RootPaths, fstx: str | None, own: str | None,
               *, need_root: bool = False) -> tuple[list[Arg], list[Arg]]:
    usr = paths.usr
    kver = find_kernel(usr) if usr.is_dir() and not usr.is_symlink() else None
    return command_line(root=paths.root, usr=usr, fstx=fstx, kver=kver, own=own,
                        need_root=need_root)


def listing(paths: RootPaths) -> dict:
    """The live state's kernel arguments, each with its source, and what onix-kargs.conf
    drops; beside them the live entry's options as they are on the ESP."""
    live, fstx = _live(paths)
    args, dropped = _live_line(paths, fstx, None)
    _, drops = parse_kargs(read_kargs(paths.root))
    options = " ".join(a.word for a in args)
    entry = entry_options = None
    dirs, _ = dirs_for(paths)
    if dirs is not None and fstx is not None:
        name = bls.list_entries(dirs.boot).get(fstx)
        if name is not None:
            entry = name.file
            text = (bls.entries_dir(dirs.boot) / name.file).read_text(errors="replace")
            entry_options = bls.parse_entry(text).get("options")
    matched = {a.word for a in dropped}
    return {
        "state": live, "fstx": fstx, "file": str(paths.root / KARGS_REL),
        "args": [{"arg": a.word, "source": a.source, "why": a.why, "managed": a.managed}
                 for a in args],
        "removed": [{"arg": a.word, "source": a.source} for a in dropped]
        + [{"arg": w, "source": None} for w in dict.fromkeys(drops) if w not in matched],
        "options": options,
        "root_missing": not any(a.word.startswith(("root=", "onix.root=")) for a in args),
        "entry": entry, "entry_options": entry_options,
        "in_sync": None if entry is None else entry_options == options,
    }


# -- planning a change -----------------------------------------------------------------


def render(added: list[str], dropped: list[str]) -> str | None:
    """onix-kargs.conf's text; None when it has nothing to say (the file goes)."""
    if not added and not dropped:
        return None
    return "\n".join([*HEADER, *added, *(f"-{w}" for w in dropped)]) + "\n"


def plan(paths: RootPaths, *, add: Sequence[str], remove: Sequence[str]) -> Plan:
    """The change, judged on the live state's command line; reads only."""
    old = read_kargs(paths.root)
    have_add, have_drop = parse_kargs(old)
    new_add, new_drop = list(have_add), list(have_drop)
    live, fstx = _live(paths)
    before, _ = _live_line(paths, fstx, old)
    others, _ = _live_line(paths, fstx, "")  # every source but onix-kargs.conf
    other_words = {a.word for a in others if a.source != ONIX}
    now = {a.word: a for a in reversed(before)}  # the first source of each word
    p = Plan(path=paths.root / KARGS_REL, old=old, new=old)
    for word in dict.fromkeys(add):
        if word in now:
            p.unchanged.append({"arg": word, "why": f"already a kernel argument "
                                f"({_from(now[word])})"})
            continue
        new_drop = [w for w in new_drop if w != word]
        if word not in other_words:
            new_add.append(word)
        p.added.append(word)
    for word in dict.fromkeys(remove):
        a = now.get(word)
        if a is None and word in new_drop:
            p.unchanged.append({"arg": word, "why": f"already removed (-{word} in {p.path})"})
            continue
        if a is None:
            keyed = sorted(w for w in now if w.startswith(f"{word}="))
            hint = f"; {', '.join(keyed)} is" if keyed else ""
            p.unchanged.append({"arg": word, "why": f"not a kernel argument{hint}"
                                + (" (name the whole word)" if keyed else "")})
            continue
        if a.source == ONIX:
            raise BootError(f"{word} is onix's own ({a.why}), not an argument to remove",
                            path=p.path, hint=RW_HINT if word == "rw" else "give the entries "
                            "a root= of your own first (onix boot kargs add root=…)")
        new_add = [w for w in new_add if w != word]
        if word in other_words and word not in new_drop:
            new_drop.append(word)
        p.removed.append(word)
    if (new_add, new_drop) != (have_add, have_drop):
        p.new = render(new_add, new_drop)
    if not p.changed:
        return p
    _check_live(paths, p, fstx=fstx, before=before)
    p.entries = _entries(paths, p.new or "", live=live)
    return p


def _from(a: Arg) -> str:
    return f"onix: {a.why}" if a.source == ONIX else a.source


def _check_live(paths: RootPaths, p: Plan, *, fstx: str | None, before: list[Arg]) -> None:
    """The live state still gets a root=, and each removed word is really gone (onix adds
    rw back when neither ro nor rw is left)."""
    try:
        after, _ = _live_line(paths, fstx, p.new or "", need_root=True)
    except BootError as e:
        had = [a.word for a in before if a.word.startswith(("root=", "onix.root="))]
        if not had:
            return  # no root= before either: not this change's doing
        raise BootError(f"removing {had[0]} leaves the boot entries without root=",
                        path=p.path, hint="add the new one first (onix boot kargs add "
                        "root=UUID=…), then remove this one") \
            from e
    left = {a.word: a for a in after}
    for word in p.removed:
        if word in left:
            raise BootError(f"{word} stays: {_from(left[word])}", path=p.path,
                            hint=RW_HINT if word == "rw" else "remove it where it comes from")


def _entries(paths: RootPaths, own: str, *, live: int | None) -> list[dict]:
    """Each onix entry on $BOOT: its options now, and after a sync with `own`."""
    dirs, _ = dirs_for(paths)
    if dirs is None:
        return []
    states = _states(paths)
    out = []
    for fstx, name in sorted(bls.list_entries(dirs.boot).items(),
                             key=lambda kv: -kv[1].state_id):
        sid = states.get(fstx)
        if sid is None:
            continue  # a state that is gone: the next sync removes its entry
        usr = state_usr(paths, sid, live)
        try:
            kver = find_kernel(usr) if usr.is_dir() and not usr.is_symlink() else None
            if kver is None:
                continue
            after = kernel_options(root=paths.root, usr=usr, fstx=fstx, kver=kver, own=own)
        except OnixError:
            if sid == live:
                raise
            continue  # the sync skips this state too, and says why
        text = (bls.entries_dir(dirs.boot) / name.file).read_text(errors="replace")
        out.append({"entry": name.file, "state": sid,
                    "before": bls.parse_entry(text).get("options"), "after": after})
    return out


# -- the commands ----------------------------------------------------------------------


def preview(paths: RootPaths, *, add: Sequence[str], remove: Sequence[str]) -> dict:
    """`--dry-run`: the plan, nothing written, no lock taken."""
    check_args(paths, add=add, remove=remove)
    return {**plan(paths, add=add, remove=remove).as_dict(dry_run=True), "sync": None}


def change(s: Session, *, add: Sequence[str], remove: Sequence[str]) -> dict:
    """Write onix-kargs.conf, then sync so every retained entry has the new options."""
    check_args(s.paths, add=add, remove=remove)
    p = plan(s.paths, add=add, remove=remove)
    out = {**p.as_dict(dry_run=False), "sync": None, "recovered": s.recovered}
    if not p.changed:
        return out
    with s.db.write() as c:
        s.db.set_meta(c, META_SYNCED, "")  # an interrupted sync is redone by the next run
    _write(s.paths.root, p.new)
    with _guard(f"the kernel arguments are in {p.path}, but the boot files were not "
                "updated"):
        out["sync"] = sync(s)
    return out


def _write(root: Path, text: str | None) -> None:
    """onix-kargs.conf written whole (or removed), through no symlink below the root."""
    rel_dir, _, name = KARGS_REL.rpartition("/")
    try:
        os.close(safepath.open_dirs(root, rel_dir, create=0o755 if text is not None else None))
    except safepath.SymlinkError as e:
        raise OnixError("is a symlink; onix writes kernel arguments only inside the root",
                        path=e.where, hint="replace it with a real directory") from None
    except FileNotFoundError:
        return  # nothing to remove
    path = root / rel_dir / name
    if text is None:
        path.unlink(missing_ok=True)
        fsutil.fsync_dir(path.parent)
    else:
        fsutil.atomic_write(path, text.encode(), mode=0o644)
