"""Reaching a state's files, and the root's directories, without following symlinks.

While onix builds an initrd or boot entries, a state's usr tree sits in a root that is
just a directory on the host. A symlink in it is resolved against the HOST: with
`usr/lib/onix/exchange -> /etc/shadow`, following it would put the host's file into an
initrd on the ESP. So every boot input is reached from its base one component at a
time, each opened with O_NOFOLLOW, and a symlink anywhere below the base is an error
naming it. (The base itself is the caller's path and is taken as given.) The same goes
for what onix writes under a root (repository caches, the Nix seams, the services'
scan directory): a root whose etc/ is a symlink to the host's /etc must not have onix
write there. `open_dirs()` is that one walk; everything here is built on it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from onix.core.errors import OnixError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _parts(rel: str) -> list[str]:
    """The components of a plain relative path; anything else is a caller's bug."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"{rel!r} is not a plain relative path below usr")
    return parts


def clean_rel(rel: str) -> bool:
    """True for a plain relative path: no leading '/', no empty, '.' or '..' part."""
    try:
        _parts(rel)
    except ValueError:
        return False
    return True


FILE, DIRECTORY, ANY = "a regular file", "a real directory", "a real file or directory"


def _shown(usr: Path, rel: str) -> str:
    """How a path is named in messages: usr/… inside a state, /… inside a root."""
    return f"usr/{rel}" if Path(usr).name == "usr" else f"/{rel}"


class SymlinkError(OnixError):
    """A symlink where onix follows none: `where` is its path, `target` the link's text.

    Callers that word the refusal their own way catch it and keep these two.
    """

    def __init__(self, message: str, *, where: Path, target: str, hint: str):
        super().__init__(message, path=where, hint=hint)
        self.where = where
        self.target = target


def _symlink_error(usr: Path, parts: list[str], i: int, dir_fd: int, want: str) -> SymlinkError:
    """The error for a symlink at parts[i]; `want` is what the last part should be."""
    here = "/".join(parts[: i + 1])
    try:
        target = os.readlink(parts[i], dir_fd=dir_fd)  # the link's text; nothing is followed
    except OSError:
        target = "?"
    last = i == len(parts) - 1
    where = "" if last else f" (on the way to {_shown(usr, '/'.join(parts))})"
    return SymlinkError(f"{_shown(usr, here)} is a symlink to {target}{where}; onix follows no "
                        "symlink there, so that it never reads or writes outside the root",
                        where=usr / here, target=target,
                        hint=f"ship {_shown(usr, here)} as {want if last else DIRECTORY}, "
                        "not a symlink")


def _lstat_at(usr: Path, parts: list[str], i: int, dir_fd: int,
              want: str = DIRECTORY) -> os.stat_result:
    """lstat of parts[i] in dir_fd; OnixError if it is a symlink."""
    st = os.stat(parts[i], dir_fd=dir_fd, follow_symlinks=False)
    if stat.S_ISLNK(st.st_mode):
        raise _symlink_error(usr, parts, i, dir_fd, want)
    return st


def _missing(usr: Path, parts: list[str], i: int) -> FileNotFoundError:
    return FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT),
                             str(usr.joinpath(*parts[: i + 1])))


def _step(base: Path, parts: list[str], i: int, fd: int, create: int | None,
          created: list[Path] | None) -> int:
    """Open parts[i] in fd as a directory with O_NOFOLLOW, making it if asked to.

    The open itself refuses a symlink (ENOTDIR), also one swapped in a moment ago; only
    then is the entry looked at, to say what it is.
    """
    try:
        return os.open(parts[i], _DIR_FLAGS, dir_fd=fd)
    except FileNotFoundError:
        if create is None:
            raise _missing(base, parts, i) from None
    except OSError as e:
        if e.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        try:
            _lstat_at(base, parts, i, fd)
        except FileNotFoundError:
            raise _missing(base, parts, i) from None
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR),
                                 str(base.joinpath(*parts[: i + 1]))) from None
    os.mkdir(parts[i], create, dir_fd=fd)  # the mode goes through the umask, as mkdir's does
    if created is not None:
        created.append(base.joinpath(*parts[: i + 1]))
    return _step(base, parts, i, fd, None, None)


def _descend(base: Path, parts: list[str], upto: int, *, dir_fd: int | None = None,
             create: int | None = None, created: list[Path] | None = None) -> int:
    """An fd of base/<parts[:upto]> (see open_dirs); the errors name the whole path."""
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) if dir_fd is None \
        else os.dup(dir_fd)
    try:
        for i in range(upto):
            nfd = _step(base, parts, i, fd, create, created)
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_dirs(base: Path, rel: str, *, dir_fd: int | None = None, create: int | None = None,
              created: list[Path] | None = None) -> int:
    """An fd of the directory base/<rel> (the caller closes it), reached one component at
    a time, each opened with O_NOFOLLOW: no symlink below base is ever followed.

    base itself is the caller's and is taken as given; with dir_fd the walk starts from
    that open directory instead, and base only names paths in errors. A component that
    is a symlink is a SymlinkError naming it. One that is missing is FileNotFoundError,
    one that is something else NotADirectoryError, each naming that component; with
    `create`, missing directories are made with that mode (and listed in `created`).
    """
    base = Path(base)
    parts = _parts(rel)
    return _descend(base, parts, len(parts), dir_fd=dir_fd, create=create, created=created)


def check_dirs(base: Path, *rels: str) -> None:
    """Refuse a symlink anywhere on the way to, or at, each base/<rel> (SymlinkError).

    What is missing or not a directory is left to the caller's next step.
    """
    for rel in rels:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            os.close(open_dirs(base, rel))


