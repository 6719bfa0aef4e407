"""The library's progress bars close their line: what is written after a bar starts on a new one."""

from __future__ import annotations

import io
import sys

from arrakis.progress import progress


def test_output_after_a_bar_starts_on_a_new_line_when_stderr_is_not_a_terminal(capfd):
    for leave in (False, True):
        assert list(progress(range(3), "counting", "step", leave=leave)) == [0, 1, 2]
        print("next line", file=sys.stderr)
        err = capfd.readouterr().err
        assert "counting" in err and "3/3" in err
        assert err.endswith("\nnext line\n"), repr(err)  # not "\r   \rnext line": the bar's line ended


def test_a_bar_on_a_terminal_with_leave_false_is_erased():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    list(progress(range(3), "counting", "step", file=screen))
    assert screen.getvalue().endswith("\r"), repr(screen.getvalue())  # the cursor back at a cleared line
    assert "3/3" not in screen.getvalue().rsplit("\r", 2)[-2]  # the last thing drawn is blanks


def test_a_disabled_bar_writes_nothing(capfd):
    assert list(progress(iter("ab"), "quiet", enabled=False)) == ["a", "b"]
    assert capfd.readouterr().err == ""
