"""Scoped tokens (Decision 31), over real HTTP on SQLite and PostgreSQL: a table test made from
the served OpenAPI document tries every operation with a token that lacks its x-kala-scope
(403 naming the scope) and one that has it (neither 401 nor 403); tokens made, used and
revoked through the admin API; KALA_API_TOKEN as a token with every scope; an open server
stays open."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from kala_celery.store import tokens
from kala_celery.store.tables import utcnow
from tests.live import Api
from tests.processes import wait_for
from tests.test_api_jobs import future

pytestmark = pytest.mark.timeout(240)

JOB_ID = "scoped-job"
REMOTE = {"name": "scoped", "type": 1, "schedule": None,
          "remote_properties": {"url": "http://127.0.0.1:9/hook", "method": "POST"}}


def make_tokens(api: Api, **wanted: frozenset[str]) -> dict[str, str]:
    """Named tokens written to the store as `kala-celery token create` writes them."""
    with api.state.sessions.begin() as session:
        return {name: tokens.create(session, name, scopes, utcnow())
                for name, scopes in wanted.items()}


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def bodies(name: str) -> dict[str, tuple[str, Any]]:
    """A request body for each operation that takes one, by operationId."""
    job = {**REMOTE, "schedule": f"R/{future()}/PT1H"}
    return {
        "create_job": ("json", job),
        "replace_job": ("json", job),
        "put_params": ("text", "{}"),
        "put_execution_status": ("json", "Success"),
        "schedule_preview": ("json", {"schedule": f"R/{future()}/PT1H"}),
        "create_token": ("json", {"name": name, "scopes": ["read"]}),
    }


def operations(document: dict) -> list[tuple[str, str, dict]]:
    out = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method != "parameters":
                out.append((path, method.upper(), operation))
    return out


def test_every_operation_is_refused_without_its_scope_and_allowed_with_it(
    make_api: Callable[..., Api],
) -> None:
    api = make_api()
    held = make_tokens(api, **{f"only-{s}": frozenset({s}) for s in tokens.SCOPES},
                       **{f"not-{s}": tokens.ALL_SCOPES - {s} for s in tokens.SCOPES})
    writer = bearer(held["not-admin"])
    assert api.raw.get("/api/v1/openapi.json").status_code == 401  # a token is configured
    document = api.raw.get("/api/v1/openapi.json", headers=bearer(held["only-read"])).json()
    tried: dict[str, int] = {"403": 0, "allowed": 0}
    counter = iter(range(1_000_000))

    def ready() -> dict[str, str]:
        """The job, a run of it and a token to revoke, made afresh (a DELETE took them)."""
        if api.raw.get(f"/api/v1/job/{JOB_ID}/", headers=writer).status_code == 404:
            made = api.raw.post("/api/v1/job/", headers=writer,
                                json={**REMOTE, "id": JOB_ID})
            assert made.status_code == 201, made.text
        api.raw.post(f"/api/v1/job/enable/{JOB_ID}/", headers=writer)  # a disable came first
        started = api.raw.post(f"/api/v1/job/start/{JOB_ID}/?wait=false", headers=writer)
        assert started.status_code == 202, started.text
        name = f"victim-{next(counter)}"
        make_tokens(api, **{name: frozenset({"read"})})
        return {"job_id": JOB_ID, "run_id": started.json()["id"], "name": name}

    def send(method: str, path: str, operation: dict, headers: dict[str, str],
             values: dict[str, str]) -> Any:
        url = path.format(**values)
        kind, body = bodies(f"new-{next(counter)}").get(
            operation["operationId"].removesuffix("_slashless"), (None, None))
        if kind == "json":
            return api.raw.request(method, url, headers=headers, content=json.dumps(body))
        if kind == "text":
            return api.raw.request(method, url, headers=headers, content=body)
        return api.raw.request(method, url, headers=headers)

    for path, method, operation in operations(document):
        scope = operation["x-kala-scope"]
        assert scope in (*tokens.SCOPES, "any", "none"), (method, path)
        if scope in tokens.SCOPES:
            lacking = send(method, path, operation, bearer(held[f"not-{scope}"]), ready())
            assert lacking.status_code == 403, (method, path, lacking.text)
            assert f"'{scope}' scope" in lacking.json()["error"], lacking.text
            tried["403"] += 1
        having = held[f"only-{scope}"] if scope in tokens.SCOPES else held["only-run"]
        allowed = send(method, path, operation,
                       {} if scope == "none" else bearer(having), ready())
        assert allowed.status_code not in (401, 403), (method, path, allowed.text)
        tried["allowed"] += 1
        if scope != "none":
            nobody = send(method, path, operation, bearer("kala_not-a-token"), ready())
            assert nobody.status_code == 401, (method, path, nobody.text)
    assert tried["403"] >= 25 and tried["allowed"] > tried["403"]  # the whole document


def test_tokens_are_made_used_and_revoked_through_the_admin_api(
    make_api: Callable[..., Api],
) -> None:
    api = make_api(api_token="main-secret")
    main = bearer("main-secret")  # KALA_API_TOKEN: every scope, admin included
    made = api.http.post("/token/", headers=main, json={"name": "ci", "scopes": "read,run"})
    assert made.status_code == 201, made.text
    secret = made.json()["secret"]
    assert made.json()["scopes"] == ["read", "run"] and secret.startswith("kala_")
    listed = api.http.get("/token/", headers=main).json()["tokens"]
    assert [(t["name"], t["scopes"]) for t in listed] == [("ci", ["read", "run"])]
    assert secret not in json.dumps(listed)
    with api.state.sessions() as session:  # only a digest is stored
        stored = tokens.all_tokens(session)[0]
        assert secret not in (stored.digest, stored.scopes) and len(stored.digest) == 64
    job_id = api.http.post("/job/", headers=main, json={
        "name": "j", "command": "true", "schedule": f"R/{future()}/PT1H"}).json()["id"]
    assert api.http.get(f"/job/{job_id}/", headers=bearer(secret)).status_code == 200
    assert api.http.post(f"/job/disable/{job_id}/", headers=bearer(secret)).status_code == 204
    refused = api.http.delete(f"/job/{job_id}/", headers=bearer(secret))
    assert refused.status_code == 403 and "'write' scope" in refused.json()["error"]
    assert api.http.get("/token/", headers=bearer(secret)).status_code == 403
    again = api.http.post("/token/", headers=main, json={"name": "ci", "scopes": ["read"]})
    assert again.status_code == 409
    bad = api.http.post("/token/", headers=main, json={"name": "x", "scopes": ["root"]})
    assert bad.status_code == 400 and "read, run, write, admin" in bad.json()["error"]
    assert api.http.delete("/token/ci/", headers=main).status_code == 204
    assert api.http.get(f"/job/{job_id}/", headers=bearer(secret)).status_code == 401
    assert api.http.delete("/token/ci/", headers=main).status_code == 404


def test_without_any_token_the_api_stays_open_and_will_not_make_the_first(
    make_api: Callable[..., Api],
) -> None:
    api = make_api()
    job_id = api.create(name="open", command="true", schedule=f"R/{future()}/PT1H")
    assert api.http.delete(f"/job/{job_id}/").status_code == 204
    assert api.http.get("/job/", headers=bearer("anything")).status_code == 200
    first = api.http.post("/token/", json={"name": "me", "scopes": ["admin"]})
    assert first.status_code == 403 and "kala-celery token create" in first.json()["error"]
    assert api.http.get("/token/").json() == {"tokens": []}
    assert api.raw.get("/metrics").status_code == 200
    # the first token (from the command line, another process) closes it within the second
    # the API trusts its last "no token at all" (api/auth.py OPEN_RECHECK)
    secret = make_tokens(api, reader=frozenset({"read"}))["reader"]
    wait_for(lambda: api.http.get("/job/").status_code == 401, 10, "the API closed")
    assert api.raw.get("/metrics").status_code == 401
    assert api.raw.get("/metrics", headers=bearer(secret)).status_code == 200
    assert api.raw.get("/health").status_code == 200
