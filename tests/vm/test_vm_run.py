"""`onix vm run IMAGE`: an image booted with its serial console on the terminal.

Fast (no VM): the QEMU command line as data (validation's machine, the console on
stdio, the restricted user network, the SSH forward only when asked, -snapshot as the
disk's snapshot=on); the refusals, one line each and nothing started or written; the
console proxy against a fake qemu-system-x86_64 that echoes its serial input (Ctrl-]
asks it to power off over its control port, or kills it; the guest's power-off ends the
run, the end of stdin does not, SIGTERM and a terminal that hangs up do; a terminal in
raw mode is given back as it was; QEMU's own failure is one line).

Slow (one real run under TCG, about a minute and a half here): the validation image
built with `onix image build`, booted by `onix vm run` with stdin from a pipe: the
kernel's banner arrives on the console, the SSH port is forwarded, the guest's plan
reboots it inside the same QEMU, and Ctrl-] powers it off cleanly (the root needs no
journal replay, the ESP kept the boot blessing), QEMU gone.
ONIX_VALIDATE_REPO and ONIX_VALIDATE_KEY name another repository than stones/.
"""

from __future__ import annotations

import json
import os
import pty
import selectors
import signal
import socket
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from test_validate import PUB, STONES, _skip_reason

from onix.core import proc
from onix.validate import image, qemu, readback, vm

REPO = Path(__file__).resolve().parents[2]
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

FAKE_QEMU = """#!PYTHON
# A QEMU whose serial port (stdio) echoes what it gets: `poweroff` ends it, `fail` fails
# it. FAKE_CONTROL=listen: its control port (-chardev socket,...,path=P) takes
# `poweroff` like the ONIX guest's listener; =deaf: it accepts and never answers.
import os, socket, sys, threading, time
with open(os.environ["FAKE_PIDS"], "a") as f:
    f.write(f"{os.getpid()}\\n")
args = sys.argv[1:]
ctl = [a.split("path=")[1].split(",")[0] for a in args if a.startswith("socket,id=onixctl")]
mode = os.environ.get("FAKE_CONTROL", "")

def control(s):
    c, _ = s.accept()
    if mode == "deaf":
        time.sleep(1000)
    if c.makefile().readline().strip() == "poweroff":
        print("fake guest: powering off (control)", flush=True)
        os._exit(0)

if ctl and mode:  # listening before the banner, as QEMU does before the guest runs
    s = socket.socket(socket.AF_UNIX)
    s.bind(ctl[0])
    s.listen()
    threading.Thread(target=control, args=(s,), daemon=True).start()
print("fake firmware: booting", flush=True)
for line in sys.stdin:
    line = line.rstrip("\\n")
    if line == "poweroff":
        print("fake guest: powering off", flush=True)
        sys.exit(0)
    if line == "fail":
        print("qemu-system-x86_64: fake failure", file=sys.stderr, flush=True)
        sys.exit(1)
    print(f"got: {line}", flush=True)
time.sleep(1000)
"""


@pytest.fixture
def fake(tmp_path: Path) -> dict[str, str]:
    _needs_ovmf()
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    q = bin_ / "qemu-system-x86_64"
    q.write_text(FAKE_QEMU.replace("PYTHON", sys.executable))
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


