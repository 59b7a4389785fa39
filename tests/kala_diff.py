"""Differential testing against the real Kala (tests/kala_reference.py): the same requests to
Kala and to us, the answers normalised only where they must differ (generated ids, clock
times), then compared.

A scenario may name a difference; each must cite the Decision in docs/design.md that allows
it (`Differ(path, kala, ours, "Decision N")`), and both sides' values are asserted, so an
allowed difference that goes away (or changes) fails too.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from kala_celery.config import Settings
from tests import kala_reference
from tests.live import LOOPBACK_ALLOW, Api, start_api
from tests.processes import Command, wait_for

ZERO = "0001-01-01T00:00:00Z"
KALA_REFUSAL = "Error occurred when initializing the job"
TIME_KEYS = ("last_success", "last_error", "last_attempted_run", "ran_at")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def at(seconds: float) -> str:
    """A whole second at least `seconds` from now, as a schedule's start."""
    t = datetime.now(UTC) + timedelta(seconds=seconds)
    t = t.replace(microsecond=0) + timedelta(seconds=1)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Differ:
    """An allowed difference at `path` (dotted, e.g. "metadata.is_done" or "status"): Kala
    answers `kala`, we answer `ours`, because of `decision` ("Decision 8")."""

    path: str
    kala: Any
    ours: Any
    decision: str

    def __post_init__(self) -> None:
        assert re.fullmatch(r"Decision \d+", self.decision), self.decision


@dataclass
class Side:
    """One server under test: its /api/v1 client and the labels of the ids it gave."""

    name: str
    http: httpx.Client
    labels: dict[str, str] = field(default_factory=dict)  # id -> label
    ids: dict[str, str] = field(default_factory=dict)  # label -> id

    def post(self, body: Any, label: str | None = None) -> httpx.Response:
        """POST a job (a dict with `$label` ids resolved, or raw bytes)."""
        content = body if isinstance(body, bytes) else json.dumps(self.resolve(body)).encode()
        response = self.http.post("/job/", content=content)
        if label and response.status_code == 201:
            self.name_id(response.json()["id"], label)
        return response

    def name_id(self, job_id: str, label: str) -> None:
        self.labels[job_id] = label
        self.ids[label] = job_id

    def resolve(self, value: Any) -> Any:
        """`$label` strings (also in lists and nested dicts) become this side's ids."""
        if isinstance(value, str) and value.startswith("$"):
            return self.ids.get(value[1:], value[1:])
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        if isinstance(value, dict):
            return {k: self.resolve(v) for k, v in value.items()}
        return value

    def job(self, label: str) -> dict:
        response = self.http.get(f"/job/{self.ids[label]}/")
        assert response.status_code == 200, (self.name, label, response.text)
        return response.json()["job"]

    def finished(self, label: str) -> int:
        """Runs of the job that have ended: Kala's count (number_of_finished_runs); ours also
        counts runs that ended `skipped` (they have no Kala counter)."""
        if self.name == "kala":
            return self.job(label)["metadata"]["number_of_finished_runs"]
        runs = self.http.get(f"/job/{self.ids[label]}/executions/").json()["job_stats"] or []
        return sum(r["state"] in ("success", "failed", "skipped", "lost") for r in runs)

    def normal(self, value: Any) -> Any:
        """Ids -> labels, clock times -> "set" / "zero", durations dropped (they differ by
        nature), next_run_at to the second (Kala lands microseconds after the instant)."""
        if isinstance(value, dict):
            out = {}
            for key, item in value.items():
                if key in TIME_KEYS:
                    out[key] = "zero" if item == ZERO else "set"
                elif key == "execution_duration":
                    out[key] = "ns" if isinstance(item, int) and item >= 0 else item
                elif key == "next_run_at":
                    out[key] = "zero" if item == ZERO else item[:19]
                else:
                    out[key] = self.normal(item)
            return out
        if isinstance(value, list):
            return [self.normal(v) for v in value]
        if isinstance(value, str):
            if value in self.labels:
                return "$" + self.labels[value]
            return _UUID.sub(lambda m: "$" + self.labels.get(m.group(0), "uuid"), value)
        return value


def _path_get(doc: Any, path: str) -> Any:
    for part in path.split("."):
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def _path_drop(doc: Any, path: str) -> None:
    *head, last = path.split(".")
    for part in head:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    if isinstance(doc, list):
        doc[int(last)] = "<differs>"
    else:
        doc[last] = "<differs>"


def compare(kala: Any, ours: Any, differ: tuple[Differ, ...] = (), what: str = "") -> None:
    """Equal after the allowed differences; each allowed difference must hold as written."""
    kala, ours = json.loads(json.dumps(kala)), json.loads(json.dumps(ours))
    for d in differ:
        assert _path_get(kala, d.path) == d.kala, f"{what} Kala's {d.path} ({d.decision})"
        assert _path_get(ours, d.path) == d.ours, f"{what} our {d.path} ({d.decision})"
        _path_drop(kala, d.path)
        _path_drop(ours, d.path)
    assert ours == kala, f"{what}: ours differs from Kala's"


