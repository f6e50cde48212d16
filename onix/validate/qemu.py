"""One boot of a disk image in QEMU: q35, OVMF (UEFI), the serial console to a log file.

The firmware finds the ESP on the disk and starts its EFI/BOOT/BOOTX64.EFI (systemd-boot,
installed by onix's boot plane), which reads our BLS entries. Every boot is one QEMU
process (-no-reboot): a reboot or a power-off in the guest ends it, so the caller sees
each boot's log on its own and gives each boot its own timeout. The UEFI variables live
in a per-machine copy of OVMF_VARS (`new_vars`), kept across boots like NVRAM.

    accel() -> "kvm" | "tcg"
        kvm only where it works: vmx or svm in /proc/cpuinfo, a writable /dev/kvm, and
        not the nested paravirtual kvm_pvm (/sys/module/kvm_pvm), which fails here with
        MSR and emulation errors. Everything else boots with TCG. ONIX_QEMU_ACCEL=tcg|kvm
        overrides the detection.
    new_vars(path) -> Path
        a fresh copy of the OVMF variable store for a new machine.
    boot(disk, *, log, vars_fd, timeout=60, until=None, stop="poweroff", ...) -> Boot
        boots the disk once and returns when QEMU exits (the guest powered off or
        rebooted) or, with `until`, as soon as the serial log matches that regular
        expression. The guest is then stopped: stop="poweroff" (or "reboot") asks it
        over the control port to shut down cleanly (its disks are then readable with
        debugfs and mtools), stop="kill" ends QEMU at once. Raises VMError, carrying
        the tail of the serial log, when QEMU fails, the timeout passes, or the kernel
        panics.

    argv_for(disk, *, vars_fd, serial, reboot=False, snapshot=False, netdev=None, ...)
        the one QEMU command line, shared with `onix vm run` (onix/validate/vm.py):
        q35, OVMF, the disk on virtio, the serial port where `serial` says.
    spawn(argv, **popen) / reap(p) / terminate(p)
        start a QEMU (own session, parent-death signal, known to cancel()), stop it
        (SIGTERM, then SIGKILL) and forget it.
    ask(p, control, "poweroff"|"reboot", wait) -> bool
        ask the guest over the control port (below); True if QEMU exited within `wait`.

    preflight()
        OnixError (one line: the tool or file, and the package to install) unless
        qemu-system-x86_64 and OVMF's code and variable files are there.
    cancel() / CANCEL
        every boot in progress (any thread) stops its QEMU at once and raises
        VMError("cancelled"); `onix validate` calls it on Ctrl-C or SIGTERM. A new
        boot clears nothing: reset CANCEL before booting again.

No QEMU outlives its boot: `boot` stops it on every way out (timeout, panic, cancel,
an exception), and each QEMU gets a parent-death signal (PR_SET_PDEATHSIG, SIGKILL),
so a harness that is killed outright (SIGKILL) takes its VMs with it.

The control port: a second serial port (ttyS1 in the guest) on a Unix socket. The
ONIX guest (onix/validate/guest/control) reads lines from it: `poweroff` or `reboot`
runs its clean shutdown. The host writes to it only to stop a guest that stays up, and repeats
the line every 2 s until QEMU exits (a line sent before the guest listens is lost).

Debian packages: qemu-system-x86, ovmf.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onix.core import proc, tools
from onix.core.errors import OnixError

OVMF_CODE = tools.host_file("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = tools.host_file("/usr/share/OVMF/OVMF_VARS_4M.fd")
PANIC = r"Kernel panic - not syncing"
TAIL_LINES = 40
CANCEL = threading.Event()  # set: every boot stops its QEMU and raises VMError
_LIVE: set[subprocess.Popen] = set()  # QEMU processes running now (any thread)
_LIVE_LOCK = threading.Lock()


class VMError(OnixError):
    """A VM boot that did not finish: QEMU failed, timed out, or the kernel panicked.

    Not onix.boot.plane.BootError, which is onix failing to set up a machine's boot.

    `log` is the whole serial log so far, `tail` its last lines (also in the message)."""

    def __init__(self, message: str, *, log_path: Path, log: str, seconds: float):
        self.log_path = Path(log_path)
        self.log = log
        self.seconds = seconds
        self.tail = tail(log)
        super().__init__(f"{message}\n--- serial log tail ({log_path}) ---\n{self.tail}",
                         path=log_path)


@dataclass
class Boot:
    """One finished boot."""

    log: str  # the serial console, all of it
    log_path: Path
    seconds: float  # QEMU start to exit (or to the `until` match)
    ended: str  # "exit": the guest powered off or rebooted; "until": the marker was seen
    stopped: str = ""  # after "until": "poweroff"/"reboot" (clean) or "kill"
    match: re.Match | None = None  # the `until` match
    argv: list[str] = field(default_factory=list)

    def lines(self, prefix: str) -> list[str]:
        """The log's lines that start with prefix (the guest's markers), without it."""
        return [ln[len(prefix):].rstrip("\r") for ln in self.log.splitlines()
                if ln.startswith(prefix)]


def tail(log: str, n: int = TAIL_LINES) -> str:
    return "\n".join(log.splitlines()[-n:]) or "(no serial output)"


def accel() -> str:
    """kvm only where hardware virtualisation really works; tcg otherwise."""
    forced = os.environ.get("ONIX_QEMU_ACCEL")
    if forced in ("kvm", "tcg"):
        return forced
    if not os.access("/dev/kvm", os.R_OK | os.W_OK) or Path("/sys/module/kvm_pvm").exists():
        return "tcg"
    try:
        words = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "tcg"
    return "kvm" if {"vmx", "svm"} & words else "tcg"


def _pdeathsig():
    """A preexec_fn: the child gets SIGKILL when its parent (thread) dies."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def child() -> None:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    return child


