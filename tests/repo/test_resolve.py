"""Dependency resolution and orphans, on plain data (no repository, no I/O)."""

from __future__ import annotations

import json
import re

import pytest

from onix.core.errors import ConflictError, OnixError
from onix.repo.resolve import compare_versions, orphans, resolve
from onix.repo.versions import Available, Dep, parse_dep

LIBC = "soname(libc.so.6(x86_64))"
LIBFOO1 = "soname(libfoo.so.1(x86_64))"
LIBFOO2 = "soname(libfoo.so.2(x86_64))"


def av(name: str, version: str = "1.0", release: int = 1, *, provides=(), depends=(),
       repo: str = "main", priority: int = 0, arch: str = "x86_64") -> Available:
    return Available(repo=repo, priority=priority, uri=f"/srv/{repo}", name=name,
                     version=version, release=release, arch=arch, summary=f"{name} stone",
                     license="MIT", provides=tuple(provides), depends=tuple(depends),
                     file=f"{name}-{version}-{release}-{arch}.stone", sha256="0" * 64, size=1)


def meta(version: str = "1.0", release: int = 1, *, provides=(), depends=(),
         as_json: bool = False) -> dict:
    enc = json.dumps if as_json else list
    return {"version": version, "release": release, "provides": enc(list(provides)),
            "depends": enc(list(depends))}


def names(plan) -> list[str]:
    return sorted(a.name for a in plan.install)


# -- versions ------------------------------------------------------------------------


@pytest.mark.parametrize("older,newer", [
    ("1.0", "1.1"), ("1.9", "1.10"), ("1.0~rc1", "1.0"), ("1.0~~", "1.0~"), ("1.0", "1.0a"),
    ("1.0", "1.0.1"), ("1.0a", "1.0.1"), ("2.38", "2.39"), ("9", "1:0.1"), ("1.2.3", "1.2.10"),
    ("1.0-rc", "1.0.0"), ("0.9z", "0.10"),
])
def test_compare_versions(older, newer):
    assert compare_versions(older, newer) == -1
    assert compare_versions(newer, older) == 1
    assert compare_versions(older, older) == 0


def test_leading_zeros_are_numbers():
    assert compare_versions("1.01", "1.1") == 0
    assert compare_versions("1.010", "1.9") == 1


@pytest.mark.parametrize("older,newer", [
    # a repacked Debian library's stone version carries the Debian revision: dpkg
    # compares the upstream part first, then the revision after the last '-'
    ("2.4.123-1~bpo12+1", "2.4.123-1"), ("2.4.114-1+b1", "2.4.123-1~bpo12+1"),
    ("1.0-2", "1.0+x-1"), ("1.0", "1.0-1"), ("3.1-20221030-2", "3.1-20230828-1"),
])
def test_compare_versions_splits_the_debian_revision(older, newer):
    assert compare_versions(older, newer) == -1
    assert compare_versions(newer, older) == 1


# -- dependencies as written -----------------------------------------------------------


@pytest.mark.parametrize("text,dep,canonical", [
    ("hello", Dep("hello"), "hello"),
    ("hello>=1", Dep("hello", ">=", "1"), "hello >= 1"),
    ("  libdrm2 >= 2.4.120 ", Dep("libdrm2", ">=", "2.4.120"), "libdrm2 >= 2.4.120"),
    ("hello=2.0", Dep("hello", "=", "2.0"), "hello = 2.0"),
    ("hello = 2.0-3", Dep("hello", "=", "2.0", 3), "hello = 2.0-3"),
    ("x<1:2.0~rc1", Dep("x", "<", "1:2.0~rc1"), "x < 1:2.0~rc1"),
    ("libdrm2 >= 2.4.123-1~bpo12+1", Dep("libdrm2", ">=", "2.4.123-1~bpo12+1"),
     "libdrm2 >= 2.4.123-1~bpo12+1"),
    ("soname(libz.so.1(x86_64))", Dep("soname(libz.so.1(x86_64))"),
     "soname(libz.so.1(x86_64))"),
    ("interpreter(/usr/lib64/ld-linux-x86-64.so.2(x86_64))",
     Dep("interpreter(/usr/lib64/ld-linux-x86-64.so.2(x86_64))"),
     "interpreter(/usr/lib64/ld-linux-x86-64.so.2(x86_64))"),
])
def test_parse_dep(text, dep, canonical):
    assert parse_dep(text, where="w") == dep
    assert str(dep) == canonical
    assert parse_dep(canonical, where="w") == dep  # the canonical form reads back


