"""`kala-celery import`: a real Kala's jobs moved into our store (tests/kala_reference.py; the
tests that need the binary skip without it), and the importer's pure parts (the schedule's
progress, the import order, the Decision behind a refusal) directly."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from kala_celery import schedule, wire
from kala_celery.errors import Conflict
from kala_celery.ops import import_kala as importer
from kala_celery.ops.cli import main
from kala_celery.store import db, links
from kala_celery.store import jobs as jobs_module
from kala_celery.store.tables import Job
from tests.kala_reference import Kala
from tests.kala_reference import kala as kala  # the fixture
from tests.processes import free_port, wait_for
from tests.test_beat import soon
from tests.test_worker_runs import finished

T0 = datetime(2030, 1, 1, 9, 0, tzinfo=UTC)
NOW = T0 + timedelta(hours=5, minutes=20)


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def run_import(*args: str) -> Ran:
    """`kala-celery import ARGS` in this process: the real command through click's runner,
    its output captured (no interpreter start-up per call)."""
    result = CliRunner().invoke(main, ["import", *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Ran(result.exit_code, result.stdout, result.stderr)


def run_import_process(*args: str) -> Ran:
    """`python -m kala_celery import ARGS` as its own process (the installed entry point)."""
    done = subprocess.run([sys.executable, "-m", "kala_celery", "import", *args],
                          capture_output=True, text=True, timeout=120)
    return Ran(done.returncode, done.stdout, done.stderr)


# ---------------------------------------------------------------- progress (pure)


def job(schedule_text: str = "", *, next_run_at: datetime | None = None,
        last: datetime | None = None, finished_runs: int = 0, stats: int = 0,
        is_done: bool = False, disabled: bool = False
        ) -> tuple[dict, schedule.Schedule | None]:
    data = {
        "disabled": disabled,
        "schedule": schedule_text,
        "next_run_at": next_run_at or wire.ZERO_DATETIME,
        "metadata": {"last_attempted_run": last or wire.ZERO_DATETIME,
                     "number_of_finished_runs": finished_runs},
        "stats": [{}] * stats if stats else None,
        "is_done": is_done,
    }
    parsed = schedule.parse_schedule(schedule_text) if schedule_text else None
    return data, parsed


HOURLY = "R9/2030-01-01T09:00:00Z/PT1H"  # 10 runs, at 09:00 ... 18:00


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        # Kala's timer after 5 runs, a little late (its drift): the 6th occurrence, 14:00
        (dict(next_run_at=T0 + timedelta(hours=5, seconds=0.3), last=T0 + timedelta(hours=4),
              finished_runs=5, stats=5), (5, False, T0 + timedelta(hours=5))),
        # drift of many runs, or Kala's restart rule (one interval after a restart): nearest
        (dict(next_run_at=T0 + timedelta(hours=5, minutes=29), finished_runs=5),
         (5, False, T0 + timedelta(hours=5))),
        (dict(next_run_at=T0 + timedelta(hours=5, minutes=31), finished_runs=5),
         (5, False, T0 + timedelta(hours=6))),
        # Kala is running the 14:00 occurrence now (attempted at or after its timer): used
        (dict(next_run_at=T0 + timedelta(hours=5), last=T0 + timedelta(hours=5, seconds=1),
              finished_runs=5, stats=5), (6, False, T0 + timedelta(hours=6))),
        # Kala stopped before it fired 14:00: still owed (the beat runs it at once:
        # docs/design.md Decision 5)
        (dict(next_run_at=T0 + timedelta(hours=4), last=T0 + timedelta(hours=3),
              finished_runs=4), (4, False, T0 + timedelta(hours=4))),
        # pruned stats never give runs back; NextKala has no stats at all
        (dict(next_run_at=T0 + timedelta(hours=5), finished_runs=5, stats=2),
         (5, False, T0 + timedelta(hours=5))),
        (dict(next_run_at=T0 + timedelta(hours=5), stats=5), (5, False, T0 + timedelta(hours=5))),
        # repetitions used up, or used up by the run in flight
        (dict(next_run_at=T0 + timedelta(hours=10), finished_runs=10), (10, True, None)),
        (dict(next_run_at=T0 + timedelta(hours=9), last=T0 + timedelta(hours=9),
              finished_runs=9), (10, True, None)),
        # done: Kala's stale next_run_at is not a run in flight
        (dict(next_run_at=T0 + timedelta(hours=9), last=T0 + timedelta(hours=9),
              finished_runs=10), (10, True, None)),
        # disabled: the refused run of Kala's timer (last_attempted_run only) used nothing
        (dict(next_run_at=T0 + timedelta(hours=5), last=T0 + timedelta(hours=5),
              finished_runs=5, disabled=True), (5, False, T0 + timedelta(hours=5))),
        # Kala never armed it: the next occurrence from now
        (dict(finished_runs=0), (0, False, T0 + timedelta(hours=6))),
    ],
)
def test_a_repeating_job_resumes_at_the_occurrence_kala_would_fire(case, expected) -> None:
    data, parsed = job(HOURLY, **case)
    assert importer.progress(data, parsed, NOW) == importer.Progress(*expected)


def test_a_forever_job_and_calendar_steps_keep_their_anchor() -> None:
    data, parsed = job("R/2030-01-31T09:00:00Z/P1M",
                       next_run_at=datetime(2030, 4, 30, 9, 0, 1, tzinfo=UTC), finished_runs=3)
    # month ends clamp (docs/design.md Decision 3): Jan 31, Feb 28, Mar 31, Apr 30
    assert importer.progress(data, parsed, NOW) == importer.Progress(
        3, False, datetime(2030, 4, 30, 9, tzinfo=UTC))
    data, parsed = job("R/9999-12-31T00:00:00Z/P1Y", next_run_at=datetime(
        9999, 12, 31, tzinfo=UTC), last=datetime(9999, 12, 31, 0, 0, 1, tzinfo=UTC))
    assert importer.progress(data, parsed, NOW) == importer.Progress(1, True, None)


def test_r0_is_owed_until_it_ran() -> None:
    start = T0 + timedelta(hours=1)
    owed = importer.progress(*job(f"R0/{wire.format_time(start)}/", next_run_at=start), NOW)
    assert owed == importer.Progress(0, False, start)  # past: the beat runs it at once
    running = job(f"R0/{wire.format_time(start)}/", next_run_at=start, last=start)
    assert importer.progress(*running, NOW) == importer.Progress(1, True, None)
    ran = job(f"R0/{wire.format_time(start)}/", next_run_at=start, finished_runs=1)
    assert importer.progress(*ran, NOW) == importer.Progress(1, True, None)


def test_one_offs_and_children_are_never_armed_and_done_once_they_ran() -> None:
    assert importer.progress(*job(), NOW) == importer.Progress(0, False, None)
    assert importer.progress(*job(finished_runs=1), NOW) == importer.Progress(1, True, None)
    assert importer.progress(*job(is_done=True), NOW) == importer.Progress(0, True, None)
    child, _ = job(HOURLY, finished_runs=2, is_done=True)  # a child's schedule is not used
    assert importer.progress(child, None, NOW) == importer.Progress(2, True, None)


def test_kalas_stats_become_finished_runs_within_the_retention() -> None:
    stats = [
        {"job_id": "j", "ran_at": "2030-01-01T09:00:00.123456789Z", "number_of_retries": 2,
         "success": False, "execution_duration": 1_500_000_000},
        {"job_id": "j", "ran_at": "2030-01-01T09:00:00.123456789Z", "success": True},  # twice
        {"job_id": "j", "ran_at": "2029-01-01T09:00:00Z", "success": True},  # too old
        {"job_id": "j", "ran_at": "yesterday", "success": True},  # unreadable
        {"job_id": "j", "success": True},
        {"job_id": "j", "ran_at": "2030-01-01T10:00:00Z", "success": True,
         "execution_duration": 999},
    ]
    rows = importer.history("j", stats, "parent", T0 - timedelta(days=30))
    assert [(r["state"], r["attempts"], r["trigger"], r["job_id"]) for r in rows] == [
        ("failed", 3, "parent", "j"), ("success", 1, "parent", "j")]
    first, second = rows
    assert first["started_at"] == first["scheduled_for"] == T0 + timedelta(microseconds=123456)
    assert first["finished_at"] == first["started_at"] + timedelta(seconds=1.5)
    assert (first["duration_ns"], second["duration_ns"]) == (1_500_000_000, 999)
    assert first["id"] != second["id"] and second["error"] is None
    assert importer.history("j", None, "schedule", None) == []


# ---------------------------------------------------------------- order and refusals (pure)


def test_parents_come_first_and_each_parent_keeps_kalas_order_of_children() -> None:
    jobs = {
        "a": {"dependent_jobs": ["c", "b"]},
        "b": {"parent_jobs": ["a"], "dependent_jobs": ["d"]},
        "c": {"parent_jobs": ["a"]},
        "d": {},  # linked only from its parent's dependent_jobs (posted by a client)
        "e": {"parent_jobs": ["d", "gone"]},
        "x": {"dependent_jobs": ["y"]},
        "y": {"dependent_jobs": ["x"]},
        "z": {"parent_jobs": ["y"]},
    }
    parents = importer.parents_of(jobs)
    assert parents["d"] == ["b"] and parents["e"] == ["d", "gone"] and parents["x"] == ["y"]
    planned, cyclic = importer.order(jobs, parents)
    assert planned == ["a", "c", "b", "d", "e"]  # depth first, in dependent_jobs order
    assert cyclic == {"x", "y", "z"}


@pytest.mark.parametrize(
    ("reason", "number"),
    [
        ("parent job 'nope' does not exist", 9),
        ("the dependency would create a cycle", 9),
        ("dependent jobs may nest at most 32 levels deep", 9),
        ("remote_properties.url must start with http:// or https://", 12),
        ("id 'all' is reserved by the API's routes", 14),
        ("local jobs are disabled", 16),
        ("type must be 0 (local command) or 1 (remote HTTP call), not 2", 19),
        ("schedule 'R/2030-01-01T00:00:00Z/PT0S': interval must be greater than zero", 23),
        ('TemplateDelimiters must be two tokens separated by one space, e.g. "{{ }}"', 23),
        ("name contains U+0000, which the job store cannot hold", 25),
        ("retries 9223372036854775808 is larger than 9223372036854775807 (the job store's "
         "64-bit integers)", 25),
    ],
)
def test_a_refusal_names_the_decision_behind_it(reason: str, number: int) -> None:
    assert importer.decision_for(reason) == number


def test_a_source_that_is_not_a_job_listing_is_refused_with_the_reason(tmp_path: Path) -> None:
    for body, message in ((b"{", "not JSON"), (b"[]", "not a Kala job listing"),
                          (b'{"jobs": 3}', "not a Kala job listing")):
        with pytest.raises(importer.SourceError, match=message):
            importer.parse_listing(body)
    assert importer.parse_listing(b'{"jobs": null}') == ({}, [])
    found, refused = importer.parse_listing(b'{"jobs": {"k": {"name": "n", "retries": -1}}}')
    assert found == {} and refused[0].job_id == "k" and refused[0].result == importer.REFUSED
    assert "Decision 23" in refused[0].detail
    missing = run_import("--from-file", str(tmp_path / "none.json"), "--db",
                         f"sqlite:///{tmp_path / 'kala.db'}")
    assert missing.returncode == 1 and "cannot read" in missing.stderr
    assert "  import " in CliRunner().invoke(main, ["--help"]).stdout
    both = run_import("--from", "http://x", "--from-file", "f")
    assert both.returncode == 2
    assert "give one of --from URL, --from-file FILE, --from-django-celery-beat" in both.stderr
    away = run_import("--from", f"http://127.0.0.1:{free_port()}", "--db", "sqlite://")
    assert away.returncode == 1 and "cannot read http://127.0.0.1:" in away.stderr
    listing = tmp_path / "empty.json"
    listing.write_text('{"jobs": {}}')
    no_store = run_import("--from-file", str(listing), "--db",
                          f"postgresql+psycopg://kala@127.0.0.1:{free_port()}/kala")
    assert no_store.returncode == 1 and "Traceback" not in no_store.stderr
    assert "connection" in no_store.stderr


def listing_body(**jobs: dict) -> bytes:
    """A Kala `GET /api/v1/job/` body of the given jobs (by id), Kala's defaults filled in."""
    full = {job_id: {"name": job_id, "id": job_id, "command": "true", **body}
            for job_id, body in jobs.items()}
    return json.dumps({"jobs": full}).encode()


