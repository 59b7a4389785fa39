"""The WSGI entry, for any WSGI server: `granian --interface wsgi kala_celery.wsgi:app`
(settings from KALA_*)."""

from kala_celery.api import create_app

app = create_app()
