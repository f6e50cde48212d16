"""`onix validate` through the real CLI: every implemented scenario boots and passes.

The scenarios (onix/validate/scenarios.py, docs/validation.md) boot a copy of the
validation image in QEMU under OVMF with systemd-boot, several times each, and read the
results back from the disk. This test runs the whole suite once (two VMs at a time,
about 5 minutes under TCG on 2 cores), then checks the table: every scenario is there,
the implemented ones passed with the boots they need. Scenario 4 (mesa-rollback) must
pass when the repository holds both Mesa sets (recipes/mesa.yaml, recipes/mesa-25.yaml:
their manifests and stones); without them it is listed as not built, with its reason,
and never as passed.

ONIX_VALIDATE_REPO and ONIX_VALIDATE_KEY run the suite against another signed repository
than stones/ (e.g. one that adds the Mesa stones).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from onix.core.errors import OnixError
from onix.validate import compose, image, qemu
from onix.validate import scenarios as validate

REPO = Path(__file__).resolve().parents[2]
STONES = Path(os.environ.get("ONIX_VALIDATE_REPO") or REPO / "stones")
PUB = Path(os.environ.get("ONIX_VALIDATE_KEY") or REPO / ".cache" / "keys" / "local.pub")
NEEDED = {*image.DEFAULT_STONES, "onix", "python"}


def _skip_reason() -> str | None:
    if not (STONES / "index.json.sig").is_file() or not PUB.is_file():
        return "stones/ is not built: run ./scripts/stones (just stones) first"
    try:
        names = {s.get("name") for s in json.loads((STONES / "index.json").read_text())["stones"]}
    except (OSError, ValueError, KeyError):
        return "stones/index.json is unreadable: run ./scripts/stones"
    missing = NEEDED - names
    if missing:
        return f"stones/ is not built completely (no {', '.join(sorted(missing))}): " \
               "run ./scripts/stones"
    for p in (qemu.OVMF_CODE, qemu.OVMF_VARS):
        if not p.is_file():
            return f"{p} is missing: run ./scripts/bootstrap (ovmf)"
    return None


def test_scenarios_are_selected_by_name_or_number() -> None:
    names = [s.name for s in validate.scenarios()]
    assert names == ["nix-profile", "rollback", "prune-gc", "mesa-rollback", "boot-menu",
                     "failed-boot"]
    assert [s.name for s in validate.select(["6", "rollback"])] == ["rollback", "failed-boot"]
    with pytest.raises(OnixError, match="no scenario nope"):
        validate.select(["nope"])
    mesa = validate.select(["4"])[0]
    assert not mesa.built and "Mesa" in mesa.reason
    for sc in validate.scenarios():
        if sc.built:  # every boot that runs the plan has a `boot N` part, and no more
            parts = [ln.split()[1] for ln in sc.plan.splitlines() if ln.startswith("boot ")]
            assert parts == [str(i + 1) for i in range(sum(e.plan for e in sc.boots))], sc.name


def test_a_failure_prints_the_steps_output_and_the_serial_tail() -> None:
    bad = validate.Outcome("rollback", 2, "t", "FAILED", boots=2, seconds=61.0,
                           problems=["boot 2: step nix-untouched failed (exit 1)"],
                           step_logs={"boot 2 nix-untouched": "/nix: changed"},
                           tail="onix-guest: ready fstx=2-ab state=2", tail_path="/w/boot2.log")
    rep = validate.Report(image={}, outcomes=[bad, validate.Outcome(
        "mesa-rollback", 4, "t", "not built", reason="no Mesa stones")], seconds=62.0,
        accel="tcg", work="/w")
    table = validate.format_table(rep)
    assert table[0].split() == ["#", "scenario", "boots", "result", "time"]
    assert table[2].split() == ["2", "rollback", "2", "FAILED", "61", "s"]
    assert table[3].split() == ["4", "mesa-rollback", "-", "not", "built", "-"]
    details = "\n".join(validate.format_details(rep))
    assert "step nix-untouched failed" in details and "| /nix: changed" in details
    assert "serial log tail (/w/boot2.log)" in details and "| onix-guest: ready" in details
    assert "mesa-rollback: not built: no Mesa stones" in details
    assert not rep.ok


@pytest.mark.slow
def test_onix_validate_runs_every_scenario(tmp_path: Path) -> None:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    env = {k: v for k, v in os.environ.items() if k != "ONIX_FAULT"}
    r = subprocess.run([sys.executable, "-m", "onix", "validate", "--work", str(tmp_path),
                        "--repo", str(STONES), "--key", str(PUB), "--json"],
                       capture_output=True, text=True, cwd=REPO, env=env, timeout=1500)
    assert r.stdout.strip(), r.stderr
    rep = json.loads(r.stdout)
    assert rep["error"] is None, f"onix validate stopped before booting anything: " \
        f"{rep['error']} (path {rep['path']}; {rep['hint']})"
    by = {s["name"]: s for s in rep["scenarios"]}
    print("\n" + "\n".join(f"{s['number']} {s['name']}: {s['result']}, {s['boots']} boots, "
                           f"{s['seconds']} s" for s in rep["scenarios"]))
    print(f"total {rep['seconds']} s ({rep['accel']})")
    want = {s.name: s for s in validate.scenarios(STONES)}
    assert set(by) == set(want)  # the table has every scenario
    for name, sc in want.items():
        got = by[name]
        if sc.built:
            assert got["result"] == "passed", json.dumps(got, indent=1)[-6000:]
            assert got["boots"] == len(sc.boots), got
            assert not got["problems"], got["problems"]
        else:
            assert got["result"] == "not built" and got["reason"], got
    mesa = by["mesa-rollback"]
    if compose.mesa_sets(STONES) is not None:
        assert mesa["result"] == "passed" and mesa["boots"] == 2, mesa
    else:
        assert mesa["result"] == "not built" and "Mesa" in mesa["reason"], mesa
    assert rep["ok"] and r.returncode == 0, r.stderr
    # a passing run cleans up after itself (no --keep)
    assert not any(tmp_path.glob("run-*/*/disk.img"))

    # the human table of the same code: every scenario on a line of its own
    table = validate.format_table(validate.Report(
        image=rep["image"], accel=rep["accel"], seconds=rep["seconds"], work=rep["work"],
        outcomes=[validate.Outcome(**{k: v for k, v in s.items() if k != "records"})
                  for s in rep["scenarios"]]))
    for name in want:
        assert any(f" {name} " in f" {line} " for line in table), table


# -- the harness's robustness (fast: no VM; a fake qemu-system-x86_64 where one runs) ----

FAKE_QEMU = """#!/bin/sh
# a QEMU that prints a firmware line on its serial file and then hangs
while [ $# -gt 0 ]; do case $1 in -serial) log=${2#file:}; shift ;; esac; shift; done
echo "fake firmware: hanging now" >> "$log"
echo $$ >> "$log.pids"
exec sleep 1000
"""


def _fake_qemu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    q = bin_ / "qemu-system-x86_64"
    q.write_text(FAKE_QEMU)
    q.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_}:/usr/bin:/bin")
    return bin_


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _pids(log: Path) -> list[int]:
    f = log.with_name(log.name + ".pids")
    return [int(x) for x in f.read_text().split()] if f.exists() else []


def _needs_ovmf() -> None:
    for p in (qemu.OVMF_CODE, qemu.OVMF_VARS):
        if not p.is_file():
            pytest.skip(f"{p} is missing: run ./scripts/bootstrap (ovmf)")


def test_run_dirs_of_concurrent_runs_never_collide(tmp_path: Path) -> None:
    # two runs started in the same second used one run-<date> directory (base.img too)
    dirs = {validate.new_run_dir(tmp_path) for _ in range(5)}
    assert len(dirs) == 5 and all(d.is_dir() and d.parent == tmp_path for d in dirs)


def test_a_hanging_boot_is_killed_and_reports_the_serial_tail(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _needs_ovmf()
    _fake_qemu(tmp_path, monkeypatch)
    log = tmp_path / "boot1.log"
    with pytest.raises(qemu.VMError) as e:
        qemu.boot(tmp_path / "disk.img", log=log, vars_fd=tmp_path / "vars", timeout=1.5)
    assert "did not finish within 1.5 s" in str(e.value)
    assert "fake firmware: hanging now" in e.value.tail
    pids = _pids(log)
    assert pids and not any(_alive(p) for p in pids)


def test_cancel_stops_every_boot_in_progress(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    _needs_ovmf()
    _fake_qemu(tmp_path, monkeypatch)
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            qemu.boot(tmp_path / "disk.img", log=tmp_path / f"b{i}.log",
                      vars_fd=tmp_path / "vars", timeout=120)
        except qemu.VMError as e:
            errors.append(e)

    qemu.CANCEL.clear()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(
                _pids(tmp_path / f"b{i}.log") for i in range(2)):
            time.sleep(0.05)
        qemu.cancel()
        for t in threads:
            t.join(timeout=10)
    finally:
        qemu.CANCEL.clear()
    assert len(errors) == 2 and all("cancelled" in str(e) for e in errors)
    pids = [p for i in range(2) for p in _pids(tmp_path / f"b{i}.log")]
    assert len(pids) == 2 and not any(_alive(p) for p in pids)


def _fake_repo(tmp_path: Path) -> tuple[Path, Path]:
    repo = tmp_path / "stones"
    repo.mkdir()
    (repo / "index.json").write_text('{"stones": []}')
    (repo / "index.json.sig").write_text("sig")
    key = tmp_path / "local.pub"
    key.write_text("key")
    return repo, key


def test_ctrl_c_stops_the_vms_and_leaves_no_disks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import signal
    import threading

    _needs_ovmf()
    _fake_qemu(tmp_path, monkeypatch)
    repo, key = _fake_repo(tmp_path)
    work = tmp_path / "work"
    logs: list[Path] = []

    def fake_build(*, out: Path, **_kw: object) -> object:
        Path(out).write_bytes(b"base")
        return type("R", (), {"key": "k", "state": 1, "fstx": "1-ab", "cached": True,
                              "seconds": {}})()

    def fake_run_one(sc: validate.Scenario, *, work: Path, **_kw: object) -> validate.Outcome:
        work.mkdir(parents=True)
        (work / "disk.img").write_bytes(b"disk")
        logs.append(work / "boot1.log")
        qemu.boot(work / "disk.img", log=work / "boot1.log", vars_fd=work / "vars",
                  timeout=120)
        raise AssertionError("the boot was not stopped")

    monkeypatch.setattr(validate.image, "build_image", fake_build)
    monkeypatch.setattr(validate, "run_one", fake_run_one)
    threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGINT)).start()  # Ctrl-C
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        validate.run(["rollback", "boot-menu", "failed-boot"], repo=repo, key=key,
                     work=work, jobs=2)
    assert time.monotonic() - t0 < 15
    pids = [p for log in logs for p in _pids(log)]
    assert len(pids) == 2 and not any(_alive(p) for p in pids)  # the third never started
    assert not list(work.rglob("*.img"))  # no base image, no scenario disk
    assert list(work.rglob("boot1.log"))  # the logs stay
    qemu.CANCEL.clear()


def test_missing_tools_and_inputs_are_one_line_before_anything_is_built(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_build(**_kw: object) -> None:
        raise AssertionError("built an image before checking the tools")

    monkeypatch.setattr(validate.image, "build_image", no_build)
    repo, key = _fake_repo(tmp_path)
    # QEMU missing
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(OnixError) as e:
        validate.run(["rollback"], repo=repo, key=key, work=tmp_path / "w")
    assert e.value.line() == ("qemu-system-x86_64 is not installed; install the Debian package "
                              "qemu-system-x86 (./scripts/bootstrap does)")
    # OVMF missing
    _fake_qemu(tmp_path, monkeypatch)
    monkeypatch.setattr(qemu, "OVMF_CODE", tmp_path / "OVMF_CODE_4M.fd")
    with pytest.raises(OnixError) as e:
        validate.run(["rollback"], repo=repo, key=key, work=tmp_path / "w")
    assert e.value.line().startswith(f"{tmp_path / 'OVMF_CODE_4M.fd'}: is missing; ")
    assert "ovmf" in e.value.line()
    monkeypatch.undo()
    monkeypatch.setattr(validate.image, "build_image", no_build)
    _needs_ovmf()
    (tmp_path / "q").mkdir()
    _fake_qemu(tmp_path / "q", monkeypatch)
    # a stones dir without an index, and a missing key
    empty = tmp_path / "nostones"
    empty.mkdir()
    with pytest.raises(OnixError) as e:
        validate.run(["rollback"], repo=empty, key=key, work=tmp_path / "w")
    assert e.value.line() == (f"{empty}: no index.json: not a signed onix repository; "
                              "build it with ./scripts/stones (just stones)")
    with pytest.raises(OnixError) as e:
        validate.run(["rollback"], repo=repo, key=tmp_path / "nokey.pub", work=tmp_path / "w")
    assert e.value.line().startswith(f"{tmp_path / 'nokey.pub'}: no such public key; ")
    assert not list((tmp_path / "w").glob("run-*"))  # no run directory left behind


def test_the_cli_says_one_line_for_a_stones_dir_without_index(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "onix", "validate", "rollback", "--repo",
                        str(tmp_path), "--work", str(tmp_path / "w"), "--json"],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"error: {tmp_path}: no index.json: not a signed onix repository; "
        "build it with ./scripts/stones (just stones)"]
    rep = json.loads(r.stdout)
    assert rep["path"] == str(tmp_path) and rep["error"].startswith("no index.json")
    assert rep["scenarios"] == [] and rep["ok"] is False


def test_a_failed_preflight_still_prints_the_reports_shape(tmp_path: Path) -> None:
    """No QEMU on PATH: one line naming it and its package, and JSON a script can read."""
    env = {**os.environ, "PATH": str(tmp_path / "empty")}
    r = subprocess.run([sys.executable, "-m", "onix", "validate", "rollback", "--repo",
                        str(tmp_path), "--work", str(tmp_path / "w"), "--json"],
                       capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("error: qemu-system-x86_64 is not installed"), r.stderr
    rep = json.loads(r.stdout)
    assert set(rep) >= {"scenarios", "error", "hint", "ok", "seconds"}
    assert rep["scenarios"] == [] and rep["ok"] is False
    assert rep["error"] == "qemu-system-x86_64 is not installed"
    assert "qemu-system-x86" in rep["hint"]


def _fake_mesa_repo(tmp_path: Path) -> Path:
    """A directory that holds both Mesa sets' manifests and (empty) stone files."""
    for v in compose.MESA_SETS.values():
        files = [f"mesa-{v}-1-x86_64.stone", "libdrm2-x-1-x86_64.stone"]
        (tmp_path / f"mesa-{v}-1.manifest.json").write_text(json.dumps(
            {"name": "mesa", "stones": [{"name": f.split("-")[0], "file": f} for f in files]}))
        for f in files:
            (tmp_path / f).write_bytes(b"")
    return tmp_path


def test_mesa_rollback_is_built_only_with_both_mesa_sets(tmp_path: Path) -> None:
    assert compose.mesa_sets(tmp_path) is None
    assert not validate.select(["mesa-rollback"], tmp_path)[0].built
    repo = _fake_mesa_repo(tmp_path)
    assert compose.mesa_sets(repo) == {d: [f"mesa-{v}-1-x86_64.stone", "libdrm2-x-1-x86_64.stone"]
                                     for d, v in compose.MESA_SETS.items()}
    sc = validate.select(["4"], repo)[0]
    assert sc.built and [e.state for e in sc.boots] == [1, 2]
    # installed by name: the versioned dependencies choose each set's libdrm2
    assert "onix install mesa=22.3.6" in sc.plan and "onix install mesa=25.0.7" in sc.plan
    steps = [ln.split()[1] for ln in sc.plan.splitlines() if ln.startswith("step ")]
    assert steps.index("app-25") < steps.index("rollback") < steps.index("app-back")
    assert "grep -qx '/nix: untouched' /run/rb" in sc.plan
    (repo / "libdrm2-x-1-x86_64.stone").unlink()  # a set without all its stones: not built
    assert compose.mesa_sets(repo) is None


def test_no_step_name_twice_in_one_boot(tmp_path: Path) -> None:
    # a step's output is results/<N>.d/NAME.log: a repeated name overwrote the first's
    for sc in validate.scenarios(_fake_mesa_repo(tmp_path)):
        for part in sc.plan.split("\nboot ")[1:]:
            names = [ln.split()[1] for ln in part.splitlines() if ln.startswith("step ")]
            assert len(names) == len(set(names)), (sc.name, names)


def test_the_image_cache_keeps_the_most_recently_used_entries(tmp_path: Path) -> None:
    for name in ["old", "older", "new", "newer", "inuse"]:
        d = tmp_path / name
        (d / "root").mkdir(parents=True)
        (d / "result.json").write_text("{}")
        t = {"older": 1000, "old": 2000, "new": 3000, "newer": 4000, "inuse": 500}[name]
        os.utime(d / "result.json", (t, t))
    (tmp_path / ".abc.123.tmp").mkdir()  # a build in progress is not an entry
    removed = image.prune_cache(tmp_path, keep=2, spare="inuse")
    assert sorted(removed) == ["old", "older"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".abc.123.tmp", "inuse", "new",
                                                          "newer"]