@pytest.mark.parametrize("text", ["hello >>= 1", "hello == 1", "hello >= ", "hello >= x1",
                                  "a b", "", ">= 1", "pkgconfig(zlib) >= 1.2",
                                  "soname(libz.so.1", "hello >= 1-"])
def test_a_dependency_that_does_not_parse_names_where_it_came_from(text):
    with pytest.raises(OnixError) as e:
        parse_dep(text, where="recipes/x.yaml:7")
    assert e.value.path == "recipes/x.yaml:7"
    assert repr(text) in e.value.message and "does not parse" in e.value.message


def test_a_constraint_without_release_compares_the_version_only():
    ge = parse_dep("hello >= 2.0", where="w")
    assert ge.allows("2.0", 1) and ge.allows("2.0", 0) and ge.allows("2.1", 1)
    assert not ge.allows("1.9", 9) and not ge.allows(None)
    eq = parse_dep("hello = 2.0-3", where="w")
    assert eq.allows("2.0", 3) and not eq.allows("2.0", 2) and not eq.allows("2.0.1", 3)
    lt = parse_dep("hello < 2.0-3", where="w")
    assert lt.allows("2.0", 2) and lt.allows("1.0", 9) and not lt.allows("2.0", 3)
    assert parse_dep("hello", where="w").allows(None)


def test_a_versioned_dependency_is_met_only_by_a_stone_of_that_name():
    dep = parse_dep("zlib >= 1.2", where="w")
    assert dep.satisfied_by("zlib", (), "1.3", 1)
    assert not dep.satisfied_by("zlib-ng", ("zlib",), "2.0", 1)  # provides carry no version
    assert parse_dep("zlib", where="w").satisfied_by("zlib-ng", ("zlib",))


# -- resolve -------------------------------------------------------------------------


def test_transitive_dependencies_through_providers():
    pool = [av("nix", depends=[LIBFOO1, "binary(sh)"]), av("foo", provides=[LIBFOO1],
            depends=[LIBC]), av("glibc", provides=[LIBC]), av("busybox", provides=["binary(sh)"]),
            av("unrelated")]
    plan = resolve(requested=["nix"], installed={}, available=pool, explicit=set())
    assert names(plan) == ["busybox", "foo", "glibc", "nix"]
    assert plan.explicit == {"nix"}
    assert plan.dependencies == {"busybox", "foo", "glibc"}
    assert plan.reasons["nix"] == "requested"
    assert plan.reasons["foo"] == f"needed by nix ({LIBFOO1})"
    assert plan.reasons["glibc"] == f"needed by foo ({LIBC})"
    d = plan.as_dict()
    assert {e["name"]: e["explicit"] for e in d["install"]}["nix"] is True
    assert d["explicit"] == ["nix"]


def test_installed_stones_satisfy_dependencies():
    pool = [av("nix", depends=[LIBC]), av("glibc", "2.40", provides=[LIBC])]
    installed = {"glibc": meta("2.36", provides=[LIBC], as_json=True)}
    plan = resolve(requested=["nix"], installed=installed, available=pool, explicit={"x"})
    assert names(plan) == ["nix"]
    assert plan.explicit == {"x", "nix"}


def test_missing_provider_is_a_clear_error():
    pool = [av("nix", depends=[LIBFOO1])]
    with pytest.raises(ConflictError) as e:
        resolve(requested=["nix"], installed={}, available=pool, explicit=set())
    assert e.value.message == f"nothing provides {LIBFOO1} needed by nix"
    assert e.value.hint == ("add a repository that has it (onix repo add) or install a stone "
                            "file that provides it")


