"""beat: the Kala beat scheduler, `celery -A kala_celery beat -S kala`.

- scheduler: KalaScheduler, Celery's beat Scheduler: claim, publish, sweep, sleep;
- claim: claim due jobs, record their runs, advance next_run_at;
- beat_schedule: the app's own beat_schedule made jobs at start (Decision 30 of
  docs/design.md).

May import config, schedule, store, runs and celery_app; never tasks, api, web or ops.
"""

from kala_celery.beat.scheduler import KalaScheduler

__all__ = ["KalaScheduler"]
