"""The CLI's output helper (onix/cli/output.py), called in-process.

Every command prints through it, and the other tests run commands as subprocesses;
these pin down the helper itself: where the recovered and warning lines go, and how
an exception becomes one error line, a JSON document and an exit code.
"""

from __future__ import annotations

import errno
import json

import pytest

from onix.cli import output
from onix.core.errors import LockedError, OnixError


def test_recovered_and_warning_lines_are_printed_once_around_the_body(capsys) -> None:
    result = {"summary": "install a 1-1", "recovered": ["undid interrupted install"],
              "warnings": ["service web did not come up: x [/b]"]}

    data = output.run(lambda: result, lambda r: print(r["summary"]), as_json=False)

    out, err = capsys.readouterr()
    assert out.splitlines() == ["recovered: undid interrupted install", "install a 1-1",
                                "warning: service web did not come up: x [/b]"]
    assert err == ""
    assert data == result


def test_json_output_is_the_result_alone(capsys) -> None:
    result = {"recovered": ["r"], "warnings": ["w"], "summary": "s"}

    output.run(lambda: result, lambda r: pytest.fail("no human lines with --json"),
               as_json=True)

    out, err = capsys.readouterr()
    assert json.loads(out) == result
    assert err == ""


def test_an_onix_error_is_one_line_json_and_its_exit_code(capsys) -> None:
    def locked() -> None:
        raise LockedError("held by pid 7", path="/r/.onix/lock", hint="wait")

    with pytest.raises(SystemExit) as exit_:
        output.run(locked, lambda r: None, as_json=True)

    assert exit_.value.code == 3
    out, err = capsys.readouterr()
    assert json.loads(out) == {"error": "held by pid 7", "path": "/r/.onix/lock", "hint": "wait"}
    assert err == "error: /r/.onix/lock: held by pid 7; wait\n"


def test_an_os_error_is_named_like_an_onix_error(capsys) -> None:
    denied = PermissionError(errno.EACCES, "Permission denied", "/r/.onix")

    assert output.fail(denied, as_json=False) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == ("error: /r/.onix: Permission denied; run as root, or point --root at a "
                   "tree you own\n")


def test_a_fixed_shape_report_keeps_its_keys_on_error(capsys) -> None:
    code = output.fail(OnixError("no qemu", hint="install it"), as_json=True,
                       report={"scenarios": [], "ok": False})

    assert code == 1
    out, _ = capsys.readouterr()
    assert json.loads(out) == {"scenarios": [], "ok": False, "error": "no qemu", "path": None,
                               "hint": "install it"}


def test_ctrl_c_is_exit_130_with_one_line(capsys) -> None:
    assert output.fail(KeyboardInterrupt(), as_json=True) == 130
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"error: {output.INTERRUPTED}\n"


def test_an_unknown_exception_is_re_raised_for_its_traceback(capsys) -> None:
    def bug() -> None:
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        output.run(bug, lambda r: None, as_json=True)
    assert capsys.readouterr() == ("", "")