def test_missing_transitive_provider_names_the_stone_needing_it():
    pool = [av("nix", depends=["foo"]), av("foo", depends=[LIBC])]
    with pytest.raises(ConflictError, match=re.escape(f"nothing provides {LIBC} needed by foo")):
        resolve(requested=["nix"], installed={}, available=pool, explicit=set())


def test_unknown_request():
    with pytest.raises(OnixError, match="no repository has a stone named or providing nope"):
        resolve(requested=["nope"], installed={}, available=[av("a")], explicit=set())


def test_priority_beats_version_and_version_beats_release():
    pool = [av("foo", "2.0", repo="new"), av("foo", "1.0", repo="stable", priority=10),
            av("foo", "1.0", 3, repo="other", priority=10), av("foo", "1.0", 2, repo="x",
                                                             priority=10)]
    [pick] = resolve(requested=["foo"], installed={}, available=pool, explicit=set()).install
    assert (pick.repo, pick.evr) == ("other", "1.0-3")
    pool = [av("foo", "1.10"), av("foo", "1.9"), av("foo", "1.10~rc1")]
    [pick] = resolve(requested=["foo"], installed={}, available=pool, explicit=set()).install
    assert pick.version == "1.10"


def test_provider_choice_prefers_the_same_name_then_priority_then_name():
    pool = [av("nix", depends=["sh"]), av("busybox", provides=["sh"], priority=5),
            av("sh")]
    assert names(resolve(requested=["nix"], installed={}, available=pool,
                         explicit=set())) == ["nix", "sh"]
    pool = [av("nix", depends=["binary(sh)"]), av("dash", provides=["binary(sh)"]),
            av("busybox", provides=["binary(sh)"]), av("zsh", provides=["binary(sh)"],
                                                       priority=1)]
    assert names(resolve(requested=["nix"], installed={}, available=pool,
                         explicit=set())) == ["nix", "zsh"]
    pool = pool[:3]
    assert names(resolve(requested=["nix"], installed={}, available=pool,
                         explicit=set())) == ["busybox", "nix"]


def test_a_provider_string_can_be_requested():
    pool = [av("ripgrep", "14.1", provides=["binary(rg)"])]
    plan = resolve(requested=["binary(rg)"], installed={}, available=pool, explicit=set())
    assert names(plan) == ["ripgrep"] and plan.explicit == {"ripgrep"}
    assert plan.reasons["ripgrep"] == "requested as binary(rg)"
    installed = {"ripgrep": meta("14.1", provides=["binary(rg)"])}
    plan = resolve(requested=["binary(rg)"], installed=installed, available=pool,
                   explicit=set())
    assert plan.install == [] and plan.already == ["ripgrep"] and plan.explicit == {"ripgrep"}


def test_requesting_an_installed_stone_upgrades_only_to_something_newer():
    pool = [av("foo", "1.0")]
    plan = resolve(requested=["foo"], installed={"foo": meta("1.0")}, available=pool,
                   explicit=set())
    assert plan.install == [] and plan.already == ["foo"] and plan.explicit == {"foo"}
    pool.append(av("foo", "1.1"))
    plan = resolve(requested=["foo"], installed={"foo": meta("1.0")}, available=pool,
                   explicit=set())
    assert [a.evr for a in plan.install] == ["1.1-1"]
    assert plan.upgrades == {"foo": "1.0-1"}
    assert plan.reasons["foo"] == "requested (upgrade from 1.0-1)"


def test_an_upgrade_that_breaks_an_installed_stone_is_refused():
    installed = {"foo": meta("1.0", provides=[LIBFOO1]), "bar": meta(depends=[LIBFOO1])}
    pool = [av("foo", "2.0", provides=[LIBFOO2])]
    with pytest.raises(ConflictError, match=re.escape(
            f"upgrading foo to 2.0-1 would leave bar without {LIBFOO1}")):
        resolve(requested=["foo"], installed=installed, available=pool, explicit={"bar"})


