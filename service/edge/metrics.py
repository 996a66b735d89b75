"""A node's metrics, on prometheus_client: one registry per app, every label
value from a fixed set.

``/metrics`` is what Prometheus's own parser reads, and its series are known
when the app is built: each counter's label values come from the sets below
(error codes, close codes, close reasons), anything else is counted as
``other``, and every allowed label set is created at zero up front, so no
request, frame or token can add a series (never an ID or free text in a
label). See docs/adr/0025-expose-metrics-through-prometheus-client-with-fixed-labels.md.

The node's figures that ``GET /v1/node`` shows are read from this registry
too (:meth:`Metrics.samples`), never kept twice: live sockets by state,
event-stream watchers, events appended, when the node started, and the
store's head and each projection's position and lag, which a scrape or a node
view reads from the store first (:meth:`Metrics.store_read`).

Four histograms, in seconds unless said: the WebSocket handshake (upgrade
request to PROCESSING_READY announced), the writer's store transaction, the
events per committed transaction, and delivery lag (the writer's commit to the
event frame written to a socket: the last event of each published batch
carries its batch's commit instant, :class:`Stamped`, and the socket that
writes it observes once).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from service.edge.codes import ERROR_CODES
from service.edge.effects import Close

OTHER = "other"


# Every close reason sessiond records, by its head (what comes before any
# ": detail"; "store unavailable" as "store_unavailable"), and the codes it is
# sent with: the two close tables of PROTOCOL.md.
CLOSE_REASONS: dict[str, tuple[int, ...]] = {
    "normal": (Close.NORMAL,),
    "client_going_away": (Close.GOING_AWAY,),
    "dropped": (Close.ABNORMAL,),
    "upgrade_failed": (Close.ABNORMAL,),
    "connection_id_taken": (Close.PROTOCOL,),
    "too_large": (Close.TOO_LARGE,),
    "server_shutdown": (Close.GOING_AWAY,),
    "detached": (Close.GOING_AWAY,),
    "store_unavailable": (Close.GOING_AWAY, 1013),
    "internal_error": (Close.INTERNAL, Close.ABNORMAL),
    "protocol_error": (Close.PROTOCOL, Close.PROTOCOL_ERROR),
    "invalid_utf8": (Close.INVALID_DATA,),
    "auth_timeout": (Close.UNAUTHENTICATED,),
    "unauthenticated": (Close.UNAUTHENTICATED,),
    "token_expired": (Close.UNAUTHENTICATED,),
    "forbidden": (Close.FORBIDDEN,),
    "kicked": (Close.FORBIDDEN,),
    "session_ended": (Close.FORBIDDEN,),
    "invalid_transition": (Close.FORBIDDEN,),
    "slow_consumer": (Close.SLOW_CONSUMER,),
    "superseded": (Close.SUPERSEDED,),
    "rate_limited": (4429,),
}
# Reasons whose code is whatever the peer or the transport ended with.
PEER_CODED_REASONS = ("client_closed", "timeout")
CLOSE_CODES = frozenset(
    {v for k, v in vars(Close).items() if not k.startswith("_") and isinstance(v, int)}
    | {code for codes in CLOSE_REASONS.values() for code in codes}
)

# Bucket upper bounds. Handshakes: a token in the upgrade takes milliseconds;
# one sent in a frame may take up to the auth timeout (10 s by default).
HANDSHAKE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# A SQLite commit with fsync takes about a millisecond, a PostgreSQL one a
# round trip or two; seconds mean the store is in trouble.
COMMIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
# Events per transaction: up to a few per command, up to writer_max_batch
# (256 by default) commands per transaction.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
# Commit to frame written: a hop to the event loop and a socket write when
# all is well; the tail is a busy loop or a socket that reads slowly.
LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4


def error_label(code: str) -> str:
    return code if code in ERROR_CODES else OTHER


def close_labels(code: int, reason: str) -> tuple[str, str]:
    """The ``code`` and ``reason`` labels of a close: a known code or
    ``other``; the reason's head when it is known with that code, else ``other``."""
    code_label = str(code) if code in CLOSE_CODES else OTHER
    head = reason.partition(":")[0].strip().replace(" ", "_")
    if head in PEER_CODED_REASONS or code in CLOSE_REASONS.get(head, ()):
        return code_label, head
    return code_label, OTHER


