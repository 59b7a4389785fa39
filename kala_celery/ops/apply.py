"""Jobs as code: `kala-celery apply -f jobs.yaml [--prune] [--dry-run]` and `kala-celery
export` (docs/design.md Decision 30; docs/operate.md, "Jobs as code").

A file is a list of job bodies with the API's fields (YAML or JSON). `apply` makes it true in
the store in one transaction: each body is decoded as the API decodes it (wire.decode_job,
so errors read as the API's) and created or replaced through the API's own rules
(runs/start.py, store/jobs.py), keyed by `id`, else by `name`. What a job looks like is its
exported form (`exported`): the API's document less what the store keeps by itself (next
run, counters, stats, done) and less every field at its default. A body whose job's exported
form and children are the same after as before changed nothing, and its savepoint is rolled
back.
`--prune` disables the jobs made by apply (`source: "apply"`) that the file no longer
names. `--dry-run` does all of it and rolls back. Jobs created here carry `source: "apply"`;
an existing job keeps its source unless the body gives one.

`export` writes every job but those of a Celery app's beat_schedule (they live in code) in
exported form, parents before their children, so applying an export changes nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from kala_celery import wire
from kala_celery.errors import JobError
from kala_celery.runs import start
from kala_celery.store import audit, bulk, jobs, links
from kala_celery.store.tables import SOURCE_APPLY, SOURCE_CONFIG, Job

APPLIER = audit.command_actor("apply")  # who the audit trail says applied (Decision 32)
_LOCK = "SELECT pg_advisory_xact_lock(7040531)"  # beside beat/beat_schedule.py's 7040530
# What the store keeps by itself: never part of a job as code.
_STATE_KEYS = ("next_run_at", "metadata", "stats", "is_done", "dependent_jobs")
# The API's defaults of a created job's fields (the extension keys are left out when unset).
_DEFAULTS: dict[str, Any] = {
    "name": "", "command": "", "owner": "", "disabled": False, "parent_jobs": None,
    "on_failure_job": "", "schedule": "", "retries": 0, "epsilon": "", "TemplateDelimiters": "",
    "resume_at_next_scheduled_time": False, "type": 0,
}
_REMOTE_DEFAULTS: dict[str, Any] = {
    "url": "", "method": "", "body": "", "headers": None, "timeout": 0,
    "expected_response_codes": None,
}


class ApplyError(Exception):
    """A file or a job that cannot be applied; str(e) says which and why."""


class _Loader(yaml.SafeLoader):
    """YAML without implicit timestamps: a time stays the text the API would be sent."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def read_bodies(text: str, where: str) -> list[dict[str, Any]]:
    """The job bodies of a file's text (JSON is YAML too): a list of objects."""
    try:
        loaded = yaml.load(text, Loader=_Loader)  # a SafeLoader without timestamps
    except yaml.YAMLError as exc:
        raise ApplyError(f"{where}: not YAML or JSON: {exc}") from None
    if loaded is None:
        return []
    if not isinstance(loaded, list) or not all(isinstance(b, dict) for b in loaded):
        raise ApplyError(f"{where}: expected a list of job bodies (objects)")
    return loaded


