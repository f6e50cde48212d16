"""Recipes: the YAML files in recipes/ that say how a stone is built.

A recipe is read with PyYAML's node API (``yaml.compose`` with the SafeLoader), not
``safe_load``, so every error can name the file and line it is about: an unknown key,
a missing required field (the line of the mapping that lacks it), a value of the wrong
type (the line of the value), an unknown ``%(macro)``. Errors are RecipeError with
``path="recipes/x.yaml:12"``.

Format (docs/recipes.md is the user-facing description)::

    name: busybox                  # required, [a-z0-9][a-z0-9+._-]*
    version: 1.35.0                # required string (a YAML number is refused)
    release: 1                     # required int >= 1
    summary: …                     # required
    license: GPL-2.0-only          # required
    homepage: https://busybox.net  # optional
    scaffolding: |                 # required iff an upstream is debian-binary
    source-date-epoch: 1700000000  # optional int, SOURCE_DATE_EPOCH for the steps
    upstreams:
      - path: ../src/x.c           # in this repository, relative to the recipe
        sha256: …                  # optional (files only)
        unpack: false              # optional; default true for tarballs
      - debian-source: busybox     # the .orig tarball of a Debian source package
        version: 1:1.35.0-4        # optional: only `file` is kept and sha256 pins it
        file: busybox_1.35.0.orig.tar.bz2
        sha256: …                  # required
        unpack: true
      - debian-binary: s6          # a .deb, extracted to %(sourcedir)/s6/
        version: 2.11.3.2-1        # required
        sha256: …                  # required, of the .deb
        suite: bookworm-backports  # optional: through a private list (sources.py)
    builddeps: [musl-tools]        # Debian packages the host needs
    rundeps: [busybox, "libdrm2 >= 2.4.120"]  # added to the main stone's depends
    closure: debian                # optional: pull the Debian library closure
    environment: {KEY: value}
    setup/build/install/check: |   # bash -euo pipefail scripts
    options: {strip: true}
    packages:                      # splits, first match wins, main takes the rest
      - name: "%(name)-devel"
        summary: …
        paths: [usr/include/*]
        rundeps: []

Macros ``%(x)``, expanded in steps, environment values and package names (package
names only know name, version and release): see MACROS.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from onix.core.errors import OnixError

NAME_RE = re.compile(r"[a-z0-9][a-z0-9+._-]*\Z")
SHA256_RE = re.compile(r"[0-9a-f]{64}\Z")
MACRO_RE = re.compile(r"%\(([^)\s]*)\)")
STEPS = ("setup", "build", "install", "check")
TARBALL_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz",
                    ".tar.zst", ".tar.lz", ".tar.lzma")
DEFAULT_SOURCE_DATE_EPOCH = 1700000000
TARGET = "x86_64-linux-musl"
ARCH = "x86_64"  # of every stone a recipe makes

# Macro name → what it is. Values come from build.py once the work dir exists.
MACROS = {
    "name": "the recipe's name",
    "version": "the recipe's version",
    "release": "the recipe's release",
    "installroot": "the DESTDIR the install step fills (only its usr/ is kept)",
    "sourcedir": "where upstreams are placed",
    "workdir": "the first unpacked tarball's directory, else sourcedir",
    "builddir": "an empty directory for out-of-tree builds",
    "jobs": "parallel jobs",
    "target": "the target triple (x86_64-linux-musl)",
    "prefix": "/usr",
    "bindir": "/usr/bin",
    "sbindir": "/usr/sbin",
    "libdir": "/usr/lib",
    "datadir": "/usr/share",
    "recipedir": "the directory holding the recipe file",
}
NAME_MACROS = ("name", "version", "release")

TOP_KEYS = {"name", "version", "release", "summary", "license", "homepage", "scaffolding",
            "source-date-epoch", "upstreams", "builddeps", "rundeps", "closure", "environment",
            "options", "packages", *STEPS}
REQUIRED = ("name", "version", "release", "summary", "license")
UPSTREAM_KEYS = {
    "path": ({"path", "sha256", "unpack"}, ()),
    "debian-source": ({"debian-source", "version", "file", "sha256", "unpack"},
                      ("file", "sha256")),
    "debian-binary": ({"debian-binary", "version", "sha256", "suite"}, ("version", "sha256")),
    # a wheel from PyPI, by project name and version; `file` picks the exact wheel
    "pypi": ({"pypi", "version", "file", "sha256"}, ("version", "file", "sha256")),
}
PYPI_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
# A Debian suite (codename form): bookworm, bookworm-backports, bookworm-updates
SUITE_RE = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*\Z")
OPTION_KEYS = {"strip"}
PACKAGE_KEYS = {"name", "summary", "paths", "rundeps"}


class RecipeError(OnixError):
    """A recipe file that does not parse or does not follow the format."""


@dataclass(frozen=True)
class Upstream:
    kind: str                 # "path" | "debian-source" | "debian-binary" | "pypi"
    ref: str                  # the path as written, or the Debian package name
    version: str | None = None
    file: str | None = None   # debian-source: the file to keep
    sha256: str | None = None
    unpack: bool | None = None  # None: decide by the file name (tarballs unpack)
    line: int = 0             # 1-based line of the upstream's entry
    sha256_line: int = 0      # line of its sha256 (for "update sha256 in file:line")
    suite: str | None = None  # debian-binary: fetch through a private list of this suite

    def describe(self) -> str:
        if self.kind == "path":
            return self.ref
        return f"{self.ref}={self.version}" if self.version else self.ref

    def wants_unpack(self, filename: str) -> bool:
        if self.unpack is not None:
            return self.unpack
        return self.kind not in ("debian-binary", "pypi") and is_tarball(filename)


@dataclass(frozen=True)
class Package:
    name: str
    summary: str
    paths: tuple[str, ...]
    rundeps: tuple[str, ...] = ()


@dataclass
class Recipe:
    path: Path                # as given (relative paths stay relative: errors name them so)
    name: str
    version: str
    release: int
    summary: str
    license: str
    homepage: str | None = None
    scaffolding: str | None = None
    source_date_epoch: int = DEFAULT_SOURCE_DATE_EPOCH
    upstreams: list[Upstream] = field(default_factory=list)
    builddeps: list[str] = field(default_factory=list)
    rundeps: list[str] = field(default_factory=list)
    closure: bool = False
    environment: dict[str, str] = field(default_factory=dict)
    steps: dict[str, str] = field(default_factory=dict)       # only the steps given
    step_lines: dict[str, int] = field(default_factory=dict)  # first line of each script
    strip: bool = True
    packages: list[Package] = field(default_factory=list)
    repo_root: Path | None = None  # git toplevel (path upstreams must stay inside)

    @property
    def recipedir(self) -> Path:
        return self.path.resolve().parent

    def where(self, line: int) -> str:
        return f"{self.path}:{line}"


def is_tarball(filename: str) -> bool:
    return filename.endswith(TARBALL_SUFFIXES)


def expand(text: str, macros: dict[str, str], *, where: str) -> str:
    """Replace %(x) by macros[x]; an unknown name is an error naming `where`."""

    def sub(m: re.Match) -> str:
        if m.group(1) not in macros:
            raise RecipeError(f"unknown macro %({m.group(1)})", path=where,
                              hint=f"use one of {', '.join(sorted(macros))}")
        return macros[m.group(1)]

    return MACRO_RE.sub(sub, text)


# -- loading -------------------------------------------------------------------


class _Reader:
    """Typed access to composed YAML nodes, with file:line in every error."""

    def __init__(self, path: Path):
        self.path = path

    def at(self, node: yaml.Node) -> str:
        return f"{self.path}:{node.start_mark.line + 1}"

    def fail(self, node: yaml.Node, message: str, hint: str) -> RecipeError:
        return RecipeError(message, path=self.at(node), hint=hint)

    def mapping(self, node: yaml.Node, what: str, allowed: set[str],
                required: tuple[str, ...] = ()) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{what} must be a mapping (key: value lines)",
                            "see docs/recipes.md for the format")
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for k, v in node.value:
            if not isinstance(k, yaml.ScalarNode) or k.tag != "tag:yaml.org,2002:str":
                raise self.fail(k, f"keys of {what} must be plain words", "quote nothing here")
            if k.value not in allowed:
                if isinstance(allowed, _AnyKey):
                    raise self.fail(k, f"{k.value!r} is not a valid name in {what}",
                                    "use letters, digits and _ (not starting with a digit)")
                close = min(sorted(allowed), key=lambda a: _distance(a, k.value))
                raise self.fail(k, f"unknown key {k.value!r} in {what}",
                                f"did you mean {close!r}? allowed: {', '.join(sorted(allowed))}")
            if k.value in out:
                raise self.fail(k, f"key {k.value!r} given twice in {what}", "keep one")
            out[k.value] = (k, v)
        for key in required:
            if key not in out:
                raise self.fail(node, f"{what} lacks the required key {key!r}",
                                f"add `{key}:` (see docs/recipes.md)")
        return out

    def string(self, node: yaml.Node, what: str, *, allow_empty: bool = False) -> str:
        if not isinstance(node, yaml.ScalarNode) or node.tag != "tag:yaml.org,2002:str":
            kind = _kind(node)
            raise self.fail(node, f"{what} must be a string, not {kind}",
                            f'quote it: "{node.value}"' if isinstance(node, yaml.ScalarNode)
                            else "write a single string")
        if not allow_empty and not node.value.strip():
            raise self.fail(node, f"{what} is empty", "give it a value")
        return node.value

    def integer(self, node: yaml.Node, what: str, *, minimum: int) -> int:
        if not isinstance(node, yaml.ScalarNode) or node.tag != "tag:yaml.org,2002:int":
            raise self.fail(node, f"{what} must be an integer, not {_kind(node)}",
                            f"write a whole number ≥ {minimum}")
        # YAML 1.1 also calls 010 (octal), 0x10, 0b10 and 1:30 (base 60) integers; a
        # release or an epoch is written in decimal, so anything else is a mistake
        if not re.fullmatch(r"\+?(0|[1-9][0-9_]*)", node.value):
            raise self.fail(node, f"{what} must be a plain decimal number, not {node.value!r}",
                            f"write a whole number ≥ {minimum} in decimal, without leading "
                            "zeros")
        value = int(node.value.replace("_", ""))
        if value < minimum:
            raise self.fail(node, f"{what} must be ≥ {minimum}, not {value}",
                            f"write a whole number ≥ {minimum}")
        return value

    def boolean(self, node: yaml.Node, what: str) -> bool:
        if not isinstance(node, yaml.ScalarNode) or node.tag != "tag:yaml.org,2002:bool":
            raise self.fail(node, f"{what} must be true or false, not {_kind(node)}",
                            "write true or false")
        return node.value.lower() in ("true", "yes", "on", "y")

    def strings(self, node: yaml.Node, what: str) -> list[str]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, f"{what} must be a list, not {_kind(node)}",
                            "write [a, b] or one `- item` per line")
        return [self.string(item, f"an item of {what}") for item in node.value]


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return {"tag:yaml.org,2002:int": "a number", "tag:yaml.org,2002:float": "a number",
            "tag:yaml.org,2002:bool": "a boolean", "tag:yaml.org,2002:null": "empty",
            "tag:yaml.org,2002:str": "a string"}.get(node.tag, node.tag)


def _distance(a: str, b: str) -> int:
    """Levenshtein distance, for 'did you mean' on a mistyped key."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def _script_first_line(node: yaml.ScalarNode) -> int:
    """1-based line of a script's first line (a `|` block starts on the next line)."""
    return node.start_mark.line + 1 + (1 if node.style in ("|", ">") else 0)