def _open_parent(usr: Path, parts: list[str]) -> int:
    """An fd of the directory that holds usr/<parts>, reached without following symlinks.

    FileNotFoundError if a directory on the way is missing or is not a directory.
    """
    try:
        return _descend(usr, parts, len(parts) - 1)
    except NotADirectoryError as e:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), e.filename) from None


def lstat_below(usr: Path, rel: str, *, want: str = ANY) -> os.stat_result | None:
    """lstat of usr/<rel> reached without following any symlink below usr.

    None if it, or a directory on the way, does not exist. OnixError naming the
    component if any of them, usr/<rel> itself included, is a symlink; its hint
    says to ship `want` there instead.
    """
    parts = _parts(rel)
    try:
        fd = _open_parent(Path(usr), parts)
    except FileNotFoundError:
        return None
    try:
        return _lstat_at(Path(usr), parts, len(parts) - 1, fd, want)
    except (FileNotFoundError, NotADirectoryError):
        return None
    finally:
        os.close(fd)


def is_regular(usr: Path, rel: str) -> bool:
    """usr/<rel> is a regular file (see lstat_below: a symlink on the way is an error)."""
    st = lstat_below(usr, rel, want=FILE)
    return st is not None and stat.S_ISREG(st.st_mode)


def is_directory(usr: Path, rel: str) -> bool:
    """usr/<rel> is a directory (see lstat_below: a symlink on the way is an error)."""
    st = lstat_below(usr, rel, want=DIRECTORY)
    return st is not None and stat.S_ISDIR(st.st_mode)


def read_regular(usr: Path, rel: str) -> bytes:
    """The bytes of the regular file usr/<rel>, reached without following any symlink.

    FileNotFoundError if it (or a directory on the way) does not exist; OnixError
    naming the component if a symlink is on the way or is the file itself, and
    OnixError if it is not a regular file.
    """
    usr = Path(usr)
    parts = _parts(rel)
    dfd = _open_parent(usr, parts)
    try:
        try:
            st = _lstat_at(usr, parts, len(parts) - 1, dfd, FILE)
        except (FileNotFoundError, NotADirectoryError):
            raise _missing(usr, parts, len(parts) - 1) from None
        if not stat.S_ISREG(st.st_mode):  # checked before open: a FIFO would block it
            raise OnixError(f"{_shown(usr, rel)} is not a regular file", path=usr / rel,
                            hint=f"ship a regular file at {_shown(usr, rel)}")
        try:
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=dfd)
        except OSError as e:
            if e.errno == errno.ELOOP:  # swapped for a symlink since the lstat
                raise _symlink_error(usr, parts, len(parts) - 1, dfd, FILE) from None
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OnixError(f"{_shown(usr, rel)} is not a regular file", path=usr / rel,
                                hint=f"ship a regular file at {_shown(usr, rel)}")
            with os.fdopen(fd, "rb", closefd=False) as f:
                return f.read()
        finally:
            os.close(fd)
    finally:
        os.close(dfd)


# -- following links by hand, inside a tree ------------------------------------------------


@dataclass(frozen=True)
class Followed:
    """Where `follow_links` ended. `path` is set when every component was found and is a
    real directory (the last one anything but a link; "" for the base itself); else
    `problem` says why: "missing" (nothing there), "notdir" (a file where a directory was
    needed), "up" (a `..` above the base), "outside" (an absolute target `absolute`
    refused: `link` and `target` say which), "loop" (more than max_links links)."""

    path: str | None
    links: tuple[str, ...] = ()
    problem: str | None = None
    link: str | None = None
    target: str | None = None


def follow_links(base: Path, rel: str, *, max_links: int,
                 absolute: Callable[[str], str | None] = lambda target: target,
                 alias: Callable[[str], str | None] = lambda part: None) -> Followed:
    """Resolve `rel` below `base` the way the kernel would, but by hand: every link is read
    with readlink and its target resolved here, so nothing outside `base` is ever looked
    at. `absolute` maps an absolute target to a path below `base` (None: it leads out);
    `alias(part)` may name where a missing first component really is (a merged-/usr tree's
    lib/ is usr/lib)."""
    done: list[str] = []
    links: list[str] = []
    todo = [p for p in rel.split("/") if p not in ("", ".")][::-1]  # a stack: next at the end
    while todo:
        part = todo.pop()
        if part == "..":
            if not done:
                return Followed(None, tuple(links), "up")
            done.pop()
            continue
        here = "/".join([*done, part])
        st = _lstat_or_none(base / here)
        if st is None and not done and (real := alias(part)) is not None:
            done, here = real.split("/")[:-1], real
            st = _lstat_or_none(base / here)
        if st is None:
            return Followed(None, tuple(links), "missing")
        if stat.S_ISLNK(st.st_mode):
            if len(links) >= max_links:
                return Followed(None, tuple(links), "loop")
            links.append(here)
            target = os.readlink(base / here)
            if target.startswith("/"):
                inside = absolute(target)
                if inside is None:
                    return Followed(None, tuple(links), "outside", link=here, target=target)
                done, target = [], inside
            todo.extend(p for p in target.split("/")[::-1] if p not in ("", "."))
            continue
        if todo and not stat.S_ISDIR(st.st_mode):
            return Followed(None, tuple(links), "notdir")
        done.append(part)
    return Followed("/".join(done), tuple(links))


def _lstat_or_none(path: Path) -> os.stat_result | None:
    try:
        return path.lstat()  # no symlink on the way: every component was checked
    except (FileNotFoundError, NotADirectoryError):
        return None
