"""`kala-celery run` (Kala's debug command), `token`, and the CLI's help, as subprocesses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def kala(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kala_celery", *args], capture_output=True,
                          text=True, timeout=60)


def test_run_prints_kala_style_success() -> None:
    done = kala("run", "echo 'hello  world'")
    assert done.returncode == 0
    assert done.stdout == "Command Succeeded!\nOutput:  hello  world\n"


def test_run_failure_exits_1_with_the_reason() -> None:
    done = kala("run", "sh -c 'echo oops; exit 4'")
    assert done.returncode == 1
    assert "Command Failed with err: exit status 4: oops" in done.stderr
    missing = kala("run", "no-such-binary-kala")
    assert missing.returncode == 1 and "executable file not found" in missing.stderr


def test_run_argument_errors() -> None:
    none = kala("run")
    assert none.returncode == 1 and "Must include a command" in none.stderr
    two = kala("run", "echo", "hi")
    assert two.returncode == 1 and "Must only include a command" in two.stderr


def test_help_lists_every_command() -> None:
    done = kala("--help")
    assert done.returncode == 0
    for command in ("serve", "api", "worker", "beat", "run"):
        assert f"  {command} " in done.stdout


def test_api_and_serve_take_workers_and_access_log() -> None:
    for command in ("api", "serve"):
        done = kala(command, "--help")
        assert done.returncode == 0
        assert "-w, --workers" in done.stdout
        assert "--access-log / --no-access-log" in done.stdout
    bad = kala("api", "--workers", "0")
    assert bad.returncode == 2 and "--workers" in bad.stderr


def test_default_workers_is_one_per_cpu_within_bounds() -> None:
    from kala_celery.ops.server import default_workers

    assert 1 <= default_workers() <= 8


def test_db_commands_on_an_unreachable_database_say_so_without_a_traceback() -> None:
    from tests.processes import free_port

    url = f"postgresql://kala@127.0.0.1:{free_port()}/kala"  # nothing listens there
    for command in (("db", "upgrade"), ("db", "current")):
        done = kala(*command, "--db", url)
        assert done.returncode != 0, command
        assert "Traceback" not in done.stderr, (command, done.stderr)
        assert "connection" in (done.stdout + done.stderr).lower(), command


def test_token_create_list_revoke(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'kala.db'}"
    made = kala("token", "create", "deploy", "--scopes", "run,read", "--db", db)
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert secret.startswith("kala_") and "shown only now" in made.stderr
    listed = kala("token", "list", "--db", db)
    assert listed.stdout.split("\t")[:2] == ["deploy", "read,run"]
    assert secret not in listed.stdout
    again = kala("token", "create", "deploy", "--scopes", "read", "--db", db)
    assert again.returncode == 1 and "exists" in again.stderr
    bad = kala("token", "create", "x", "--scopes", "read,sudo", "--db", db)
    assert bad.returncode == 1 and "'sudo'" in bad.stderr
    assert kala("token", "revoke", "deploy", "--db", db).returncode == 0
    assert kala("token", "list", "--db", db).stdout == ""
    gone = kala("token", "revoke", "deploy", "--db", db)
    assert gone.returncode == 1 and "no token named 'deploy'" in gone.stderr
