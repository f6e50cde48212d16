# ruff: noqa: E501  (a plan step is one shell line, however long: onix/validate/guest/validate)
"""`onix validate`: the product's validation list, run in VMs that really reboot.

Each scenario is a named check with its own copy of one shared base image (built once by
image.build_image with the validation fixtures, cached by its inputs) and its own OVMF
variable store (its NVRAM). The harness writes the scenario's plan onto the disk
(readback.write_file, debugfs), then boots the disk up to `boots` times (qemu.boot, one
QEMU process a boot). In the guest, the onix-guest service blesses the boot (onix boot
mark-good), prints the ready marker and runs this boot's part of the plan
(onix/validate/guest/validate), which ends in a reboot or a power-off. After every boot
the harness reads the results back from the disk (readback.read_file) and checks what
the serial log says came up (the ready marker's state and entry). A scenario passes
when every boot came up as expected and every step passed.

The plan format (onix/validate/guest/validate reads it; docs/validation.md):

    boot N                this part runs in the N-th boot that reaches the runner
    step NAME COMMAND...  sh -c COMMAND as root; exit 0 is ok
    then reboot|poweroff|wait

`@FSTX1@` in a plan is replaced by the base image's fstx (state 1's) before it is written.

Scenarios (the issue's numbers): 1 nix-profile, 2 rollback, 3 prune-gc, 4 mesa-rollback,
5 boot-menu, 6 failed-boot. 4 needs both Mesa sets in the repository (their manifests
and stones: compose.mesa_sets; the image then carries them and the EGL app, see
compose.add_mesa); without them it is listed as `not built`, with the reason.

    scenarios(repo) -> list[Scenario]                every scenario, in table order
    run(names, *, repo, key, work, timeout, keep, jobs, progress) -> Report
    format_table(report) -> list[str]
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

from onix.core import proc
from onix.core.errors import OnixError
from onix.validate import compose, image, qemu, readback

BOOT_CONF = "timeout = 0\ntries = 1\n"  # one try: a boot that does not bless falls back
READY = re.compile(r"^onix-guest: ready (.*)$", re.M)
RESULTS = "/var/lib/onix-validate/results"
BATCH = "/usr/lib/onix/guest/onix-batch"
TAIL = 40

# -- what each boot should show ----------------------------------------------------------


@dataclass
class Expect:
    """What one boot (one QEMU run) must show."""

    state: int | None  # the ready marker's state; None: the boot must not get there
    log: tuple[str, ...] = ()  # regular expressions the serial log must match
    plan: bool = True  # the runner runs a part of the plan in this boot


@dataclass
class Scenario:
    name: str
    number: int  # the number
    title: str
    plan: str = ""
    boots: list[Expect] = field(default_factory=list)
    built: bool = True
    reason: str = ""  # why it is not built


@dataclass
class BootRecord:
    number: int
    seconds: float
    state: int | None
    entry: str
    runner_boot: int | None  # the runner's boot count, when it ran
    verdict: str  # the runner's last line: "ok 5/5 then reboot", or "-"
    problems: list[str] = field(default_factory=list)


@dataclass
class Outcome:
    name: str
    number: int
    title: str
    result: str  # "passed", "FAILED", "not built"
    boots: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    records: list[BootRecord] = field(default_factory=list)
    tail: str = ""  # the serial log tail of the boot that failed
    tail_path: str = ""  # that boot's serial log
    step_logs: dict[str, str] = field(default_factory=dict)  # failed steps' output
    reason: str = ""
    work: str = ""


@dataclass
class Report:
    image: dict
    outcomes: list[Outcome]
    seconds: float
    accel: str
    work: str

    @property
    def ok(self) -> bool:
        return all(o.result != "FAILED" for o in self.outcomes)

    def as_dict(self) -> dict:
        return {"image": self.image, "accel": self.accel, "seconds": round(self.seconds, 1),
                "work": self.work, "ok": self.ok, "error": None, "path": None, "hint": None,
                "scenarios": [asdict(o) for o in self.outcomes]}


def empty_report() -> dict:
    """The report's JSON when the run stops before any scenario ran (the CLI adds the
    error, its path and hint): the same keys, so scripts read one shape."""
    return {"image": {}, "accel": None, "seconds": 0, "work": None, "ok": False,
            "error": None, "path": None, "hint": None, "scenarios": []}


# -- the scenarios -------------------------------------------------------------------------

# Shell pieces the plans use (the guest's busybox sh).
STATE_IS = 'test "$(cat /usr/.stateID)" = {}'
ALICE = "su -l alice -c"  # a login shell: /etc/profile sources /etc/profile.d/nix.sh
NIX = "nix"  # the declared nix.conf enables nix-command and flakes
SAVED = "/var/lib/onix-validate"  # survives reboots (the root file system)


def _batch(out: str, *cmds: str) -> str:
    return f"{BATCH} {out} " + " ".join(f"'{c}'" for c in cmds)


def _boot_menu() -> Scenario:
    plan = f"""\
