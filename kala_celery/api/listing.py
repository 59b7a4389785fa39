"""`GET /job/`: every job's Kala document, from plain rows, through `wire.job_json`.

The rows are plain tuples of `wire.JOB_FIELDS` (Core, no identity map, no ORM objects) read
without SQLAlchemy's per-value result processing; `wire.job_json` takes the values as the
driver gives them, so the list and GET /job/{id}/ share one formatter (for 10k jobs, loading
ORM objects and building 10k dicts took ~0.8 s).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from operator import itemgetter
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Integer,
    String,
    Text,
    cast,
    func,
    select,
    type_coerce,
)
from sqlalchemy.orm import Session

from kala_celery import wire
from kala_celery.models import Job, UTCDateTime

_quote = json.encoder.encode_basestring


def _raw(column: Any, dialect: str) -> Any:
    """The column without SQLAlchemy's per-value result processing (a third of the time
    of reading 10k rows): booleans as the driver gives them (bool, or 0/1 on SQLite), times
    as the driver gives them (datetime or SQLite's text); `wire.job_json` takes either.
    JSON columns are read as their text, and the text "null" (the ORM's None) as NULL, so
    that a job without those values takes the formatter's fast path: psycopg would parse
    every JSON value, "null" included, which was two thirds of reading 10k rows."""
    kind = column.type
    if isinstance(kind, Boolean):
        return type_coerce(column, Integer()).label(column.name)
    if isinstance(kind, JSON):
        text = type_coerce(column, String()) if dialect == "sqlite" else cast(column, Text)
        return func.nullif(text, "null").label(column.name)
    if isinstance(kind, (UTCDateTime, DateTime)):
        return type_coerce(column, String()).label(column.name)
    return column


def job_rows(session: Session) -> list[Sequence[Any]]:
    """Every job as a plain tuple of wire.JOB_FIELDS, sorted by id (code point order, as
    Go's map)."""
    dialect = session.get_bind().dialect.name
    columns = [_raw(Job.__table__.c[name], dialect) for name in wire.JOB_FIELDS]
    rows = session.execute(select(*columns)).all()
    rows.sort(key=itemgetter(1))
    return rows


def list_document(
    rows: Iterable[Sequence[Any]],
    parents: Mapping[str, Sequence[str]],
    children: Mapping[str, Sequence[str]],
    stats: Mapping[str, Sequence[Any]],
) -> bytes:
    """Kala's `{"jobs": {id: job, ...}}` for rows sorted by id, as wire.dumps writes it."""
    job_json = wire.job_json
    parts = []
    for row in rows:
        job_id = row[1]
        doc = job_json(
            row,
            parent_ids=parents.get(job_id),
            child_ids=children.get(job_id),
            stats=stats.get(job_id),
        )
        parts.append(f"{_quote(job_id)}:{doc}")
    return wire.finish_json('{"jobs":{' + ",".join(parts) + "}}")
