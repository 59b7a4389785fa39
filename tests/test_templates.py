"""Kala's Go-template subset: field references rendered with Go's formatting."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest

from kala_celery.store.tables import Job
from kala_celery.tasks.templates import (
    GO_ZERO_TIME,
    TemplateError,
    go_time,
    job_data,
    parse_delimiters,
    render,
)

NEXT = datetime(2026, 11, 22, 19, 28, 53, tzinfo=UTC)

ROW = SimpleNamespace(
    id="job-1",
    name="backup",
    command="echo {{.Name}}",
    owner="o@x",
    disabled=False,
    on_failure_job="",
    schedule="R2/2026-11-22T19:27:53Z/PT10S",
    retries=3,
    epsilon="PT5S",
    next_run_at=NEXT,
    template_delimiters="{{ }}",
    resume_at_next_scheduled_time=True,
    success_count=7,
    last_success=datetime(2026, 1, 2, 3, 4, 5, 120000, tzinfo=UTC),
    error_count=0,
    last_error=None,
    last_attempted_run=NEXT,
    number_of_finished_runs=8,
    job_type=1,
    remote_url="http://example.test/hook",
    remote_method="POST",
    remote_body='{"a": 1}',
    remote_timeout=0,
    is_done=False,
)
DATA = job_data(ROW)


@pytest.mark.parametrize(
    ("text", "delimiters", "expected"),
    [
        ("echo {{.Name}}", "{{ }}", "echo backup"),
        ("echo {{ .Id }}", "{{ }}", "echo job-1"),
        ("mail {{$.Owner}}", "{{ }}", "mail o@x"),
        ("{{ $.Owner }}", "{{ }}", "o@x"),
        ("n={{.Metadata.SuccessCount}}", "{{ }}", "n=7"),
        (
            "{{.RemoteProperties.Url}}?m={{.RemoteProperties.Method}}",
            "{{ }}",
            "http://example.test/hook?m=POST",
        ),
        ("[[.Name]] {{.Name}}", "[[ ]]", "backup {{.Name}}"),
        ("${.Name}-${ .Retries }", "${ }", "backup-3"),
        ("<% .Name %>", "<% %>", "backup"),
        ("{{.Disabled}} {{.ResumeAtNextScheduledTime}} {{.IsDone}}", "{{ }}", "false true false"),
        ("{{.Retries}}/{{.JobType}}/{{.RemoteProperties.Timeout}}", "{{ }}", "3/1/0"),
        ("{{.Epsilon}} {{.Schedule}}", "{{ }}", "PT5S R2/2026-11-22T19:27:53Z/PT10S"),
        ("{{.NextRunAt}}", "{{ }}", "2026-11-22 19:28:53 +0000 UTC"),
        ("{{.Metadata.LastSuccess}}", "{{ }}", "2026-01-02 03:04:05.12 +0000 UTC"),
        ("{{.Metadata.LastError}}", "{{ }}", GO_ZERO_TIME),
        ("{{.Command}}", "{{ }}", "echo {{.Name}}"),  # no second pass
        ("{{.OnFailureJob}}|", "{{ }}", "|"),
        ("no actions here } }} {", "{{ }}", "no actions here } }} {"),
        ("lone }} right", "{{ }}", "lone }} right"),
        ("a {{- .Name -}} b", "{{ }}", "abackupb"),
        ("a {{- .Name }} b", "{{ }}", "abackup b"),
        ("a{{/* a comment */}}b", "{{ }}", "ab"),
        ("", "{{ }}", ""),
        ("{{.Name}} untouched", "", "{{.Name}} untouched"),
        ("{{ broken", "", "{{ broken"),  # templating off: nothing is parsed
    ],
)
def test_render(text: str, delimiters: str, expected: str) -> None:
    assert render(text, delimiters, DATA) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{{.Nope}}", "can't evaluate field Nope"),
        ("{{.Metadata.Nope}}", "can't evaluate field Nope in .Metadata"),
        ("{{.Name.Length}}", "can't evaluate field Length in .Name"),
        ("{{.name}}", "can't evaluate field name"),  # Go field names are case-sensitive
        ('{{.Name | printf "%q"}}', "unsupported action"),
        ('{{printf "%s" .Name}}', "unsupported action"),
        ("{{if .Disabled}}x{{end}}", "unsupported action"),
        ("{{$x := 1}}", "unsupported action"),
        ("{{.}}", "unsupported action"),
        ("{{$}}", "unsupported action"),
        ("{{ $ .Name }}", "unsupported action"),
        ("{{}}", "missing value"),
        ("{{.Metadata}}", "is a structure"),
        ("echo {{.Name", "unclosed action"),
        ("ok {{.Name}} then {{ .Id", "unclosed action"),
        ("{{/* not closed }}", "unclosed comment"),
    ],
)
def test_render_errors(text: str, message: str) -> None:
    with pytest.raises(TemplateError) as caught:
        render(text, "{{ }}", DATA)
    assert str(caught.value).startswith("template: ")
    assert message in str(caught.value)


@pytest.mark.parametrize(
    "delimiters",
    ["{{", "{{  }}", "a b c", " {{ }}", "{{ }} ", "{{\t}}", "{{}}"],
)
def test_invalid_delimiters(delimiters: str) -> None:
    with pytest.raises(TemplateError, match=r"^Job has invalid templating delimiters\.$"):
        parse_delimiters(delimiters)
    with pytest.raises(TemplateError, match="invalid templating delimiters"):
        render("echo {{.Name}}", delimiters, DATA)


def test_empty_delimiters_switch_templating_off() -> None:
    assert render("echo {{.Nope}} {{", "", DATA) == "echo {{.Nope}} {{"


@pytest.mark.parametrize(
    ("delimiters", "pair"),
    [("{{ }}", ("{{", "}}")), ("${ }", ("${", "}")), ("[[ ]]", ("[[", "]]"))],
)
def test_parse_delimiters(delimiters: str, pair: tuple[str, str]) -> None:
    assert parse_delimiters(delimiters) == pair


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "0001-01-01 00:00:00 +0000 UTC"),
        (datetime(1, 1, 1, tzinfo=UTC), "0001-01-01 00:00:00 +0000 UTC"),
        (datetime(2026, 11, 22, 19, 28, 53), "2026-11-22 19:28:53 +0000 UTC"),  # naive = UTC
        (
            datetime(2026, 11, 22, 19, 28, 53, 31006, tzinfo=UTC),
            "2026-11-22 19:28:53.031006 +0000 UTC",
        ),
        (datetime(2026, 11, 22, 19, 28, 53, 500000, tzinfo=UTC), "2026-11-22 19:28:53.5 +0000 UTC"),
        (
            datetime(2026, 1, 5, 8, 0, tzinfo=ZoneInfo("Europe/Berlin")),
            "2026-01-05 08:00:00 +0100 CET",
        ),
        (
            datetime(2026, 1, 5, 8, 0, tzinfo=ZoneInfo("America/St_Johns")),
            "2026-01-05 08:00:00 -0330 NST",
        ),
        (
            datetime(2026, 1, 5, 8, 0, tzinfo=timezone(timedelta(hours=2))),
            "2026-01-05 08:00:00 +0200 +0200",
        ),
        (
            datetime(2026, 1, 5, 8, 0, tzinfo=timezone(timedelta(0))),
            "2026-01-05 08:00:00 +0000 UTC",
        ),
    ],
)
def test_go_time(value: datetime | None, expected: str) -> None:
    assert go_time(value) == expected


def test_job_data_shape() -> None:
    assert list(DATA) == [
        "Name",
        "Id",
        "Command",
        "Owner",
        "Disabled",
        "OnFailureJob",
        "Schedule",
        "Retries",
        "Epsilon",
        "NextRunAt",
        "TemplateDelimiters",
        "ResumeAtNextScheduledTime",
        "Metadata",
        "JobType",
        "RemoteProperties",
        "IsDone",
    ]
    assert list(DATA["Metadata"]) == [
        "SuccessCount",
        "LastSuccess",
        "ErrorCount",
        "LastError",
        "LastAttemptedRun",
        "NumberOfFinishedRuns",
    ]
    assert DATA["RemoteProperties"] == {
        "Url": "http://example.test/hook",
        "Method": "POST",
        "Body": '{"a": 1}',
        "Timeout": 0,
    }


def test_job_data_from_an_orm_row_with_unset_columns() -> None:
    """A transient ORM row has None for every column not given: Go's zero values come out."""
    job = Job(id="j", name="n", command="echo", template_delimiters="{{ }}")
    data = job_data(job)
    text = (
        "{{.Id}} {{.Name}} {{.Owner}}| {{.Disabled}} {{.Retries}} {{.Metadata.ErrorCount}} "
        "{{.NextRunAt}} {{.IsDone}}"
    )
    assert render(text, job.template_delimiters, data) == f"j n | false 0 0 {GO_ZERO_TIME} false"
