"""`onix vm run IMAGE`: an ONIX disk image booted in QEMU, its serial console on the terminal.

The machine is validation's (qemu.argv_for: q35, OVMF, systemd-boot from the image's
ESP, TCG unless KVM really works), with three differences: a reboot in the guest
reboots the machine instead of ending QEMU, the first serial port is QEMU's stdio, and
the machine has QEMU's user network with restrict=on (the guest reaches neither the
host nor the outside; a DHCP lease and the forwarded SSH port work), a virtio NIC.

    check_image(image)                 OnixError unless a GPT disk with an ESP
    check_port(port)                   OnixError when 127.0.0.1:port is taken
    vars_for(image) -> Path            IMAGE.vars, the machine's own NVRAM
    run_argv(image, *, vars_fd, ...)   the QEMU command line, as data
    run(image, *, ssh_port=None, memory="1G", cpus=2, snapshot=False, ...) -> Run

The console: QEMU's serial port is on pipes, and `run` copies the bytes between them
and the terminal, which it puts in raw mode (restored on every way out): every key,
Ctrl-C included, goes to the guest, except Ctrl-] (0x1d, ESCAPE). When the guest
powers off (`poweroff` typed in it), QEMU exits 0 and so does `run`.

Ctrl-] powers the guest off cleanly: `run` asks it over the control port (the second
serial port, the guest's ttyS1, which the ONIX guest's `control` listener reads, as the
validation harness does: qemu.ask) and the console shows the shutdown. A guest that has
not powered off after ASK_WAIT seconds (still in the firmware, or without the
listener) is stopped: QEMU is killed, like pulling the plug. A second Ctrl-] kills it
at once. Pulling the plug is not harmless: the guest's ESP (vfat) can lose the boot
blessing's rename and loader.conf written in the last 30 s (seen: systemd-boot then
found no entry at all), hence the clean way first.

The end of stdin (a pipe, or </dev/null for a machine reached only over SSH) is not an
end: the VM keeps running. A console that went away (a terminal that hung up, a closed
stdout) is: QEMU is killed ("closed"). SIGTERM, SIGHUP (the terminal went away) and SIGINT (when
stdin is not a terminal) kill QEMU; QEMU dies with `onix vm run` (qemu.spawn's
parent-death signal).

NVRAM: IMAGE.vars next to the image, made from OVMF's empty store on the first run and
kept, so systemd-boot's one-time entries (LoaderEntryOneShot) and the firmware's boot
options carry over between runs of one image, as on a real machine. Delete it for
empty NVRAM. --snapshot writes nothing next to the image: the disk's changes go to a
temporary file QEMU drops on exit, and the NVRAM is a temporary copy of IMAGE.vars
(or of OVMF's empty store).

Debian packages: qemu-system-x86, ovmf (qemu.py's).
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import termios
import threading
import time
import tty
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from onix.core.errors import OnixError
from onix.validate import qemu
from onix.validate.disk import ESP_TYPE, parse_size

ESCAPE = 0x1D  # Ctrl-]
GUEST_SSH = 22
ASK_WAIT = 20.0  # seconds from Ctrl-] for the guest to power off before QEMU is killed
MIN_MEMORY_MIB = 128
_STDERR_KEEP = 4096  # bytes of QEMU's stderr kept for the error line


class _Stop(KeyboardInterrupt):
    """A signal asked `run` to stop QEMU (a KeyboardInterrupt past `run`: exit 130)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@dataclass
class Run:
    """One `onix vm run`, once QEMU is gone."""

    image: Path
    vars: Path | None  # None with --snapshot (a temporary copy, removed)
    accel: str
    memory_mib: int
    cpus: int
    ssh_port: int | None
    snapshot: bool
    # "poweroff": QEMU exited by itself (the guest powered off); "escape": Ctrl-];
    # "closed": the console's reader went away; "SIGTERM", "SIGHUP", "SIGINT": a signal
    ended: str
    killed: bool  # QEMU was stopped (SIGTERM) before the guest powered off
    status: int  # QEMU's exit status
    seconds: float
    argv: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["image"] = str(self.image)
        d["vars"] = str(self.vars) if self.vars else None
        return d


def vars_for(image: Path) -> Path:
    """The image's own NVRAM: IMAGE.vars beside it."""
    image = Path(image)
    return image.with_name(image.name + ".vars")


