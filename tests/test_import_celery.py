"""`kala-celery import --from-django-celery-beat` and `--from-redbeat`: the real schedulers'
own stores filled through their own code (django-celery-beat's models and migrations in a
process of its own, tests/django_beat_fill.py; RedBeat's RedBeatSchedulerEntry on a real
Redis), imported into both job stores, read back through the API, and run by a real worker of
a Celery app that has the task (tests/own_celery_app.py). The mapping's pure parts directly."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from celery import Celery
from celery.schedules import crontab, schedule
from click.testing import CliRunner
from redbeat import RedBeatSchedulerEntry
from redbeat.decoder import RedBeatJSONEncoder
from redbeat.schedules import rrule

from kala_celery.ops import beat_entries, import_redbeat
from kala_celery.ops.beat_entries import Entry, Mapped, to_job
from kala_celery.ops.cli import main
from kala_celery.ops.import_table import REFUSED
from kala_celery.schedule import exact_duration
from kala_celery.store.jobs import Rules
from tests.live import Api
from tests.processes import free_port, wait_for
from tests.test_worker_runs import finished

pytestmark = pytest.mark.timeout(240)

NOW = datetime(2030, 1, 7, 10, 47, tzinfo=UTC)
RULES = Rules()


# ---------------------------------------------------------------- the mapping (pure)


@pytest.mark.parametrize(("name", "expected"), [
    ("nightly", "dcb-nightly"),
    ("reports.daily:eu@v2", "dcb-reports.daily:eu@v2"),
    ("nightly report", "dcb-nightly-report-"),  # a space: the safe part and a hash
    ("日報", "dcb-"),
    ("x" * 200, "dcb-" + "x" * 80 + "-"),
])
def test_a_job_id_comes_from_the_name_and_is_stable(name: str, expected: str) -> None:
    ident = beat_entries.job_id("dcb-", name)
    assert ident.startswith(expected) and ident == beat_entries.job_id("dcb-", name)
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._~:@-]*", ident) and len(ident) <= 128
    if ident != expected:
        assert beat_entries.job_id("dcb-", name + " ") != ident  # the hash tells them apart


@pytest.mark.parametrize(("seconds", "text"), [
    (30, "PT30S"), (60, "PT1M"), (3600, "PT1H"), (5400, "PT1H30M"), (2 * 86400, "PT48H"),
    (3661, "PT1H1M1S"),
])
def test_an_interval_is_an_exact_iso_duration(seconds: int, text: str) -> None:
    assert exact_duration(timedelta(seconds=seconds)) == text


def entry(kind: str, **fields: object) -> Entry:
    return Entry("dcb-", "t", "app.tasks.t", kind, **fields)  # type: ignore[arg-type]


def mapped(e: Entry) -> Mapped:
    result = to_job(e, RULES, NOW)
    assert isinstance(result, Mapped), result
    return result


def test_an_interval_keeps_its_cadence_from_the_last_run() -> None:
    last = datetime(2030, 1, 7, 10, 0, 5, tzinfo=UTC)
    job = mapped(entry("interval", every=timedelta(minutes=30), last_run_at=last))
    assert job.data["schedule"] == "R/2030-01-07T10:00:05Z/PT30M"
    assert job.state.next_run_at == datetime(2030, 1, 7, 11, 0, 5, tzinfo=UTC)
    # a last run at (or, clocks apart, after) the import is used: the next is after it
    job = mapped(entry("interval", every=timedelta(minutes=30), last_run_at=NOW))
    assert job.state.next_run_at == NOW + timedelta(minutes=30)
    # never run: from its start time, or from when it was saved
    start = NOW + timedelta(hours=2)
    job = mapped(entry("interval", every=timedelta(hours=1), start_time=start))
    assert job.state.next_run_at == start
    job = mapped(entry("interval", every=timedelta(hours=1), start_time=start,
                       last_run_at=NOW - timedelta(minutes=50)))  # ran, then held back
    assert job.state.next_run_at == NOW + timedelta(hours=2, minutes=10)
    saved = datetime(2030, 1, 7, 9, 15, tzinfo=UTC)
    job = mapped(entry("interval", every=timedelta(hours=1), saved_at=saved))
    assert job.state.next_run_at == datetime(2030, 1, 7, 11, 15, tzinfo=UTC)


def test_a_cron_keeps_its_zone_and_runs_at_its_next_occurrence() -> None:
    job = mapped(entry("crontab", cron="30 4 * * 1-5", timezone="Europe/Berlin"))
    assert (job.data["cron"], job.data["timezone"]) == ("30 4 * * 1-5", "Europe/Berlin")
    assert job.state.next_run_at == datetime(2030, 1, 8, 3, 30, tzinfo=UTC)  # CET = UTC+1


def test_one_offs_keep_their_time_and_are_refused_once_they_ran() -> None:
    past = NOW - timedelta(minutes=5)
    job = mapped(entry("clocked", clocked_time=past, one_off=True))
    assert (job.data["schedule"], job.state.next_run_at) == ("R0/2030-01-07T10:42:00Z/", past)
    job = mapped(entry("interval", every=timedelta(hours=1), one_off=True,
                       saved_at=NOW - timedelta(minutes=10)))
    assert job.data["schedule"] == "R0/2030-01-07T11:37:00Z/"  # one run: Kala's R0
    job = mapped(entry("crontab", cron="0 12 * * *", one_off=True))
    assert job.data["schedule"] == "R0/2030-01-07T12:00:00Z/" and "cron" not in job.data
    ran = to_job(entry("clocked", clocked_time=past, total_run_count=1), RULES, NOW)
    assert isinstance(ran, beat_entries.Outcome) and ran.result == REFUSED
    assert "ran already" in ran.detail


@pytest.mark.parametrize(("e", "reason"), [
    (entry("interval", every=timedelta(milliseconds=500)), "ticks in whole seconds"),
    (entry("interval", every=timedelta(0)), "never falls due"),
    (entry("solar (sunset)"), "a solar (sunset) schedule has no cron or ISO 8601 equivalent"),
    (entry("rrule"), "a rrule schedule has no cron"),
    (entry("interval", every=timedelta(hours=1), problem="its args are not JSON (x)"),
     "its args are not JSON"),
])
def test_what_cannot_be_kept_is_refused_with_the_reason(e: Entry, reason: str) -> None:
    result = to_job(e, RULES, NOW)
    assert isinstance(result, beat_entries.Outcome) and result.result == REFUSED
    assert reason in result.detail and "docs/design.md)" in result.detail


def test_expiry_disables_or_is_noted_and_lost_options_are_named() -> None:
    job = mapped(entry("interval", every=timedelta(hours=1), expires=NOW - timedelta(days=1),
                       dropped=("priority 5",)))
    assert job.data["disabled"] is True
    assert job.note == "expired 2030-01-06T10:47:00Z: imported disabled; not kept: priority 5"
    job = mapped(entry("interval", every=timedelta(hours=1), expires=NOW + timedelta(days=1)))
    assert job.data["disabled"] is False and "no end here: disable it then" in job.note


def test_redbeats_own_json_reads_as_entries() -> None:
    def encoded(obj: object) -> bytes:
        return json.dumps(obj, cls=RedBeatJSONEncoder).encode()

    last = datetime(2030, 1, 7, 10, 0, tzinfo=UTC)
    definition = encoded({"name": "n", "task": "t", "schedule": crontab(minute="*/5"),
                          "args": [1], "kwargs": {"a": 2}, "options": {"queue": "q",
                                                                        "priority": 3},
                          "enabled": False})
    e = import_redbeat.entry(definition, encoded({"last_run_at": last}), 1.0, "Asia/Tokyo")
    assert (e.kind, e.cron, e.timezone, e.queue, e.enabled) == (
        "crontab", "*/5 * * * *", "Asia/Tokyo", "q", False)
    assert (e.args, e.kwargs, e.last_run_at, e.dropped) == ([1], {"a": 2}, last,
                                                            ("priority 3",))
    definition = encoded({"name": "n", "task": "t", "schedule": schedule(timedelta(hours=2))})
    e = import_redbeat.entry(definition, None, None, None)
    assert (e.kind, e.every) == ("interval", timedelta(hours=2))
    e = import_redbeat.entry(b"{nope", None, None, None, "broken")  # named by its key
    assert (e.name, e.problem is not None) == ("broken", True)
    assert "its JSON is unreadable" in to_job(e, RULES, NOW).detail  # type: ignore[union-attr]


def test_the_create_paths_checks_refuse_with_their_own_reason(tmp_path: Path) -> None:
    """Through import_job on a real (SQLite) store: what the API refuses is refused, the
    rest is written, a second run finds it here."""
    from kala_celery.store.db import make_engine, make_sessionmaker
    from kala_celery.store.schema import ensure

    engine = make_engine(f"sqlite:///{tmp_path / 'kala.db'}")
    ensure(engine)
    sessions = make_sessionmaker(engine)
    entries = [
        Entry("dcb-", "fine", "app.tasks.fine", "crontab", cron="0 * * * *"),
        Entry("dcb-", "bad cron", "app.tasks.t", "crontab", cron="61 * * * *"),
        Entry("dcb-", "bad task", "not a task name", "interval", every=timedelta(hours=1)),
        Entry("dcb-", "ours", "kala.run", "interval", every=timedelta(hours=1)),
        Entry("dcb-", "bad queue", "app.tasks.t", "interval", every=timedelta(hours=1),
              queue="no spaces allowed"),
    ]
    first = beat_entries.import_entries(sessions, entries, RULES, NOW)
    by_name = {o.name: o for o in first}
    assert by_name["fine"].result == "imported"
    assert by_name["fine"].detail == "next run 2030-01-07T11:00:00Z"
    for name, words in [("bad cron", "(Decision 18, docs/design.md)"),
                        ("bad task", "is not a task name"), ("ours", "kala-celery's own"),
                        ("bad queue", "(Decision 17, docs/design.md)")]:
        assert by_name[name].result == REFUSED and words in by_name[name].detail, by_name[name]
    again = beat_entries.import_entries(sessions, entries, RULES, NOW, dry_run=True)
    assert [o.result for o in again] == ["already here", *[REFUSED] * 4]
    engine.dispose()


def test_a_source_that_cannot_be_read_is_named_and_nothing_is_made(tmp_path: Path) -> None:
    store = ["--db", f"sqlite:///{tmp_path / 'kala.db'}"]
    code, _ = run_import("--from-django-celery-beat", f"sqlite:///{tmp_path / 'none.db'}",
                         *store)
    assert code == 1 and not (tmp_path / "none.db").exists()  # SQLite would have made it
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    result = CliRunner().invoke(main, ["import", "--from-django-celery-beat",
                                       f"sqlite:///{empty}", *store])
    assert result.exit_code == 1
    assert "no django-celery-beat table django_celery_beat_periodictask" in result.stderr
    result = CliRunner().invoke(main, ["import", "--from-redbeat",
                                       f"redis://127.0.0.1:{free_port()}/0", *store])
    assert result.exit_code == 1 and "cannot read RedBeat's entries from" in result.stderr
    result = CliRunner().invoke(main, ["import", "--from-redbeat", "redis://x",
                                       "--from-django-celery-beat", "sqlite://", *store])
    assert result.exit_code == 2 and "give one of" in result.stderr


# ---------------------------------------------------------------- the real stores


def run_import(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["import", *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout


def rows(table: str) -> dict[str, tuple[str, str]]:
    """The report's rows: job id -> (result, detail)."""
    found = {}
    for line in table.splitlines()[1:-1]:
        m = re.match(r"(\S+)\s+.*?\s{2,}(imported|to import|already here|refused)\s*(.*)$",
                     line)
        assert m, line
        found[m.group(1)] = (m.group(2), m.group(3))
    return found


