"""Local (type 0) jobs: split the command into argv and run it without a shell (Decision
11 (docs/design.md), docs/kala.md §7.1).

Splitting follows the word rules of ``shlex.split`` (POSIX mode): quotes and backslash escapes
group words; ``#`` is an ordinary character. On top of that, ``$VAR`` and ``${VAR}`` expand
from the given environment the way a POSIX shell expands them:

* not inside single quotes (Kala's go-shellwords expands there too; we do not copy that);
* outside quotes the value is split into words on blanks, but quote and backslash characters
  in it are NOT interpreted; inside double quotes the value stays one word, verbatim;
* an unset variable is ""; an unquoted empty expansion produces no word;
* ``$`` not followed by a name character or ``${NAME}`` is a literal ``$``; ``\\$`` too.

Backticks, ``$(...)``, pipes, redirects, ``&&``, ``;``, ``~`` and globs mean nothing: they are
literal characters of the words (users write ``bash -c '...'``, as with Kala).

The process runs in a new process group with stdin from /dev/null and stdout+stderr in one
pipe, of which only the last OUTPUT_LIMIT characters are kept. A timeout kills the whole
group. Background grandchildren that keep the pipe open do not hold the run up: reading stops
shortly after the command itself exits.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import selectors
import signal
import subprocess
import time
from collections import ChainMap
from collections.abc import Mapping
from typing import Any

from kala_celery.runs.outcome import Outcome, tail

__all__ = ["CommandError", "run_command", "split_command"]

ERROR_OUTPUT_LIMIT = 2000  # characters of output quoted in an "exit status" error
EXIT_GRACE = 1.0  # seconds to keep reading after the command exits (grandchildren may hold it)
_POLL = 0.05  # seconds between checks that the command is still running
_READ_SIZE = 65536

_BLANKS = " \t\r\n"  # separate words in the command line (shlex's whitespace)
_IFS = " \t\n"  # separate words in an unquoted expansion (the POSIX shell's default IFS)
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")


class CommandError(ValueError):
    """The command line cannot be turned into argv; the message is the run's error."""


# ---------------------------------------------------------------- splitting


def _variable(command: str, i: int) -> tuple[str, int] | None:
    """The variable name at ``command[i] == "$"`` and the index after it, or None when this
    ``$`` is literal. Names are Kala's: letters, digits and underscores."""
    j = i + 1
    if j < len(command) and command[j] == "{":
        close = command.find("}", j + 1)
        name = command[j + 1 : close] if close != -1 else ""
        if name and all(c in _NAME_CHARS for c in name):
            return name, close + 1
        return None  # "${", "${}", "${A-b}": literal, as in Kala
    while j < len(command) and command[j] in _NAME_CHARS:
        j += 1
    return (command[i + 1 : j], j) if j > i + 1 else None


def split_command(command: str, environ: Mapping[str, str]) -> list[str]:
    """Split ``command`` into argv (see the module docstring for the rules).

    Empty quoted words (``""``, ``''``) are kept as empty arguments, as a POSIX shell and
    ``shlex.split`` keep them; Kala's go-shellwords drops them. Raises CommandError for an
    empty command and for unbalanced quotes or a trailing backslash."""
    if not command.strip(_BLANKS):
        raise CommandError("Job Command is empty.")
    words: list[str] = []
    word: list[str] = []
    in_word = False  # a word has started (possibly empty: "")
    quote = ""  # "", "'" or '"'
    i, n = 0, len(command)

    def end_word() -> None:
        nonlocal in_word
        if in_word:
            words.append("".join(word))
            word.clear()
            in_word = False

    while i < n:
        c = command[i]
        if quote == "'":
            if c == "'":
                quote = ""
            else:
                word.append(c)
            i += 1
        elif c == "\\":
            if i + 1 == n:
                raise CommandError("invalid command line string: No escaped character")
            nxt = command[i + 1]
            # Inside double quotes a backslash only escapes ", \ and $ (shlex keeps it before
            # anything else; "$" is added so that "\$HOME" stays literal, as in a shell).
            if quote == '"' and nxt not in '"\\$':
                word.append(c)
            word.append(nxt)
            in_word = True
            i += 2
        elif c == "$" and (found := _variable(command, i)) is not None:
            name, i = found
            value = environ.get(name, "")
            if quote:
                word.append(value)
                continue
            for ch in value:  # unquoted: split on blanks, nothing else is special
                if ch in _IFS:
                    end_word()
                else:
                    word.append(ch)
                    in_word = True
        elif quote == '"':
            if c == '"':
                quote = ""
            else:
                word.append(c)
            i += 1
        elif c in "'\"":
            quote = c
            in_word = True  # so '' and "" give an empty argument (POSIX; Kala drops them)
            i += 1
        elif c in _BLANKS:
            end_word()
            i += 1
        else:
            word.append(c)
            in_word = True
            i += 1
    if quote:
        raise CommandError("invalid command line string: No closing quotation")
    end_word()
    if not words:
        raise CommandError("Job Command is empty.")
    return words