def check_image(image: Path) -> None:
    """OnixError unless `image` is a GPT disk with an EFI system partition.

    Reads only the primary GPT header and its partition entries (a few KiB): 512-byte
    sectors first, then 4096-byte ones."""
    image = Path(image)
    if not image.exists():
        raise OnixError("no such disk image", path=image,
                        hint="build one with onix image build --out PATH (just image)")
    if image.is_dir():
        raise OnixError("is a directory, not a disk image", path=image,
                        hint="give the image file (onix image build --out PATH writes one)")
    try:
        with open(image, "rb") as f:
            for sector in (512, 4096):
                f.seek(sector)
                header = f.read(92)
                if len(header) < 92 or header[:8] != b"EFI PART":
                    continue
                entries_lba = int.from_bytes(header[72:80], "little")
                count = int.from_bytes(header[80:84], "little")
                size = int.from_bytes(header[84:88], "little")
                if not 128 <= size <= 4096 or not 0 < count <= 1024:
                    break  # a corrupt header: say it is not a usable GPT disk
                f.seek(entries_lba * sector)
                table = f.read(count * size)
                types = {str(uuid.UUID(bytes_le=table[i:i + 16])).upper()
                         for i in range(0, len(table) - 15, size)}
                if ESP_TYPE in types:
                    return
                raise OnixError("has no EFI system partition, so the firmware cannot boot it",
                                path=image,
                                hint="give an image onix image build wrote (an ESP and a root)")
    except OSError as e:
        raise OnixError(f"cannot read it: {e.strerror}", path=image,
                        hint="check the path and its permissions") from None
    raise OnixError("is not a GPT disk image (no GPT header)", path=image,
                    hint="give an image onix image build wrote (a GPT disk with an ESP)")


def check_port(port: int) -> None:
    """OnixError when QEMU could not listen on 127.0.0.1:port for the SSH forward."""
    if not 0 < port < 65536:
        raise OnixError(f"port {port} is not a TCP port", hint="give 1 to 65535, e.g. 2222")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # as QEMU's user network listens: SO_REUSEADDR, so a port in TIME_WAIT is free
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            why = "is in use" if e.errno == errno.EADDRINUSE else f"cannot be used ({e.strerror})"
            raise OnixError(f"port {port} on 127.0.0.1 {why}",
                            hint="give another --ssh-port, or stop what listens there") from None


def memory_mib(size: str | int) -> int:
    """MiB of a --memory SIZE: 1G, 512M, or a bare number of MiB (QEMU's -m unit)."""
    text = str(size).strip()
    mib = int(text) if text.isdigit() else parse_size(text) >> 20
    if mib < MIN_MEMORY_MIB:
        raise OnixError(f"memory {size} is too small to boot",
                        hint=f"give at least {MIN_MEMORY_MIB}M, e.g. 1G")
    return mib


def run_argv(image: Path, *, vars_fd: Path, ssh_port: int | None = None, memory: int = 1024,
             cpus: int = 2, snapshot: bool = False, accel_: str | None = None,
             control: Path | None = None) -> list[str]:
    """The QEMU command line of `onix vm run` (qemu.argv_for with the console on stdio,
    reboots kept inside QEMU, the restricted user network, the control port on
    `control`)."""
    netdev = "user,id=net0,restrict=on"
    if ssh_port is not None:
        netdev += f",hostfwd=tcp:127.0.0.1:{ssh_port}-:{GUEST_SSH}"
    return qemu.argv_for(Path(image).absolute(), vars_fd=Path(vars_fd).absolute(),
                         serial="stdio", memory=memory, smp=cpus, accel_=accel_, reboot=True,
                         snapshot=snapshot, netdev=netdev, control=control)


