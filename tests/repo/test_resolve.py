"""Dependency resolution and orphans, on plain data (no repository, no I/O)."""

from __future__ import annotations

import json
import re

import pytest

from onix.core.errors import ConflictError, OnixError
from onix.repo.resolve import compare_versions, orphans, resolve
from onix.repo.versions import Available

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
