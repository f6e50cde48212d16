"""The host contract: every program onix and its tests run, and every host file they read,
is declared in onix/core/tools.py with its Debian package, and scripts/bootstrap installs
every one of those packages (and every recipe's builddeps).

The code is read with `ast`, not run, so a program named on a path no test reaches is
found all the same. What counts as naming a program:
- `which("x")` (proc.which, shutil.which), or a call of run/Popen/check_output/… whose first
  argument is a list or tuple literal starting with the string "x";
- a `for t in ("x", "y")` loop whose body calls which(t);
- `tools.host_file("/usr/…")` or `Path("/usr/…")` for a file read from the host.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from onix.core import proc, tools

REPO = Path(__file__).resolve().parents[2]
RUNNERS = {"run", "Popen", "check_output", "check_call", "call", "_run", "which"}
NOT_PROGRAMS = {"validate"}  # validate.run(["rollback"]) takes scenario names


def _str(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _calls_which(body: list[ast.stmt]) -> bool:
    return any(isinstance(n, ast.Call) and _func_name(n) == "which"
               for stmt in body for n in ast.walk(stmt))


def _func_name(call: ast.Call) -> str | None:
    f = call.func
    if isinstance(f, ast.Attribute):
        receiver = f.value.id if isinstance(f.value, ast.Name) else None
        return None if receiver in NOT_PROGRAMS else f.attr
    return f.id if isinstance(f, ast.Name) else None


def named_in(source: str) -> tuple[set[str], set[str]]:
    """(programs, host files) that a Python source names (see the module docstring)."""
    programs: set[str] = set()
    files: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.For) and isinstance(node.iter, (ast.Tuple, ast.List)) \
                and _calls_which(node.body):
            programs |= {s for s in map(_str, node.iter.elts) if s}
        if not isinstance(node, ast.Call) or not node.args:
            continue
        name, first = _func_name(node), node.args[0]
        if name in ("host_file", "Path") and (_str(first) or "").startswith("/usr/"):
            files.add(_str(first))
        elif name == "which" and _str(first):
            programs.add(_str(first))
        elif name in RUNNERS and isinstance(first, (ast.List, ast.Tuple)) and first.elts \
                and _str(first.elts[0]):
            programs.add(_str(first.elts[0]))
    # /bin/sh is the host's sh: a program by path in a bin directory counts by its name
    return {re.sub(r"^(/usr)?/s?bin/", "", p) for p in programs}, files


def _named(*dirs: str) -> dict[str, set[str]]:
    """program or file → the files of `dirs` that name it."""
    where: dict[str, set[str]] = {}
    for d in dirs:
        for path in sorted((REPO / d).rglob("*.py")):
            if path.name == Path(__file__).name:  # its own examples are not programs it runs
                continue
            programs, files = named_in(path.read_text())
            for what in programs | files:
                where.setdefault(what, set()).add(str(path.relative_to(REPO)))
    return where


def bootstrap_packages() -> set[str]:
    """The APT_PACKAGES array of scripts/bootstrap, comments dropped."""
    text = (REPO / "scripts/bootstrap").read_text()
    m = re.search(r"^APT_PACKAGES=\((.*?)^\)", text, re.S | re.M)
    assert m, "scripts/bootstrap has no APT_PACKAGES=( … ) array"
    return {w for line in m.group(1).splitlines() for w in line.split("#")[0].split()}


def test_the_scanner_finds_every_way_of_naming_a_program() -> None:
    src = '''
proc.run(["sfdisk", "--json", disk])
subprocess.run(("mount", "-t", "tmpfs"), check=True)
x = proc.which("debugfs")
for tool in ("unshare", "s6-svscan"):
    if shutil.which(tool) is None:
        pass
validate.run(["rollback"], repo=repo)
OVMF = tools.host_file("/usr/share/OVMF/OVMF_CODE_4M.fd")
SD = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")
guest = Path("/proc/self/mountinfo")
'''
    programs, files = named_in(src)
    assert programs == {"sfdisk", "mount", "debugfs", "unshare", "s6-svscan"}
    assert files == {"/usr/share/OVMF/OVMF_CODE_4M.fd",
                     "/usr/lib/systemd/boot/efi/systemd-bootx64.efi"}


def test_every_program_onix_runs_is_declared_in_programs() -> None:
    named = _named("onix")
    undeclared = {p: sorted(w) for p, w in named.items()
                  if not p.startswith("/") and p not in tools.PROGRAMS}
    assert not undeclared, f"declare these in onix/core/tools.py PROGRAMS: {undeclared}"


def test_every_program_and_file_the_tests_use_is_declared() -> None:
    named = _named("tests")
    declared = {**tools.PROGRAMS, **tools.FOR_TESTS, **tools.FILES}
    undeclared = {p: sorted(w) for p, w in named.items() if p not in declared}
    assert not undeclared, f"declare these in onix/core/tools.py: {undeclared}"


def test_every_host_file_onix_reads_is_declared() -> None:
    files = {p for p in _named("onix") if p.startswith("/")}
    assert files, "the scanner found no host file in onix/ (OVMF, the archive keyring)"
    assert files <= set(tools.FILES), sorted(files - set(tools.FILES))


def test_the_bootstrap_installs_every_declared_package() -> None:
    missing = sorted(tools.packages() - bootstrap_packages())
    assert not missing, f"add to APT_PACKAGES in scripts/bootstrap: {missing}"


def test_the_bootstrap_installs_every_recipes_builddeps() -> None:
    wanted = {}
    for recipe in sorted((REPO / "recipes").glob("*.yaml")):
        for dep in yaml.safe_load(recipe.read_text()).get("builddeps") or []:
            wanted.setdefault(dep, []).append(recipe.name)
    assert wanted, "no recipe declares builddeps: the check would prove nothing"
    missing = {d: r for d, r in wanted.items() if d not in bootstrap_packages()}
    assert not missing, f"add to APT_PACKAGES in scripts/bootstrap: {missing}"


def test_an_undeclared_program_is_refused_before_it_runs() -> None:
    with pytest.raises(ValueError, match=r"not declared in onix/core/tools\.py"):
        proc.which("frobnicate")
    with pytest.raises(ValueError, match=r"not declared in onix/core/tools\.py"):
        proc.run(["frobnicate", "--now"])


def test_a_missing_program_names_its_package(monkeypatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(Exception, match="sfdisk is not installed") as e:
        proc.run(["sfdisk", "--json", "/dev/null"])
    assert "fdisk" in e.value.hint


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="not a Debian machine")
def test_each_declared_package_really_provides_its_program_or_file() -> None:
    """A wrong package name would install the wrong thing: ask dpkg who owns each path."""
    wrong = {}
    for what, pkg in {**tools.PROGRAMS, **tools.FOR_TESTS, **tools.FILES}.items():
        path = what if what.startswith("/") else shutil.which(what)
        if path is None or not os.path.exists(path):
            continue  # missing ones are the next test's business
        owners = _owners(Path(path))
        if owners and pkg not in owners:
            wrong[what] = (pkg, sorted(owners))
    assert not wrong, f"declared package → dpkg's owners: {wrong}"


def _owners(path: Path) -> set[str]:
    """Packages dpkg says own `path` (by its name and by its real path, /usr-merge aside)."""
    found: set[str] = set()
    for p in {path, path.resolve()}:
        for candidate in {str(p), re.sub(r"^/usr(?=/(s?bin|lib)/)", "", str(p))}:
            r = subprocess.run(["dpkg-query", "-S", candidate], capture_output=True, text=True)
            for line in r.stdout.splitlines():
                found |= {o.strip().split(":")[0] for o in line.split(": ")[0].split(",")}
    return found


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("apt-get") is None,
                    reason="the bootstrap installs Debian packages only as root")
def test_after_the_bootstrap_every_declared_program_and_file_is_here() -> None:
    assert tools.missing() == [], "./scripts/bootstrap did not install these"
