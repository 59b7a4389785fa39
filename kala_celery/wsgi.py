"""WSGI entry for gunicorn: `gunicorn 'kala_celery.wsgi:app'` (settings from KALA_*)."""

from kala_celery.api import create_app

app = create_app()
