"""`kala-celery import --from-redbeat REDIS_URL [--redbeat-prefix redbeat:]`: RedBeat's
entries, read from Redis with redis-py (no RedBeat at run time), as Celery-task jobs
(ops/beat_entries.py; docs/import-celery.md).

RedBeat keeps each entry in a hash `<prefix><name>` with `definition` (JSON: name, task,
schedule, args, kwargs, options, enabled) and `meta` (JSON: last_run_at, total_run_count), and
their due times in the sorted set `<prefix>:schedule`. Its JSON marks a schedule or a time with
`__type__`: `crontab` (the five fields; RedBeat stores no zone, the Celery app's timezone
applies), `interval` (every, in seconds: a `timedelta` or `schedule` entry), `datetime`;
anything else (`rrule`) is refused.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import redis

from kala_celery.ops.beat_entries import Entry
from kala_celery.ops.import_table import SourceError

PREFIX = "redbeat-"  # the job ids: redbeat-<the entry's name>
DEFAULT_KEY_PREFIX = "redbeat:"


def read(url: str, key_prefix: str = DEFAULT_KEY_PREFIX,
         cron_timezone: str | None = None) -> list[Entry]:
    """Every RedBeat entry under `key_prefix` in the Redis at `url`, by name. Crontabs are
    read in `cron_timezone` (the Celery app's timezone; None: the store's default)."""
    try:
        client = redis.Redis.from_url(url)
        keys = set(client.zrange(f"{key_prefix}:schedule", 0, -1))
        keys |= set(client.scan_iter(match=_glob(key_prefix) + "*", count=1000))
        found: list[tuple[str, bytes, bytes | None, float | None]] = []
        for key in sorted(keys):
            if client.type(key) != b"hash":  # the schedule, the lock, the statics
                continue
            definition, meta = client.hmget(key, ["definition", "meta"])
            if definition is None:
                continue
            found.append((key.decode(errors="replace")[len(key_prefix):], definition, meta,
                          client.zscore(f"{key_prefix}:schedule", key)))
    except (redis.RedisError, ValueError) as exc:
        raise SourceError(f"cannot read RedBeat's entries from {url}: {exc}") from None
    entries = [entry(d, m, score, cron_timezone, name) for name, d, m, score in found]
    return sorted(entries, key=lambda e: e.name)


def _glob(prefix: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]\\" else c for c in prefix)


def _time(value: Any) -> datetime | None:
    """RedBeat's `{"__type__": "datetime", ...}` as aware UTC."""
    if not isinstance(value, dict) or value.get("__type__") != "datetime":
        return None
    zone = value.get("timezone", "UTC")
    try:
        tz: Any = (timezone(timedelta(seconds=float(zone))) if isinstance(zone, int | float)
                   else ZoneInfo(str(zone)))
        when = datetime(value["year"], value["month"], value["day"], value.get("hour", 0),
                        value.get("minute", 0), value.get("second", 0),
                        value.get("microsecond", 0), tzinfo=tz)
    except (KeyError, TypeError, ValueError, ZoneInfoNotFoundError):
        return None
    return when.astimezone(UTC)


def entry(definition: bytes, meta: bytes | None, due: float | None,
          cron_timezone: str | None, key_name: str = "") -> Entry:
    """One RedBeat entry (its hash's `definition` and `meta`, its due time) as an Entry;
    `key_name` (its key without the prefix) names one whose JSON is unreadable."""
    try:
        spec = json.loads(definition)
        info = json.loads(meta) if meta else {}
    except ValueError as exc:
        return Entry(PREFIX, key_name, "", "unreadable",
                     problem=f"its JSON is unreadable: {exc}")
    if not isinstance(spec, dict) or not isinstance(info, dict):
        return Entry(PREFIX, key_name, "", "unreadable",
                     problem="its definition or meta is not a JSON object")
    options = spec.get("options") if isinstance(spec.get("options"), dict) else {}
    args, kwargs = spec.get("args"), spec.get("kwargs")
    problem = None
    if args is not None and not isinstance(args, list):
        problem = "its args are not a list"
    if kwargs is not None and not isinstance(kwargs, dict):
        problem = "its kwargs are not an object"
    saved = datetime.fromtimestamp(due, UTC) if due is not None and due > 0 else None
    common: dict[str, Any] = dict(
        id_prefix=PREFIX, name=str(spec.get("name") or key_name), task=str(spec.get("task", "")),
        args=args or [], kwargs=kwargs or {}, queue=options.get("queue") or None,
        enabled=bool(spec.get("enabled", True)), last_run_at=_time(info.get("last_run_at")),
        total_run_count=int(info.get("total_run_count") or 0), saved_at=saved,
        dropped=tuple(f"{key} {options[key]!r}" for key in
                      ("priority", "exchange", "routing_key", "expires") if options.get(key)),
        problem=problem)
    kind = spec.get("schedule")
    kind_name = kind.get("__type__") if isinstance(kind, dict) else None
    if kind_name == "crontab":
        fields = [str(kind.get(f, "*")) for f in ("minute", "hour", "day_of_month",
                                                   "month_of_year", "day_of_week")]
        return Entry(kind="crontab", cron=" ".join(fields), timezone=cron_timezone, **common)
    if kind_name == "interval":
        try:
            every = timedelta(seconds=float(kind["every"]))
        except (KeyError, TypeError, ValueError):
            return Entry(kind="interval", **{**common, "problem": "an interval without every"})
        return Entry(kind="interval", every=every, **common)
    return Entry(kind=str(kind_name or "unknown"), **common)
