"""The boot plane on a scratch ESP: entries, loader.conf, kernels, counting, prune, crashes.

Real parts: Debian's cloud kernel and busybox-static as stones (tests/bootkit.py),
our initrd, the real CLI in subprocesses for crashes, Debian's bootctl reading the
ESP. Boot counting renames are what systemd-boot does at boot; where a test
renames an entry itself it says so (the QEMU tests let systemd-boot do it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import bootkit
import pytest
from conftest import onix, onix_json, snapshot

from onix import api
from onix.boot import bls, checks, initrd, inputs
from onix.boot import plane as boot
from onix.core import fsutil
from onix.core.errors import OnixError
from onix.core.faults import CRASH_EXIT
from onix.core.paths import RootPaths, read_state_id
from onix.core.tools import host_file

TEST_KVER = "6.1.0-onixtest"


@pytest.fixture(scope="module")
def boot_stones(tmp_path_factory) -> dict[str, Path]:
    return bootkit.pack_boot_stones(tmp_path_factory.mktemp("bootstones"))


@pytest.fixture(scope="module")
def tools(boot_stones) -> list[Path]:
    """busybox and the exchange helper: what every initrd needs besides a kernel."""
    return [boot_stones["busybox"], boot_stones["onix-initrd-tools"]]


@pytest.fixture
def broot(root: Path) -> Path:
    """A root with an ESP directory and a root= for the entries."""
    (root / "boot").mkdir()
    (root / "etc/kernel/cmdline.d").mkdir(parents=True)
    (root / "etc/kernel/cmdline.d/root.conf").write_text("root=LABEL=onixroot\n")
    return root


@pytest.fixture
def small_kernel(make_stone):
    """A kernel stone with a small made-up vmlinuz: entries and cleanup do not care what
    the kernel is, and a real one (14 MB) per state would make these tests slow."""

    def make(n: int, *, size: int = 4096, extra: dict | None = None) -> Path:
        files = {f"lib/kernel/{TEST_KVER}/vmlinuz": (bytes([n % 256]) * size),
                 f"lib/kernel/{TEST_KVER}/config": "CONFIG_RD_GZIP=y\n",
                 **(extra or {})}
        return make_stone("linux", files, version=f"{n}.0")

    return make


def esp_entries(root: Path) -> dict[str, bls.EntryName]:
    return bls.list_entries(root / "boot")


def entry_fields(root: Path, name: bls.EntryName) -> dict[str, str]:
    return bls.parse_entry((bls.entries_dir(root / "boot") / name.file).read_text())


def fstx_of(root: Path, state_id: int) -> str:
    return next(s["fstx"] for s in onix_json("state", "list", "--root", root)
                if s["id"] == state_id)


def assert_boots_existing_state(root: Path) -> None:
    """The crash invariant: loader.conf names an entry that exists, whose kernel and initrd
    exist, and whose state exists (live or archived with a matching .stateID)."""
    default = bls.read_default(root / "boot")
    assert default is not None
    entry = bls.EntryName.parse(default)
    assert entry is not None and (bls.entries_dir(root / "boot") / default).is_file(), default
    fields = entry_fields(root, entry)
    for f in (fields["linux"], fields["initrd"]):
        assert (root / "boot" / f.lstrip("/")).is_file(), f
    sid = entry.state_id
    paths = RootPaths.of(root)
    tree = paths.usr if read_state_id(paths.usr) == sid else paths.state_tree(sid)
    assert read_state_id(tree) == sid


def test_entry_fields_loader_conf_and_status(broot: Path, boot_stones, make_stone) -> None:
    (broot / "etc/kernel/cmdline.d/quiet.conf").write_text("# a comment\nquiet loglevel=3\n")
    r = api.install(broot, [*boot_stones.values(),
                                    make_stone("os", {"lib/kernel/cmdline.d/50-os.conf":
                                                      "console=ttyS0\n"})])
    fstx = r.fstx
    entries = esp_entries(broot)
    assert list(entries) == [fstx]
    name = entries[fstx]
    assert name.file == f"onix-{fstx}+3.conf" and name.tries_left == 3
    f = entry_fields(broot, name)
    assert f["title"] == f"ONIX ({fstx})"
    assert f["sort-key"] == "onix"
    assert f["version"].isdigit()
    # /etc snippets sorted by name after /usr's: 50-os, quiet, root (root= moved first).
    assert f["options"] == f"root=LABEL=onixroot rw console=ttyS0 quiet loglevel=3 " \
                           f"onix.fstx={fstx}"
    kernel = broot / "usr/lib/kernel" / initrd_kver(broot) / "vmlinuz"
    assert (broot / "boot" / f["linux"].lstrip("/")).read_bytes() == kernel.read_bytes()
    built = initrd.build(usr=broot / "usr", kver=initrd_kver(broot))
    assert (broot / "boot" / f["initrd"].lstrip("/")).read_bytes() == built.data
    assert f["linux"].startswith("/onix/vmlinuz-") and f["initrd"].startswith("/onix/initrd-")
    assert bls.read_default(broot / "boot") == name.file  # exact, with .conf and counter
    conf = (broot / "boot/loader/loader.conf").read_text()
    assert "timeout 3" in conf
    lines = onix("status", "--root", broot, check=True).stdout.splitlines()
    assert f"boot entry: {name.file}" in lines
    assert lines[0] == f"active fstx: {fstx}"


def initrd_kver(root: Path) -> str:
    return inputs.find_kernel(root / "usr")


def test_loader_conf_keeps_the_users_lines(broot: Path, tools, small_kernel) -> None:
    (broot / "boot/loader").mkdir(parents=True)
    (broot / "boot/loader/loader.conf").write_text("timeout 10\nconsole-mode max\n"
                                                   "default something-else.conf\n")
    api.install(broot, [*tools, small_kernel(1)])
    api.boot_sync(broot)  # rewriting it again changes nothing
    conf = (broot / "boot/loader/loader.conf").read_text().splitlines()
    assert len(conf) == len(set(conf)) == 5, conf
    assert "timeout 10" in conf and "console-mode max" in conf and "timeout 3" not in conf
    assert [ln for ln in conf if ln.startswith("default ")] == \
        [f"default {bls.read_default(broot / 'boot')}"]
    assert "something-else" not in "\n".join(conf)


def test_bootctl_accepts_every_entry(broot: Path, boot_stones, tools, small_kernel) -> None:
    api.install(broot, list(boot_stones.values()))
    api.install(broot, [small_kernel(2)])
    api.rollback(broot)
    esp = broot / "boot"
    # bootctl wants the ESP to be the root of a mount; a bind mount of the directory is one.
    subprocess.run(["mount", "--bind", esp, esp], check=True)
    try:
        r = subprocess.run(["bootctl", f"--esp-path={esp}", "list", "--no-pager",
                            "--json=short"], capture_output=True, text=True,
                           env={**os.environ, "SYSTEMD_RELAX_ESP_CHECKS": "1"})
    finally:
        subprocess.run(["umount", esp], check=True)
    assert r.returncode == 0, r.stderr
    listed = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    if len(listed) == 1 and isinstance(listed[0], list):
        listed = listed[0]
    ours = esp_entries(broot)
    assert sorted(e["path"].rsplit("/", 1)[1] for e in listed) == \
        sorted(n.file for n in ours.values())
    for e in listed:
        name = bls.EntryName.parse(e["path"].rsplit("/", 1)[1])
        assert e["title"] == f"ONIX ({name.fstx})"
        assert e["triesLeft"] == 3
        assert (esp / e["linux"].lstrip("/")).is_file()
        assert all((esp / i.lstrip("/")).is_file() for i in e["initrd"])
        assert e["options"].endswith(f"onix.fstx={name.fstx}")
    # Rolled back to state 1: it is the default and bootctl (which sorts like systemd-boot)
    # puts it first, because its version is its last activation.
    assert listed[0]["options"].endswith(f"onix.fstx={fstx_of(broot, 1)}")
    assert bls.read_default(esp) == ours[fstx_of(broot, 1)].file


def test_rollback_moves_the_default_and_orders_by_activation(broot: Path, tools,
                                                            small_kernel) -> None:
    for n in (1, 2, 3):
        api.install(broot, [*tools, small_kernel(n)])
    api.rollback(broot)  # to 2
    entries = esp_entries(broot)
    assert {e.state_id for e in entries.values()} == {1, 2, 3}
    assert bls.read_default(broot / "boot") == entries[fstx_of(broot, 2)].file
    versions = {e.state_id: int(entry_fields(broot, e)["version"]) for e in entries.values()}
    assert versions[2] > versions[3] > versions[1]
    # Each entry boots its own kernel: three different ones on the ESP.
    kernels = {entry_fields(broot, e)["linux"] for e in entries.values()}
    assert len(kernels) == 3
    assert len(list((broot / "boot/onix").glob("vmlinuz-*"))) == 3


def test_keep_older_limits_entries(broot: Path, tools, small_kernel) -> None:
    (broot / "etc/onix").mkdir(parents=True)
    (broot / "etc/onix/boot.conf").write_text("keep-older = 2\ntries = 0\n")
    for n in range(1, 6):
        api.install(broot, [*tools, small_kernel(n)])
    entries = esp_entries(broot)
    assert sorted(e.state_id for e in entries.values()) == [3, 4, 5]
    assert all(e.blessed for e in entries.values())  # tries = 0: no counting
    # One kernel per entry, the dropped states' kernels gone; the initrds are identical
    # (same busybox, helper and kernel config), so one file serves all three.
    assert len(list((broot / "boot/onix").glob("vmlinuz-*"))) == 3
    assert len(list((broot / "boot/onix").glob("initrd-*"))) == 1


def test_prune_removes_exactly_the_pruned_entries_and_kernels(broot: Path, tools,
                                                              small_kernel) -> None:
    for n in range(1, 6):
        api.install(broot, [*tools, small_kernel(n)])
    before = esp_entries(broot)
    assert len(before) == 5
    kernel_of = {e.state_id: entry_fields(broot, e)["linux"] for e in before.values()}
    api.prune(broot, keep=2)
    after = esp_entries(broot)
    assert sorted(e.state_id for e in after.values()) == [4, 5]
    on_esp = {f"/onix/{p.name}" for p in (broot / "boot/onix").iterdir()}
    assert {kernel_of[4], kernel_of[5]} <= on_esp
    assert not ({kernel_of[1], kernel_of[2], kernel_of[3]} & on_esp)
    assert len(on_esp) == 3  # two kernels, one initrd (identical inputs, stored once)
    assert_boots_existing_state(broot)
    # state remove drops one more, the same way.
    api.remove_states(broot, [4])
    assert sorted(e.state_id for e in esp_entries(broot).values()) == [5]


def test_mark_good_blesses_and_follows_in_loader_conf(broot: Path, tools, small_kernel) -> None:
    api.install(broot, [*tools, small_kernel(1)])
    entry = next(iter(esp_entries(broot).values()))
    # What systemd-boot does at boot: count one try by renaming the file (done here by
    # hand; the QEMU test lets systemd-boot do it).
    entries = bls.entries_dir(broot / "boot")
    os.rename(entries / entry.file, entries / f"onix-{entry.fstx}+2-1.conf")
    r = onix_json("boot", "mark-good", "--root", broot)
    assert r == {"entry": f"onix-{entry.fstx}.conf", "was": f"onix-{entry.fstx}+2-1.conf",
                 "changed": True}
    assert sorted(p.name for p in entries.iterdir()) == [f"onix-{entry.fstx}.conf"]
    assert bls.read_default(broot / "boot") == f"onix-{entry.fstx}.conf"
    assert onix_json("boot", "mark-good", "--root", broot)["changed"] is False
    # A later sync keeps the blessing (the entry's name is its boot-counting state).
    api.boot_sync(broot)
    assert esp_entries(broot)[entry.fstx].blessed


def test_failed_new_state_falls_back_and_status_says_why(broot: Path, tools,
                                                         small_kernel) -> None:
    api.install(broot, [*tools, small_kernel(1)])
    onix("boot", "mark-good", "--root", broot, check=True)
    api.install(broot, [small_kernel(2)])
    new = esp_entries(broot)[fstx_of(broot, 2)]
    assert new.tries_left == 3
    # Three failed boots, as systemd-boot records them (renamed by hand here) ...
    entries = bls.entries_dir(broot / "boot")
    os.rename(entries / new.file, entries / f"onix-{new.fstx}+0-3.conf")
    # ... so it boots the next entry, state 1, whose initrd exchanges state 1 into /usr
    # (the same syscall the initrd's helper makes) and leaves its note.
    paths = RootPaths.of(broot)
    fsutil.exchange(paths.state_tree(1), paths.usr)
    paths.boot_note.write_text(f"from=2\nto=1\nfstx={fstx_of(broot, 1)}\n")
    st = onix_json("status", "--root", broot)
    assert st["active_state"] == 1
    assert any("the initrd" in n for n in st["notes"]), st["notes"]
    assert any("state 2 failed to boot" in n and "fell back" in n for n in st["notes"]), \
        st["notes"]
    # The fallback is now the default: loader.conf names state 1's entry, which exists.
    assert bls.read_default(broot / "boot") == f"onix-{fstx_of(broot, 1)}.conf"
    assert_boots_existing_state(broot)
    human = onix("status", "--root", broot, check=True).stdout
    assert f"boot entry: onix-{fstx_of(broot, 1)}.conf" in human
    # Choosing state 2 again (the user's call) gives its entry a fresh count.
    api.activate(broot, 2)
    assert esp_entries(broot)[fstx_of(broot, 2)].tries_left == 3
    assert bls.read_default(broot / "boot") == f"onix-{fstx_of(broot, 2)}+3.conf"


def test_one_time_boot_of_an_older_entry_keeps_the_default(broot: Path, tools,
                                                           small_kernel) -> None:
    api.install(broot, [*tools, small_kernel(1)])
    api.install(broot, [small_kernel(2)])
    default = bls.read_default(broot / "boot")
    paths = RootPaths.of(broot)
    fsutil.exchange(paths.state_tree(1), paths.usr)  # the initrd of state 1's entry did this
    st = onix_json("status", "--root", broot)
    assert st["active_state"] == 1
    assert any("chosen at boot" in n and "the boot default is state 2" in n
               for n in st["notes"]), st["notes"]
    assert bls.read_default(broot / "boot") == default  # the next boot starts state 2 again
    # prune keeps the default even though it is not live.
    api.prune(broot, keep=1)
    assert {e.state_id for e in esp_entries(broot).values()} == {1, 2}


def test_set_default_permanent_and_once(broot: Path, tools, small_kernel) -> None:
    for n in (1, 2, 3):
        api.install(broot, [*tools, small_kernel(n)])
    r = onix_json("boot", "set-default", "1", "--root", broot)
    assert r["state"] == 1 and r["once"] is False
    assert bls.read_default(broot / "boot") == esp_entries(broot)[fstx_of(broot, 1)].file
    api.boot_sync(broot)  # a later sync keeps it
    assert bls.read_default(broot / "boot") == esp_entries(broot)[fstx_of(broot, 1)].file
    bad = onix("state", "remove", "1", "--root", broot)
    assert bad.returncode != 0 and "boot default" in bad.stderr
    # --once needs the firmware's variables: refused for a scratch root, nothing changed.
    before = snapshot(broot)
    once = onix("boot", "set-default", "2", "--once", "--root", broot)
    assert once.returncode == 1 and once.stderr.count("\n") == 1 and "error:" in once.stderr
    assert snapshot(broot) == before
    # The next user transaction makes its own state the default again.
    api.install(broot, [small_kernel(4)])
    assert bls.read_default(broot / "boot") == esp_entries(broot)[fstx_of(broot, 4)].file


def test_state_without_kernel_gets_no_entry(broot: Path, make_stone) -> None:
    r = api.install(broot, [make_stone("hello", {"bin/hello": "hi"})])
    assert r.detail["boot"]["skipped"] == {"1": "it has no kernel "
                                                 "(usr/lib/kernel/<kver>/vmlinuz)"}
    assert esp_entries(broot) == {}


def test_no_root_device_is_refused_before_anything_changes(root: Path, tools,
                                                           small_kernel) -> None:
    (root / "boot").mkdir()
    stones = [*tools, small_kernel(1)]
    before = snapshot(root)
    r = onix("install", "--root", root, *stones)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "no root= for the boot entries" in r.stderr
    assert "etc/kernel/cmdline.d" in r.stderr
    assert snapshot(root) == before
    (root / "etc/kernel/cmdline.d").mkdir(parents=True)
    (root / "etc/kernel/cmdline.d/root.conf").write_text("root=/dev/vda\n")
    onix("install", "--root", root, *stones, check=True)
    assert_boots_existing_state(root)


def test_systemd_boot_copied_only_when_it_differs(broot: Path, tools, small_kernel,
                                                 make_stone) -> None:
    sd = host_file("/usr/lib/systemd/boot/efi/systemd-bootx64.efi").read_bytes()
    efi = make_stone("systemd-boot", {"lib/systemd/boot/efi/systemd-bootx64.efi": sd})
    r = api.install(broot, [*tools, small_kernel(1), efi])
    assert sorted(r.detail["boot"]["bootloader"]) == ["EFI/BOOT/BOOTX64.EFI",
                                                      "EFI/systemd/systemd-bootx64.efi"]
    assert (broot / "boot/EFI/BOOT/BOOTX64.EFI").read_bytes() == sd
    r = api.install(broot, [small_kernel(2)])
    assert r.detail["boot"]["bootloader"] == []
    # Someone else's fallback loader is left alone.
    (broot / "boot/EFI/BOOT/BOOTX64.EFI").write_bytes(b"MZ another loader")
    r = api.install(broot, [small_kernel(3)])
    assert r.detail["boot"]["bootloader"] == []
    assert (broot / "boot/EFI/BOOT/BOOTX64.EFI").read_bytes() == b"MZ another loader"


# -- crashes and a full ESP ------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("step", boot.STEPS)
def test_crash_at_every_boot_sync_step(broot: Path, tools, small_kernel, step: str) -> None:
    for n in (1, 2, 3):
        api.install(broot, [*tools, small_kernel(n)])
    api.rollback(broot)  # default state 2; 3 archived
    reference = broot.parent / "reference"
    shutil.copytree(broot, reference, symlinks=True)
    k4 = small_kernel(4)
    env = {"ONIX_FAULT": f"boot:{step}"}
    r = onix("install", "--root", broot, k4, env=env)
    assert r.returncode == CRASH_EXIT, r.stderr
    # Whatever step it died at, the ESP boots a state that exists.
    assert_boots_existing_state(broot)
    # The next mutating onix finishes the sync on its own.
    r = onix("state", "pin", "1", "--root", broot, check=True)
    onix("state", "unpin", "1", "--root", broot, check=True)
    onix("install", "--root", reference, k4, check=True)
    got, want = snapshot(broot / "boot"), snapshot(reference / "boot")
    assert got == want, ((broot / "boot/loader/loader.conf").read_text(),
                         (reference / "boot/loader/loader.conf").read_text())
    assert_boots_existing_state(broot)
    assert onix_json("boot", "status", "--root", broot)["default"] == \
        esp_entries(broot)[fstx_of(broot, 4)].file


@pytest.mark.slow
@pytest.mark.parametrize("kind,step", [("prune", "boot"), ("prune", "trash")])
def test_crash_in_prune_never_leaves_an_entry_without_its_state(broot: Path, tools,
                                                                small_kernel, kind,
                                                                step) -> None:
    for n in range(1, 5):
        api.install(broot, [*tools, small_kernel(n)])
    r = onix("prune", "--keep", "1", "--root", broot, env={"ONIX_FAULT": f"{kind}:{step}"})
    assert r.returncode == CRASH_EXIT
    if step == "trash":  # entries of forgotten states were deleted before their trees
        assert {e.state_id for e in esp_entries(broot).values()} == {4}
    assert_boots_existing_state(broot)
    onix("status", "--root", broot, check=True)
    onix("boot", "sync", "--root", broot, check=True)
    assert {e.state_id for e in esp_entries(broot).values()} == {4}
    assert not any((broot / ".onix/states").iterdir())


def test_full_esp_is_one_error_and_the_old_entry_still_boots(broot: Path, tools,
                                                             small_kernel) -> None:
    esp = broot / "boot"
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", esp], check=True)
    try:
        api.install(broot, [*tools, small_kernel(1)])
        before = snapshot(esp)
        r = onix("install", "--root", broot, small_kernel(2, size=3 * 1024 * 1024))
        assert r.returncode == 4 and r.stderr.count("\n") == 1, r.stderr
        assert "boot files were not updated" in r.stderr and "onix boot sync" in r.stderr
        assert "No space left on device" in r.stderr and "/boot/onix/vmlinuz-" in r.stderr
        assert snapshot(esp) == before  # no half-written kernel left taking the space
        assert_boots_existing_state(broot)  # loader.conf still names state 1's entry
        # A bigger ESP, and the next command catches up on its own.
        subprocess.run(["mount", "-o", "remount,size=16m", esp], check=True)
        onix("state", "pin", "2", "--root", broot, check=True)
        assert bls.read_default(esp) == esp_entries(broot)[fstx_of(broot, 2)].file
        assert_boots_existing_state(broot)
    finally:
        subprocess.run(["umount", esp], check=True)


def test_boot_config_errors_name_the_line(broot: Path, tools, small_kernel) -> None:
    (broot / "etc/onix").mkdir(parents=True)
    (broot / "etc/onix/boot.conf").write_text("keep-older = 2\nkeep_older = 3\n")
    with pytest.raises(OnixError, match="line 2"):
        checks.dirs_for(RootPaths.of(broot))
    r = onix("boot", "status", "--root", broot)
    assert r.returncode == 1 and "boot.conf: line 2" in r.stderr


def test_kernel_cmdline_files_and_xbootldr(root: Path, tools, small_kernel) -> None:
    """A kernel's own *.cmdline goes first among the snippets; with an XBOOTLDR, entries,
    kernels and initrds go there and loader.conf and systemd-boot stay on the ESP."""
    for d in ("efi", "boot", "etc/onix", "etc/kernel/cmdline.d"):
        (root / d).mkdir(parents=True)
    (root / "etc/onix/boot.conf").write_text("esp = /efi\nxbootldr = /boot\n")
    (root / "etc/kernel/cmdline.d/root.conf").write_text("root=UUID=1234-abcd\n")
    k = small_kernel(1, extra={f"lib/kernel/{TEST_KVER}/vm.cmdline": "mitigations=off\n"})
    r = api.install(root, [*tools, k])
    assert r.detail["boot"]["esp"] == str(root / "efi")
    assert r.detail["boot"]["boot"] == str(root / "boot")
    entries = bls.list_entries(root / "boot")
    assert list(entries) == [r.fstx]
    assert bls.list_entries(root / "efi") == {}
    f = bls.parse_entry((bls.entries_dir(root / "boot") / entries[r.fstx].file).read_text())
    assert f["options"] == f"root=UUID=1234-abcd rw mitigations=off onix.fstx={r.fstx}"
    assert (root / "boot" / f["linux"].lstrip("/")).is_file()
    assert bls.read_default(root / "efi") == entries[r.fstx].file
    assert not (root / "boot/loader/loader.conf").exists()
    st = onix_json("boot", "status", "--root", root)
    assert (st["esp"], st["xbootldr"]) == (str(root / "efi"), str(root / "boot"))
    assert [e["file"] for e in st["entries"]] == [entries[r.fstx].file]
    assert st["entries"][0]["missing_files"] == []


# -- bad input and hostile trees (review findings) -------------------------------------


@pytest.mark.parametrize("where", ["vmlinuz", "cmdline"])
def test_symlinked_boot_input_is_refused_before_anything_changes(broot: Path, tools,
                                                                 small_kernel, make_stone,
                                                                 tmp_path: Path,
                                                                 where: str) -> None:
    api.install(broot, [*tools, small_kernel(1)])
    secret = tmp_path / "host-secret"
    secret.write_text("root=host-secret-value\n")
    if where == "vmlinuz":
        bad = make_stone("linux", {f"lib/kernel/{TEST_KVER}/vmlinuz": ("symlink", str(secret)),
                                   f"lib/kernel/{TEST_KVER}/config": "CONFIG_RD_GZIP=y\n"},
                         version="9.0")
    else:
        bad = make_stone("leak", {"lib/kernel/cmdline.d/leak.conf": ("symlink", str(secret))})
    before = snapshot(broot)
    r = onix("install", "--root", broot, bad)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert "is a symlink" in r.stderr and "usr/lib/kernel/" in r.stderr
    assert snapshot(broot) == before
    assert not any("host-secret" in p.read_text(errors="replace")
                   for p in (broot / "boot").rglob("*") if p.is_file())


def test_symlinked_boot_directory_is_refused(broot: Path, tools, small_kernel,
                                             tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "important.txt").write_text("keep me")
    (broot / "boot/onix").symlink_to(victim)
    r = onix("install", "--root", broot, *tools, small_kernel(1))
    assert r.returncode == 1 and "is a symlink" in r.stderr and "boot/onix" in r.stderr
    assert sorted(p.name for p in victim.iterdir()) == ["important.txt"]
    assert not (broot / "usr").exists() or read_state_id(broot / "usr") is None


def test_a_state_without_kernel_is_refused_when_the_live_one_boots(broot: Path, tools,
                                                                  small_kernel) -> None:
    api.install(broot, [*tools, small_kernel(1)])
    before = snapshot(broot)
    r = onix("remove", "--root", broot, "linux")
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    assert "the new state would have no kernel" in r.stderr
    assert snapshot(broot) == before


def test_another_roots_boot_files_on_a_shared_esp_are_kept(broot: Path, tools,
                                                           small_kernel) -> None:
    api.install(broot, [*tools, small_kernel(1)])
    entries = bls.entries_dir(broot / "boot")
    (entries / "onix-7-beef.conf").write_text("title other root\nlinux /onix/other\n")
    (broot / "boot/onix/other").write_bytes(b"another root's kernel")
    (entries / "debian.conf").write_text("title Debian\nlinux /vmlinuz\n")
    api.install(broot, [small_kernel(2)])
    api.prune(broot, keep=1)
    assert (entries / "onix-7-beef.conf").exists() and (entries / "debian.conf").exists()
    assert (broot / "boot/onix/other").exists()
    assert {e.state_id for e in esp_entries(broot).values()} == {2, 7}


def test_prune_after_a_full_esp_leaves_a_bootable_esp(broot: Path, tools,
                                                      small_kernel) -> None:
    esp = broot / "boot"
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", esp], check=True)
    try:
        api.install(broot, [*tools, small_kernel(1, size=3 << 19)])
        api.install(broot, [small_kernel(2, size=3 << 19)])
        r = onix("install", "--root", broot, small_kernel(3, size=5 << 19))
        assert r.returncode == 4, r.stderr
        assert_boots_existing_state(broot)
        # Pruning the old states frees the ESP: the sync then succeeds.
        onix("prune", "--keep", "1", "--root", broot, check=True)
        assert [e.state_id for e in esp_entries(broot).values()] == [3]
        assert_boots_existing_state(broot)
    finally:
        subprocess.run(["umount", esp], check=True)


def test_set_default_checks_and_resets_a_bad_entry(broot: Path, tools, small_kernel,
                                                   make_stone) -> None:
    api.install(broot, [*tools, small_kernel(1)])
    api.install(broot, [small_kernel(2)])
    bad = esp_entries(broot)[fstx_of(broot, 2)]
    entries = bls.entries_dir(broot / "boot")
    os.rename(entries / bad.file, entries / f"onix-{bad.fstx}+0-3.conf")  # as systemd-boot
    onix("rollback", "--root", broot, check=True)
    r = onix_json("boot", "set-default", "2", "--root", broot)
    assert r["entry"] == f"onix-{bad.fstx}+3.conf"  # chosen again: a fresh count
    versions = {e.state_id: int(entry_fields(broot, e)["version"])
                for e in esp_entries(broot).values()}
    assert versions[2] > versions[1]  # the default sorts first
    assert sorted(p.name for p in entries.iterdir()) == sorted(
        [f"onix-{bad.fstx}+3.conf", esp_entries(broot)[fstx_of(broot, 1)].file])


def test_interrupted_transaction_marker_for_the_initrd(broot: Path, tools,
                                                       small_kernel) -> None:
    api.install(broot, [*tools, small_kernel(1)])
    marker = RootPaths.of(broot).txn_marker
    r = onix("install", "--root", broot, small_kernel(2), env={"ONIX_FAULT": "install:sync"})
    assert r.returncode == CRASH_EXIT
    assert marker.exists()  # the initrd would boot /usr as it is, not exchange
    onix("status", "--root", broot, check=True)
    assert not marker.exists()
    r = onix("install", "--root", broot, small_kernel(2), env={"ONIX_FAULT": "install:done"})
    assert r.returncode == CRASH_EXIT and not marker.exists()


def test_loader_conf_with_tabs() -> None:
    text = bls.update_loader_conf("default\tother.conf\ntimeout\t5\n", default="onix-1-ab.conf",
                                  timeout=3)
    lines = text.splitlines()
    assert [ln for ln in lines if bls._kv(ln)[0] == "default"] == ["default onix-1-ab.conf"]
    assert "timeout\t5" in lines and "timeout 3" not in lines
