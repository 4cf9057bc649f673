"""Configuration: environment variables with embedded defaults; CLI flags override them."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ROLES = ("all", "api", "worker")


@dataclass(frozen=True)
class Settings:
    """Everything a chatd process needs to know, resolved once at start-up.

    A URL left unset selects the embedded backend: the store, cache, queue, lock and
    search index then all live in SQLite files.
    """

    database_url: str = "sqlite:///./chatd.db"
    # A MariaDB/MySQL replica of the store (production set only): the reads that may lag a
    # little (lists and single chats and messages) go to it while its replication runs and lags
    # by at most ``replica_max_lag_seconds``; otherwise, and for everything else, the primary.
    database_replica_url: str | None = None
    replica_max_lag_seconds: float = 5.0
    redis_url: str | None = None
    amqp_url: str | None = None
    elasticsearch_url: str | None = None
    # Where the embedded search index keeps its SQLite file when Elasticsearch is not used.
    # Empty: derived from the store (``chatd.backends.registry.search_path``), so a search
    # file never outlives or strays from the store it indexes.
    search_path: str = ""
    # The embedded cache, lock and queue live in the store's file when the store is
    # SQLite, and in this file when it is MySQL but some of Redis/RabbitMQ are not configured.
    # Empty: named after the MySQL database (``chatd.backends.registry.embedded_path``).
    embedded_path: str = ""
    admin_token: str | None = None
    # Development only: list every application (every tenant's token) without the admin token.
    # Off, ``GET /applications`` without ``CHATD_ADMIN_TOKEN`` answers 401 on every address:
    # behind a gateway on the same host every client looks local. ``make run`` turns it on.
    open_listing: bool = False
    # Creating an application needs the admin token too (``CHATD_ADMIN_TOKEN`` must be set).
    admin_creates_applications: bool = False
    # Chats an application may have (0: no limit); past it a creation answers 403 chat_limit_reached.
    max_chats_per_application: int = 100_000
    # The longest a rotated-away token may keep working (POST /applications/{token}/tokens's
    # grace_seconds, default a day): a week.
    max_token_grace_seconds: int = 7 * 86400
    host: str = "127.0.0.1"
    port: int = 8080
    # SO_REUSEPORT: several api processes of one host listen on one port and the kernel spreads
    # the connections over them (no upstream per process in front).
    reuse_port: bool = False
    role: str = "all"
    # Bodies above this size are refused with 413 before they are read whole.
    max_body_bytes: int = 64 * 1024
    max_content_chars: int = 10_000
    cache_ttl_seconds: float = 1800.0
    index_batch_size: int = 1000
    # Short enough that a message is searchable well within a second or two at any load.
    index_batch_wait_seconds: float = 0.25
    worker_batch_size: int = 200
    worker_batch_wait_seconds: float = 0.05
    reconcile_interval_seconds: float = 5.0
    # Message storage pauses while more index jobs than this wait (search index down or slow).
    max_index_backlog: int = 100_000
    # A job that fails this many deliveries goes to the dead-letter queue.
    max_delivery_attempts: int = 10
    shutdown_timeout_seconds: float = 20.0
    idempotency_ttl_seconds: float = 24 * 3600.0
    # Group commit of creations: groups of requests being numbered and published at once.
    # Fewer means larger groups (less work per request) and a longer wait for the next one.
    accept_groups_in_flight: int = 2
    # Creations waiting for a group beyond this are refused at once (503 overloaded) rather
    # than queued behind work that cannot finish within the request deadline.
    max_pending_creations: int = 1024
    # Every request is answered within this many seconds of its body arriving: 201, or 503
    # with Retry-After once a backend does not answer in time (live event streams excepted).
    request_deadline_seconds: float = 5.0
    # Namespaces, so that several deployments (or test runs) can share one server.
    redis_prefix: str = "chatd:"
    amqp_prefix: str = "chatd"
    elasticsearch_index: str = "messages"
    # Applied when chatd creates the index; unset replicas means auto-expand 0-1.
    elasticsearch_shards: int = 3
    elasticsearch_replicas: int | None = None
    log_level: str = "INFO"
    # A request body must arrive whole within this time of its handler starting (else 408),
    # so a client that sends headers and then trickles (or stalls) cannot hold a handler.
    body_timeout_seconds: float = 30.0
    # Live events: events buffered per connection before a live client counts as too slow
    # (closed; it resumes from its last id), the keep-alive interval (also how often each
    # feed reads the store for announcements it may have missed), and how long a feed waits
    # for a missing number below a stored one before skipping it.
    live_buffer_events: int = 1000
    live_keepalive_seconds: float = 15.0
    live_hole_wait_seconds: float = 10.0
    # A number still missing when the message above it was accepted this long ago is taken as
    # burnt: until then a message stored after subscribers passed its number is sent late.
    live_late_seconds: float = 300.0
    # A write to a live connection that has not completed within this time (the client stopped
    # reading) ends the connection, so a stalled client holds nothing past it.
    live_write_deadline_seconds: float = 30.0
    # A live stream ends after this long (the client resumes from its last id); 0: no limit.
    live_stream_seconds: float = 0.0
    # A live WebSocket is pinged after this many seconds without traffic from its client, and
    # closed if no pong comes within half of it (0: no heartbeat).
    websocket_heartbeat_seconds: float = 30.0
    # A client resuming a chat's stream (Last-Event-ID, ?after=) is sent message.updated for the
    # messages up to its resume point edited within this many seconds, at most this many (the
    # most recently edited): edits made while it was away.
    live_edit_replay_seconds: float = 3600.0
    live_edit_replay_events: int = 500
    # The embedded fan-out's socket directory (no Redis): it must be private to the serving
    # user (mode 0700, its owner), or chatd refuses to start. Empty: beside the embedded file.
    live_socket_directory: str = ""
    # Per-application rate limits (chatd/limits; README "Limits"), enforced across every api
    # process through Redis (the embedded default: per process). Token buckets: a sustained rate
    # per second and a burst, for reads, for writes (creations, edits, renames, token changes)
    # and for searches; live streams open at once. The admin may override any of them per
    # application (PUT /applications/{token}/limits). 0 turns every limit (and its headers) off.
    rate_limits: bool = True
    rate_reads_per_second: float = 200.0
    rate_reads_burst: int = 400
    rate_writes_per_second: float = 100.0
    rate_writes_burst: int = 200
    rate_searches_per_second: float = 20.0
    rate_searches_burst: int = 40
    rate_streams: int = 1000
    # A refused request is answered after this long (never past its Retry-After, nor half the
    # request deadline): a client loop that retries at once then costs a timer a second per
    # connection, not a core (chatd/limits).
    rate_refusal_hold_seconds: float = 1.0

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``CHATD_*`` variables; unknown variables are ignored."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            raw = env.get("CHATD_" + field.name.upper())
            if raw is None or raw == "":
                continue
            values[field.name] = _coerce(field.type, raw, field.name)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, not {self.role!r}")
        if not self.database_url.startswith(("sqlite://", "mysql://")):
            raise ValueError("CHATD_DATABASE_URL must start with sqlite:// or mysql://")
        if self.database_replica_url and not (
            self.database_url.startswith("mysql://") and self.database_replica_url.startswith("mysql://")
        ):
            raise ValueError("CHATD_DATABASE_REPLICA_URL needs a mysql:// store and a mysql:// replica")
        if self.admin_creates_applications and not self.admin_token:
            raise ValueError(
                "CHATD_ADMIN_CREATES_APPLICATIONS=1 needs CHATD_ADMIN_TOKEN: nobody could create an application"
            )
        if self.max_chats_per_application < 0:
            raise ValueError("CHATD_MAX_CHATS_PER_APPLICATION must be 0 (no limit) or more")
        if self.max_token_grace_seconds < 0:
            raise ValueError("CHATD_MAX_TOKEN_GRACE_SECONDS must be 0 or more")
        if self.live_write_deadline_seconds <= 0:
            raise ValueError("CHATD_LIVE_WRITE_DEADLINE_SECONDS must be more than 0")
        if self.live_stream_seconds < 0:
            raise ValueError("CHATD_LIVE_STREAM_SECONDS must be 0 (no limit) or more")
        if self.live_edit_replay_seconds < 0 or self.live_edit_replay_events < 0:
            raise ValueError("CHATD_LIVE_EDIT_REPLAY_SECONDS and CHATD_LIVE_EDIT_REPLAY_EVENTS must be 0 (off) or more")
        if self.websocket_heartbeat_seconds < 0:
            raise ValueError("CHATD_WEBSOCKET_HEARTBEAT_SECONDS must be 0 (no heartbeat) or more")
        self._validate_rate_limits()

    def rate_limit_values(self) -> dict[str, float]:
        """The ``CHATD_RATE_*`` defaults by the limits' field names (``reads_per_second``, ``streams``...)."""
        return {name.removeprefix("rate_"): getattr(self, name) for name in _RATE_FIELDS}

    def _validate_rate_limits(self) -> None:
        if not 0 <= self.rate_refusal_hold_seconds <= 60:
            raise ValueError("CHATD_RATE_REFUSAL_HOLD_SECONDS must be from 0 (answer at once) to 60")
        from chatd.limits.policies import validate_overrides  # the same bounds as an admin's override

        for field, value in self.rate_limit_values().items():
            try:
                validate_overrides({field: value})
            except ValueError as exc:
                raise ValueError(f"CHATD_RATE_{field.upper()}: {exc}, not {value!r}") from None


