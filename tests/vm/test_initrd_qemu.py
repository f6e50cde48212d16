"""Real boots: an onix root on an ext4 disk, our initrd, the Debian cloud kernel, QEMU.

Two states are installed with the engine (A: kernel, busybox, exchange helper and a
marker stone at version 1; B: the marker at version 2). One initrd, built from the
live state, boots both: with B's fstx nothing moves; with A's fstx the initrd
exchanges A's archived tree into /usr before switch_root, and leaves its note,
unless onix's /.onix/txn-running marker says a transaction is unfinished. The
disk image is read back with debugfs, so nothing is mounted on the host.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import bootkit
import pytest
from conftest import write_tree

from onix import api
from onix.boot import initrd
from onix.machine.stone import StoneMeta, pack

pytestmark = pytest.mark.slow

# The real init of these roots: report what booted, then power off (QEMU exits).
# Only /usr/bin/busybox exists there (/bin is a link to usr/bin), so every applet is
# called through it.
TEST_INIT = """#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc 2>/dev/null
echo "onix-test: stateID=$(/bin/busybox cat /usr/.stateID)"
echo "onix-test: marker=$(/bin/busybox cat /usr/share/onix-test/marker)"
echo "onix-test: root=$(/bin/busybox grep ' / ' /proc/mounts)"
/bin/busybox sync
/bin/busybox poweroff -f
"""


@dataclass
class Machine:
    root: Path
    kver: str
    initrd: Path
    fstx: dict[int, str]  # state id → fstx, from the state log

    @property
    def kernel(self) -> Path:
        return self.root / "usr" / "lib" / "kernel" / self.kver / "vmlinuz"


def build_machine(work: Path, *, depmod: bool = False) -> Machine:
    work.mkdir(parents=True)
    stones = bootkit.pack_boot_stones(work / "stones", depmod=depmod)

    def marker(version: int) -> Path:
        src = work / f"marker-{version}"
        write_tree(src, {"share/onix-test/marker": f"{version}\n",
                         "lib/onix/test-init": (TEST_INIT, 0o755)})
        out = work / f"onix-test-{version}.stone"
        pack(src, out, StoneMeta(name="onix-test", version=str(version)))
        return out

    root = work / "root"
    a = api.install(root, [*stones.values(), marker(1)])
    b = api.install(root, [marker(2)])
    assert (a.to_state, b.to_state) == (1, 2)
    # mount points the initrd moves /dev, /proc, /sys and /run onto
    for d in ("dev", "proc", "sys", "run"):
        (root / d).mkdir()
    _tree, kver = bootkit.kernel_tree(depmod=depmod)
    img = initrd.build(usr=root / "usr", kver=kver, cache_dir=work / "initrd-cache")
    assert img.compression == "zstd" and "virtio_blk" in img.modules
    fstx = {s["id"]: s["fstx"] for s in api.list_states(root)}
    return Machine(root=root, kver=kver, initrd=img.path, fstx=fstx)


@pytest.fixture(scope="module")
def machine(tmp_path_factory) -> Machine:
    return build_machine(tmp_path_factory.mktemp("boot") / "m")


def boot(m: Machine, disk: Path, append: str, *, init: str = "/usr/lib/onix/test-init",
         ok: bool = True) -> str:
    log = bootkit.run_qemu_direct(kernel=m.kernel, initrd=m.initrd, disk=disk,
                                  append=f"{append} init={init}")
    onix_lines = [line for line in log.splitlines() if line.startswith("onix")]
    # every module loaded; and unless a failure is the point, nothing was fatal
    assert not [line for line in onix_lines if "insmod" in line], log
    assert ok == (not [line for line in onix_lines if "FATAL" in line]), log
    return log


def read_note(disk: Path, offset: int = 0) -> dict[str, str]:
    text = bootkit.debugfs_cat(disk, "/.onix/boot-exchange", offset=offset).decode()
    return dict(line.split("=", 1) for line in text.splitlines())


def test_boot_newest_state_needs_no_exchange(machine: Machine, tmp_path: Path) -> None:
    disk = bootkit.make_ext4(src=machine.root, img=tmp_path / "root.img", size="256M")
    log = boot(machine, disk, f"root=LABEL={bootkit.ROOT_LABEL} rw onix.fstx={machine.fstx[2]}")
    assert "onix: booting state 2" in log and "onix: activated" not in log
    assert "onix-test: stateID=2" in log and "onix-test: marker=2" in log
    assert re.search(r"onix-test: root=/dev/vda / ext4 rw", log)
    assert bootkit.debugfs_cat(disk, "/usr/.stateID") == b"2\n"
    with pytest.raises(FileNotFoundError):
        bootkit.debugfs_cat(disk, "/.onix/boot-exchange")


def test_boot_older_state_is_exchanged_by_the_initrd(machine: Machine, tmp_path: Path) -> None:
    disk = bootkit.make_ext4(src=machine.root, img=tmp_path / "root.img", size="256M")
    log = boot(machine, disk, f"root=LABEL={bootkit.ROOT_LABEL} rw onix.fstx={machine.fstx[1]}")
    assert log.index("onix: activated state 1 (was 2)") < log.index("onix: booting state 1")
    assert "onix-test: stateID=1" in log and "onix-test: marker=1" in log
    assert bootkit.debugfs_cat(disk, "/usr/.stateID") == b"1\n"
    # the exchange left state 2's tree where state 1's was: what onix reconciles from
    assert bootkit.debugfs_cat(disk, "/.onix/states/1/usr/.stateID") == b"2\n"
    assert read_note(disk) == {"from": "2", "to": "1", "fstx": machine.fstx[1]}


def test_boot_does_not_exchange_during_an_onix_transaction(machine: Machine,
                                                           tmp_path: Path) -> None:
    """onix's /.onix/txn-running marker: the older entry boots /usr as it is."""
    marker = machine.root / ".onix" / "txn-running"
    marker.write_text("")
    try:  # only this test's image holds the marker; the machine's root is shared
        disk = bootkit.make_ext4(src=machine.root, img=tmp_path / "root.img", size="256M")
    finally:
        marker.unlink()
    log = boot(machine, disk, f"root=LABEL={bootkit.ROOT_LABEL} rw onix.fstx={machine.fstx[1]}")
    assert ("onix: an interrupted onix transaction is pending; booting /usr as it is so that "
            "onix can finish it") in log
    assert "onix: activated" not in log and "onix: booting state 2" in log
    assert "onix-test: stateID=2" in log and "onix-test: marker=2" in log
    assert bootkit.debugfs_cat(disk, "/usr/.stateID") == b"2\n"
    assert bootkit.debugfs_cat(disk, "/.onix/states/1/usr/.stateID") == b"1\n"
    assert bootkit.debugfs_cat(disk, "/.onix/txn-running") == b""
    with pytest.raises(FileNotFoundError):
        bootkit.debugfs_cat(disk, "/.onix/boot-exchange")


