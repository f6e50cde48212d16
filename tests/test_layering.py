"""The library's shape holds: no import cycles, planes below the api, only the api takes a
root, the CLI talks only to the api.

Imports are read with `ast` from every module of onix/, at the top of a module and inside
functions alike (a cycle hidden in a function is still a cycle: it only fails later).
`from onix.pkg import name` counts as importing onix.pkg.name when that is a module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ONIX = REPO / "onix"
PLANES = ("machine", "boot", "nix", "services", "repo", "build")


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(ONIX.rglob("*.py")):
        name = ".".join(p.relative_to(REPO).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = p
    return out


MODULES = _modules()


def imports_of(source: str, known: set[str]) -> dict[str, int]:
    """onix module → first line that imports it, for every import in `source`."""
    out: dict[str, int] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                target = full if full in known else node.module
                if target.startswith("onix"):
                    out.setdefault(target, node.lineno)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("onix"):
                    out.setdefault(alias.name, node.lineno)
    return out


def graph() -> dict[str, dict[str, int]]:
    known = set(MODULES)
    return {m: {d: ln for d, ln in imports_of(p.read_text(), known).items()
                if d in known and d != m}
            for m, p in MODULES.items()}


def cycles(g: dict[str, dict[str, int]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_sees_a_cycle_inside_a_function() -> None:
    known = {"onix.a", "onix.b", "onix.c"}
    a = imports_of("def f():\n    from onix import b\n", known)
    b = imports_of("from onix.c import thing\n", known)
    c = imports_of("import onix.a\n", known)
    assert cycles({"onix.a": a, "onix.b": b, "onix.c": c}) == [["onix.a", "onix.b", "onix.c"]]
    assert cycles({"onix.a": a, "onix.b": b, "onix.c": {}}) == []


def test_no_module_imports_itself_back() -> None:
    found = cycles(graph())
    assert not found, "import cycles: " + "; ".join(" → ".join(c) for c in found)


@pytest.mark.parametrize("plane", PLANES)
def test_the_planes_never_import_the_api_or_the_cli(plane: str) -> None:
    g = graph()
    bad = {m: sorted(d for d in deps if d == "onix.api" or d.startswith("onix.cli"))
           for m, deps in g.items() if m.startswith(f"onix.{plane}.") or m == f"onix.{plane}"}
    assert not {m: d for m, d in bad.items() if d}


def test_the_cli_talks_only_to_the_api() -> None:
    """Commands parse, call onix.api (or the validation harness above it) and print."""
    allowed = ("onix.api", "onix.cli", "onix.validate", "onix.core.errors", "onix.core.progress")
    g = graph()
    bad = {m: sorted(d for d in deps if not d.startswith(allowed))
           for m, deps in g.items() if m.startswith("onix.cli")}
    assert not {m: d for m, d in bad.items() if d}


def test_only_the_api_takes_a_root() -> None:
    """Below onix/api.py a function takes a Session or RootPaths, never a bare `root: Path |
    str` that it would resolve itself (RootPaths.of is where that happens)."""
    offenders = []
    for name, path in MODULES.items():
        if name == "onix.api" or name.startswith("onix.cli") or name == "onix.core.paths":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for arg in [*node.args.args, *node.args.kwonlyargs]:
                if arg.arg == "root" and arg.annotation is not None and \
                        ast.unparse(arg.annotation).replace(" ", "") in ("Path|str", "str|Path"):
                    offenders.append(f"{name}.{node.name}")
    assert not offenders, f"take a Session or RootPaths instead of a root: {offenders}"
