"""The result of one attempt of a run, whatever kind of job it was (shell, HTTP)."""

from __future__ import annotations

from dataclasses import dataclass

OUTPUT_LIMIT = 64 * 1024  # characters of output kept per run (the tail)


def tail(text: str, limit: int = OUTPUT_LIMIT) -> str:
    return text if len(text) <= limit else text[-limit:]


@dataclass(frozen=True)
class Outcome:
    ok: bool
    output: str = ""  # combined stdout+stderr, or the response body: the last OUTPUT_LIMIT chars
    error: str | None = None  # why the attempt failed, for a person
    exit_code: int | None = None
    http_status: int | None = None
