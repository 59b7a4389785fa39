"""A team's Celery app whose periodic tasks live in beat_schedule and add_periodic_task, as
`celery -A tests.beat_schedule_app beat -S kala` finds them. BEAT_VARIANT picks the code
of the day: "a" (as first deployed) or "b" (a changed interval, a removed entry). Each
task call appends its name to RECORD_FILE, one line per call."""

import os
from datetime import timedelta

from celery import Celery
from celery.schedules import crontab

app = Celery("beat_schedule_app", broker=os.environ["KALA_BROKER_URL"])
app.conf.task_serializer = "json"
app.conf.timezone = "Europe/Paris"

import kala_celery.tasks  # noqa: E402, F401 - the workers run kala.run

VARIANT = os.environ.get("BEAT_VARIANT", "a")

schedule = {
    "tick every 2 s": {"task": "tests.beat_schedule_app.record", "args": ("tick",),
                       "schedule": timedelta(seconds=2 if VARIANT == "a" else 3)},
    "quarter hours": {"task": "tests.beat_schedule_app.record", "args": ("cron",),
                      "schedule": crontab(minute="*/15", hour="8-18")},
    "every minute": {"task": "tests.beat_schedule_app.record", "args": ("minute",),
                     "schedule": crontab()},
}
if VARIANT == "a":
    schedule["number of seconds"] = {
        "task": "tests.beat_schedule_app.record", "schedule": 3, "kwargs": {"what": "number"},
        "options": {"queue": "celery"},
    }
app.conf.beat_schedule = schedule  # set, not read: reading would configure the app now


@app.on_after_configure.connect
def add_periodic(sender: Celery, **_: object) -> None:
    sender.add_periodic_task(4.0, record.s("signal"), name="from on_after_configure")


@app.task
def record(what: str) -> str:
    with open(os.environ["RECORD_FILE"], "a") as out:
        out.write(what + "\n")
    return what
