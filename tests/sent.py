"""The statements a test sees sent: through SQLAlchemy (its cursor events on the engine) and
those the driver runs itself (store/driver.py: no SQLAlchemy events fire for them)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, event

from kala_celery.store.driver import DriverStatement


@contextmanager
def statements_sent(engine: Engine) -> Iterator[list[str]]:
    """The SQL of each statement sent while the block runs, in order (the driver's from any
    engine of this process)."""
    seen: list[str] = []

    def before(_conn, _cursor, statement, _params, _context, _many) -> None:
        seen.append(statement)

    run = DriverStatement._run

    def by_the_driver(self: DriverStatement, conn: Any, params: Any, **kwargs: Any) -> Any:
        seen.append(self.sql)
        return run(self, conn, params, **kwargs)

    DriverStatement._run = by_the_driver  # type: ignore[method-assign]
    event.listen(engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", before)
        DriverStatement._run = run  # type: ignore[method-assign]
