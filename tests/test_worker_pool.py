"""A threads-pool worker keeps a database connection open per thread (db.size_pools_for)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kala_celery import db
from kala_celery.celery_app import make_celery
from kala_celery.config import Settings

PG = "postgresql+psycopg://kala@127.0.0.1:1/kala"  # never connected to: pools open lazily


@pytest.fixture(autouse=True)
def _unsized():
    yield
    db.size_pools_for(0)


def test_engines_keep_sqlalchemys_default_pool_outside_a_threads_worker() -> None:
    assert db.make_engine(PG).pool.size() == db.POOL_SIZE


@pytest.mark.parametrize(("pool", "concurrency", "size"),
                         [("threads", 32, 34), ("threads", 2, db.POOL_SIZE),
                          ("prefork", 32, db.POOL_SIZE), ("solo", 1, db.POOL_SIZE)])
def test_a_worker_sizes_the_pool_for_its_threads(tmp_path: Path, pool: str, concurrency: int,
                                                  size: int) -> None:
    settings = Settings(data_dir=tmp_path)
    app = make_celery(settings)
    app.WorkController(pool_cls=pool, concurrency=concurrency)  # sends worker_init
    assert db.make_engine(PG).pool.size() == size