@contextlib.contextmanager
def _raw(fd: int | None) -> Iterator[bool]:
    """The terminal on `fd` in raw mode (every key to the guest) for the block, then as it
    was, whatever happens. Output processing stays on, as QEMU's own stdio console does."""
    if fd is None or not os.isatty(fd):
        yield False
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSANOW)
        mode = termios.tcgetattr(fd)
        mode[1] |= termios.OPOST
        termios.tcsetattr(fd, termios.TCSANOW, mode)
        yield True
    finally:
        with contextlib.suppress(termios.error):  # EIO: the terminal hung up, nothing to restore
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def _signals(catch: tuple[int, ...]) -> Iterator[None]:
    """These signals raise _Stop in the main thread while the block runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    fired = False

    def handler(signum: int, _frame: object) -> None:
        nonlocal fired
        if not fired:  # once: a second signal must not break the terminal's restore
            fired = True
            raise _Stop(signum)

    old = {s: signal.signal(s, handler) for s in catch}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _console(p: subprocess.Popen, *, stdin_fd: int | None, stdout_fd: int, stderr_fd: int,
             control: Path | None, ask_wait: float) -> tuple[str, bool, bytes]:
    """Copy the terminal to QEMU's serial port and back until QEMU is gone: how it ended
    ("poweroff", "escape", "closed"), whether QEMU had to be killed, QEMU's stderr tail.

    The first Ctrl-] asks the guest to power off over the control port (in a thread,
    while the console keeps showing its shutdown) and kills QEMU if it is still there
    after `ask_wait` seconds; a second Ctrl-] kills it at once."""
    assert p.stdin and p.stdout and p.stderr
    to_qemu = p.stdin.fileno()
    os.set_blocking(to_qemu, False)  # a guest that stops reading must not stall the output
    # poll, not epoll: epoll refuses a stdin that is a file or /dev/null (EPERM)
    sel = selectors.PollSelector()
    sel.register(p.stdout, selectors.EVENT_READ, "out")
    sel.register(p.stderr, selectors.EVENT_READ, "err")
    # raw mode: no key makes an end of input on a terminal (Ctrl-D is a byte), so there
    # the end of input, or EIO, means it hung up
    on_tty = stdin_fd is not None and os.isatty(stdin_fd)
    reading = stdin_fd is not None  # stdin is registered
    if reading:
        sel.register(stdin_fd, selectors.EVENT_READ, "in")
    pending = b""  # typed bytes QEMU has not taken yet (stdin is not read meanwhile)
    err_tail = b""
    open_outputs = 2
    ended = ""
    killed = False
    asking: threading.Thread | None = None

    def stop_reading() -> None:
        nonlocal reading
        if reading:
            sel.unregister(stdin_fd)
            reading = False

    def kill(how: str) -> None:
        nonlocal ended, killed, stdin_fd
        ended = ended or how
        killed = killed or p.poll() is None
        stop_reading()
        stdin_fd = None
        qemu.terminate(p)

    def power_off() -> None:
        nonlocal killed
        if not qemu.ask(p, control, "poweroff", wait=ask_wait):
            killed = killed or p.poll() is None
            qemu.terminate(p)

    def escape() -> None:
        nonlocal ended, asking, pending
        if asking is not None or control is None:
            kill("escape")
            return
        ended = "escape"
        pending = b""  # keys typed after Ctrl-] are not the guest's
        _write_all(stderr_fd, f"\nonix vm: asking the guest to power off (QEMU is killed in "
                              f"{ask_wait:g} s, or at once on Ctrl-] again)\n".encode())
        asking = threading.Thread(target=power_off, name="onix-vm-poweroff", daemon=True)
        asking.start()

    while open_outputs:
        for key, _events in sel.select(timeout=0.5):
            what = key.data
            if what == "to_qemu":
                try:
                    pending = pending[os.write(to_qemu, pending):]
                except BlockingIOError:
                    continue
                except BrokenPipeError:  # QEMU is gone; its outputs end next
                    pending = b""
                if not pending:  # caught up: read the terminal again
                    sel.unregister(to_qemu)
                    if stdin_fd is not None:
                        sel.register(stdin_fd, selectors.EVENT_READ, "in")
                        reading = True
                continue
            try:
                data = os.read(key.fd, 65536)
            except OSError as e:  # a terminal that hung up reads EIO
                if e.errno != errno.EIO:
                    raise
                data = b""
            if what == "in":
                if not data and on_tty:  # the terminal hung up
                    kill("closed")
                    continue
                if not data:  # the end of input: the VM keeps running (module docstring)
                    stop_reading()
                    stdin_fd = None
                    continue
                cut = data.find(bytes([ESCAPE]))
                if not ended:
                    pending += data if cut < 0 else data[:cut]
                    if pending:
                        stop_reading()
                        sel.register(to_qemu, selectors.EVENT_WRITE, "to_qemu")
                if cut >= 0:
                    escape()
            elif not data:
                sel.unregister(key.fileobj)
                open_outputs -= 1
            elif what == "out":
                try:
                    _write_all(stdout_fd, data)
                except OSError as e:  # nobody reads the console any more
                    if e.errno not in (errno.EPIPE, errno.EIO):
                        raise
                    kill("closed")
            else:
                err_tail = (err_tail + data)[-_STDERR_KEEP:]
                if not killed:  # once killed, QEMU's "terminating on signal" is noise
                    with contextlib.suppress(OSError):
                        _write_all(stderr_fd, data)
    p.wait()
    if asking is not None:
        asking.join(timeout=10)
    return ended or "poweroff", killed, err_tail


def run(image: Path, *, ssh_port: int | None = None, memory: str | int = "1G", cpus: int = 2,
        snapshot: bool = False, accel_: str | None = None, stdin_fd: int | None = 0,
        stdout_fd: int = 1, stderr_fd: int = 2, ask_wait: float = ASK_WAIT,
        progress: Callable[[str], None] | None = None) -> Run:
    """Boot `image` with its console on stdin/stdout (see the module docstring) and
    return when QEMU is gone. OnixError, before QEMU starts, for an image that is not a
    GPT disk with an ESP, a busy --ssh-port, a missing QEMU or OVMF; after, when QEMU
    fails (its last stderr line in the message)."""
    say = progress or (lambda _msg: None)
    image = Path(image).absolute()
    check_image(image)
    if ssh_port is not None:
        check_port(ssh_port)
    mib = memory_mib(memory)
    if cpus < 1:
        raise OnixError(f"--cpus {cpus}: a machine needs at least one CPU", hint="give 1 or more")
    qemu.preflight()
    # the control socket (a short path: a Unix socket's is limited to 107 bytes) and,
    # with --snapshot, the throwaway NVRAM
    tmp = Path(tempfile.mkdtemp(prefix="onix-vm-"))
    control = tmp / "ctl"
    try:
        if snapshot:
            vars_fd = tmp / "vars.fd"
            mine = vars_for(image)
            shutil.copyfile(mine if mine.is_file() else qemu.OVMF_VARS, vars_fd)
        else:
            vars_fd = vars_for(image)
            if not vars_fd.is_file():
                try:
                    qemu.new_vars(vars_fd)
                except OSError as e:
                    raise OnixError(f"cannot make the machine's NVRAM: {e.strerror}",
                                    path=vars_fd, hint="run it where the image's directory is "
                                    "writable, or use --snapshot") from None
        a = accel_ or qemu.accel()
        argv = run_argv(image, vars_fd=vars_fd, ssh_port=ssh_port, memory=mib, cpus=cpus,
                        snapshot=snapshot, accel_=a, control=control)
        ssh = f"; ssh -p {ssh_port} USER@127.0.0.1" if ssh_port is not None else ""
        say(f"booting {image} ({a}, {mib} MiB, {cpus} CPU{'s' if cpus > 1 else ''}"
            f"{', snapshot' if snapshot else ''}{ssh}); Ctrl-] powers it off")
        start = time.monotonic()
        catch = (signal.SIGTERM, signal.SIGHUP)
        tty_in = stdin_fd is not None and os.isatty(stdin_fd)
        if not tty_in:
            catch += (signal.SIGINT,)
        p = qemu.spawn(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
        try:
            with _signals(catch), _raw(stdin_fd):
                try:
                    ended, killed, err_tail = _console(
                        p, stdin_fd=stdin_fd, stdout_fd=stdout_fd, stderr_fd=stderr_fd,
                        control=control, ask_wait=ask_wait)
                except _Stop as stop:
                    ended, killed, err_tail = signal.Signals(stop.signum).name, True, b""
        finally:
            qemu.reap(p)
            for f in (p.stdin, p.stdout, p.stderr):
                with contextlib.suppress(OSError):
                    f.close()  # type: ignore[union-attr]
        err = err_tail.decode(errors="replace").strip()
        if ended == "poweroff" and p.returncode != 0:
            last = err.splitlines()[-1] if err else "no message"
            raise OnixError(f"QEMU exited with status {p.returncode}: {last}", path=image,
                            hint="see QEMU's message above")
        return Run(image=image, vars=None if snapshot else vars_fd, accel=a, memory_mib=mib,
                   cpus=cpus, ssh_port=ssh_port, snapshot=snapshot, ended=ended,
                   killed=killed, status=p.returncode,
                   seconds=round(time.monotonic() - start, 3), argv=argv)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