def test_a_dependency_only_another_version_of_an_installed_stone_provides():
    installed = {"foo": meta("1.0", provides=[LIBFOO1])}
    pool = [av("nix", depends=[LIBFOO2]), av("foo", "2.0", provides=[LIBFOO2])]
    with pytest.raises(ConflictError, match=re.escape(
            "provided only by other versions of foo, but foo 1.0-1 (installed) does not "
            "provide it")) as e:
        resolve(requested=["nix"], installed=installed, available=pool, explicit=set())
    assert "install foo explicitly" in e.value.hint
    # asking for foo too upgrades it, and then nix's dependency is met
    plan = resolve(requested=["nix", "foo"], installed=installed, available=pool,
                   explicit=set())
    assert names(plan) == ["foo", "nix"]


def test_other_architectures_are_ignored():
    pool = [av("foo", "9.0", arch="aarch64"), av("foo", "1.0")]
    [pick] = resolve(requested=["foo"], installed={}, available=pool, explicit=set()).install
    assert pick.arch == "x86_64"


def test_resolution_is_deterministic():
    pool = [av(f"p{i}", provides=["binary(x)"]) for i in range(5)]
    pool.append(av("top", depends=["binary(x)"]))
    results = {tuple(names(resolve(requested=["top"], installed={}, available=order,
                                   explicit=set())))
               for order in (pool, pool[::-1], pool[2:] + pool[:2])}
    assert results == {("p0", "top")}


# -- orphans -------------------------------------------------------------------------


def test_orphans_follow_depends_through_providers():
    selection = {
        "nix": meta(depends=[LIBFOO1, "binary(sh)"]),
        "foo": meta(provides=[LIBFOO1], depends=[LIBC], as_json=True),
        "glibc": meta(provides=[LIBC]),
        "busybox": meta(provides=["binary(sh)"]),
        "old-dep": meta(depends=["glibc"]),
        "leftover": meta(),
    }
    assert orphans(selection=selection, explicit={"nix"}) == {"old-dep", "leftover"}
    assert orphans(selection=selection, explicit={"nix", "leftover"}) == {"old-dep"}
    assert orphans(selection=selection, explicit=set()) == set(selection)
    # an explicit name no longer in the selection reaches nothing
    assert orphans(selection=selection, explicit={"gone"}) == set(selection)


def test_every_provider_of_a_needed_dependency_is_kept():
    selection = {"nix": meta(depends=["binary(sh)"]), "dash": meta(provides=["binary(sh)"]),
                 "busybox": meta(provides=["binary(sh)"])}
    assert orphans(selection=selection, explicit={"nix"}) == set()


# -- versions in resolution ------------------------------------------------------------


HELLO = [av("hello", "1.0"), av("hello", "2.0"), av("hello", "3.0~rc1")]


def test_a_request_picks_the_best_version_that_meets_it():
    [pick] = resolve(requested=["hello=2.0"], installed={}, available=HELLO,
                     explicit=set()).install
    assert pick.version == "2.0"
    [pick] = resolve(requested=["hello<2"], installed={}, available=HELLO,
                     explicit=set()).install
    assert pick.version == "1.0"
    plan = resolve(requested=["hello >= 2"], installed={}, available=HELLO, explicit=set())
    assert [a.version for a in plan.install] == ["3.0~rc1"] and plan.explicit == {"hello"}
    with pytest.raises(ConflictError) as e:
        resolve(requested=["hello>=4"], installed={}, available=HELLO, explicit=set())
    assert e.value.message == ("hello >= 4 was asked for; the repositories offer 1.0, 2.0, "
                               "3.0~rc1")
    with pytest.raises(OnixError, match="does not parse"):
        resolve(requested=["hello >>= 1"], installed={}, available=HELLO, explicit=set())


def test_name_equals_version_may_downgrade_and_nothing_else_does():
    installed = {"hello": meta("2.0")}
    plan = resolve(requested=["hello=1.0"], installed=installed, available=HELLO,
                   explicit={"hello"})
    assert [a.version for a in plan.install] == ["1.0"]
    assert plan.downgrades == {"hello": "2.0-1"} and plan.upgrades == {}
    assert plan.reasons["hello"] == "requested (downgrade from 2.0-1)"
    assert plan.as_dict()["install"][0]["downgrade_from"] == "2.0-1"
    # a plain request, or one the installed stone meets, keeps what is installed
    for req in ("hello", "hello >= 1"):
        plan = resolve(requested=[req], installed={"hello": meta("3.0")}, available=HELLO,
                       explicit=set())
        assert plan.install == [] and plan.already == ["hello"]
    # a repository that offers only older versions: nothing is chosen without allow_downgrade
    plan = resolve(requested=["hello"], installed={"hello": meta("9.0")}, available=HELLO,
                   explicit=set())
    assert plan.install == [] and plan.already == ["hello"]
    plan = resolve(requested=["hello"], installed={"hello": meta("9.0")}, available=HELLO,
                   explicit=set(), allow_downgrade=True)
    assert [a.version for a in plan.install] == ["3.0~rc1"]
    assert plan.downgrades == {"hello": "9.0-1"}