_PDEATHSIG = _pdeathsig()


def preflight() -> None:
    """Fail with one clear line before anything is built when QEMU or OVMF is missing."""
    proc.which("qemu-system-x86_64")
    _need(OVMF_CODE)
    _need(OVMF_VARS)


def cancel() -> None:
    """Stop every boot in progress: each stops its QEMU and raises VMError."""
    CANCEL.set()
    with _LIVE_LOCK:
        live = list(_LIVE)
    for p in live:
        if p.poll() is None:
            p.kill()


def _need(path: Path) -> Path:
    if not path.is_file():
        raise OnixError("is missing", path=path,
                        hint="install the Debian package ovmf (./scripts/bootstrap does)")
    return path


def new_vars(path: Path) -> Path:
    """A new machine's UEFI variable store (a copy of OVMF's empty one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_need(OVMF_VARS), path)
    return path


def argv_for(disk: Path, *, vars_fd: Path, serial: str, memory: int = 512, smp: int = 1,
             accel_: str | None = None, reboot: bool = False, snapshot: bool = False,
             netdev: str | None = None, control: Path | None = None,
             extra: list[str] | None = None) -> list[str]:
    """The one QEMU command line of an ONIX machine (validation boots and `onix vm run`).

    q35 with OVMF's code (read-only) and `vars_fd` as its NVRAM, `disk` on virtio, no
    display or monitor, the first serial port on `serial` (a QEMU -serial spec:
    "file:LOG", "stdio"). reboot=False adds -no-reboot (a reboot ends QEMU, one boot per
    run); snapshot=True writes the disk's changes to a temporary file QEMU drops on exit.
    `netdev` is a -netdev spec with id=net0, attached as a virtio NIC; without one the
    machine has no network. `control` puts the second serial port (the guest's ttyS1)
    on that Unix socket.
    """
    qemu = proc.which("qemu-system-x86_64")
    a = accel_ or accel()
    return [qemu, "-accel", a, "-machine", "q35", *(["-cpu", "host"] if a == "kvm" else []),
            "-m", str(memory), "-smp", str(smp),
            "-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none",
            "-serial", serial, *([] if reboot else ["-no-reboot"]),
            "-drive", f"if=pflash,format=raw,readonly=on,file={_need(OVMF_CODE)}",
            "-drive", f"if=pflash,format=raw,file={vars_fd}",
            "-drive", f"file={disk},format=raw,if=virtio" + (",snapshot=on" if snapshot else ""),
            *(["-netdev", netdev, "-device", "virtio-net-pci,netdev=net0"] if netdev else []),
            *(["-chardev", f"socket,id=onixctl,path={control},server=on,wait=off",
               "-device", "isa-serial,chardev=onixctl,index=1"] if control else []),
            *(extra or [])]


def spawn(argv: list[str], **popen: Any) -> subprocess.Popen:
    """Start QEMU (argv from argv_for) in a session of its own (a Ctrl-C on the terminal
    is not its to see), with the parent-death signal, and count it as live (cancel()
    stops it) until `reap` is called."""
    p = subprocess.Popen(argv, start_new_session=True, preexec_fn=_PDEATHSIG, **popen)
    with _LIVE_LOCK:
        _LIVE.add(p)
    return p


def reap(p: subprocess.Popen) -> None:
    """Stop QEMU if it still runs (terminate) and forget it."""
    terminate(p)
    with _LIVE_LOCK:
        _LIVE.discard(p)


def _read(log: Path) -> str:
    try:
        return log.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def terminate(p: subprocess.Popen) -> None:
    """Stop QEMU: SIGTERM (it exits at once), SIGKILL if it does not."""
    if p.poll() is not None:
        return
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=5)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def ask(p: subprocess.Popen, control: Path, what: str, wait: float) -> bool:
    """Ask the guest over the control port to `what` (poweroff, reboot); True if QEMU
    then exits within `wait` seconds (-no-reboot: a reboot ends it too).

    The request is sent again every 2 s until QEMU exits: the guest prints its ready
    marker before it listens on the port, and a line sent before it opens ttyS1 is
    lost (the first boot of test_image ended in a kill that way)."""
    deadline = time.monotonic() + wait
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.settimeout(5)
            c.connect(str(control))
            while True:
                if CANCEL.is_set():
                    return False
                c.sendall(f"{what}\n".encode())
                try:
                    p.wait(timeout=max(0.1, min(2.0, deadline - time.monotonic())))
                    return True
                except subprocess.TimeoutExpired:
                    if time.monotonic() >= deadline:
                        return False
    except OSError:
        return p.poll() is not None  # the guest went down as the socket closed


def boot(disk: Path, *, log: Path, vars_fd: Path, timeout: float = 60,
         until: str | None = None, stop: str = "poweroff",
         fail: tuple[str, ...] = (PANIC,), memory: int = 512, smp: int = 1,
         accel_: str | None = None, extra: list[str] | None = None) -> Boot:
    """Boot `disk` once (see the module docstring); the log file is started afresh."""
    if stop not in ("poweroff", "reboot", "kill"):
        raise ValueError(f"stop={stop!r}: poweroff, reboot or kill")
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.unlink(missing_ok=True)
    # a short private path: a Unix socket's path is limited to 107 bytes
    ctl_dir = Path(tempfile.mkdtemp(prefix="onixq-"))
    control = ctl_dir / "ctl"
    try:
        return _boot(disk, log=log, vars_fd=vars_fd, timeout=timeout, until=until,
                     stop=stop, fail=fail, control=control,
                     argv=argv_for(Path(disk), vars_fd=Path(vars_fd), serial=f"file:{log}",
                                   memory=memory, smp=smp, accel_=accel_, extra=extra,
                                   control=control))
    finally:
        shutil.rmtree(ctl_dir, ignore_errors=True)


def _boot(disk: Path, *, log: Path, vars_fd: Path, timeout: float, until: str | None,
          stop: str, fail: tuple[str, ...], control: Path, argv: list[str]) -> Boot:
    want = re.compile(until, re.M) if until else None
    bad = [re.compile(f, re.M) for f in fail]
    err_path = log.with_name(log.name + ".qemu-stderr")
    start = time.monotonic()
    with open(err_path, "wb") as err:
        p = spawn(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    try:
        while True:
            if CANCEL.is_set():
                terminate(p)
                raise VMError(f"cancelled after {time.monotonic() - start:.1f} s",
                                log_path=log, log=_read(log),
                                seconds=time.monotonic() - start)
            done = p.poll() is not None
            text = _read(log)
            took = time.monotonic() - start
            m = want.search(text) if want else None
            if m:
                how = "kill"
                if stop != "kill" and ask(p, control, stop, wait=max(10.0, timeout - took)):
                    how = stop
                terminate(p)
                return Boot(log=_read(log), log_path=log, seconds=took, ended="until",
                            stopped=how, match=m, argv=argv)
            for b in bad:
                if b.search(text):
                    terminate(p)
                    raise VMError(f"the guest's kernel panicked after {took:.1f} s",
                                    log_path=log, log=text, seconds=took)
            if done:
                if p.returncode != 0:
                    msg = err_path.read_bytes().decode(errors="replace").strip()
                    raise VMError(f"QEMU exited with status {p.returncode}: {msg}",
                                    log_path=log, log=text, seconds=took)
                if want:
                    raise VMError(f"the guest stopped after {took:.1f} s without printing "
                                    f"{until!r}", log_path=log, log=text, seconds=took)
                return Boot(log=text, log_path=log, seconds=took, ended="exit", argv=argv)
            if took > timeout:
                terminate(p)
                text = _read(log)
                raise VMError(f"the boot did not finish within {timeout:g} s "
                                f"({'waiting for ' + repr(until) if until else 'no power-off'})",
                                log_path=log, log=text, seconds=took)
            time.sleep(0.1)
    finally:
        reap(p)
        if p.returncode == 0 or p.returncode == -signal.SIGTERM:
            err_path.unlink(missing_ok=True)
