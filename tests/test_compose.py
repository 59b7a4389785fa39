"""docker-compose.yml, Dockerfile and .dockerignore, checked without a Docker engine: the file is
parsed (PyYAML) and interpolated the way Compose does, the commands are parsed by granian and
Celery, the settings by kala's own Settings, and the API and worker healthchecks are run
against a real API and a real worker."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tarfile
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from kala_celery.config import Settings
from tests.processes import Command, wait_for

try:
    import yaml
except ImportError:  # pragma: no cover - the `test` extra must provide it
    pytest.fail("tests/test_compose.py needs PyYAML: pip install pyyaml", pytrace=False)

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
KALA_SERVICES = ("api", "beat", "worker")
SECRETS = {"KALA_API_TOKEN": "t0ken", "FLOWER_BASIC_AUTH": "ops:pw"}


# ------------------------------------------------------------------ compose, as Compose reads it


class MissingVariable(ValueError):
    pass


_VARIABLE = re.compile(r"\$(?:(\$)|\{(\w+)(?:(:?)([-?])([^}]*))?\}|(\w+))")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable syntax: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default},
    ${VAR:?error}, ${VAR?error}."""

    def one(match: re.Match[str]) -> str:
        dollar, name, colon, kind, word, bare = match.groups()
        if dollar:
            return "$"
        if bare:
            return env.get(bare, "")
        value = env.get(name)
        unset = value is None or (colon == ":" and value == "")
        if kind == "-" and unset:
            return word
        if kind == "?" and unset:
            raise MissingVariable(f"{name}: {word}")
        return value or ""

    return _VARIABLE.sub(one, text)


