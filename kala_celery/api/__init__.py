"""Kala's REST API as a Flask blueprint (mount it with `init_kala`) and an app factory."""

from kala_celery.api.app import create_app, init_kala
from kala_celery.api.routes import ROUTES, build_blueprint

__all__ = ["ROUTES", "build_blueprint", "create_app", "init_kala"]