def _start(disk: Path, env: dict[str, str], *args: str) -> tuple[subprocess.Popen, bytearray]:
    p = _onix("vm", "run", disk, *args, env=env, stdin=subprocess.PIPE,
              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    buf = bytearray()
    assert _read_until(p.stdout.fileno(), b"fake firmware: booting", 30, buf), bytes(buf)
    return p, buf


def _doc(out: bytes) -> dict:
    """The --json document after the console's bytes."""
    return json.loads(out[out.rindex(b'{\n  "accel"'):])


def test_typed_lines_reach_the_guest_and_ctrl_bracket_powers_it_off(
        tmp_path: Path, fake: dict[str, str]) -> None:
    disk = _gpt(tmp_path / "esp.img")
    p, buf = _start(disk, {**fake, "FAKE_CONTROL": "listen"}, "--json")
    p.stdin.write(b"hello\n")
    p.stdin.flush()
    assert _read_until(p.stdout.fileno(), b"got: hello", 30, buf), bytes(buf)
    p.stdin.write(b"typed\x1dnot sent\n")  # the bytes before Ctrl-] still go
    p.stdin.flush()
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    text = bytes(buf) + out
    assert b"fake guest: powering off (control)" in text  # asked, not killed
    doc = _doc(text)
    assert doc["ended"] == "escape" and not doc["killed"] and doc["status"] == 0, doc
    assert doc["vars"] == f"{disk}.vars"
    assert b"not sent" not in text
    assert (tmp_path / "esp.img.vars").stat().st_size == qemu.OVMF_VARS.stat().st_size
    assert f"onix vm: booting {disk} (tcg, 1024 MiB, 2 CPUs); Ctrl-] powers it off".encode() \
        in err
    assert b"onix vm: asking the guest to power off" in err
    pids = _pids(fake)
    assert len(pids) == 1 and _gone(pids[0])


def test_ctrl_bracket_kills_a_guest_that_cannot_be_asked_or_does_not_answer(
        tmp_path: Path, fake: dict[str, str]) -> None:
    disk = _gpt(tmp_path / "esp.img")
    # no listener on the control port (a guest still in its firmware): killed at once
    p, buf = _start(disk, fake, "--json")
    p.stdin.write(b"\x1d")
    p.stdin.flush()
    out, err = p.communicate(timeout=15)  # not ASK_WAIT: nothing to wait for
    assert p.returncode == 0, err
    doc = _doc(bytes(buf) + out)
    assert doc["ended"] == "escape" and doc["killed"], doc
    # a listener that never answers: the second Ctrl-] kills it before ASK_WAIT
    p, buf = _start(disk, {**fake, "FAKE_CONTROL": "deaf"})
    p.stdin.write(b"\x1d")
    p.stdin.flush()
    assert _read_until(p.stderr.fileno(), b"asking the guest to power off", 30, bytearray())
    time.sleep(0.5)
    assert p.poll() is None
    p.stdin.write(b"\x1d")
    p.stdin.flush()
    _out, err = p.communicate(timeout=vm.ASK_WAIT / 2)
    assert p.returncode == 0, err
    assert b"onix vm: Ctrl-]: QEMU killed (the guest did not power off)" in err
    pids = _pids(fake)
    assert len(pids) == 2 and all(_gone(pid) for pid in pids)


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
    p = _onix("vm", "run", disk, env=fake, stdin=slave, stdout=slave, stderr=subprocess.PIPE)
    try:
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
        if p.poll() is None:
            p.kill()
        os.close(master)
        os.close(slave)
    pids = _pids(fake)
    assert len(pids) == 1 and _gone(pids[0])


def test_a_terminal_that_hangs_up_ends_the_vm(tmp_path: Path, fake: dict[str, str]) -> None:
    disk = _gpt(tmp_path / "esp.img")
    master, slave = pty.openpty()
    p = _onix("vm", "run", disk, "--json", env=fake, stdin=slave, stdout=subprocess.PIPE,
              stderr=subprocess.PIPE)
    try:
        buf = bytearray()
        assert _read_until(p.stdout.fileno(), b"fake firmware: booting", 30, buf), bytes(buf)
        os.close(master)  # the terminal window closed (no SIGHUP: not its controlling tty)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
        os.close(slave)
    assert p.returncode == 0, err
    doc = _doc(bytes(buf) + out)
    assert doc["ended"] == "closed" and doc["killed"], doc
    pids = _pids(fake)
    assert len(pids) == 1 and _gone(pids[0])


# -- real boots ---------------------------------------------------------------------------

# the validation suite's: stones/ signed and complete (the image's onix blesses its boot)
skip_reason = _skip_reason


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


PLAN = """\
boot 1
step first   test "$ONIX_VALIDATE_BOOT" = 1
then reboot
boot 2
step second  test "$ONIX_VALIDATE_BOOT" = 2
then wait
"""


@pytest.mark.slow
def test_a_real_machine_reboots_inside_one_run_and_ctrl_bracket_powers_it_off(
        built: Path) -> None:
    """One `onix vm run`, two boots (~1 min under TCG): the console, the forwarded port,
    a guest reboot that stays in QEMU, then Ctrl-]: a clean power-off, QEMU gone."""
    disk = _copy(built, built.with_name("run.img"))
    readback.write_file(disk, "/var/lib/onix-validate/plan", PLAN.encode())
    port = _free_port()
    p = _onix("vm", "run", disk, "--ssh-port", port, "--json", stdin=subprocess.PIPE,
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
        # boot 2 (the plan's reboot stayed inside this QEMU) waits on its control port
        assert _read_until(p.stdout.fileno(), b"onix-guest: listening on the control port",
                           2 * BOOT_TIMEOUT, buf), bytes(buf)[-3000:]
        print(f"two boots in {time.monotonic() - t0:.1f} s")
        assert _qemus_of(disk) == pids
        p.stdin.write(b"\x1d")
        p.stdin.flush()
        out, err = p.communicate(timeout=vm.ASK_WAIT + 30)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    text = bytes(buf) + out
    console = text.decode(errors="replace")
    doc = _doc(text)
    assert doc["ended"] == "escape" and not doc["killed"], (doc, console[-3000:])
    assert "onix-validate: boot 1 done: ok 1/1; then reboot" in console
    assert "onix-validate: boot 2 done: ok 1/1; then wait" in console
    assert console.count("Linux version") == 2
    assert "onix-guest: control: poweroff" in console
    assert not _qemus_of(disk) and _gone(pids[0])
    assert built.with_name("run.img.vars").is_file()  # its NVRAM, kept for the next run
    # a clean power-off: the root needs no journal replay, the ESP kept the blessing
    assert not readback.needs_recovery(disk)
    assert readback.read_file(disk, "/var/lib/onix-validate/boot") == b"2\n"
    entries = [e for e in readback.esp_files(disk) if e.startswith("/loader/entries/")]
    assert len(entries) == 1 and "+" not in entries[0], entries
    assert f"default {entries[0].rsplit('/', 1)[1]}".encode() in \
        readback.esp_read(disk, "loader/loader.conf")
