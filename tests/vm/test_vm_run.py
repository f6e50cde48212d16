"""`onix vm run IMAGE`: an image booted with its serial console on the terminal.

Fast (no VM): the QEMU command line as data (validation's machine, the console on
stdio, the restricted user network, the SSH forward only when asked, -snapshot as the
disk's snapshot=on); the refusals, one line each and nothing started or written; the
console proxy against a fake qemu-system-x86_64 that echoes its serial input (Ctrl-]
ends it, the guest's power-off ends it, a terminal in raw mode is given back as it was,
QEMU's own failure is one line).

Slow (real boots under TCG, about a minute here): the validation image built with
`onix image build`, booted by `onix vm run` with stdin from a pipe: the kernel's banner
arrives on the console, the SSH port is forwarded, Ctrl-] ends it with QEMU gone; and
with --snapshot, a guest whose plan reboots once and then powers off ends the run by
itself (exit 0) after both boots, with nothing written to the image.
ONIX_VALIDATE_REPO and ONIX_VALIDATE_KEY name another repository than stones/.
"""

from __future__ import annotations

import json
import os
import pty
import re
import selectors
import signal
import socket
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from onix.core import proc
from onix.validate import image, qemu, readback, vm

REPO = Path(__file__).resolve().parents[2]
STONES = Path(os.environ.get("ONIX_VALIDATE_REPO") or REPO / "stones")
PUB = Path(os.environ.get("ONIX_VALIDATE_KEY") or REPO / ".cache" / "keys" / "local.pub")
BOOT_TIMEOUT = float(os.environ.get("ONIX_BOOT_TIMEOUT", "90"))


def _needs_ovmf() -> None:
    for p in (qemu.OVMF_CODE, qemu.OVMF_VARS):
        if not p.is_file():
            pytest.skip(f"{p} is missing: run ./scripts/bootstrap (ovmf)")


def _gpt(path: Path, *, esp: bool = True) -> Path:
    """A small sparse GPT disk: an ESP (or a Linux partition) and nothing in it."""
    with open(path, "wb") as f:
        f.truncate(8 << 20)
    kind = image.ESP_TYPE if esp else image.ROOT_TYPE
    proc.run(["sfdisk", "--no-reread", "--no-tell-kernel", path],
             input=f"label: gpt\nstart=2048, size=8192, type={kind}\n".encode())
    return path


def _onix(*args: object, env: dict | None = None, **kw: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "onix", *map(str, args)], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}, **kw)


def _refused(*args: object, env: dict | None = None) -> tuple[int, str, str]:
    p = _onix("vm", "run", *args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
              stderr=subprocess.PIPE, text=True)
    out, err = p.communicate(timeout=60)
    return p.returncode, out, err


def _qemus_of(path: Path) -> list[int]:
    """Pids of live processes with `path` as a -drive (a QEMU running it)."""
    drive = f"file={path},".encode()
    pids = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and drive in (d / "cmdline").read_bytes() \
                    and (d / "stat").read_text().split(")")[-1].split()[0] != "Z":
                pids.append(int(d.name))
        except OSError:
            continue
    return pids


# -- the command line, as data ------------------------------------------------------------

def test_the_command_line_is_validations_machine_with_a_console_and_a_restricted_net(
        tmp_path: Path) -> None:
    _needs_ovmf()
    disk, vars_fd = tmp_path / "d.img", tmp_path / "d.img.vars"
    a = vm.run_argv(disk, vars_fd=vars_fd, accel_="tcg", memory=1024, cpus=2)

    def opt(argv: list[str], flag: str) -> list[str]:
        return [argv[i + 1] for i, w in enumerate(argv) if w == flag]

    assert opt(a, "-machine") == ["q35"] and opt(a, "-accel") == ["tcg"]
    assert opt(a, "-m") == ["1024"] and opt(a, "-smp") == ["2"]
    assert opt(a, "-drive") == [
        f"if=pflash,format=raw,readonly=on,file={qemu.OVMF_CODE}",
        f"if=pflash,format=raw,file={vars_fd}",
        f"file={disk},format=raw,if=virtio"]
    assert opt(a, "-serial") == ["stdio"]
    assert "-no-reboot" not in a  # a reboot in the guest reboots the machine
    assert opt(a, "-netdev") == ["user,id=net0,restrict=on"]  # no forward unless asked
    assert opt(a, "-device") == ["virtio-net-pci,netdev=net0"]
    assert "-snapshot" not in a and "snapshot=on" not in " ".join(a)

    fwd = vm.run_argv(disk, vars_fd=vars_fd, accel_="tcg", ssh_port=2222, snapshot=True)
    assert opt(fwd, "-netdev") == ["user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:2222-:22"]
    assert opt(fwd, "-drive")[2] == f"file={disk},format=raw,if=virtio,snapshot=on"
    assert opt(fwd, "-drive")[1] == f"if=pflash,format=raw,file={vars_fd}"

    # one command line: validation's differs only in the serial file, -no-reboot and
    # having no network
    val = qemu.argv_for(disk, vars_fd=vars_fd, serial="file:/l", accel_="tcg", memory=1024,
                        smp=2)
    assert opt(val, "-serial") == ["file:/l"] and "-no-reboot" in val
    strip = {"-serial", "-netdev", "-device"}

    def base(argv: list[str]) -> list[str]:
        out, skip = [], False
        for w in argv:
            if skip:
                skip = False
            elif w in strip:
                skip = True
            elif w != "-no-reboot":
                out.append(w)
        return out

    assert base(a) == base(val)


