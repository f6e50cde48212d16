"""systemd-boot reading our entries in a real UEFI machine: default, counting, fallback.

QEMU (TCG here) with OVMF boots a FAT ESP made from the root's `boot/` directory
(mtools, nothing mounted) and the root as an ext4 disk (mkfs.ext4 -d). systemd-boot
is Debian's EFI binary, shipped in a stone and installed by `onix boot sync`.

The story, in three boots of one machine:
  A  state 1 boots by default; systemd-boot counts a try by renaming its entry.
     The ESP is copied back and `onix boot mark-good` blesses it.
  B  state 2 is installed (its init fails: it reboots without blessing). It boots
     by default and uses its only try (tries = 1 in boot.conf).
  C  the next boot: systemd-boot skips the bad entry and boots state 1's entry, whose
     initrd exchanges state 1 back into /usr. `onix status` on the disk afterwards
     explains the fallback.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import bootkit
import pytest
from conftest import onix, write_tree

from onix import api
from onix.boot import bls
from onix.core import proc, tools
from onix.machine.stone import StoneMeta, pack

pytestmark = pytest.mark.slow

OVMF_CODE = tools.host_file("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = tools.host_file("/usr/share/OVMF/OVMF_VARS_4M.fd")
SD_BOOT = tools.host_file("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")


def init_script(*, fail: bool) -> str:
    end = ("echo 'onix-test: this state is broken, rebooting'\n/bin/busybox reboot -f\n"
           if fail else "/bin/busybox poweroff -f\n")
    return ("#!/bin/busybox sh\n/bin/busybox mount -t proc proc /proc 2>/dev/null\n"
            'echo "onix-test: stateID=$(/bin/busybox cat /usr/.stateID)"\n'
            "/bin/busybox sync\n" + end)


def stone(work: Path, name: str, files: dict, version: str = "1") -> Path:
    src = work / f"src-{name}-{version}"
    write_tree(src, files)
    out = work / f"{name}-{version}.stone"
    pack(src, out, StoneMeta(name=name, version=version))
    return out


def esp_image(esp: Path, img: Path) -> Path:
    """A FAT ESP holding the directory's files (mtools: no mount, no loop device)."""
    img.unlink(missing_ok=True)
    with img.open("wb") as f:
        f.truncate(64 << 20)
    proc.run(["mformat", "-i", img, "-F", "::"])
    for child in sorted(esp.iterdir()):
        proc.run(["mcopy", "-i", img, "-s", "-p", "-Q", child, "::/"])
    return img


def esp_back(img: Path, esp: Path) -> None:
    """Replace the directory's contents with the image's (systemd-boot renamed entries)."""
    for child in esp.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    proc.run(["mcopy", "-i", img, "-s", "-p", "-n", "-Q", "::/*", esp])


def entry_names(img: Path) -> list[str]:
    r = proc.run(["mdir", "-i", img, "-b", "::/loader/entries"])
    return sorted(line.rsplit("/", 1)[1] for line in r.stdout.decode().split())


def boot_uefi(*, esp: Path, disk: Path, vars_fd: Path, log: Path, timeout: float = 180) -> str:
    qemu = proc.which("qemu-system-x86_64")
    log.unlink(missing_ok=True)
    argv = [qemu, "-accel", bootkit.qemu_accel(), "-machine", "q35", "-m", "512", "-smp", "1",
            "-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none",
            "-serial", f"file:{log}", "-no-reboot",
            "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,file={vars_fd}",
            "-drive", f"file={esp},format=raw,if=virtio",
            "-drive", f"file={disk},format=raw,if=virtio"]
    r = proc.run(argv, check=False, input=b"", timeout=timeout)
    text = log.read_text(errors="replace") if log.exists() else ""
    assert r.returncode == 0, f"QEMU failed ({r.returncode}):\n" + "\n".join(
        text.splitlines()[-40:])
    return text


def booted(log: str) -> int:
    ids = [line.split("=", 1)[1].strip() for line in log.splitlines()
           if line.startswith("onix-test: stateID=")]
    assert len(ids) == 1, log[-3000:]
    return int(ids[0])


