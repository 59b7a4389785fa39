"""The audit trail (Decision 32) on SQLite and PostgreSQL: every kind of change (through the
API, the dashboard, `kala-celery import`, `apply` and `token`) shows in GET /audit/ in the
order it was made, with the token's name (never its secret), the address and the fields
before and after; a refused change leaves no row; old rows are pruned."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from kala_celery.ops.cli import main
from kala_celery.store import audit, tokens
from kala_celery.store.tables import AuditEntry, utcnow
from tests.live import Api
from tests.test_api_jobs import future

pytestmark = pytest.mark.timeout(240)


def cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code in (0, 2), (args, result.output, result.exception)
    return result.stdout


def test_every_kind_of_change_is_in_the_trail_in_order(
    make_api: Callable[..., Api], db_url: str, tmp_path: Path
) -> None:
    api = make_api()
    secret = cli("token", "create", "ops", "--scopes", "read,run,write,admin",
                 "--db", db_url).strip()
    ops = {"Authorization": f"Bearer {secret}"}

    def call(method: str, path: str, expect: int, **kw: object) -> dict | None:
        response = api.http.request(method, path, headers=ops, **kw)
        assert response.status_code == expect, (method, path, response.text)
        return response.json() if response.content else None

    schedule = f"R/{future()}/PT1H"
    parent = call("POST", "/job/", 201, json={"name": "parent", "command": "echo p",
                                              "schedule": schedule})["id"]
    child = call("POST", "/job/", 201, json={"name": "child", "command": "echo c",
                                             "parent_jobs": [parent]})["id"]
    call("PUT", f"/job/{parent}/", 200, json={"name": "parent", "command": "echo P",
                                              "schedule": schedule})
    # refused: the start is in the past; nothing changes, so nothing is written
    call("PUT", f"/job/{parent}/", 400, json={"name": "parent", "command": "echo X",
                                              "schedule": "R/2001-01-01T00:00:00Z/PT1H"})
    call("POST", f"/job/disable/{parent}/", 204)
    call("POST", f"/job/enable/{parent}/", 204)
    run = call("POST", f"/job/start/{parent}/?wait=false", 202)["id"]
    remote = call("POST", "/job/", 201, json={
        "name": "hook", "type": 1, "schedule": schedule,
        "remote_properties": {"url": "http://127.0.0.1:9/", "body": "secret-body"}})["id"]
    call("PUT", f"/job/{remote}/params/", 204, content="other-body")
    # import: a Kala listing (our own job document, under a new id)
    document = call("GET", f"/job/{remote}/", 200)["job"]
    listing = tmp_path / "kala.json"
    listing.write_text(json.dumps({"jobs": {"from-kala": {
        **document, "id": "from-kala", "name": "imported"}}}))
    cli("import", "--from-file", str(listing), "--db", db_url)
    # apply: one new job
    (tmp_path / "jobs.yaml").write_text(
        f"- name: applied\n  command: echo a\n  schedule: {schedule}\n")
    cli("apply", "-f", str(tmp_path / "jobs.yaml"), "--db", db_url)
    # the dashboard, signed in with the same token
    web = api.server.url + "/webui"
    import httpx

    with httpx.Client(base_url=web, follow_redirects=False) as browser:
        page = browser.get("/login").text
        csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        assert browser.post("/login", data={"csrf": csrf, "token": secret}).status_code == 302
        csrf = re.search(r'name="csrf" value="([^"]+)"', browser.get(f"/job/{remote}/").text
                         ).group(1)
        assert browser.post(f"/job/{remote}/disable", data={"csrf": csrf}).status_code == 302
    call("DELETE", f"/job/{parent}/", 204)  # the cascade takes the child
    made = call("POST", "/token/", 201, json={"name": "ci", "scopes": ["read"]})
    call("DELETE", "/token/ci/", 204)
    call("DELETE", "/job/all/", 204)

    rows = call("GET", "/audit/?limit=1000", 200)["audit"]
    seen = [(r["action"], r["job_id"], r["token"], r["via"]) for r in rows]
    applied = next(r["job_id"] for r in rows if r["action"] == "apply")
    assert seen == [
        ("token create", None, None, "kala-celery token create"),
        ("create", parent, "ops", "api"),
        ("create", child, "ops", "api"),
        ("replace", parent, "ops", "api"),
        ("disable", parent, "ops", "api"),
        ("enable", parent, "ops", "api"),
        ("start", parent, "ops", "api"),
        ("create", remote, "ops", "api"),
        ("params", remote, "ops", "api"),
        ("import", "from-kala", None, "kala-celery import"),
        ("apply", applied, None, "kala-celery apply"),
        ("disable", remote, "ops", "webui"),
        ("delete", parent, "ops", "api"),
        ("delete", child, "ops", "api"),
        ("token create", None, "ops", "api"),
        ("token revoke", None, "ops", "api"),
        *sorted([("delete", job_id, "ops", "api") for job_id in (remote, "from-kala", applied)]),
    ]
    by = {(r["action"], r["job_id"]): r for r in rows}
    assert by[("replace", parent)]["changes"] == {"command": ["echo p", "echo P"]}
    assert by[("disable", parent)]["changes"] == {"disabled": [False, True]}
    assert by[("start", parent)]["changes"] == {"run": [None, run]}
    assert by[("create", child)]["job_name"] == "child"
    assert by[("create", child)]["changes"]["command"] == [None, "echo c"]
    assert by[("delete", child)]["changes"] == {"deleted with": [None, parent]}
    assert by[("params", remote)]["changes"] == {"remote_body": ["(changed)", "(changed)"]}
    assert by[("import", "from-kala")]["job_name"] == "imported"
    assert all(r["address"] == "127.0.0.1" for r in rows if r["via"] in ("api", "webui"))
    assert rows[0]["address"] and "@" in rows[0]["address"]  # user@host of the command
    text = json.dumps(rows)
    for hidden in (secret, made["secret"], "secret-body", "other-body"):
        assert hidden not in text
    only = call("GET", f"/audit/?job={parent}&limit=2", 200)["audit"]
    assert [r["action"] for r in only] == ["start", "delete"]
    later = call("GET", f"/audit/?since={rows[-3]['at']}", 200)["audit"]
    assert [r["id"] for r in later] == [r["id"] for r in rows if r["at"] >= rows[-3]["at"]]
    assert call("GET", "/audit/?since=yesterday", 400)["error"].startswith("since must be")


def test_rows_past_the_retention_are_pruned(make_api: Callable[..., Api]) -> None:
    api = make_api()
    who = audit.Actor(token="t", address="127.0.0.1", via="api")
    now = utcnow()
    with api.state.sessions.begin() as session:
        audit.record(session, who, "create", job_id="old", now=now - timedelta(days=400))
        audit.record(session, who, "create", job_id="new", now=now - timedelta(days=1))
    with api.state.sessions.begin() as session:
        assert audit.prune(session, now - timedelta(days=365)) == 1
    with api.state.sessions() as session:
        left = session.scalars(select(AuditEntry.job_id)).all()
        assert left == ["new"]
        assert session.scalar(select(func.count()).select_from(AuditEntry)) == 1
    assert tokens.SCOPES == ("read", "run", "write", "admin")
