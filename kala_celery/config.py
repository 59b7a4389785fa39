"""One Settings object built from the environment (KALA_*). Nothing else reads os.environ."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path

from kala_celery.schedule import ScheduleError, parse_plain_duration

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(ValueError):
    """A KALA_* setting has a value we cannot use."""


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name} must be true or false, not {raw!r}")


def _number(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, not {raw!r}") from None
    if value < 0:
        raise ConfigError(f"{name} must not be negative")
    return value


POOLS = ("prefork", "threads")
THREAD_SLOTS = 32  # `serve`'s default threads-pool size: runs of 32 jobs at once


def _choice(name: str, raw: str, choices: tuple[str, ...]) -> str:
    value = raw.strip().lower()
    if value and value not in choices:  # empty: the default
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, not {raw!r}")
    return value


def _count(name: str, raw: str) -> int:
    text = raw.strip()
    if not text.isdigit():
        raise ConfigError(f"{name} must be a whole number (0: one per CPU), not {raw!r}")
    return int(text)


def _duration(name: str, raw: str) -> str:
    try:
        if parse_plain_duration(raw).total_seconds() <= 0:
            raise ConfigError(f"{name} must be a positive ISO 8601 duration, not {raw!r}")
    except ScheduleError as exc:
        raise ConfigError(f"{name} must be an ISO 8601 duration such as PT30S: {exc}") from None
    return raw


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("kala-data")
    database_url: str = ""  # empty: SQLite file in data_dir
    broker_url: str = ""  # empty: kombu's SQLAlchemy transport on SQLite in data_dir
    api_token: str | None = None
    timezone: str = "UTC"
    start_wait: float = 30.0
    allow_shell: bool = True
    run_retention: str = "P30D"
    default_owner: str = ""
    stats_in_job: int = field(default=100)  # most recent runs shown in a job's "stats"
    # A run `sent` this long that no worker took is published again (its message was lost).
    redeliver_after: str = "PT30S"
    # A worker process whose heartbeat is this old is dead: its started runs are retried or
    # end `lost`. It writes one every sixth of this.
    worker_timeout: str = "PT30S"
    # Celery's task-sent event per published run: doubles the cost of a publish; Flower sees
    # a run from the worker's task-received event without it (it then skips "PENDING").
    sent_events: bool = False
    # Celery's task events from workers (received, started, succeeded …), which Flower reads.
    # Off, as in Celery: Flower turns them on in every worker while it runs (its
    # enable_events); on, they cost about a quarter of a worker's CPU per run on Redis.
    task_events: bool = False
    # Seconds a worker waits between polls of a SQL broker when nothing wakes it: on the
    # embedded default each publish wakes it at once (broker.py), so this is a backstop; on
    # another SQL broker it is the delay before a run is seen (kombu's default is 1 s).
    broker_poll_interval: float = 0.25
    # `serve`'s worker: Celery pool ("": threads, on every broker: its runs mostly wait on
    # their command and on the database) and slots (0: 32 threads, or one prefork process
    # per CPU).
    worker_pool: str = ""
    worker_concurrency: int = 0

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir.resolve() / 'kala.db'}"

    @property
    def broker(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{self.data_dir.resolve() / 'broker.db'}"

    def to_env(self) -> dict[str, str]:
        """The KALA_* variables that give another process these settings."""
        env = {
            "KALA_DATA_DIR": str(self.data_dir),
            "KALA_DATABASE_URL": self.db_url,
            "KALA_BROKER_URL": self.broker,
            "KALA_TIMEZONE": self.timezone,
            "KALA_START_WAIT": str(self.start_wait),
            "KALA_ALLOW_SHELL": str(self.allow_shell).lower(),
            "KALA_RUN_RETENTION": self.run_retention,
            "KALA_DEFAULT_OWNER": self.default_owner,
            "KALA_REDELIVER_AFTER": self.redeliver_after,
            "KALA_WORKER_TIMEOUT": self.worker_timeout,
            "KALA_SENT_EVENTS": str(self.sent_events).lower(),
            "KALA_TASK_EVENTS": str(self.task_events).lower(),
            "KALA_BROKER_POLL_INTERVAL": str(self.broker_poll_interval),
            "KALA_WORKER_POOL": self.worker_pool,
            "KALA_WORKER_CONCURRENCY": str(self.worker_concurrency),
        }
        if self.api_token:
            env["KALA_API_TOKEN"] = self.api_token
        return env

    @property
    def embedded_broker(self) -> bool:
        return self.broker.startswith("sqla+sqlite:///")

    @property
    def serve_pool(self) -> str:
        return self.worker_pool or "threads"

    @property
    def serve_concurrency(self) -> int | None:
        if self.worker_concurrency:
            return self.worker_concurrency
        return THREAD_SLOTS if self.serve_pool == "threads" else None

    @property
    def redeliver_delay(self) -> timedelta:
        return parse_plain_duration(self.redeliver_after)

    @property
    def worker_silence(self) -> timedelta:
        return parse_plain_duration(self.worker_timeout)

    def with_overrides(self, **changes: object) -> Settings:
        """Return a copy with the given fields replaced (CLI flags win over the environment)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        kw: dict[str, object] = {}
        if "KALA_DATA_DIR" in env:
            kw["data_dir"] = Path(env["KALA_DATA_DIR"])
        if "KALA_DATABASE_URL" in env:
            kw["database_url"] = env["KALA_DATABASE_URL"]
        if "KALA_BROKER_URL" in env:
            kw["broker_url"] = env["KALA_BROKER_URL"]
        if env.get("KALA_API_TOKEN"):
            kw["api_token"] = env["KALA_API_TOKEN"]
        if "KALA_TIMEZONE" in env:
            kw["timezone"] = env["KALA_TIMEZONE"] or "UTC"
        if "KALA_START_WAIT" in env:
            kw["start_wait"] = _number("KALA_START_WAIT", env["KALA_START_WAIT"])
        if "KALA_ALLOW_SHELL" in env:
            kw["allow_shell"] = _bool("KALA_ALLOW_SHELL", env["KALA_ALLOW_SHELL"])
        if "KALA_RUN_RETENTION" in env:
            kw["run_retention"] = env["KALA_RUN_RETENTION"]
        for name in ("redeliver_after", "worker_timeout"):
            key = f"KALA_{name.upper()}"
            if key in env:
                kw[name] = _duration(key, env[key])
        if "KALA_SENT_EVENTS" in env:
            kw["sent_events"] = _bool("KALA_SENT_EVENTS", env["KALA_SENT_EVENTS"])
        if "KALA_TASK_EVENTS" in env:
            kw["task_events"] = _bool("KALA_TASK_EVENTS", env["KALA_TASK_EVENTS"])
        if "KALA_BROKER_POLL_INTERVAL" in env:
            kw["broker_poll_interval"] = _number(
                "KALA_BROKER_POLL_INTERVAL", env["KALA_BROKER_POLL_INTERVAL"]
            )
        if "KALA_WORKER_POOL" in env:
            kw["worker_pool"] = _choice("KALA_WORKER_POOL", env["KALA_WORKER_POOL"], POOLS)
        if "KALA_WORKER_CONCURRENCY" in env:
            key = "KALA_WORKER_CONCURRENCY"
            kw["worker_concurrency"] = _count(key, env[key])
        if "KALA_DEFAULT_OWNER" in env:
            kw["default_owner"] = env["KALA_DEFAULT_OWNER"]
        return cls(**kw)
