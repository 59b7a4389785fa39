"""`GET /job/`: every job's Kala document, from plain rows, through `wire.job_json`, each
job's text remembered until the next list (list_document).

The rows are plain tuples of `wire.JOB_FIELDS` (Core, no identity map, no ORM objects) read
without SQLAlchemy's per-value result processing; `wire.job_json` takes the values as the
driver gives them, so the list and GET /job/{id}/ share one formatter (for 10k jobs, loading
ORM objects and building 10k dicts took ~0.8 s).
"""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
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
from kala_celery.store.tables import Job, UTCDateTime

_quote = json.encoder.encode_basestring


def _raw(column: Any) -> Any:
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
        return func.nullif(cast(column, Text), "null").label(column.name)
    if isinstance(kind, (UTCDateTime, DateTime)):
        return type_coerce(column, String()).label(column.name)
    return column


_EVERY_JOB = select(*(_raw(Job.__table__.c[name]) for name in wire.JOB_FIELDS))


def job_rows(session: Session) -> list[Sequence[Any]]:
    """Every job as a plain tuple of wire.JOB_FIELDS, sorted by id (code point order, as
    Go's map)."""
    rows = session.execute(_EVERY_JOB).all()
    rows.sort(key=itemgetter(1))
    return rows


REMEMBER_UP_TO = 20_000  # jobs: above this, a process keeps no documents between lists

_remembered: dict[tuple[Any, ...], bytes] = {}


def list_document(
    rows: Iterable[Sequence[Any]],
    parents: Mapping[str, Sequence[str]],
    children: Mapping[str, Sequence[str]],
    stats: Mapping[str, Sequence[Any]],
) -> bytes:
    """Kala's `{"jobs": {id: job, ...}}` for rows sorted by id, as wire.dumps writes it.

    Each job's piece is remembered until the next list, under everything it is written from
    (its row, its parents', children's and stats' rows): a job whose row or runs changed
    has another key, so a remembered piece is never out of date, and one that did not
    change is not written again (the formatter was half of a 10k-job list). The memory is
    the last list's rows and pieces, ≈ 1.7 KB a job (17 MB for 10k jobs) in each API
    process; none above REMEMBER_UP_TO jobs."""
    global _remembered
    job_json = wire.job_json
    before = _remembered
    kept: dict[tuple[Any, ...], bytes] = {}
    parts = []
    for row in rows:
        job_id = row[1]
        parent_ids, child_ids, job_stats = (
            parents.get(job_id), children.get(job_id), stats.get(job_id)
        )
        key = (
            row,
            tuple(parent_ids) if parent_ids else None,
            tuple(child_ids) if child_ids else None,
            tuple(job_stats) if job_stats else None,
        )
        try:
            part = before.get(key)
        except TypeError:  # a value that cannot be a key (parsed JSON): written each time
            key, part = None, None
        if part is None:
            doc = job_json(row, parent_ids=parent_ids, child_ids=child_ids, stats=job_stats)
            part = wire.go_bytes(f"{_quote(job_id)}:{doc}")
        if key is not None:
            kept[key] = part
        parts.append(part)
    # one assignment: a list running beside this one reads the old pieces or the new
    _remembered = kept if len(kept) <= REMEMBER_UP_TO else {}
    return b'{"jobs":{' + b",".join(parts) + b"}}\n"


GZIP_LEVEL = 1  # as api/http.py


@dataclass
class Document:
    """The list's document as written for one store version, and its gzip (made once, by
    the first client that asks for it)."""

    body: bytes
    _gzipped: bytes | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def gzipped(self) -> bytes:
        with self._lock:
            if self._gzipped is None:
                self._gzipped = gzip.compress(self.body, compresslevel=GZIP_LEVEL)
            return self._gzipped


_kept: tuple[str, str, Document] | None = None


def kept_document(store: str, tag: str) -> Document | None:
    """The document this process wrote last, if it was written from `store` at its version
    `tag` (docs/design.md Decision 34: then nothing it shows has changed)."""
    kept = _kept
    return kept[2] if kept is not None and kept[:2] == (store, tag) else None


def keep_document(store: str, tag: str, body: bytes) -> Document:
    """Remember `body` as the list of `store` at version `tag` (one list, the last one)."""
    global _kept
    document = Document(body)
    _kept = (store, tag, document)
    return document
