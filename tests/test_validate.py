"""`onix validate` through the real CLI: every implemented scenario boots and passes.

The scenarios (onix/validate.py, docs/validation.md) boot a copy of the validation image
in QEMU under OVMF with systemd-boot, several times each, and read the results back from
the disk. This test runs the whole suite once (two VMs at a time, about 5 minutes under
TCG on 2 cores), then checks the table: every scenario is there, the implemented ones
passed with the boots they need, and scenario 4 (Mesa) is listed as not built, with its
reason, and never as passed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from onix import image, qemu, validate
from onix.errors import OnixError

REPO = Path(__file__).resolve().parent.parent
STONES = REPO / "stones"
PUB = REPO / ".cache" / "keys" / "local.pub"
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
                        "--json"], capture_output=True, text=True, cwd=REPO, env=env,
                       timeout=1500)
    assert r.stdout.strip(), r.stderr
    rep = json.loads(r.stdout)
    by = {s["name"]: s for s in rep["scenarios"]}
    print("\n" + "\n".join(f"{s['number']} {s['name']}: {s['result']}, {s['boots']} boots, "
                           f"{s['seconds']} s" for s in rep["scenarios"]))
    print(f"total {rep['seconds']} s ({rep['accel']})")
    want = {s.name: s for s in validate.scenarios()}
    assert set(by) == set(want)  # the table has every scenario
    for name, sc in want.items():
        got = by[name]
        if sc.built:
            assert got["result"] == "passed", json.dumps(got, indent=1)[-6000:]
            assert got["boots"] == len(sc.boots), got
            assert not got["problems"], got["problems"]
        else:
            assert got["result"] == "not built" and got["reason"], got
    assert by["mesa-rollback"]["result"] == "not built"
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
