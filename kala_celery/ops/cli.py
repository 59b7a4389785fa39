"""`kala-celery`: serve the scheduler, or run one of its parts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from kala_celery.config import ConfigError, Settings


def _settings(
    db: str | None, broker: str | None, data_dir: str | None, owner: str | None
) -> Settings:
    try:
        base = Settings.from_env()
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    return base.with_overrides(
        database_url=db,
        broker_url=broker,
        data_dir=Path(data_dir) if data_dir else None,
        default_owner=owner,
    )


def _store_options(fn):
    fn = click.option("--data-dir", help="Where the embedded defaults keep files (KALA_DATA_DIR).")(
        fn
    )
    fn = click.option("--broker", help="Celery broker URL (KALA_BROKER_URL).")(fn)
    fn = click.option("--db", help="SQLAlchemy URL of the job store (KALA_DATABASE_URL).")(fn)
    return fn


def _http_options(fn):
    fn = click.option(
        "--access-log/--no-access-log",
        default=False,
        show_default=True,
        help="Log one line per request on stdout.",
    )(fn)
    fn = click.option(
        "-w",
        "--workers",
        type=click.IntRange(min=1),
        help="API worker processes (default: one per CPU, at most 8).",
    )(fn)
    fn = click.option(
        "--insecure", is_flag=True, help="Allow a non-loopback address without a token."
    )(fn)
    fn = click.option("-o", "--default-owner", help="Owner for jobs posted without one.")(fn)
    fn = click.option(
        "-i", "--interface", default="127.0.0.1", show_default=True, help="Address to listen on."
    )(fn)
    fn = click.option(
        "-p", "--port", default="8000", show_default=True, help="Port (Kala's ':8000' works too)."
    )(fn)
    return fn


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kala-celery")
def main() -> None:
    """Kala's job scheduler API and semantics, run on Celery.

    \b
    serve   everything on one machine: the API, a beat and a worker
    api     the REST API alone (also: granian --interface wsgi kala_celery.wsgi:app)
    worker  a Celery worker that runs jobs (also: celery -A kala_celery worker)
    beat    the scheduler that dispatches due jobs (also: celery -A kala_celery beat -S kala)
    run     run one command the way a worker would (Kala's debug command)
    import  the jobs of a Kala, django-celery-beat or RedBeat into the job store
    apply   make a file of jobs (YAML or JSON) true in the job store; export writes one
    db      the job store's schema: `db upgrade`, `db current`
    token   named API tokens with scopes: `token create | list | revoke`
    health  exit 0 if a beat or a worker on this host is alive (for compose and k8s)
    """


def _serve_api(
    port: str,
    interface: str,
    insecure: bool,
    settings: Settings,
    *,
    workers: int | None,
    access_log: bool,
    with_companions: bool,
) -> None:
    from kala_celery.api import create_app
    from kala_celery.ops.server import BindError, check_bind, parse_port, serve_api
    from kala_celery.ops.supervise import companions

    try:
        number = parse_port(port)
    except BindError as exc:
        raise click.UsageError(str(exc)) from None
    from kala_celery.store.schema import SchemaError

    try:
        app = create_app(settings)
    except SchemaError as exc:  # behind head: `kala-celery db upgrade`
        raise click.ClickException(str(exc)) from None
    try:
        check_bind(interface, settings.api_token, insecure, named=_named_tokens(app))
    except BindError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(startup_line(settings, interface, number), err=True)
    if not with_companions:
        serve_api(app, interface, number, workers=workers, access_log=access_log)
        return
    with companions(settings):
        serve_api(app, interface, number, workers=workers, access_log=access_log)


def _named_tokens(app: Any) -> bool:
    """Whether the job store holds a named token (False when it cannot be read now)."""
    from sqlalchemy.exc import SQLAlchemyError

    from kala_celery.store import tokens

    try:
        with app.extensions["kala"].sessions() as session:
            return tokens.any_token(session)
    except SQLAlchemyError:
        return False


def hidden(url: str) -> str:
    """A URL with its password shown as ***."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy parses (some broker URLs)
        from kombu.utils.url import maybe_sanitize_url

        return str(maybe_sanitize_url(url, "***"))


def startup_line(settings: Settings, interface: str, port: int) -> str:
    """The one line `serve` and `api` print: where the API listens, the job store, the broker."""
    host = f"[{interface}]" if ":" in interface else interface
    return (f"kala-celery: API on http://{host}:{port}/api/v1/ · jobs in "
            f"{hidden(settings.db_url)} · broker {hidden(settings.broker)}")


def _http_command(name: str, summary: str, *, with_companions: bool) -> None:
    @main.command(name, help=summary)
    @_http_options
    @_store_options
    def command(
        port: str,
        interface: str,
        default_owner: str | None,
        insecure: bool,
        workers: int | None,
        access_log: bool,
        db: str | None,
        broker: str | None,
        data_dir: str | None,
    ) -> None:
        settings = _settings(db, broker, data_dir, default_owner)
        _serve_api(
            port,
            interface,
            insecure,
            settings,
            workers=workers,
            access_log=access_log,
            with_companions=with_companions,
        )


_http_command(
    "serve",
    "Run the scheduler on this machine: API, beat and worker (embedded SQLite by default).",
    with_companions=True,
)
_http_command("api", "Run the REST API alone (for a multi-machine layout).", with_companions=False)


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@_store_options
@click.pass_context
def worker(ctx: click.Context, db: str | None, broker: str | None, data_dir: str | None) -> None:
    """Run a Celery worker for kala's jobs; extra arguments go to `celery worker`."""
    from kala_celery.celery_app import make_celery

    app = make_celery(_settings(db, broker, data_dir, None))
    app.worker_main(["worker", "-l", "info", *ctx.args])


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@_store_options
@click.pass_context
def beat(ctx: click.Context, db: str | None, broker: str | None, data_dir: str | None) -> None:
    """Run the Kala beat scheduler; extra arguments go to `celery beat`."""
    from kala_celery.celery_app import make_celery

    app = make_celery(_settings(db, broker, data_dir, None))
    app.start(["beat", "-S", "kala", "-l", "info", *ctx.args])


@main.group()
def db() -> None:
    """The job store's schema (Alembic migrations shipped in kala_celery/store/migrations)."""


@db.command("upgrade")
@_store_options
def db_upgrade(db: str | None, broker: str | None, data_dir: str | None) -> None:
    """Upgrade the job store to this version's schema (or create it). Safe to run while
    other processes start: on PostgreSQL they take turns under an advisory lock."""
    from kala_celery.store import schema
    from kala_celery.store.db import DatabaseAway, make_engine

    settings = _settings(db, broker, data_dir, None)
    engine = make_engine(settings.db_url)
    try:
        was = schema.ensure(engine, upgrade=True)
    except (*DatabaseAway, schema.SchemaError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        engine.dispose()
    url = hidden(settings.db_url)
    if was == schema.head():
        click.echo(f"{url}: already at {was} (head)")
    else:
        click.echo(f"{url}: upgraded from {was or 'an empty database'} to {schema.head()} (head)")


@db.command("current")
@_store_options
def db_current(db: str | None, broker: str | None, data_dir: str | None) -> None:
    """Print the job store's schema revision and whether it is this version's (head);
    exit 1 when it is not."""
    from kala_celery.store import schema
    from kala_celery.store.db import DatabaseAway, make_engine

    settings = _settings(db, broker, data_dir, None)
    engine = make_engine(settings.db_url)
    try:
        revision = schema.revision_of(engine)
    except DatabaseAway as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        engine.dispose()
    if revision == schema.head():
        click.echo(f"{revision} (head)")
        return
    if revision is None:
        click.echo(f"empty (head is {schema.head()}; any kala-celery process creates it)")
    elif not schema.known(revision):
        click.echo(f"{revision} (newer than this kala-celery, whose head is {schema.head()})")
    else:
        click.echo(f"{revision} (behind head {schema.head()}: run `{schema.UPGRADE_COMMAND}`)")
    raise SystemExit(1)


@main.command("health")
@click.argument("kind", type=click.Choice(["beat", "worker"]))
@click.option("--host", help="Whose processes (default: this machine's hostname).")
@click.option("--any", "any_host", is_flag=True, help="A process on any host will do.")
@_store_options
def health(kind: str, host: str | None, any_host: bool, db: str | None, broker: str | None,
           data_dir: str | None) -> None:
    """Exit 0 if a KIND process on this host was heard from within KALA_WORKER_TIMEOUT (a beat
    ticks every 5 s; a worker process heartbeats from its first run on), else 1."""
    from kala_celery.ops import health as liveness
    from kala_celery.store.db import probe_engine

    settings = _settings(db, broker, data_dir, None)
    engine = probe_engine(settings.db_url)
    try:
        verdict = liveness.check(engine, kind, settings.worker_silence,
                                 host=None if any_host else host or liveness.this_host())
    except Exception as exc:  # the database away, or no such table: not healthy
        click.echo(f"{kind}: cannot read the job store ({type(exc).__name__}: {exc})", err=True)
        raise SystemExit(1) from None
    finally:
        engine.dispose()
    click.echo(verdict.message, err=not verdict.alive)
    raise SystemExit(0 if verdict.alive else 1)


@main.command("import")
@click.option("--from", "source", metavar="URL",
              help="A running Kala or NextKala, e.g. http://kala-host:8000.")
@click.option("--from-file", type=click.Path(dir_okay=False, path_type=Path),
              help="A saved GET /api/v1/job/ body instead.")
@click.option("--from-django-celery-beat", "django_url", metavar="DATABASE_URL",
              help="django-celery-beat's periodic tasks, from the Django project's database "
                   "(postgresql://... or sqlite:///...).")
@click.option("--from-redbeat", "redbeat_url", metavar="REDIS_URL",
              help="RedBeat's entries, from its Redis.")
@click.option("--redbeat-prefix", default="redbeat:", show_default=True,
              help="RedBeat's key prefix (its redbeat_key_prefix).")
@click.option("--redbeat-timezone", metavar="ZONE",
              help="The zone RedBeat's crontabs run in (the Celery app's timezone; RedBeat "
                   "does not store it). Default: KALA_TIMEZONE.")
@click.option("--dry-run", is_flag=True, help="Show the plan; write nothing.")
@_store_options
def import_command(source: str | None, from_file: Path | None, django_url: str | None,
                   redbeat_url: str | None, redbeat_prefix: str, redbeat_timezone: str | None,
                   dry_run: bool, db: str | None, broker: str | None,
                   data_dir: str | None) -> None:
    """Write every job of a Kala, or every periodic task of django-celery-beat or RedBeat,
    into the job store. A Kala's jobs keep ids, fields, links, counters and each schedule's
    progress; a periodic task becomes a Celery-task job (type 2) with the id dcb-<name> or
    redbeat-<name> (docs/import-celery.md). Jobs already here are left alone; a refused job
    is named with the Decision behind it (docs/design.md). Exit 1 when any job was refused."""
    from kala_celery.ops import beat_entries, import_django, import_redbeat
    from kala_celery.ops import import_kala as importer
    from kala_celery.schedule import parse_plain_duration
    from kala_celery.store.clock import now as db_now
    from kala_celery.store.db import DatabaseAway, make_engine, make_sessionmaker
    from kala_celery.store.jobs import Rules
    from kala_celery.store.schema import SchemaError, ensure

    given = [bool(source), from_file is not None, bool(django_url), bool(redbeat_url)]
    if sum(given) != 1:
        raise click.UsageError("give one of --from URL, --from-file FILE, "
                               "--from-django-celery-beat DATABASE_URL and --from-redbeat "
                               "REDIS_URL")
    settings = _settings(db, broker, data_dir, None)
    kala = source or from_file is not None
    try:
        if kala:
            body = importer.read_file(from_file) if from_file else importer.read_url(source or "")
            found, undecodable = importer.parse_listing(body)
        elif django_url:
            entries = import_django.read(django_url)
        else:
            entries = import_redbeat.read(redbeat_url or "", redbeat_prefix, redbeat_timezone)
    except importer.SourceError as exc:
        raise click.ClickException(str(exc)) from None
    # A Kala job's owner is kept as Kala stored it: KALA_DEFAULT_OWNER is for new jobs, which
    # a periodic task of another scheduler is.
    rules = Rules(allow_shell=settings.allow_shell, default_timezone=settings.timezone,
                  default_owner="" if kala else settings.default_owner,
                  remote_policy=settings.remote_policy)
    now = db_now()
    keep_since = now - parse_plain_duration(settings.run_retention)
    engine = make_engine(settings.db_url)
    try:
        ensure(engine)
        if kala:
            outcomes = importer.import_jobs(make_sessionmaker(engine), found, rules, now,
                                            dry_run=dry_run, keep_since=keep_since)
            outcomes += undecodable
        else:
            outcomes = beat_entries.import_entries(make_sessionmaker(engine), entries, rules,
                                                   now, dry_run=dry_run)
    except (*DatabaseAway, SchemaError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        engine.dispose()
    click.echo(importer.table(outcomes, dry_run=dry_run))
    if any(o.result == importer.REFUSED for o in outcomes):
        raise SystemExit(1)


def _open_store(settings: Settings) -> tuple[Any, Any]:
    from kala_celery.store import clock
    from kala_celery.store.db import DatabaseAway, make_engine, make_sessionmaker
    from kala_celery.store.schema import SchemaError, ensure

    engine = make_engine(settings.db_url)
    try:
        ensure(engine)
    except (*DatabaseAway, SchemaError) as exc:
        engine.dispose()
        raise click.ClickException(str(exc)) from None
    clock.bind(engine)  # the command's "now" is the database's (docs/design.md Decision 27)
    return engine, make_sessionmaker(engine)


@main.group()
def token() -> None:
    """Named API tokens with scopes (read, run, write, admin): docs/security.md."""


@token.command("create")
@click.argument("name")
@click.option("--scopes", required=True, metavar="SCOPES",
              help="Comma-separated: read (GET, metrics, the dashboard's pages), run (start, "
                   "enable, disable), write (create, replace, delete), admin (tokens, audit).")
@_store_options
def token_create(name: str, scopes: str, db: str | None, broker: str | None,
                 data_dir: str | None) -> None:
    """Make a token NAME and print its secret, once: only a digest of it is kept."""
    from kala_celery.errors import JobError
    from kala_celery.store import audit, tokens
    from kala_celery.store.clock import now as db_now

    engine, sessions = _open_store(_settings(db, broker, data_dir, None))
    try:
        with sessions.begin() as session:
            wanted = tokens.parse_scopes(scopes)
            secret = tokens.create(session, name, wanted, db_now())
            audit.record(session, audit.command_actor("token create"), "token create",
                         changes={"token": [None, name],
                                  "scopes": [None, tokens.scope_text(wanted)]})
    except JobError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        engine.dispose()
    click.echo(secret)
    click.echo(f"token {name!r} ({tokens.scope_text(wanted)}): the line above is its secret; "
               "it is shown only now.", err=True)


@token.command("list")
@_store_options
def token_list(db: str | None, broker: str | None, data_dir: str | None) -> None:
    """Every named token: name, scopes, when it was made (never a secret)."""
    from kala_celery.store import tokens
    from kala_celery.wire import format_time

    engine, sessions = _open_store(_settings(db, broker, data_dir, None))
    try:
        with sessions() as session:
            rows = [(t.name, t.scopes, format_time(t.created_at))
                    for t in tokens.all_tokens(session)]
    finally:
        engine.dispose()
    for name, scopes, created in rows:
        click.echo(f"{name}\t{scopes}\t{created}")


@token.command("revoke")
@click.argument("name")
@_store_options
def token_revoke(name: str, db: str | None, broker: str | None, data_dir: str | None) -> None:
    """Delete token NAME: its secret opens nothing from the next request on."""
    from kala_celery.errors import NotFound
    from kala_celery.store import audit, tokens

    engine, sessions = _open_store(_settings(db, broker, data_dir, None))
    try:
        with sessions.begin() as session:
            gone = tokens.revoke(session, name)
            audit.record(session, audit.command_actor("token revoke"), "token revoke",
                         changes={"token": [name, None], "scopes": [gone.scopes, None]})
    except NotFound:
        raise click.ClickException(f"no token named {name!r}") from None
    finally:
        engine.dispose()
    click.echo(f"revoked {name!r}")


@main.command("apply")
@click.option("-f", "--file", "path", required=True, type=click.Path(path_type=Path),
              help="A YAML or JSON list of job bodies (the API's fields); - for stdin.")
@click.option("--prune", is_flag=True,
              help="Disable the jobs made by apply that the file no longer names.")
@click.option("--dry-run", is_flag=True, help="Show what would change; write nothing.")
@_store_options
def apply_command(path: Path, prune: bool, dry_run: bool, db: str | None, broker: str | None,
                  data_dir: str | None) -> None:
    """Make the jobs in a file true in the job store, in one transaction: create what is
    missing, replace what differs (keyed by id, else name), and with --prune disable the
    jobs made by apply that the file left out. Prints each change; exits 0 when nothing
    changed, 2 when something did (or would, with --dry-run), 1 on a refusal (nothing is
    written)."""
    from kala_celery.ops import apply as applying
    from kala_celery.store.clock import now as db_now
    from kala_celery.store.db import DatabaseAway
    from kala_celery.store.jobs import Rules

    settings = _settings(db, broker, data_dir, None)
    try:
        bodies = applying.read_file(path)
    except applying.ApplyError as exc:
        raise click.ClickException(str(exc)) from None
    rules = Rules(allow_shell=settings.allow_shell, default_timezone=settings.timezone,
                  default_owner=settings.default_owner, remote_policy=settings.remote_policy)
    engine, sessions = _open_store(settings)
    try:
        outcome = applying.apply_bodies(sessions, bodies, rules, db_now(), prune=prune,
                                        dry_run=dry_run)
    except DatabaseAway as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        engine.dispose()
    if outcome.refusal is not None:
        click.echo(f"Error: {outcome.refusal}; nothing was written", err=True)
        raise SystemExit(1)
    for change in outcome.changes:
        for line in change.lines():
            click.echo(line)
    if dry_run and outcome.changed:
        click.echo("(dry run: nothing was written)")
    raise SystemExit(2 if outcome.changed else 0)


@main.command("export")
@click.option("--format", "fmt", type=click.Choice(["yaml", "json"]), default="yaml",
              show_default=True)
@_store_options
def export_command(fmt: str, db: str | None, broker: str | None, data_dir: str | None) -> None:
    """Write the job store's jobs as `apply` reads them (only fields that differ from the
    defaults; jobs from a Celery app's beat_schedule are left out, they live in code)."""
    from kala_celery.ops import apply as applying

    settings = _settings(db, broker, data_dir, None)
    engine, sessions = _open_store(settings)
    try:
        with sessions() as session:
            bodies = applying.export_all(session)
    finally:
        engine.dispose()
    click.echo(applying.dump(bodies, fmt), nl=False)


@main.command("run")
@click.argument("command", nargs=-1)
def run_once(command: tuple[str, ...]) -> None:
    """Run COMMAND once as a worker would (split into words, no shell) and print its output."""
    from datetime import datetime

    from kala_celery.tasks.shell import run_command

    if not command:
        raise click.ClickException("Must include a command")
    if len(command) > 1:
        raise click.ClickException("Must only include a command")
    outcome = run_command(command[0])
    if not outcome.ok:
        stamp = datetime.now().strftime("%Y/%m/%d %H:%M:%S")
        click.echo(f"{stamp} Command Failed with err: {outcome.error}", err=True)
        raise SystemExit(1)
    click.echo("Command Succeeded!")
    click.echo(f"Output:  {outcome.output}")