def fill_django(url: str, soon: float) -> None:
    done = subprocess.run([sys.executable, "-m", "tests.django_beat_fill", url, str(soon)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.fixture(params=["sqlite", "postgresql"])
def django_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database for a Django project, as the URL a user would give the import."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'django.db'}"
        return
    server = request.getfixturevalue("postgres_server")
    name = f"django_{uuid.uuid4().hex[:12]}"
    yield server.create_database(name).replace("postgresql+psycopg://", "postgresql://")
    server.drop_database(name)


NIGHTLY = beat_entries.job_id("dcb-", "nightly report")


def test_django_celery_beat_tasks_import_once_as_celery_task_jobs(
    django_db: str, db_url: str, api: Api
) -> None:
    fill_django(django_db, 20)  # every-30s ran 10 s ago there
    source = ["--from-django-celery-beat", django_db, "--db", db_url]
    code, out = run_import(*source, "--dry-run")
    assert code == 1 and out.endswith("9 jobs: 6 to import, 0 already here, 3 refused "
                                      "(dry run: nothing written)\n"), out
    assert api.http.get("/job/").json()["jobs"] == {}

    code, out = run_import(*source)
    assert code == 1 and "9 jobs: 6 imported, 0 already here, 3 refused" in out, out
    report = rows(out)
    assert report["dcb-at-sunrise"][0] == REFUSED
    assert "solar (sunrise) schedule has no cron or ISO 8601" in report["dcb-at-sunrise"][1]
    assert "ran already" in report["dcb-clocked-done"][1]
    bad = beat_entries.job_id("dcb-", "bad args")
    assert report[bad][1].startswith("its args are not JSON")
    assert report["dcb-expired"] == ("imported", report["dcb-expired"][1])
    assert "imported disabled" in report["dcb-expired"][1]
    assert "not kept: priority 5" in report["dcb-every-30s"][1]

    nightly = api.job(NIGHTLY)
    assert (nightly["name"], nightly["type"], nightly["cron"], nightly["timezone"],
            nightly["queue"]) == ("nightly report", 2, "30 4 * * 1-5", "Europe/Berlin",
                                  "theirs")
    assert nightly["celery_task"] == {"name": "tests.own_celery_app.add", "args": [2, 3],
                                      "kwargs": {"scale": 10}}
    every = api.job("dcb-every-30s")
    anchor = re.fullmatch(r"R/(\S+)/PT30S", every["schedule"])
    assert anchor, every["schedule"]
    # the cadence goes on from the last run there: the next run is 30 s after it
    assert (datetime.fromisoformat(every["next_run_at"])
            == datetime.fromisoformat(anchor.group(1)) + timedelta(seconds=30))
    assert every["disabled"] is False
    clocked = api.job("dcb-clocked-soon")
    assert clocked["next_run_at"] == clocked["schedule"][3:-1]  # R0/<its time>/
    once = api.job("dcb-once-in-an-hour")
    assert once["schedule"].startswith("R0/")
    assert api.job("dcb-paused")["disabled"] is True
    assert api.job("dcb-expired")["disabled"] is True
    for refused_id in ("dcb-at-sunrise", "dcb-clocked-done", bad):
        assert api.http.get(f"/job/{refused_id}/").status_code == 404

    code, out = run_import(*source)  # again: nothing doubles
    assert code == 1 and "9 jobs: 0 imported, 6 already here, 3 refused" in out, out
    assert len(api.http.get("/job/").json()["jobs"]) == 6



def redbeat_app(url: str) -> Celery:
    app = Celery("redbeat_source", broker=url)
    app.conf.redbeat_redis_url = url
    return app


def fill_redbeat(url: str, soon: float, prefix: str = "redbeat:") -> None:
    app = redbeat_app(url)
    app.conf.redbeat_key_prefix = prefix
    now = datetime.now(UTC)
    add = "tests.own_celery_app.add"
    for name, sched, args, extra in [
        ("weekday-report", crontab(minute="15", hour="6", day_of_week="mon-fri"), [2, 3], {}),
        ("every-30s", schedule(timedelta(seconds=30)), [5, 5],
         {"last_run_at": now + timedelta(seconds=soon - 30)}),
        ("hourly", timedelta(hours=1), [1, 2], {"enabled": False}),
        ("every-5-minutes-rrule", rrule("MINUTELY", interval=5), [], {}),
    ]:
        RedBeatSchedulerEntry(name, add, sched, args=args, options={"queue": "theirs"},
                              app=app, **extra).save()


def redbeat_url_of(redis_url: str) -> str:
    return redis_url.rsplit("/", 1)[0] + "/3"  # not the broker's database


def test_redbeat_entries_import_once_as_celery_task_jobs(
    redis_url: str, db_url: str, api: Api
) -> None:
    import redis

    url = redbeat_url_of(redis_url)
    redis.Redis.from_url(url).flushdb()
    fill_redbeat(url, 20, prefix="beat:")
    source = ["--from-redbeat", url, "--redbeat-prefix", "beat:", "--redbeat-timezone",
              "America/New_York", "--db", db_url]
    code, out = run_import("--from-redbeat", url, "--db", db_url, "--dry-run")
    assert code == 0 and "0 jobs: 0 to import" in out, out  # nothing under redbeat:
    code, out = run_import(*source)
    assert code == 1 and "4 jobs: 3 imported, 0 already here, 1 refused" in out, out
    report = rows(out)
    assert "a rrule schedule has no cron or ISO 8601" in report["redbeat-every-5-minutes-rrule"][1]
    weekday = api.job("redbeat-weekday-report")
    assert (weekday["cron"], weekday["timezone"], weekday["queue"], weekday["type"]) == (
        "15 6 * * mon-fri", "America/New_York", "theirs", 2)
    assert weekday["celery_task"] == {"name": "tests.own_celery_app.add", "args": [2, 3],
                                      "kwargs": {}}
    every = api.job("redbeat-every-30s")
    anchor = re.fullmatch(r"R/(\S+)/PT30S", every["schedule"])
    assert anchor, every["schedule"]
    assert (datetime.fromisoformat(every["next_run_at"])
            == datetime.fromisoformat(anchor.group(1)) + timedelta(seconds=30))
    hourly = api.job("redbeat-hourly")
    assert (hourly["schedule"].endswith("/PT1H"), hourly["disabled"]) == (True, True)
    code, out = run_import(*source)
    assert "4 jobs: 0 imported, 3 already here, 1 refused" in out, out


def test_imported_jobs_run_on_their_next_occurrence_on_a_worker_that_has_the_task(
    cluster, tmp_path: Path, redis_url: str
) -> None:
    cluster.worker("-Q", "theirs", app="tests.own_celery_app",
                   extra_env={"THEIR_WORKER": "theirs"})
    cluster.beat()
    import redis

    db = cluster.env["KALA_DATABASE_URL"]
    django_db = f"sqlite:///{tmp_path / 'django.db'}"
    url = redbeat_url_of(redis_url)
    redis.Redis.from_url(url).flushdb()
    fill_django(django_db, 8)
    fill_redbeat(url, 8)
    assert run_import("--from-django-celery-beat", django_db, "--db", db)[0] == 1
    assert run_import("--from-redbeat", url, "--db", db)[0] == 1  # the rrule is refused
    api = cluster.api
    planned = {job_id: api.job(job_id)["next_run_at"] for job_id in
               ("dcb-clocked-soon", "dcb-every-30s", "redbeat-every-30s")}
    for job_id, total in [("dcb-clocked-soon", 8), ("dcb-every-30s", 2),
                          ("redbeat-every-30s", 10)]:
        [run] = finished(api, job_id)
        assert (run["state"], run["trigger"]) == ("success", "schedule"), run
        assert json.loads(run["output"]) == {"sum": total, "worker": "theirs"}
        assert run["scheduled_for"] == planned[job_id]  # the occurrence the import worked out
    # the interval goes on 30 s later, on its cadence; the clocked one is done
    wait_for(lambda: api.job("dcb-clocked-soon")["is_done"], 30, "the one-off done")
    assert api.job("dcb-every-30s")["next_run_at"] > planned["dcb-every-30s"]