def done_is_zero(doc: dict) -> dict:
    """Decision 8: once a job is done we show next_run_at as the zero time; Kala keeps the
    last value it armed (stale). Done jobs' next_run_at is left out of the comparison."""
    if doc.get("is_done"):
        doc = {**doc, "next_run_at": "<done: Decision 8>"}
    return doc


# ---------------------------------------------------------------- servers


def need_kala() -> None:
    if kala_reference.binary() is None:
        pytest.skip("the real Kala is not here (KALA_REFERENCE_BIN unset, no ../shared/reference)")


@dataclass
class Pair:
    """Kala and us, side by side."""

    kala: Side
    ours: Side
    api: Api

    @property
    def sides(self) -> tuple[Side, Side]:
        return self.kala, self.ours

    def post(self, body: Any, label: str | None = None) -> tuple[httpx.Response, httpx.Response]:
        return self.kala.post(body, label), self.ours.post(body, label)

    def jobs(self, *labels: str) -> tuple[dict, dict]:
        """The jobs (by label), normalised, of each side."""
        return ({lb: done_is_zero(self.kala.normal(self.kala.job(lb))) for lb in labels},
                {lb: done_is_zero(self.ours.normal(self.ours.job(lb))) for lb in labels})

    def settle(self, waits: list[tuple[str, int, int]], timeout: float = 60) -> None:
        """Wait until each (label, Kala's finished runs, our ended runs) is reached."""
        for label, kala_n, ours_n in waits:
            for side, n in ((self.kala, kala_n), (self.ours, ours_n)):
                if n:
                    wait_for(lambda side=side, n=n, label=label: side.finished(label) >= n,
                             timeout, f"{n} ended run(s) of {label} on {side.name}")

    def request(self, method: str, path: str, **kw: Any) -> tuple[httpx.Response, httpx.Response]:
        """The same request to both, with `$label` in the path resolved per side."""
        def one(side: Side) -> httpx.Response:
            real = re.sub(r"\$([\w-]+)", lambda m: side.ids.get(m.group(1), m.group(1)), path)
            return side.http.request(method, real, **kw)

        return one(self.kala), one(self.ours)


@dataclass
class Cluster:
    """Our API with a real `celery worker` and `celery beat` on Redis and SQLite."""

    api: Api
    processes: list[Command]

    def stop(self) -> None:
        for command in self.processes:
            command.stop(15)
        self.api.close()


def start_ours(base: Path, redis_url: str | None = None) -> Cluster:
    """Our API on SQLite; with `redis_url`, also a worker (4 processes) and a beat."""
    db = f"sqlite:///{base / 'kala.db'}"
    settings = Settings(database_url=db, data_dir=base, start_wait=30,
                        broker_url=redis_url or "", remote_allow=LOOPBACK_ALLOW)
    api = start_api(settings)
    processes: list[Command] = []
    if redis_url:
        import redis

        redis.Redis.from_url(redis_url).flushdb()
        env = {"KALA_DATABASE_URL": db, "KALA_BROKER_URL": redis_url, "KALA_DATA_DIR": str(base),
               "KALA_REMOTE_ALLOW": LOOPBACK_ALLOW}
        worker = Command([sys.executable, "-m", "celery", "-A", "kala_celery", "worker", "-c", "4",
                          "-l", "info", "--without-gossip", "--without-mingle"],
                         base / "worker.log", env)
        beat = Command([sys.executable, "-m", "celery", "-A", "kala_celery", "beat", "-S", "kala",
                        "-l", "info", "--pidfile="], base / "beat.log", env)
        processes = [worker, beat]
        wait_for(lambda: " ready." in worker.output() or worker.proc.poll() is not None, 60,
                 "celery worker ready")
        wait_for(lambda: "beat: Starting" in beat.output() or beat.proc.poll() is not None, 60,
                 "celery beat started")
        for command in processes:
            assert command.proc.poll() is None, command.output()
    return Cluster(api, processes)


def pair_of(redis_url: str | None = None) -> Iterator[Pair]:
    """A fresh Kala and a fresh us (with a worker and a beat when `redis_url` is given)."""
    need_kala()
    base = Path(tempfile.mkdtemp(prefix="kala-diff-"))
    kala = kala_reference.start_kala()
    try:
        ours = start_ours(base, redis_url)
    except BaseException:
        kala.stop()
        raise
    kala_http = httpx.Client(base_url=kala.api, timeout=60)
    pair = Pair(Side("kala", kala_http), Side("ours", ours.api.http), ours.api)
    try:
        yield pair
    finally:
        kala_http.close()
        kala.stop()
        ours.stop()
        shutil.rmtree(base, ignore_errors=True)

