"""Prepare: the stones a command names, opened and checked before anything is written.

conda's link transaction calls this step *prepare*: every stone file is read, its
metadata checked and its digest taken while nothing on the root has changed yet, so a
corrupt or conflicting stone is refused with the root exactly as it was.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onix.core.errors import ConflictError, StateError
from onix.core.paths import RootPaths, read_state_id
from onix.machine.layout import Entry


@dataclass
class Candidate:
    """A stone named on the command line: opened and checked, not yet imported."""

    path: Path
    digest: str
    stone: Any  # onix.stone.Stone, open until the command ends

    @property
    def meta(self) -> dict:
        return self.stone.meta.as_dict()

    @property
    def layout(self) -> list[Entry]:
        return self.stone.layout


@contextmanager
def open_candidates(files: list[Path]) -> Iterator[list[Candidate]]:
    """Open and check every stone before anything is written; close them all at the end."""
    from onix.machine.stone import Stone, digest_file

    out: list[Candidate] = []
    seen: dict[str, Path] = {}
    try:
        for f in files:
            stone = Stone(Path(f))
            try:
                digest = digest_file(Path(f))
            except BaseException:
                stone.close()
                raise
            out.append(Candidate(Path(f).absolute(), digest, stone))
            name = stone.meta.name
            if name in seen:
                raise ConflictError(f"two stones named {name} given ({seen[name]} and {f})",
                                    path=f, hint="pass only one version of a stone")
            seen[name] = Path(f)
        yield out
    finally:
        for cand in out:
            cand.stone.close()


def unmet_dependencies(selection: dict[str, dict]) -> list[str]:
    """Depends no stone of the selection meets: a stone provides its own name and its
    `provides`; a versioned one (`libdrm2 >= 2.4.120`) needs the stone of that name at a
    version that meets it."""
    from onix.repo.versions import parse_dep

    def strings(value: object) -> list[str]:
        return json.loads(value) if isinstance(value, str) else list(value or [])

    provided: set[str] = set()
    for name, meta in selection.items():
        provided.add(name)
        provided.update(strings(meta["provides"]))
    out = []
    for name, meta in sorted(selection.items()):
        for raw in strings(meta["depends"]):
            dep = parse_dep(raw, where=f"stone {name}")
            if not dep.constrained:
                if dep.name not in provided:
                    out.append(f"{name} needs {dep}")
                continue
            have = selection.get(dep.name)
            if have is None:
                out.append(f"{name} needs {dep}")
            elif not dep.allows(have.get("version"), have.get("release")):
                out.append(f"{name} needs {dep} ({dep.name} {have.get('version')}-"
                           f"{have.get('release')} is in the selection)")
    return out


def check_usr_is_ours(paths: RootPaths) -> None:
    usr = paths.usr
    if usr.is_symlink() or (usr.exists() and not usr.is_dir()):
        raise StateError("is not a directory onix can swap", path=usr,
                         hint="move it away; onix owns /usr")
    if usr.is_dir() and read_state_id(usr) is None and any(usr.iterdir()):
        raise StateError("exists but was not made by onix (no .stateID)", path=usr,
                         hint="move it aside (e.g. to usr.orig) so onix can own /usr")
