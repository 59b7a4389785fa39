"""The runner's SQL, in process (no Celery): every state transition of a run and Kala's counters
on SQLite and PostgreSQL, duplicate deliveries, crashes, and how few statements a run costs."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from kala_celery.config import Settings
from kala_celery.runs import dispatch
from kala_celery.runs.attempts import NotYet, abandon, claim
from kala_celery.runs.heartbeats import worker_id
from kala_celery.runs.outcome import Outcome
from kala_celery.store import jobs
from kala_celery.store.db import Store, store_for
from kala_celery.store.tables import Job, Run, SupersededAttempt, utcnow
from kala_celery.tasks.runner import Delivery, execute_run
from tests.sent import statements_sent

FOREVER = "R/2099-01-01T00:00:00Z/PT1H"
OK = Outcome(True, "fine", None, 0)
BAD = Outcome(False, "broken", "exit status 3: broken", 3)


@pytest.fixture
def store(db_url: str) -> Store:
    return store_for(db_url)


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return Settings(database_url=db_url, data_dir=tmp_path)


class Attempts:
    """Stands in for the command: returns the given outcomes in turn and counts the calls."""

    def __init__(self, *outcomes: Outcome) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0

    def __call__(self, job: Job, settings: Settings, run_env: dict) -> Outcome:
        self.calls += 1
        self.env = run_env
        return self.outcomes.pop(0)


def create(store: Store, **data: object) -> str:
    data.setdefault("name", "j")
    data.setdefault("command", "true")
    with store.sessions.begin() as session:
        job, _ = jobs.create_job(session, dict(data), jobs.Rules(), utcnow())
        return job.id


def record(store: Store, job_id: str, trigger: str = "manual", when=None) -> str:
    now = utcnow()
    with store.sessions.begin() as session:
        [run_id] = dispatch.record_trees(session, [(job_id, when or now)], trigger=trigger,
                                         now=now)
        return run_id


def deliver(store: Store, settings: Settings, run_id: str, attempt: Attempts,
            hostname: str = "host", later: timedelta = timedelta()) -> Delivery:
    """A delivery of `run_id` handled `later` than now (by the clock the worker reads)."""
    return execute_run(store.sessions, run_id, hostname=hostname, settings=settings,
                       attempt=attempt, clock=lambda: utcnow() + later)


def run_row(store: Store, run_id: str) -> Run:
    with store.sessions() as session:
        return session.get(Run, run_id)


def job_row(store: Store, job_id: str) -> Job:
    with store.sessions() as session:
        return session.get(Job, job_id)


@pytest.fixture
def statements(store: Store) -> Iterator[list[str]]:
    with statements_sent(store.engine) as seen:
        yield seen


def test_a_successful_run_is_few_statements_and_a_duplicate_changes_nothing(
    store, settings, statements
) -> None:
    postgresql = store.engine.dialect.name == "postgresql"
    job_id = create(store, schedule=FOREVER)
    run_id = record(store, job_id)
    statements.clear()
    assert deliver(store, settings, run_id, Attempts(OK)) == Delivery(owned=True, ended="success")
    # PostgreSQL: the claim and the end are one statement each (the run and its job in one
    # WITH ... UPDATE, outside a transaction block); SQLite: two UPDATEs each, in a transaction
    assert len(statements) == (2 if postgresql else 4), statements
    if postgresql:
        assert [s.split()[0] for s in statements] == ["WITH", "WITH"], statements
    run = run_row(store, run_id)
    assert (run.state, run.attempts, run.output, run.exit_code) == ("success", 1, "fine", 0)
    assert run.started_at and run.finished_at and run.duration_ns >= 0
    assert run.worker == worker_id("host")
    job = job_row(store, job_id)
    assert (job.success_count, job.number_of_finished_runs, job.error_count) == (1, 1, 0)
    assert job.last_attempted_run and job.last_success and job.is_done is False

    statements.clear()
    again = Attempts(OK)
    assert deliver(store, settings, run_id, again) == Delivery()
    assert again.calls == 0
    # the missed claim (PostgreSQL: in one statement, then in the transaction) and a look at why
    assert len(statements) <= (3 if postgresql else 2), statements
    assert job_row(store, job_id).success_count == 1
    assert run_row(store, run_id).attempts == 1


def test_the_claim_hands_the_worker_its_job_as_stored_with_the_attempt_time(store,
                                                                          settings) -> None:
    """The job a claim returns is the stored row, with the last_attempted_run the first
    attempt set; a second attempt (a redelivery after a retry delay) leaves that time."""
    job_id = create(store, schedule=FOREVER, command="echo claimed", retries=1)
    run_id = record(store, job_id)
    first = utcnow()
    claimed = claim(store.engine, run_id, worker_id("host"), "host", first)
    assert not isinstance(claimed, NotYet) and claimed is not None
    run, job, parent_state = claimed
    stored = job_row(store, job_id)
    for column in Job.__table__.columns:
        if column.key != "last_attempted_run":
            assert getattr(job, column.key) == getattr(stored, column.key), column.key
    assert job.last_attempted_run == stored.last_attempted_run
    assert abs((job.last_attempted_run - first).total_seconds()) < 0.001
    assert (run.id, run.attempts, parent_state) == (run_id, 1, None)
    with store.engine.begin() as conn:  # released for a later attempt, due now
        conn.execute(update(Run).where(Run.id == run_id).values(state="sent", sent_at=first))
    again = claim(store.engine, run_id, worker_id("host"), "host", first + timedelta(seconds=5))
    assert not isinstance(again, NotYet) and again is not None
    assert again[0].attempts == 2 and again[1].last_attempted_run == job.last_attempted_run


def test_done_after_the_last_run_of_a_one_off_or_a_finite_schedule(store, settings) -> None:
    one_off = create(store, schedule=FOREVER)
    with store.sessions.begin() as session:  # as a one-off: no schedule
        session.execute(update(Job).where(Job.id == one_off).values(schedule=""))
    deliver(store, settings, record(store, one_off), Attempts(OK))
    assert job_row(store, one_off).is_done is True

    finite = create(store, schedule="R1/2099-01-01T00:00:00Z/PT1H")  # two runs in all
    first = record(store, finite)
    deliver(store, settings, first, Attempts(BAD))  # a failed run is finished too
    assert job_row(store, finite).is_done is False
    with store.sessions.begin() as session:  # the beat: runs used up, nothing next
        session.execute(update(Job).where(Job.id == finite).values(next_run_at=None))
    deliver(store, settings, record(store, finite), Attempts(OK))
    job = job_row(store, finite)
    assert (job.is_done, job.success_count, job.number_of_finished_runs) == (True, 1, 2)


def test_a_child_runs_after_its_parent_succeeded_and_is_skipped_after_a_failure(
    store, settings
) -> None:
    parent = create(store, schedule=FOREVER)
    child = create(store, schedule=FOREVER, parent_jobs=[parent])  # schedule unused
    now = utcnow()
    with store.sessions.begin() as session:
        [root] = dispatch.record_trees(session, [(parent, now)], trigger="manual", now=now)
        [child_run] = session.scalars(select(Run.id).where(Run.parent_run_id == root)).all()
    deliver(store, settings, root, Attempts(OK))
    deliver(store, settings, child_run, Attempts(OK))
    assert run_row(store, child_run).state == "success"
    assert job_row(store, child).is_done is True  # a child has run
    assert job_row(store, parent).is_done is False
    after_success = job_row(store, child)

    with store.sessions.begin() as session:
        [root] = dispatch.record_trees(session, [(parent, now)], trigger="manual", now=now)
        [child_run] = session.scalars(select(Run.id).where(Run.parent_run_id == root)).all()
    deliver(store, settings, root, Attempts(BAD))
    never = Attempts()
    deliver(store, settings, child_run, never)
    run = run_row(store, child_run)
    assert never.calls == 0
    assert (run.state, run.attempts) == ("skipped", 0)
    assert f"parent run {root} ended failed" in run.error
    assert job_row(store, child).number_of_finished_runs == 1  # only the first run
    # Kala does not run the child at all: its metadata stays exactly as it was
    kept = ("last_attempted_run", "success_count", "last_success", "error_count", "last_error",
            "number_of_finished_runs", "is_done")
    assert {k: getattr(job_row(store, child), k) for k in kept} == {
        k: getattr(after_success, k) for k in kept}


def test_a_child_of_a_failed_parent_keeps_kalas_untouched_metadata(store, settings) -> None:
    parent = create(store, schedule=FOREVER)
    child = create(store, schedule=FOREVER, parent_jobs=[parent])
    now = utcnow()
    with store.sessions.begin() as session:
        [root] = dispatch.record_trees(session, [(parent, now)], trigger="manual", now=now)
        [child_run] = session.scalars(select(Run.id).where(Run.parent_run_id == root)).all()
    deliver(store, settings, root, Attempts(BAD))
    deliver(store, settings, child_run, Attempts())
    job = job_row(store, child)
    assert run_row(store, child_run).state == "skipped"
    assert (job.last_attempted_run, job.is_done, job.error_count, job.success_count,
            job.number_of_finished_runs, job.last_error) == (None, False, 0, 0, 0, None)


def test_retries_count_every_failed_attempt_then_the_on_failure_job_runs(
    store, settings
) -> None:
    handler = create(store, name="handler", schedule=FOREVER)
    job_id = create(store, schedule=FOREVER, retries=2, on_failure_job=handler)
    run_id = record(store, job_id)
    attempts = Attempts(BAD, BAD, BAD)
    delivery = deliver(store, settings, run_id, attempts)
    assert attempts.calls == 3
    run = run_row(store, run_id)
    assert (run.state, run.attempts, run.error, run.exit_code) == (
        "failed", 3, "exit status 3: broken", 3)
    job = job_row(store, job_id)
    assert (job.error_count, job.success_count, job.number_of_finished_runs) == (3, 0, 1)
    assert job.last_error is not None
    [follow] = delivery.publish
    assert (delivery.ended, delivery.error) == ("failed", "exit status 3: broken")  # the task
    follow_run = run_row(store, follow)
    assert (follow_run.job_id, follow_run.trigger, follow_run.state) == (
        handler, "on_failure", "pending")
    # a retry that succeeds
    flaky = create(store, schedule=FOREVER, retries=3, on_failure_job=handler)
    flaky_run = record(store, flaky)
    delivery = deliver(store, settings, flaky_run, Attempts(BAD, OK))
    assert delivery == Delivery(owned=True, ended="success")
    assert run_row(store, flaky_run).attempts == 2
    job = job_row(store, flaky)
    assert (job.error_count, job.success_count, job.number_of_finished_runs) == (1, 1, 1)


def test_a_retry_delay_releases_the_run_and_the_redelivery_makes_the_next_attempt(
    store, settings
) -> None:
    job_id = create(store, schedule=FOREVER, retries=2, retry_delay="PT10S", retry_backoff=True)
    run_id = record(store, job_id)
    assert deliver(store, settings, run_id, Attempts(BAD)) == Delivery(retry_in=10.0, owned=True)
    run = run_row(store, run_id)
    assert (run.state, run.attempts, run.error) == ("sent", 1, "exit status 3: broken")
    assert job_row(store, job_id).error_count == 1
    # A delivery before the next attempt is due (a countdown that ran on a faster clock)
    # starts nothing and comes back when it is due by the database's clock (Decision 27).
    never = Attempts()
    early = deliver(store, settings, run_id, never)
    assert early.owned and 9.0 < early.retry_in <= 10.0 and never.calls == 0
    assert (run_row(store, run_id).state, run_row(store, run_id).attempts) == ("sent", 1)
    assert deliver(store, settings, run_id, Attempts(BAD), later=timedelta(seconds=10)
                   ) == Delivery(retry_in=20.0, owned=True)
    assert deliver(store, settings, run_id, Attempts(OK), later=timedelta(seconds=30)
                   ) == Delivery(owned=True, ended="success")
    run = run_row(store, run_id)
    assert (run.state, run.attempts) == ("success", 3)
    job = job_row(store, job_id)
    assert (job.error_count, job.success_count, job.number_of_finished_runs) == (2, 1, 1)


def test_epsilon_skips_a_late_run_and_ends_the_retries(store, settings) -> None:
    job_id = create(store, schedule=FOREVER, epsilon="PT1S", retries=5)
    late = record(store, job_id, trigger="schedule", when=utcnow() - timedelta(seconds=5))
    never = Attempts()
    deliver(store, settings, late, never)
    run = run_row(store, late)
    assert never.calls == 0
    assert (run.state, run.attempts) == ("skipped", 0) and "epsilon window" in run.error
    job = job_row(store, job_id)
    assert (job.error_count, job.number_of_finished_runs) == (0, 0)
    assert job.last_attempted_run is not None

    # released for a delayed retry, redelivered after the window: failed, not attempted
    delayed = create(store, schedule=FOREVER, epsilon="PT1S", retries=5, retry_delay="PT1S")
    run_id = record(store, delayed, trigger="schedule", when=utcnow() - timedelta(seconds=0.9))
    assert deliver(store, settings, run_id, Attempts(BAD)).retry_in == 1.0
    deliver(store, settings, run_id, never, later=timedelta(seconds=5))  # a late redelivery
    run = run_row(store, run_id)
    assert never.calls == 0
    assert (run.state, run.attempts) == ("failed", 1)
    assert run.error.startswith("exit status 3: broken; epsilon window ended")
    job = job_row(store, delayed)
    assert (job.error_count, job.number_of_finished_runs) == (1, 1)


def test_a_disabled_job_is_skipped_but_its_attempted_time_is_recorded(store, settings) -> None:
    job_id = create(store, schedule=FOREVER)
    run_id = record(store, job_id)
    with store.sessions.begin() as session:
        session.execute(update(Job).where(Job.id == job_id).values(disabled=True))
    never = Attempts()
    deliver(store, settings, run_id, never)
    run = run_row(store, run_id)
    assert never.calls == 0 and (run.state, run.attempts, run.error) == (
        "skipped", 0, "job is disabled")
    job = job_row(store, job_id)
    assert job.last_attempted_run is not None and job.number_of_finished_runs == 0


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def start_as_dead_worker(store: Store, run_id: str) -> None:
    with store.sessions.begin() as session:
        session.execute(update(Run).where(Run.id == run_id).values(
            state="started", worker=f"host/{dead_pid()}", attempts=1, started_at=utcnow(),
            attempt_at=utcnow()))


def test_a_run_whose_worker_died_here_fails_that_attempt(store, settings) -> None:
    job_id = create(store, schedule=FOREVER)
    run_id = record(store, job_id)
    start_as_dead_worker(store, run_id)
    never = Attempts()
    deliver(store, settings, run_id, never)
    run = run_row(store, run_id)
    assert never.calls == 0 and (run.state, run.attempts) == ("lost", 1)
    assert "died during attempt 1" in run.error
    job = job_row(store, job_id)
    assert (job.error_count, job.number_of_finished_runs) == (1, 1)

    retried = create(store, schedule=FOREVER, retries=1)
    run_id = record(store, retried)
    start_as_dead_worker(store, run_id)
    deliver(store, settings, run_id, Attempts(OK))
    assert (run_row(store, run_id).state, run_row(store, run_id).attempts) == ("success", 2)
    job = job_row(store, retried)
    assert (job.error_count, job.success_count) == (1, 1)

    alive = create(store, schedule=FOREVER)  # started by a live process: not ours to take
    run_id = record(store, alive)
    with store.sessions.begin() as session:
        session.execute(update(Run).where(Run.id == run_id).values(
            state="started", worker=worker_id("host"), attempts=1))
    deliver(store, settings, run_id, never)
    assert run_row(store, run_id).state == "started" and never.calls == 0


def test_abandon_gives_the_run_back_or_ends_it_lost(store, settings) -> None:
    handler = create(store, name="handler", schedule=FOREVER)
    job_id = create(store, schedule=FOREVER, retries=1, on_failure_job=handler)
    run_id = record(store, job_id)
    start_as_dead_worker(store, run_id)
    assert abandon(store.sessions, run_id, settings, utcnow(), "gone") == [run_id]
    run = run_row(store, run_id)
    assert (run.state, run.error, run.attempts) == ("pending", "gone", 1)
    assert job_row(store, job_id).error_count == 1
    assert abandon(store.sessions, run_id, settings, utcnow(), "gone") == []  # not started
    with store.sessions.begin() as session:
        session.execute(update(Run).where(Run.id == run_id).values(state="started", attempts=2))
    [follow] = abandon(store.sessions, run_id, settings, utcnow(), "gone again")
    run = run_row(store, run_id)
    assert (run.state, run.error) == ("lost", "gone again")
    job = job_row(store, job_id)
    assert (job.error_count, job.number_of_finished_runs) == (2, 1)
    assert run_row(store, follow).job_id == handler
    assert abandon(store.sessions, run_id, settings, utcnow(), "x") == []


def test_a_run_taken_away_mid_attempt_records_nothing_more(store, settings) -> None:
    job_id = create(store, schedule=FOREVER, retries=3)
    run_id = record(store, job_id)

    def swept(job: Job, settings: Settings, run_env: dict) -> Outcome:  # the sweep ends it
        with store.sessions.begin() as session:
            session.execute(update(Run).where(Run.id == run_id).values(state="lost"))
        return BAD

    assert deliver(store, settings, run_id, swept) == Delivery()
    job = job_row(store, job_id)
    assert (job.error_count, job.number_of_finished_runs) == (0, 0)
    assert run_row(store, run_id).state == "lost"


class CutOff:
    """A worker's command during which its worker is cut off from the database for longer
    than KALA_WORKER_TIMEOUT: the sweep takes the run back and `then` (another delivery)
    runs the next attempt to its end before this command's outcome `outcome` comes back."""

    def __init__(self, store: Store, settings: Settings, then: Callable[[str], Delivery],
                 outcome: Outcome) -> None:
        self.store, self.settings, self.then, self.outcome = store, settings, then, outcome
        self.newer: Delivery | None = None

    def __call__(self, job: Job, settings: Settings, run_env: dict) -> Outcome:
        run_id = run_env["KALA_RUN_ID"]
        assert abandon(self.store.sessions, run_id, self.settings, utcnow(),
                       "worker silent for over 60 s (worker lost)") == [run_id]
        self.newer = self.then(run_id)
        return self.outcome


