"""ops: the commands an operator runs.

- cli: `kala-celery serve | api | beat | worker | run | import | apply | export | db |
  health`;
- server: the API under granian, port parsing, the bind check (Decision 16);
- supervise: serve's beat and worker subprocesses;
- import_kala: a Kala's jobs into the store;
- import_django, import_redbeat: django-celery-beat's and RedBeat's periodic tasks read;
- beat_entries: such a task as a Celery-task job, and their import;
- import_table: what every import shares (outcomes, their table, the Decision behind a
  refusal, writing a job through the create path's checks in batches);
- apply: `apply` and `export`, jobs as code (Decision 30);
- health: `health beat|worker`, a fresh row in beats / workers.

The top of the house: may import every other package; nothing imports it.
The Decisions cited are those of docs/design.md.
"""
