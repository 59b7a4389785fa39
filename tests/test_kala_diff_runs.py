"""Differential: jobs that run, on the real Kala and on us (a real `celery worker` and
`celery beat` on Redis and SQLite). Every scenario is set up on both sides at the start of the
module, so they all run at once; each test then waits for its own scenario on both sides and
compares the jobs' metadata (counts, which times are set), `is_done`, stats and links.
Differences are only those a Decision allows, and the scenario names it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from tests.kala_diff import Differ, Pair, at, compare, need_kala, pair_of

pytestmark = pytest.mark.timeout(240)


@dataclass(frozen=True)
class Scenario:
    setup: Callable[[Pair, str], None]
    waits: tuple[tuple[str, int, int], ...]  # (role, Kala's finished runs, our ended runs)
    roles: tuple[str, ...]
    differ: tuple[Differ, ...] = ()


SCENARIOS: dict[str, Scenario] = {}


def scenario(waits: list[tuple[str, int, int]], roles: tuple[str, ...] = ("j",),
             differ: tuple[Differ, ...] = ()) -> Callable:
    def register(setup: Callable[[Pair, str], None]) -> Callable:
        name = setup.__name__.removeprefix("s_").replace("_", "-")
        SCENARIOS[name] = Scenario(setup, tuple(waits), roles, differ)
        return setup
    return register


def job(pair: Pair, name: str, role: str, **body: object) -> None:
    """Create the job on both sides; `$role` values name jobs of the same scenario."""
    body = {k: (f"${name}-{v[1:]}" if isinstance(v, str) and v.startswith("$") else
                [f"${name}-{x[1:]}" for x in v] if isinstance(v, list) else v)
            for k, v in body.items()}
    kala, ours = pair.post({"name": f"{name}-{role}", **body}, f"{name}-{role}")
    assert (kala.status_code, ours.status_code) == (201, 201), (kala.text, ours.text)


def start(pair: Pair, name: str, role: str) -> tuple[int, int]:
    kala, ours = pair.request("POST", f"/job/start/${name}-{role}/")
    return kala.status_code, ours.status_code


# ---------------------------------------------------------------- one-off jobs

ONE_OFFS: dict[str, dict] = {  # each runs once at creation; its one run is compared
    "oneoff-success": {"command": "true"},
    "oneoff-failure-with-retries": {"command": "false", "retries": 2},
    "oneoff-exit-status-and-output": {"command": "bash -c 'echo out; echo err >&2; exit 3'"},
    "oneoff-blank-command-fails-each-run": {"command": "   ", "retries": 1},
    "oneoff-bad-delimiters-fail-each-run": {"command": "true", "TemplateDelimiters": "{{"},
    "oneoff-three-delimiters-fail": {"command": "true", "TemplateDelimiters": "a b c"},
    "oneoff-template-renders": {"command": "test {{.Name}} = oneoff-template-renders-j",
                                "TemplateDelimiters": "{{ }}"},
    "oneoff-unknown-template-field-fails": {"command": "echo {{.Nope}}",
                                            "TemplateDelimiters": "{{ }}"},
    "oneoff-garbage-epsilon-is-ignored": {"command": "true", "epsilon": "soon", "retries": 1},
    "oneoff-unknown-executable": {"command": "no-such-binary-kala-diff"},
    "oneoff-unbalanced-quote": {"command": "echo 'x"},
    "oneoff-retry-succeeds-second-time": {
        "retries": 3, "TemplateDelimiters": "{{ }}",
        "command": "bash -c 'test -e /tmp/kala-diff-{{.Id}} || "
                   "{ touch /tmp/kala-diff-{{.Id}}; exit 1; }'"},
}
for _name, _body in ONE_OFFS.items():
    SCENARIOS[_name] = Scenario(
        lambda pair, n, body=_body: job(pair, n, "j", **body), (("j", 1, 1),), ("j",))


# ---------------------------------------------------------------- schedules

SCHEDULED: dict[str, tuple[int, dict]] = {  # runs on each side; "{soon}": 2 s ahead
    "r0-runs-once-and-is-done": (1, {"command": "true", "schedule": "R0/{soon}/"}),
    "r1-runs-twice": (2, {"command": "true", "schedule": "R1/{soon}/PT1S"}),
    "r2-zero-interval-runs-three-times": (3, {"command": "true", "schedule": "R2/{soon}/PT0S"}),
    "r-minus-5-runs-once": (1, {"command": "true", "schedule": "R-5/{soon}/PT1S"}),
    "failing-r1-counts-every-attempt": (2, {"command": "false", "retries": 1,
                                            "schedule": "R1/{soon}/PT1S"}),
    # Kala's TestJobEpsilon, slower: attempts of 2 s, a 3 s window -> 2 attempts
    "epsilon-bounds-the-retries": (1, {"command": "bash -c 'sleep 2; false'", "retries": 200,
                                       "epsilon": "PT3S", "schedule": "R0/{soon}/"}),
}
for _name, (_runs, _body) in SCHEDULED.items():
    SCENARIOS[_name] = Scenario(
        lambda pair, n, body=_body: job(pair, n, "j", **{
            **body, "schedule": body["schedule"].format(soon=at(2))}),
        (("j", _runs, _runs),), ("j",))


# ---------------------------------------------------------------- manual starts


@scenario([("j", 1, 1)])
def s_manual_start_uses_one_of_r1(pair: Pair, n: str) -> None:
    job(pair, n, "j", command="true", schedule=f"R1/{at(3600)}/PT1H")
    assert start(pair, n, "j") == (204, 204)


@scenario([("j", 1, 1)])
def s_manual_start_uses_up_r0(pair: Pair, n: str) -> None:
    job(pair, n, "j", command="true", schedule=f"R0/{at(3600)}/")
    assert start(pair, n, "j") == (204, 204)


@scenario([("j", 1, 1)])
def s_manual_start_that_fails(pair: Pair, n: str) -> None:
    job(pair, n, "j", command="false", retries=1, schedule=f"R/{at(3600)}/PT1H")
    assert start(pair, n, "j") == (204, 204)


@scenario([], differ=(
    Differ("j.metadata.last_attempted_run", "set", "zero", "Decision 8"),
    Differ("j.is_done", True, False, "Decision 8"),
    Differ("j.next_run_at", "<done: Decision 8>", "zero", "Decision 8"),
))
def s_start_of_a_disabled_job(pair: Pair, n: str) -> None:
    job(pair, n, "j", command="true", schedule=f"R/{at(3600)}/PT1H")
    kala, ours = pair.request("POST", f"/job/disable/${n}-j/")
    assert (kala.status_code, ours.status_code) == (204, 204)
    kala, ours = start(pair, n, "j")
    compare({"status": kala}, {"status": ours}, (Differ("status", 204, 409, "Decision 8"),),
            "start of a disabled job")


# ---------------------------------------------------------------- dependents, on failure


@scenario([("p", 1, 1), ("c", 1, 1)], ("p", "c"))
def s_child_runs_after_its_parent(pair: Pair, n: str) -> None:
    job(pair, n, "p", command="true", schedule=f"R0/{at(3)}/")
    job(pair, n, "c", command="true", parent_jobs=["$p"])


@scenario([("p", 1, 1), ("c", 0, 1), ("g", 0, 1)], ("p", "c", "g"))
def s_parent_fails_children_untouched(pair: Pair, n: str) -> None:
    job(pair, n, "p", command="false", retries=1, schedule=f"R0/{at(3)}/")
    job(pair, n, "c", command="true", retries=2, parent_jobs=["$p"])
    job(pair, n, "g", command="true", parent_jobs=["$c"])


@scenario([("p", 1, 1), ("c", 1, 1), ("g", 0, 1)], ("p", "c", "g"))
def s_chain_stops_at_a_failing_child(pair: Pair, n: str) -> None:
    job(pair, n, "p", command="true", schedule=f"R0/{at(3)}/")
    job(pair, n, "c", command="false", parent_jobs=["$p"])
    job(pair, n, "g", command="true", parent_jobs=["$c"])


@scenario([("p", 1, 1), ("a", 1, 1), ("aa", 1, 1), ("b", 1, 1)], ("p", "a", "aa", "b"))
def s_siblings_and_grandchildren_all_run(pair: Pair, n: str) -> None:
    job(pair, n, "p", command="true", schedule=f"R0/{at(3)}/")
    job(pair, n, "a", command="true", parent_jobs=["$p"])
    job(pair, n, "aa", command="true", parent_jobs=["$a"])
    job(pair, n, "b", command="true", parent_jobs=["$p"])


@scenario([("p", 1, 1), ("a", 1, 1), ("b", 1, 1)], ("p", "a", "b"))
def s_a_failing_child_does_not_stop_its_sibling(pair: Pair, n: str) -> None:
    job(pair, n, "p", command="true", schedule=f"R0/{at(3)}/")
    job(pair, n, "a", command="false", parent_jobs=["$p"])
    job(pair, n, "b", command="true", parent_jobs=["$p"])


@scenario([("p", 2, 2), ("c", 2, 2)], ("p", "c"))
def s_a_child_runs_after_every_parent_run(pair: Pair, n: str) -> None:
    job(pair, n, "p", command="true", schedule=f"R1/{at(3)}/PT1S")
    job(pair, n, "c", command="true", parent_jobs=["$p"])


@scenario([("p", 1, 1), ("h", 1, 0), ("c", 0, 1)], ("p", "c", "h"), differ=(
    # the refused run of a disabled job starts no on-failure job here
    Differ("h.metadata", {"success_count": 1, "last_success": "set", "error_count": 0,
                          "last_error": "zero", "last_attempted_run": "set",
                          "number_of_finished_runs": 1},
           {"success_count": 0, "last_success": "zero", "error_count": 0, "last_error": "zero",
            "last_attempted_run": "zero", "number_of_finished_runs": 0}, "Decision 8"),
    Differ("h.stats", [{"job_id": "$a-disabled-child-is-refused-h", "ran_at": "set",
                        "number_of_retries": 0, "success": True, "execution_duration": "ns"}],
           None, "Decision 8"),
))
def s_a_disabled_child_is_refused(pair: Pair, n: str) -> None:
    job(pair, n, "h", command="true", schedule=f"R/{at(3600)}/PT1H")
    job(pair, n, "p", command="true", schedule=f"R0/{at(3)}/")
    job(pair, n, "c", command="true", parent_jobs=["$p"], on_failure_job="$h")
    kala, ours = pair.request("POST", f"/job/disable/${n}-c/")
    assert (kala.status_code, ours.status_code) == (204, 204)


@scenario([("j", 1, 1), ("h", 1, 1)], ("j", "h"))
def s_on_failure_job_runs_after_a_failure(pair: Pair, n: str) -> None:
    job(pair, n, "h", command="true", schedule=f"R/{at(3600)}/PT1H")
    job(pair, n, "j", command="false", on_failure_job="$h", schedule=f"R0/{at(2)}/")


@scenario([("j", 1, 1)], ("j", "h"))
def s_on_failure_job_not_run_after_a_success(pair: Pair, n: str) -> None:
    job(pair, n, "h", command="true", schedule=f"R/{at(3600)}/PT1H")
    job(pair, n, "j", command="true", on_failure_job="$h", schedule=f"R0/{at(2)}/")


@scenario([("j", 1, 1)])
def s_unknown_on_failure_job_is_ignored(pair: Pair, n: str) -> None:
    job(pair, n, "j", command="false", on_failure_job="no-such-job")


# ---------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def launched(request: pytest.FixtureRequest) -> Iterator[Pair]:
    need_kala()  # before starting Redis
    for pair in pair_of(request.getfixturevalue("redis_server").url):
        for name, each in SCENARIOS.items():
            each.setup(pair, name)
        yield pair


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario_ends_as_on_kala(launched: Pair, name: str) -> None:
    each = SCENARIOS[name]
    launched.settle([(f"{name}-{role}", k, o) for role, k, o in each.waits], timeout=90)
    kala, ours = launched.jobs(*(f"{name}-{role}" for role in each.roles))
    strip = {f"{name}-{role}": role for role in each.roles}
    kala = {strip[k]: v for k, v in kala.items()}
    ours = {strip[k]: v for k, v in ours.items()}
    compare(kala, ours, each.differ, name)


def test_job_stats_of_a_failed_run_match(launched: Pair) -> None:
    launched.settle([("oneoff-failure-with-retries-j", 1, 1)], timeout=90)
    kala, ours = launched.request("GET", "/job/stats/$oneoff-failure-with-retries-j/")
    assert (kala.status_code, ours.status_code) == (200, 200)
    compare(launched.kala.normal(kala.json()), launched.ours.normal(ours.json()),
            what="job_stats")


def test_app_stats_match_once_every_scenario_ended(launched: Pair) -> None:
    for name, each in SCENARIOS.items():
        launched.settle([(f"{name}-{role}", k, o) for role, k, o in each.waits], timeout=90)
    kala, ours = launched.request("GET", "/stats/")
    keys = ("jobs", "disabled_jobs", "active_jobs", "success_count", "error_count",
            "last_attempted_run")
    kala_stats, ours_stats = kala.json()["Stats"], ours.json()["Stats"]
    # Decision 8: Kala also ran the on-failure job of the refused disabled child
    extra = ours_stats["success_count"] + 1
    compare({k: launched.kala.normal({k: kala_stats[k]})[k] for k in keys},
            {k: launched.ours.normal({k: ours_stats[k]})[k] for k in keys},
            (Differ("success_count", extra, extra - 1, "Decision 8"),), "/stats/")
