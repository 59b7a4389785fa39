"""The Prometheus rules we ship (deploy/prometheus/kala-celery.rules.yml): promtool checks them
and runs their unit tests, every alert is tested both ways and has its runbook section in
docs/alerts.md, they name only series /metrics exports, and a real Prometheus scraping a real
`kala-celery serve` raises the beat alert once serve's beat is killed.

promtool and prometheus are Debian's `prometheus` package (scripts/test.sh installs it); where
they are missing these tests skip, except under CI=true, where that is a failure."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from kala_celery.api import create_app
from kala_celery.config import Settings
from kala_celery.runs.heartbeats import record_beat, record_heartbeat
from kala_celery.store.tables import utcnow
from tests.processes import Command, free_port, port_open, wait_for

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "kala-celery.rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "kala-celery.rules.test.yml"
ALERTS_DOC = ROOT / "docs" / "alerts.md"


def binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{name} is missing (scripts/test.sh installs Debian's prometheus)")
        pytest.skip(f"{name} is not installed (apt-get install prometheus brings it)")
    return found


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def records() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["record"] for group in groups for rule in group["rules"] if "record" in rule]


def test_promtool_checks_the_rules() -> None:
    done = subprocess.run([binary("promtool"), "check", "rules", str(RULES)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    count = len(alerts()) + len(records())
    assert f"SUCCESS: {count} rules found" in done.stdout


def test_the_rules_unit_tests_pass() -> None:
    done = subprocess.run([binary("promtool"), "test", "rules", str(RULE_TESTS)],
                          capture_output=True, text=True, timeout=120, cwd=RULES.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_is_tested_firing_and_quiet_and_every_record_is_tested() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fires, quiet = set(), set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert len(names) >= 6
    assert names - fires == set()  # each is shown to fire ...
    assert names - quiet == set()  # ... and to stay quiet when it should
    tested = {check["expr"] for case in tests for check in case.get("promql_expr_test", [])}
    assert set(records()) - tested == set()


def test_every_alert_has_annotations_a_severity_and_a_runbook_section() -> None:
    headings = re.findall(r"^## (\S+)$", ALERTS_DOC.read_text(), re.MULTILINE)
    for rule in alerts():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        notes = rule["annotations"]
        assert notes["summary"] and notes["description"], name
        assert notes["runbook_url"] == f"docs/alerts.md#{name.lower()}", name
        assert name in headings, f"docs/alerts.md has no section for {name}"
    assert sorted(headings) == sorted(rule["alert"] for rule in alerts())  # none left over


def test_the_rules_name_only_series_that_metrics_exports(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'kala.db'}", data_dir=tmp_path)
    app = create_app(settings, publish=lambda runs: [])
    with app.extensions["kala"].engine.begin() as conn:  # a beat and a worker have rows
        record_beat(conn, "beat-host/1", utcnow())
        record_heartbeat(conn, "celery@w1/10", utcnow(), [])
    body = app.test_client().get("/metrics").get_data(as_text=True)
    exported = {sample.name for family in text_string_to_metric_families(body)
                for sample in family.samples}
    exprs = " ".join(rule["expr"] for group in yaml.safe_load(RULES.read_text())["groups"]
                     for rule in group["rules"])
    named = set(re.findall(r"\bkala_[a-z_]+", exprs))
    assert "kala_beat_last_tick_timestamp_seconds" in named
    assert named - exported == set()


# --- end to end: a real Prometheus, a real serve ------------------------------------------

TOKEN = "alert-rules-test-token"  # /metrics needs it, so the scrape must send it


def rules_for_test(beat_threshold: int, beat_for: str) -> str:
    """The shipped rules with the beat alert's threshold and `for:` shortened, so a test sees
    it within seconds; everything else as shipped."""
    document = yaml.safe_load(RULES.read_text())
    [beat] = [rule for rule in alerts_of(document) if rule["alert"] == "KalaBeatNotTicking"]
    beat["expr"], replaced = re.subn(r"> 60\b", f"> {beat_threshold}", beat["expr"])
    assert replaced == 1, beat["expr"]  # the shipped threshold is where this expects it
    assert beat["for"] == "1m"
    beat["for"] = beat_for
    return yaml.safe_dump(document, sort_keys=False)


def alerts_of(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


def beat_pid(serve_pid: int) -> int | None:
    """serve's `python -m kala_celery beat` child (kala_celery/ops/supervise.py)."""
    found = subprocess.run(["pgrep", "-P", str(serve_pid)], capture_output=True, text=True)
    for pid in map(int, found.stdout.split()):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            continue
        if b"kala_celery" in args and b"beat" in args:
            return pid
    return None