def _check_macros(text: str, node: yaml.ScalarNode, r: _Reader, allowed: tuple[str, ...] | dict,
                  first_line: int) -> None:
    for m in MACRO_RE.finditer(text):
        if m.group(1) not in allowed:
            line = first_line + text.count("\n", 0, m.start())
            raise RecipeError(f"unknown macro %({m.group(1)})", path=f"{r.path}:{line}",
                              hint=f"use one of {', '.join(sorted(allowed))}")


def load(path: Path) -> Recipe:
    """Read and check a recipe file; every error names file:line."""
    path = Path(path)
    root = _compose(path)
    r = _Reader(path)
    if root is None:
        raise RecipeError("the recipe is empty", path=f"{path}:1",
                          hint="see docs/recipes.md for the format")
    top = {key: value for key, (_k, value) in
           r.mapping(root, "the recipe", TOP_KEYS, REQUIRED).items()}
    recipe = _identity(top, r=r)
    _read_fields(recipe, top=top, r=r)
    _read_scripts(recipe, top=top, r=r)
    _read_upstreams(recipe, top=top, r=r, root=root)
    _read_packages(recipe, top=top, r=r)
    return recipe


def _compose(path: Path) -> yaml.Node | None:
    """The recipe file as YAML nodes (they carry the line numbers errors name)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError("no such recipe file", path=path,
                          hint="pass a recipes/*.yaml file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"cannot read the recipe ({e})", path=path,
                          hint="check the file") from None
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise RecipeError(f"not valid YAML: {e.problem or e.context}", path=where,
                          hint="fix the YAML syntax") from None
    except yaml.reader.ReaderError as e:
        # a character YAML refuses (NUL, other controls): its line from the position
        line = text.count("\n", 0, e.position) + 1
        char = e.character if isinstance(e.character, int) else ord(e.character)
        raise RecipeError(f"not valid YAML: the character U+{char:04X} is not allowed",
                          path=f"{path}:{line}", hint="remove it") from None
    except yaml.YAMLError as e:
        raise RecipeError(f"not valid YAML: {' '.join(str(e).split())}", path=path,
                          hint="fix the YAML syntax") from None


def _identity(top: dict[str, yaml.Node], *, r: _Reader) -> Recipe:
    """A Recipe of the required fields: name, version, release, summary, license."""
    name = r.string(top["name"], "name")
    if not NAME_RE.match(name):
        raise r.fail(top["name"], f"name {name!r} is not [a-z0-9][a-z0-9+._-]*",
                     "use lower-case letters, digits and + . _ -")
    version = r.string(top["version"], "version")
    if any(c.isspace() or c == "/" for c in version):
        raise r.fail(top["version"], f"version {version!r} has a space or slash",
                     "use a plain version like 1.35.0")
    return Recipe(path=r.path, name=name, version=version,
                  release=r.integer(top["release"], "release", minimum=1),
                  summary=r.string(top["summary"], "summary"),
                  license=r.string(top["license"], "license"))


def _read_fields(recipe: Recipe, *, top: dict[str, yaml.Node], r: _Reader) -> None:
    """The optional plain fields, homepage to closure."""
    if "homepage" in top:
        recipe.homepage = r.string(top["homepage"], "homepage")
    if "scaffolding" in top:
        recipe.scaffolding = r.string(top["scaffolding"], "scaffolding")
    if "source-date-epoch" in top:
        recipe.source_date_epoch = r.integer(top["source-date-epoch"], "source-date-epoch",
                                             minimum=0)
    if "builddeps" in top:
        recipe.builddeps = r.strings(top["builddeps"], "builddeps")
    if "rundeps" in top:
        recipe.rundeps = _rundeps(top["rundeps"], r, recipe)
    if "closure" in top:
        node = top["closure"]
        if r.string(node, "closure") != "debian":
            raise r.fail(node, f"closure {node.value!r} is not known",
                         "the only closure is `debian`")
        recipe.closure = True


def _read_scripts(recipe: Recipe, *, top: dict[str, yaml.Node], r: _Reader) -> None:
    """The environment, the step scripts and the options: what the build runs with."""
    if "environment" in top:
        env = r.mapping(top["environment"], "environment",
                        _AnyKey(lambda k: re.match(r"[A-Za-z_][A-Za-z0-9_]*\Z", k)))
        for key, (_k, v) in env.items():
            value = r.string(v, f"environment value {key}", allow_empty=True)
            _check_macros(value, v, r, MACROS, v.start_mark.line + 1)
            recipe.environment[key] = value
    for step in STEPS:
        if step in top:
            node = top[step]
            script = r.string(node, step, allow_empty=True)
            recipe.steps[step] = script
            recipe.step_lines[step] = _script_first_line(node)
            _check_macros(script, node, r, MACROS, recipe.step_lines[step])
    if "options" in top:
        opts = r.mapping(top["options"], "options", OPTION_KEYS)
        if "strip" in opts:
            recipe.strip = r.boolean(opts["strip"][1], "options.strip")


def _read_upstreams(recipe: Recipe, *, top: dict[str, yaml.Node], r: _Reader,
                    root: yaml.Node) -> None:
    """The upstreams, checked together: one suite at most, a repack says why, paths inside."""
    if "upstreams" in top:
        node = top["upstreams"]
        if not isinstance(node, yaml.SequenceNode):
            raise r.fail(node, f"upstreams must be a list, not {_kind(node)}",
                         "write one `- path: …` or `- debian-source: …` entry per upstream")
        recipe.upstreams = [_upstream(item, r) for item in node.value]
        suites = sorted({u.suite for u in recipe.upstreams if u.suite})
        if len(suites) > 1:
            # the closure resolves against one private list (sources.closure_apt)
            raise r.fail(node, f"the upstreams name two suites ({', '.join(suites)})",
                         "fetch every debian-binary upstream of a recipe from one suite "
                         "(a -backports list includes its base suite)")
    if any(u.kind == "debian-binary" for u in recipe.upstreams) and not recipe.scaffolding:
        raise r.fail(root, "a recipe that repacks a Debian binary package must say why",
                     "add `scaffolding: |` saying why this is a repack and what replaces it")
    recipe.repo_root = _repo_root(recipe.path)
    for u in recipe.upstreams:
        if u.kind == "path":
            _check_inside(recipe, u)


def _read_packages(recipe: Recipe, *, top: dict[str, yaml.Node], r: _Reader) -> None:
    """The splits, in order; no two stones of the recipe may share a name."""
    if "packages" not in top:
        return
    node = top["packages"]
    if not isinstance(node, yaml.SequenceNode):
        raise r.fail(node, f"packages must be a list, not {_kind(node)}",
                     "write one `- name: …` entry per split")
    seen = {recipe.name, f"{recipe.name}-dbginfo"}
    for item in node.value:
        pkg = _package(item, r, recipe)
        if pkg.name in seen:
            raise r.fail(item, f"package name {pkg.name!r} is taken (the main stone, "
                         "its -dbginfo stone, or another split)", "rename the split")
        seen.add(pkg.name)
        recipe.packages.append(pkg)


class _AnyKey(set):
    """An 'allowed keys' set that accepts any key the predicate accepts."""

    def __init__(self, ok):
        super().__init__()
        self.ok = ok

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and bool(self.ok(key))


def _upstream(node: yaml.Node, r: _Reader) -> Upstream:
    if not isinstance(node, yaml.MappingNode):
        raise r.fail(node, "an upstream must be a mapping",
                     "start it with path:, debian-source:, debian-binary: or pypi:")
    keys = [k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode)]
    kinds = [k for k in keys if k in UPSTREAM_KEYS]
    if len(kinds) != 1:
        raise r.fail(node, "an upstream needs exactly one of path, debian-source, "
                     "debian-binary, pypi"
                     + (f" (it has {', '.join(kinds)})" if kinds else ""),
                     "split it into one entry per upstream")
    kind = kinds[0]
    allowed, required = UPSTREAM_KEYS[kind]
    m = r.mapping(node, f"a {kind} upstream", allowed, required)
    ref = r.string(m[kind][1], kind)
    if kind == "pypi":
        if not PYPI_RE.match(ref):
            raise r.fail(m[kind][1], f"{ref!r} is not a PyPI project name",
                         "write the project name only (version goes in `version:`)")
    elif kind != "path" and not NAME_RE.match(ref):
        raise r.fail(m[kind][1], f"{ref!r} is not a Debian package name",
                     "write the package name only (version goes in `version:`)")
    sha = None
    sha_line = 0
    if "sha256" in m:
        sha_node = m["sha256"][1]
        # the raw text: a pin of only digits would otherwise be read as a YAML number
        sha = (sha_node.value if isinstance(sha_node, yaml.ScalarNode) and sha_node.tag
               != "tag:yaml.org,2002:null" else r.string(sha_node, "sha256")).lower()
        sha_line = sha_node.start_mark.line + 1
        if not SHA256_RE.match(sha):
            raise r.fail(sha_node, "sha256 must be 64 hex digits",
                         "paste the output of sha256sum FILE")
    file = None
    if "file" in m:
        file = r.string(m["file"][1], "file")
        if "/" in file or file in (".", ".."):
            raise r.fail(m["file"][1], f"file {file!r} must be a plain file name",
                         "name the file as apt-get source downloads it")
    suite = None
    if "suite" in m:
        suite = r.string(m["suite"][1], "suite")
        if not SUITE_RE.match(suite):
            raise r.fail(m["suite"][1], f"suite {suite!r} is not a Debian suite name",
                         "write a codename suite such as bookworm-backports")
    return Upstream(kind=kind, ref=ref,
                    version=r.string(m["version"][1], "version") if "version" in m else None,
                    file=file, sha256=sha,
                    unpack=r.boolean(m["unpack"][1], "unpack") if "unpack" in m else None,
                    line=node.start_mark.line + 1, sha256_line=sha_line, suite=suite)


def _rundeps(node: yaml.Node, r: _Reader, recipe: Recipe) -> list[str]:
    """Dependency strings, with the name macros a split's name may use (%(name)-libs),
    each parsed (a name, a provider, or `NAME OP VERSION`) and kept in canonical form."""
    from onix.repo.versions import parse_dep

    out = []
    for dep, dnode in zip(r.strings(node, "rundeps"), node.value, strict=True):
        _check_macros(dep, dnode, r, NAME_MACROS, dnode.start_mark.line + 1)
        text = expand(dep, {"name": recipe.name, "version": recipe.version,
                            "release": str(recipe.release)}, where=r.at(dnode))
        try:
            out.append(str(parse_dep(text, where=r.at(dnode))))
        except OnixError as e:
            raise r.fail(dnode, f"rundeps: {e.message}", e.hint or "") from None
    return out


def _package(node: yaml.Node, r: _Reader, recipe: Recipe) -> Package:
    m = r.mapping(node, "a package split", PACKAGE_KEYS, ("name", "paths"))
    name_node = m["name"][1]
    raw = r.string(name_node, "package name")
    _check_macros(raw, name_node, r, NAME_MACROS, name_node.start_mark.line + 1)
    name = expand(raw, {"name": recipe.name, "version": recipe.version,
                        "release": str(recipe.release)}, where=r.at(name_node))
    if not NAME_RE.match(name):
        raise r.fail(name_node, f"package name {name!r} is not [a-z0-9][a-z0-9+._-]*",
                     "use lower-case letters, digits and + . _ -")
    paths = r.strings(m["paths"][1], "paths")
    for p, pnode in zip(paths, m["paths"][1].value, strict=True):
        if not p.startswith("usr/"):
            raise r.fail(pnode, f"path glob {p!r} does not start with usr/",
                         "globs match paths like usr/include/*")
    summary = (r.string(m["summary"][1], "summary") if "summary" in m
               else f"{recipe.summary} ({name.removeprefix(recipe.name + '-')})")
    rundeps = _rundeps(m["rundeps"][1], r, recipe) if "rundeps" in m else []
    return Package(name=name, summary=summary, paths=tuple(paths), rundeps=tuple(rundeps))


def _repo_root(path: Path) -> Path | None:
    """The git toplevel holding the recipe, or None outside a repository."""
    d = path.resolve().parent
    for cand in (d, *d.parents):
        if (cand / ".git").exists():
            return cand
    return None


def _check_inside(recipe: Recipe, u: Upstream) -> None:
    """A path upstream must stay inside the repository (or the recipe's dir outside one)."""
    bound = recipe.repo_root or recipe.recipedir
    target = (recipe.recipedir / u.ref).resolve()
    if target != bound and bound not in target.parents:
        what = "the repository" if recipe.repo_root else "the recipe's directory"
        raise RecipeError(f"path {u.ref!r} leaves {what} ({bound})",
                          path=recipe.where(u.line),
                          hint="put the source inside the repository")


def upstream_path(recipe: Recipe, u: Upstream) -> Path:
    """The file or directory a `path` upstream names (absolute)."""
    return (recipe.recipedir / u.ref).resolve()
