"""The limits of what a client may send (docs/design.md Decision 25), in one table that
both the checks and the OpenAPI document (kala_celery/api/openapi.py) read.

A limit refuses only what would break the job store, Python or the schedule maths (Decision
23: a body real Kala accepts is accepted unless a Decision refuses it for safety). Each
refusal is a 400 that names the field. Pure: no Flask, no database.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from kala_celery.errors import InvalidJob, JobError

ID_LENGTH = 128  # a job id's characters (the job store's key columns)
MAX_BODY = 1 << 20  # bytes of a request body (Decision 2: more is a 413)
INT64_MAX = (1 << 63) - 1  # the job store's BIGINT (Go's uint and int are 64-bit)
MAX_NESTING = 256  # JSON levels: decoding recurses up to twice a level, and Python stops near
# 1,000 frames (Go allows 10,000)
MAX_SECONDS = 100 * 365 * 86_400  # a wait: Python's timers overflow past ~292 years
MAX_DURATION = timedelta(seconds=MAX_SECONDS)
SHORT_TEXT = 64  # the columns of timezone, retry_delay and run_timeout
QUEUE_LENGTH = 200
RUN_ID_LENGTH = 36  # a run id is a UUID
NESTING_ERROR = f"the JSON nests deeper than {MAX_NESTING} levels"
MAX_TREE_RUNS = 1000  # a run and its dependents: store/jobs.py refuses links past it
NUL = "\x00"  # PostgreSQL's text cannot hold U+0000


@dataclass(frozen=True)
class Limit:
    """The bounds of one field of a job body, by its path in the body (`a.b`)."""

    maximum: int | None = None  # integers
    minimum: int | None = None
    max_length: int = MAX_BODY  # strings (characters); MAX_BODY = only the body's limit
    why: str = ""


# Fields not named here have only the general limits: no U+0000 in any string, the 1 MiB
# body, MAX_NESTING levels of JSON.
FIELDS: dict[str, Limit] = {
    "retries": Limit(minimum=0, maximum=INT64_MAX, why="the job store's 64-bit integers"),
    "metadata.success_count": Limit(minimum=0, maximum=INT64_MAX, why="64-bit counter"),
    "metadata.error_count": Limit(minimum=0, maximum=INT64_MAX, why="64-bit counter"),
    "metadata.number_of_finished_runs": Limit(minimum=0, maximum=INT64_MAX, why="64-bit counter"),
    "remote_properties.timeout": Limit(
        minimum=0, maximum=MAX_SECONDS, why="seconds; Python's timers overflow past ~292 years"
    ),
    "timezone": Limit(max_length=SHORT_TEXT, why="the timezone column"),
    "retry_delay": Limit(max_length=SHORT_TEXT, why="the retry_delay column"),
    "run_timeout": Limit(max_length=SHORT_TEXT, why="the run_timeout column"),
    "queue": Limit(max_length=QUEUE_LENGTH, why="the queue column"),
}
DURATIONS = ("retry_delay", "run_timeout")  # at most MAX_DURATION
SKIPPED = frozenset({"stats"})  # decoded and ignored: never stored
# Not here: a client `id` longer than ID_LENGTH is ignored rather than refused (a fresh UUID,
# as Kala ignores client ids: Decision 14).


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """Every string in a decoded body (keys of maps too), with its field path."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            if path == "" and key in SKIPPED:
                continue
            inner = f"{path}.{key}" if path else key
            if isinstance(key, str) and path.endswith("headers"):
                yield f"{path} (a name)", key
            yield from _strings(item, inner)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item, path)


def _get(data: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def check_job(data: dict[str, Any]) -> None:
    """Refuse (InvalidJob, 400) a decoded job body that breaks a limit, naming the field."""
    for path, text in _strings(data, ""):
        if NUL in text:
            raise InvalidJob(f"{path} contains U+0000, which the job store cannot hold")
    for path, limit in FIELDS.items():
        value = _get(data, path)
        if value is None or isinstance(value, bool):
            continue
        if isinstance(value, int):
            if limit.maximum is not None and value > limit.maximum:
                raise InvalidJob(f"{path} {value} is larger than {limit.maximum} ({limit.why})")
            # minimums are checked by the rules in store/jobs.py, whose messages say what 0 means
        elif isinstance(value, str) and len(value) > limit.max_length:
            raise InvalidJob(
                f"{path} is {len(value)} characters long; at most {limit.max_length} ({limit.why})"
            )


def check_duration(path: str, value: timedelta) -> None:
    """A retry delay or run timeout longer than Python can wait."""
    if value > MAX_DURATION:
        raise InvalidJob(f"{path} is longer than {MAX_DURATION.days} days (P{MAX_DURATION.days}D)")


def check_text(what: str, text: str) -> None:
    """A stored text that is not part of a job body (a remote job's body by PUT /params/)."""
    if NUL in text:
        raise JobError(f"{what} contains U+0000, which the job store cannot hold")


def query_int(name: str, raw: str) -> int:
    """A non-negative integer query argument (offset, limit), at most INT64_MAX."""
    if not (raw.isascii() and raw.isdigit()):
        raise ValueError(f"{name} must be a non-negative integer")
    if len(raw) > 19 or int(raw) > INT64_MAX:
        raise ValueError(f"{name} must be at most {INT64_MAX}")
    return int(raw)


def path_id_possible(value: str) -> bool:
    """False for a path id that no job or run can have (so the answer is a 404 at once)."""
    return NUL not in value and len(value) <= ID_LENGTH


def nesting_depth_ok(data: bytes, value: Any, children: Callable[[Any], list[Any]]) -> bool:
    """True when the parsed JSON `value` (of the body `data`) nests at most MAX_NESTING levels;
    `children(v)` lists the arrays and objects directly inside v. Cheap for most bodies: with
    fewer opening brackets than the limit, nothing can nest that deep."""
    if data.count(b"[") + data.count(b"{") <= MAX_NESTING:
        return True
    frontier, depth = [value], 0
    while frontier:
        depth += 1
        if depth > MAX_NESTING:
            return False
        frontier = [inner for item in frontier for inner in children(item)]
    return True
