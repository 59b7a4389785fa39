"""Kala's job scheduler API and semantics, run on Celery."""

__version__ = "0.1.0"

__all__ = ["__version__", "create_app", "make_celery"]

_default_celery = None


def __getattr__(name: str) -> object:  # lazy: a worker needs no Flask, the API no worker
    global _default_celery
    if name == "create_app":
        from kala_celery.webapp import create_app

        return create_app
    if name == "make_celery":
        from kala_celery.celery_app import make_celery

        return make_celery
    if name in ("app", "celery"):  # `celery -A kala_celery worker|beat`
        if _default_celery is None:
            from kala_celery.celery_app import make_celery

            _default_celery = make_celery()
        return _default_celery
    raise AttributeError(name)
