"""A world for the connection protocol's unit tests: no socket, no thread, no
store, no event loop.

``World`` holds aggregates in memory and runs each command against them the
way the writer does (the command's events are committed when it returns or
when the lifecycle refused it; a session's events go to the sockets
subscribed to it). ``Socket`` is one protocol with its effects carried out
against the world, in order, the way service/edge/ws.py carries them out
against aiohttp: the frames it would send are collected, the close it would
make is kept, and the clock is whatever the test says (0 is the wall-clock
time the socket was made, so tokens minted now expire ``ttl`` later on it).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, TypeVar

import orjson

from domain.base import Aggregate
from domain.connection import Connection
from domain.errors import DomainError
from domain.ids import SESSION_PREFIX, connection_stream, session_stream
from domain.session import Session
from service.application.auth import TokenSigner
from service.application.budgets import Admission, Unlimited
from service.application.hub import EventFrame
from service.application.writer import Command
from service.edge.effects import (
    AwaitAuth,
    Closing,
    Effect,
    FollowLive,
    Outcome,
    ReadEvents,
    Record,
    Recorded,
    RecordLater,
    Refused,
    Send,
    Subscribe,
    TakeQueued,
    Unavailable,
    Wake,
    WakeAt,
)
from service.edge.protocol import ConnectionProtocol, Limits
from service.storage.wire import wire_event

SECRET = "protocol-test-secret-0123456789abcdef"
A = TypeVar("A", bound=Aggregate)


class Unit:
    """What a command sees: the world's aggregates by ID (UnitOfWork's reads)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.touched: dict[str, Aggregate] = {}

    def _get(self, stream_id: str, kind: type[A]) -> A | None:
        agg = self.touched.get(stream_id) or self.world.aggregates.get(stream_id)
        if agg is None or not isinstance(agg, kind):
            return None
        self.touched[stream_id] = agg
        return agg

    def session(self, session_id: str) -> Session | None:
        return self._get(session_stream(session_id), Session)

    def connection(self, connection_id: str) -> Connection | None:
        return self._get(connection_stream(connection_id), Connection)

    session_to_create = session
    connection_to_create = connection

    def add(self, aggregate: Aggregate) -> None:
        self.touched[aggregate.id] = aggregate


class World:
    def __init__(self, *, max_connections: int = 1) -> None:
        self.aggregates: dict[str, Aggregate] = {}
        self.log: list[Aggregate.Event] = []
        self.subscribers: dict[str, list[Socket]] = {}
        self.signer = TokenSigner(SECRET)
        self.limits = Limits(auth_timeout=10.0, max_connections_per_session=max_connections)
        self.commands: list[str] = []
        # Each command's commit: the (stream, event type) it recorded, in order.
        self.commits: list[list[tuple[str, str]]] = []
        self.down = False
        # Closes the store could not take, as the node keeps them (RecordLater).
        self.owed: list[Command[Any]] = []

    def token(self, user: str = "alice", *roles: str, ttl: int = 3600) -> str:
        return self.signer.mint(user, list(roles) or ["user"], ttl=ttl)

    def execute(self, command: Command[Any]) -> Outcome:
        """Run ``command`` as the writer does, one commit per command."""
        self.commands.append(command.name)
        if self.down:
            return Unavailable("store unavailable: the test stopped it")
        unit = Unit(self)
        try:
            outcome: Outcome = Recorded(command.run(unit))
        except DomainError as e:
            outcome = Refused(e)
        committed: list[Aggregate.Event] = []
        for agg in unit.touched.values():
            committed.extend(agg.collect_events())  # type: ignore[arg-type]
            self.aggregates[agg.id] = agg
        self.log.extend(committed)
        self.commits.append([(e.originator_id, e.type_name()) for e in committed])  # type: ignore[attr-defined]
        self._publish(committed)
        return outcome

    def commits_of(self, connection_id: str) -> list[list[str]]:
        """The commits that recorded something of ``connection_id``: its
        events in each, in order."""
        stream = connection_stream(connection_id)
        each = [[kind for s, kind in commit if s == stream] for commit in self.commits]
        return [kinds for kinds in each if kinds]

    def back(self) -> None:
        """The store is back: what was owed to it is recorded, as the node does."""
        self.down = False
        owed, self.owed = self.owed, []
        for command in owed:
            self.record(command)
        self.flush()

    def _publish(self, events: list[Aggregate.Event]) -> None:
        for event in events:
            if not event.originator_id.startswith(SESSION_PREFIX):
                continue
            wire = wire_event(event)
            for socket in list(self.subscribers.get(wire["session_id"], [])):
                socket.queue.append(EventFrame.of(wire))

    def session_events(self, session_id: str) -> list[dict[str, Any]]:
        stream = session_stream(session_id)
        return [wire_event(e) for e in self.log if e.originator_id == stream]

    def connection_states(self, connection_id: str) -> list[str]:
        stream = connection_stream(connection_id)
        return [e.type_name() for e in self.log if e.originator_id == stream]

    def record(self, command: Command[Any]) -> Any:
        outcome = self.execute(command)
        assert isinstance(outcome, Recorded), outcome
        return outcome.value

    def flush(self) -> None:
        """Hand every socket following live what the world queued for it."""
        busy = True
        while busy:
            busy = False
            for sockets in list(self.subscribers.values()):
                for socket in list(sockets):
                    if socket.following and socket.queue:
                        busy = True
                        events, socket.queue = list(socket.queue), deque()
                        socket.run(socket.protocol.live(events))


