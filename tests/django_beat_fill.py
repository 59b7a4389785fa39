"""Fill a django-celery-beat database through its own models, in a process of its own (Django's
settings are configured once per process): `python -m tests.django_beat_fill DB_URL SOON`.

DB_URL is `sqlite:///path` or `postgresql://user@host:port/name`; django-celery-beat's own
migrations create its tables. SOON (seconds from now) is when the two tasks meant to run
fall due: the clocked one, and the interval one (every 30 s, last run 30 s before that).
Prints the periodic tasks' names, one a line.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import django
from django.conf import settings


def configure(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        database = {"ENGINE": "django.db.backends.sqlite3", "NAME": parts.path[1:]}
    else:
        database = {"ENGINE": "django.db.backends.postgresql", "NAME": parts.path.lstrip("/"),
                    "USER": parts.username or "", "HOST": parts.hostname or "",
                    "PORT": str(parts.port or 5432)}
    settings.configure(DATABASES={"default": database}, INSTALLED_APPS=["django_celery_beat"],
                       USE_TZ=True, TIME_ZONE="UTC", CELERY_TIMEZONE="UTC")
    django.setup()


def fill(soon: float) -> list[str]:
    from django.core.management import call_command
    from django_celery_beat.models import (
        ClockedSchedule,
        CrontabSchedule,
        IntervalSchedule,
        PeriodicTask,
        SolarSchedule,
    )

    call_command("migrate", "django_celery_beat", verbosity=0)
    now = datetime.now(UTC)
    due = now + timedelta(seconds=soon)
    add = "tests.own_celery_app.add"
    berlin = CrontabSchedule.objects.create(minute="30", hour="4", day_of_week="1-5",
                                            timezone="Europe/Berlin")
    every_30s = IntervalSchedule.objects.create(every=30, period=IntervalSchedule.SECONDS)
    hourly = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.HOURS)
    made = [
        PeriodicTask(name="nightly report", task=add, crontab=berlin, args="[2, 3]",
                     kwargs='{"scale": 10}', queue="theirs"),
        PeriodicTask(name="every-30s", task=add, interval=every_30s, args="[1, 1]",
                     queue="theirs", priority=5, last_run_at=due - timedelta(seconds=30),
                     total_run_count=7),
        PeriodicTask(name="clocked-soon", task=add, one_off=True, args="[4, 4]", queue="theirs",
                     clocked=ClockedSchedule.objects.create(clocked_time=due)),
        PeriodicTask(name="clocked-done", task=add, one_off=True, total_run_count=1,
                     last_run_at=now - timedelta(days=1),
                     clocked=ClockedSchedule.objects.create(
                         clocked_time=now - timedelta(days=1))),
        PeriodicTask(name="at-sunrise", task=add, solar=SolarSchedule.objects.create(
            event="sunrise", latitude=52.52, longitude=13.40)),
        PeriodicTask(name="once-in-an-hour", task=add, interval=hourly, one_off=True,
                     start_time=now + timedelta(hours=1)),
        PeriodicTask(name="paused", task=add, interval=hourly, enabled=False),
        PeriodicTask(name="expired", task=add, crontab=berlin,
                     expires=now - timedelta(days=1)),
        PeriodicTask(name="bad args", task=add, interval=hourly, args="[1,"),
    ]
    for task in made:
        task.save()
    return [task.name for task in made]


if __name__ == "__main__":
    configure(sys.argv[1])
    print("\n".join(fill(float(sys.argv[2]))))
