"""The OpenAPI 3.1 document of the API (docs/design.md Decision 26), served at
`<prefix>/openapi.json`.

Written here as Python data rather than generated: the API's bodies are decoded by wire/decode.py
(Go semantics) and not by a schema library that apispec or spectree could read, and building the
document in code lets it take its numbers from the limits table (kala_celery/wire/limits.py) and its
paths from the routes table (kala_celery/api/routes.py), so neither can drift. A route without
an operation here fails `document()` (and tests/test_openapi.py). The tests validate every
response they see against it (tests/openapi_check.py) and schemathesis fuzzes the server with
it (tests/test_fuzz_*.py).

Adding a job key: one entry in JOB_INPUT (and in JOB if it is shown). Adding a route: one
entry in OPERATIONS, under its view's name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from flask import Response, current_app

from kala_celery import __version__
from kala_celery.api import http
from kala_celery.api.state import kala
from kala_celery.store import audit, tokens
from kala_celery.wire import limits

Schema = dict[str, Any]
Route = tuple[str, Sequence[str], Callable[..., Any]]

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._~:@-]*$"  # Decision 14 (jobs._ID_RE)
TIME = {
    "type": "string",
    "format": "date-time",
    "description": "RFC 3339 with a zone, years 0001-9999; `0001-01-01T00:00:00Z` means unset",
    "maxLength": limits.MAX_BODY,
}
SHOWN_TIME = {
    **TIME,
    "pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?Z$",
    "description": "RFC 3339 in UTC (Decision 13); `0001-01-01T00:00:00Z` means never",
}
INT64 = {"type": "integer", "minimum": 0, "maximum": limits.INT64_MAX}
SCOPE_KEY = "x-kala-scope"  # on every operation: the scope its token needs (Decision 31)
SCOPE_WORDS = (*tokens.SCOPES, "any", "none")


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _null_or(schema: Schema) -> Schema:
    """Go leaves a field alone on `null`: every input field also takes null."""
    return {"anyOf": [schema, {"type": "null"}]}


def _text(description: str, field: str | None = None, **more: Any) -> Schema:
    """A string with its limit from the limits table (only the body's 1 MiB when none)."""
    limit = limits.FIELDS.get(field or "", limits.Limit())
    return {"type": "string", "maxLength": limit.max_length, "description": description, **more}


def _int(description: str, field: str) -> Schema:
    limit = limits.FIELDS[field]
    return {"type": "integer", "minimum": limit.minimum, "maximum": limit.maximum,
            "description": f"{description} (at most {limit.maximum}: {limit.why})"}


IDS = {"type": "array", "items": {"type": "string", "maxLength": limits.ID_LENGTH}}
DURATION = "an ISO 8601 duration of fixed length (PT30S, PT1.5S, P2D), at most P36500D"
HEADERS = {
    "type": "object",
    "additionalProperties": {"type": "array", "items": {"type": "string"}},
    "description": "header name -> values; names are HTTP tokens, values have no line breaks",
}
CODES = {"type": "array", "items": {"type": "integer", "minimum": 100, "maximum": 599}}

# What a client sends (POST /job/, PUT /job/{id}/). Keys match case-insensitively and unknown
# keys are ignored (Kala's Go decoding, docs/kala.md §1.5), so the object is open.
JOB_INPUT: Schema = {
    "type": "object",
    "description": (
        "A Kala job. Every key is optional and may be null (null leaves the field unset); keys "
        "match case-insensitively and unknown keys are ignored, as in Kala. Every string may "
        "not contain U+0000; the whole body is at most 1 MiB and JSON nests at most "
        f"{limits.MAX_NESTING} levels (Decision 25)."
    ),
    "properties": {
        "name": _null_or(_text("the job's name (required, not empty)")),
        "id": _null_or(_text(
            "a client-chosen id (Decision 14), kept when it is fresh, matches "
            f"{ID_PATTERN} and has at most {limits.ID_LENGTH} characters; any other id is "
            "ignored and a UUID is made, as Kala ignores client ids")),
        "command": _null_or(_text("a local job's command (type 0), split into words like a "
                                  "POSIX shell, run without a shell (Decision 11)")),
        "owner": _null_or(_text("who owns the job (an email in Kala)")),
        "disabled": _null_or({"type": "boolean", "description": "a disabled job never fires"}),
        "dependent_jobs": _null_or({**IDS, "description": "ids of the jobs that run after it"}),
        "parent_jobs": _null_or({**IDS, "description": "ids of the jobs it runs after"}),
        "on_failure_job": _null_or(_text("id of a job to run when a run fails")),
        "schedule": _null_or(_text(
            "ISO 8601 repeating interval R<n>/<start>/<interval> (docs/kala.md §5), e.g. "
            "R5/2026-12-01T09:00:00Z/PT1H; empty = run once now")),
        "retries": _null_or(_int("extra attempts after a failed one", "retries")),
        "epsilon": _null_or(_text("ISO 8601 duration: how late a scheduled run may start")),
        "next_run_at": _null_or(TIME),
        "TemplateDelimiters": _null_or(_text('two tokens and a space, e.g. "{{ }}"')),
        "resume_at_next_scheduled_time": _null_or(
            {"type": "boolean", "description": "skip missed occurrences (Decision 5)"}),
        "metadata": _null_or({
            "type": "object",
            "description": "Kala's counters, which a client may seed",
            "properties": {
                "success_count": _null_or(_int("successful runs", "metadata.success_count")),
                "last_success": _null_or(TIME),
                "error_count": _null_or(_int("failed attempts", "metadata.error_count")),
                "last_error": _null_or(TIME),
                "last_attempted_run": _null_or(TIME),
                "number_of_finished_runs": _null_or(
                    _int("finished runs", "metadata.number_of_finished_runs")),
            },
        }),
        "type": _null_or({"type": "integer", "enum": [0, 1, 2],
                          "description": "0 = local command, 1 = remote HTTP call, 2 = Celery "
                                         "task (from issue 15's merge on)"}),
        "remote_properties": _null_or({
            "type": "object",
            "description": "a remote job's HTTP call (type 1, Decision 12)",
            "properties": {
                "url": _null_or(_text("http:// or https:// URL with a host")),
                "method": _null_or(_text("HTTP method (default GET)")),
                "body": _null_or(_text("request body")),
                "headers": _null_or(HEADERS),
                "timeout": _null_or(_int("seconds for the whole call; 0 = 30 s",
                                         "remote_properties.timeout")),
                "expected_response_codes": _null_or(
                    {**CODES, "description": "statuses that count as success (default [200])"}),
            },
        }),
        "stats": _null_or({"type": "array", "description": "ignored (Kala's run list)"}),
        "is_done": _null_or({"type": "boolean", "description": "ignored on input"}),
        # Extensions (docs/design.md Decisions 3, 6, 7, 11, 17)
        "timezone": _null_or(_text("IANA zone for calendar steps (Decision 3)", "timezone")),
        "retry_delay": _null_or(_text(f"wait before a retry: {DURATION}", "retry_delay")),
        "retry_backoff": _null_or({"type": "boolean", "description": "double retry_delay"}),
        "run_timeout": _null_or(_text(f"kill a command after: {DURATION}", "run_timeout")),
        "allow_overlap": _null_or({"type": "boolean", "description": "runs may overlap"}),
        "queue": _null_or(_text("Celery queue of its runs (Decision 17)", "queue",
                                pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]*$")),
        # Extensions of issue 15 (Decisions 18-21): the server reads them from that merge on
        "cron": _null_or(_text("a cron expression instead of schedule, in timezone "
                               "(Decision 18)")),
        "overlap": _null_or({"enum": ["buffer", "skip", "allow"],
                             "description": "while a run is in flight (Decision 21)"}),
        "parents_mode": _null_or({"enum": ["any", "all"],
                                  "description": "a child runs after any or all parents "
                                                 "succeeded (Decision 20)"}),
        "source": _null_or({"enum": ["", "apply"],
                            "description": "where the job comes from (Decision 30): \"apply\" "
                                           "for `kala-celery apply`; \"config\" (a Celery "
                                           "app's beat_schedule) is the beat's alone (400)"}),
        "celery_task": _null_or({
            "type": "object",
            "description": "type 2: a task of the workers' Celery app (Decision 19)",
            "properties": {
                "name": _null_or(_text("the task's registered name")),
                "args": _null_or({"type": "array"}),
                "kwargs": _null_or({"type": "object"}),
            },
        }),
    },
}


def _closed(properties: dict[str, Schema], optional: Iterable[str] = ()) -> Schema:
    """An object the server writes: exactly these keys (the optional ones only when set)."""
    skip = set(optional)
    return {"type": "object", "properties": properties, "additionalProperties": False,
            "required": [name for name in properties if name not in skip]}


STRING = {"type": "string"}
COUNT = {"type": "integer", "minimum": 0}
KALA_STAT = _closed({
    "job_id": STRING, "ran_at": SHOWN_TIME, "number_of_retries": COUNT,
    "success": {"type": "boolean"},
    "execution_duration": {**COUNT, "description": "nanoseconds"},
})
EXTENSIONS = ("timezone", "retry_delay", "retry_backoff", "run_timeout", "allow_overlap",
              "queue", "cron", "overlap", "celery_task", "parents_mode", "source")
JOB: Schema = _closed(
    {
        "name": STRING, "id": STRING, "command": STRING, "owner": STRING,
        "disabled": {"type": "boolean"},
        "dependent_jobs": {"type": ["array", "null"], "items": STRING},
        "parent_jobs": {"type": ["array", "null"], "items": STRING},
        "on_failure_job": STRING, "schedule": STRING, "retries": COUNT, "epsilon": STRING,
        "next_run_at": SHOWN_TIME, "TemplateDelimiters": STRING,
        "resume_at_next_scheduled_time": {"type": "boolean"},
        "metadata": _closed({
            "success_count": COUNT, "last_success": SHOWN_TIME, "error_count": COUNT,
            "last_error": SHOWN_TIME, "last_attempted_run": SHOWN_TIME,
            "number_of_finished_runs": COUNT,
        }),
        "type": {"type": "integer"},
        "remote_properties": _closed({
            "url": STRING, "method": STRING, "body": STRING,
            "headers": {"type": ["object", "null"],
                        "additionalProperties": {"type": "array", "items": STRING}},
            "timeout": {"type": "integer"},
            "expected_response_codes": {"type": ["array", "null"],
                                        "items": {"type": "integer"}},
        }),
        "stats": {"type": ["array", "null"], "items": _ref("KalaStat"),
                  "description": "the job's last 100 finished runs"},
        "is_done": {"type": "boolean"},
        "timezone": STRING, "retry_delay": STRING, "retry_backoff": {"const": True},
        "run_timeout": STRING, "allow_overlap": {"const": True}, "queue": STRING,
        "cron": STRING, "overlap": {"enum": ["skip", "allow"]},
        "celery_task": {"type": "object", "required": ["name"],
                        "properties": {"name": STRING, "args": {"type": ["array", "null"]},
                                       "kwargs": {"type": ["object", "null"]}}},
        "parents_mode": {"const": "all"},
        "source": {"enum": ["config", "apply"],
                   "description": "config: made from a Celery app's beat_schedule entry (its "
                                  "name is the job's), read-only here (409); apply: made by "
                                  "`kala-celery apply` (Decision 30)"},
    },
    optional=EXTENSIONS,
)
JOB["description"] = ("A job in Kala's shape (keys in this order); the extension keys appear "
                      "only when set (Decision 13 for times, 14 for ids).")
EXECUTION = _closed({
    "id": STRING, "job_id": STRING, "ran_at": SHOWN_TIME, "number_of_retries": COUNT,
    "status": {"enum": ["Pending", "Started", "Success", "Failed", "Skipped"]},
    "execution_duration": {**COUNT, "description": "nanoseconds"},
    "output": {"type": "string", "description": "the last 64 Ki characters"},
    "state": {"enum": ["pending", "sent", "started", "success", "failed", "skipped", "lost"]},
    "trigger": {"enum": ["schedule", "manual", "parent", "on_failure"]},
    "scheduled_for": SHOWN_TIME, "error": STRING,
})
APP_STATS = _closed({"Stats": _closed({
    "active_jobs": COUNT, "disabled_jobs": COUNT, "jobs": COUNT, "error_count": COUNT,
    "success_count": COUNT, "next_run_at": SHOWN_TIME, "last_attempted_run": SHOWN_TIME,
    "created": SHOWN_TIME,
})})
ERROR = {
    "type": "object",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {
        "error": {"type": "string", "description": "what was wrong (Decision 2)"},
        "error_id": {"type": "string", "description": "a 500's id, also in the server log"},
    },
}
HEALTH = _closed({"status": {"enum": ["ok", "unavailable"]}, "database": STRING,
                  "broker": STRING})
TOKEN_NAME = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$"  # store/tokens.py
SCOPE_LIST = {"type": "array", "minItems": 1, "uniqueItems": True,
              "items": {"enum": list(tokens.SCOPES)}}
TOKEN = _closed({"name": STRING, "scopes": SCOPE_LIST, "created_at": SHOWN_TIME})
AUDIT_ENTRY = _closed({
    "id": COUNT, "at": SHOWN_TIME,
    "token": {"type": ["string", "null"], "description": "the token's name; null: no token"},
    "address": {"type": ["string", "null"]},
    "via": {"type": "string", "description": "api, webui, or the command"},
    "action": {"enum": list(audit.ACTIONS)},
    "job_id": {"type": ["string", "null"]}, "job_name": {"type": ["string", "null"]},
    "changes": {"type": "object", "description": "{field: [before, after]}",
                "additionalProperties": {"type": "array", "minItems": 2, "maxItems": 2}},
})
SCHEMAS = {"Job": JOB, "JobInput": JOB_INPUT, "KalaStat": KALA_STAT, "Execution": EXECUTION,
           "AppStats": APP_STATS, "Error": ERROR, "Health": HEALTH, "Token": TOKEN,
           "AuditEntry": AUDIT_ENTRY}

JSON = "application/json"


def _json(schema: Schema, description: str, **headers: Schema) -> Schema:
    out: Schema = {"description": description, "content": {JSON: {"schema": schema}}}
    if headers:
        out["headers"] = {name: {"schema": s} for name, s in headers.items()}
    return out


def _empty(description: str, **headers: Schema) -> Schema:
    out: Schema = {"description": description}
    if headers:
        out["headers"] = {name: {"schema": s} for name, s in headers.items()}
    return out


def _error(description: str, **headers: Schema) -> Schema:
    return _json(_ref("Error"), description, **headers)


UNKNOWN_ID = _empty("no such job or run (Kala's empty 404)")
NEXT = _closed({"next": {"type": "array", "items": SHOWN_TIME, "maxItems": 100}})
TOTAL = {"type": "string", "pattern": "^[0-9]+$"}
PAGE = [
    {"name": "offset", "in": "query", "required": False,
     "schema": {"type": "integer", "minimum": 0, "maximum": limits.INT64_MAX},
     "description": "first run to show (oldest first); without it, the most recent `limit`"},
    {"name": "limit", "in": "query", "required": False,
     "schema": {"type": "integer", "minimum": 0, "maximum": limits.INT64_MAX},
     "description": "runs per page: at most 1000 are shown (0 = 1000)"},
]
EXAMPLES = {
    "scheduled": {"summary": "a command every hour, 3 runs", "value": {
        "name": "hourly", "command": "echo hi", "schedule": "R2/2999-12-01T09:00:00Z/PT1H"}},
    "remote": {"summary": "an HTTP call every day in a zone", "value": {
        "name": "hook", "type": 1, "schedule": "R/2999-12-01T09:00:00Z/P1D",
        "timezone": "Europe/Paris", "retries": 2, "retry_delay": "PT30S",
        "remote_properties": {"url": "http://127.0.0.1:9/hook", "method": "POST",
                              "expected_response_codes": [200, 204]}}},
    "disabled": {"summary": "a disabled one-off", "value": {
        "name": "later", "command": "echo later", "disabled": True}},
}
BODY = {"required": True, "content": {JSON: {"schema": _ref("JobInput"), "examples": EXAMPLES}}}
REFUSED = _error("the body or a field was refused; the message names it (Decision 25)")


# Conditional GET (Decision 34): the store's version as an entity tag.
ETAG = {"type": "string", "pattern": '^"[0-9]+"$'}
IF_NONE_MATCH = [{"name": "If-None-Match", "in": "header", "required": False,
                  "schema": {"type": "string"},
                  "description": "the ETag of the client's last copy: 304 if nothing it shows "
                                 "changed since (Decision 34)"}]
NOT_MODIFIED = _empty("nothing the document shows changed since the ETag in If-None-Match",
                      ETag=ETAG)


def _links(job_id: str, *operations: str) -> dict[str, Schema]:
    """OpenAPI links: what a client (and schemathesis' stateful phase) can do next."""
    return {op: {"operationId": op, "parameters": {"job_id": job_id}} for op in operations}


def _op(summary: str, responses: dict[str, Schema], *, scope: str, **more: Any) -> Schema:
    """An operation, with the scope a token needs for it (Decision 31): one of
    store.tokens.SCOPES, "any" (any token, when one is configured) or "none" (no token)."""
    assert scope in SCOPE_WORDS, scope
    return {"summary": summary, "responses": responses, SCOPE_KEY: scope, **more}


# One operation per view (kala_celery/api/views.py), by the view's name.
OPERATIONS: dict[str, Schema] = {
    "create_job": _op("create a job", {
        "201": {**_json(_closed({"id": STRING}), "created"), "links": _links(
            "$response.body#/id", "get_job", "replace_job", "start_job", "job_stats",
            "list_executions", "get_params", "enable_job", "disable_job", "delete_job")},
        "400": REFUSED, "403": _error("local jobs are disabled (KALA_ALLOW_SHELL=false)"),
        "409": _error("the client-chosen id exists (for a job made from a beat_schedule "
                      "entry, the message names the entry), or a concurrent change"),
        "413": _error("the body is larger than 1 MiB"),
    }, requestBody=BODY, scope="write"),
    "list_jobs": _op("every job", {
        "200": _json({"type": "object", "required": ["jobs"], "additionalProperties": False,
                      "properties": {"jobs": {"type": "object",
                                              "additionalProperties": _ref("Job")}}},
                     "every job by id", ETag=ETAG),
        "304": NOT_MODIFIED,
    }, parameters=IF_NONE_MATCH, scope="read"),
    "delete_all": _op("delete every job and run, but jobs made from a beat_schedule "
                      "(Decision 30)", {"204": _empty("deleted")}, scope="write"),
    "get_job": _op("one job", {
        "200": _json(_closed({"job": _ref("Job")}), "the job", ETag=ETAG), "304": NOT_MODIFIED,
        "404": UNKNOWN_ID,
    }, parameters=IF_NONE_MATCH, scope="read"),
    "delete_job": _op("delete a job and the dependents only it runs (Decision 9)", {
        "204": _empty("deleted"), "404": UNKNOWN_ID,
        "409": _error("the job comes from a beat_schedule entry, named in the message: it "
                      "is removed in code (Decision 30)"),
    }, scope="write"),
    "replace_job": _op("replace a job (NextKala, Decision 14); a refused body changes nothing", {
        "200": _json(_closed({"job": _ref("Job")}), "the job as stored"),
        "400": REFUSED, "403": _error("local jobs are disabled"), "404": UNKNOWN_ID,
        "409": _error("a concurrent change, or the job comes from a beat_schedule entry, "
                      "named in the message: it is changed in code (Decision 30)"),
        "413": _error("the body is larger than 1 MiB"),
    }, requestBody=BODY, scope="write"),
    "job_stats": _op("a job's finished runs, Kala's JobStats, oldest first", {
        "200": _json(_closed({"job_stats": {"type": ["array", "null"],
                                            "items": _ref("KalaStat")}}),
                     "null before the first finished run", **{"X-Total-Count": TOTAL}),
        "400": _error("a bad offset or limit"), "404": UNKNOWN_ID,
    }, parameters=PAGE, scope="read"),
    "start_job": _op("run a job now (Decision 10)", {
        "202": {**_json(_closed({"id": STRING}), "still running: Location is the execution",
                        Location=STRING),
                "links": {"get_execution": {"operationId": "get_execution", "parameters": {
                    "job_id": "$request.path.job_id", "run_id": "$response.body#/id"}}}},
        "204": _empty("the run finished (whatever its outcome)"),
        "404": UNKNOWN_ID, "409": _error("the job is disabled"),
    }, parameters=[{"name": "wait", "in": "query", "required": False,
                    "schema": {"type": "string", "maxLength": 16},
                    "description": "false, 0 or no: answer 202 at once"}], scope="run"),
    "enable_job": _op("enable a job (Decision 8)", {
        "204": _empty("enabled"), "404": UNKNOWN_ID,
    }, scope="run"),
    "disable_job": _op("disable a job (Decision 8)", {
        "204": _empty("disabled"), "404": UNKNOWN_ID,
    }, scope="run"),
    "app_stats": _op("Kala's app stats", {
        "200": _json(_ref("AppStats"), "the stats"),
    }, scope="read"),
    "get_params": _op("a remote job's request body (NextKala)", {
        "200": {"description": "the body as stored: as JSON, or as text when it is not JSON",
                "content": {JSON: {"schema": {}}, "text/plain": {"schema": STRING}}},
        "403": _error("not a remote job"), "404": UNKNOWN_ID,
    }, scope="read"),
    "put_params": _op("set a remote job's request body (NextKala)", {
        "204": _empty("stored"), "400": _error("not UTF-8, or holds U+0000"),
        "403": _error("not a remote job"), "404": UNKNOWN_ID,
        "413": _error("the body is larger than 1 MiB"),
    }, requestBody={"required": True, "content": {"text/plain": {"schema": {"type": "string"}}}},
        scope="write"),
    "list_executions": _op("a job's runs (NextKala), oldest first", {
        "200": {**_json(_closed({"job_stats": {"type": "array", "items": _ref("Execution")}}),
                        "the runs", **{"X-Total-Count": TOTAL}),
                "links": {"get_execution": {"operationId": "get_execution", "parameters": {
                    "job_id": "$request.path.job_id",
                    "run_id": "$response.body#/job_stats/0/id"}}}},
        "400": _error("a bad offset or limit"), "404": UNKNOWN_ID,
    }, parameters=PAGE, scope="read"),
    "get_execution": _op("one run (NextKala)", {
        "200": _json(_closed({"job_run": _ref("Execution")}), "the run"), "404": UNKNOWN_ID,
    }, scope="read"),
    "put_execution_status": _op("set a run's status (NextKala status callback, Decision 15)", {
        "204": _empty("set"), "400": _error("not a JSON string, or an unknown status"),
        "404": UNKNOWN_ID, "413": _error("the body is larger than 1 MiB"),
    }, requestBody={"required": True, "content": {JSON: {"schema": {
        "type": "string", "enum": ["Success", "Failed", "Started", "Running"],
        "description": "any case"}}}}, scope="run"),
    "openapi_document": _op("this document", {
        "200": _json({"type": "object"}, "OpenAPI 3.1"),
    }, scope="read"),
    # Issue 15's previews (Decision 24): in the document once their routes are in ROUTES
    "job_next": _op("the next occurrences the beat fires for a job", {
        "200": _json(NEXT, "none when nothing is scheduled"),
        "400": _error("count is not 1-100"), "404": UNKNOWN_ID,
    }, parameters=[{"name": "count", "in": "query", "required": False,
                    "schema": {"type": "integer", "minimum": 1, "maximum": 100}}], scope="read"),
    "schedule_preview": _op("the first occurrences of a schedule or cron, before a job exists", {
        "200": _json(NEXT, "the occurrences"),
        "400": _error("not a JSON object, or the schedule a create would refuse"),
        "413": _error("the body is larger than 1 MiB"),
    }, requestBody={"required": True, "content": {JSON: {"schema": {
        "type": "object",
        "properties": {"schedule": _null_or(_text("as a job's schedule")),
                       "cron": _null_or(_text("as a job's cron")),
                       "timezone": _null_or(_text("IANA zone", "timezone")),
                       "count": _null_or({"type": "integer", "minimum": 1, "maximum": 100})},
    }}}}, scope="read"),
    # Decisions 31 and 32: tokens and the audit trail (kala_celery/api/admin.py)
    "list_tokens": _op("every named token: its name, scopes and creation (never a secret)", {
        "200": _json(_closed({"tokens": {"type": "array", "items": _ref("Token")}}),
                     "the tokens by name"),
    }, scope="admin"),
    "create_token": _op("a new named token; its secret is in this answer only", {
        "201": _json(_closed({"name": STRING, "scopes": SCOPE_LIST, "secret": STRING}),
                     "created: keep the secret, it is not stored"),
        "400": _error("not a JSON object with a name and scopes, or a bad name or scope"),
        "403": _error("the API is open (no token configured): make the first token with "
                      "`kala-celery token create`; or the token lacks the admin scope"),
        "409": _error("a token of that name exists"),
        "413": _error("the body is larger than 1 MiB"),
    }, requestBody={"required": True, "content": {JSON: {"schema": {
        "type": "object", "required": ["name", "scopes"],
        "properties": {"name": {"type": "string", "pattern": TOKEN_NAME},
                       "scopes": SCOPE_LIST}}}}}, scope="admin"),
    "revoke_token": _op("revoke a named token: its secret opens nothing from now on", {
        "204": _empty("revoked"), "404": _empty("no such token"),
    }, scope="admin"),
    "list_audit": _op("the audit trail: the newest changes, oldest first (Decision 32)", {
        "200": _json(_closed({"audit": {"type": "array", "items": _ref("AuditEntry")}}),
                     "the rows"),
        "400": _error("a bad since or limit"),
    }, parameters=[
        {"name": "job", "in": "query", "required": False, "schema": {"type": "string"},
         "description": "only this job's rows"},
        {"name": "since", "in": "query", "required": False, "schema": TIME,
         "description": "only rows at or after this time"},
        {"name": "limit", "in": "query", "required": False,
         "schema": {"type": "integer", "minimum": 0, "maximum": limits.INT64_MAX},
         "description": "rows to show, the newest: at most 1000 (0 or none = 100)"},
    ], scope="admin"),
}

# Every operation under the prefix may also answer these (Decisions 1, 2, 16, 26, 31).
FORBIDDEN = "the token lacks the scope this operation needs (x-kala-scope), which is named"
COMMON = {
    "401": _error("a token is configured and the request has not got one that is valid "
                  "(Decisions 16, 31)", **{"WWW-Authenticate": STRING}),
    "403": _error(FORBIDDEN),
    "500": _error("a bug: logged with its traceback under the error id (Decision 26)"),
    "503": _error("the job store is unavailable; nothing was stored",
                  **{"Retry-After": STRING}),
}
REDIRECT = {
    "301": {"description": "GET/HEAD without the trailing slash (Kala), or an unclean path "
                           "(`//`, `/./`): Location is the clean one",
            "headers": {"Location": {"schema": STRING}},
            "content": {"text/html": {"schema": STRING}}},
    "308": _empty("other methods without the trailing slash, or an unclean path (Decision 1): "
                  "same method and body", Location=STRING),
    "401": COMMON["401"],
}
COMMON.update({"301": REDIRECT["301"], "308": REDIRECT["308"]})  # unclean paths, Decision 1


def _responses(own: dict[str, Schema]) -> dict[str, Schema]:
    """An operation's answers with the common ones; its own 403 also names the scope's."""
    out = {**COMMON, **own}
    if "403" in own and own["403"] is not COMMON["403"]:
        description = f"{own['403']['description']}; or {FORBIDDEN}"
        out["403"] = {**own["403"], "description": description}
    return out


def _path(rule: str) -> tuple[str, list[Schema]]:
    """A Flask rule as an OpenAPI path template, with its path parameters."""
    names = re.findall(r"<(?:[^:>]+:)?([^>]+)>", rule)
    path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule)
    params = [{"name": name, "in": "path", "required": True,
               "schema": {"type": "string", "minLength": 1}} for name in names]
    return path, params


def _shared_paths(paths: dict[str, Schema]) -> None:
    """A literal path that a templated one also matches (`/job/all/` and `/job/{job_id}/`)
    answers that one's other methods too (GET /job/all/ is get_job with the id "all"): say so
    on the literal path, as werkzeug routes it."""
    templated = [(re.compile(re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(t))), t)
                 for t in paths if "{" in t]
    for path, item in paths.items():
        if "{" in path:
            continue
        for pattern, template in templated:
            if not pattern.fullmatch(path):
                continue
            for method, operation in paths[template].items():
                if method != "parameters" and method not in item:
                    item[method] = {**operation, "operationId": f"{operation['operationId']}_"
                                    f"{path.rstrip('/').rsplit('/', 1)[-1]}"}
                    item[method].pop("parameters", None)


