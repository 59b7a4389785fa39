"""Kala's job scheduler API and semantics, run on Celery."""

__version__ = "0.1.0"

__all__ = ["__version__", "create_app"]


def __getattr__(name: str):  # lazy: importing the package must not pull Flask into a worker
    if name == "create_app":
        from kala_celery.api.app import create_app

        return create_app
    raise AttributeError(name)