def _strip(doc: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if key in _STATE_KEYS or (key in _DEFAULTS and value in (_DEFAULTS[key], [])):
            continue
        if key == "remote_properties":
            value = {k: v for k, v in value.items()
                     if k not in _REMOTE_DEFAULTS or v not in (_REMOTE_DEFAULTS[k], [], {})}
            if not value:
                continue
        out[key] = value
    return out


def exported(session: Session, job: Job) -> dict[str, Any]:
    """The job as code: its API document less the store's own state and the defaults."""
    session.flush()
    text = wire.job_json(wire.job_values(job), parent_ids=links.parent_ids(session, job.id),
                         child_ids=None, stats=None, include_stats=False)
    return _strip(json.loads(text))


def _compared(session: Session, job: Job) -> dict[str, Any]:
    """What a body can change: the exported form and the job's children (a body may list
    `dependent_jobs`; an export writes only `parent_jobs`, the same links seen from below)."""
    children = links.child_ids(session, job.id)
    return {**exported(session, job), **({"dependent_jobs": children} if children else {})}


def export_all(session: Session) -> list[dict[str, Any]]:
    """Every job but the config ones, parents before children (then by id)."""
    rows = list(session.scalars(select(Job).where(Job.source.is_distinct_from(SOURCE_CONFIG))
                                .order_by(Job.id)))
    docs = {job.id: exported(session, job) for job in rows}
    out: list[dict[str, Any]] = []
    placed: set[str] = set()
    while len(placed) < len(docs):
        ready = [i for i, d in docs.items() if i not in placed
                 and all(p in placed or p not in docs for p in d.get("parent_jobs") or [])]
        if not ready:  # cannot happen (links have no cycles); keep every job anyway
            ready = [i for i in docs if i not in placed]
        for job_id in ready:
            out.append(docs[job_id])
            placed.add(job_id)
    return out


def dump(bodies: list[dict[str, Any]], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(bodies, indent=2, ensure_ascii=False) + "\n"
    return yaml.safe_dump(bodies, sort_keys=False, allow_unicode=True, width=100)


@dataclass
class Change:
    sign: str  # "+", "~", "-"
    job_id: str
    name: str
    fields: list[tuple[str, Any, Any]] = field(default_factory=list)  # (key, old, new)

    def lines(self) -> list[str]:
        who = f"{self.name} ({self.job_id})" if self.name else self.job_id
        if self.sign == "+":
            return [f"+ {who}: created"]
        if self.sign == "-":
            return [f"- {who}: disabled"]
        return [f"~ {who}: {key}: {_show(old)} -> {_show(new)}"
                for key, old, new in self.fields]


def _show(value: Any) -> str:
    return "(unset)" if value is None else json.dumps(value, ensure_ascii=False)


def _differences(before: dict[str, Any], after: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    keys = [*before, *(k for k in after if k not in before)]
    return [(k, before.get(k), after.get(k)) for k in keys if before.get(k) != after.get(k)]


def _target(session: Session, body: dict[str, Any], decoded: dict[str, Any]) -> Job | None:
    """The job a body means: by its id, else by its name (one job of that name)."""
    job_id = body.get("id")
    if job_id:
        return session.get(Job, str(job_id))
    name = decoded.get("name")
    if not name:
        return None
    found = list(session.scalars(select(Job).where(Job.name == name).limit(2)))
    if len(found) > 1:
        raise ApplyError(f"job named {name!r}: several jobs have this name; give its id")
    return found[0] if found else None


def _decode(body: dict[str, Any]) -> dict[str, Any]:
    try:
        text = json.dumps(body, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise wire.WireError(f"not JSON: {exc}") from None
    return wire.decode_job(text.encode())


def _one(session: Session, body: dict[str, Any], rules: jobs.Rules, now: datetime
         ) -> tuple[str, Change | None]:
    decoded = _decode(body)
    job = _target(session, body, decoded)
    if job is None:
        decoded["source"] = decoded.get("source") or SOURCE_APPLY
        created, _run = start.create(session, decoded, rules, now)
        audit.job_changed(session, APPLIER, "apply", {}, created)
        return created.id, Change("+", created.id, created.name)
    before = _compared(session, job)
    audited = audit.snapshot(job)
    decoded["id"] = job.id  # a body keyed by name replaces the job of that name
    job_id, name = job.id, job.name
    savepoint = session.begin_nested()
    try:
        replaced, _run = start.replace(session, job_id, decoded, rules, now)
        after = _compared(session, replaced)
    except BaseException:
        savepoint.rollback()
        raise
    if after == before:  # the same job: not even a rewrite of its row
        savepoint.rollback()
        return job_id, None
    audit.job_changed(session, APPLIER, "apply", audited, replaced)
    savepoint.commit()
    return job_id, Change("~", job_id, name, _differences(before, after))


@dataclass
class Outcome:
    changes: list[Change]
    refusal: str | None = None  # which body, and the API's message

    @property
    def changed(self) -> bool:
        return bool(self.changes)


def apply_bodies(sessions: sessionmaker[Session], bodies: list[dict[str, Any]],
                 rules: jobs.Rules, now: datetime, *, prune: bool, dry_run: bool) -> Outcome:
    """Make the bodies true in one transaction (rolled back on a refusal or a dry run).
    Runs a change records (a one-off created) stay pending: the beat's sweep sends them."""
    with sessions() as session:
        session.begin()
        _lock(session)
        try:
            changes = _apply_all(session, bodies, rules, now, prune=prune)
        except _Refused as exc:
            session.rollback()
            return Outcome([], str(exc))
        except BaseException:
            session.rollback()
            raise
        if dry_run:
            session.rollback()
        else:
            session.commit()
    return Outcome(changes)


class _Refused(Exception):
    pass


def _lock(session: Session) -> None:
    """One apply at a time: two at once would both create a job keyed by name (PostgreSQL:
    an advisory lock until the commit; SQLite: its write lock)."""
    if bulk.is_postgresql(session):
        session.execute(text(_LOCK))
    else:
        bulk.lock_for_write(session)


def _apply_all(session: Session, bodies: list[dict[str, Any]], rules: jobs.Rules,
               now: datetime, *, prune: bool) -> list[Change]:
    """Every body in order, then the prune (listed first)."""
    changes: list[Change] = []
    named: set[str] = set()
    for number, body in enumerate(bodies, 1):
        name = body.get("name")
        what = f"job {number}" + (f" ({name!r})" if isinstance(name, str) else "")
        try:
            if body.get("id") is not None:
                jobs.check_id(str(body["id"]))
            job_id, change = _one(session, body, rules, now)
        except (JobError, wire.WireError, ApplyError) as exc:
            raise _Refused(f"{what}: {exc}") from None
        named.add(job_id)
        if change is not None:
            changes.append(change)
    pruned: list[Change] = []
    if prune:
        query = select(Job).where(Job.source == SOURCE_APPLY, Job.disabled.is_(False))
        for job in session.scalars(query.order_by(Job.id)).all():
            if job.id not in named:
                pruned.append(Change("-", job.id, job.name))
        for change in pruned:
            job = jobs.get_job(session, change.job_id)
            audited = audit.snapshot(job)
            audit.job_changed(session, APPLIER, "apply", audited,
                              jobs.disable_job(session, change.job_id))
    return [*pruned, *changes]


def read_file(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8") if str(path) != "-" else _stdin()
    except (OSError, UnicodeDecodeError) as exc:
        raise ApplyError(f"{path}: {exc}") from None
    return read_bodies(text, str(path))


def _stdin() -> str:
    import sys

    return sys.stdin.read()