# The per-application limits' settings (``rate_limits`` switches them all).
_RATE_FIELDS = (
    *(f"rate_{kind}{part}" for kind in ("reads", "writes", "searches") for part in ("_per_second", "_burst")),
    "rate_streams",
)


def _coerce(type_name: object, raw: str, name: str) -> Any:
    text = str(type_name)
    if text.startswith("bool"):
        return _flag(raw, name)
    try:
        if text.startswith("int"):
            return int(raw)
        if text.startswith("float"):
            return float(raw)
    except ValueError as exc:
        raise ValueError(f"CHATD_{name.upper()} must be a number, not {raw!r}") from exc
    return raw


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _flag(raw: str, name: str) -> bool:
    if raw.strip().lower() in _TRUE:
        return True
    if raw.strip().lower() in _FALSE:
        return False
    raise ValueError(f"CHATD_{name.upper()} must be 1 or 0 (true/false, yes/no, on/off), not {raw!r}")


def server_urls(value: str) -> list[str]:
    """A ``CHATD_*_URL`` that names several servers (one per node of a cluster), comma-separated.

    One URL is a list of one; blanks around commas and empty entries are ignored.
    """
    urls = [part.strip() for part in value.split(",") if part.strip()]
    if not urls:
        raise ValueError(f"no server URL in {value!r}")
    return urls
