"""`kala-celery apply` and `export` (jobs as code, Decision 30 in docs/design.md), run as the
real command on both stores: an export applied is a no-op, a changed file prints its diff
and exits 2, --dry-run writes nothing, --prune disables only apply's own jobs, and a refusal
exits 1 with the API's own message and writes nothing at all."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import yaml
from sqlalchemy import select

from kala_celery.beat.beat_schedule import job_id_for, sync_from_code, wanted
from kala_celery.store import jobs
from kala_celery.store.tables import Job, utcnow
from tests.live import Api
from tests.test_api_jobs import future
from tests.test_config_jobs import app_with


def kala(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kala_celery", *args, "--db", db_url],
                          capture_output=True, text=True, timeout=60)


def apply(db_url: str, path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return kala(db_url, "apply", "-f", str(path), *flags)


def export(db_url: str, fmt: str = "yaml") -> str:
    done = kala(db_url, "export", "--format", fmt)
    assert done.returncode == 0, done.stderr
    return done.stdout


def stored(api: Api) -> dict[str, tuple]:
    with api.state.sessions() as session:
        rows = session.scalars(select(Job)).all()
        return {j.id: (j.name, j.command, j.schedule, j.disabled, j.source, j.next_run_at)
                for j in rows}


def test_an_export_applied_changes_nothing_and_a_changed_file_is_a_diff(
    api: Api, db_url: str, tmp_path: Path
) -> None:
    parent = api.create(name="parent", command="echo p", schedule=f"R/{future()}/PT1H",
                        retries=2, timezone="Europe/Paris", overlap="skip")
    api.create(name="child", command="echo c", parent_jobs=[parent])
    api.create(name="task", type=2, celery_task={"name": "a.b", "args": [1], "kwargs": {"k": 2}},
               cron="*/5 * * * *", queue="reports", epsilon="PT30S")
    api.create(name="remote", type=1, remote_properties={"url": "http://127.0.0.1:9/x",
                                                         "method": "POST", "timeout": 5},
               schedule=f"R5/{future()}/P1D", disabled=True)
    before = stored(api)
    text = export(db_url)
    bodies = yaml.safe_load(text)
    names = [b["name"] for b in bodies]
    assert names.index("parent") < names.index("child")  # parents first, so it applies
    assert "next_run_at" not in text and "metadata" not in text and "retries: 2" in text
    assert all("source" not in b for b in bodies)  # the API's jobs have none
    (tmp_path / "jobs.yaml").write_text(text)
    (tmp_path / "jobs.json").write_text(export(db_url, "json"))
    for name in ("jobs.yaml", "jobs.json"):
        done = apply(db_url, tmp_path / name)
        assert (done.returncode, done.stdout, done.stderr) == (0, "", ""), done
    assert stored(api) == before

    # a changed file: one field changed, one job new
    task = next(b for b in bodies if b["name"] == "task")
    task["queue"] = "other"
    bodies.append({"name": "new one", "command": "echo new", "schedule": f"R/{future()}/PT2H"})
    (tmp_path / "changed.yaml").write_text(yaml.safe_dump(bodies))
    dry = apply(db_url, tmp_path / "changed.yaml", "--dry-run")
    assert dry.returncode == 2, dry
    assert f'~ task ({task["id"]}): queue: "reports" -> "other"' in dry.stdout
    assert "+ new one (" in dry.stdout and ": created" in dry.stdout
    assert stored(api) == before  # a dry run writes nothing
    done = apply(db_url, tmp_path / "changed.yaml")
    assert done.returncode == 2 and done.stdout.replace("(dry run: nothing was written)\n",
                                                        "").count("\n") == 2, done
    assert api.job(task["id"])["queue"] == "other"
    created = [j for j in stored(api).values() if j[0] == "new one"]
    assert len(created) == 1 and created[0][4] == "apply"
    assert apply(db_url, tmp_path / "changed.yaml").returncode == 0  # keyed by name: no twin

    # links a body gives from above (dependent_jobs) are a change too, and then the same
    child = next(b for b in bodies if b["name"] == "child")
    parent_body = next(b for b in bodies if b["name"] == "parent")
    (tmp_path / "links.yaml").write_text(yaml.safe_dump([{**parent_body,
                                                          "dependent_jobs": []}]))
    unlinked = apply(db_url, tmp_path / "links.yaml")
    assert unlinked.returncode == 2, unlinked
    assert f'dependent_jobs: ["{child["id"]}"] -> (unset)' in unlinked.stdout
    assert api.job(parent)["dependent_jobs"] is None
    assert apply(db_url, tmp_path / "links.yaml").returncode == 0


def test_prune_disables_only_apply_jobs_the_file_left_out(
    api: Api, db_url: str, tmp_path: Path
) -> None:
    mine = api.create(name="from the api", command="true", schedule=f"R/{future()}/PT1H")
    file = [{"id": "keep", "name": "keep", "command": "true", "schedule": f"R/{future()}/PT1H"},
            {"id": "drop", "name": "drop", "command": "true", "schedule": f"R/{future()}/PT1H"}]
    (tmp_path / "two.json").write_text(json.dumps(file))
    assert apply(db_url, tmp_path / "two.json").returncode == 2
    (tmp_path / "one.json").write_text(json.dumps(file[:1]))
    without = apply(db_url, tmp_path / "one.json")
    assert without.returncode == 0 and api.job("drop")["disabled"] is False
    dry = apply(db_url, tmp_path / "one.json", "--prune", "--dry-run")
    assert (dry.returncode, dry.stdout.splitlines()[0]) == (2, "- drop (drop): disabled")
    assert api.job("drop")["disabled"] is False
    pruned = apply(db_url, tmp_path / "one.json", "--prune")
    assert pruned.returncode == 2 and pruned.stdout == "- drop (drop): disabled\n"
    assert api.job("drop")["disabled"] is True and api.job("drop")["next_run_at"] == (
        "0001-01-01T00:00:00Z")
    assert api.job(mine)["disabled"] is False and api.job("keep")["disabled"] is False
    assert apply(db_url, tmp_path / "one.json", "--prune").returncode == 0


def test_a_refusal_exits_1_with_the_apis_message_and_writes_nothing(
    api: Api, db_url: str, tmp_path: Path
) -> None:
    sync_from_code(api.state.sessions, wanted(app_with(
        {"nightly": {"task": "t.a", "schedule": timedelta(hours=1)}})), jobs.Rules(), utcnow())
    before = stored(api)
    good = {"name": "good", "command": "true", "schedule": f"R/{future()}/PT1H"}
    cases = [
        {"name": "bad", "command": "true", "schedule": "R/2001-01-01T00:00:00Z/PT1H"},
        {"name": "typed", "command": "true", "retries": "3"},
        {"name": "mine", "command": "true", "source": "config"},
    ]
    for bad in cases:
        (tmp_path / "bad.json").write_text(json.dumps([good, bad]))
        done = apply(db_url, tmp_path / "bad.json")
        answer = api.http.post("/job/", json=bad)
        assert answer.status_code == 400
        assert done.returncode == 1 and done.stdout == "", done
        assert f"job 2 ('{bad['name']}'): {answer.json()['error']}" in done.stderr, done
        assert stored(api) == before
    config = {"id": job_id_for("nightly"), "name": "nightly", "type": 2,
              "celery_task": {"name": "t.b"}, "schedule": f"R/{future()}/PT1H"}
    (tmp_path / "config.json").write_text(json.dumps([good, config]))
    done = apply(db_url, tmp_path / "config.json")
    assert done.returncode == 1 and "beat_schedule entry 'nightly'" in done.stderr, done
    assert stored(api) == before
    (tmp_path / "broken.yaml").write_text("- name: [unclosed\n")
    broken = apply(db_url, tmp_path / "broken.yaml")
    assert broken.returncode == 1 and "not YAML or JSON" in broken.stderr
    assert "nightly" not in export(db_url)  # jobs from code are not exported