def test_batches_keep_chains_refusals_and_order_across_transactions(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(importer, "BATCH", 2)  # every two jobs commit
    start = wire.format_time(NOW + timedelta(days=1))
    body = listing_body(
        p={"schedule": f"R/{start}/PT1H", "next_run_at": start,
           "dependent_jobs": ["c2", "c1"]},
        c1={"parent_jobs": ["p"]}, c2={"parent_jobs": ["p"], "dependent_jobs": ["g"]},
        g={"parent_jobs": ["c2"]},
        bad={"schedule": f"R/{start}/PT0S"}, d={"parent_jobs": ["bad"]},
        x={"dependent_jobs": ["y"]}, y={"dependent_jobs": ["x"]},
        big={"metadata": {"success_count": 2**64 - 1}},  # a Go uint beyond our BIGINT
        daily={"cron": "0 9 * * *", "next_run_at": start},  # from a kala-celery (Decision 18)
    )
    found, undecodable = importer.parse_listing(body)
    assert undecodable == []
    sessions = db.store_for(db_url).sessions
    rules = jobs_module.Rules()
    planned = importer.import_jobs(sessions, found, rules, NOW, dry_run=True)
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0  # nothing written
    outcomes = importer.import_jobs(sessions, found, rules, NOW)
    results = {o.job_id: o.result for o in outcomes}
    assert [o.result for o in planned] == [
        importer.PLANNED if o.result == importer.IMPORTED else o.result for o in outcomes]
    assert [o.job_id for o in outcomes] == [
        "bad", "d", "big", "daily", "p", "c2", "g", "c1", "x", "y"]
    assert results == {"p": "imported", "c1": "imported", "c2": "imported", "g": "imported",
                       "bad": "refused", "d": "refused", "x": "refused", "y": "refused",
                       "big": "refused", "daily": "imported"}
    details = {o.job_id: o.detail for o in outcomes}
    assert details["d"] == "its parent job 'bad' was refused (Decision 9, docs/design.md)"
    assert "cycle" in details["x"] and "Decision 9" in details["x"]
    assert "is larger than 9223372036854775807" in details["big"]  # the limits (Decision 25)
    assert details["big"].endswith("(Decision 25, docs/design.md)")
    with sessions() as session:
        parents, children = links.links_of(session)
        assert parents == {"c1": ["p"], "c2": ["p"], "g": ["c2"]}
        assert children == {"p": ["c2", "c1"], "c2": ["g"]}  # Kala's order of children
        assert session.get(Job, "p").next_run_at == NOW + timedelta(days=1)
        assert session.get(Job, "daily").next_run_at == datetime(2030, 1, 3, 9, tzinfo=UTC)
    with sessions() as session:  # written meanwhile (after the importer looked): a Conflict
        with pytest.raises(Conflict), session.begin_nested():
            jobs_module.import_job(session, {**found["c1"], "parent_jobs": ["p"]}, rules, NOW,
                                   runs_used=0, is_done=False, next_run_at=None)
        assert links.parent_ids(session, "c1") == ["p"]  # the savepoint undid nothing else
    again = importer.import_jobs(sessions, found, rules, NOW)
    assert {o.job_id: o.result for o in again} == {
        **results, "p": "already here", "c1": "already here", "c2": "already here",
        "g": "already here", "daily": "already here"}


# ---------------------------------------------------------------- against the real Kala

FAR = "2031-06-01T09:00:00Z"


def populate(kala: Kala) -> dict[str, str]:
    """A Kala with one job of each kind; returns their ids by name."""
    ids: dict[str, str] = {}
    with kala.client() as http:
        def post(**body: object) -> None:
            response = http.post("/job/", json=body)
            assert response.status_code == 201, response.text
            ids[str(body["name"])] = response.json()["id"]

        post(name="handler", command="true", owner="ops@x", schedule=f"R/{FAR}/PT1H")
        post(name="local", command="echo hi", owner="a@x", schedule=f"R5/{FAR}/P1D",
             retries=2, epsilon="PT5M", resume_at_next_scheduled_time=True,
             on_failure_job=ids["handler"])
        post(name="remote", type=1, schedule=f"R/{FAR}/PT30M",
             remote_properties={"url": "http://127.0.0.1:9/hook", "method": "POST",
                                "body": '{"a": 1}', "headers": {"X-Token": ["t"]},
                                "timeout": 7, "expected_response_codes": [200, 202]})
        post(name="off", command="true", schedule=f"R2/{FAR}/PT1H", disabled=True)
        post(name="parent", command="true", schedule=f"R/{FAR}/PT1H")
        post(name="child", command="true", parent_jobs=[ids["parent"]])
        post(name="grandchild", command="true", parent_jobs=[ids["child"]])
        post(name="sibling", command="true", parent_jobs=[ids["parent"]])
        post(name="zero", command="true", schedule=f"R/{FAR}/PT0S")  # a busy loop: refused
        post(name="templated", command="echo {{.Name}}", TemplateDelimiters="{{ }}",
             schedule=f"R3/{FAR}/PT1H")
        started = http.post(f"/job/start/{ids['templated']}/")  # a manual start uses a run
        assert started.status_code == 204
        post(name="once", command="true")  # a one-off: runs at once
        post(name="fails", command="false", on_failure_job=ids["handler"])  # and so does this
        orphan = http.post("/job/", json={"name": "orphan", "command": "true",
                                          "parent_jobs": ["nope"]})
        assert orphan.status_code == 400  # ...but Kala stored it (docs/kala.md §2.1)
        listing = http.get("/job/").json()["jobs"]
        ids["orphan"] = next(j for j, d in listing.items() if d["name"] == "orphan")
        for name in ("once", "fails"):
            wait_for(lambda name=name: http.get(f"/job/{ids[name]}/").json()["job"]["is_done"],
                     20, f"Kala's one-off {name} to run")
        wait_for(lambda: http.get(f"/job/{ids['handler']}/").json()["job"]["metadata"][
            "success_count"] == 1, 20, "Kala's on-failure job to run")
    return ids


def kala_jobs(kala: Kala) -> dict[str, dict]:
    with kala.client() as http:
        return http.get("/job/").json()["jobs"]


COMPARED_AS_IS = ("name", "id", "command", "owner", "disabled", "dependent_jobs", "parent_jobs",
                  "on_failure_job", "schedule", "retries", "epsilon", "TemplateDelimiters",
                  "resume_at_next_scheduled_time", "metadata", "type", "remote_properties",
                  "stats", "is_done")


def micro(value: object) -> object:
    """Kala's times at our precision: microseconds, the fraction trimmed (docs/design.md
    Decision 13)."""
    if isinstance(value, dict):
        return {key: micro(item) for key, item in value.items()}
    if isinstance(value, list):
        return [micro(item) for item in value]
    if isinstance(value, str):
        return re.sub(r"\.(\d{1,6})\d*Z$",
                      lambda m: ("." + m[1].rstrip("0")).rstrip(".") + "Z", value)
    return value


def test_import_moves_a_real_kala_with_its_ids_fields_links_and_counters(
    kala: Kala, db_url: str, make_api, tmp_path: Path
) -> None:
    ids = populate(kala)
    before = kala_jobs(kala)
    saved = tmp_path / "jobs.json"
    with kala.client() as http:
        saved.write_text(http.get("/job/").text)

    planned = run_import("--from", kala.url, "--db", db_url, "--dry-run")
    assert planned.returncode == 1, planned.stderr  # two refusals
    api = make_api()
    assert api.http.get("/job/").json()["jobs"] == {}  # a dry run writes nothing
    assert "11 to import, 0 already here, 2 refused (dry run: nothing written)" in planned.stdout

    done = run_import_process("--from", kala.url, "--db", db_url)
    assert done.returncode == 1, done.stderr
    assert "13 jobs: 11 imported, 0 already here, 2 refused" in done.stdout
    rows = {line.split()[0]: line for line in done.stdout.splitlines()[1:-1]}
    assert rows.keys() == set(ids.values())
    assert "refused" in rows[ids["zero"]] and "(Decision 23, docs/design.md)" in rows[ids["zero"]]
    assert "parent job 'nope' does not exist (Decision 9" in rows[ids["orphan"]]
    assert planned.stdout.count(" to import ") == 11

    ours = api.http.get("/job/").json()["jobs"]
    assert set(ours) == set(ids.values()) - {ids["zero"], ids["orphan"]}
    for job_id, mine in ours.items():
        theirs = before[job_id]
        for key in COMPARED_AS_IS:
            assert mine[key] == micro(theirs[key]), (theirs["name"], key)
    assert ours[ids["parent"]]["dependent_jobs"] == [ids["child"], ids["sibling"]]
    assert ours[ids["once"]]["metadata"]["success_count"] == 1
    failed = ours[ids["fails"]]["metadata"]
    assert (failed["error_count"], failed["number_of_finished_runs"]) == (1, 1)
    assert ours[ids["handler"]]["metadata"]["number_of_finished_runs"] == 1
    with api.state.sessions() as session:  # R3 with one manual start in Kala: 3 runs left
        assert session.get(Job, ids["templated"]).runs_used == 1
    # The next run is Kala's, on the anchor (Kala's own lands microseconds later)
    for name in ("handler", "local", "remote", "parent", "templated"):
        assert ours[ids[name]]["next_run_at"] == FAR
        assert before[ids[name]]["next_run_at"].startswith(FAR[:-1])
    # disabled (docs/design.md Decision 8), child, one-off: nothing scheduled
    for name in ("off", "child", "once", "fails"):
        assert ours[ids[name]]["next_run_at"] == wire.ZERO_TIME

    again = run_import("--from-file", str(saved), "--db", db_url)
    assert "13 jobs: 0 imported, 11 already here, 2 refused" in again.stdout
    assert api.http.get("/job/").json()["jobs"] == ours  # a second import adds nothing


def test_an_imported_repeating_job_goes_on_running_here_on_its_anchored_occurrence(
    kala: Kala, cluster, tmp_path: Path
) -> None:
    api = cluster.api
    cluster.worker()
    cluster.beat()
    start = soon(2)
    with kala.client() as http:
        response = http.post("/job/", json={"name": "tick", "command": "true",
                                            "schedule": f"R1/{start}/PT6S"})
        job_id = response.json()["id"]
        wait_for(lambda: http.get(f"/job/{job_id}/").json()["job"]["metadata"][
            "success_count"] == 1, 30, "Kala's first run")
        saved = tmp_path / "jobs.json"
        saved.write_text(http.get("/job/").text)
    kala.stop()  # the switch: Kala stops, we take over from its saved state

    done = run_import("--from-file", str(saved), "--db", cluster.env["KALA_DATABASE_URL"])
    assert done.returncode == 0, done.stdout + done.stderr
    kalas, run = finished(api, job_id, count=2, timeout=60)  # Kala's run came with the job
    assert kalas["ran_at"] == micro(json.loads(saved.read_text())["jobs"][job_id]["stats"][0][
        "ran_at"])
    anchored = datetime.fromisoformat(start) + timedelta(seconds=6)
    assert (run["state"], run["trigger"]) == ("success", "schedule")
    assert datetime.fromisoformat(run["scheduled_for"]) == anchored  # not run twice or skipped
    mine = api.job(job_id)
    assert mine["is_done"] and mine["next_run_at"] == wire.ZERO_TIME  # R1: two runs in all
    assert (mine["metadata"]["success_count"], mine["metadata"]["number_of_finished_runs"]) == \
        (2, 2)
