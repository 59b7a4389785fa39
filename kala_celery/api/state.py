"""What the blueprint needs from its app: settings, the job store and the run publisher."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from flask import current_app
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from kala_celery.config import Settings
from kala_celery.store.db import init_schema
from kala_celery.store.jobs import Rules
from kala_celery.store.tables import Run

Publisher = Callable[[Sequence[Run]], list[str]]  # returns the ids it sent


@dataclass
class KalaState:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    publish: Publisher
    url_prefix: str
    schema_ready: bool = False  # False: the database was away when the app started

    def ensure_schema(self) -> None:
        init_schema(self.engine)
        self.schema_ready = True

    @property
    def rules(self) -> Rules:
        return Rules(
            allow_shell=self.settings.allow_shell,
            default_timezone=self.settings.timezone,
            default_owner=self.settings.default_owner,
            remote_policy=self.settings.remote_policy,
        )


def kala() -> KalaState:
    return current_app.extensions["kala"]