def test_boot_unknown_state_boots_the_live_one(machine: Machine, tmp_path: Path) -> None:
    disk = bootkit.make_ext4(src=machine.root, img=tmp_path / "root.img", size="256M")
    log = boot(machine, disk, f"root=LABEL={bootkit.ROOT_LABEL} onix.fstx=7-abcd")
    assert "onix: state 7 is not archived on this root" in log
    assert "onix: booting state 2" in log and "onix-test: stateID=2" in log
    assert bootkit.debugfs_cat(disk, "/usr/.stateID") == b"2\n"


def test_boot_failure_reboots(machine: Machine, tmp_path: Path) -> None:
    """A fatal error ends in a reboot (QEMU -no-reboot exits), not a panic or a hang."""
    disk = bootkit.make_ext4(src=machine.root, img=tmp_path / "root.img", size="256M")
    log = boot(machine, disk, f"root=LABEL={bootkit.ROOT_LABEL}", init="/nonexistent",
               ok=False)
    assert "onix: FATAL: no /nonexistent in the root file system" in log
    assert "Kernel panic" not in log and "reboot: Restarting system" in log


def test_boot_partuuid_ro_with_modules_dep(tmp_path: Path) -> None:
    """The modules.dep kernel, a GPT disk found by PARTUUID (onix.root wins), `ro`."""
    m = build_machine(tmp_path / "m", depmod=True)
    assert (m.root / "usr/lib/modules" / m.kver / "modules.dep").exists()
    partuuid, offset = bootkit.make_gpt_disk(src=m.root, img=tmp_path / "disk.img",
                                             size="256M")
    log = boot(m, tmp_path / "disk.img", f"root=/dev/nonexistent onix.root=PARTUUID={partuuid}"
                                         f" ro onix.fstx={m.fstx[1]}")
    assert "onix: activated state 1 (was 2)" in log and "onix-test: stateID=1" in log
    # the exchange ran read-write; the real init got the read-only root it asked for
    assert re.search(r"onix-test: root=/dev/vda1 / ext4 ro[, ]", log)
    assert bootkit.debugfs_cat(tmp_path / "disk.img", "/usr/.stateID", offset=offset) == b"1\n"
    assert read_note(tmp_path / "disk.img", offset)["to"] == "1"