def superseded(store: Store, run_id: str) -> list[tuple]:
    with store.engine.connect() as conn:
        return [tuple(row) for row in conn.execute(
            select(SupersededAttempt.attempt, SupersededAttempt.worker, SupersededAttempt.state,
                   SupersededAttempt.exit_code, SupersededAttempt.error)
            .where(SupersededAttempt.run_id == run_id))]


@pytest.mark.parametrize("second_worker", ["other-host", "host"])
def test_a_late_outcome_never_overwrites_the_newer_attempt(store, settings,
                                                           second_worker: str) -> None:
    """Decision 28: the cut-off worker's failure comes back after another worker's attempt
    succeeded: the run keeps the newer attempt's success, the late failure is kept on its
    own attempt. "host": the redelivery reached the same worker process (a threads pool),
    whose name alone would not tell the attempts apart."""
    job_id = create(store, schedule=FOREVER, retries=1)
    run_id = record(store, job_id)
    cut_off = CutOff(store, settings, lambda rid: deliver(
        store, settings, rid, Attempts(OK), hostname=second_worker), BAD)
    assert deliver(store, settings, run_id, cut_off) == Delivery()  # nothing owned, nothing sent
    assert cut_off.newer == Delivery(owned=True, ended="success")
    run = run_row(store, run_id)
    assert (run.state, run.attempts, run.exit_code, run.error) == ("success", 2, 0, None)
    assert run.worker == worker_id(second_worker)
    assert superseded(store, run_id) == [
        (1, worker_id("host"), "failed", 3, "exit status 3: broken")]
    job = job_row(store, job_id)  # the late failure counts nothing on the job either
    assert (job.success_count, job.number_of_finished_runs) == (1, 1)


def test_a_late_release_for_a_retry_changes_nothing(store, settings) -> None:
    """The cut-off worker's failed attempt would release the run for a delayed retry: the
    sweep ended the run meanwhile (lost: no attempts left), so the release changes nothing and
    the failure is kept on its attempt."""
    job_id = create(store, schedule=FOREVER, retries=2, retry_delay="PT5S")
    run_id = record(store, job_id)
    first = Attempts(BAD)

    def sweep_ends_it(job: Job, settings_: Settings, run_env: dict) -> Outcome:
        with store.sessions.begin() as session:  # as if no attempts were left
            session.execute(update(Job).where(Job.id == job_id).values(retries=0))
        assert abandon(store.sessions, run_id, settings, utcnow(), "worker lost") == []
        return first(job, settings_, run_env)

    assert deliver(store, settings, run_id, sweep_ends_it) == Delivery()
    run = run_row(store, run_id)
    assert (run.state, run.attempts, run.error) == ("lost", 1, "worker lost")
    assert superseded(store, run_id) == [(1, worker_id("host"), "failed", 3,
                                          "exit status 3: broken")]
