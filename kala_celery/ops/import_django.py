"""`kala-celery import --from-django-celery-beat URL`: django-celery-beat's periodic tasks,
read from its own tables with SQLAlchemy (no Django at run time), as Celery-task jobs
(ops/beat_entries.py; docs/import-celery.md).

Read: `django_celery_beat_periodictask` and the schedule tables it points at
(`..._crontabschedule`, `..._intervalschedule`, `..._clockedschedule`; a solar one is named
and refused). Columns an older django-celery-beat lacks read as absent.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import MetaData, Table, create_engine, select
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, NoSuchTableError, SQLAlchemyError

from kala_celery.ops.beat_entries import Entry, as_utc
from kala_celery.ops.import_table import SourceError

PREFIX = "dcb-"  # the job ids: dcb-<the periodic task's name>
TABLE = "django_celery_beat_{}"
_PERIODS = {"days": timedelta(days=1), "hours": timedelta(hours=1),
            "minutes": timedelta(minutes=1), "seconds": timedelta(seconds=1),
            "microseconds": timedelta(microseconds=1)}


def engine_url(url: str) -> str:
    """A SQLAlchemy URL for the database; `postgres://` and `postgresql://` (Django's and
    libpq's spelling) use psycopg 3, the driver kala-celery installs."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise SourceError(f"not a database URL: {exc}") from None
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite" and not (
            parsed.database and Path(parsed.database).is_file()):  # SQLite would make one
        raise SourceError(f"no SQLite database at {parsed.database or '(memory)'}")
    return parsed.render_as_string(hide_password=False)


def read(url: str) -> list[Entry]:
    """Every periodic task in the database at `url`, by name."""
    try:
        engine = create_engine(engine_url(url))
    except (ArgumentError, NoSuchModuleError) as exc:
        raise SourceError(f"cannot open {url}: {exc}") from None
    try:
        with engine.connect() as conn:
            return _read(conn)
    except NoSuchTableError as exc:
        raise SourceError(f"no django-celery-beat table {exc} there: is this the Django "
                          "project's database, migrated (manage.py migrate "
                          "django_celery_beat)?") from None
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise SourceError(f"cannot read django-celery-beat's tables: {reason}") from None
    finally:
        engine.dispose()


def _rows(conn: Connection, name: str, *, required: bool = False) -> dict[Any, dict]:
    """A table's rows by id (absent and not required: none)."""
    try:
        table = Table(TABLE.format(name), MetaData(), autoload_with=conn)
    except NoSuchTableError:
        if required:
            raise
        return {}
    return {row["id"]: dict(row) for row in conn.execute(select(table)).mappings()}


def _read(conn: Connection) -> list[Entry]:
    tasks = _rows(conn, "periodictask", required=True)
    schedules = {kind: _rows(conn, f"{kind}schedule")
                 for kind in ("crontab", "interval", "clocked", "solar")}
    return [entry(task, schedules) for task in sorted(tasks.values(), key=lambda t: t["name"])]


def _json(text: str | None, default: Any, what: str, kind: type) -> tuple[Any, str | None]:
    if text is None or text == "":
        return default, None
    try:
        value = json.loads(text)
    except ValueError as exc:
        return None, f"its {what} are not JSON ({exc})"
    if not isinstance(value, kind):
        return None, f"its {what} are JSON but not {'a list' if kind is list else 'an object'}"
    return value, None


def entry(task: dict[str, Any], schedules: dict[str, dict[Any, dict]]) -> Entry:
    """One `django_celery_beat_periodictask` row (and its schedule's row) as an Entry."""
    args, bad_args = _json(task.get("args"), [], "args", list)
    kwargs, bad_kwargs = _json(task.get("kwargs"), {}, "kwargs", dict)
    dropped = [f"{key} {task[key]!r}" for key in ("priority", "exchange", "routing_key",
                                                   "expire_seconds") if task.get(key)]
    headers = task.get("headers")
    if headers and headers.strip() not in ("{}", ""):
        dropped.append("headers")
    common: dict[str, Any] = dict(
        id_prefix=PREFIX, name=task["name"], task=task["task"], args=args, kwargs=kwargs,
        queue=task.get("queue") or None, enabled=bool(task.get("enabled", True)),
        one_off=bool(task.get("one_off")), start_time=as_utc(task.get("start_time")),
        expires=as_utc(task.get("expires")), last_run_at=as_utc(task.get("last_run_at")),
        total_run_count=int(task.get("total_run_count") or 0),
        saved_at=as_utc(task.get("date_changed")), dropped=tuple(dropped),
        problem=bad_args or bad_kwargs)
    for kind in ("crontab", "interval", "clocked", "solar"):
        ref = task.get(f"{kind}_id")
        if ref is None:
            continue
        row = schedules[kind].get(ref)
        if row is None:
            return Entry(kind=kind, **{**common, "problem": f"its {kind} schedule {ref} is "
                                       "missing from its table"})
        if kind == "crontab":
            fields = [str(row[f]) for f in ("minute", "hour", "day_of_month", "month_of_year",
                                             "day_of_week")]
            return Entry(kind=kind, cron=" ".join(fields),
                         timezone=str(row.get("timezone") or "UTC"), **common)
        if kind == "interval":
            unit = _PERIODS.get(row["period"])
            if unit is None:
                return Entry(kind=kind, **{**common, "problem": f"an interval in "
                                           f"{row['period']!r}, which is no period"})
            return Entry(kind=kind, every=row["every"] * unit, **common)
        if kind == "clocked":
            return Entry(kind=kind, clocked_time=as_utc(row["clocked_time"]), **common)
        return Entry(kind=f"solar ({row.get('event')})", **common)
    return Entry(kind="missing", **{**common, "problem": "it has no schedule"})
