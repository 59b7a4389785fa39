"""The dashboard with named tokens (Decision 31), through Flask's test client on SQLite and
PostgreSQL: a token signs in, its scopes decide which buttons show and which posts are
refused, the audit page is the admin's; wrong tokens from one address are slowed down across
processes; every answer keeps the security headers."""

from __future__ import annotations

import re
from pathlib import Path

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from kala_celery.api import create_app
from kala_celery.config import Settings
from kala_celery.store import tokens
from kala_celery.store.tables import SignInFailure, utcnow
from kala_celery.web import auth
from tests.test_api_jobs import future

HEADERS = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
           "Referrer-Policy": "same-origin"}


def app_for(db_url: str, tmp_path: Path) -> Flask:
    return create_app(Settings(database_url=db_url, data_dir=tmp_path),
                      publish=lambda runs: [r.id for r in runs])


def csrf(page: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def sign_in(client: FlaskClient, secret: str, address: str = "10.0.0.1") -> int:
    page = client.get("/webui/login", environ_base={"REMOTE_ADDR": address})
    return client.post("/webui/login", data={"csrf": csrf(page.get_data(True)),
                                             "token": secret},
                       environ_base={"REMOTE_ADDR": address}).status_code


def test_a_tokens_scopes_decide_what_the_dashboard_shows_and_allows(
    db_url: str, tmp_path: Path
) -> None:
    app = app_for(db_url, tmp_path)
    with app.extensions["kala"].sessions.begin() as session:
        secrets = {name: tokens.create(session, name, tokens.parse_scopes(scopes), utcnow())
                   for name, scopes in (("viewer", "read"), ("runner", "read,run"),
                                        ("admin", "read,run,write,admin"))}
    boss = app.test_client()
    assert sign_in(boss, secrets["admin"]) == 302
    page = boss.get("/webui/new").get_data(True)
    made = boss.post("/webui/new", data={"csrf": csrf(page), "name": "nightly", "type": "0",
                                         "command": "true", "schedule": f"R/{future()}/PT1H"})
    assert made.status_code == 302, made.get_data(True)
    job = made.headers["Location"]

    viewer = app.test_client()
    assert sign_in(viewer, secrets["viewer"]) == 302
    shown = viewer.get(job).get_data(True)
    assert "nightly" in shown
    for button in ("Start now", ">Disable<", ">Edit<", ">Delete<", "New job", ">Audit<"):
        assert button not in shown, button
    refused = viewer.post(f"{job}disable", data={"csrf": csrf(shown)})
    assert refused.status_code == 403 and "the run scope" in refused.get_data(True)
    assert viewer.get("/webui/new").status_code == 403
    assert viewer.get("/webui/audit").status_code == 403

    runner = app.test_client()
    assert sign_in(runner, secrets["runner"]) == 302
    shown = runner.get(job).get_data(True)
    assert "Start now" in shown and ">Disable<" in shown and ">Edit<" not in shown
    assert runner.post(f"{job}disable", data={"csrf": csrf(shown)}).status_code == 302
    assert runner.get(f"{job}delete").status_code == 403

    shown = boss.get(job).get_data(True)
    assert all(b in shown for b in ("Start now", ">Enable<", ">Edit<", ">Delete<", ">Audit<"))
    trail = boss.get("/webui/audit")
    assert trail.status_code == 200
    rows = trail.get_data(True)
    assert rows.index("runner") < rows.index("admin")  # newest first: the disable, the create
    assert "disable" in rows and "create" in rows and secrets["admin"] not in rows
    for name, value in HEADERS.items():
        assert trail.headers[name] == value

    with app.extensions["kala"].sessions.begin() as session:
        tokens.revoke(session, "runner")
    assert runner.get(job).status_code == 302  # a revoked token's session is signed out


def test_wrong_tokens_from_one_address_are_slowed_down_in_every_process(
    db_url: str, tmp_path: Path
) -> None:
    first, second = app_for(db_url, tmp_path), app_for(db_url, tmp_path)  # two processes
    with first.extensions["kala"].sessions.begin() as session:
        secret = tokens.create(session, "me", frozenset({"read"}), utcnow())
    client = first.test_client()
    for _ in range(auth.FAILURES):
        assert sign_in(client, "kala_wrong", "10.0.0.9") == 401
    other = second.test_client()  # the same address, another process: waits too
    page = other.get("/webui/login", environ_base={"REMOTE_ADDR": "10.0.0.9"})
    slowed = other.post("/webui/login", data={"csrf": csrf(page.get_data(True)),
                                              "token": secret},
                        environ_base={"REMOTE_ADDR": "10.0.0.9"})
    assert slowed.status_code == 429, slowed.get_data(True)
    assert 0 < int(slowed.headers["Retry-After"]) <= auth.WINDOW.total_seconds()
    assert "Too many wrong tokens" in slowed.get_data(True)
    for name, value in HEADERS.items():
        assert slowed.headers[name] == value
    assert "frame-ancestors 'none'" in slowed.headers["Content-Security-Policy"]
    assert sign_in(second.test_client(), secret, "10.0.0.10") == 302  # another address
    with first.extensions["kala"].sessions() as session:
        assert session.scalar(select(func.count()).select_from(SignInFailure)
                              .where(SignInFailure.address == "10.0.0.10")) == 0


def test_every_page_names_the_scope_it_needs() -> None:
    """A page left out of SCOPES would need `admin` (the most guarded): every route says."""
    from kala_celery.web import OPEN, ROUTES, SCOPES

    assert {endpoint for _path, _methods, endpoint, _view in ROUTES} - OPEN == set(SCOPES)