def test_a_dependency_never_downgrades_an_installed_stone_unless_allowed():
    pool = [av("app", depends=["lib < 2"]), av("lib", "1.0")]
    installed = {"lib": meta("2.0")}
    with pytest.raises(ConflictError) as e:
        resolve(requested=["app"], installed=installed, available=pool, explicit={"lib"})
    assert e.value.message == ("app 1.0 needs lib < 2; the repositories offer 1.0; lib 2.0-1 "
                               "is installed and onix does not replace it with an older version")
    assert "lib=1.0" in e.value.hint
    plan = resolve(requested=["app"], installed=installed, available=pool, explicit={"lib"},
                   allow_downgrade=True)
    assert names(plan) == ["app", "lib"] and plan.downgrades == {"lib": "2.0-1"}


def test_a_constraint_moves_an_installed_dependency_forward():
    # the Mesa case: mesa 25 needs a newer libdrm2 than the one installed
    pool = [av("mesa", "22.3.6", depends=["soname(libdrm.so.2(x86_64))"]),
            av("mesa", "25.0.7", depends=["soname(libdrm.so.2(x86_64))", "libdrm2 >= 2.4.121"]),
            av("libdrm2", "2.4.114-1+b1", provides=["soname(libdrm.so.2(x86_64))"]),
            av("libdrm2", "2.4.123-1~bpo12+1", provides=["soname(libdrm.so.2(x86_64))"])]
    installed = {"mesa": meta("22.3.6", depends=["soname(libdrm.so.2(x86_64))"]),
                 "libdrm2": meta("2.4.114-1+b1", provides=["soname(libdrm.so.2(x86_64))"])}
    plan = resolve(requested=["mesa=25.0.7"], installed=installed, available=pool,
                   explicit={"mesa"})
    assert {a.name: a.version for a in plan.install} == {"mesa": "25.0.7",
                                                         "libdrm2": "2.4.123-1~bpo12+1"}
    assert plan.upgrades == {"mesa": "22.3.6-1", "libdrm2": "2.4.114-1+b1-1"}
    assert plan.reasons["libdrm2"] == "needed by mesa (libdrm2 >= 2.4.121)"
    assert plan.dependencies == {"libdrm2"}
    # on an empty root, the constraint chooses the version too
    plan = resolve(requested=["mesa=25.0.7"], installed={}, available=pool[1:3] + pool[3:],
                   explicit=set())
    assert {a.name: a.version for a in plan.install}["libdrm2"] == "2.4.123-1~bpo12+1"


def test_an_unsatisfiable_constraint_is_one_line_naming_the_chain():
    pool = [av("mesa", "25.0.7", depends=["libdrm2 >= 2.4.123"]),
            av("libdrm2", "2.4.114")]
    with pytest.raises(ConflictError) as e:
        resolve(requested=["mesa"], installed={}, available=pool, explicit=set())
    assert e.value.message == ("mesa 25.0.7 needs libdrm2 >= 2.4.123; the repositories "
                               "offer 2.4.114")
    assert "\n" not in e.value.line()
    with pytest.raises(ConflictError) as e:
        resolve(requested=["mesa"], installed={"libdrm2": meta("2.4.114")}, available=pool,
                explicit=set())
    assert e.value.message == ("mesa 25.0.7 needs libdrm2 >= 2.4.123; the repositories "
                               "offer 2.4.114; libdrm2 2.4.114-1 is installed")
    # deeper: the chain back to what was asked for
    pool = [av("desktop", depends=["mesa"]), *pool]
    with pytest.raises(ConflictError, match=re.escape(
            "desktop → mesa 25.0.7 needs libdrm2 >= 2.4.123; the repositories offer 2.4.114")):
        resolve(requested=["desktop"], installed={}, available=pool, explicit=set())
    # a constraint on a name only a provider has
    pool = [av("app", depends=["zlib >= 1"]), av("zlib-ng", provides=["zlib"])]
    with pytest.raises(ConflictError, match=re.escape(
            "app 1.0 needs zlib >= 1; no repository has a stone named zlib (a version "
            "constraint is met only by a stone of that name)")):
        resolve(requested=["app"], installed={}, available=pool, explicit=set())


