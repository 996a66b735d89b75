"""Settings: flags first, then SESSIOND_* environment variables, then defaults."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, cast

from service.runtime.eventloop import EVENT_LOOPS, EventLoop
from service.runtime.logs import FORMATS, LogFormat

DEFAULT_STORE = "sqlite:///./sessiond.db"
MIB = 1024 * 1024


class SettingsError(ValueError):
    """A setting has a value the service cannot use."""


_UNITS = {"s": 1.0, "min": 60.0, "h": 3600.0}
_RATE = re.compile(r"\s*(\d+)\s*/\s*(\d*\.?\d*)\s*(s|min|h)\s*")


@dataclass(frozen=True)
class Rate:
    """A budget's rate: ``count`` in a burst, refilled evenly over ``period``
    seconds (written ``count/period``: ``1000/s``, ``60/min``, ``500/10s``)."""

    count: int
    period: float

    @classmethod
    def parse(cls, text: str) -> Rate | None:
        """``N/s``, ``N/min``, ``N/h`` or ``N/Ks`` (K seconds); ``0`` or ``off``: no budget."""
        if text.strip().lower() in ("0", "off"):
            return None
        match = _RATE.fullmatch(text)
        if match is None:
            raise ValueError(f"a rate is N/s, N/min, N/h or N/Ks, not {text!r}")
        count, times, unit = int(match[1]), float(match[2] or 1), _UNITS[match[3]]
        if count == 0:
            return None
        if times <= 0:
            raise ValueError(f"a rate's period must be positive, not {text!r}")
        return cls(count, times * unit)

    def __str__(self) -> str:
        return f"{self.count}/{self.period:g}s"


def _env_rate(env: Mapping[str, str], key: str, default: Rate | None) -> Rate | None:
    raw = env.get(key)
    if raw is None or raw.strip() == "":
        return default
    try:
        return Rate.parse(raw)
    except ValueError as e:
        raise SettingsError(f"{key}: {e}") from None


def _env_int(env: Mapping[str, str], key: str, default: int, minimum: int = 0) -> int:
    raw = env.get(key)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{key} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{key} must be at least {minimum}, got {value}")
    return value


def _env_choice(env: Mapping[str, str], key: str, default: str, choices: tuple[str, ...]) -> str:
    raw = env.get(key)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value not in choices:
        raise SettingsError(f"{key} must be one of {', '.join(choices)}, got {raw!r}")
    return value


def _env_switch(env: Mapping[str, str], key: str, default: bool) -> bool:
    raw = env.get(key)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "on", "true", "yes"):
        return True
    if value in ("0", "off", "false", "no"):
        return False
    raise SettingsError(f"{key} must be on or off, got {raw!r}")


def _env_float(env: Mapping[str, str], key: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(key)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{key} must be a number, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{key} must be at least {minimum}, got {value}")
    return value


@dataclass(frozen=True)
class Settings:
    store_url: str = DEFAULT_STORE
    host: str = "127.0.0.1"
    port: int = 8080
    # Connections the kernel queues before they are accepted. aiohttp's
    # default of 128 overflowed under a burst of 640 clients connecting at
    # once: each dropped SYN cost its client a 1 s retransmission (the p99
    # handshake went from 0.8 s to 1.5 s). The kernel caps it at somaxconn.
    listen_backlog: int = 4096
    # Token signing key; None means "the key file beside the store".
    secret: str | None = None
    node_id: str = field(default_factory=socket.gethostname)
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = MIB
    max_frame_bytes: int = MIB
    auth_timeout: float = 10.0
    # A live socket is sent token_expiring this long before its token's exp
    # (at most a quarter of the token's remaining life); 0: never.
    token_warning: float = 60.0
    # aiohttp pings every `heartbeat` seconds and closes a socket whose pong
    # has not come back within half of it.
    heartbeat: float = 20.0
    max_connections_per_session: int = 1
    bad_frames_per_minute: int = 10
    # Events queued for one socket before it is closed as a slow consumer (4408),
    # and the bytes of them plus what its transport still holds.
    send_queue_limit: int = 1000
    send_queue_bytes: int = 4 * MIB
    # Bytes of stored events one read of a stream's events holds at most (a
    # page of GET .../events, a backlog page of a socket or an event stream,
    # a page of a past state's fold); a single larger event is still read.
    page_bytes: int = 4 * MIB
    # An event stream with nothing to send says so (a comment) this often,
    # so proxies and clients see it alive and a gone client is noticed.
    stream_heartbeat: float = 15.0
    # Budgets (docs/adr/0027-bound-every-caller-by-budgets-and-every-queue-by-bytes.md);
    # a rate of None and a count of 0 are no budget. Per user (the token's sub):
    user_writes: Rate | None = Rate(1000, 1.0)
    user_sessions: Rate | None = Rate(100, 1.0)
    user_sockets: int = 100
    # WebSocket upgrades with a valid token, over time: a burst of more than
    # the live sockets allowed (every tab reconnecting at once after a
    # restart), then four a second.
    user_upgrades: Rate | None = Rate(100, 1.0)
    # Event-stream watchers (GET /v1/sessions/{id}/stream) at once; a budget
    # of their own, so watching never costs a user a socket.
    user_watchers: int = 100
    # Per client address: upgrades not yet authenticated, at once; upgrades
    # that ended without authenticating; HTTP requests without a valid token.
    address_pending_upgrades: int = 128
    address_failed_upgrades: Rate | None = Rate(60, 60.0)
    address_unauthenticated: Rate | None = Rate(600, 60.0)
    # Proxies in front whose X-Forwarded-For entry names the client (0: none,
    # the peer address is the client's).
    forwarded_hops: int = 0
    # Request bodies being read at once, in bytes, across requests; of it,
    # what one client address may hold; and how long one body may take to
    # arrive once its headers have.
    bodies_in_flight_bytes: int = 64 * MIB
    address_bodies_in_flight_bytes: int = 8 * MIB
    body_timeout: float = 20.0
    # Answers over 64 KiB being sent at once, in bytes, across requests; of
    # it, what one client address may hold; and how long one answer may take
    # to leave once it is built (a client that stops reading holds its answer
    # in the node's memory until then).
    answers_in_flight_bytes: int = 64 * MIB
    address_answers_in_flight_bytes: int = 16 * MIB
    answer_timeout: float = 20.0
    # Commands the writer commits in one transaction at most.
    writer_max_batch: int = 256
    # On SIGTERM the node answers 503 to /readyz and to new upgrades for this
    # long, still serving what it has, before it closes its sockets (1001).
    drain_seconds: float = 5.0
    shutdown_timeout: float = 10.0
    # Several nodes on one PostgreSQL: a node whose heartbeat is older than
    # this is dead, and its open connections are recorded CLOSED lost.
    node_timeout: float = 15.0
    # The longest a lost NOTIFY can delay cross-node delivery.
    poll_interval: float = 1.0
    # Log lines as text (key=value) or JSON lines; and whether the access
    # lines (one per HTTP request, one per socket end) are written.
    log_format: LogFormat = "text"
    access_log: bool = True
    # The event loop the server runs on: uvloop where installed ("auto"),
    # or one named (docs/adr/0045-run-the-server-on-uvloop-where-it-is-installed.md).
    event_loop: EventLoop = "auto"

    def with_overrides(self, **overrides: Any) -> Settings:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if env is None else env
        origins = tuple(
            o.strip().rstrip("/")
            for o in env.get("SESSIOND_CORS_ORIGINS", "").split(",")
            if o.strip()
        )
        base = cls(
            store_url=env.get("SESSIOND_STORE") or DEFAULT_STORE,
            host=env.get("SESSIOND_HOST") or "127.0.0.1",
            port=_env_int(env, "SESSIOND_PORT", 8080),
            listen_backlog=_env_int(env, "SESSIOND_LISTEN_BACKLOG", cls.listen_backlog, minimum=1),
            secret=env.get("SESSIOND_SECRET") or None,
            node_id=env.get("SESSIOND_NODE") or socket.gethostname(),
            cors_origins=origins,
            max_body_bytes=_env_int(env, "SESSIOND_MAX_BODY_BYTES", MIB, minimum=1024),
            max_frame_bytes=_env_int(env, "SESSIOND_MAX_FRAME_BYTES", MIB, minimum=1024),
            auth_timeout=_env_float(env, "SESSIOND_AUTH_TIMEOUT", 10.0, minimum=0.01),
            token_warning=_env_float(env, "SESSIOND_TOKEN_WARNING", 60.0),
            heartbeat=_env_float(env, "SESSIOND_HEARTBEAT", 20.0, minimum=0.01),
            max_connections_per_session=_env_int(
                env, "SESSIOND_MAX_CONNECTIONS_PER_SESSION", 1, minimum=1
            ),
            bad_frames_per_minute=_env_int(env, "SESSIOND_BAD_FRAMES_PER_MINUTE", 10, minimum=10),
            send_queue_limit=_env_int(env, "SESSIOND_SEND_QUEUE_LIMIT", 1000, minimum=1),
            send_queue_bytes=_env_int(
                env, "SESSIOND_SEND_QUEUE_BYTES", cls.send_queue_bytes, minimum=1024
            ),
            page_bytes=_env_int(env, "SESSIOND_PAGE_BYTES", cls.page_bytes, minimum=1024),
            user_writes=_env_rate(env, "SESSIOND_USER_WRITES", cls.user_writes),
            user_sessions=_env_rate(env, "SESSIOND_USER_SESSIONS", cls.user_sessions),
            user_sockets=_env_int(env, "SESSIOND_USER_SOCKETS", cls.user_sockets),
            user_watchers=_env_int(env, "SESSIOND_USER_WATCHERS", cls.user_watchers),
            user_upgrades=_env_rate(env, "SESSIOND_USER_UPGRADES", cls.user_upgrades),
            stream_heartbeat=_env_float(
                env, "SESSIOND_STREAM_HEARTBEAT", cls.stream_heartbeat, minimum=0.01
            ),
            address_pending_upgrades=_env_int(
                env, "SESSIOND_ADDRESS_PENDING_UPGRADES", cls.address_pending_upgrades
            ),
            address_failed_upgrades=_env_rate(
                env, "SESSIOND_ADDRESS_FAILED_UPGRADES", cls.address_failed_upgrades
            ),
            address_unauthenticated=_env_rate(
                env, "SESSIOND_ADDRESS_UNAUTHENTICATED", cls.address_unauthenticated
            ),
            forwarded_hops=_env_int(env, "SESSIOND_FORWARDED_HOPS", 0),
            bodies_in_flight_bytes=_env_int(
                env, "SESSIOND_BODIES_IN_FLIGHT_BYTES", cls.bodies_in_flight_bytes, minimum=1024
            ),
            address_bodies_in_flight_bytes=_env_int(
                env, "SESSIOND_ADDRESS_BODIES_IN_FLIGHT_BYTES", cls.address_bodies_in_flight_bytes
            ),
            body_timeout=_env_float(env, "SESSIOND_BODY_TIMEOUT", cls.body_timeout, minimum=0.01),
            answers_in_flight_bytes=_env_int(
                env, "SESSIOND_ANSWERS_IN_FLIGHT_BYTES", cls.answers_in_flight_bytes, minimum=1024
            ),
            address_answers_in_flight_bytes=_env_int(
                env,
                "SESSIOND_ADDRESS_ANSWERS_IN_FLIGHT_BYTES",
                cls.address_answers_in_flight_bytes,
            ),
            answer_timeout=_env_float(
                env, "SESSIOND_ANSWER_TIMEOUT", cls.answer_timeout, minimum=0.01
            ),
            writer_max_batch=_env_int(env, "SESSIOND_WRITER_MAX_BATCH", 256, minimum=1),
            drain_seconds=_env_float(env, "SESSIOND_DRAIN_SECONDS", cls.drain_seconds),
            node_timeout=_env_float(env, "SESSIOND_NODE_TIMEOUT", 15.0, minimum=0.1),
            poll_interval=_env_float(env, "SESSIOND_POLL_INTERVAL", 1.0, minimum=0.01),
            log_format=cast(
                LogFormat, _env_choice(env, "SESSIOND_LOG_FORMAT", cls.log_format, FORMATS)
            ),
            access_log=_env_switch(env, "SESSIOND_ACCESS_LOG", cls.access_log),
            event_loop=cast(
                EventLoop,
                _env_choice(env, "SESSIOND_EVENT_LOOP", cls.event_loop, EVENT_LOOPS),
            ),
        )
        if not 0 < base.port < 65536:
            raise SettingsError(f"SESSIOND_PORT must be between 1 and 65535, got {base.port}")
        chosen = base.with_overrides(**overrides)
        if chosen.log_format not in FORMATS:
            raise SettingsError(
                f"the log format must be one of {', '.join(FORMATS)}, got {chosen.log_format!r}"
            )
        if not 0 < chosen.port < 65536:
            raise SettingsError(f"the port must be between 1 and 65535, got {chosen.port}")
        return chosen