def get_json(url: str, **params: str) -> dict[str, Any] | None:
    try:
        response = httpx.get(url, params=params, timeout=5)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def beat_alert(prometheus: str) -> dict[str, Any] | None:
    found = get_json(f"{prometheus}/api/v1/alerts")
    assert found is not None
    for alert in found["data"]["alerts"]:
        if alert["labels"]["alertname"] == "KalaBeatNotTicking":
            return alert
    return None


def test_a_real_prometheus_raises_the_beat_alert_when_serves_beat_is_killed(
        tmp_path: Path) -> None:
    prometheus_bin = binary("prometheus")
    api_port, prom_port = free_port(), free_port()
    (tmp_path / "kala-celery.rules.yml").write_text(rules_for_test(12, "1s"))
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp_path / "kala-celery.rules.yml")],
        "scrape_configs": [{"job_name": "kala-celery",  # the scrape docs/operate.md shows
                            "authorization": {"credentials": TOKEN},
                            "static_configs": [{"targets": [f"127.0.0.1:{api_port}"]}]}],
    }))
    serve = Command.kala("serve", "-p", f":{api_port}", "--data-dir", str(tmp_path / "data"),
                        log=tmp_path / "serve.log", env={"KALA_API_TOKEN": TOKEN})
    prometheus = Command(
        [prometheus_bin, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        tmp_path / "prometheus.log")
    base = f"http://127.0.0.1:{prom_port}"
    try:
        wait_for(lambda: port_open(api_port) or serve.proc.poll() is not None, 60, "serve")
        assert serve.proc.poll() is None, serve.output()
        wait_for(lambda: port_open(prom_port) or prometheus.proc.poll() is not None, 30,
                 "prometheus")
        assert prometheus.proc.poll() is None, prometheus.output()

        def ticks() -> list[Any]:
            found = get_json(f"{base}/api/v1/query",
                             query="kala_beat_last_tick_timestamp_seconds")
            return found["data"]["result"] if found else []

        [tick] = wait_for(ticks, 40, "Prometheus to scrape serve's beat's tick")
        assert tick["metric"]["job"] == "kala-celery"
        unauthorised = httpx.get(f"http://127.0.0.1:{api_port}/metrics", timeout=5)
        assert unauthorised.status_code == 401  # so the tick came through the token
        # while the beat ticks the alert is quiet (also past a start before its first tick)
        wait_for(lambda: beat_alert(base) is None, 20, "the beat alert to be quiet")

        pid = wait_for(lambda: beat_pid(serve.proc.pid), 10, "serve's beat process")
        assert isinstance(pid, int)
        os.kill(pid, signal.SIGKILL)

        def raised() -> dict[str, Any] | None:
            alert = beat_alert(base)
            return alert if alert and alert["state"] in ("pending", "firing") else None

        alert = wait_for(raised, 40, "the beat alert once the beat is dead")
        assert isinstance(alert, dict)
        assert alert["labels"]["severity"] == "critical"
        assert alert["labels"]["job"] == "kala-celery"
        assert alert["annotations"]["runbook_url"] == "docs/alerts.md#kalabeatnotticking"
        assert float(alert["value"]) > 12  # seconds since the newest tick
        assert serve.proc.poll() is None  # the API still answers: only the beat is gone
    finally:
        prometheus.kill()
        serve.kill()
