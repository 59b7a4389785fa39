"""api: Kala's REST API as a Flask blueprint, with its HTTP conventions and OpenAPI document.

- routes: every route in one table, and the blueprint built from it;
- views: the handlers; listing: GET /job/; preview: the schedule previews (Decision 24);
- http: Kala's HTTP conventions (errors, redirects, bodies); openapi: the document;
- state: what the blueprint needs from its app (settings, store, publisher);
- auth: who is asking and may they (token scopes); admin: the token and audit routes;
- ops, metrics: /health and /metrics.

May import config, errors, schedule, wire, store, runs and celery_app; never web, beat, tasks
or ops. `init_kala` and `create_app` (kala_celery/webapp.py, which mounts the dashboard too)
are still importable from here, as users have always written them.
The Decisions cited are those of docs/design.md.
"""

from __future__ import annotations

from typing import Any

from kala_celery.api.routes import ROUTES, build_blueprint

__all__ = ["ROUTES", "build_blueprint", "create_app", "init_kala"]


def __getattr__(name: str) -> Any:  # kept for users: `from kala_celery.api import init_kala`
    if name in ("create_app", "init_kala"):
        from kala_celery import webapp

        return getattr(webapp, name)
    raise AttributeError(name)