# 5. boot-menu: a one-time boot of an older entry, then the default again
boot 1
step state-1          {STATE_IS.format(1)}
step install-and-once {_batch('/run/b', 'install onix-test-hello', 'boot set-default 1 --once')}
step state-2-live     {STATE_IS.format(2)}
step oneshot-set      grep -q 'onix-@FSTX1@' /run/b/2.out && test -e /sys/firmware/efi/efivars/LoaderEntryOneShot-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f
then reboot
boot 2
step older-state-up   {STATE_IS.format(1)} && test ! -e /usr/share/onix-test/hello
step status           onix status > /run/status 2>&1; rc=$?; cat /run/status; test $rc = 0
step status-fstx      grep -qx 'active fstx: @FSTX1@' /run/status
step status-explains  grep -q 'this boot runs state 1 (chosen at boot (menu or one-time default)); the boot default is state 2' /run/status
then reboot
boot 3
step default-again    {STATE_IS.format(2)} && test -f /usr/share/onix-test/hello
step status           onix status > /run/status 2>&1; rc=$?; cat /run/status; test $rc = 0
step status-fstx      grep -q '^active fstx: 2-' /run/status && ! grep -q 'this boot runs' /run/status
then poweroff
"""
    return Scenario("boot-menu", 5, "one-time boot of an older entry, then the default",
                    plan, [Expect(1), Expect(1, (r"^onix: booting state 1",
                                                 r"^onix-guest: ready .* entry=onix-1-[0-9a-f]+\.conf ")),
                           Expect(2, (r"^onix-guest: ready .* entry=onix-2-[0-9a-f]+\+1\.conf ",))])


def _failed_boot() -> Scenario:
    plan = f"""\
# 6. failed-boot: a state that cannot boot falls back to the previous one on its own
boot 1
step blessed          ls /boot/loader/entries/ && test -f /boot/loader/entries/onix-@FSTX1@.conf
step install-broken   {_batch('/run/b', 'install onix-test-broken-init', 'boot status')}
step broken-default   {STATE_IS.format(2)} && ls /boot/loader/entries/onix-2-*+1.conf && grep -q 'init=/usr/lib/onix-test/no-such-init' /boot/loader/entries/onix-2-*+1.conf
then reboot
boot 2
step fell-back        {STATE_IS.format(1)} && test ! -e /usr/lib/kernel/cmdline.d/zz-onix-test-broken.conf
step status           onix status > /run/status 2>&1; rc=$?; cat /run/status; test $rc = 0
step status-fstx      grep -qx 'active fstx: @FSTX1@' /run/status
step status-explains  grep -q 'note: state 2 failed to boot (its entry onix-2-.*+0-1.conf ran out of tries.*systemd-boot fell back to state 1 on its own, and it is the boot default now' /run/status
step default-is-1     grep -q 'onix-@FSTX1@' /boot/loader/loader.conf
then poweroff
"""
    return Scenario("failed-boot", 6, "a state that cannot boot falls back on its own",
                    plan, [Expect(1), Expect(None, (r"FATAL: no /usr/lib/onix-test/no-such-init",),
                                                plan=False), Expect(1)])


def _rollback() -> Scenario:
    plan = f"""\