# ---------------------------------------------------------------- running


def _start_error(argv0: str, exc: OSError) -> str:
    """Go's texts: exec.LookPath's for a bare name not on PATH, fork/exec's otherwise."""
    reason = (exc.strerror or str(exc)).lower()
    if "/" in argv0:
        return f"fork/exec {argv0}: {reason}"
    if isinstance(exc, FileNotFoundError) or not argv0:
        return f'exec: "{argv0}": executable file not found in $PATH'
    return f'exec: "{argv0}": {reason}'  # e.g. found on PATH but not executable


def _seconds(value: float) -> str:
    return f"{value:g}"


def _signal_text(number: int) -> str:
    try:
        text = signal.strsignal(number)
    except ValueError:
        text = None
    return (text or f"signal {number}").lower()


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the command's process group. Only while the leader is not reaped yet, so its
    pid (= the group id) cannot have been reused."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def run_command(
    command: str,
    *,
    timeout: float | None = None,
    environ: Mapping[str, str] | None = None,
    extra: Mapping[str, str] | None = None,
) -> Outcome:
    """Run one local command and say how it went; never raises for the command's failures.

    ``environ`` (default ``os.environ``) plus ``extra`` is both what ``$VAR`` expands from and
    the process's environment. ``timeout`` in seconds; None (or not positive) means no limit."""
    env: Mapping[Any, Any]
    if environ is None:  # the process's own, as bytes: nothing decoded and encoded again
        lookup: Mapping[str, str] = ChainMap(dict(extra or {}), os.environ)
        env = {**os.environb, **{os.fsencode(k): os.fsencode(v) for k, v in (extra or {}).items()}}
    else:
        env = lookup = {**environ, **(extra or {})}
    try:
        argv = split_command(command, lookup)
    except CommandError as exc:
        return Outcome(ok=False, error=str(exc))
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as exc:
        return Outcome(ok=False, error=_start_error(argv[0], exc))
    except ValueError as exc:  # e.g. a NUL character in an argument or the environment
        return Outcome(ok=False, error=f"fork/exec {argv[0]}: {exc}")

    limit = timeout if timeout is not None and timeout > 0 else None
    try:
        output, timed_out = _collect(proc, limit)
    finally:
        # Also when we are interrupted (e.g. a Celery soft time limit): leave nothing running.
        _kill_group(proc)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()

    output = output.strip()
    if timed_out:
        return Outcome(ok=False, output=output, error=f"timed out after {_seconds(limit or 0)} s")
    status = proc.returncode
    if status == 0:
        return Outcome(ok=True, output=output, exit_code=0)
    if status is None:  # the leader ignored SIGKILL for 10 s (stuck in the kernel)
        return Outcome(ok=False, output=output, error="the command could not be stopped")
    if status < 0:
        return Outcome(
            ok=False, output=output, exit_code=status, error=f"signal: {_signal_text(-status)}"
        )
    error = f"exit status {status}"
    if output:
        error += f": {tail(output, ERROR_OUTPUT_LIMIT)}"
    return Outcome(ok=False, output=output, exit_code=status, error=error)


def _collect(proc: subprocess.Popen[bytes], timeout: float | None) -> tuple[str, bool]:
    """Read the pipe until EOF, keeping the tail, then wait for the command to exit. Returns
    (output, timed out). Stops reading EXIT_GRACE seconds after the command exits even when the
    pipe stays open; kills the process group when ``timeout`` passes first."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    kept = ""
    now = time.monotonic()
    deadline = None if timeout is None else now + timeout
    stop_reading_at: float | None = None
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            if stop_reading_at is None and proc.poll() is not None:
                stop_reading_at = now + EXIT_GRACE
            if stop_reading_at is not None and now >= stop_reading_at:
                break
            if stop_reading_at is None and deadline is not None and now >= deadline:
                _kill_group(proc)
                return tail(kept + decoder.decode(b"", final=True)), True
            wait = _POLL if stop_reading_at is None else stop_reading_at - now
            if deadline is not None and stop_reading_at is None:
                wait = min(wait, deadline - now)
            if selector.select(max(wait, 0)):
                data = os.read(fd, _READ_SIZE)
                if not data:
                    break
                kept = tail(kept + decoder.decode(data))
            now = time.monotonic()
    output = tail(kept + decoder.decode(b"", final=True))
    if proc.returncode is None:  # the command closed its output but is still running
        remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        try:
            proc.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return output, True
    return output, False
