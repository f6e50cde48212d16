"""Nix test kit: a whole Nix plane (nix-daemon under s6) inside a scratch root, offline.

Nix's store directory is compiled in as /nix/store, so the plane has to see R/nix at /nix.
The host has no /nix and must not get one, so every NixPlane runs in a private mount and
PID namespace (`unshare --mount --pid --fork --kill-child`) that builds a small harness
root H on a tmpfs and chroots into it:

    H/usr            the host's /usr, bound read-only (nix, nix-daemon, s6, sh come from
                     the host's Debian packages: R/usr is a state tree without them)
    H/bin sbin lib lib64   as the host has them (symlinks into usr on merged-/usr Debian)
    H/etc            R/etc (seeded passwd/group/shadow, nix.conf, profile.d/nix.sh), rw
    H/nix            R/nix, rw: the Nix plane itself
    H/home           R/home, rw
    H/run            R/run, rw, emptied at every boot. Not a private tmpfs: R/run is the
                     machine's /run, so onix outside the namespace (--root R) sees what
                     the running system sees (the s6 scandir, supervise/ status files
                     and control fifos, which work across namespaces)
    H/tmp            a fresh tmpfs (1777)
    H/dev            the host's /dev (rbind); H/proc a new proc of the PID namespace
    H/var            on H's tmpfs: var/empty (the nixbld users' home), var/log (the
                     nix-daemon logger's; survives reboot(), not close()), var/tmp
    H/root           on H's tmpfs: root's HOME
    H/srv/onix-nix   onix/validate/fixtures/nix, read-only: the local "nixpkgs" flake and the
                     registry json that the test nix.conf names
    <repo>, <python> the repository and the Python installation, read-only at their own
                     paths, so that `plane.python(...)` runs onix inside the plane (a
                     checkout under /home gets its mount point made in R/home, and
                     removed again by close())

Nothing is added to R/etc: glibc finds its libraries without /etc/ld.so.cache (the
loader's built-in paths cover Debian's multiarch dirs), reads passwd/group with the
built-in `files` default when /etc/nsswitch.conf is missing, and the plane is offline,
so neither resolv.conf nor ssl certificates are needed. /sys is not mounted: nix 2.8
does not need it.

Inside, PID 1 is a small reaper and PID 2 a command server (both this file, run with
`--serve`) that executes what the host sends it over a pipe, one JSON line each way. When
the host closes the pipe (or dies), the server exits, PID 1 follows, and the kernel kills
everything left in the PID namespace; close() then checks that no process of ours
survived, from the host's /proc.

API (everything the tests use):

    NixPlane(root, *, fixtures=DATA) as plane     start the namespace (a "boot": R/run
                                                  is emptied), close it on exit
    plane.sh(cmd, *, user=None, env=None, check=True, timeout=60, input=None)
        -> CompletedProcess[str]                  /bin/sh -c cmd inside, as root or as a
                                                  user from R/etc/passwd (uid, gid and
                                                  supplementary groups; a clean env with
                                                  HOME, USER, XDG_* of that user)
    plane.run(argv, ...)                          the same without the shell
    plane.python(code, ...)                       this repo's Python -c code, inside
    plane.start_supervision() -> Report           s6-svscan on /run/service, then
                                                  onix.services.reconcile (from the host,
                                                  root=R): the live state's services, up
                                                  and ready
    plane.stop_supervision()                      s6-svscanctl -t (the supervisors stop
                                                  their services), wait for s6-svscan
    plane.reboot() -> [cmdline]                   stop, kill every process, empty /run,
                                                  start supervision again; returns what
                                                  had to be killed after the orderly stop
    plane.wait_ready(timeout=10, *, not_pid=None) -> pid of nix-daemon, up and ready
    plane.svstat(service="nix-daemon") -> dict    s6-svstat's fields
    plane.processes() -> list[dict]               every process in the namespace
    plane.host_pid, plane.pidns                   for leak checks, with
    pidns_members(pidns) -> [host pid]            (close() asserts it is empty)

    base_accounts(root, users=...)                root, nobody and test users (alice,
                                                  uid 1000) in R/etc, homes in R/home
    integration_stone(dest) -> Path               stones/onix-nix-integration packed as a
                                                  stone, the declared nix.conf with the
                                                  offline test settings appended
                                                  (onix/validate/fixtures/nix/nix-test.conf)

Debian packages used: nix-bin (nix, nix-daemon, nix-build), s6, util-linux (unshare),
and the host's coreutils/dash. Root is required (mount namespaces).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from onix.services.reconcile import Report

REPO = Path(__file__).resolve().parent.parent
# The checkout's copy, not importlib.resources: the plane's PID 1 runs this file without onix
# on its path, and the validation image ships the same fixtures (onix/validate/image.py).
DATA = REPO / "onix" / "validate" / "fixtures" / "nix"
INTEGRATION = REPO / "stones" / "onix-nix-integration"
FIXTURES_AT = "/srv/onix-nix"  # where DATA appears inside the plane
SCANDIR = "/run/service"
HARNESS_LOG = "/var/log/onix-harness"

ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
USER_PATH = "/usr/local/bin:/usr/bin:/bin"

# alice is the non-root test user (the name the brief and the docs use).
TEST_USERS = {"alice": 1000}


class HarnessError(AssertionError):
    """The namespace could not be set up, or a command failed (with its output)."""


def available() -> str | None:
    """None if a NixPlane can run here, else why not (for pytest.skip)."""
    if os.geteuid() != 0:
        return "needs root (mount and PID namespaces)"
    from onix.core import tools  # not at the top: the plane's PID 1 runs this file without onix

    for tool in ("unshare", "nix-daemon", "s6-svscan"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (Debian package {tools.package_of(tool)})"
    return None


# -- the machine side: accounts and the integration stone ------------------------------------


def base_accounts(root: Path, users: dict[str, int] = TEST_USERS) -> None:
    """What a base system brings: root, nobody and the test users, with homes in R/home.

    The nixbld group and users are not here: onix.nix.seed adds those.
    """
    etc = root / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    passwd = ["root:x:0:0:root:/root:/bin/sh",
              "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin"]
    group = ["root:x:0:", "nogroup:x:65534:"]
    shadow = ["root:*:19000:0:99999:7:::", "nobody:*:19000:0:99999:7:::"]
    for name, uid in users.items():
        passwd.append(f"{name}:x:{uid}:{uid}:{name}:/home/{name}:/bin/sh")
        group.append(f"{name}:x:{uid}:")
        shadow.append(f"{name}:!:19000:0:99999:7:::")
    for fname, lines, mode in (("passwd", passwd, 0o644), ("group", group, 0o644),
                               ("shadow", shadow, 0o640)):
        p = etc / fname
        have = p.read_text().splitlines() if p.exists() else []
        names = {ln.split(":")[0] for ln in have}
        p.write_text("\n".join(have + [ln for ln in lines if ln.split(":")[0] not in names])
                     + "\n")
        os.chmod(p, mode)
    for name, uid in users.items():
        home = root / "home" / name
        home.mkdir(parents=True, exist_ok=True)
        os.chown(home, uid, uid)
        os.chmod(home, 0o700)
    os.chmod(root / "home", 0o755)


def integration_stone(dest: Path, *, name: str = "onix-nix-integration",
                      version: str = "1.0", extra: dict[str, str] | None = None) -> Path:
    """stones/onix-nix-integration as a stone, with the offline test settings appended to
    its declared nix.conf, so that onix.nix.seed materialises them like any default.

    `extra` adds files (path under usr/ → text) to the stone.
    """
    from onix.machine.stone import StoneMeta, pack

    src = Path(tempfile.mkdtemp(prefix="src-", dir=dest))
    tree = src / "tree"
    shutil.copytree(INTEGRATION, tree, symlinks=True)
    conf = tree / "usr/share/factory/etc/nix/nix.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    declared = conf.read_text() if conf.exists() else ""
    conf.write_text(declared + (DATA / "nix-test.conf").read_text())
    for rel, text in (extra or {}).items():
        p = tree / "usr" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    out = dest / f"{name}-{version}.stone"
    pack(tree, out, StoneMeta(name=name, version=version, release=1,
                              summary="the Nix plane's machine-side seams (test build)"))
    shutil.rmtree(src)
    return out


# -- the host side --------------------------------------------------------------------------


class NixPlane:
    """A Nix plane for R, running in its own mount and PID namespace (see the module doc)."""

    def __init__(self, root: Path, *, fixtures: Path = DATA, start_timeout: float = 20):
        self.root = Path(root).resolve()
        self.fixtures = Path(fixtures).resolve()
        self.start_timeout = start_timeout
        self._proc: subprocess.Popen | None = None
        self._buf = b""
        self._tmp: Path | None = None
        self.host_pid: int | None = None  # PID 1 of the namespace, as the host sees it
        self.pidns: str | None = None
        self.supervised = False
        self._made: list[Path] = []  # mount points made in R/home (see _home_mountpoints)

    # lifecycle

    def __enter__(self) -> NixPlane:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> NixPlane:
        if self._proc is not None:
            raise HarnessError("this NixPlane is already running")
        why = available()
        if why:
            raise HarnessError(why)
        for d in ("etc", "nix", "home", "run"):
            p = self.root / d
            if p.is_symlink():
                raise HarnessError(f"{p} is a symlink; the harness binds real directories")
            p.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix="onix-nixkit-"))
        h = self._tmp / "h"
        h.mkdir()
        binds = _python_binds()
        self._home_mountpoints(binds)
        config = {"h": str(h), "root": str(self.root), "fixtures": str(self.fixtures),
                  "ro_binds": binds}
        self._errlog = open(self._tmp / "server.log", "w+b")  # noqa: SIM115
        self._proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--pid", "--fork",
             "--kill-child", "--", sys.executable, "-I", "-S", __file__, "--serve",
             json.dumps(config)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._errlog,
            close_fds=True)
        try:
            hello = self._recv(self.start_timeout)
            if not hello.get("ready"):
                raise HarnessError(f"the plane did not start: {hello.get('error')}")
            self.host_pid = _child_of(self._proc.pid)
            self.pidns = os.readlink(f"/proc/{self.host_pid}/ns/pid")
        except BaseException:
            self.close()
            raise
        return self

    def _home_mountpoints(self, binds: list[str]) -> None:
        """A checkout under /home (a CI runner's) is bound over an empty directory chain in
        R/home, since /home inside the plane is R/home; close() removes the chain."""
        for p in binds:
            if not p.startswith("/home/"):
                continue
            here = self.root / "home"
            for part in Path(p).relative_to("/home").parts:
                here = here / part
                if not here.exists():
                    here.mkdir()
                    self._made.append(here)

    def close(self) -> None:
        """Stop everything in the namespace and check that nothing of ours survived."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.poll() is None:
                with contextlib.suppress(OSError, HarnessError):
                    self._send(proc, {"op": "exit"})
                    self._recv(10, proc=proc)
                with contextlib.suppress(OSError):
                    proc.stdin.close()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()  # --kill-child: the kernel kills PID 1, then the namespace
                    proc.wait(10)
            proc.stdout.close()
            survivors = self._survivors()
            if survivors:
                for pid in survivors:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                raise HarnessError(f"processes survived the plane: {survivors}")
        finally:
            self._errlog.close()
            for d in reversed(self._made):
                with contextlib.suppress(OSError):
                    d.rmdir()
            if self._tmp is not None:
                h = self._tmp / "h"
                if h.is_dir() and not os.path.ismount(h) and not any(h.iterdir()):
                    shutil.rmtree(self._tmp, ignore_errors=True)
            self.supervised = False
            self._made = []

    def _survivors(self) -> list[int]:
        """Host PIDs of processes still in our PID namespace (should be none)."""
        if self.pidns is None:
            return []
        out: list[int] = []
        for _ in range(50):
            out = pidns_members(self.pidns)
            if not out:
                return []
            time.sleep(0.02)  # the kernel is still tearing the namespace down
        return out

    # the pipe

    def _send(self, proc: subprocess.Popen, msg: dict) -> None:
        proc.stdin.write(json.dumps(msg).encode() + b"\n")
        proc.stdin.flush()

    def _recv(self, timeout: float, *, proc: subprocess.Popen | None = None) -> dict:
        proc = proc or self._proc
        fd = proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise HarnessError(f"the plane's server did not answer within {timeout:.0f} s"
                                   f"{self._server_log()}")
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise HarnessError(f"the plane's server exited{self._server_log()}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def _server_log(self) -> str:
        try:
            self._errlog.flush()
            text = Path(self._errlog.name).read_text(errors="replace").strip()
        except OSError:
            return ""
        return f"; its stderr:\n{text[-3000:]}" if text else ""

    def _call(self, msg: dict, timeout: float) -> dict:
        if self._proc is None:
            raise HarnessError("the plane is not running")
        self._send(self._proc, msg)
        reply = self._recv(timeout + 15)
        if "error" in reply:
            raise HarnessError(f"plane: {msg.get('op')} failed: {reply['error']}")
        return reply

    # commands

    def run(self, argv: list[str], *, user: str | None = None, env: dict | None = None,
            check: bool = True, timeout: float = 60, input: str | None = None,
            cwd: str | None = None) -> subprocess.CompletedProcess:
        """Run argv inside the plane (as `user`, else root); text output, like subprocess."""
        reply = self._call({"op": "run", "argv": [str(a) for a in argv], "user": user,
                            "env": env or {}, "timeout": timeout, "input": input,
                            "cwd": cwd}, timeout)
        r = subprocess.CompletedProcess(argv, reply["rc"], reply["stdout"], reply["stderr"])
        if reply.get("timed_out"):
            raise HarnessError(f"{argv} (as {user or 'root'}) did not finish within "
                               f"{timeout:.0f} s:\n{r.stdout}\n{r.stderr}")
        if check and r.returncode != 0:
            raise HarnessError(f"{argv} (as {user or 'root'}) failed with exit status "
                               f"{r.returncode}:\n{r.stdout}\n{r.stderr}")
        return r

    def sh(self, cmd: str, **kw) -> subprocess.CompletedProcess:
        """/bin/sh -c cmd inside the plane."""
        return self.run(["/bin/sh", "-c", cmd], **kw)

    def python(self, code: str, **kw) -> subprocess.CompletedProcess:
        """This repository's Python, inside the plane (onix is importable)."""
        kw.setdefault("cwd", str(REPO))
        return self.run([sys.executable, "-c", code], **kw)

    def processes(self) -> list[dict]:
        return self._call({"op": "ps"}, 5)["ps"]

    # supervision

    def start_supervision(self, *, timeout: float = 10) -> Report:
        """s6-svscan on /run/service, then onix.services.reconcile for the live state.

        reconcile runs here, on the host, with root=R: the scan directory is R/run/service
        and s6's control and event fifos work across the namespace boundary, exactly as
        onix talks to s6 on a real machine. It starts every service in dependency order
        and waits until each is ready (nix-daemon: its data/check passed).
        """
        from onix.services import reconcile as services
        from onix.services.s6 import svscan_running

        if self.supervised:
            raise HarnessError("supervision is already running")
        scandir = self.root / SCANDIR.lstrip("/")
        scandir.mkdir(parents=True, exist_ok=True)
        self._call({"op": "spawn", "name": "s6-svscan", "argv": ["s6-svscan", SCANDIR]}, 5)
        self.supervised = True
        deadline = time.monotonic() + timeout
        while not svscan_running(scandir):
            if time.monotonic() > deadline:
                raise HarnessError(f"s6-svscan did not start on {SCANDIR}")
            time.sleep(0.01)
        usr = self.root / "usr"
        report = services.reconcile(root=self.root, usr=usr, timeout=timeout,
                                    state_id=int((usr / ".stateID").read_text()))
        if not report.ok:
            raise HarnessError(f"services did not come up: {report.failed}")
        return report

    def stop_supervision(self, *, timeout: float = 10) -> None:
        """s6-svscanctl -t (supervisors stop their services), and wait for s6-svscan
        (SIGKILL after `timeout`). reboot() then kills whatever else still runs."""
        if not self.supervised:
            return
        self.run(["s6-svscanctl", "-t", SCANDIR], check=False, timeout=5)
        self._call({"op": "reap", "name": "s6-svscan", "timeout": timeout}, timeout)
        self.supervised = False

    def reboot(self, *, timeout: float = 10) -> list[str]:
        """Stop the supervision tree, kill every process, empty /run, start again.

        Returns the command lines of the processes that were still running after the
        orderly stop and had to be killed (none, when s6 stopped everything itself).
        """
        self.stop_supervision(timeout=timeout)
        killed = self._call({"op": "killall"}, 10)["killed"]
        self._call({"op": "wipe_run"}, 10)
        self.start_supervision(timeout=timeout)
        return killed

    def svstat(self, service: str = "nix-daemon") -> dict:
        fields = ["up", "wantedup", "ready", "pid", "exitcode", "signal", "updownfor"]
        r = self.run(["s6-svstat", "-o", ",".join(fields), f"{SCANDIR}/{service}"],
                     check=False, timeout=5)
        if r.returncode != 0:
            return {"error": r.stderr.strip()}
        return dict(zip(fields, r.stdout.split(), strict=True))

    def wait_ready(self, timeout: float = 10, *, service: str = "nix-daemon",
                   not_pid: int | None = None) -> int:
        """Wait until s6 says the service is up and ready (by another pid than not_pid)."""
        deadline = time.monotonic() + timeout
        st: dict = {}
        while time.monotonic() < deadline:
            st = self.svstat(service)
            if st.get("up") == "true" and st.get("ready") == "true" \
                    and int(st["pid"]) != not_pid:
                return int(st["pid"])
            time.sleep(0.02)
        log = self.sh(f"tail -n 20 /var/log/{service}/current {HARNESS_LOG}/s6-svscan.log "
                      "2>&1", check=False).stdout
        raise HarnessError(f"{service} not ready within {timeout:.0f} s: {st}\n{log}")


def pidns_members(pidns: str) -> list[int]:
    """Host PIDs of every process in a PID namespace (`pid:[inode]`, from /proc/PID/ns/pid)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):  # gone, or not ours to inspect
                if os.readlink(f"/proc/{entry}/ns/pid") == pidns:
                    out.append(int(entry))
    return out


def _child_of(pid: int) -> int:
    """The one child of `pid` (unshare --fork's child: PID 1 of the namespace)."""
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    if len(kids) != 1:
        raise HarnessError(f"unshare ({pid}) has children {kids}, expected one")
    return int(kids[0])


def _python_binds() -> list[str]:
    """Paths that must appear inside the plane for plane.python(): the repo and Python.

    They keep their own paths (the venv's pyvenv.cfg and the editable install name
    them). /usr is there already; a path under /home needs a mount point inside R/home
    (see NixPlane._home_mountpoints); one under another directory the plane maps to the
    scratch root cannot be shown.
    """
    want = {str(REPO)}
    for p in (sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable))):
        want.add(os.path.realpath(p))
    out: list[str] = []
    for p in sorted(want, key=len):
        if p == "/usr" or p.startswith("/usr/") or any(p == q or p.startswith(q + "/")
                                                        for q in out):
            continue
        for taken in ("/etc", "/nix", "/run", "/dev", "/proc", FIXTURES_AT):
            if p == taken or p.startswith(taken + "/"):
                raise HarnessError(f"{p} is under {taken}, which the plane maps to the "
                                   "scratch root or its own files; move the checkout or the "
                                   "venv elsewhere")
        if p in ("/", "/home", "/tmp", "/var", "/root", "/srv"):
            raise HarnessError(f"{p} cannot be shown inside the plane (it has its own there)")
        out.append(p)
    return out


# -- the namespace side (python nixkit.py --serve CONFIG) --------------------------------------
# Runs as PID 1 of a new PID namespace, in a new mount namespace. Standard library only.

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT = 0x1, 0x2, 0x4, 0x20
MS_BIND, MS_REC = 0x1000, 0x4000
_libc = ctypes.CDLL(None, use_errno=True)


def _mount(src: str, dst: str, fstype: str | None = None, flags: int = 0,
           data: str | None = None) -> None:
    if _libc.mount(src.encode(), dst.encode(), fstype.encode() if fstype else None, flags,
                   data.encode() if data else None) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount {src} on {dst}: {os.strerror(e)}")


def _bind(src: str, dst: str, *, ro: bool = False, rec: bool = False) -> None:
    _mount(src, dst, None, MS_BIND | (MS_REC if rec else 0))
    if ro:
        _mount("none", dst, None, MS_REMOUNT | MS_BIND | MS_RDONLY)


def _build(cfg: dict) -> None:
    """Mount the harness root H (see the module docstring) and chroot into it."""
    h, r = cfg["h"], cfg["root"]
    _mount("tmpfs", h, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        host = f"/{name}"
        if os.path.islink(host):
            os.symlink(os.readlink(host), f"{h}/{name}")
        elif os.path.isdir(host):
            os.mkdir(f"{h}/{name}")
            _bind(host, f"{h}/{name}", ro=True, rec=True)
    for d, mode in (("usr", 0o755), ("etc", 0o755), ("nix", 0o755), ("home", 0o755),
                    ("run", 0o755), ("tmp", 0o1777), ("dev", 0o755), ("proc", 0o555),
                    ("var", 0o755), ("var/empty", 0o555), ("var/log", 0o755),
                    ("var/tmp", 0o1777), ("root", 0o700), ("srv", 0o755),
                    ("srv/onix-nix", 0o755), (HARNESS_LOG.lstrip("/"), 0o755)):
        os.mkdir(f"{h}/{d}", mode)
        os.chmod(f"{h}/{d}", mode)
    _bind("/usr", f"{h}/usr", ro=True, rec=True)
    _bind(f"{r}/etc", f"{h}/etc")
    _bind(f"{r}/nix", f"{h}/nix")
    _bind(f"{r}/home", f"{h}/home")
    _bind(f"{r}/run", f"{h}/run")
    _mount("tmpfs", f"{h}/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    _bind("/dev", f"{h}/dev", rec=True)
    _mount("proc", f"{h}/proc", "proc", MS_NOSUID | MS_NODEV)
    _bind(cfg["fixtures"], f"{h}{FIXTURES_AT}", ro=True)
    for p in cfg["ro_binds"]:  # the repo and Python, at their own paths
        os.makedirs(f"{h}{p}", exist_ok=True)
        _bind(p, f"{h}{p}", ro=True, rec=True)
    os.chroot(h)
    os.chdir("/")


def _wipe_run() -> None:
    """Empty /run (R/run), as a boot does."""
    for entry in os.listdir("/run"):
        p = f"/run/{entry}"
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        else:
            os.unlink(p)


def _passwd(user: str) -> tuple[int, int, str, list[int]]:
    """(uid, gid, home, supplementary gids) from the plane's /etc."""
    with open("/etc/passwd") as f:
        for line in f:
            fields = line.rstrip("\n").split(":")
            if len(fields) >= 7 and fields[0] == user:
                uid, gid, home = int(fields[2]), int(fields[3]), fields[5]
                break
        else:
            raise KeyError(f"no user {user} in /etc/passwd")
    groups = []
    with open("/etc/group") as f:
        for line in f:
            fields = line.rstrip("\n").split(":")
            if len(fields) >= 4 and user in fields[3].split(","):
                groups.append(int(fields[2]))
    return uid, gid, home, groups


def _env(user: str, home: str, extra: dict) -> dict:
    env = {"PATH": ROOT_PATH if user == "root" else USER_PATH, "HOME": home, "USER": user,
           "LOGNAME": user, "SHELL": "/bin/sh", "LANG": "C.UTF-8", "TERM": "dumb",
           "TZ": "UTC", "XDG_CONFIG_HOME": f"{home}/.config", "XDG_CACHE_HOME": f"{home}/.cache",
           "XDG_DATA_HOME": f"{home}/.local/share", "XDG_STATE_HOME": f"{home}/.local/state",
           "XDG_CONFIG_DIRS": "/etc/xdg", "XDG_DATA_DIRS": "/usr/local/share:/usr/share"}
    env.update(extra)
    return env


def _ps() -> list[dict]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                s = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        comm = s[s.index("(") + 1:s.rindex(")")]
        rest = s[s.rindex(")") + 2:].split()
        out.append({"pid": int(entry), "ppid": int(rest[1]), "state": rest[0], "comm": comm,
                    "start": int(rest[19]), "cmdline": cmd})
    return out


class _Server:
    def __init__(self) -> None:
        self.spawned: dict[str, subprocess.Popen] = {}

    def op_run(self, m: dict) -> dict:
        user = m.get("user") or "root"
        uid, gid, home, groups = _passwd(user)
        kw: dict = {}
        if uid != 0:
            kw = {"user": uid, "group": gid, "extra_groups": groups}
        p = subprocess.Popen(m["argv"], stdin=subprocess.PIPE if m.get("input") is not None
                             else subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=_env(user, home, m.get("env") or {}),
                             cwd=m.get("cwd") or (home if os.path.isdir(home) else "/"),
                             start_new_session=True, **kw)
        timed_out = False
        try:
            out, err = p.communicate((m.get("input") or "").encode() if m.get("input")
                                     is not None else None, timeout=m.get("timeout") or 60)
        except subprocess.TimeoutExpired:
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
        return {"rc": p.returncode, "stdout": out.decode(errors="replace"),
                "stderr": err.decode(errors="replace"), "timed_out": timed_out}

    def op_spawn(self, m: dict) -> dict:
        old = self.spawned.get(m["name"])
        if old is not None and old.poll() is None:
            raise RuntimeError(f"{m['name']} is already running (pid {old.pid})")
        log = open(f"{HARNESS_LOG}/{m['name']}.log", "ab")  # noqa: SIM115
        p = subprocess.Popen(m["argv"], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                             env=_env("root", "/root", m.get("env") or {}), cwd="/",
                             start_new_session=True)
        log.close()
        self.spawned[m["name"]] = p
        return {"pid": p.pid}

    def op_reap(self, m: dict) -> dict:
        p = self.spawned.pop(m["name"], None)
        if p is None:
            return {"rc": None}
        try:
            rc = p.wait(m.get("timeout") or 10)
        except subprocess.TimeoutExpired:
            p.kill()
            rc = p.wait()
        return {"rc": rc}

    def op_killall(self, m: dict) -> dict:
        """SIGKILL every process but PID 1 and this server; wait until they are gone."""
        me = os.getpid()
        killed = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            left = [p for p in _ps() if p["pid"] not in (1, me) and p["state"] != "Z"]
            if not left:
                break
            for p in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p["pid"], signal.SIGKILL)
                killed.append(p["cmdline"] or p["comm"])
            for p in list(self.spawned.values()):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(0.05)
            time.sleep(0.01)
        self.spawned = {k: p for k, p in self.spawned.items() if p.poll() is None}
        return {"killed": sorted(set(killed))}

    def op_wipe_run(self, m: dict) -> dict:
        _wipe_run()
        return {}

    def op_ps(self, m: dict) -> dict:
        return {"ps": _ps()}

    def loop(self) -> None:
        inp = os.fdopen(0, "rb", buffering=0)
        out = os.fdopen(1, "wb", buffering=0)
        out.write(json.dumps({"ready": True}).encode() + b"\n")
        buf = b""
        while True:
            chunk = inp.read(1 << 20)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                m = json.loads(line)
                if m["op"] == "exit":
                    self.op_killall(m)
                    out.write(b"{}\n")
                    return
                try:
                    reply = getattr(self, f"op_{m['op']}")(m)
                except Exception as e:
                    reply = {"error": f"{type(e).__name__}: {e}\n{traceback.format_exc()}"}
                out.write(json.dumps(reply).encode() + b"\n")
        self.op_killall({})


def _serve(cfg: dict) -> None:
    """PID 1: build H, then reap orphans while the command server (PID 2) runs."""
    try:
        if os.getpid() != 1:
            raise RuntimeError("--serve must run as PID 1 of a new PID namespace")
        _build(cfg)
        _wipe_run()  # a boot: /run starts empty
    except Exception as e:
        os.write(1, json.dumps({"ready": False, "error": f"{type(e).__name__}: {e}"}).encode()
                 + b"\n")
        sys.exit(1)
    server = os.fork()
    if server == 0:
        try:
            _Server().loop()
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    devnull = os.open("/dev/null", os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            os._exit(1)
        except InterruptedError:
            continue
        if pid == server:
            # Exiting PID 1 makes the kernel SIGKILL everything else in the namespace.
            os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


if __name__ == "__main__" and sys.argv[1:2] == ["--serve"]:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    _serve(json.loads(sys.argv[2]))
