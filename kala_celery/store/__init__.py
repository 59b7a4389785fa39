"""store: the job store in SQL (SQLite embedded, PostgreSQL in production).

- tables: the SQLAlchemy tables (jobs, job_links, runs, workers, beats, metric_counts,
  api_tokens, audit_log, sign_in_failures);
- db: engines and sessions (SQLite's WAL, busy timeout and write lock; PostgreSQL's
  autocommit sibling for statements run alone, whose connection each thread holds), the
  schema at start;
- schema, migrations/: the schema's Alembic revision, and who may change it;
- jobs: the job rules (create, replace, delete with its cascade, enable, stats);
- links: the links between jobs, and the checks a change of links passes;
- history: reads of run history (a job's stats, pages of runs, NextKala's status callback);
- activity: the last 24 h of runs grouped for the dashboard's charts;
- bulk: statements over a batch of rows (PostgreSQL arrays, SQLite executemany);
- driver: statements the driver runs itself, compiled once (a run's claim and end, a
  create's INSERTs);
- tokens: named API tokens with scopes; audit: the audit trail; sign_in: the dashboard's
  wrong sign-ins by address.

May import config, errors, schedule and wire; never runs, beat, tasks, api, web or ops.
"""
