"""runs: a run's life after its job is due, in SQL and on the broker.

- dispatch: the one way runs come into being (a run and its dependents' runs, `pending`);
- start: the API's and dashboard's ways to start runs (a one-off created or enabled, a manual
  start): store's job rules, then dispatch, in one transaction;
- publish: sends recorded runs to the broker (task id = run id), chains, marks them `sent`;
- attempts: a worker's steps (claim, attempts, release, finish) and taking a run back;
- parents: parents_mode "all" (Decision 20);
- sweep: the beat's redelivery of lost messages and untaken Celery-task runs;
- heartbeats: worker and beat rows, and the runs whose worker is gone;
- outcome: the outcome of one attempt.

May import config, errors, schedule, store and celery_app; never api, web or ops.
The Decisions cited are those of docs/design.md.
"""