def resolved(value: object, env: dict[str, str]) -> object:
    if isinstance(value, str):
        return interpolate(value, env)
    if isinstance(value, list):
        return [resolved(v, env) for v in value]
    if isinstance(value, dict):
        return {k: resolved(v, env) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def compose(raw: dict) -> dict:
    """The file as `docker compose config` would give it with the two secrets set."""
    return resolved(raw, SECRETS)


def services(compose: dict) -> dict[str, dict]:
    return compose["services"]


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "environment as a mapping"
    return {k: str(v) for k, v in env.items()}


def published(service: dict) -> dict[int, str]:
    """container port -> published port, from the short "HOST:CONTAINER" syntax."""
    ports = {}
    for port in service.get("ports", []):
        host, _, container = str(port).rpartition(":")
        ports[int(container)] = host
    return ports


# ------------------------------------------------------------------ the compose file


def test_the_services_and_how_many_of_each(compose) -> None:
    svc = services(compose)
    assert set(svc) == {"redis", "postgres", "api", "beat", "worker", "flower"}
    replicas = {name: s.get("deploy", {}).get("replicas", 1) for name, s in svc.items()}
    assert replicas == {"redis": 1, "postgres": 1, "api": 1, "beat": 2, "worker": 2, "flower": 1}
    for name in ("beat", "worker"):  # a fixed name or host port would stop the second replica
        assert "container_name" not in svc[name] and "ports" not in svc[name]
    for name in (*KALA_SERVICES, "flower"):  # all built from the repository's Dockerfile
        assert svc[name]["build"] == "." and svc[name]["image"] == svc["api"]["image"]


def test_every_kala_process_gets_the_same_environment(compose) -> None:
    svc = services(compose)
    envs = [env_of(svc[name]) for name in KALA_SERVICES]
    assert envs[0] == envs[1] == envs[2]
    shared = envs[0]
    assert {"KALA_DATABASE_URL", "KALA_BROKER_URL", "KALA_DATA_DIR", "KALA_API_TOKEN"} <= set(
        shared)
    flower = env_of(svc["flower"])
    assert {k: v for k, v in flower.items() if k.startswith("KALA_")} == shared
    assert flower["FLOWER_BASIC_AUTH"] == SECRETS["FLOWER_BASIC_AUTH"]
    assert "FLOWER_UNAUTHENTICATED_API" not in flower  # Flower's API stays behind the password

    # what kala itself makes of that environment
    settings = Settings.from_env(shared)
    assert settings.api_token == SECRETS["KALA_API_TOKEN"]
    db = make_url(settings.db_url)
    pg = env_of(svc["postgres"])
    assert db.drivername == "postgresql+psycopg" and (db.host, db.port) == ("postgres", 5432)
    assert (db.username, db.password, db.database) == (
        pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"], pg["POSTGRES_DB"])
    assert settings.broker == "redis://redis:6379/0"
    assert Path(shared["KALA_DATA_DIR"]).is_absolute()


def test_secrets_come_from_the_environment(raw) -> None:
    """No token or Flower password is written in the file: `up` refuses to start without them;
    the postgres password is optional and used by both sides when given."""
    for secret in SECRETS:
        others = {k: v for k, v in SECRETS.items() if k != secret}
        with pytest.raises(MissingVariable, match=secret):
            resolved(raw, others)
    assert SECRETS["KALA_API_TOKEN"] not in json.dumps(raw)
    env = {**SECRETS, "POSTGRES_PASSWORD": "s3cret"}
    svc = resolved(raw, env)["services"]
    assert make_url(env_of(svc["api"])["KALA_DATABASE_URL"]).password == "s3cret"
    assert env_of(svc["postgres"])["POSTGRES_PASSWORD"] == "s3cret"


def test_health_gates_the_start_order(compose) -> None:
    svc = services(compose)
    deps = {name: s.get("depends_on", {}) for name, s in svc.items()}
    for name, wanted in deps.items():
        assert isinstance(wanted, dict), f"{name}: depends_on with conditions"
        for target, how in wanted.items():
            assert how == {"condition": "service_healthy"}, (name, target)
            assert "healthcheck" in svc[target], f"{name} waits for {target}'s health"
    assert {name: set(d) for name, d in deps.items()} == {
        "redis": set(), "postgres": set(),
        "api": {"postgres", "redis"},
        # after the API: it creates the schema, and it is healthy only once the DB answers
        "beat": {"api", "redis"}, "worker": {"api", "redis"},
        "flower": {"redis"},
    }
    healthy = {name for name, s in svc.items() if "healthcheck" in s}
    assert healthy == set(svc)  # every service
    for name in healthy:
        assert svc[name]["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL")
    assert svc["redis"]["healthcheck"]["test"][1:] == ["redis-cli", "ping"]
    assert svc["redis"]["command"] == ["redis-server", "--appendonly", "yes"]  # deploy.md
    assert svc["postgres"]["healthcheck"]["test"][1] == "pg_isready"


def test_data_lives_in_named_volumes(compose) -> None:
    svc = services(compose)
    assert set(compose["volumes"]) == {"postgres-data", "redis-data"}
    assert svc["postgres"]["volumes"] == ["postgres-data:/var/lib/postgresql/data"]
    assert svc["redis"]["volumes"] == ["redis-data:/data"]
    assert "--appendonly" in svc["redis"]["command"]  # queued runs survive a Redis restart


def test_only_the_api_and_flower_are_published(raw, compose) -> None:
    ports = {name: published(s) for name, s in services(compose).items() if "ports" in s}
    assert ports == {"api": {8000: "8000"}, "flower": {5555: "5555"}}
    moved = resolved(raw, {**SECRETS, "KALA_API_PORT": "18000", "FLOWER_PORT": "15555"})
    assert published(moved["services"]["api"]) == {8000: "18000"}
    assert published(moved["services"]["flower"]) == {5555: "15555"}


def test_api_is_granian_on_the_wsgi_entry_on_all_interfaces(compose) -> None:
    from granian.cli import cli
    from granian.constants import Interfaces

    command = services(compose)["api"]["command"]
    assert command[0] == "granian"
    args = cli.make_context("granian", command[1:]).params  # granian's own argument parser
    assert args["app"] == "kala_celery.wsgi:app"
    assert args["interface"] == Interfaces.WSGI
    assert (args["host"], args["port"]) == ("0.0.0.0", 8000)
    # POST /job/start/ holds a thread while it waits (up to KALA_START_WAIT) for its run
    assert (args["workers"], args["blocking_threads"], args["backpressure"]) == (1, 16, 16)
    assert args["log_access_enabled"] is True
    import importlib.util

    assert importlib.util.find_spec("kala_celery.wsgi") is not None


def test_celery_commands(compose) -> None:
    svc = services(compose)
    beat, worker, flower = (svc[name]["command"] for name in ("beat", "worker", "flower"))
    assert beat[:4] == ["celery", "-A", "kala_celery", "beat"]
    assert beat[beat.index("-S") + 1] == "kala"
    schedulers = {ep.name: ep.value for ep in entry_points(group="celery.beat_schedulers")}
    assert schedulers.get("kala") == "kala_celery.beat:KalaScheduler"  # what `-S kala` loads
    assert worker[:4] == ["celery", "-A", "kala_celery", "worker"]
    assert "-n" not in worker  # celery@<container hostname>: unique per replica, as the
    # healthcheck expects
    assert flower[:4] == ["celery", "-A", "kala_celery", "flower"]
    assert {"--port=5555", "--address=0.0.0.0"} <= set(flower)
    assert "127.0.0.1:5555/healthcheck" in " ".join(svc["flower"]["healthcheck"]["test"])


# ------------------------------------------------------------------ the healthchecks, for real


def test_api_healthcheck_passes_only_with_the_token(compose, tmp_path) -> None:
    from kala_celery.api import create_app
    from tests.live import LiveServer

    test = services(compose)["api"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    token = SECRETS["KALA_API_TOKEN"]
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'kala.db'}", data_dir=tmp_path,
                        api_token=token)
    server = LiveServer(create_app(settings))
    try:
        port = server.url.rpartition(":")[2]
        code = test[3].replace("127.0.0.1:8000/", f"127.0.0.1:{port}/")
        assert code != test[3]

        def check(with_token: str) -> int:
            env = {"PATH": "/usr/bin:/bin", "KALA_API_TOKEN": with_token}
            return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                  timeout=30).returncode

        assert check(token) == 0
        assert check("wrong") != 0  # 401: unhealthy, so beat and worker would not start
    finally:
        server.stop()


