"""The Celery app factory, configured from Settings (`celery -A kala_celery worker` uses it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery import Celery, beat, bootsteps, signals
from celery.app.amqp import AMQP

from kala_celery import broker
from kala_celery.config import Settings

RUN_TASK = "kala.run"
SETTINGS_KEY = "kala_settings"
EMBEDDED_BROKER = "sqla+sqlite:///"


class KalaAMQP(AMQP):
    """Runs are published with a `shadow` name (the job's name). Celery's task-sent event still
    names the real task while the worker's task-received event names the shadow, and Flower
    keeps whichever arrives last: name the sent event after the shadow too."""

    def as_task_v2(self, *args: object, **kwargs: object):
        message = super().as_task_v2(*args, **kwargs)
        shadow = message.headers.get("shadow")
        if shadow and message.sent_event is not None:
            message.sent_event["name"] = shadow
        return message


class SQLBrokerPolling(bootsteps.StartStopStep):
    """kombu's SQL transport on another database (`sqla+postgresql://…`) polls once a second
    by default: the worker then takes at most a prefetch's worth of runs a second. Its
    `polling_interval` transport option cannot be set the usual way (kombu hands every
    transport option to SQLAlchemy's create_engine, which refuses it), so this consumer step
    sets it on the connection's transport each time the consumer (re)connects. The embedded
    broker's channel (broker.py) takes the option as other transports do."""

    requires = ("celery.worker.consumer.connection:Connection",)

    def start(self, c: Any) -> None:
        settings = settings_of(c.app)
        c.connection.transport.polling_interval = settings.broker_poll_interval


def _check_schema(sender: object = None, **_kwargs: object) -> None:
    """worker_init / beat_init: refuse a job store whose schema is behind (store/schema.py)."""
    app = getattr(sender, "app", None)
    settings = app.conf.get(SETTINGS_KEY) if app is not None else None
    if settings is not None:
        from kala_celery.store.db import check_at_start

        what = "beat" if isinstance(sender, beat.Service) else "worker"
        check_at_start(settings.db_url, what)


def configure(app: Celery, settings: Settings) -> Celery:
    """What kala's tasks need from any Celery app (ours or a team's own)."""
    app.conf.update(
        task_acks_late=True,  # a run whose worker dies is redelivered, not lost in the broker
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # outcomes live in the runs table
        worker_send_task_events=settings.task_events,  # Flower turns them on when it runs
        task_send_sent_event=settings.sent_events,
        broker_connection_retry_on_startup=True,
        beat_scheduler="kala_celery.beat:KalaScheduler",
        enable_utc=True,
        timezone="UTC",
    )
    if settings.broker.startswith(EMBEDDED_BROKER):
        path = settings.broker.removeprefix(EMBEDDED_BROKER)
        Path(path).parent.mkdir(parents=True, exist_ok=True)  # kombu does not create it
        # Our channel on kombu's SQL tables (broker.py): batched takes and publishes, a
        # read-only poll when idle, the file in WAL like the job store.
        app.conf.broker_url = f"sqlite:///{path}"
        app.conf.broker_transport = broker.TRANSPORT
        app.conf.broker_transport_options = {"polling_interval": settings.broker_poll_interval}
    elif settings.broker.startswith("sqla+"):
        app.steps["consumer"].add(SQLBrokerPolling)
    if settings.broker.startswith(("redis://", "rediss://", "redis+socket://")):
        app.conf.broker_transport_options = {
            # No ack emulation: a message leaves Redis when a worker takes it. Redelivering a
            # run whose worker died is the sweep's job (runs/sweep.py), which knows whether the run
            # ended; kombu's emulation only re-sent it 12 h later, and its restore of unacked
            # messages when the connection drops crashes the worker (AttributeError in
            # _connparams, kombu 5.7) while a long run is in flight.
            "ack_emulation": False,
            # A publish to a Redis that is down fails at once (kombu's default is ~6 s of
            # retries): the beat and the API keep the run pending and try again themselves.
            "max_retries": 1,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 1,
            "socket_connect_timeout": 5,  # an unreachable host, not only a refused port
        }
    app.conf[SETTINGS_KEY] = settings
    signals.worker_init.connect(_check_schema, weak=False, dispatch_uid="kala-schema")
    signals.beat_init.connect(_check_schema, weak=False, dispatch_uid="kala-schema")
    return app


def make_celery(settings: Settings | None = None, name: str = "kala_celery") -> Celery:
    settings = settings or Settings.from_env()
    app = Celery(name, broker=settings.broker, include=["kala_celery.tasks"], amqp=KalaAMQP)
    return configure(app, settings)


def settings_of(app: Celery) -> Settings:
    """The kala settings of a Celery app: configured ones, else the KALA_* environment."""
    settings = app.conf.get(SETTINGS_KEY)
    if settings is None:
        settings = app.conf[SETTINGS_KEY] = Settings.from_env()
    return settings
