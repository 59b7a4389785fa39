"""Local commands: POSIX-style splitting with $VAR expansion, and real processes."""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kala_celery.runs.outcome import OUTPUT_LIMIT
from kala_celery.tasks.shell import CommandError, run_command, split_command

ENV = {
    "HOME": "/home/kala",
    "TWO": "a b",
    "SPACED": "  x \t y  ",
    "QUOTES": "'a b' \"c\" \\d",
    "EMPTY": "",
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
}
PY = shlex.quote(sys.executable)


@pytest.mark.parametrize(
    ("command", "argv"),
    [
        ("echo hi", ["echo", "hi"]),
        ("  echo   hi  ", ["echo", "hi"]),
        ("echo 'a b' \"c d\"", ["echo", "a b", "c d"]),
        ("echo a'b'\"c\"d", ["echo", "abcd"]),
        ("echo a\\ b", ["echo", "a b"]),
        ("echo \\'x\\\"", ["echo", "'x\""]),
        ('echo "a\\"b" "c\\\\d" "e\\nf"', ["echo", 'a"b', "c\\d", "e\\nf"]),
        ("echo 'a\\b'", ["echo", "a\\b"]),
        ("echo '' \"\" x", ["echo", "", "", "x"]),  # kept (POSIX); Kala drops them
        ("echo # not a comment", ["echo", "#", "not", "a", "comment"]),
        ("echo $HOME", ["echo", "/home/kala"]),
        ("echo ${HOME}/bin", ["echo", "/home/kala/bin"]),
        ("echo $HOME/bin$HOME", ["echo", "/home/kala/bin/home/kala"]),
        ("echo '$HOME' '${HOME}'", ["echo", "$HOME", "${HOME}"]),
        ('echo "$HOME"', ["echo", "/home/kala"]),
        ('echo "$TWO"', ["echo", "a b"]),
        ("echo $TWO", ["echo", "a", "b"]),
        ("echo x$TWO", ["echo", "xa", "b"]),
        ("echo $SPACED", ["echo", "x", "y"]),
        ('echo "$SPACED"', ["echo", "  x \t y  "]),
        ("echo $QUOTES", ["echo", "'a", "b'", '"c"', "\\d"]),
        ('echo "$QUOTES"', ["echo", "'a b' \"c\" \\d"]),
        ("echo $UNSET x", ["echo", "x"]),
        ("echo $EMPTY", ["echo"]),
        ('echo "$UNSET"', ["echo", ""]),
        ("echo a$UNSET", ["echo", "a"]),
        ("echo ''$TWO", ["echo", "a", "b"]),  # as bash: set -- ''$TWO
        ("echo ''$SPACED", ["echo", "", "x", "y"]),
        ("echo $SPACED''", ["echo", "x", "y", ""]),
        ("echo \\$HOME", ["echo", "$HOME"]),
        ('echo "\\$HOME"', ["echo", "$HOME"]),
        ("echo $ $$ $? $- 5$", ["echo", "$", "$$", "$?", "$-", "5$"]),
        ("echo ${ ${} ${A-b} ${HOME", ["echo", "${", "${}", "${A-b}", "${HOME"]),
        (
            "echo a | grep a > out && ls; x",
            ["echo", "a", "|", "grep", "a", ">", "out", "&&", "ls;", "x"],
        ),
        ("echo `date` $(date) ~ *.py", ["echo", "`date`", "$(date)", "~", "*.py"]),
        ("bash -c 'echo $HOME | tr a b'", ["bash", "-c", "echo $HOME | tr a b"]),
    ],
)
def test_split(command: str, argv: list[str]) -> None:
    assert split_command(command, ENV) == argv


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("", "Job Command is empty."),
        ("   \t\n ", "Job Command is empty."),
        ("$UNSET $EMPTY", "Job Command is empty."),
        ("echo 'abc", "invalid command line string: No closing quotation"),
        ('echo "abc', "invalid command line string: No closing quotation"),
        ("echo \"a'", "invalid command line string: No closing quotation"),
        ("echo abc\\", "invalid command line string: No escaped character"),
    ],
)
def test_split_errors(command: str, message: str) -> None:
    with pytest.raises(CommandError) as caught:
        split_command(command, ENV)
    assert str(caught.value) == message