def _close_label_sets() -> list[tuple[str, str]]:
    codes = [str(c) for c in sorted(CLOSE_CODES)] + [OTHER]
    pairs = [(str(c), r) for r, cs in CLOSE_REASONS.items() for c in cs]
    pairs += [(c, r) for r in (*PEER_CODED_REASONS, OTHER) for c in codes]
    return pairs


class Stamped(dict[str, Any]):
    """A wire event that carries the monotonic instant its batch was
    committed; sent and serialised as the plain dict it is."""

    __slots__ = ("committed_at",)
    committed_at: float


def stamped(event: Mapping[str, Any], committed_at: float) -> Stamped:
    # dict's own constructor: a third of the cost of one written in Python.
    copy = Stamped(event)
    copy.committed_at = committed_at
    return copy


class ProjectionStatus(Protocol):
    """A projection's position and lag (projections.projector.Status)."""

    @property
    def name(self) -> str: ...
    @property
    def position(self) -> int: ...
    @property
    def head(self) -> int: ...
    @property
    def lag(self) -> int: ...


Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


class Metrics:
    """One app's metrics and its own registry (several apps share a test process).

    ``connections`` counts the live sockets by state, ``watchers`` the
    event-stream watchers, and ``writer`` is the writer whose running totals
    are shown (None before it starts); all are called when scraped.
    ``projections`` names the projections whose positions are shown.
    """

    def __init__(
        self,
        *,
        states: Iterable[str],
        connections: Callable[[], Mapping[str, int]],
        writer: Callable[[], object | None],
        watchers: Callable[[], int] = lambda: 0,
        projections: Sequence[str] = (),
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.started_at = time.time()
        self._store = _StoreReadings(list(projections))
        codes = [(c,) for c in sorted(ERROR_CODES | {OTHER})]
        self._http_errors = _children(
            Counter(
                "sessiond_http_errors", "HTTP error answers by code", ["code"], registry=registry
            ),
            codes,
        )
        self._ws_errors = _children(
            Counter(
                "sessiond_ws_errors", "WebSocket error frames by code", ["code"], registry=registry
            ),
            codes,
        )
        self._closes = _children(
            Counter(
                "sessiond_ws_closes",
                "WebSocket closes by code and reason",
                ["code", "reason"],
                registry=registry,
            ),
            _close_label_sets(),
        )
        self._handshake = Histogram(
            "sessiond_ws_handshake_seconds",
            "upgrade request to PROCESSING_READY announced",
            buckets=HANDSHAKE_BUCKETS,
            registry=registry,
        )
        self._commit = Histogram(
            "sessiond_store_commit_seconds",
            "the writer's store transaction",
            buckets=COMMIT_BUCKETS,
            registry=registry,
        )
        self._batch = Histogram(
            "sessiond_store_commit_events",
            "events per committed transaction",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self._lag = Histogram(
            "sessiond_delivery_lag_seconds",
            "the writer's commit to the event frame written to a socket (once per batch "
            "and socket, for events this node committed)",
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        registry.register(_Readings(list(states), connections, writer, watchers, self.started_at))
        registry.register(self._store)
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        # (identity, commit instant) of each committed batch not yet handed to
        # the event loop, in commit order.
        self._commits: deque[tuple[int, float]] = deque()

    # --- the edge ------------------------------------------------------------

    def http_error(self, code: str) -> None:
        self._http_errors[(error_label(code),)].inc()

    def ws_error(self, code: str) -> None:
        self._ws_errors[(error_label(code),)].inc()

    def ws_closed(self, code: int, reason: str) -> None:
        self._closes[close_labels(code, reason)].inc()

    def handshake(self, seconds: float) -> None:
        self._handshake.observe(seconds)

    def delivered(self, event: Stamped) -> None:
        """``event``'s frame was written to a socket just now."""
        self._lag.observe(time.monotonic() - event.committed_at)

    # --- the writer ------------------------------------------------------------

    def saved(self, events: list[Any], began: float, ended: float) -> None:
        """The writer's hook (its thread): a transaction of ``events``
        committed between the monotonic instants ``began`` and ``ended``."""
        self._commit.observe(ended - began)
        self._batch.observe(len(events))
        self._commits.append((id(events), ended))

    def committed_at(self, events: list[Any]) -> float | None:
        """When the batch ``events`` (as the writer hands it to its
        ``on_commit``, on the event loop) was committed."""
        key = id(events)
        commits = self._commits
        while commits:
            # A batch that never reached on_commit (the loop was closing)
            # leaves its entry behind: skipped here.
            known, at = commits.popleft()
            if known == key:
                return at
        return None

    # --- the scrape ---------------------------------------------------------------

    def store_read(self, statuses: Sequence[ProjectionStatus] | None) -> None:
        """What the store said just now: each projection's status (its head
        is the store's), or None when it did not answer."""
        self._store.update(statuses)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def samples(self) -> Samples:
        """Every sample of the registry now, by name, then by its labels."""
        found: Samples = {}
        for metric in self.registry.collect():
            for sample in metric.samples:
                labels = tuple(sorted(sample.labels.items()))
                found.setdefault(sample.name, {})[labels] = sample.value
        return found


def _children(
    counter: Counter, label_sets: Iterable[tuple[str, ...]]
) -> dict[tuple[str, ...], Any]:
    """Every allowed label set of ``counter``, created (at zero) now."""
    return {labels: counter.labels(*labels) for labels in label_sets}


class _Readings(Collector):
    """What is read when scraped: sockets by state, the writer's totals."""

    WRITER_TOTALS = (
        ("sessiond_events_appended", "events appended by this node", "events_appended"),
        ("sessiond_store_transactions", "write transactions committed", "transactions"),
        ("sessiond_write_conflicts", "write conflicts retried", "conflicts"),
        (
            "sessiond_writer_wrong_guesses",
            "batches run again because an ID taken to be new was already recorded",
            "wrong_guesses",
        ),
    )

    def __init__(
        self,
        states: list[str],
        connections: Callable[[], Mapping[str, int]],
        writer: Callable[[], object | None],
        watchers: Callable[[], int],
        started_at: float,
    ) -> None:
        self.states = states
        self.connections = connections
        self.writer = writer
        self.watchers = watchers
        self.started_at = started_at

    def collect(self) -> Iterable[Metric]:
        gauge = GaugeMetricFamily(
            "sessiond_connections", "live connections on this node by state", labels=["state"]
        )
        counts = self.connections()
        for state in self.states:
            gauge.add_metric([state], counts.get(state, 0))
        yield gauge
        yield GaugeMetricFamily(
            "sessiond_stream_watchers", "event-stream watchers on this node", value=self.watchers()
        )
        yield GaugeMetricFamily(
            "sessiond_node_start_time_seconds",
            "when this node started serving, in Unix seconds",
            value=self.started_at,
        )
        writer = self.writer()
        for name, text, attribute in self.WRITER_TOTALS:
            yield CounterMetricFamily(name, text, value=getattr(writer, attribute, 0))


class _StoreReadings(Collector):
    """The store's head and each projection's position and lag, as last
    read (nothing before the first read, nor while the store does not answer)."""

    def __init__(self, projections: list[str]) -> None:
        self.projections = projections
        self.statuses: list[ProjectionStatus] | None = None

    def update(self, statuses: Sequence[ProjectionStatus] | None) -> None:
        self.statuses = None if statuses is None else list(statuses)

    def collect(self) -> Iterable[Metric]:
        statuses = self.statuses
        if not statuses:
            return
        yield GaugeMetricFamily(
            "sessiond_store_head", "the store's last notification position", value=statuses[0].head
        )
        position = GaugeMetricFamily(
            "sessiond_projection_position",
            "the last notification position applied to a projection",
            labels=["projection"],
        )
        lag = GaugeMetricFamily(
            "sessiond_projection_lag",
            "notifications recorded that a projection has not applied",
            labels=["projection"],
        )
        for status in statuses:
            if status.name in self.projections:
                position.add_metric([status.name], status.position)
                lag.add_metric([status.name], status.lag)
        yield position
        yield lag
