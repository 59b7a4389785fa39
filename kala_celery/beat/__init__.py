"""The Kala beat scheduler: `celery -A kala_celery beat -S kala`."""

from kala_celery.beat.scheduler import KalaScheduler

__all__ = ["KalaScheduler"]