def test_two_constraints_on_one_name_choose_a_version_meeting_both():
    pool = [av("a", depends=["lib"]), av("b", depends=["lib < 3"]), av("lib", "2.0"),
            av("lib", "3.0")]
    plan = resolve(requested=["a", "b"], installed={}, available=pool, explicit=set())
    assert {x.name: x.version for x in plan.install}["lib"] == "2.0"
    pool.append(av("c", depends=["lib >= 3"]))
    with pytest.raises(ConflictError, match=re.escape(
            "b 1.0 needs lib < 3 and c 1.0 needs lib >= 3; the repositories offer 2.0, 3.0")):
        resolve(requested=["a", "b", "c"], installed={}, available=pool, explicit=set())


def test_moving_a_stone_past_what_an_installed_one_accepts_is_refused():
    installed = {"lib": meta("2.0"), "app": meta(depends=["lib < 3"])}
    with pytest.raises(ConflictError, match=re.escape(
            "moving lib to 3.0-1 would leave app without lib < 3")):
        resolve(requested=["lib"], installed=installed, available=[av("lib", "3.0")],
                explicit={"app"})


def test_orphans_follow_versioned_dependencies_by_name():
    selection = {"app": meta(depends=["lib >= 2"]), "lib": meta("2.0"),
                 "lib-compat": meta(provides=["lib"]), "other": meta()}
    # a versioned dependency reaches the stone named so, not a provider of the name
    assert orphans(selection=selection, explicit={"app"}) == {"lib-compat", "other"}
    selection["app"] = meta(depends=["lib"])
    assert orphans(selection=selection, explicit={"app"}) == {"other"}


# -- the transaction's final check, and stones on read ---------------------------------


def test_unmet_dependencies_honour_versions():
    from onix.machine.candidates import unmet_dependencies

    sel = {"mesa": {**meta("25.0.7", depends=["libdrm2 >= 2.4.121", LIBC]), "provides": []},
           "libdrm2": meta("2.4.114-1+b1"), "glibc": meta(provides=[LIBC], as_json=True)}
    assert unmet_dependencies(sel) == [
        "mesa needs libdrm2 >= 2.4.121 (libdrm2 2.4.114-1+b1-1 is in the selection)"]
    sel["libdrm2"] = meta("2.4.123-1~bpo12+1")
    assert unmet_dependencies(sel) == []
    sel["x"] = meta(depends=["glibc >= 1"], provides=["libdrm2"])
    del sel["libdrm2"]
    assert unmet_dependencies(sel) == ["mesa needs libdrm2 >= 2.4.121"]


def test_a_stone_whose_depends_do_not_parse_is_refused_on_read(tmp_path, make_stone,
                                                               monkeypatch):
    from onix.core.errors import StoneError
    from onix.machine import stone

    with pytest.raises(StoneError, match=re.escape("'hello >>= 1' does not parse")):
        make_stone("bad", {"bin/x": "x"}, depends=["hello >>= 1"])
    assert not list(tmp_path.glob("bad-*.stone"))
    # one written by something that did not check (an older onix, a hand-made file)
    monkeypatch.setattr(stone, "check_depends", lambda deps, *, where: deps)
    path = make_stone("bad", {"bin/x": "x"}, depends=["hello >>= 1"])
    monkeypatch.undo()
    with pytest.raises(StoneError) as e:
        stone.Stone(path)
    assert e.value.path == str(path) and "'hello >>= 1' does not parse" in e.value.message