@given(st.text(alphabet=" \t\n'\"\\ab#|;&<>*~{}é", max_size=30))
def test_split_matches_shlex_without_variables(command: str) -> None:
    """With no `$` in it, a command splits exactly as shlex.split splits it."""
    try:
        expected: list[str] | None = shlex.split(command)
    except ValueError:
        expected = None
    try:
        got: list[str] | None = split_command(command, ENV)
    except CommandError:
        got = None
    if expected == [] and got is None:
        return  # blank: shlex gives no words, we refuse the command
    assert got == expected


# ---------------------------------------------------------------- real processes


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting for its reaper counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_gone(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _read_pid(path: Path, within: float = 5.0) -> int:
    deadline = time.monotonic() + within
    while True:
        text = path.read_text().strip() if path.exists() else ""
        if text.isdigit():
            return int(text)
        assert time.monotonic() < deadline, f"no pid in {path}"
        time.sleep(0.02)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, 9)


def test_echo() -> None:
    outcome = run_command("echo hi")
    assert outcome.ok
    assert outcome.output == "hi"
    assert outcome.exit_code == 0
    assert outcome.error is None


def test_failure_keeps_both_streams() -> None:
    outcome = run_command("sh -c 'echo out; echo err >&2; exit 3'")
    assert not outcome.ok
    assert outcome.exit_code == 3
    assert "out" in outcome.output and "err" in outcome.output
    assert outcome.error is not None and outcome.error.startswith("exit status 3")
    assert outcome.error.endswith(outcome.output)


def test_failure_without_output() -> None:
    outcome = run_command("false")
    assert (outcome.ok, outcome.exit_code, outcome.error, outcome.output) == (
        False,
        1,
        "exit status 1",
        "",
    )


def test_error_quotes_at_most_2000_characters_of_output() -> None:
    outcome = run_command(f"{PY} -c \"import sys; print('y' * 5000 + 'END'); sys.exit(2)\"")
    assert outcome.exit_code == 2
    assert outcome.error is not None
    assert outcome.error.startswith("exit status 2: y")
    assert outcome.error.endswith("END")
    assert len(outcome.error) == len("exit status 2: ") + 2000
    assert len(outcome.output) == 5003


def test_missing_binary() -> None:
    outcome = run_command("no-such-binary-kala --flag")
    assert not outcome.ok
    assert outcome.exit_code is None
    assert outcome.error == 'exec: "no-such-binary-kala": executable file not found in $PATH'


def test_missing_path() -> None:
    outcome = run_command("/no/such/kala-binary")
    assert outcome.error == "fork/exec /no/such/kala-binary: no such file or directory"


