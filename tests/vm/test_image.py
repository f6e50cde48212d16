"""Validation images booted for real: OVMF + systemd-boot + our initrd + the onix-guest PID 1.

The image is built from the signed local repository in stones/ (./scripts/stones) with
onix.validate.image.build_image, then booted with onix.validate.qemu (TCG here). The
story:

  1. the image boots to the guest's ready marker with the image's fstx; s6-svscan is
     PID 1 and nix-daemon is up and ready under it; the harness powers it off cleanly
     through the control port.
  2. a validation plan written onto the disk (debugfs) runs in two boots: steps pass and
     fail as they should, results are read back from the disk (debugfs), the ESP shows
     systemd-boot's boot counting and the guest's blessing (mtools).
  3. a new state is installed into (a clone of) the image root with onix's transaction;
     the rebuilt disk boots that state.

Boot times are printed (pytest -s) and stay under the per-boot timeout.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from conftest import write_tree

from onix import api
from onix.core import proc
from onix.machine.stone import StoneMeta, pack
from onix.validate import compose, image, qemu, readback
from onix.validate.disk import make_disk

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
STONES = REPO / "stones"
PUB = REPO / ".cache" / "keys" / "local.pub"
TIMEOUT = float(os.environ.get("ONIX_BOOT_TIMEOUT", "60"))
READY = r"^onix-guest: ready .*$"


def _index_names() -> set[str]:
    try:
        index = json.loads((STONES / "index.json").read_text())
    except (OSError, ValueError):
        return set()
    return {s.get("name") for s in index.get("stones", [])}


def skip_reason() -> str | None:
    if not (STONES / "index.json.sig").is_file() or not PUB.is_file():
        return "stones/ is not built: run ./scripts/stones (just stones) first"
    missing = set(image.DEFAULT_STONES) - _index_names()
    if missing:
        return f"stones/ lacks {', '.join(sorted(missing))}: run ./scripts/stones"
    for p in (qemu.OVMF_CODE, qemu.OVMF_VARS):
        if not p.is_file():
            return f"{p} is missing: run ./scripts/bootstrap (ovmf)"
    return None


@pytest.fixture(scope="module")
def built(module_work: Path) -> tuple[image.ImageResult, Path]:
    r = image.build_image(out=module_work / "base.img", repo=STONES, key=PUB,
                          work=module_work / "cache")
    print(f"\nimage {r.key}: state {r.state} fstx {r.fstx}, built in {r.seconds}")
    return r, module_work


def _ready(boot: qemu.Boot) -> dict[str, str]:
    lines = boot.lines("onix-guest: ready ")
    assert len(lines) == 1, qemu.tail(boot.log)
    return dict(w.split("=", 1) for w in lines[0].split())


def _copy(src: Path, dest: Path) -> Path:
    proc.run(["cp", "--sparse=always", src, dest])
    return dest


def test_the_image_boots_to_ready_with_s6_and_nix_daemon(built) -> None:
    r, work = built
    disk = _copy(r.disk, work / "ready.img")
    vars_fd = qemu.new_vars(work / "ready.vars")
    b = qemu.boot(disk, log=work / "ready.log", vars_fd=vars_fd, timeout=TIMEOUT, until=READY)
    print(f"boot to ready: {b.seconds:.1f} s ({qemu.accel()}), stopped by {b.stopped}")
    ready = _ready(b)
    assert ready["fstx"] == r.fstx and ready["state"] == str(r.state), ready
    # systemd-boot started the image's entry (LoaderEntrySelected)
    assert ready["entry"].startswith(f"onix-{r.fstx}"), ready
    # the counted entry (onix's default tries) was blessed before the marker
    assert "+" in ready["entry"] and ready["blessed"] == "yes", ready
    assert "onix-guest: NOT ready" not in b.log
    assert "onix-guest: pid1 s6-svscan" in b.log
    svstat = {ln.split(":", 1)[0]: ln.split(":", 1)[1].strip()
              for ln in b.lines("onix-guest: svstat ")}
    assert re.match(r"up \(pid \d+\) \d+ seconds, ready", svstat["nix-daemon"]), svstat
    assert svstat["nix-daemon/log"].startswith("up "), svstat
    assert "onix-guest: nix-daemon ready after" in b.log
    # the clean shutdown: no journal left to replay, the ESP unmounted
    assert b.stopped == "poweroff", qemu.tail(b.log)
    assert "onix-guest: poweroff" in b.log
    assert not readback.needs_recovery(disk)
    assert readback.read_file(disk, "/etc/hostname") == b"onix-guest\n"


PLAN = """\
# two boots of the runner
boot 1
step esp-on-boot  grep -q ' /boot vfat ' /proc/mounts && ls /boot/loader/entries
step nix-ping     nix --extra-experimental-features nix-command store ping --store daemon
step svscan-pid1  test "$(cat /proc/1/comm)" = s6-svscan
step alice        test "$(id -u alice)" = 1000
step must-fail    echo this step fails on purpose; exit 3
then reboot
boot 2
step second-boot  test "$ONIX_VALIDATE_BOOT" = 2 && test "$(cat /var/lib/onix-validate/boot)" = 2
then poweroff
"""


def test_a_plan_runs_over_two_boots_and_its_results_are_read_back(built) -> None:
    r, work = built
    disk = _copy(r.disk, work / "plan.img")
    vars_fd = qemu.new_vars(work / "plan.vars")
    readback.write_file(disk, "/var/lib/onix-validate/plan", PLAN.encode())
    assert readback.read_file(disk, "/var/lib/onix-validate/plan") == PLAN.encode()

    b1 = qemu.boot(disk, log=work / "plan1.log", vars_fd=vars_fd, timeout=TIMEOUT)
    print(f"plan boot 1: {b1.seconds:.1f} s")
    assert b1.ended == "exit"
    assert "onix-validate: boot 1 begins (5 steps)" in b1.log, qemu.tail(b1.log)
    for step in ("esp-on-boot", "nix-ping", "svscan-pid1", "alice"):
        assert re.search(rf"^onix-validate: step {step} ok \(", b1.log, re.M), qemu.tail(b1.log)
    assert "onix-validate: step must-fail FAIL (exit 3," in b1.log
    assert "onix-validate:   | this step fails on purpose" in b1.log
    assert "onix-validate: boot 1 done: FAIL 4/5; then reboot" in b1.log
    assert "onix-guest: reboot" in b1.log

    b2 = qemu.boot(disk, log=work / "plan2.log", vars_fd=vars_fd, timeout=TIMEOUT)
    print(f"plan boot 2: {b2.seconds:.1f} s")
    assert "onix-validate: step second-boot ok" in b2.log, qemu.tail(b2.log)
    assert "onix-validate: boot 2 done: ok 1/1; then poweroff" in b2.log
    assert _ready(b2)["fstx"] == r.fstx

    res1 = readback.read_file(disk, "/var/lib/onix-validate/results/1").decode().splitlines()
    assert [ln.split()[:3] for ln in res1[:-1]] == [
        ["step", "esp-on-boot", "ok"], ["step", "nix-ping", "ok"],
        ["step", "svscan-pid1", "ok"], ["step", "alice", "ok"], ["step", "must-fail", "FAIL"]]
    assert res1[-1] == "boot 1 FAIL 4/5 then reboot"
    assert readback.read_file(disk, "/var/lib/onix-validate/results/2").decode().splitlines()[-1] \
        == "boot 2 ok 1/1 then poweroff"
    log = readback.read_file(disk, "/var/lib/onix-validate/results/1.d/must-fail.log")
    assert log == b"this step fails on purpose\n"
    assert sorted(readback.list_dir(disk, "/var/lib/onix-validate/results")) == \
        ["1", "1.d", "2", "2.d"]
    # systemd-boot counted the first boot (tries = 3 by default; LoaderEntrySelected
    # names the entry as it was chosen, +3), and the guest's ready path blessed it (onix
    # boot mark-good): the entry has no counter any more
    assert "onix-guest: onix boot mark-good: " in b1.log, qemu.tail(b1.log)
    assert f"entry=onix-{r.fstx}+3.conf" in b1.log
    entries = [f for f in readback.esp_files(disk) if f.startswith("/loader/entries/")]
    assert entries == [f"/loader/entries/onix-{r.fstx}.conf"], entries
    assert f"entry=onix-{r.fstx}.conf" in b2.log


def test_a_new_state_installed_into_the_image_root_boots(built, tmp_path: Path) -> None:
    r, _work = built
    root = compose.clone_root(r.root, tmp_path / "root")
    src = tmp_path / "marker-src"
    write_tree(src, {"share/onix-test/marker": b"state two\n"})
    stone = tmp_path / "onix-test-marker.stone"
    pack(src, stone, StoneMeta(name="onix-test-marker", version="1"))
    two = api.install(root, [stone])
    assert two.to_state == r.state + 1 and two.fstx != r.fstx
    disk = tmp_path / "two.img"
    make_disk(root, disk, seed="two")
    entries = [f for f in readback.esp_files(disk) if f.startswith("/loader/entries/")]
    assert f"/loader/entries/onix-{two.fstx}+3.conf" in entries, entries
    assert f"/loader/entries/onix-{r.fstx}+3.conf" in entries, entries

    vars_fd = qemu.new_vars(tmp_path / "two.vars")
    b = qemu.boot(disk, log=tmp_path / "two.log", vars_fd=vars_fd, timeout=TIMEOUT,
                  until=READY)
    print(f"new state boot: {b.seconds:.1f} s")
    ready = _ready(b)
    assert ready["fstx"] == two.fstx and ready["state"] == str(two.to_state), ready
    assert ready["entry"] == f"onix-{two.fstx}+3.conf", ready
    assert "onix-guest: svstat nix-daemon: up" in b.log
    assert readback.read_file(disk, "/usr/share/onix-test/marker") == b"state two\n"
