"""Recipes (onix/build/recipe.py): every error names the recipe's file and line, whether an
unknown key, a missing field, a value of the wrong type, an unknown macro, a release that
is no plain decimal or a NUL byte; and every recipe in recipes/ loads."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from conftest import REPO, onix

from onix.build.recipe import RecipeError, load
from onix.core.errors import OnixError

BASE = """\
name: demo
version: 1.0.0
release: 1
summary: a demo
license: MIT
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def error_of(recipe: Path) -> OnixError:
    with pytest.raises(OnixError) as e:
        load(recipe)
    return e.value


# -- recipe errors name file:line ---------------------------------------------------


def test_unknown_key_names_file_and_line(tmp_path):
    r = write(tmp_path / "r.yaml", BASE + "buidl: |\n  make\n")
    e = error_of(r)
    assert isinstance(e, RecipeError)
    assert e.path == f"{r}:6"
    assert "unknown key 'buidl'" in e.message
    assert "'build'" in e.hint  # did you mean


def test_unknown_key_inside_an_upstream(tmp_path):
    r = write(tmp_path / "r.yaml", BASE + "upstreams:\n  - path: x.c\n    sha265: abc\n")
    e = error_of(r)
    assert e.path == f"{r}:8" and "sha265" in e.message


def test_missing_field_names_the_mapping(tmp_path):
    r = write(tmp_path / "r.yaml", "# comment\nname: demo\nversion: '1'\nrelease: 1\n"
              "summary: s\n")
    e = error_of(r)
    assert e.path == f"{r}:2" and "'license'" in e.message


def test_missing_field_of_a_split(tmp_path):
    r = write(tmp_path / "r.yaml", BASE + "packages:\n  - name: demo-docs\n")
    e = error_of(r)
    assert e.path == f"{r}:7" and "'paths'" in e.message


@pytest.mark.parametrize(("line", "text", "word"), [
    (2, "version: 1.35", "version must be a string"),
    (3, "release: '1'", "release must be an integer"),
    (3, "release: 0", "release must be ≥ 1"),
    (6, "builddeps: musl-tools", "builddeps must be a list"),
    (6, "options: {strip: maybe}", "options.strip must be true or false"),
])
def test_wrong_type_names_the_value_line(tmp_path, line, text, word):
    lines = BASE.splitlines()
    key = text.split(":")[0]
    lines = [ln for ln in lines if not ln.startswith(key + ":")]
    lines.insert(line - 1, text)
    r = write(tmp_path / "r.yaml", "\n".join(lines) + "\n")
    e = error_of(r)
    assert e.path == f"{r}:{line}", e.line()
    assert word in e.message


def test_unknown_macro_names_its_line_in_a_script(tmp_path):
    r = write(tmp_path / "r.yaml", BASE + "build: |\n  make\n  make DESTDIR=%(instalroot)\n")
    e = error_of(r)
    assert e.path == f"{r}:8"
    assert "%(instalroot)" in e.message and "installroot" in e.hint


def test_unknown_macro_in_a_package_name(tmp_path):
    r = write(tmp_path / "r.yaml", BASE + "packages:\n  - name: '%(name)-%(jobs)'\n"
              "    paths: [usr/x]\n")
    e = error_of(r)
    assert e.path == f"{r}:7" and "%(jobs)" in e.message


def test_repack_needs_scaffolding(tmp_path):
    r = write(tmp_path / "r.yaml", BASE + "upstreams:\n  - debian-binary: s6\n"
              "    version: '1'\n    sha256: " + "0" * 64 + "\n")
    e = error_of(r)  # (a pin of only digits is still read as text)
    assert e.path == f"{r}:1" and "scaffolding" in e.hint


def test_path_upstream_must_stay_inside(tmp_path):
    r = write(tmp_path / "sub" / "r.yaml", BASE + "upstreams:\n  - path: ../outside.c\n")
    (tmp_path / "outside.c").write_text("int main(void){return 0;}\n")
    e = error_of(r)
    assert e.path == f"{r}:7" and "leaves" in e.message


def test_every_recipe_in_the_repository_loads():
    names = {load(f).name for f in sorted((REPO / "recipes").glob("*.yaml"))}
    assert {"busybox", "onix-exchange"} <= names


# -- numbers and bytes YAML reads its own way --------------------------------------

RECIPE = """\
name: demo
version: "1.0"
release: {release}
summary: a demo
license: MIT
"""


@pytest.mark.parametrize("release", ["010", "1:30", "0x10", "0b1"])
def test_a_release_that_is_no_plain_decimal_is_one_error_line(tmp_path, release):
    # YAML 1.1 reads 010 as octal and 1:30 as base 60; int(…, 0) then raised ValueError,
    # a traceback instead of recipe.yaml:3
    from onix.build.recipe import RecipeError, load

    p = tmp_path / "r.yaml"
    p.write_text(RECIPE.format(release=release))
    with pytest.raises(RecipeError) as e:
        load(p)
    assert e.value.path == f"{p}:3" and "release" in e.value.message


def test_a_nul_in_a_recipe_is_one_error_line_with_its_line(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_bytes(RECIPE.format(release=1).encode() + b"homepage: a\0b\n")
    r = onix("build", p, "-o", tmp_path / "out", "--cache", tmp_path / "cache")
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if not ln.endswith(": load")]
    assert len(lines) == 1, r.stderr
    assert f"{p}:6" in lines[0]


# -- rundeps carry version constraints -----------------------------------------------


def test_rundeps_constraints_are_parsed_and_kept_canonical(tmp_path):
    r = write(tmp_path / "r.yaml", BASE + 'rundeps: ["libdrm2>=2.4.120", busybox, '
              '"binary(sh)"]\npackages:\n  - name: "%(name)-libs"\n    paths: [usr/lib/*]\n'
              '    rundeps: ["%(name) = 1.0.0-1"]\n')
    recipe = load(r)
    assert recipe.rundeps == ["libdrm2 >= 2.4.120", "busybox", "binary(sh)"]
    assert recipe.packages[0].rundeps == ("demo = 1.0.0-1",)


@pytest.mark.parametrize("dep", ["libdrm2 >>= 2.4.120", "libdrm2 >= ", "pkgconfig(x) >= 1",
                                 "a b"])
def test_a_rundep_that_does_not_parse_names_its_line_and_field(tmp_path, dep):
    r = write(tmp_path / "r.yaml", BASE + f"rundeps:\n  - busybox\n  - '{dep}'\n")
    e = error_of(r)
    assert isinstance(e, RecipeError)
    assert e.path == f"{r}:8", e.line()
    assert e.message.startswith("rundeps: dependency") and repr(dep) in e.message
    assert "OP one of = < <= > >=" in e.hint