def document(
    routes: Iterable[Route],
    prefix: str = "/api/v1",
    *,
    health_path: str | None = "/health",
    metrics_path: str | None = "/metrics",
) -> Schema:
    """The OpenAPI 3.1 document for the API mounted at `prefix` (paths are absolute, the
    server is the root), with /health and /metrics where they are mounted."""
    base = prefix.rstrip("/")
    paths: dict[str, Schema] = {}
    for rule, methods, view in routes:
        operation = OPERATIONS[view.__name__]  # a KeyError: document the new route here
        path, params = _path(base + rule)
        item = paths.setdefault(path, {"parameters": params} if params else {})
        for method in methods:
            item[method.lower()] = {
                **operation, "operationId": view.__name__,
                "responses": _responses(operation["responses"]),
            }
        if path.endswith("/"):
            bare = paths.setdefault(path.rstrip("/"), {"parameters": params} if params else {})
            for method in methods:
                bare[method.lower()] = {
                    "summary": f"redirect to {path}", "operationId": f"{view.__name__}_slashless",
                    SCOPE_KEY: "any",
                    "responses": REDIRECT if method == "GET" else {"308": REDIRECT["308"],
                                                                   "401": REDIRECT["401"]},
                }
    _shared_paths(paths)
    if health_path:
        paths[health_path] = {"get": _op("is the job store reachable, is the broker", {
            "200": _json(_ref("Health"), "both are"),
            "503": _json(_ref("Health"), "a part is unavailable"),
        }, operationId="health", security=[{}], scope="none")}
    if metrics_path:
        paths[metrics_path] = {"get": _op("Prometheus metrics", {
            "200": {"description": "Prometheus text",
                    "content": {"text/plain": {"schema": STRING}}},
            "401": COMMON["401"],
            "503": {"description": "the job store is unavailable",
                    "content": {"text/plain": {"schema": STRING}}},
            "403": COMMON["403"],
        }, operationId="metrics", scope="read")}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "kala-celery",
            "version": __version__,
            "summary": "Kala's job scheduler API, run on Celery",
            "description": (
                "Kala's REST API (and NextKala's routes) with kala-celery's extensions. "
                "Errors are JSON `{\"error\": ...}`; an unknown id is Kala's empty 404. "
                "Request bodies are at most 1 MiB; every limit is stated on its field."
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{}, {"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer",
                "description": "KALA_API_TOKEN (every scope) or a named token (`kala-celery "
                               "token create`); needed on every route once a token is "
                               "configured, each operation's x-kala-scope says which scope",
            }},
        },
    }


def serve(routes: Iterable[Route]) -> Response:
    """GET <prefix>/openapi.json: the document of this app's API, from its `routes`."""
    rules = {rule.endpoint: rule.rule for rule in current_app.url_map.iter_rules()}
    doc = document(
        routes,
        kala().url_prefix,
        health_path=rules.get("kala_health"),
        metrics_path=rules.get("kala_metrics"),
    )
    return http.json_response(doc)
