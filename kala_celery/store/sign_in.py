"""Wrong tokens given to the dashboard's sign-in page, by address (issue 27): a row per
failure, so every API process (and machine) sees the same count. web/auth.py decides what
the count means; this module only writes, counts and forgets."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from kala_celery.store.tables import SignInFailure


def failures(session: Session, address: str, since: datetime) -> tuple[int, datetime | None]:
    """How many failures from `address` since `since`, and the oldest of them."""
    count, oldest = session.execute(
        select(func.count(), func.min(SignInFailure.at))
        .where(SignInFailure.address == address, SignInFailure.at >= since)
    ).one()
    return int(count), oldest


def record_failure(session: Session, address: str, now: datetime, forget_before: datetime
                   ) -> None:
    """One more failure; rows older than `forget_before` (of any address) go."""
    session.execute(delete(SignInFailure).where(SignInFailure.at < forget_before))
    session.add(SignInFailure(address=address, at=now))


def forget(session: Session, address: str) -> None:
    """A sign-in that worked clears its address's failures."""
    session.execute(delete(SignInFailure).where(SignInFailure.address == address))
