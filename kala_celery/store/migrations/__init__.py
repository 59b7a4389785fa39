"""Alembic migrations of the job store (env.py, versions/); run them with `kala-celery db
upgrade` (kala_celery/store/schema.py)."""
