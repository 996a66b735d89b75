"""The bridge between asyncio and the synchronous store: one writer thread
that commits many commands in one transaction (group commit).

Handlers never touch the store on the event loop. A write is a *command*: a
plain function of a :class:`UnitOfWork` that loads aggregates, calls their
command methods and returns a result. Handlers ``await writer.execute(cmd)``;
the writer thread takes every command waiting in its queue (up to
``max_batch``), runs them one after another against the same aggregates, and
saves all their events in one transaction. Then, back on the event loop, it
publishes the recorded events to the live hub and resolves each handler's
future, in that order, so a socket sees an event no later than the client
that caused it hears "done".

A batch that would take every command in flight takes at most half of
``max_batch`` (when that half is ``MIN_HALF`` or more): the rest make the next
batch, committed while the event loop answers the first and gathers what
their callers send next, where the two would otherwise take turns, each idle
while the other works. See
docs/adr/0044-commit-half-a-batch-when-it-is-everything-in-flight.md.

Because this thread is the only writer on the node, it keeps recently used
aggregates in memory and never re-reads them. Another node writing the same
aggregate makes the save fail with an IntegrityError: the touched aggregates
are then dropped from the cache and the batch runs again on fresh state, so
optimistic-concurrency conflicts are retried here and never reach a client.
See docs/adr/0004-commit-commands-in-one-writer-thread.md.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import random
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError

from domain.base import Aggregate
from domain.connection import Connection
from domain.errors import DomainError
from domain.ids import CONNECTION_PREFIX, SESSION_PREFIX, connection_stream, session_stream
from domain.session import Session
from service.application.health import StoreHealth
from service.application.health import StoreUnavailable as StoreUnavailable  # its users' import
from service.runtime.osthread import name_native_thread
from service.runtime.tracing import NOOP, Tracer
from service.storage.faults import store_down
from service.storage.store import SessiondApplication

log = logging.getLogger("sessiond.writer")

T = TypeVar("T")
A = TypeVar("A", bound=Aggregate)

# Another node writing the same session makes our save conflict; we reload and
# run the batch again. Under sustained contention the window between load and
# save must come free eventually; a short random pause breaks lockstep.
MAX_CONFLICT_RETRIES = 64
CONFLICT_PAUSE = 0.002

# The smallest half of max_batch that a batch of every command in flight is
# cut to. Smaller halves cost a second commit (an fsync, a wake-up of the
# event loop) for less overlap than it buys: with 64 commands always in
# flight, halves of 32 bought nothing measurable, and the server's 16
# producers, halved, lost 8% of their rate (ADR 0044).
MIN_HALF = 64


class CommandFailed(DomainError):
    """A command failed for a reason of its own (a bug, or data the store
    refused), run alone so that no other command failed with it; nothing of
    it was recorded. The wire says ``internal`` (500)."""

    code = "internal"

    def __init__(self, name: str) -> None:
        super().__init__(f"the command {name} failed; nothing of it was recorded")
        self.name = name


class AggregateCache:
    """The aggregates the writer holds in memory, least recently used first,
    in front of the store.

    The writer is the only one on its node, so what it holds is current
    unless another node wrote it since; a save then fails and the writer
    forgets what the batch touched (see the module)."""

    def __init__(self, app: SessiondApplication, size: int) -> None:
        self._app = app
        self._size = size
        self._held: OrderedDict[str, Aggregate] = OrderedDict()

    def holds(self, stream_id: str) -> bool:
        return stream_id in self._held

    def recorded(self, stream_id: str) -> bool:
        """Whether anything is recorded under ``stream_id``: held here (only
        what was recorded is held), else one indexed read of the store."""
        return self.holds(stream_id) or self._app.stream_exists(stream_id)

    def load(self, stream_id: str) -> Aggregate | None:
        """The aggregate held, else read from the store; None if it has no events."""
        agg = self._held.get(stream_id)
        if agg is not None:
            self._held.move_to_end(stream_id)
            return agg
        try:
            # A deep copy: the repository's own cache is shared with readers.
            loaded: object = self._app.repository.get(stream_id)
        except AggregateNotFoundError:
            return None
        assert isinstance(loaded, Aggregate)
        return loaded

    def remember(self, aggregates: list[Aggregate]) -> None:
        for agg in aggregates:
            if isinstance(agg, Connection) and agg.is_closed:
                # Nothing more is ever recorded for a closed connection: keep
                # the cache (and the heap the garbage collector walks) for
                # what is still live.
                self._held.pop(agg.id, None)
                continue
            self._held[agg.id] = agg
            self._held.move_to_end(agg.id)
        while len(self._held) > self._size:
            self._held.popitem(last=False)

    def forget(self, aggregates: list[Aggregate]) -> None:
        for agg in aggregates:
            self._held.pop(agg.id, None)


class UnitOfWork:
    """What one batch of commands sees: aggregates by ID, loaded once.

    ``guess_new`` is True on a batch's first attempt: an ID this node's writer
    holds no aggregate for is then taken to be new by the commands that create
    what is missing (:meth:`session_to_create`, :meth:`connection_to_create`),
    without a read. A wrong guess cannot record anything: the new aggregate's
    first event takes position 1 of a stream that already has one, the store's
    unique key refuses the whole transaction, and the writer runs the batch
    again with ``guess_new`` False, reading every aggregate. See
    docs/adr/0018-take-an-unknown-id-to-be-new-and-let-the-store-refuse-a-wrong-guess.md.
    """

    def __init__(self, held: AggregateCache, *, guess_new: bool = False) -> None:
        self._held = held
        self.guess_new = guess_new
        self.guessed: list[str] = []
        self.touched: dict[str, Aggregate] = {}

    def _get(self, stream_id: str, kind: type[A]) -> A | None:
        agg = self.touched.get(stream_id)
        if agg is None:
            agg = self._held.load(stream_id)
            if agg is None:
                return None
            self.touched[stream_id] = agg
        if not isinstance(agg, kind):
            return None
        return agg

    def _to_create(self, stream_id: str, kind: type[A]) -> A | None:
        if self.guess_new and stream_id not in self.touched and not self._held.holds(stream_id):
            self.guessed.append(stream_id)
            return None
        return self._get(stream_id, kind)

    def session(self, session_id: str) -> Session | None:
        return self._get(session_stream(session_id), Session)

    def connection(self, connection_id: str) -> Connection | None:
        return self._get(connection_stream(connection_id), Connection)

    def session_to_create(self, session_id: str) -> Session | None:
        """The session, for a command that creates it when it is None; may
        guess that an ID unknown to this writer is new (see the class)."""
        return self._to_create(session_stream(session_id), Session)

    def connection_to_create(self, connection_id: str) -> Connection | None:
        """The connection, for a command that creates it when it is None;
        may guess that an ID unknown to this writer is new (see the class)."""
        return self._to_create(connection_stream(connection_id), Connection)

    def recorded(self, stream_id: str) -> bool:
        """Whether anything is recorded under ``stream_id``, never guessed: an
        aggregate this batch has only created is not recorded yet."""
        return self._held.recorded(stream_id)

    def add(self, aggregate: Aggregate) -> None:
        """Register a newly created aggregate, to be saved with the batch."""
        self.touched[aggregate.id] = aggregate


@dataclass(frozen=True, slots=True)
class Command(Generic[T]):
    """A write: ``run`` loads aggregates from the unit of work, calls their
    command methods and returns a result; ``name`` says which write it is in
    the log (service/application/commands.py makes them)."""

    name: str
    run: Callable[[UnitOfWork], T]


@dataclass
class _Item(Generic[T]):
    command: Command[T]
    future: asyncio.Future[T]
    since: float  # when it came in (time.monotonic)
    outcome: tuple[bool, Any] = field(default=(False, None))
    # The span that asked for it (a request's, a socket step's), when traced.
    link: Any = None
    # Counted in the writer's commands in flight until it is answered.
    in_flight: bool = True


_STOP = object()


class Writer:
    """Runs commands on one thread, committing each batch in one transaction."""

    def __init__(
        self,
        app: SessiondApplication,
        *,
        on_commit: Callable[[list[Aggregate.Event]], None],
        max_batch: int = 256,
        cache_size: int = 20_000,
        on_saved: Callable[[list[Aggregate.Event], float, float], None] | None = None,
        health: StoreHealth | None = None,
        tracer: Tracer = NOOP,
        shared: bool = False,
    ) -> None:
        self.app = app
        # Other nodes write the same store (PostgreSQL): what the cache holds
        # may be behind it, which a save finds out (a conflict) but a command
        # that writes nothing does not (see _stale).
        self._shared = shared
        # Each commit is a span of its own trace (this thread has no request
        # of its own), linked to the spans of the commands it carries.
        self._tracer = tracer
        self._on_commit = on_commit
        # Told on this thread of each committed transaction: its events (the
        # list on_commit gets) and the monotonic instants it began and ended.
        self._on_saved = on_saved
        # The node's view of its store: commands fail fast while it cannot
        # take writes, and a failure that says it is down is told to it.
        self._health = health
        self._max_batch = max_batch
        self.cache = AggregateCache(app, cache_size)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._outbox: list[_Item[Any]] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Commands handed to execute and not answered yet, kept by the event
        # loop and read by the writer thread: a hint for splitting a batch,
        # which a stale read can only make one batch larger or smaller.
        self.in_flight = 0
        self.events_appended = 0
        self.transactions = 0
        self.conflicts = 0
        # First attempts that guessed an unknown ID new, wrongly (the batch
        # then ran again, reading): not conflicts with another writer.
        self.wrong_guesses = 0
        # Batches run again because an aggregate they only read was behind
        # the store (another node had written it).
        self.stale_reads = 0

    # --- life -------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="sessiond-writer", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Finish every command already queued, then stop the thread."""
        if self._thread is None:
            return
        self._flush()
        self._queue.put(_STOP)
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
        self._thread = None

    # --- the async side ---------------------------------------------------

    async def execute(self, command: Command[T]) -> T:
        """Run ``command`` in the next batch; its result once committed.

        Raises the command's DomainError (its events, if any, such as a
        refused transition, are still recorded), or StoreUnavailable.
        """
        if self._thread is None or self._loop is None:
            raise StoreUnavailable("the writer is not running")
        if self._health is not None:
            self._health.check(write=True)
        future: asyncio.Future[T] = self._loop.create_future()
        # Commands issued in one turn of the event loop reach the writer
        # thread together: one hand-over (and one wake-up of the thread) per
        # turn rather than per command.
        link = self._tracer.link() if self._tracer.enabled else None
        self._outbox.append(_Item(command, future, time.monotonic(), link=link))
        self.in_flight += 1
        if len(self._outbox) == 1:
            self._loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        if self._outbox:
            items, self._outbox = self._outbox, []
            self._queue.put(items)

    # --- the writer thread --------------------------------------------------

    def _run(self) -> None:
        name_native_thread()
        waiting: deque[_Item[Any]] = deque()
        stopping = False
        while waiting or not stopping:
            if not waiting:
                got = self._queue.get()
                if got is _STOP:
                    break
                waiting.extend(got)
            # Take everything else already handed over, up to a batch.
            while len(waiting) < self._max_batch and not stopping:
                try:
                    got = self._queue.get_nowait()
                except queue.Empty:
                    break
                if got is _STOP:
                    stopping = True
                else:
                    waiting.extend(got)
            take = min(len(waiting), self._max_batch)
            half = self._max_batch // 2
            if take > half >= MIN_HALF and take >= self.in_flight:
                # Every command in flight is here: leave some for the next
                # batch, so the event loop answers these while it is committed.
                take = half
            batch: list[_Item[Any]] = [waiting.popleft() for _ in range(take)]
            try:
                self._process(batch)
            except BaseException as e:  # never let the writer thread die silently
                log.exception("writer batch failed")
                for item in batch:
                    item.outcome = (False, StoreUnavailable(f"internal writer error: {e}"))
                self._resolve(batch, [])

    def _admitted(self, batch: list[_Item[Any]]) -> list[_Item[Any]]:
        """The commands of ``batch`` worth trying now; the others are answered
        StoreUnavailable at once: all of them while the store takes no
        writes, and those that waited too long for their turn (ADR 0028)."""
        health = self._health
        if health is None:
            return batch
        if health.writable and not health.expired(batch[0].since):
            return batch  # the first came in first: none waited too long
        if not health.writable:
            late = batch
        else:
            late = [item for item in batch if health.expired(item.since)]
        for item in late:
            item.outcome = (False, StoreUnavailable("store unavailable: not tried in time"))
        self._resolve(late, [])
        answered = set(map(id, late))
        return [item for item in batch if id(item) not in answered]

    def _store_down(
        self, batch: list[_Item[Any]], error: Exception, *, committing: bool = False
    ) -> None:
        """The store failed ``batch`` as a whole. Nothing of it was recorded,
        unless the store went while it was being committed on a server
        (``committing`` on a shared store): the commit may have landed and its
        answer been lost, which the 503's message says, with the safe retry."""
        if self._health is not None:
            self._health.failed(error, write=True)
        message = f"store unavailable: {error}"
        if committing and self._shared:
            message += (
                "; the store went while this was being committed, so it may have been "
                "recorded: a retry with the same message_id or task_id records it once"
            )
        for item in batch:
            item.outcome = (False, StoreUnavailable(message))
        self._resolve(batch, [])

    def _process(self, batch: list[_Item[Any]]) -> None:
        batch = self._admitted(batch)
        if not batch:
            return
        guess_new = True
        for attempt in range(MAX_CONFLICT_RETRIES):
            uow = UnitOfWork(self.cache, guess_new=guess_new)
            guess_new = False
            isolated = len(batch) == 1
            try:
                for item in batch:
                    item.outcome = self._run_command(item.command, uow, isolated)
            except _NeedsIsolation:
                self.cache.forget(list(uow.touched.values()))
                for item in batch:
                    self._process([item])
                return
            except Exception as e:  # the store, down while a command loaded
                self.cache.forget(list(uow.touched.values()))
                self._store_down(batch, e)
                return
            touched = list(uow.touched.values())
            pending = [a for a in touched if a.pending_events]
            if self._shared:
                try:
                    stale = self._stale([a for a in touched if not a.pending_events])
                except Exception as e:  # the store, down while it was asked
                    self.cache.forget(touched)
                    if not store_down(e):
                        raise
                    self._store_down(batch, e)
                    return
                if stale:
                    self.cache.forget(touched)
                    self.stale_reads += 1
                    continue
            try:
                recorded = self._save(pending, batch)
            except IntegrityError:
                self.cache.forget(touched)
                found = [a for a in map(self.cache.load, uow.guessed) if a is not None]
                if found:
                    # An ID taken to be new was recorded already: run again at
                    # once with what was found held (a real conflict with
                    # another writer shows up on that attempt too).
                    self.cache.remember(found)
                    self.wrong_guesses += 1
                    continue
                self.conflicts += 1
                log.info("write conflict, retrying batch", extra={"attempt": attempt + 1})
                time.sleep(random.random() * CONFLICT_PAUSE * min(attempt + 1, 10))
                continue
            except Exception as e:
                self.cache.forget(touched)
                if store_down(e):
                    self._store_down(batch, e, committing=True)
                elif len(batch) > 1:
                    # The store refused what one command made (data it cannot
                    # encode or hold): run each alone, so only that one fails.
                    for item in batch:
                        self._process([item])
                else:
                    item = batch[0]
                    log.error(
                        "command failed in the store",
                        extra={"command": item.command.name, "error": repr(e)[:300]},
                    )
                    item.outcome = (False, CommandFailed(item.command.name))
                    self._resolve(batch, [])
                return
            self.cache.remember(touched)
            self._resolve(batch, recorded)
            return
        for item in batch:
            item.outcome = (False, StoreUnavailable("too many write conflicts; try again"))
        self._resolve(batch, [])

    def _stale(self, read: list[Aggregate]) -> bool:
        """Whether another node recorded more of an aggregate the batch only
        read: then a refusal or an answer made from it (a task not found, a
        connection not attached, an existing session's view) could be wrong,
        and no save would say so, as it does for what the batch wrote. One
        indexed read each, on a shared store only, and only for aggregates
        read and not written (refusals, answers that record nothing)."""
        return any(self.app.stream_rows(str(agg.id), after=agg.version, limit=1) for agg in read)

    def _run_command(
        self, command: Command[Any], uow: UnitOfWork, isolated: bool
    ) -> tuple[bool, Any]:
        try:
            return True, command.run(uow)
        except DomainError as e:
            return False, e
        except Exception as e:
            if store_down(e):
                raise  # the whole batch is answered 503, below
            if not isolated:
                # A bug in one command must not leak half-made events into the
                # others' transaction: run every command of the batch alone.
                raise _NeedsIsolation from e
            for agg in uow.touched.values():
                agg.collect_events()
            self.cache.forget(list(uow.touched.values()))
            uow.touched.clear()
            log.exception("command failed", extra={"command": command.name})
            return False, CommandFailed(command.name)

    def _save(self, aggregates: list[Aggregate], batch: list[_Item[Any]]) -> list[Aggregate.Event]:
        if not aggregates:
            return []
        if not self._tracer.enabled:
            return self._record(aggregates)
        with self._tracer.span(
            "writer commit",
            _commit_attributes(aggregates, batch),
            root=True,
            links=[item.link for item in batch],
        ) as span:
            events = self._record(aggregates)
            span.set_attribute("sessiond.events", len(events))
            return events

    def _record(self, aggregates: list[Aggregate]) -> list[Aggregate.Event]:
        began = time.monotonic()
        events = self.app.record_aggregates(*aggregates)
        ended = time.monotonic()
        self.transactions += 1
        self.events_appended += len(events)
        if self._on_saved is not None:
            try:
                self._on_saved(events, began, ended)
            except Exception:  # the transaction is committed whatever an observer does
                log.exception("observing a commit failed")
        return events

    def _resolve(self, batch: list[_Item[Any]], recorded: list[Aggregate.Event]) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._deliver, batch, recorded)
        except RuntimeError:
            log.warning("event loop closed before a batch could be answered")

    def _deliver(self, batch: list[_Item[Any]], recorded: list[Aggregate.Event]) -> None:
        if recorded:
            try:
                self._on_commit(recorded)
            except Exception:
                log.exception("publishing recorded events failed")
        for item in batch:
            if item.in_flight:  # counted once, though a failure may answer it twice
                item.in_flight = False
                self.in_flight -= 1
            if item.future.done():
                continue
            ok, value = item.outcome
            if ok:
                item.future.set_result(value)
            else:
                item.future.set_exception(value)


class _NeedsIsolation(Exception):
    pass


def _commit_attributes(aggregates: list[Aggregate], batch: list[_Item[Any]]) -> dict[str, Any]:
    """A commit span's attributes: the sessions and connections it writes
    (their IDs, sorted) and its commands."""
    sessions = sorted(
        a.id[len(SESSION_PREFIX) :] for a in aggregates if a.id.startswith(SESSION_PREFIX)
    )
    connections = sorted(
        a.id[len(CONNECTION_PREFIX) :] for a in aggregates if a.id.startswith(CONNECTION_PREFIX)
    )
    return {
        "sessiond.session_ids": sessions,
        "sessiond.connection_ids": connections,
        "sessiond.commands": len(batch),
        "sessiond.command_names": sorted({item.command.name for item in batch}),
    }