def test_memory_sizes() -> None:
    assert vm.memory_mib("1G") == 1024 and vm.memory_mib("512M") == 512
    assert vm.memory_mib("2048") == 2048 and vm.memory_mib(768) == 768
    with pytest.raises(vm.OnixError, match="too small"):
        vm.memory_mib("64M")
    with pytest.raises(vm.OnixError, match="is not a size"):
        vm.memory_mib("lots")


# -- refusals: one line, nothing started, nothing written ---------------------------------

def test_a_missing_image_is_one_line(tmp_path: Path) -> None:
    rc, out, err = _refused(tmp_path / "nope.img")
    assert rc == 1 and out == ""
    assert err == f"error: {tmp_path / 'nope.img'}: no such disk image; build one with " \
        "onix image build --out PATH (just image)\n"
    rc, out, err = _refused(tmp_path, "--json")
    assert rc == 1 and err.count("\n") == 1 and "is a directory, not a disk image" in err
    assert json.loads(out)["path"] == str(tmp_path)


def test_a_file_that_is_not_a_gpt_disk_with_an_esp_is_one_line(tmp_path: Path) -> None:
    zeros = tmp_path / "zeros.img"
    zeros.write_bytes(bytes(1 << 20))
    rc, _out, err = _refused(zeros)
    assert rc == 1 and err.count("\n") == 1
    assert err.startswith(f"error: {zeros}: is not a GPT disk image (no GPT header); ")
    linux = _gpt(tmp_path / "linux.img", esp=False)
    rc, _out, err = _refused(linux)
    assert rc == 1 and err.count("\n") == 1
    assert f"{linux}: has no EFI system partition" in err
    vm.check_image(_gpt(tmp_path / "esp.img"))  # the same disk with an ESP passes
    assert not list(tmp_path.glob("*.vars"))


def test_a_busy_ssh_port_is_one_line_and_nothing_starts(tmp_path: Path) -> None:
    _needs_ovmf()
    disk = _gpt(tmp_path / "esp.img")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        rc, _out, err = _refused(disk, "--ssh-port", port)
    assert rc == 1 and err.count("\n") == 1
    assert err == f"error: port {port} on 127.0.0.1 is in use; give another --ssh-port, " \
        "or stop what listens there\n"
    assert not (tmp_path / "esp.img.vars").exists()


def test_missing_qemu_names_its_package(tmp_path: Path) -> None:
    disk = _gpt(tmp_path / "esp.img")
    rc, _out, err = _refused(disk, env={"PATH": str(tmp_path / "empty")})
    assert rc == 1
    assert err == "error: qemu-system-x86_64 is not installed; install the Debian package " \
        "qemu-system-x86 (./scripts/bootstrap does)\n"


# -- the console, against a fake QEMU -----------------------------------------------------

FAKE_QEMU = """#!/bin/sh
# a QEMU whose serial port echoes what it gets; `poweroff` ends it, `fail` fails it
echo $$ >> "$FAKE_PIDS"
echo "fake firmware: booting"
while IFS= read -r line; do
    case $line in
        poweroff) echo "fake guest: powering off"; exit 0 ;;
        fail) echo "qemu-system-x86_64: fake failure" >&2; exit 1 ;;
        *) echo "got: $line" ;;
    esac
done
sleep 1000
"""


@pytest.fixture
def fake(tmp_path: Path) -> dict[str, str]:
    _needs_ovmf()
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    q = bin_ / "qemu-system-x86_64"
    q.write_text(FAKE_QEMU)
    q.chmod(0o755)
    return {"PATH": f"{bin_}:/usr/bin:/bin", "FAKE_PIDS": str(tmp_path / "pids"),
            "ONIX_QEMU_ACCEL": "tcg"}