def test_systemd_boot_counts_tries_and_falls_back_to_the_previous_state(tmp_path: Path) -> None:
    for p in (OVMF_CODE, OVMF_VARS, SD_BOOT):
        if not p.exists():
            pytest.fail(f"{p} is missing: run ./scripts/bootstrap (ovmf, systemd-boot-efi)")
    work = tmp_path
    stones = bootkit.pack_boot_stones(work / "stones")
    root = work / "root"
    for d in ("boot", "etc/kernel/cmdline.d", "etc/onix", "dev", "proc", "sys", "run"):
        (root / d).mkdir(parents=True)
    (root / "etc/kernel/cmdline.d/vm.conf").write_text(
        "root=LABEL=onixroot console=ttyS0 init=/usr/lib/onix/test-init\n")
    (root / "etc/onix/boot.conf").write_text("tries = 1\ntimeout = 0\n")
    sd = stone(work, "systemd-boot", {"lib/systemd/boot/efi/systemd-bootx64.efi":
                                      SD_BOOT.read_bytes()})
    good = stone(work, "onix-test", {"lib/onix/test-init": (init_script(fail=False), 0o755)}, "1")
    bad = stone(work, "onix-test", {"lib/onix/test-init": (init_script(fail=True), 0o755)}, "2")
    vars_fd = work / "vars.fd"
    shutil.copy(OVMF_VARS, vars_fd)

    # A: the first state boots by default; systemd-boot counts the try.
    one = api.install(root, [*stones.values(), sd, good])
    e1 = f"onix-{one.fstx}"
    assert bls.read_default(root / "boot") == f"{e1}+1.conf"
    esp, disk = work / "esp.img", work / "root.img"
    esp_image(root / "boot", esp)
    bootkit.make_ext4(src=root, img=disk)
    log = boot_uefi(esp=esp, disk=disk, vars_fd=vars_fd, log=work / "a.log")
    assert booted(log) == 1
    assert f"{e1}+0-1.conf" in entry_names(esp)  # renamed by systemd-boot at boot
    esp_back(esp, root / "boot")
    r = json.loads(onix("boot", "mark-good", "--root", root, "--json", check=True).stdout)
    assert r == {"entry": f"{e1}.conf", "was": f"{e1}+0-1.conf", "changed": True}

    # B: a new state whose boot never finishes well; it is the default and uses its try.
    two = api.install(root, [bad])
    e2 = f"onix-{two.fstx}"
    assert bls.read_default(root / "boot") == f"{e2}+1.conf"
    assert sorted(bls.list_entries(root / "boot")) == sorted([one.fstx, two.fstx])
    esp_image(root / "boot", esp)
    bootkit.make_ext4(src=root, img=disk)
    log = boot_uefi(esp=esp, disk=disk, vars_fd=vars_fd, log=work / "b.log")
    assert booted(log) == 2 and "this state is broken" in log
    assert entry_names(esp) == sorted([f"{e1}.conf", f"{e2}+0-1.conf"])

    # C: systemd-boot gives up on state 2 and boots state 1's entry; its initrd
    # exchanges state 1 back into /usr before the root's init runs.
    log = boot_uefi(esp=esp, disk=disk, vars_fd=vars_fd, log=work / "c.log")
    assert booted(log) == 1, log[-3000:]
    assert "onix: activated state 1 (was 2)" in log
    assert bootkit.debugfs_cat(disk, "/usr/.stateID").decode().strip() == "1"
    assert bootkit.debugfs_cat(disk, "/.onix/boot-exchange").decode().splitlines()[:2] == \
        ["from=2", "to=1"]

    # What onix makes of that disk afterwards (the ext4 image mounted, the ESP copied in).
    mnt = work / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", disk, mnt], check=True)
    try:
        esp_back(esp, mnt / "boot")
        st = json.loads(onix("status", "--root", mnt, "--json", check=True).stdout)
        assert st["active_state"] == 1
        assert any(f"state 2 failed to boot (its entry {e2}+0-1.conf ran out of tries" in n
                   for n in st["notes"]), st["notes"]
        assert st["boot_entry"] == f"{e1}.conf"
        assert not (mnt / ".onix/boot-exchange").exists()  # reconciled into the log
    finally:
        subprocess.run(["umount", mnt], check=True)