def test_worker_healthcheck_pings_this_containers_worker(compose, redis_server, tmp_path) -> None:
    """In a container $HOSTNAME is the container's hostname, and a worker started without -n is
    celery@<hostname>: the healthcheck pings exactly that worker."""
    import redis

    test = services(compose)["worker"]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    broker = f"redis://{redis_server.host}:{redis_server.port}/5"
    redis.Redis.from_url(broker).flushdb()
    env = {**env_of(services(compose)["worker"]), "KALA_BROKER_URL": broker,
           "KALA_DATABASE_URL": f"sqlite:///{tmp_path / 'kala.db'}",
           "KALA_DATA_DIR": str(tmp_path)}
    worker_cmd = services(compose)["worker"]["command"]
    assert worker_cmd[0] == "celery"
    worker = Command([sys.executable, "-m", *worker_cmd, "-c", "1"], tmp_path / "worker.log", env)
    try:
        wait_for(lambda: " ready." in worker.output() or worker.proc.poll() is not None, 45,
                 "worker ready")
        assert worker.proc.poll() is None, worker.output()
        shell = test[1].replace("celery ", f"{shlex.quote(sys.executable)} -m celery ", 1)

        def health(hostname: str) -> subprocess.Popen:
            return subprocess.Popen(["sh", "-c", shell], env={**env, "HOSTNAME": hostname,
                                                              "PATH": "/usr/bin:/bin"},
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

        mine, other = health(socket.gethostname()), health("some-other-container")
        out = mine.communicate(timeout=40)[0]
        assert mine.returncode == 0 and "pong" in out, out
        assert other.wait(timeout=40) != 0  # no reply from a worker that is not there
    finally:
        worker.stop()


def test_beat_healthcheck_reads_this_containers_beat(compose, redis_server, tmp_path) -> None:
    """`kala-celery health beat` passes once this host's beat has swept, fails for another
    host's, and fails again once the beat is gone for KALA_WORKER_TIMEOUT."""
    import redis

    svc = services(compose)["beat"]
    test = svc["healthcheck"]["test"]
    assert test[:2] == ["CMD", "kala-celery"]
    broker = f"redis://{redis_server.host}:{redis_server.port}/6"
    redis.Redis.from_url(broker).flushdb()
    env = {**env_of(svc), "KALA_BROKER_URL": broker, "KALA_WORKER_TIMEOUT": "PT2S",
           "KALA_DATABASE_URL": f"sqlite:///{tmp_path / 'kala.db'}",
           "KALA_DATA_DIR": str(tmp_path)}
    command = svc["command"]
    assert command[0] == "celery"
    beat = Command([sys.executable, "-m", *command], tmp_path / "beat.log", env)
    check = [sys.executable, "-m", "kala_celery", *test[2:]]

    def health(*extra: str) -> int:
        return subprocess.run([*check, *extra], env={**env, "PATH": "/usr/bin:/bin"},
                              capture_output=True, timeout=30).returncode

    try:
        wait_for(lambda: health() == 0 or beat.proc.poll() is not None, 45, "beat healthy")
        assert beat.proc.poll() is None, beat.output()
        assert health("--host", "some-other-container") == 1
    finally:
        beat.stop()
    wait_for(lambda: health() == 1, 20, "beat unhealthy after it stopped")


# ------------------------------------------------------------------ Dockerfile and .dockerignore


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    steps = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, args = line.partition(" ")
            steps.append((keyword.upper(), " ".join(args.split())))
    return steps


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: `**` any number of directories, `*` and `?` within
    one path element."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i:end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps `path` out of the build context (it or a parent matches;
    the file uses no `!` exceptions)."""
    lines = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [_ignore_regex(p.strip("/")) for p in lines if p and not p.startswith("#")]
    assert not any(p.pattern.startswith("!") for p in patterns)
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    return any(p.fullmatch(prefix) for p in patterns for prefix in prefixes)


def test_dockerfile_installs_the_package_and_runs_as_a_user() -> None:
    steps = dockerfile()
    assert steps[0] == ("FROM", "python:3.11-slim")
    runs = [args for keyword, args in steps if keyword == "RUN"]
    [install] = [i for i, (k, a) in enumerate(steps) if k == "RUN" and "pip install" in a]
    assert 'pip install ".[postgres,server]"' in steps[install][1]
    users = [(i, args) for i, (keyword, args) in enumerate(steps) if keyword == "USER"]
    assert users, "a USER instruction"
    index, user = users[-1]
    assert index > install and user not in ("root", "0") and not user.startswith(("root:", "0:"))
    assert any(a.startswith("useradd") and a.split()[-1] == user for a in runs)
    assert all(keyword != "RUN" for keyword, _ in steps[index:])  # nothing runs as root after
    [cmd] = [json.loads(args) for keyword, args in steps if keyword == "CMD"]
    assert cmd[:2] == ["kala-celery", "api"]  # refuses 0.0.0.0 without KALA_API_TOKEN
    workdirs = [args for keyword, args in steps if keyword == "WORKDIR"]
    assert ("ENV", "KALA_DATA_DIR=/var/lib/kala") in steps and workdirs[-1] == "/var/lib/kala"
    assert any("--home-dir /var/lib/kala" in a for a in runs)  # the user owns its data dir


def copied_sources() -> list[str]:
    sources = []
    for keyword, args in dockerfile():
        if keyword == "COPY":
            *src, _dest = args.split()
            sources += [s for s in src if not s.startswith("--")]
    return sources


def test_the_build_context_holds_what_pip_install_needs(tmp_path) -> None:
    """What the Dockerfile copies (and .dockerignore lets through) builds the package."""
    sources = copied_sources()
    assert set(sources) == {"pyproject.toml", "README.md", "kala_celery"}
    for source in sources:
        assert not dockerignored(source), source
    for junk in (".git", "kala-data", "tests/test_compose.py", ".venv",
                 "kala_celery/__pycache__/cli.cpython-311.pyc", "kala_celery.egg-info"):
        assert dockerignored(junk), junk
    context = tmp_path / "context"
    context.mkdir()
    for source in sources:
        origin = ROOT / source
        if origin.is_dir():
            shutil.copytree(origin, context / source,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(origin, context / source)
    # setuptools' own build backend, as `pip install .` calls it (an sdist needs no `wheel`)
    build = "import sys; from setuptools import build_meta as b; print(b.build_sdist(sys.argv[1]))"
    result = subprocess.run([sys.executable, "-c", build, str(tmp_path / "dist")], cwd=context,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    with tarfile.open(tmp_path / "dist" / result.stdout.split()[-1]) as sdist:
        names = {name.partition("/")[2] for name in sdist.getnames()}
        [entry] = [n for n in sdist.getnames() if n.endswith(".egg-info/entry_points.txt")]
        entry_text = sdist.extractfile(entry).read().decode()
    migrations = {f"kala_celery/store/migrations/{name}" for name in (
        "env.py", "script.py.mako", "versions/0001_release_0_1_0.py",
        "versions/0002_liveness_and_metrics.py")}
    assert {"kala_celery/wsgi.py", "kala_celery/beat/scheduler.py", "README.md"} <= names
    assert migrations <= names
    assert "kala = kala_celery.beat:KalaScheduler" in entry_text
    assert "kala-celery = kala_celery.ops.cli:main" in entry_text
    # what a wheel (a non-editable install) gets: build_py's tree, package data included
    build = ("from setuptools import setup; "
             "setup(script_args=['build_py', '--build-lib', 'wheel-tree'])")
    result = subprocess.run([sys.executable, "-c", build], cwd=context, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    tree = {p.relative_to(context / "wheel-tree").as_posix()
            for p in (context / "wheel-tree").rglob("*") if p.is_file()}
    assert migrations <= tree
