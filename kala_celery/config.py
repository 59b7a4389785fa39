"""One Settings object built from the environment (KALA_*). Nothing else reads os.environ."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, replace
from datetime import timedelta
from functools import cached_property
from pathlib import Path

from kala_celery.schedule import ScheduleError, parse_plain_duration

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(ValueError):
    """A KALA_* setting has a value we cannot use."""


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name} must be true or false, not {raw!r}")


def _number(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, not {raw!r}") from None
    if value < 0:
        raise ConfigError(f"{name} must not be negative")
    return value


POOLS = ("prefork", "threads")
THREAD_SLOTS = 32  # `serve`'s default threads-pool size: runs of 32 jobs at once


def _choice(name: str, raw: str, choices: tuple[str, ...]) -> str:
    value = raw.strip().lower()
    if value and value not in choices:  # empty: the default
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, not {raw!r}")
    return value


def _count(name: str, raw: str) -> int:
    text = raw.strip()
    if not text.isdigit():
        raise ConfigError(f"{name} must be a whole number (0: one per CPU), not {raw!r}")
    return int(text)


def _duration(name: str, raw: str) -> str:
    try:
        if parse_plain_duration(raw).total_seconds() <= 0:
            raise ConfigError(f"{name} must be a positive ISO 8601 duration, not {raw!r}")
    except ScheduleError as exc:
        raise ConfigError(f"{name} must be an ISO 8601 duration such as PT30S: {exc}") from None
    return raw


# ---------------------------------------------------------------- what a remote job may reach

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

def _kind(address: Address) -> str | None:
    """Which range refused by default `address` is in, or None: the worker's own machine, what
    only it can see (a cloud's metadata service is link-local), and no single host at all."""
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_unspecified:
        return "unspecified"
    if address.is_multicast:
        return "multicast"
    return None


def plain_address(address: Address) -> Address:
    """An IPv4-mapped IPv6 address (::ffff:127.0.0.1) as the IPv4 address it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True)
class RemotePolicy:
    """Which addresses a remote job's call may connect to (docs/design.md Decision 33).

    Refused by default: loopback, link-local, unspecified and multicast addresses. Allowed by
    default: everything else, private ranges included. `allow` lets refused ones through;
    `deny` refuses more. A network or host name in both: deny wins."""

    allow_networks: tuple[Network, ...] = ()
    allow_hosts: frozenset[str] = frozenset()
    deny_networks: tuple[Network, ...] = ()
    deny_hosts: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, allow: str = "", deny: str = "") -> RemotePolicy:
        """From KALA_REMOTE_ALLOW and KALA_REMOTE_DENY; ConfigError for a bad entry."""
        allow_nets, allow_hosts = _entries("KALA_REMOTE_ALLOW", allow)
        deny_nets, deny_hosts = _entries("KALA_REMOTE_DENY", deny)
        return cls(allow_nets, allow_hosts, deny_nets, deny_hosts)

    def refusal(self, host: str, address: Address) -> str | None:
        """Why a call to `host`, connecting to `address`, must not be made; None: it may."""
        address = plain_address(address)
        name = host.lower().rstrip(".")
        where = f"{address}" if name == str(address) else f"{host} ({address})"
        if name in self.deny_hosts or any(address in n for n in self.deny_networks):
            return (
                f"refused to call {where}: KALA_REMOTE_DENY names it "
                "(a denial wins over KALA_REMOTE_ALLOW; see docs/security.md)"
            )
        if name in self.allow_hosts or any(address in n for n in self.allow_networks):
            return None
        kind = _kind(address)
        if kind is None:
            return None
        article = "an" if kind == "unspecified" else "a"
        return (
            f"refused to call {where}: {article} {kind} address, which remote jobs may not reach "
            f"unless KALA_REMOTE_ALLOW names it (e.g. KALA_REMOTE_ALLOW={address}; "
            "see docs/security.md)"
        )


def _entries(name: str, raw: str) -> tuple[tuple[Network, ...], frozenset[str]]:
    """Comma-separated CIDRs (or single addresses) and host names."""
    networks: list[Network] = []
    hosts: set[str] = set()
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        looks_numeric = ":" in item or "/" in item or item.replace(".", "").isdigit()
        if looks_numeric:
            try:
                network = ipaddress.ip_network(item, strict=True)
            except ValueError as exc:
                raise ConfigError(
                    f"{name}: {item!r} is not a CIDR (such as 10.0.0.0/8 or ::1/128): {exc}"
                ) from None
            networks.append(network)
            if isinstance(network, ipaddress.IPv6Network):  # ::ffff:a.b.c.d/n is IPv4 too
                mapped = network.network_address.ipv4_mapped
                if mapped is not None and network.prefixlen >= 96:
                    networks.append(ipaddress.ip_network(f"{mapped}/{network.prefixlen - 96}"))
        elif all(label and len(label) <= 63 for label in item.rstrip(".").split(".")) and all(
            c.isalnum() or c in "-._" for c in item
        ):
            hosts.add(item.lower().rstrip("."))
        else:
            raise ConfigError(f"{name}: {item!r} is neither a CIDR nor a host name")
    return tuple(networks), frozenset(hosts)


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("kala-data")
    database_url: str = ""  # empty: SQLite file in data_dir
    broker_url: str = ""  # empty: kombu's SQLAlchemy transport on SQLite in data_dir
    api_token: str | None = None
    timezone: str = "UTC"
    start_wait: float = 30.0
    allow_shell: bool = True
    run_retention: str = "P30D"
    audit_retention: str = "P365D"  # audit rows older than this are pruned (Decision 32)
    default_owner: str = ""
    stats_in_job: int = field(default=100)  # most recent runs shown in a job's "stats"
    # A run `sent` this long that no worker took is published again (its message was lost).
    redeliver_after: str = "PT30S"
    # A worker process whose heartbeat is this old is dead: its started runs are retried or
    # end `lost`. It writes one every sixth of this.
    worker_timeout: str = "PT30S"
    # Celery's task-sent event per published run: doubles the cost of a publish; Flower sees
    # a run from the worker's task-received event without it (it then skips "PENDING").
    sent_events: bool = False
    # Celery's task events from workers (received, started, succeeded …), which Flower reads.
    # Off, as in Celery: Flower turns them on in every worker while it runs (its
    # enable_events); on, they cost about a quarter of a worker's CPU per run on Redis.
    task_events: bool = False
    # Seconds a worker waits between polls of a SQL broker when nothing wakes it: on the
    # embedded default each publish wakes it at once (broker.py), so this is a backstop; on
    # another SQL broker it is the delay before a run is seen (kombu's default is 1 s).
    broker_poll_interval: float = 0.25
    # `serve`'s worker: Celery pool ("": threads, on every broker: its runs mostly wait on
    # their command and on the database) and slots (0: 32 threads, or one prefork process
    # per CPU).
    worker_pool: str = ""
    worker_concurrency: int = 0
    # What a remote job may reach besides the default (comma-separated CIDRs and host names):
    # allow lets loopback, link-local … through; deny refuses more (docs/security.md).
    remote_allow: str = ""
    remote_deny: str = ""

    def __post_init__(self) -> None:
        self.remote_policy  # noqa: B018 (a bad CIDR is a ConfigError at start, not per run)

    @cached_property
    def remote_policy(self) -> RemotePolicy:
        """Parsed once per Settings (each run of a remote job asks for it)."""
        return RemotePolicy.parse(self.remote_allow, self.remote_deny)

    @cached_property
    def db_url(self) -> str:
        """Once per Settings: the embedded default resolves the data directory on the disk
        (17 µs, and a worker asks at each run)."""
        return self.database_url or f"sqlite:///{self.data_dir.resolve() / 'kala.db'}"

    @cached_property
    def broker(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{self.data_dir.resolve() / 'broker.db'}"

    def to_env(self) -> dict[str, str]:
        """The KALA_* variables that give another process these settings."""
        env = {
            "KALA_DATA_DIR": str(self.data_dir),
            "KALA_DATABASE_URL": self.db_url,
            "KALA_BROKER_URL": self.broker,
            "KALA_TIMEZONE": self.timezone,
            "KALA_START_WAIT": str(self.start_wait),
            "KALA_ALLOW_SHELL": str(self.allow_shell).lower(),
            "KALA_RUN_RETENTION": self.run_retention,
            "KALA_AUDIT_RETENTION": self.audit_retention,
            "KALA_DEFAULT_OWNER": self.default_owner,
            "KALA_REDELIVER_AFTER": self.redeliver_after,
            "KALA_WORKER_TIMEOUT": self.worker_timeout,
            "KALA_SENT_EVENTS": str(self.sent_events).lower(),
            "KALA_TASK_EVENTS": str(self.task_events).lower(),
            "KALA_BROKER_POLL_INTERVAL": str(self.broker_poll_interval),
            "KALA_WORKER_POOL": self.worker_pool,
            "KALA_WORKER_CONCURRENCY": str(self.worker_concurrency),
            "KALA_REMOTE_ALLOW": self.remote_allow,
            "KALA_REMOTE_DENY": self.remote_deny,
        }
        if self.api_token:
            env["KALA_API_TOKEN"] = self.api_token
        return env

    @property
    def embedded_broker(self) -> bool:
        return self.broker.startswith("sqla+sqlite:///")

    @property
    def serve_pool(self) -> str:
        return self.worker_pool or "threads"

    @property
    def serve_concurrency(self) -> int | None:
        if self.worker_concurrency:
            return self.worker_concurrency
        return THREAD_SLOTS if self.serve_pool == "threads" else None

    @property
    def redeliver_delay(self) -> timedelta:
        return parse_plain_duration(self.redeliver_after)

    @property
    def worker_silence(self) -> timedelta:
        return parse_plain_duration(self.worker_timeout)

    def with_overrides(self, **changes: object) -> Settings:
        """Return a copy with the given fields replaced (CLI flags win over the environment)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        kw: dict[str, object] = {}
        if "KALA_DATA_DIR" in env:
            kw["data_dir"] = Path(env["KALA_DATA_DIR"])
        if "KALA_DATABASE_URL" in env:
            kw["database_url"] = env["KALA_DATABASE_URL"]
        if "KALA_BROKER_URL" in env:
            kw["broker_url"] = env["KALA_BROKER_URL"]
        if env.get("KALA_API_TOKEN"):
            kw["api_token"] = env["KALA_API_TOKEN"]
        if "KALA_TIMEZONE" in env:
            kw["timezone"] = env["KALA_TIMEZONE"] or "UTC"
        if "KALA_START_WAIT" in env:
            kw["start_wait"] = _number("KALA_START_WAIT", env["KALA_START_WAIT"])
        if "KALA_ALLOW_SHELL" in env:
            kw["allow_shell"] = _bool("KALA_ALLOW_SHELL", env["KALA_ALLOW_SHELL"])
        if "KALA_RUN_RETENTION" in env:
            kw["run_retention"] = env["KALA_RUN_RETENTION"]
        for name in ("redeliver_after", "worker_timeout", "audit_retention"):
            key = f"KALA_{name.upper()}"
            if key in env:
                kw[name] = _duration(key, env[key])
        if "KALA_SENT_EVENTS" in env:
            kw["sent_events"] = _bool("KALA_SENT_EVENTS", env["KALA_SENT_EVENTS"])
        if "KALA_TASK_EVENTS" in env:
            kw["task_events"] = _bool("KALA_TASK_EVENTS", env["KALA_TASK_EVENTS"])
        if "KALA_BROKER_POLL_INTERVAL" in env:
            kw["broker_poll_interval"] = _number(
                "KALA_BROKER_POLL_INTERVAL", env["KALA_BROKER_POLL_INTERVAL"]
            )
        if "KALA_WORKER_POOL" in env:
            kw["worker_pool"] = _choice("KALA_WORKER_POOL", env["KALA_WORKER_POOL"], POOLS)
        if "KALA_WORKER_CONCURRENCY" in env:
            key = "KALA_WORKER_CONCURRENCY"
            kw["worker_concurrency"] = _count(key, env[key])
        for name in ("remote_allow", "remote_deny"):
            key = f"KALA_{name.upper()}"
            if key in env:
                RemotePolicy.parse(**{name.removeprefix("remote_"): env[key]})
                kw[name] = env[key]
        if "KALA_DEFAULT_OWNER" in env:
            kw["default_owner"] = env["KALA_DEFAULT_OWNER"]
        return cls(**kw)