# 2. rollback: a new machine state, reboot into it, onix rollback, reboot into the old one
boot 1
step alice-install    {ALICE} '{NIX} profile install nixpkgs#ripgrep'
step profile-before   {ALICE} '{NIX} profile list' > {SAVED}/profile-before && cat {SAVED}/profile-before && grep -q ripgrep {SAVED}/profile-before
step install          onix install onix-test-hello
step state-2-live     {STATE_IS.format(2)}
then reboot
boot 2
step new-state-up     {STATE_IS.format(2)} && test -f /usr/share/onix-test/hello
step rollback         onix rollback > /run/rb 2>&1; rc=$?; cat /run/rb; test $rc = 0
step nix-untouched    grep -qx '/nix: untouched' /run/rb
then reboot
boot 3
step old-fstx-up      {STATE_IS.format(1)} && grep -qx 'ONIX_FSTX=@FSTX1@' /usr/lib/os-release && test ! -e /usr/share/onix-test/hello
step profile-same     {ALICE} '{NIX} profile list' > /run/pl && cat /run/pl && cmp /run/pl {SAVED}/profile-before
step store-verify     {NIX} store verify --all
step status           onix status > /run/status 2>&1; rc=$?; cat /run/status; test $rc = 0
step daemon-healthy   grep -qx 'nix daemon: healthy' /run/status && grep -qx 'active fstx: @FSTX1@' /run/status
then poweroff
"""
    return Scenario("rollback", 2, "new state, reboot, onix rollback, reboot: Nix untouched",
                    plan, [Expect(1), Expect(2), Expect(1)])


def _nix_profile() -> Scenario:
    plan = f"""\
# 1. nix-profile: a user's profile install stays on PATH across a reboot
boot 1
step alice-install    {ALICE} '{NIX} profile install nixpkgs#ripgrep'
step rg-on-path       {ALICE} 'command -v rg && rg --version' | tee /run/rg && grep -q 'onix test stand-in' /run/rg
then reboot
boot 2
step rg-after-reboot  {ALICE} 'command -v rg && rg --version' | tee /run/rg && grep -q '^/home/alice/.nix-profile/bin/rg$' /run/rg && grep -q 'onix test stand-in' /run/rg
step profile-lists-rg {ALICE} '{NIX} profile list' | grep -q ripgrep
then poweroff
"""
    return Scenario("nix-profile", 1, "nix profile install as a user survives a reboot",
                    plan, [Expect(1), Expect(1)])


def _prune_gc() -> Scenario:
    check = f"""\
step onix-verify      onix verify
step store-verify     {NIX} store verify --all
step profile-same     {ALICE} '{NIX} profile list' > /run/pl && cmp /run/pl {SAVED}/profile-before
step rg-runs          {ALICE} 'rg --version' | grep -q 'onix test stand-in'
step daemon-healthy   onix status | grep -qx 'nix daemon: healthy'"""
    plan = f"""\
# 3. prune-gc: onix prune and nix store gc back to back, both orders, each across a reboot
boot 1
step alice-install    {ALICE} '{NIX} profile install nixpkgs#ripgrep'
step profile-before   {ALICE} '{NIX} profile list' > {SAVED}/profile-before && grep -q ripgrep {SAVED}/profile-before
step states           {_batch('/run/b', 'install onix-test-hello', 'install onix-test-extra')}
step make-garbage     echo garbage > /run/garbage && nix-store --add /run/garbage
step prune-then-gc    onix prune --keep 1 > /run/p 2>&1 && {NIX} store gc > /run/gc 2>&1; rc=$?; cat /run/p /run/gc; test $rc = 0
step both-did-work    grep -qx '/nix: untouched' /run/p && grep -q '^removed states: 1, 2' /run/p && grep -q "deleting '/nix/store/[a-z0-9]*-garbage'" /run/gc
step pruned           {STATE_IS.format(3)} && onix state list
then reboot
boot 2
step state-3-up       {STATE_IS.format(3)}
{check}
step more-states      onix remove onix-test-extra && onix remove onix-test-hello
step make-garbage-2   echo garbage2 > /run/garbage && nix-store --add /run/garbage
step gc-then-prune    {NIX} store gc > /run/gc 2>&1 && onix prune --keep 1 > /run/p 2>&1; rc=$?; cat /run/gc /run/p; test $rc = 0
step both-did-work-2  grep -qx '/nix: untouched' /run/p && grep -q '^removed states: 3, 4' /run/p && grep -q "deleting '/nix/store/[a-z0-9]*-garbage'" /run/gc
then reboot
boot 3
step state-5-up       {STATE_IS.format(5)} && test ! -e /usr/share/onix-test/hello
{check}
then poweroff
"""
    return Scenario("prune-gc", 3, "onix prune + nix store gc back to back, both orders",
                    plan, [Expect(1), Expect(3), Expect(5)])


MESA_NOT_BUILT = ("the repository has no Mesa 22.3.6/25.0.7 stones (mesa-22.3.6-1 and "
                  "mesa-25.0.7-1 manifests and their stones: recipes/mesa.yaml and "
                  "recipes/mesa-25.yaml, built by ./scripts/stones)")
# the GUI app as alice: its store path from the image (compose.add_mesa), llvmpipe
APP = (f"{ALICE} 'LIBGL_ALWAYS_SOFTWARE=1 $(cat /{compose.MESA_AT}/app)/bin/egl-frame'")


def _app(name: str, version: str) -> str:
    out = f"{SAVED}/{name}"
    return (f"step {name:<16} {APP} > {out} 2>&1; rc=$?; cat {out}; test $rc = 0 && "
            f"grep -q '^version=.*Mesa {version}' {out} && grep -qx probe=ok {out} && "
            f"grep -q '^driver=/run/opengl-driver/lib/' {out}")


COHERENT = "onix status > /run/status 2>&1; cat /run/status; grep -qx 'opengl: coherent' /run/status"


def _mesa(repo: Path | None = None) -> Scenario:
    if repo is None or compose.mesa_sets(repo) is None:
        return Scenario("mesa-rollback", 4, "Mesa rollback with a Nix EGL app", built=False,
                        reason=MESA_NOT_BUILT)
    mesa = f"/{compose.MESA_AT}"
    plan = f"""\