class Socket:
    """One connection's protocol, its effects carried out against ``world``."""

    def __init__(
        self,
        world: World,
        connection_id: str,
        session_id: str,
        *,
        after: int = 0,
        protocol: type[ConnectionProtocol] = ConnectionProtocol,
        admission: Admission | None = None,
    ) -> None:
        self.world = world
        self.protocol = protocol(
            connection_id=connection_id,
            session_id=session_id,
            after=after,
            node="node-1",
            verify=world.signer.verify,
            limits=world.limits,
            wall_offset=time.time(),
            admission=admission or Unlimited(),
            proposed=True,
        )
        self.frames: list[dict[str, Any]] = []
        self.queue: deque[EventFrame] = deque()
        self.following = False
        self.waiting_until: float | None = None
        self.wake_at: float | None = None  # the last WakeAt, until it fires
        self.hold_reads = False  # leave ReadEvents unanswered (a slow store)
        self.held_reads: list[ReadEvents] = []
        self.hold_records = False  # leave Records unanswered (a commit in flight)
        self.held_records: list[Record] = []
        self.closed: tuple[int, str] | None = None
        self.now = 0.0

    # --- inputs -----------------------------------------------------------------------

    def upgrade(self, header_token: str | None = None) -> Socket:
        self.run(self.protocol.upgraded(header_token, self.now))
        self.world.flush()
        return self

    def send(self, frame: dict[str, Any] | str | bytes) -> None:
        data = frame if isinstance(frame, str | bytes) else orjson.dumps(frame).decode()
        self.run(self.protocol.receive(data, self.now))
        self.world.flush()

    def tick(self, now: float) -> None:
        """The clock moves; a wait or a WakeAt whose deadline passed ends."""
        self.now = now
        if self.waiting_until is not None and now >= self.waiting_until:
            self.waiting_until = None
            self.run(self.protocol.auth_wait_over(now))
            self.world.flush()
        while self.wake_at is not None and now >= self.wake_at:
            self.wake_at = None
            self.run(self.protocol.tick(now))
            self.world.flush()

    def release_reads(self) -> None:
        """Answer the reads held while ``hold_reads`` was set."""
        self.hold_reads = False
        held, self.held_reads = self.held_reads, []
        for read in held:
            self.run([read])
        self.world.flush()

    def release_records(self) -> None:
        """Commit the records held while ``hold_records`` was set."""
        self.hold_records = False
        held, self.held_records = self.held_records, []
        for record in held:
            self.run([record])
        self.world.flush()

    # --- effects ------------------------------------------------------------------------

    def run(self, effects: list[Effect]) -> None:
        todo: deque[Effect] = deque(effects)
        while todo:
            more: list[Effect] = []
            match todo.popleft():
                case Send(frame=frame):
                    if self.closed is None:
                        self.frames.append(frame)
                case Record() as record if self.hold_records:
                    self.held_records.append(record)
                case Record(command=command, then=then):
                    more = then(self.world.execute(command))
                case RecordLater(command=command):
                    self.world.owed.append(command)
                case ReadEvents() as read if self.hold_reads:
                    self.held_reads.append(read)
                case ReadEvents() if self.world.down:
                    more = self.protocol.read_failed()
                case ReadEvents(after=after, limit=limit, then=then):
                    stored = self.world.session_events(self.protocol.session_id)
                    more = then([e for e in stored if e["position"] > after][:limit])
                case Subscribe():
                    subs = self.world.subscribers.setdefault(self.protocol.session_id, [])
                    subs.append(self)
                case TakeQueued(then=then):
                    events, self.queue = list(self.queue), deque()
                    more = then(events)
                case AwaitAuth(deadline=deadline):
                    if self.protocol.awaiting_token:
                        self.waiting_until = deadline
                    else:
                        more = self.protocol.auth_wait_over(self.now)
                case Wake():
                    if self.waiting_until is not None:
                        self.waiting_until = None
                        more = self.protocol.auth_wait_over(self.now)
                case WakeAt(deadline=deadline):
                    self.wake_at = deadline
                case FollowLive():
                    self.following = True
                case Closing(code=code, reason=reason, record=record, frame=frame):
                    if record is not None:
                        more = record.then(self.world.execute(record.command))
                    if frame is not None:
                        self.frames.append(frame)
                    self.closed = (code, reason)
                    self.following = False
                    self.waiting_until = None
                    self.wake_at = None
                    subs = self.world.subscribers.get(self.protocol.session_id, [])
                    if self in subs:
                        subs.remove(self)
            todo.extendleft(reversed(more))

    # --- what the client saw --------------------------------------------------------------

    def kinds(self) -> list[tuple[str, str | None]]:
        return [(f["type"], f.get("state")) for f in self.frames]

    def events(self) -> list[dict[str, Any]]:
        return [f["event"] for f in self.frames if f["type"] == "event"]

    def errors(self) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == "error"]