def _pids(env: dict[str, str]) -> list[int]:
    f = Path(env["FAKE_PIDS"])
    return [int(x) for x in f.read_text().split()] if f.exists() else []


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _read_until(fd: int, pattern: bytes, timeout: float, buf: bytearray) -> bool:
    """Read fd into buf until `pattern` is in it (True), EOF or the timeout (False)."""
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while pattern not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or not sel.select(timeout=left):
            return False
        try:
            data = os.read(fd, 65536)
        except OSError:  # a pty whose other side closed
            data = b""
        if not data:
            return pattern in buf
        buf += data
    return True


def test_ctrl_bracket_stops_qemu_and_the_typed_lines_reach_the_guest(
        tmp_path: Path, fake: dict[str, str]) -> None:
    disk = _gpt(tmp_path / "esp.img")
    p = _onix("vm", "run", disk, "--json", env=fake, stdin=subprocess.PIPE,
              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    buf = bytearray()
    assert _read_until(p.stdout.fileno(), b"fake firmware: booting", 30, buf), bytes(buf)
    p.stdin.write(b"hello\n")
    p.stdin.flush()
    assert _read_until(p.stdout.fileno(), b"got: hello", 30, buf), bytes(buf)
    p.stdin.write(b"typed\x1dnot sent\n")  # the bytes before Ctrl-] still go
    p.stdin.flush()
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    text = bytes(buf) + out
    doc = json.loads(text[text.rindex(b'{\n  "accel"'):])
    assert doc["ended"] == "escape" and doc["vars"] == f"{disk}.vars", doc
    assert b"not sent" not in text
    assert (tmp_path / "esp.img.vars").stat().st_size == qemu.OVMF_VARS.stat().st_size
    assert b"booting " + str(disk).encode() in err and b"Ctrl-] stops it" in err
    pids = _pids(fake)
    assert len(pids) == 1 and _gone(pids[0])


def test_a_guest_power_off_ends_the_run_with_exit_0(tmp_path: Path, fake: dict[str, str]) -> None:
    disk = _gpt(tmp_path / "esp.img")
    p = _onix("vm", "run", disk, "--snapshot", env=fake, stdin=subprocess.PIPE,
              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.communicate(b"one\npoweroff\n", timeout=30)
    assert p.returncode == 0, err
    assert out.splitlines()[-2:] == [b"got: one", b"fake guest: powering off"]
    assert b"onix vm: the guest powered off" in err
    assert not (tmp_path / "esp.img.vars").exists()  # --snapshot writes nothing beside it


def test_the_end_of_stdin_does_not_stop_the_vm_but_sigterm_does(
        tmp_path: Path, fake: dict[str, str]) -> None:
    disk = _gpt(tmp_path / "esp.img")
    p = _onix("vm", "run", disk, env=fake, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
              stderr=subprocess.PIPE)
    buf = bytearray()
    assert _read_until(p.stdout.fileno(), b"fake firmware: booting", 30, buf), bytes(buf)
    time.sleep(0.5)
    assert p.poll() is None  # still running after the end of its input
    p.send_signal(signal.SIGTERM)
    _out, err = p.communicate(timeout=30)
    assert p.returncode == 128 + signal.SIGTERM, err
    assert b"stopped by SIGTERM" in err
    pids = _pids(fake)
    assert len(pids) == 1 and _gone(pids[0])


def test_qemus_own_failure_is_one_line(tmp_path: Path, fake: dict[str, str]) -> None:
    disk = _gpt(tmp_path / "esp.img")
    p = _onix("vm", "run", disk, env=fake, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
              stderr=subprocess.PIPE, text=True)
    _out, err = p.communicate("fail\n", timeout=30)
    assert p.returncode == 1
    assert err.splitlines()[-1] == f"error: {disk}: QEMU exited with status 1: " \
        "qemu-system-x86_64: fake failure; see QEMU's message above"


def test_on_a_terminal_every_key_goes_to_the_guest_and_the_terminal_is_restored(
        tmp_path: Path, fake: dict[str, str]) -> None:
    disk = _gpt(tmp_path / "esp.img")
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    try:
        p = _onix("vm", "run", disk, env=fake, stdin=slave, stdout=slave,
                  stderr=subprocess.PIPE)
        buf = bytearray()
        assert _read_until(master, b"fake firmware: booting", 30, buf), bytes(buf)
        # raw mode: no echo, no line editing, Ctrl-C is a byte for the guest, not SIGINT
        deadline = time.monotonic() + 10
        while termios.tcgetattr(slave)[3] & termios.ICANON and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not termios.tcgetattr(slave)[3] & (termios.ICANON | termios.ECHO | termios.ISIG)
        os.write(master, b"a\x03b\n")  # raw: the guest gets the bytes as typed
        assert _read_until(master, b"got: a\x03b", 30, buf), bytes(buf)
        os.write(master, b"\x1d")
        _out, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)
    pids = _pids(fake)
    assert len(pids) == 1 and _gone(pids[0])


# -- real boots ---------------------------------------------------------------------------

def skip_reason() -> str | None:
    if not (STONES / "index.json.sig").is_file() or not PUB.is_file():
        return "stones/ is not built: run ./scripts/stones (just stones) first"
    try:
        names = {s.get("name") for s in json.loads((STONES / "index.json").read_text())["stones"]}
    except (OSError, ValueError, KeyError):
        return "stones/index.json is unreadable: run ./scripts/stones"
    missing = set(image.DEFAULT_STONES) - names
    if missing:
        return f"stones/ lacks {', '.join(sorted(missing))}: run ./scripts/stones"
    for p in (qemu.OVMF_CODE, qemu.OVMF_VARS):
        if not p.is_file():
            return f"{p} is missing: run ./scripts/bootstrap (ovmf)"
    return None


@pytest.fixture(scope="module")
def built(module_work: Path) -> Path:
    """The validation image, written by `onix image build --out` (about 8 s)."""
    out = module_work / "base.img"
    r = subprocess.run([sys.executable, "-m", "onix", "image", "build", "--out", out,
                        "--repo", STONES, "--key", PUB, "--work", module_work / "cache",
                        "--json"], cwd=REPO, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    return out


def _copy(src: Path, dest: Path) -> Path:
    proc.run(["cp", "--sparse=always", src, dest])
    return dest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_real_boot_reaches_the_console_and_ctrl_bracket_ends_it(built: Path) -> None:
    disk = _copy(built, built.with_name("ctrl.img"))
    port = _free_port()
    p = _onix("vm", "run", disk, "--ssh-port", port, stdin=subprocess.PIPE,
              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        buf = bytearray()
        t0 = time.monotonic()
        assert _read_until(p.stdout.fileno(), b"Linux version", BOOT_TIMEOUT, buf), \
            bytes(buf)[-2000:]
        print(f"\nkernel banner after {time.monotonic() - t0:.1f} s ({qemu.accel()})")
        assert b"BdsDxe: starting Boot" in buf  # OVMF chose the disk, on the console too
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # QEMU listens on the forwarded port
        pids = _qemus_of(disk)
        assert len(pids) == 1
        p.stdin.write(b"\x1d")
        p.stdin.flush()
        _out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    assert b"onix vm: stopped with Ctrl-]" in err
    assert not _qemus_of(disk) and _gone(pids[0])
    assert (built.with_name("ctrl.img.vars")).is_file()  # its NVRAM, kept for the next run


PLAN = """\
boot 1
step first   test "$ONIX_VALIDATE_BOOT" = 1
then reboot
boot 2
step second  test "$ONIX_VALIDATE_BOOT" = 2
then poweroff
"""


@pytest.mark.slow
def test_a_guest_that_reboots_then_powers_off_ends_the_run_and_snapshot_writes_nothing(
        built: Path) -> None:
    disk = _copy(built, built.with_name("plan.img"))
    readback.write_file(disk, "/var/lib/onix-validate/plan", PLAN.encode())
    t0 = time.monotonic()
    p = _onix("vm", "run", disk, "--snapshot", "--json", stdin=subprocess.PIPE,
              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = p.communicate(timeout=2 * BOOT_TIMEOUT)
    finally:
        if p.poll() is None:
            p.kill()
    print(f"\ntwo boots and a power-off in {time.monotonic() - t0:.1f} s ({qemu.accel()})")
    assert p.returncode == 0, err
    doc = json.loads(out[out.rindex(b'{\n  "accel"'):])
    assert doc["ended"] == "poweroff" and doc["status"] == 0 and doc["snapshot"], doc
    console = out.decode(errors="replace")
    # both boots in one run: the guest's reboot stayed inside QEMU
    assert re.search(r"^onix-validate: step first ok", console, re.M), console[-3000:]
    assert "onix-validate: boot 1 done: ok 1/1; then reboot" in console
    assert re.search(r"^onix-validate: step second ok", console, re.M), console[-3000:]
    assert "onix-validate: boot 2 done: ok 1/1; then poweroff" in console
    assert console.count("Linux version") == 2
    # --snapshot: the runner's boot count never reached the image, no NVRAM beside it
    with pytest.raises(FileNotFoundError):
        readback.read_file(disk, "/var/lib/onix-validate/boot")
    assert not built.with_name("plan.img.vars").exists()