# 4. mesa-rollback: Mesa 22.3.6, then 25.0.7, then onix rollback; the Nix app follows
boot 1
step install-22       onix install mesa=22.3.6 && onix info libdrm2 | grep -q '^libdrm2 2.4.114'
{_app('app-22', '22.3.6')}
step coherent-22      {COHERENT}
step add-mesa25       onix repo add mesa25 {mesa}/25 --key "$(cat {mesa}/key.pub)" --priority 10
step install-25       onix install mesa=25.0.7 && onix info libdrm2 | grep -q '^libdrm2 2.4.123'
{_app('app-25', '25.0.7')}
step coherent-25      {COHERENT}
step rollback         onix rollback > /run/rb 2>&1; rc=$?; cat /run/rb; test $rc = 0 && grep -qx '/nix: untouched' /run/rb
{_app('app-back', '22.3.6')}
step coherent-back    {COHERENT}
then reboot
boot 2
step state-2-up       {STATE_IS.format(2)}
{_app('app-boot2', '22.3.6')}
step coherent-boot2   {COHERENT}
step app-in-store     p=$(cat {mesa}/app) && nix-store --verify-path "$p" && nix-store -q --roots "$p" | tee /run/roots && grep -q '^/nix/var/nix/gcroots/onix-egl-frame ' /run/roots
step same-pixels      grep -h '^pixels=' {SAVED}/app-22 {SAVED}/app-25 {SAVED}/app-back {SAVED}/app-boot2 | sort -u | wc -l | grep -qx 1
then poweroff
"""
    return Scenario("mesa-rollback", 4, "Mesa 25.0.7, rollback to 22.3.6: the Nix app follows",
                    plan, [Expect(1), Expect(2)])


def scenarios(repo: Path | None = None) -> list[Scenario]:
    """Every scenario, in the order of the table (the issue's numbers). mesa-rollback is
    built only when `repo` holds both Mesa sets (compose.mesa_sets)."""
    return sorted([_nix_profile(), _rollback(), _prune_gc(), _mesa(repo), _boot_menu(),
                   _failed_boot()], key=lambda s: s.number)


def select(names: list[str] | None, repo: Path | None = None) -> list[Scenario]:
    allof = scenarios(repo)
    if not names:
        return allof
    by = {s.name: s for s in allof} | {str(s.number): s for s in allof}
    unknown = [n for n in names if n not in by]
    if unknown:
        raise OnixError(f"no scenario {', '.join(unknown)}",
                        hint="scenarios: " + ", ".join(s.name for s in allof))
    picked = {by[n].name: by[n] for n in names}
    return [s for s in allof if s.name in picked]


# -- running ---------------------------------------------------------------------------------


def _ready(log: str) -> tuple[int | None, str]:
    m = list(READY.finditer(log))
    if not m:
        return None, "-"
    words = dict(w.split("=", 1) for w in m[-1].group(1).split() if "=" in w)
    st = words.get("state", "")
    return (int(st) if st.isdigit() else None), words.get("entry", "-")


def _runner_boot(disk: Path) -> int | None:
    try:
        n = readback.read_file(disk, "/var/lib/onix-validate/boot").decode().strip()
    except FileNotFoundError:
        return None
    return int(n) if n.isdigit() else None


def _results(disk: Path, n: int) -> tuple[list[list[str]], str]:
    try:
        lines = readback.read_file(disk, f"{RESULTS}/{n}").decode(errors="replace").splitlines()
    except FileNotFoundError:
        return [], ""
    steps = [ln.split() for ln in lines if ln.startswith("step ")]
    last = next((ln for ln in reversed(lines) if ln.startswith("boot ")), "")
    return steps, last


def run_one(sc: Scenario, *, base: Path, fstx1: str, work: Path, timeout: float,
            say: Callable[[str], None]) -> Outcome:
    out = Outcome(sc.name, sc.number, sc.title, "FAILED", work=str(work))
    if not sc.built:
        out.result, out.reason = "not built", sc.reason
        return out
    t0 = time.monotonic()
    work.mkdir(parents=True, exist_ok=True)
    disk = work / "disk.img"
    proc.run(["cp", "--sparse=always", "--reflink=auto", base, disk], timeout=600)
    vars_fd = qemu.new_vars(work / "OVMF_VARS.fd")
    readback.write_file(disk, "/var/lib/onix-validate/plan",
                     sc.plan.replace("@FSTX1@", fstx1).encode())
    seen_runner = 0
    for i, want in enumerate(sc.boots, 1):
        log_path = work / f"boot{i}.log"
        try:
            b = qemu.boot(disk, log=log_path, vars_fd=vars_fd, timeout=timeout,
                          fail=(qemu.PANIC,) if want.state is not None else ())
            text, secs = b.log, b.seconds
        except qemu.VMError as e:
            out.boots = i
            out.problems.append(f"boot {i}: {str(e).splitlines()[0]}")
            out.tail, out.tail_path = e.tail, str(log_path)
            break
        out.boots = i
        readback.replay_journal(disk)  # a boot that did not shut down cleanly left one
        state, entry = _ready(text)
        rb = _runner_boot(disk)
        rec = BootRecord(i, round(secs, 1), state, entry, rb, "-")
        if want.state is None and state is not None:
            rec.problems.append(f"came up as state {state}, but this boot must fail")
        elif want.state is not None and state != want.state:
            rec.problems.append(f"came up as state {state if state is not None else 'none'} "
                                f"(no ready marker)" if state is None else
                                f"came up as state {state}, want state {want.state}")
        for pat in want.log:
            if not re.search(pat, text, re.M):
                rec.problems.append(f"serial log lacks {pat!r}")
        if want.plan:
            if rb is None or rb != seen_runner + 1:
                rec.problems.append(f"the plan's runner did not run (its boot count is {rb})")
            else:
                seen_runner = rb
                steps, last = _results(disk, rb)
                rec.verdict = " ".join(last.split()[2:]) or "(no verdict: the runner stopped)"
                for s in steps:
                    if len(s) >= 3 and s[2] != "ok":
                        rec.problems.append(f"step {s[1]} failed (exit {s[3]})")
                        try:
                            log = readback.read_file(disk, f"{RESULTS}/{rb}.d/{s[1]}.log")
                            out.step_logs[f"boot {i} {s[1]}"] = "\n".join(
                                log.decode(errors="replace").splitlines()[-15:])
                        except FileNotFoundError:
                            pass
                if not last.startswith(f"boot {rb} ok"):
                    rec.problems.append(f"runner boot {rb}: {last or 'no verdict'}")
        elif rb != seen_runner:
            rec.problems.append(f"the runner ran in a boot that must not get there (count {rb})")
        out.records.append(rec)
        say(f"{sc.name}: boot {i} state {state if state is not None else '-'} "
            f"({rec.seconds:.0f} s) {rec.verdict}" + (" FAILED" if rec.problems else ""))
        if rec.problems:
            out.problems += [f"boot {i}: {p}" for p in rec.problems]
            out.tail, out.tail_path = qemu.tail(text, TAIL), str(log_path)
            break
    out.seconds = round(time.monotonic() - t0, 1)
    if not out.problems and out.boots == len(sc.boots):
        out.result = "passed"
    return out


def new_run_dir(work: Path) -> Path:
    """A run's own directory under work: run-<date>-<random>, never shared with another
    run started in the same second (concurrent `onix validate` runs)."""
    work.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=time.strftime("run-%Y%m%d-%H%M%S-"), dir=work))


# what a failed scenario keeps without --keep: its logs, not its disk (GiBs) or NVRAM
BULKY = ("disk.img", "OVMF_VARS.fd")


def run(names: list[str] | None = None, *, repo: Path | None = None, key: Path | None = None,
        work: Path | None = None, timeout: float = 300, keep: bool = False, jobs: int = 2,
        progress: Callable[[str], None] | None = None) -> Report:
    """Run the scenarios. On any way out (an error, Ctrl-C) every QEMU is stopped
    (qemu.cancel) and, without keep, the base image and the disks are removed."""
    say = progress or (lambda _m: None)
    t0 = time.monotonic()
    # the working directory's, like `onix build -o stones`: an installed onix has no checkout
    repo = Path(repo or Path("stones").absolute())
    chosen = select(names, repo)
    key = Path(key or Path(".cache/keys/local.pub").absolute())
    work = Path(work or image.default_work().parent / "validate")
    todo = [s for s in chosen if s.built]
    if todo:  # one clear line before anything is built or booted
        qemu.preflight()
        image.check_repo(repo, key)
    qemu.CANCEL.clear()
    run_dir = new_run_dir(work)
    img: dict = {}
    base = run_dir / "base.img"
    results: dict[str, Outcome] = {}
    finished = False
    try:
        if todo:
            say("building the base image (cached by its inputs)")
            r = image.build_image(out=base, repo=repo, key=key, boot_conf=BOOT_CONF,
                                  fixtures=True, progress=say)
            img = {"key": r.key, "state": r.state, "fstx": r.fstx, "cached": r.cached,
                   "seconds": r.seconds}
            say(f"base image {r.key}: state {r.state} fstx {r.fstx}"
                + (" (cached)" if r.cached else ""))

        def one(sc: Scenario) -> Outcome:
            say(f"{sc.name}: starting ({len(sc.boots)} boots)")
            try:
                o = run_one(sc, base=base, fstx1=img["fstx"], work=run_dir / sc.name,
                            timeout=timeout, say=say)
            except OnixError as e:  # the harness itself failed (a disk it could not read...)
                o = Outcome(sc.name, sc.number, sc.title, "FAILED", problems=[e.line()],
                            work=str(run_dir / sc.name))
            say(f"{sc.name}: {o.result} ({o.boots} boots, {o.seconds:.0f} s)")
            return o

        pool = ThreadPoolExecutor(max_workers=max(1, jobs))
        try:
            futs = [pool.submit(one, sc) for sc in todo]
            while not all(f.done() for f in futs):  # short waits: Ctrl-C gets through
                wait(futs, timeout=0.5)
            for f in futs:
                o = f.result()
                results[o.name] = o
        except BaseException:  # Ctrl-C, SIGTERM (as KeyboardInterrupt), a bug
            qemu.cancel()  # every running boot kills its QEMU and returns
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        finished = True
    finally:
        base.unlink(missing_ok=True)
        if not keep:
            for d in run_dir.iterdir() if run_dir.is_dir() else ():
                for f in BULKY:
                    (d / f).unlink(missing_ok=True)
            if not finished and not any(run_dir.glob("*/boot*.log")):
                shutil.rmtree(run_dir, ignore_errors=True)
    outcomes = [results.get(s.name) or Outcome(s.name, s.number, s.title, "not built",
                                               reason=s.reason) for s in chosen]
    if not keep:
        for o in outcomes:
            if o.result == "passed" and o.work:
                shutil.rmtree(o.work, ignore_errors=True)
                o.work = ""
        if all(o.result != "FAILED" for o in outcomes):
            shutil.rmtree(run_dir, ignore_errors=True)
    return Report(image=img, outcomes=outcomes, seconds=time.monotonic() - t0,
                  accel=qemu.accel(), work=str(run_dir))


def format_table(rep: Report) -> list[str]:
    rows = [("#", "scenario", "boots", "result", "time")]
    for o in rep.outcomes:
        rows.append((str(o.number), o.name, str(o.boots) if o.result != "not built" else "-",
                     o.result, f"{o.seconds:.0f} s" if o.result != "not built" else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"total {rep.seconds:.0f} s ({rep.accel})")
    return lines


def format_details(rep: Report) -> list[str]:
    """Why each scenario that is not `passed` is not: problems, step output, serial tail."""
    lines: list[str] = []
    for o in rep.outcomes:
        if o.result == "not built":
            lines.append(f"{o.name}: not built: {o.reason}")
        elif o.result == "FAILED":
            lines.append(f"{o.name}: FAILED")
            lines += [f"  {p}" for p in o.problems]
            for k, v in o.step_logs.items():
                lines.append(f"  --- {k} output ---")
                lines += [f"  | {ln}" for ln in v.splitlines()]
            if o.tail:
                lines.append(f"  --- serial log tail ({o.tail_path or o.work}) ---")
                lines += [f"  | {ln}" for ln in o.tail.splitlines()]
    return lines
