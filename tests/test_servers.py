"""The server fixtures are real: a PostgreSQL server, a redis-server, fresh databases."""

from __future__ import annotations

import uuid

import psycopg
import redis
import sqlalchemy as sa

from tests import servers


def test_postgres_is_a_real_server(postgres_server: servers.PostgresServer) -> None:
    with psycopg.connect(postgres_server.dsn()) as conn:
        (version,) = conn.execute("SELECT version()").fetchone()
    assert version.startswith("PostgreSQL ")
    assert postgres_server.url == (
        f"postgresql+psycopg://postgres@127.0.0.1:{postgres_server.port}/kala"
    )


def test_redis_is_a_real_server(redis_server: servers.RedisServer) -> None:
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.ping() is True
        key = f"kala-test-{uuid.uuid4().hex}"
        client.set(key, "value")
        assert client.get(key) == b"value"
        assert client.info("server")["process_id"] == redis_server.process.pid
    finally:
        client.close()


def test_db_url_is_a_fresh_empty_database(db_url: str) -> None:
    engine = sa.create_engine(db_url)
    try:
        assert sa.inspect(engine).get_table_names() == []
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE probe (id INTEGER PRIMARY KEY)"))
            conn.execute(sa.text("INSERT INTO probe (id) VALUES (1)"))
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM probe")).scalar_one() == 1
        assert sa.inspect(engine).get_table_names() == ["probe"]
    finally:
        engine.dispose()


def test_db_url_forms(db_url: str, request) -> None:
    if request.node.callspec.params["db_url"] == "sqlite":
        assert db_url.startswith("sqlite:////") and db_url.endswith("/kala.db")
    else:
        assert db_url.startswith("postgresql+psycopg://postgres@127.0.0.1:")
        assert "/kala_test_" in db_url


def test_postgres_create_and_drop_database(postgres_server: servers.PostgresServer) -> None:
    name = f"kala_extra_{uuid.uuid4().hex[:8]}"
    url = postgres_server.create_database(name)
    assert url == f"postgresql+psycopg://postgres@127.0.0.1:{postgres_server.port}/{name}"
    open_conn = psycopg.connect(postgres_server.dsn(name))  # left open: the drop must force it
    try:
        assert open_conn.execute("SELECT current_database()").fetchone() == (name,)
        postgres_server.drop_database(name)
    finally:
        open_conn.close()
    with psycopg.connect(postgres_server.dsn("postgres")) as conn:
        rows = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchall()
    assert rows == []
