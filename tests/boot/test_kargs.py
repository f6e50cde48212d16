"""`onix boot kargs`: the entries' kernel arguments listed with their sources, added and
removed through etc/kernel/cmdline.d/onix-kargs.conf, every retained entry rewritten.

The roots are test_boot.py's: an ESP directory, root= in /etc, Debian's busybox and our
exchange helper for the initrd, and a small made-up kernel per state.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import assert_clean_failure, onix, onix_json, snapshot
from test_boot import boot_stones, broot, esp_entries, small_kernel, tools  # noqa: F401

from onix import api
from onix.boot import bls

KARGS = "etc/kernel/cmdline.d/onix-kargs.conf"
OS_CONF = "lib/kernel/cmdline.d/50-os.conf"


@pytest.fixture
def two(broot: Path, tools, small_kernel) -> Path:  # noqa: F811
    """States 1 and 2, each shipping `console=ttyS0 splash` in /usr; /etc adds quiet."""
    (broot / "etc/kernel/cmdline.d/quiet.conf").write_text("quiet\n")
    api.install(broot, [*tools, small_kernel(1, extra={OS_CONF: "console=ttyS0 splash\n"})])
    api.install(broot, [small_kernel(2, extra={OS_CONF: "console=ttyS0 splash\n"})])
    return broot


def options(root: Path) -> dict[int, str]:
    """State id → the options line of its entry, as on the ESP."""
    return {n.state_id: bls.parse_entry((bls.entries_dir(root / "boot") / n.file)
                                        .read_text())["options"]
            for n in esp_entries(root).values()}


def fstx(root: Path, sid: int) -> str:
    return next(n.fstx for n in esp_entries(root).values() if n.state_id == sid)


def test_list_names_where_each_argument_comes_from(two: Path) -> None:
    r = api.boot_kargs(two)
    assert r["state"] == 2 and r["fstx"] == fstx(two, 2)
    assert [(a["arg"], a["source"]) for a in r["args"]] == [
        ("root=LABEL=onixroot", "/etc/kernel/cmdline.d/root.conf"),
        ("rw", "onix"),
        ("console=ttyS0", "/usr/lib/kernel/cmdline.d/50-os.conf"),
        ("splash", "/usr/lib/kernel/cmdline.d/50-os.conf"),
        ("quiet", "/etc/kernel/cmdline.d/quiet.conf"),
        (f"onix.fstx={r['fstx']}", "onix")]
    assert not any(a["managed"] for a in r["args"]) and r["removed"] == []
    assert r["entry_options"] == r["options"] == options(two)[2] and r["in_sync"] is True
    # A hand edit not yet synced: list shows what the next sync writes, and says so.
    (two / "etc/kernel/cmdline.d/quiet.conf").write_text("quiet loglevel=3\n")
    r = onix("boot", "kargs", "list", "--root", two)
    assert r.returncode == 0, r.stderr
    assert "loglevel=3" in r.stdout and "says otherwise" in r.stdout


def test_add_rewrites_every_entry_and_is_idempotent(two: Path) -> None:
    r = api.boot_kargs_change(two, add=["loglevel=3", "mitigations=off"])
    assert r["added"] == ["loglevel=3", "mitigations=off"] and r["changed"]
    text = (two / KARGS).read_text()
    assert text.splitlines()[-2:] == ["loglevel=3", "mitigations=off"]
    for sid, line in options(two).items():
        # after every other file, before onix.fstx=
        assert line == (f"root=LABEL=onixroot rw console=ttyS0 splash quiet loglevel=3 "
                        f"mitigations=off onix.fstx={fstx(two, sid)}")
    assert {e["state"] for e in r["entries"]} == {1, 2}
    assert all(e["after"] == options(two)[e["state"]] for e in r["entries"])
    listed = {a["arg"]: a for a in api.boot_kargs(two)["args"]}
    assert listed["loglevel=3"]["managed"] and listed["loglevel=3"]["source"] == "/" + KARGS
    # Again, and an argument /usr already gives: nothing to do, nothing written.
    before = snapshot(two)
    p = onix("boot", "kargs", "add", "loglevel=3", "console=ttyS0", "--root", two)
    assert p.returncode == 0, p.stderr
    assert "nothing to do: loglevel=3 is already a kernel argument (/etc/kernel/cmdline.d/" \
           "onix-kargs.conf)" in p.stdout
    assert "console=ttyS0 is already a kernel argument (/usr/lib/kernel/cmdline.d/50-os.conf)" \
           in p.stdout
    assert snapshot(two) == before


def test_remove_an_argument_of_usr_and_give_it_back(two: Path) -> None:
    usr_file = (two / "usr" / OS_CONF).read_bytes()
    entries_before = options(two)
    r = onix_json("boot", "kargs", "remove", "splash", "--root", two)
    assert r["removed"] == ["splash"] and r["sync"]["written"]
    assert (two / KARGS).read_text().splitlines()[-1] == "-splash"
    assert (two / "usr" / OS_CONF).read_bytes() == usr_file  # /usr is never edited
    for sid, line in options(two).items():
        assert line == f"root=LABEL=onixroot rw console=ttyS0 quiet onix.fstx={fstx(two, sid)}"
    listed = api.boot_kargs(two)
    assert "splash" not in [a["arg"] for a in listed["args"]]
    assert listed["removed"] == [{"arg": "splash",
                                  "source": "/usr/lib/kernel/cmdline.d/50-os.conf"}]
    # Removing it again: nothing to do. Adding it back drops the -splash line, and with it
    # the file: the root's /etc and every entry are as they were.
    again = api.boot_kargs_change(two, remove=["splash"])
    assert not again["changed"] and "already removed" in again["unchanged"][0]["why"]
    api.boot_kargs_change(two, add=["splash"])
    assert not (two / KARGS).exists()
    assert options(two) == entries_before


def test_remove_an_added_argument_deletes_its_line(two: Path) -> None:
    before = options(two)
    api.boot_kargs_change(two, add=["nomodeset"])
    assert "nomodeset" in options(two)[2]
    r = api.boot_kargs_change(two, remove=["nomodeset", "no-such-arg"])
    assert r["removed"] == ["nomodeset"]
    assert r["unchanged"] == [{"arg": "no-such-arg", "why": "not a kernel argument"}]
    assert not (two / KARGS).exists() and options(two) == before
    # A word that is only a key of one: named in the answer, nothing changed.
    r = api.boot_kargs_change(two, remove=["console"])
    assert not r["changed"] and "console=ttyS0" in r["unchanged"][0]["why"]


def test_dry_run_shows_each_entry_and_changes_nothing(two: Path) -> None:
    before = snapshot(two)
    r = api.boot_kargs_change(two, add=["loglevel=3"], remove=["splash"], dry_run=True)
    assert snapshot(two) == before
    assert r["dry_run"] and r["changed"] and r["sync"] is None
    assert {e["state"]: e["before"] for e in r["entries"]} == options(two)
    for e in r["entries"]:
        f = fstx(two, e["state"])
        assert e["after"] == f"root=LABEL=onixroot rw console=ttyS0 quiet loglevel=3 " \
                             f"onix.fstx={f}"
    p = onix("boot", "kargs", "add", "--dry-run", "loglevel=3", "--root", two)
    assert p.returncode == 0, p.stderr
    assert "would add loglevel=3" in p.stdout
    assert f"- {options(two)[2]}" in p.stdout
    assert f"+ {options(two)[2].replace(' onix.fstx', ' loglevel=3 onix.fstx')}" in p.stdout
    assert snapshot(two) == before
    # The dry run said what the real run then wrote.
    real = api.boot_kargs_change(two, add=["loglevel=3"], remove=["splash"])
    assert {e["state"]: e["after"] for e in real["entries"]} == options(two) == \
        {e["state"]: e["after"] for e in r["entries"]}


@pytest.mark.parametrize(("args", "match"), [
    (["add", ""], "it is empty"),
    (["add", "a b"], "white space"),
    (["add", 'opt="a b"'], "white space"),
    (["add", "opt='x'"], "quote"),
    (["add", "x#y"], "comment"),
    (["remove", "--", "-splash"], "starts with -"),
    (["add", "onix.fstx=1-abcd"], "onix's own"),
    (["add", "ok", "tab\tthere"], "white space"),
    (["remove", "root=LABEL=onixroot"], "without root="),
    (["remove", "rw"], "onix's own"),
])
def test_bad_arguments_are_refused_with_the_root_unchanged(two: Path, args: list[str],
                                                           match: str) -> None:
    line = assert_clean_failure(two, ["boot", "kargs", *args], match=match)
    assert KARGS in line or "onix-kargs.conf" in line


def test_ro_replaces_the_implicit_rw(two: Path) -> None:
    api.boot_kargs_change(two, add=["ro"])
    assert options(two)[2].startswith("root=LABEL=onixroot console=ttyS0 splash quiet ro ")


def test_without_an_esp_the_file_is_written_for_the_next_sync(installed: Path) -> None:
    r = api.boot_kargs(installed)
    assert r["state"] == 1 and r["entry"] is None and r["root_missing"]
    assert [a["arg"] for a in r["args"]] == ["rw", f"onix.fstx={r['fstx']}"]
    p = onix("boot", "kargs", "add", "quiet", "--root", installed)
    assert p.returncode == 0, p.stderr
    assert "no ESP found, the next onix boot sync writes the entries" in p.stdout
    assert (installed / KARGS).read_text().splitlines()[-1] == "quiet"
    assert [a["arg"] for a in api.boot_kargs(installed)["args"]][-2] == "quiet"


def test_a_symlinked_cmdline_dir_is_refused_and_nothing_written_outside(
        two: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    d = two / "etc/kernel/cmdline.d"
    for f in d.iterdir():
        f.rename(outside / f.name)
    d.rmdir()
    d.symlink_to(outside)
    before = snapshot(outside)
    assert_clean_failure(two, ["boot", "kargs", "add", "quiet2"], match="is a symlink")
    assert snapshot(outside) == before