def test_not_executable(tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    outcome = run_command(str(script))
    assert not outcome.ok
    assert outcome.error == f"fork/exec {script}: permission denied"


def test_invalid_command_line() -> None:
    outcome = run_command("echo 'oops")
    assert outcome == type(outcome)(
        ok=False, error="invalid command line string: No closing quotation"
    )
    assert run_command("   ").error == "Job Command is empty."


def test_killed_by_signal() -> None:
    outcome = run_command("sh -c 'kill -TERM $$'")
    assert not outcome.ok
    assert outcome.exit_code == -15
    assert outcome.error == "signal: terminated"


def test_environment_is_given_and_used_for_expansion() -> None:
    env = {"PATH": ENV["PATH"], "KALA_X": "one two"}
    outcome = run_command('sh -c \'echo "[$KALA_X]" "[$HOME]"\' $KALA_X', environ=env)
    assert outcome.output == "[one two] []"
    outcome = run_command(
        f'{PY} -c "import sys; print(sys.argv[1:])" $KALA_X "$KALA_X"', environ=env
    )
    assert outcome.output == "['one', 'two', 'one two']"


def test_default_environment_is_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KALA_SHELL_TEST", "from-os")
    assert run_command("echo $KALA_SHELL_TEST").output == "from-os"
    assert run_command("sh -c 'echo $KALA_SHELL_TEST'").output == "from-os"


def test_no_shell_runs() -> None:
    outcome = run_command("echo a | tr a b; `date` $(date) > *")
    assert outcome.ok
    assert outcome.output == "a | tr a b; `date` $(date) > *"


def test_stdin_is_empty() -> None:
    started = time.monotonic()
    outcome = run_command("cat")
    assert outcome.ok and outcome.output == ""
    assert time.monotonic() - started < 3


def test_output_is_trimmed_and_decoded_with_replacement() -> None:
    outcome = run_command("printf '  \\n h\\303\\251 \\377 \\n\\n'")
    assert outcome.ok
    assert outcome.output == "h\u00e9 \ufffd"


def test_large_output_keeps_only_the_tail() -> None:
    tracemalloc.start()
    try:
        outcome = run_command(f"{PY} -c \"print('x' * 10_000_000 + 'END')\"")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert outcome.ok
    assert len(outcome.output) == OUTPUT_LIMIT - 1  # the tail, less its trimmed newline
    assert outcome.output.endswith("xxxEND")
    assert peak < 10 * OUTPUT_LIMIT * 4, peak  # the 10 MB never sat in memory


def test_timeout_kills_the_process_group(tmp_path: Path) -> None:
    child_file = tmp_path / "child"
    leader_file = tmp_path / "leader"
    command = (
        f"sh -c 'echo $$ > {leader_file}; sleep 30 & echo $! > {child_file}; "
        "echo started; sleep 30'"
    )
    started = time.monotonic()
    outcome = run_command(command, timeout=0.5)
    elapsed = time.monotonic() - started
    leader, child = _read_pid(leader_file), _read_pid(child_file)
    try:
        assert elapsed < 3, elapsed
        assert not outcome.ok
        assert outcome.exit_code is None
        assert outcome.error == "timed out after 0.5 s"
        assert outcome.output == "started"
        assert _wait_gone(leader)
        assert _wait_gone(child), "the background grandchild survived the timeout"
    finally:
        _kill(child)


def test_timeout_plain_sleep() -> None:
    started = time.monotonic()
    outcome = run_command("sleep 30", timeout=0.5)
    assert time.monotonic() - started < 3
    assert outcome.error == "timed out after 0.5 s"


def test_timeout_not_reached() -> None:
    outcome = run_command("echo fast", timeout=5)
    assert outcome.ok and outcome.output == "fast"


def test_grandchild_holding_the_pipe_does_not_hang(tmp_path: Path) -> None:
    child_file = tmp_path / "child"
    started = time.monotonic()
    outcome = run_command(f"sh -c 'sleep 30 & echo $! > {child_file}; echo done'")
    elapsed = time.monotonic() - started
    child = _read_pid(child_file)
    try:
        assert outcome.ok, outcome
        assert outcome.output == "done"
        assert elapsed < 3, elapsed
        assert _alive(child)  # a normal exit leaves background processes alone
    finally:
        _kill(child)


def test_command_closing_its_output_early_is_still_waited_for() -> None:
    started = time.monotonic()
    outcome = run_command("sh -c 'echo early; exec >&- 2>&-; sleep 0.3; exit 4'")
    assert time.monotonic() - started >= 0.3
    assert outcome.exit_code == 4
    assert outcome.output == "early"


def test_command_closing_its_output_still_times_out() -> None:
    started = time.monotonic()
    outcome = run_command("sh -c 'exec >&- 2>&-; sleep 30'", timeout=0.5)
    assert time.monotonic() - started < 3
    assert outcome.error == "timed out after 0.5 s"
